"""TRL's loss settings (--loss-type, --scale-rewards, --mask-truncated-completions, --num-iterations, --epsilon,
--epsilon-high) and --trl-arg KEY=VALUE: flags -> TrainConfig -> GRPOConfig, TRL's own defaults on both TRL versions
the project runs on, the one-line refusals, the notebook parameters, and the run's record of them."""

import ast
import dataclasses
import json
import shlex
from pathlib import Path

import pytest

import bench_module
from conftest import TINY_RUN
import train_musclebob_improved
from musclebob_helpers import cli, notebook, run_dir, training
from musclebob_helpers.config import (
    LOSS_TYPES,
    ConfigError,
    TrainConfig,
    completions_per_step,
    config_from_dict,
    resolve,
    steps_per_epoch,
    validate_config,
)

ROOT = Path(__file__).resolve().parent.parent
PROG = "train_musclebob_improved.py"
LOSS_FIELDS = ("loss_type", "scale_rewards", "mask_truncated_completions", "num_iterations", "epsilon", "epsilon_high")
# TRL's defaults, written out so that a TRL release that changes one fails here (and the docs get rechecked).
TRL_DEFAULTS = dict(
    loss_type="dapo",
    scale_rewards="group",
    mask_truncated_completions=False,
    num_iterations=1,
    epsilon=0.2,
    epsilon_high=None,
)
CPU = {"device": "cpu", "precision": "fp32"}  # what detect_hardware says on a CPU, all grpo_args reads of it


def parse(argv):
    return resolve(vars(cli._build_train_parser(PROG, "test").parse_args(argv)))[0]


def test_flags_reach_the_config_and_type_back_the_same():
    argv = [
        *["--model", "tiny", "--loss-type", "dr_grpo", "--scale-rewards", "none", "--mask-truncated-completions"],
        *["--num-iterations", "2", "--epsilon", "0.1", "--epsilon-high", "0.28"],
        *["--trl-arg", "top_entropy_quantile=0.2", "--trl-arg", "vllm_server_host=a b=c"],
    ]
    cfg = parse(argv)
    assert (cfg.loss_type, cfg.scale_rewards, cfg.mask_truncated_completions) == ("dr_grpo", "none", True)
    assert (cfg.num_iterations, cfg.epsilon, cfg.epsilon_high) == (2, 0.1, 0.28)
    assert cfg.trl_args == ["top_entropy_quantile=0.2", "vllm_server_host=a b=c"]
    validate_config(cfg)
    # The resume command types them back (a value with a space quoted), and gives the same configuration.
    sources = {name: "you" for name in ("model", *LOSS_FIELDS, "trl_args")}
    words = shlex.split(cli.resume_command("train.py", cfg, sources))
    assert words.count("--trl-arg") == 2 and "vllm_server_host=a b=c" in words
    assert parse(words[2:]) == dataclasses.replace(cfg, resume_from_checkpoint="auto")
    with pytest.raises(SystemExit) as exc:
        parse(["--loss-type", "ppo"])  # the parser's choices: one line, exit 2
    assert exc.value.code == 2


def test_defaults_are_trls_own():
    from trl import GRPOConfig

    trl_default = {f.name: f.default for f in dataclasses.fields(GRPOConfig)}
    ours = TrainConfig()
    for name, expected in TRL_DEFAULTS.items():
        assert getattr(ours, name) == trl_default[name] == expected, name
    assert ours.trl_args == [] and TrainConfig().trl_args is not ours.trl_args  # a fresh list each time
    assert training._trl_loss_types() == list(LOSS_TYPES)  # trl 1.x knows every loss type the flag offers


def colab_grpo_config() -> Path:
    found = sorted(
        Path.home().glob(".cache/musclebob/colab-twin*/lib/python*/site-packages/trl/trainer/grpo_config.py")
    )
    if not found:
        pytest.skip("Colab twin not built (python tools/colab_twin.py build)")
    return found[0]


def test_colabs_trl_has_the_same_defaults_and_no_vespo():
    """Colab's pin (trl 0.29.1, in the Colab twin), read from its source: the same defaults, and the loss types
    check_trl_settings would allow there (no vespo, which 1.x added)."""
    source = colab_grpo_config().read_text()
    tree = ast.parse(source)
    cls = next(n for n in ast.walk(tree) if isinstance(n, ast.ClassDef) and n.name == "GRPOConfig")
    defaults, helps = {}, {}
    for stmt in cls.body:
        if isinstance(stmt, ast.AnnAssign) and isinstance(stmt.value, ast.Call) and stmt.target.id in TRL_DEFAULTS:
            keywords = {k.arg: k.value for k in stmt.value.keywords}
            defaults[stmt.target.id] = ast.literal_eval(keywords["default"])
            helps[stmt.target.id] = ast.literal_eval(keywords["metadata"])["help"]
    assert defaults == TRL_DEFAULTS
    assert [n for n in LOSS_TYPES if f"'{n}'" in helps["loss_type"]] == [t for t in LOSS_TYPES if t != "vespo"]


def test_a_loss_type_the_installed_trl_lacks_is_one_line(monkeypatch):
    monkeypatch.setattr(training, "_trl_loss_types", lambda: [t for t in LOSS_TYPES if t != "vespo"])  # trl 0.29.1
    with pytest.raises(ConfigError, match=r"^--loss-type='vespo' is not allowed: one of dapo, .*luspo with the "):
        training.check_hardware_support(TrainConfig(model="tiny", loss_type="vespo"), CPU)
    training.check_hardware_support(TrainConfig(model="tiny", loss_type="dr_grpo"), CPU)


def test_grpo_args_passes_them_and_the_trl_args():
    cfg = TrainConfig(
        model="tiny",
        loss_type="grpo",
        scale_rewards="batch",
        mask_truncated_completions=True,
        num_iterations=2,
        epsilon=0.1,
        epsilon_high=0.28,
        trl_args=["top_entropy_quantile=0.2", "log_completions=true"],
    )
    args = training.grpo_args(cfg, CPU)
    assert {name: getattr(args, name) for name in LOSS_FIELDS} == {name: getattr(cfg, name) for name in LOSS_FIELDS}
    assert args.top_entropy_quantile == 0.2 and args.log_completions is True
    defaults = training.grpo_args(TrainConfig(model="tiny"), CPU)
    assert {name: getattr(defaults, name) for name in LOSS_FIELDS} == TRL_DEFAULTS


@pytest.mark.parametrize(
    "item,value",
    [
        ("top_entropy_quantile=0.2", 0.2),  # float
        ("steps_per_generation=2", 2),  # int | None
        ("generation_batch_size=none", None),
        ("log_completions=true", True),  # bool
        ("optim=adamw_torch", "adamw_torch"),  # an Enum of str, or str
        ("reward_weights=[1.0]", [1.0]),  # a JSON list
        ("vllm_server_host=a=b", "a=b"),  # the first '=' splits
    ],
)
def test_trl_arg_values_take_the_fields_type(item, value):
    key = item.split("=", 1)[0]
    got = training._trl_overrides(TrainConfig(trl_args=[item]))
    assert got == {key: value} and type(got[key]) is type(value)


BAD_TRL_ARGS = [
    # unknown: a did-you-mean from GRPOConfig's own fields
    ("top_entropy_quanitle=0.2", "GRPOConfig has no field 'top_entropy_quanitle'; did you mean top_entropy_quantile?"),
    ("zzzz=1", "GRPOConfig has no field 'zzzz'; see TRL's GRPOConfig"),
    # near a field the project sets: the flag that sets it, not a --trl-arg that would be refused next
    ("learning_rat=1e-3", "GRPOConfig has no field 'learning_rat'; did you mean --learning-rate?"),
    ("num_train_epoch=3", "did you mean num_train_epochs? (use --epochs)"),
    # set by a flag of ours, or by the project
    ("learning_rate=1e-3", "is not allowed: use --learning-rate"),
    ("loss_type=grpo", "is not allowed: use --loss-type"),
    ("num_train_epochs=3", "is not allowed: use --epochs"),
    ("logging_steps=5", "the project logs every step"),
    # a value of the wrong type
    ("top_entropy_quantile=high", "top_entropy_quantile takes a number"),
    ("log_completions=maybe", "log_completions takes true or false"),
    ("steps_per_generation=1.5", "steps_per_generation takes a whole number or none"),
    ("reward_weights=1", "reward_weights takes a JSON list like [1, 2] or none"),
    # not KEY=VALUE, and a key twice (validate_config: no TRL needed)
    ("top_entropy_quantile", "KEY=VALUE with KEY a GRPOConfig field"),
    ("epsilon_high = 0.3", "KEY=VALUE with KEY a GRPOConfig field"),
]


@pytest.mark.parametrize("item,message", BAD_TRL_ARGS, ids=[i for i, _ in BAD_TRL_ARGS])
def test_a_bad_trl_arg_is_one_line_exit_2_and_nothing_written(tmp_path, monkeypatch, capsys, item, message):
    monkeypatch.setattr(training, "run_training", lambda *a, **k: pytest.fail("training started"))
    out = tmp_path / "out"
    with pytest.raises(SystemExit) as exc:
        train_musclebob_improved.main(["--model", "tiny", "--output-dir", str(out), "--trl-arg", item])
    err = capsys.readouterr().err.strip().splitlines()
    assert exc.value.code == 2
    assert (
        len(err) == 1 and err[0].startswith(f"{PROG}: error: --trl-arg={item!r} is not allowed: ") and message in err[0]
    )
    assert not out.exists()


def test_a_key_given_twice_is_refused():
    with pytest.raises(ConfigError, match=r"^--trl-arg='top_k=2' is not allowed: top_k once \(it is given twice\)$"):
        validate_config(TrainConfig(trl_args=["top_k=1", "top_k=2"]))


def test_every_grpoconfig_field_the_project_sets_is_refused_as_a_trl_arg(monkeypatch):
    """What grpo_args passes GRPOConfig (also with vLLM on, and on either transformers' checkpointing name) a
    --trl-arg cannot override: it names the flag to use instead, or why the project sets it."""
    import trl

    passed = set()

    class Recorder(trl.GRPOConfig):
        def __init__(self, **kwargs):
            passed.update(kwargs)

    monkeypatch.setattr(trl, "GRPOConfig", Recorder)
    for cfg in (TrainConfig(model="tiny"), TrainConfig(model="tiny", use_vllm=True)):
        training.grpo_args(cfg, CPU)
    passed |= {"gradient_checkpointing", "activation_checkpointing", "save_total_limit", "resume_from_checkpoint"}
    monkeypatch.undo()
    assert set(LOSS_FIELDS) <= passed
    for key in sorted(passed & {f.name for f in dataclasses.fields(trl.GRPOConfig)}):
        with pytest.raises(ConfigError, match=r"is not allowed: (use --|the )") as err:
            training._trl_overrides(TrainConfig(trl_args=[f"{key}=1"]))
        assert "\n" not in str(err.value)


@pytest.mark.parametrize(
    "name,value,allowed",
    [
        ("loss_type", "ppo", "one of dapo, dr_grpo, grpo, bnpo, cispo, sapo, luspo, vespo"),
        ("scale_rewards", True, "one of group, batch, none"),  # TRL's bool spelling: one way through, the words
        ("num_iterations", 0, "a whole number of updates per batch >= 1"),
        ("epsilon", 0, "a number > 0"),
        ("epsilon_high", float("nan"), "a number > 0, e.g. 0.28, or None"),
        ("mask_truncated_completions", "yes", "True or False"),
        ("trl_args", "top_k=1", "a list of 'KEY=VALUE' strings"),
    ],
)
def test_bad_values_are_one_line(name, value, allowed):
    with pytest.raises(ConfigError) as err:
        validate_config(TrainConfig(**{name: value}))
    assert allowed in str(err.value) and "\n" not in str(err.value)


def test_the_run_records_them_and_a_resume_reads_them_back_unchanged(tmp_path):
    """training_config.json's "config" is the TrainConfig (a list stays a list through JSON, so a resume with the
    same settings records no change); print_config shows them."""
    cfg = TrainConfig(model="tiny", loss_type="dr_grpo", epsilon_high=0.28, trl_args=["top_entropy_quantile=0.2"])
    segments, _ = run_dir.settings_segments(tmp_path, cfg, 0)
    record = json.loads(json.dumps({"config": cfg.to_dict(), "segments": segments}))
    assert config_from_dict(record) == cfg
    (tmp_path / run_dir.CONFIG_FILE).write_text(json.dumps(record))
    assert run_dir.settings_segments(tmp_path, cfg, 4)[1] == {}
    changed = run_dir.settings_segments(tmp_path, dataclasses.replace(cfg, loss_type="grpo"), 4)[1]
    assert changed == {"loss_type": ["dr_grpo", "grpo"]}
    lines = []
    cli.print_config(cfg, {}, log=lines.append)
    assert any(line.strip().startswith("--loss-type dr_grpo ") for line in lines)
    assert any(line.strip().startswith("--trl-arg top_entropy_quantile=0.2 ") for line in lines)


def test_num_iterations_counts_steps_and_completions():
    """TRL trains each batch num_iterations times (one optimizer step each) on the completions generated once."""
    cfg = TrainConfig(model="tiny", num_samples=8, batch_size=2, num_generations=4, num_iterations=2)
    assert steps_per_epoch(cfg) == 8 and completions_per_step(cfg) == 4
    assert completions_per_step(dataclasses.replace(cfg, num_iterations=3)) == 8 / 3
    assert "num_iterations" in run_dir._RESUME_MUST_MATCH


# --- the notebook ------------------------------------------------------------------------------------------------


def test_notebook_parameters_reach_the_config(tmp_path, monkeypatch):
    """`papermill -p loss_type dr_grpo` reaches make_config and the config: papermill's own injection, then the
    parameters cells and the make_config cell of notebook 01 run here without a kernel, make_config recorded."""
    from papermill.iorw import load_notebook_node
    from papermill.parameterize import parameterize_notebook

    source = load_notebook_node(str(ROOT / "notebooks" / "01_train_musclebob.ipynb"))
    params = dict(model="tiny", loss_type="dr_grpo", scale_rewards="none", num_iterations=2, epsilon_high=0.28)
    injected = parameterize_notebook(source, params)
    namespace = {"run_dir": tmp_path / "run"}
    for cell in injected.cells:
        tags = cell.metadata.get("tags", [])
        if "parameters" in tags or "injected-parameters" in tags:
            exec(cell.source, namespace)
    call = next(c.source for c in injected.cells if "nb.make_config(" in c.source)
    given = {}
    namespace["nb"] = type("Recorder", (), {"make_config": staticmethod(lambda **kw: given.update(kw))})
    exec(call, namespace)
    for name in LOSS_FIELDS:  # every loss setting is a parameter, passed under its own name
        assert name in given, name
    cfg = notebook.make_config(log=lambda *a: None, **given)
    assert (cfg.loss_type, cfg.scale_rewards, cfg.num_iterations, cfg.epsilon_high) == ("dr_grpo", "none", 2, 0.28)
    assert (cfg.mask_truncated_completions, cfg.epsilon) == (False, 0.2)  # the cell's literals: TRL's defaults


# --- the benchmark -----------------------------------------------------------------------------------------------


def load_bench():
    return bench_module.load("bench_learning")


def test_bench_set_types_the_new_fields():
    bench = load_bench()
    values = bench.parse_set(["loss_type=dr_grpo", "epsilon_high=0.28", "trl_args=a=1", "trl_args=b=2"])
    assert values == {"loss_type": "dr_grpo", "epsilon_high": 0.28, "trl_args": ["a=1", "b=2"]}
    assert bench.TABLE_FILES["loss"] == ROOT / "docs" / "loss_types.md"
    assert all(bench.RECIPES[name][1].get("loss_type", "dapo") in LOSS_TYPES for name in bench.MODES["loss"])


def test_the_docs_table_is_the_one_the_json_renders():
    bench = load_bench()
    results = json.loads(bench.results_path("loss").read_text())
    text = bench.TABLE_FILES["loss"].read_text()
    start, end = "<!-- bench_learning loss -->", "<!-- /bench_learning loss -->"
    assert text.split(start, 1)[1].split(end, 1)[0].strip() == bench.markdown_table(results).strip(), (
        "docs/loss_types.md's table is stale: python benchmarks/bench_learning.py --readme"
    )
    assert sorted(results["summary"]) == sorted(bench.MODES["loss"]) and len(results["seeds"]) >= 5


@pytest.mark.slow
def test_a_tiny_run_trains_with_them(tmp_path):
    """A real run (seconds): TRL gets the settings, and its step count is what steps_per_epoch says with
    num_iterations 2 (each batch trained twice), the completions counted once per generation."""
    import torch

    cfg = TrainConfig(
        **{**TINY_RUN, "epochs": 1},
        loss_type="dr_grpo",
        scale_rewards="none",
        num_iterations=2,
        epsilon_high=0.28,
        trl_args=["top_entropy_quantile=0.5"],
        output_dir=str(tmp_path / "run"),
    )
    from musclebob_helpers.startup import start

    result = training.run_training(start(cfg), log=lambda *a, **k: None)
    args = torch.load(tmp_path / "run" / "training_args.bin", weights_only=False)
    assert (args.loss_type, args.scale_rewards, args.num_iterations, args.epsilon_high) == ("dr_grpo", "none", 2, 0.28)
    assert args.top_entropy_quantile == 0.5
    assert result["final"]["global_step"] == steps_per_epoch(cfg) == 4
    assert result["final"]["completions_generated"] == 4 * completions_per_step(cfg) == 12  # 2 batches x 3 x 2
    record = json.loads((tmp_path / "run" / run_dir.CONFIG_FILE).read_text())
    assert config_from_dict(record) == cfg and record["steps_per_epoch"] == 4
