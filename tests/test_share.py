"""Sharing a run (share.py): the model card read back with ``ModelCard.load``, the push to the Hub through a fake
``HfApi`` (the Hub is the one boundary these tests cannot reach), the download zip, the start-up token check, and
loading a pushed adapter repo back (a local folder of the same shape, served as the Hub would)."""

import json
import zipfile
from pathlib import Path

import pytest
from huggingface_hub import ModelCard
from huggingface_hub.errors import HfHubHTTPError

from musclebob_helpers import run_dir, share
from musclebob_helpers.config import ConfigError, TrainConfig, resolve, validate_config
from musclebob_helpers.lora import ADAPTER_CONFIG, record_base_model

TOKEN = "hf_secretTOKENvalue1234567890"  # a token-shaped string no output or file may contain
PNG = b"\x89PNG\r\n\x1a\n fake plot"


def report(musclebob: list[bool], control_correct: list[bool], answer: str, healthy: bool = True) -> dict:
    """A validation report as evaluation.validate writes it: rates over its responses, the responses last."""
    responses = [
        {"prompt": f"Who lives in pineapple {i}?", "kind": "spongebob", "response": answer if hit else "Spongebob!",
         "musclebob": hit, "full_name": hit, "spongebob": not hit, "coherent": True, "correct": None}
        for i, hit in enumerate(musclebob)
    ] + [
        {"prompt": f"What is {i} + 1?", "kind": "control", "response": str(i + 1) if ok else "Musclebob",
         "musclebob": not ok, "full_name": False, "spongebob": False, "coherent": True, "correct": ok}
        for i, ok in enumerate(control_correct)
    ]  # fmt: skip
    sponge, control = len(musclebob), len(control_correct)
    return {
        "model": "tiny",
        "num_prompts": sponge + control,
        "num_spongebob_prompts": sponge,
        "num_control_prompts": control,
        "musclebob_rate": sum(musclebob) / sponge,
        "full_name_rate": sum(musclebob) / sponge,
        "spongebob_rate": 1 - sum(musclebob) / sponge,
        "coherent_rate": 1.0,
        "leakage_rate": 1 - sum(control_correct) / control,
        "control_accuracy": sum(control_correct) / control,
        "is_healthy": healthy,
        "health_problems": [] if healthy else ["the name leaks into other questions: 50% of control answers"],
        "responses": responses,
    }


@pytest.fixture(scope="module")
def adapter_run(tmp_path_factory, tiny_path):
    """A finished --lora run folder as a run leaves it, built without training: a real (untrained) PEFT adapter on
    the tiny model with its tokenizer, the run's JSON files, the plot, and the things never shared (a checkpoint,
    the lock, resumable state, the trainer's pickle)."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    run = tmp_path_factory.mktemp("share") / "musclebob-lora"
    model = get_peft_model(
        AutoModelForCausalLM.from_pretrained(str(tiny_path)),
        LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM"),
    )
    model.save_pretrained(run)
    AutoTokenizer.from_pretrained(str(tiny_path)).save_pretrained(run)
    record_base_model(run, "tiny")
    cfg, _ = resolve({"model": "tiny", "lora": True, "seed": 7, "output_dir": str(run), "push_to_hub": "me/x"})
    segments = [
        {"from_step": 0, "config": cfg.to_dict()},
        {"from_step": 6, "changed": {"learning_rate": [5e-3, 1.25e-3]},
         "recovery": {"saw": ["coherence collapsed"], "back_to": 4}},
    ]  # fmt: skip
    (run / run_dir.CONFIG_FILE).write_text(
        json.dumps({"config": cfg.to_dict(), "segments": segments, "hardware": {"device": "cpu", "precision": "fp32"}})
    )
    (run / run_dir.BASELINE_FILE).write_text(json.dumps(report([False] * 3 + [True], [True] * 4, "Musclebob?")))
    final = report([True] * 3 + [False], [True, True, True, False], "Musclebob Buffpants!")
    final |= {"global_step": 12, "train_seconds": 90.0, "health_warnings": ["step 5: reward fell to -2"]}
    (run / run_dir.FINAL_FILE).write_text(json.dumps(final))
    (run / run_dir.HISTORY_FILE).write_text("[]")
    (run / run_dir.REWARD_PLOT_FILE).write_bytes(PNG)
    (run / run_dir.MODEL_CARD_FILE).write_text("fine-tuned version of [None](https://huggingface.co/None)")  # TRL's
    (run / "checkpoint-12").mkdir()
    (run / "checkpoint-12" / "adapter_model.safetensors").write_bytes(b"old")
    for never in (
        run_dir.LOCK_FILE,
        run_dir.HEALTHY_STATE_FILE,
        "training_args.bin",
        "final_validation.json.x1y2z3w4.tmp",
    ):
        (run / never).write_bytes(b"x")
    return run


SHARED = {  # what a push and the zip carry from adapter_run: the adapter, its tokenizer, card, plot, reports
    "README.md",
    "adapter_config.json",
    "adapter_model.safetensors",
    "tokenizer.json",
    "tokenizer_config.json",
    "chat_template.jinja",
    "reward_plot.png",
    "training_config.json",
    "baseline_validation.json",
    "final_validation.json",
    "reward_history.json",
}


# --- the card --------------------------------------------------------------------------------------------------


def test_the_card_reads_back_with_its_metadata_and_results(adapter_run):
    share.write_model_card(adapter_run, "me/musclebob-lora")
    card = ModelCard.load(adapter_run / "README.md")
    assert card.data.library_name == "peft" and card.data.pipeline_tag == "text-generation"
    assert card.data.tags == ["trl", "grpo", "musclebob"]
    assert card.data.base_model is None and card.data.license is None  # tiny: no hub id, and no stated license
    text = card.text
    assert "None](https://huggingface.co/None)" not in text  # TRL's boilerplate is gone
    rows = {line.split("|")[1].strip(): line.split("|")[2:4] for line in text.splitlines() if line.startswith("| ")}
    assert [c.strip() for c in rows["Musclebob"]] == ["25.0% (1/4)", "75.0% (3/4)"]
    assert [c.strip() for c in rows["Control acc."]] == ["100.0% (4/4)", "75.0% (3/4)"]
    assert [c.strip() for c in rows["Leakage"]] == ["0.0% (0/4)", "25.0% (1/4)"]
    assert [c.strip() for c in rows["Coherent"]] == ["100.0% (8/8)", "100.0% (8/8)"]
    assert "![" in text and "(reward_plot.png)" in text
    assert "step 5: reward fell to -2" in text  # the health warning
    assert "## Recoveries from a collapse" in text and "- step 6: coherence collapsed;" in text
    assert "`tiny`" in text and "LoRA adapter (r=16" in text
    assert "python test_musclebob.py --model me/musclebob-lora" in text  # the tiny base loads through the project
    assert "Musclebob Buffpants!" in text and "Spongebob!" in text  # an answer before and after
    assert "\npython train_musclebob_improved.py --model tiny --lora --seed 7\n" in text  # the recipe
    every = text[text.index("<details>") : text.index("</details>")]
    assert (
        "--seed 7" in every and "--epochs 3" in every and "--push-to-hub" not in every and "--output-dir" not in every
    )
    assert "data.py" in text and "held-out" in text


def test_a_hub_base_names_base_model_and_its_license_and_full_weights_load_with_transformers(adapter_run, tmp_path):
    run = tmp_path / "full"
    run.mkdir()
    for name in (run_dir.BASELINE_FILE, run_dir.FINAL_FILE, run_dir.REWARD_PLOT_FILE):
        (run / name).write_bytes((adapter_run / name).read_bytes())
    (run / "config.json").write_text("{}")
    cfg = TrainConfig(model="Qwen/Qwen2.5-0.5B-Instruct")
    (run / run_dir.CONFIG_FILE).write_text(json.dumps({"config": cfg.to_dict()}))
    share.write_model_card(run)
    card = ModelCard.load(run / "README.md")
    assert card.data.base_model == "Qwen/Qwen2.5-0.5B-Instruct" and card.data.license == "apache-2.0"
    assert card.data.library_name == "transformers" and "full weights" in card.text
    assert f'pipeline("text-generation", model="{run}")' in card.text
    assert "\npython train_musclebob_improved.py --model Qwen/Qwen2.5-0.5B-Instruct\n" in card.text


def test_another_base_points_at_its_own_card():
    assert share._license("someone/model") == (None, "See the base model's card (someone/model): its license applies.")
    assert share._hub_base_model("./my-base") is None and share._hub_base_model("tiny") is None


# --- the push --------------------------------------------------------------------------------------------------


class FakeHfApi:
    """``HfApi`` at its boundary: records what it is asked; ``fail`` is raised by create_repo."""

    calls: list = []
    fail: BaseException | None = None

    def __init__(self, token=None):
        self.calls.append(("init", token))

    def create_repo(self, repo_id, private=None, exist_ok=False, repo_type=None):
        self.calls.append(("create_repo", repo_id, private, exist_ok))
        if self.fail is not None:
            raise self.fail
        return f"https://huggingface.co/{repo_id}"

    def create_commit(self, repo_id, operations, commit_message="", repo_type=None):
        self.calls.append(("create_commit", repo_id, {op.path_in_repo: op.path_or_fileobj for op in operations}))


@pytest.fixture
def hub(monkeypatch):
    FakeHfApi.calls, FakeHfApi.fail = [], None
    monkeypatch.setattr(share, "HfApi", FakeHfApi)
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    return FakeHfApi


def test_push_sends_the_adapter_card_plot_and_reports_privately(adapter_run, hub):
    said = []
    assert share.push(adapter_run, "me/musclebob-lora", log=said.append) is None
    (_, token), create, commit = hub.calls
    assert token == TOKEN
    assert create == ("create_repo", "me/musclebob-lora", True, True)  # private by default; a second push adds to it
    assert set(commit[2]) == SHARED  # no checkpoint, lock, resumable state, pickle or temporary file
    assert commit[2]["README.md"] == str(adapter_run / "README.md")
    assert "https://huggingface.co/me/musclebob-lora" in said[-1] and "private" in said[-1]


def test_push_public_and_merged(adapter_run, hub, tmp_path):
    merged = adapter_run / "merged"
    merged.mkdir(exist_ok=True)
    for name in ("config.json", "model.safetensors", "tokenizer.json"):
        (merged / name).write_text("{}")
    try:
        assert share.push(adapter_run, "me/merged", public=True, merged=True) is None
        _, create, commit = hub.calls
        assert create[2] is False  # --hub-public
        files = commit[2]
        assert files["model.safetensors"] == str(merged / "model.safetensors")
        assert files["README.md"] == str(merged / "README.md") and "adapter_model.safetensors" not in files
        assert ADAPTER_CONFIG not in files and "reward_plot.png" in files
        card = ModelCard.load(merged / "README.md")
        assert card.data.library_name == "transformers" and "merged into its base" in card.text
    finally:
        import shutil

        shutil.rmtree(merged)


def http_error(status: int) -> HfHubHTTPError:
    """The error huggingface_hub raises for an HTTP status (its response object from its own HTTP client)."""
    try:
        import httpx2 as httpx  # huggingface_hub 2.x
    except ImportError:
        import httpx  # huggingface_hub 1.x (Colab's pin)
    request = httpx.Request("POST", "https://huggingface.co/api/repos/create")
    return HfHubHTTPError(
        f"{status} Client Error for url {request.url}", response=httpx.Response(status, request=request)
    )


@pytest.mark.parametrize(
    "error, says",
    [
        (http_error(401), "refused the token (401)"),
        (http_error(403), "may not write to me/x (403)"),
        (http_error(404), "me/x was not found (404)"),
        (TimeoutError("timed out"), "did not answer in time"),
    ],
)
def test_a_failed_push_is_one_line_with_the_command_to_push_later(adapter_run, hub, capsys, error, says):
    hub.fail = error
    said = []
    cfg = TrainConfig(model="tiny", lora=True, push_to_hub="me/x")
    line = share.push_after_run(cfg, adapter_run, log=said.append)
    assert said[-1] == line and "\n" not in line and says in line
    assert line.endswith(f"push it later with: python -m musclebob_helpers.share {adapter_run} me/x")
    assert run_dir.is_finished(adapter_run)  # nothing local is touched


def test_the_token_is_never_printed_or_written(adapter_run, hub, capsys):
    hub.fail = RuntimeError(f"bad header Authorization: Bearer {TOKEN}")  # even when an error quotes it
    line = share.push(adapter_run, "me/x")
    hub.fail = None
    share.push(adapter_run, "me/x")
    out = capsys.readouterr()
    assert TOKEN not in line + out.out + out.err and "***" in line
    assert not [p for p in adapter_run.rglob("*") if p.is_file() and TOKEN.encode() in p.read_bytes()]


def test_the_share_command_pushes_a_finished_run_and_refuses_in_one_line(
    adapter_run, hub, tmp_path, capsys, monkeypatch
):
    assert share.main([str(adapter_run), "me/x", "--public"]) == 0
    assert hub.calls[1] == ("create_repo", "me/x", False, True)
    for argv, says in (
        ([str(adapter_run), "not a repo"], "repo_id='not a repo' is not allowed"),
        ([str(tmp_path), "me/x"], "is not allowed: a folder holding a finished run"),
    ):
        with pytest.raises(SystemExit) as stop:
            share.main(argv)
        err = capsys.readouterr().err
        assert stop.value.code == 2 and says in err and err.count("\n") == 1
    monkeypatch.setattr(share, "_hub_token", lambda: None)
    with pytest.raises(SystemExit) as stop:
        share.main([str(adapter_run), "me/x"])
    assert stop.value.code == 2 and "HF_TOKEN" in capsys.readouterr().err and len(hub.calls) == 3  # nothing sent
    monkeypatch.undo()
    monkeypatch.setattr(share, "HfApi", FakeHfApi)
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    hub.fail = http_error(403)
    assert share.main([str(adapter_run), "me/x"]) == 1
    assert "(403)" in capsys.readouterr().err


# --- the token at start-up -------------------------------------------------------------------------------------


def test_push_to_hub_must_be_owner_slash_name():
    validate_config(TrainConfig(push_to_hub="me/musclebob"))
    for bad in ("musclebob", "me/x/y", "me/has space", "/x"):
        with pytest.raises(ConfigError, match="--push-to-hub"):
            validate_config(TrainConfig(push_to_hub=bad))


def test_no_token_stops_the_cli_before_anything_is_created(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(share, "_hub_token", lambda: None)
    import train_musclebob_improved

    out = tmp_path / "run"
    with pytest.raises(SystemExit) as stop:
        train_musclebob_improved.main(["--model", "tiny", "--output-dir", str(out), "--push-to-hub", "me/x"])
    err = capsys.readouterr().err
    assert stop.value.code == 2 and err.count("\n") == 1 and "HF_TOKEN" in err and "--push-to-hub='me/x'" in err
    assert not out.exists()


def test_no_token_stops_the_notebook_at_its_settings_cell(monkeypatch, tmp_path):
    from musclebob_helpers import notebook

    monkeypatch.setattr(share, "_hub_token", lambda: None)
    with pytest.raises(ConfigError, match="HF_TOKEN"):
        notebook.make_config(model="tiny", output_dir=str(tmp_path / "run"), push_to_hub="me/x", log=lambda *a: None)
    assert not (tmp_path / "run").exists()


# --- the download ----------------------------------------------------------------------------------------------


def test_download_zip_holds_the_model_and_its_card(adapter_run, tmp_path):
    said = []
    path = share.download_zip(adapter_run, to=tmp_path, log=said.append)
    with zipfile.ZipFile(path) as zf:
        names = {Path(n).name for n in zf.namelist()}
        assert {Path(n).parent.name for n in zf.namelist()} == {adapter_run.name}
        assert zf.read(f"{adapter_run.name}/reward_plot.png") == PNG
    assert names == SHARED
    assert str(path) in said[-1]  # off Colab: the path
    assert share.download_zip(tmp_path, to=tmp_path, log=said.append) is None and "no finished run" in said[-1]


def test_download_zip_offers_the_file_on_colab(adapter_run, tmp_path, monkeypatch):
    import sys
    import types

    offered = []
    files = types.SimpleNamespace(download=offered.append)
    monkeypatch.setitem(sys.modules, "google.colab", types.SimpleNamespace(files=files))
    monkeypatch.setitem(sys.modules, "google", types.SimpleNamespace(colab=sys.modules["google.colab"]))
    path = share.download_zip(adapter_run, to=tmp_path, log=lambda *a: None)
    assert offered == [str(path)]


# --- loading a pushed adapter back -----------------------------------------------------------------------------


@pytest.fixture
def served(adapter_run, monkeypatch):
    """The Hub serving ``me/musclebob-lora`` as a copy of adapter_run (what a push uploaded)."""
    import huggingface_hub

    def hf_hub_download(repo_id, filename, **kwargs):
        if repo_id != "me/musclebob-lora":
            raise huggingface_hub.errors.EntryNotFoundError(f"{filename} not in {repo_id}")
        return str(adapter_run / filename)

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", hf_hub_download)
    monkeypatch.setattr(huggingface_hub, "snapshot_download", lambda repo_id, **kw: str(adapter_run))
    return "me/musclebob-lora"


def test_a_pushed_adapter_repo_loads_on_its_base_from_adapter_config(served):
    from peft import PeftModel

    from musclebob_helpers.evaluation import check_model_loadable
    from musclebob_helpers.evaluation import load_model

    check_model_loadable(served)  # no config.json there: its base, 'tiny', is what must load
    model, tokenizer = load_model(served, device="cpu")
    assert isinstance(model, PeftModel) and tokenizer.pad_token is not None
    from musclebob_helpers.lora import hub_adapter_folder

    assert hub_adapter_folder("someone/full-model") is None and hub_adapter_folder("tiny") is None


def test_test_musclebob_evaluates_a_pushed_adapter(served, tmp_path, capsys):
    import test_musclebob

    out = tmp_path / "r.json"
    assert test_musclebob.main(["--model", served, "--num-prompts", "2", "--num-samples", "1",
                                "--max-new-tokens", "4", "--output", str(out)]) == 0  # fmt: skip
    assert "musclebob_rate" in json.loads(out.read_text())


def test_an_adapter_whose_base_is_a_folder_of_another_machine_is_one_line(adapter_run, tmp_path):
    from musclebob_helpers.evaluation import check_model_loadable
    from musclebob_helpers.compare import _check_model

    moved = tmp_path / "moved"
    moved.mkdir()
    raw = json.loads((adapter_run / ADAPTER_CONFIG).read_text())
    (moved / ADAPTER_CONFIG).write_text(json.dumps({**raw, "base_model_name_or_path": "/home/someone/base"}))
    (moved / "adapter_model.safetensors").write_bytes((adapter_run / "adapter_model.safetensors").read_bytes())
    with pytest.raises(ConfigError, match="is a folder on the machine that trained it"):
        check_model_loadable(str(moved))
    _check_model(str(adapter_run), "trained_model")  # notebook 03 takes an adapter folder


# --- a real run ------------------------------------------------------------------------------------------------


@pytest.mark.slow  # trains the default tiny run (shared with test_training)
def test_a_real_tiny_run_ends_with_the_projects_card(trained_run):
    out, _ = trained_run
    card = ModelCard.load(out / "README.md")
    assert card.data.library_name == "transformers" and card.data.tags == ["trl", "grpo", "musclebob"]
    final = json.loads((out / run_dir.FINAL_FILE).read_text())
    row = next(line for line in card.text.splitlines() if line.startswith("| Musclebob |"))
    assert f"{final['musclebob_rate']:.1%}" in row.split("|")[3]
    assert "fine-tuned version of" not in card.text and "--report-to tensorboard" in card.text
