"""One precision for a whole run (``--precision``, ``evaluation.run_dtypes``): the rule, its refusals, the dtype each
validation report records, QLoRA's trainable parameters under fp16, and inf/nan logits as one line.

There is no GPU here: the CUDA cases are the decision functions on hardware dicts, and the autocast a CUDA run
generates under is proven with CPU bf16 autocast on the tiny model, which torch supports."""

import json

import pytest
import torch

import train_musclebob_improved
from conftest import TINY_RUN_ARGS
from musclebob_helpers import evaluation, notebook, training
from musclebob_helpers.config import ConfigError, TrainConfig, preset_config, validate_config
from musclebob_helpers.evaluation import NonFiniteLogits, precision_for, run_dtypes

T4 = {"device": "cuda", "gpu_name": "Tesla T4", "compute_capability": "7.5", "precision": "fp16"}
A100 = {"device": "cuda", "gpu_name": "NVIDIA A100", "compute_capability": "8.0", "precision": "bf16"}
CPU = {"device": "cpu", "gpu_name": None, "compute_capability": None, "precision": "fp32"}


def test_auto_is_the_old_rule_and_an_asked_precision_wins():
    assert precision_for("cuda", (7, 5)) == "fp16" and precision_for("cuda", (8, 0)) == "bf16"
    assert precision_for("cpu", None) == "fp32"
    assert precision_for("cuda", (7, 5), "fp32") == "fp32" and precision_for("cuda", (8, 6), "fp16") == "fp16"


@pytest.mark.parametrize(
    "precision, lora, weights, autocast",
    [
        ("fp16", False, "float32", "float16"),  # full fine-tuning: fp32 master weights, fp16 autocast
        ("fp16", True, "float16", "float16"),  # LoRA: the frozen base stays 16-bit, the same autocast
        ("bf16", False, "float32", "bfloat16"),
        ("bf16", True, "bfloat16", "bfloat16"),
        ("fp32", True, "float32", None),  # the T4 preset: no autocast at all
        ("fp32", False, "float32", None),
    ],
)
def test_how_a_run_holds_its_weights_and_does_its_math(precision, lora, weights, autocast):
    assert run_dtypes(precision, lora) == {"weights": weights, "autocast": autocast}


@pytest.mark.parametrize(
    "precision, hardware, allowed",
    [
        ("fp16", CPU, "fp32 or auto on a CPU"),
        ("bf16", CPU, "fp32 or auto on a CPU"),
        ("bf16", T4, "bf16 needs an Ampere or newer GPU"),
    ],
)
def test_a_precision_the_machine_cannot_do_is_refused_in_one_line(precision, hardware, allowed):
    cfg = TrainConfig(model="tiny", precision=precision)
    with pytest.raises(ConfigError) as info:
        training.check_hardware_support(cfg, hardware)
    line = str(info.value)
    assert line.startswith(f"--precision={precision!r} is not allowed") and allowed in line and "\n" not in line


def test_what_each_machine_can_do_is_accepted():
    for precision, hardware in [("fp32", T4), ("fp16", T4), ("bf16", A100), ("auto", CPU), ("fp32", CPU)]:
        training.check_hardware_support(TrainConfig(model="tiny", precision=precision), hardware)
    with pytest.raises(ConfigError, match="one of auto, fp32, fp16, bf16"):
        validate_config(TrainConfig(model="tiny", precision="fp8"))


def test_the_t4_preset_trains_in_fp32_and_the_estimate_follows_it(capsys):
    from musclebob_helpers import estimate

    assert preset_config("colab-t4").precision == "fp32"
    assert estimate.main(["--preset", "colab-t4", "--output-dir", "/tmp/unused-estimate"]) == 0
    fp32 = capsys.readouterr().out
    assert estimate.main(["--preset", "colab-t4", "--precision", "fp16", "--output-dir", "/tmp/unused-estimate"]) == 0
    fp16 = capsys.readouterr().out

    def weights(text):  # the LoRA base: 4 B/param in fp32, 2 in fp16
        return float(next(line for line in text.splitlines() if line.strip().startswith("weights")).split()[1])

    assert weights(fp32) == pytest.approx(2 * weights(fp16), rel=0.01)


def test_cli_refuses_fp16_on_a_cpu_before_any_model_loads(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(evaluation, "load_model", lambda *a, **k: pytest.fail("a model was loaded"))
    with pytest.raises(SystemExit) as info:
        train_musclebob_improved.main([*TINY_RUN_ARGS, "--precision", "fp16", "--output-dir", str(tmp_path / "r")])
    assert info.value.code == 2
    [line] = capsys.readouterr().err.strip().splitlines()
    assert "--precision='fp16' is not allowed" in line and not (tmp_path / "r").exists()


# --- the dtype a validation records, and the autocast it generates under ------------------------------------


def autocast_seen(model) -> list:
    """A forward hook recording, at each forward, whether CPU autocast was on and in which dtype."""
    seen = []
    model.register_forward_hook(
        lambda m, a, o: seen.append(torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu"))
    )
    return seen


def test_a_validation_generates_in_the_runs_precision_and_records_it(tiny_path):
    model, tok = evaluation.load_model(str(tiny_path), device="cpu")
    seen = autocast_seen(model)
    rows = evaluation.data.validation_rows()[:2]
    kwargs = dict(num_samples=1, max_new_tokens=4)  # a few tokens: only the dtypes matter here

    fp32 = evaluation.validate(model, tok, rows, precision="fp32", **kwargs)
    assert fp32["dtype"] == {"precision": "fp32", "weights": ["float32"], "autocast": None}
    assert seen and not any(seen)

    seen.clear()  # what a bf16 GPU run does, on the CPU's own bf16 autocast
    bf16 = evaluation.validate(model, tok, rows, precision="bf16", **kwargs)
    assert bf16["dtype"] == {"precision": "bf16", "weights": ["float32"], "autocast": "bfloat16"}
    assert seen and all(s == torch.bfloat16 for s in seen)
    assert json.loads(json.dumps(bf16))["dtype"] == bf16["dtype"]  # as the JSON file holds it


def test_a_mid_training_check_generates_and_records_as_the_run_does(tiny_path, tmp_path):
    from types import SimpleNamespace

    from musclebob_helpers.monitoring import MidTrainingValidation

    model, tok = evaluation.load_model(str(tiny_path), device="cpu")
    seen = autocast_seen(model)
    rows = evaluation.data.check_rows()[:2]
    checks = MidTrainingValidation(
        tmp_path, tok, rows, every_steps=1, completions_per_step=4, max_new_tokens=4, samples=1, log=lambda *a: None
    )
    checks.precision = "bf16"
    checks._check(SimpleNamespace(global_step=1, epoch=0.5, is_world_process_zero=True), model)
    [entry] = json.loads((tmp_path / "validation_history.json").read_text())
    assert entry["dtype"]["autocast"] == "bfloat16" and all(s == torch.bfloat16 for s in seen)


def test_the_notebook_baseline_is_run_trainings_and_writes_nothing(tmp_path, monkeypatch):
    calls = []
    real = training.measure_baseline
    monkeypatch.setattr(training, "measure_baseline", lambda *a, **k: calls.append(a[3]) or real(*a, **k))
    monkeypatch.setattr(notebook, "_show_answers", lambda report, limit=4: None)  # IPython display: not here
    cfg = TrainConfig(model="tiny", output_dir=str(tmp_path), validation_samples=1, max_completion_length=4)
    report = notebook.baseline_validation(cfg, log=lambda *a: None)
    assert calls == [training.detect_hardware("auto")]  # the function run_training calls, with the run's hardware
    assert report["dtype"]["precision"] == "fp32" and not (tmp_path / "baseline_validation.json").exists()


# --- QLoRA's trainable parameters ---------------------------------------------------------------------------


def trainable_dtypes(tmp_path, precision: str) -> set:
    """The trainable dtypes of a LoRA trainer on the tiny model flagged 4-bit, as bitsandbytes' loading flags it
    (TRL's QLoRA cast keys on that flag), built with ``precision``'s GRPOConfig."""
    model, tok = evaluation.load_model("tiny", device="cpu")
    model.is_loaded_in_4bit = True
    cfg = TrainConfig(model="tiny", lora=True, num_samples=4, batch_size=2, num_generations=2, output_dir=str(tmp_path))
    args = training.grpo_args(cfg, {"device": "cpu", "precision": precision}, out=tmp_path)
    trainer = training.grpo_trainer(cfg, model, tok, args)
    return {p.dtype for p in trainer.model.parameters() if p.requires_grad}


def test_qlora_trainables_are_fp32_under_fp16(tmp_path):
    # GradScaler cannot unscale bf16 gradients: fp32 before the optimizer is made in train().
    assert trainable_dtypes(tmp_path, "fp16") == {torch.float32}


def test_qlora_trainables_stay_bf16_under_bf16(tmp_path):
    # TRL's QLoRA recipe; bf16 needs no scaler. (That TRL casts them at all is why fp16 needs the line above.)
    assert trainable_dtypes(tmp_path, "bf16") == {torch.bfloat16}


# --- inf/nan logits: one line, exit 2 -------------------------------------------------------------------------


def test_the_line_says_what_to_do_for_each_precision():
    fp16 = str(NonFiniteLogits("fp16", "a training rollout"))
    assert "fp16 overflowed" in fp16 and "--precision fp32" in fp16 and "bf16" in fp16 and "\n" not in fp16
    assert "--precision fp32" in str(NonFiniteLogits("bf16", "validation"))
    assert "--learning-rate" in str(NonFiniteLogits("fp32", "validation"))


def inject_inf(monkeypatch, when):
    """Every model the run loads gets a forward hook that puts inf into its logits whenever ``when(module)``."""
    real = evaluation.load_model

    def load(*args, **kwargs):
        model, tok = real(*args, **kwargs)

        def poison(module, inputs, output):
            if when(module):
                output.logits[:, -1, 0] = float("inf")
            return output

        model.register_forward_hook(poison)
        return model, tok

    monkeypatch.setattr(evaluation, "load_model", load)


def run_cli(tmp_path, capsys) -> tuple[int, str, str]:
    code = train_musclebob_improved.main([*TINY_RUN_ARGS, "--output-dir", str(tmp_path / "run")])
    out = capsys.readouterr()
    return code, out.out, out.err


def test_inf_logits_in_the_baseline_are_one_line(tmp_path, capsys, monkeypatch):
    inject_inf(monkeypatch, lambda module: True)
    with pytest.raises(SystemExit) as info:
        run_cli(tmp_path, capsys)
    err = capsys.readouterr().err
    assert info.value.code == 2 and "Traceback" not in err
    [line] = [s for s in err.strip().splitlines() if "error:" in s]  # stderr also holds the weights' loading bar
    assert "non-finite logits (inf/nan) in fp32 during validation" in line
    assert not (tmp_path / "run" / "baseline_validation.json").exists()


def test_inf_logits_in_a_training_rollout_are_one_line(tmp_path, capsys, monkeypatch):
    inject_inf(monkeypatch, lambda module: module.training)  # validation runs in eval mode, TRL's rollouts do not
    with pytest.raises(SystemExit) as info:
        run_cli(tmp_path, capsys)
    err = capsys.readouterr().err
    assert info.value.code == 2 and "Traceback" not in err and "multinomial" not in err
    [line] = [s for s in err.strip().splitlines() if "error:" in s]
    assert "non-finite logits (inf/nan) in fp32 during a training rollout" in line
    run = tmp_path / "run"
    baseline = json.loads((run / "baseline_validation.json").read_text())  # the baseline was fine, and recorded
    assert baseline["dtype"] == {"precision": "fp32", "weights": ["float32"], "autocast": None}
    saved = json.loads((run / "training_config.json").read_text())
    assert saved["config"]["precision"] == "auto" and saved["hardware"]["precision"] == "fp32"


@pytest.mark.parametrize("hardware, expected", [(T4, "fp32"), (A100, "auto"), (CPU, "auto")])
def test_the_notebooks_default_precision_is_the_machines_preset(tmp_path, monkeypatch, hardware, expected):
    gpu = {**hardware, "gpu_memory_gb": 15.0 if hardware is T4 else 40.0}
    gpu["recommended_preset"] = training.recommend_preset(gpu)
    monkeypatch.setattr(training, "detect_hardware", lambda precision="auto": gpu)
    cfg = notebook.make_config(model="tiny", precision=None, output_dir=str(tmp_path), log=lambda *a: None)
    assert cfg.precision == expected
