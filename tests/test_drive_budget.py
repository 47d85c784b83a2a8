"""A default run fits a free Google Drive: the disk-need estimate, its refusal, and checkpoint rotation.

The estimate (``memory.drive_need``) is checked against real checkpoints written in-process on the tiny model
(``benchmarks/drive_budget.py``'s ``simulate_run``: ``Trainer._save_checkpoint`` + the project's rotation), and
against the Qwen2.5-0.5B-shaped figures that benchmark measured (recorded below with their source).
"""

import json
import shutil
from dataclasses import replace
from pathlib import Path

import pytest

import bench_module
from musclebob_helpers import run_dir
from musclebob_helpers.config import ConfigError, TrainConfig, preset_config, resolve
from musclebob_helpers.run_dir import (
    DELETING_PREFIX,
    check,
    checkpoint_problems,
    list_checkpoints,
    remove_leftover_deletions,
    rotate_checkpoints,
    _select_checkpoint,
)
from musclebob_helpers.memory import GB, drive_need, _model_config, model_shape
from musclebob_helpers.startup import start

ROOT = Path(__file__).resolve().parent.parent
QWEN = "Qwen/Qwen2.5-0.5B-Instruct"
BUDGET_GB = 8.0  # the Drive budget of a default notebook run (docs/reliability.md, "Disk and Google Drive space")
FREE_DRIVE = 15 * GB  # a free Google account's quota, before the user's own files

# Measured by `OMP_NUM_THREADS=1 python benchmarks/drive_budget.py` (benchmarks/results_drive_budget.json):
# a Qwen2.5-0.5B-shaped model (random weights, the tiny tokenizer), real Trainer checkpoints, bytes on disk.
QWEN_MEASURED = {  # bytes, 5 epochs x 32 steps, keep 2; full: 3 epochs written, the whole run extrapolated
    "full": {"checkpoint": 5_928_831_584, "final": 1_976_205_243, "peak": 17_786_383_153, "written": 31_620_251_564},
    "lora": {"checkpoint": 106_146_656, "final": 35_283_702, "peak": 318_326_849, "written": 565_641_486},
}


@pytest.fixture(scope="module")
def bench():
    return bench_module.load("drive_budget")


def _run_tiny(bench, tmp_path, lora, epochs=3, keep=2):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from musclebob_helpers.tiny_model import SHIPPED_DIR as path

    cfg = replace(TrainConfig(model="tiny", lora=lora), epochs=epochs, num_samples=16, keep_checkpoints=keep)
    out = tmp_path / ("lora" if lora else "full")
    got = bench.simulate_run(
        AutoModelForCausalLM.from_pretrained(path), AutoTokenizer.from_pretrained(path), cfg, out, log=lambda *a: None
    )
    return cfg, out, got


@pytest.mark.parametrize("lora", [False, True], ids=["full", "lora"])
def test_estimate_matches_real_tiny_checkpoints(bench, tmp_path, lora):
    cfg, out, got = _run_tiny(bench, tmp_path, lora)
    est = drive_need(cfg)
    assert est.checkpoint == pytest.approx(got["checkpoint_bytes"], rel=0.03)
    assert est.final == pytest.approx(got["final_bytes"], rel=0.03)
    # The peak: two kept + the newest written; the benchmark writes no validation reports (RUN_ARTIFACTS_BYTES).
    from musclebob_helpers.memory import RUN_ARTIFACTS_BYTES

    assert est.peak - RUN_ARTIFACTS_BYTES == pytest.approx(got["peak_bytes"], rel=0.05)
    assert est.peak - RUN_ARTIFACTS_BYTES >= got["peak_bytes"]  # never an underestimate
    assert [c.name for c in list_checkpoints(out)] == ["checkpoint-8", "checkpoint-12"]  # newest + one fallback
    assert all(not checkpoint_problems(c) for c in list_checkpoints(out))


@pytest.mark.parametrize("kind", ["full", "lora"])
def test_estimate_matches_the_measured_qwen_checkpoints(kind):
    cfg = TrainConfig(model=QWEN, lora=kind == "lora")
    est = drive_need(cfg, tokenizer=34_862)  # the benchmark saves the tiny model's tokenizer files
    measured = QWEN_MEASURED[kind]
    assert est.checkpoint == pytest.approx(measured["checkpoint"], rel=0.03)
    assert est.final == pytest.approx(measured["final"], rel=0.03)
    from musclebob_helpers.memory import RUN_ARTIFACTS_BYTES  # validation reports etc.: not in the benchmark

    assert est.peak - RUN_ARTIFACTS_BYTES == pytest.approx(measured["peak"], rel=0.03)
    assert est.written - RUN_ARTIFACTS_BYTES == pytest.approx(measured["written"], rel=0.03)


def test_qwen_config_file_has_the_real_architecture():
    raw = json.loads((ROOT / "musclebob_helpers" / "model_configs" / "Qwen2.5-0.5B-Instruct.json").read_text())
    assert (
        raw["hidden_size"],
        raw["intermediate_size"],
        raw["num_hidden_layers"],
        raw["num_attention_heads"],
        raw["num_key_value_heads"],
        raw["vocab_size"],
        raw["tie_word_embeddings"],
        raw["rope_theta"],
        raw["max_position_embeddings"],
    ) == (896, 4864, 24, 14, 2, 151936, True, 1e6, 32768)
    assert _model_config(QWEN).hidden_size == 896
    assert model_shape(QWEN).params == 494_032_768  # Qwen2.5-0.5B's published size (0.49B)


def test_the_notebook_default_fits_the_budget_and_full_fine_tuning_does_not():
    default = preset_config("colab-t4")
    assert default.lora and default.keep_checkpoints == 2 and default.learning_rate == 5e-4
    need = drive_need(default)
    assert need.written < 1 * GB < BUDGET_GB * GB  # every checkpoint it writes, deleted ones in Drive's trash too
    full = drive_need(TrainConfig())
    assert full.peak > 15 * GB and full.written > 30 * GB  # why full fine-tuning is not the Colab default
    assert full.checkpoint == pytest.approx(5.94 * GB, rel=0.01)


def test_lora_gets_loras_learning_rate_unless_set():
    cfg, sources = resolve({"lora": True})
    assert cfg.learning_rate == 5e-4 and sources["learning_rate"] == "LoRA default"
    tiny, sources = resolve({"model": "tiny", "lora": True})
    assert tiny.learning_rate == 2e-3 and sources["learning_rate"] == "tiny-model LoRA default"
    mine, sources = resolve({"lora": True, "learning_rate": 1e-4})
    assert mine.learning_rate == 1e-4 and sources["learning_rate"] == "you"


# --------------------------------------------------------------------------------- refusal


@pytest.fixture
def fake_drive(tmp_path, monkeypatch):
    """A mounted 'Google Drive' under tmp_path with 15 GB free."""
    drive = tmp_path / "content" / "drive"
    (drive / "MyDrive").mkdir(parents=True)
    monkeypatch.setattr(run_dir, "DRIVE_MOUNT", drive)
    usage = shutil.disk_usage(tmp_path)
    monkeypatch.setattr(run_dir.shutil, "disk_usage", lambda p: usage._replace(free=int(FREE_DRIVE)))
    return drive / "MyDrive"


def test_full_fine_tuning_on_a_free_drive_is_refused_in_one_line(fake_drive):
    with pytest.raises(ConfigError) as err:
        check(TrainConfig(output_dir=str(fake_drive / "run")))
    msg = str(err.value)
    assert "\n" not in msg and msg.startswith("--output-dir=")
    assert "31.7 GB" in msg and "15.0 GB are free" in msg and "trash" in msg and "--lora" in msg


def test_lora_on_a_free_drive_is_accepted(fake_drive):
    cfg = preset_config("colab-t4", output_dir=str(fake_drive / "run"))
    folder = check(cfg)
    assert folder.path == fake_drive / "run" and folder.state == "new" and folder.resume is None
    # On Drive every checkpoint ever saved counts (the trash): LoRA's whole run, ~0.6 GB, fits 15 GB.
    assert folder.need.lora and folder.need.written < 1 * GB < FREE_DRIVE
    assert run_dir._drive_space_problem(cfg) is None


def test_on_a_local_disk_the_peak_counts_and_existing_checkpoints_are_reused(tmp_path, monkeypatch):
    usage = shutil.disk_usage(tmp_path)
    monkeypatch.setattr(run_dir.shutil, "disk_usage", lambda p: usage._replace(free=int(15 * GB)))
    cfg = TrainConfig(output_dir=str(tmp_path / "run"))  # full fine-tuning: 17.8 GB at its peak
    with pytest.raises(
        ConfigError,
        match=r"^--output-dir=.*about 17\.8 GB there \(3 checkpoints.*only 15\.0 GB are free.*--keep-checkpoints 1",
    ):
        check(cfg)
    check(replace(cfg, keep_checkpoints=1))  # 2 x 5.9 GB at once while the newest is written: 11.9 GB
    check(replace(cfg, epochs=2))  # 2 checkpoints in all (+ the final model) fit as well
    old = tmp_path / "run" / "checkpoint-8"
    old.mkdir(parents=True)
    with open(old / "optimizer.pt", "wb") as fh:  # a sparse 4 GB file: the resumed run will rotate it away
        fh.truncate(int(4 * GB))
    assert run_dir._drive_space_problem(cfg) is None


def test_the_cli_prints_the_need_and_refuses_with_exit_2(tmp_path, monkeypatch, capsys):
    import train_musclebob_improved

    usage = shutil.disk_usage(tmp_path)
    monkeypatch.setattr(run_dir.shutil, "disk_usage", lambda p: usage._replace(free=int(2 * GB)))
    with pytest.raises(SystemExit) as exit_info:
        train_musclebob_improved.main(["--output-dir", str(tmp_path / "run")])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "needs about 17.8 GB" in err[0] and "--lora" in err[0]


def test_make_config_prints_the_need_and_the_start_refuses_a_run_that_does_not_fit(tmp_path, monkeypatch):
    from musclebob_helpers import evaluation
    from musclebob_helpers import notebook as nb

    monkeypatch.setattr(evaluation, "check_model_loadable", lambda *a: None)
    lines = []
    nb.make_config(log=lines.append, model=QWEN, lora=True, output_dir=str(tmp_path / "run"))
    assert any(line.startswith("Disk need of this run: 0.") for line in lines), lines
    usage = shutil.disk_usage(tmp_path)
    monkeypatch.setattr(run_dir.shutil, "disk_usage", lambda p: usage._replace(free=int(1 * GB)))
    with pytest.raises(ConfigError, match="needs about 17.8 GB"):  # the folder is checked once, at the start
        nb.make_config(log=lines.append, model=QWEN, output_dir=str(tmp_path / "run"))  # the notebook's start
    with pytest.raises(ConfigError, match="needs about 17.8 GB"):  # the training cell run alone starts again
        nb.train(TrainConfig(model=QWEN, output_dir=str(tmp_path / "run")), live=False, log=lines.append)
    assert not (tmp_path / "run").exists()


# --------------------------------------------------------------------------------- rotation


@pytest.fixture(scope="module")
def tiny_checkpoints(bench, tmp_path_factory):
    """Three intact tiny checkpoints (steps 4, 8, 12), nothing rotated."""
    _, out, _ = _run_tiny(bench, tmp_path_factory.mktemp("rot"), lora=True, epochs=3, keep=0)
    return out


def _copy(src, dest):
    shutil.copytree(src, dest)
    return dest


def test_rotation_keeps_the_newest_two(tiny_checkpoints, tmp_path):
    out = _copy(tiny_checkpoints, tmp_path / "run")
    assert rotate_checkpoints(out, 2, log=lambda *a: None) == ["checkpoint-4"]
    assert [c.name for c in list_checkpoints(out)] == ["checkpoint-8", "checkpoint-12"]
    assert not list(out.glob(DELETING_PREFIX + "*"))


def test_rotation_deletes_nothing_while_the_newest_is_incomplete(tiny_checkpoints, tmp_path):
    out = _copy(tiny_checkpoints, tmp_path / "run")
    (out / "checkpoint-12" / "trainer_state.json").unlink()  # a save cut short: trainer_state.json comes last
    said = []
    assert rotate_checkpoints(out, 1, log=said.append) == []
    assert len(list_checkpoints(out)) == 3 and "not intact" in said[0]
    assert _select_checkpoint(out, log=lambda *a: None).endswith("checkpoint-8")  # the fallback is there


def test_rotation_ignores_and_keeps_damaged_folders(tiny_checkpoints, tmp_path):
    # transformers' save_total_limit would count checkpoint-12.damaged and keep it as "the most recent".
    out = _copy(tiny_checkpoints, tmp_path / "run")
    shutil.copytree(out / "checkpoint-12", out / "checkpoint-12.damaged")
    assert rotate_checkpoints(out, 1, log=lambda *a: None) == ["checkpoint-4", "checkpoint-8"]
    assert (out / "checkpoint-12.damaged").is_dir() and not checkpoint_problems(out / "checkpoint-12")


@pytest.mark.parametrize("keep", [1, 2, 3])
def test_rotation_never_leaves_zero_intact_checkpoints(tiny_checkpoints, tmp_path, keep):
    """Whatever state a kill leaves (newest complete or not, a deletion cut short), an intact checkpoint remains."""
    for damage_newest in (False, True):
        out = _copy(tiny_checkpoints, tmp_path / f"run-{damage_newest}")
        if damage_newest:  # killed while writing the newest
            (out / "checkpoint-12" / "optimizer.pt").write_bytes(b"half")
        else:  # killed in an earlier rotation, between renaming the oldest and deleting it
            doomed = list_checkpoints(out)[0]
            doomed.rename(doomed.with_name(DELETING_PREFIX + doomed.name))
        assert any(not checkpoint_problems(c) for c in list_checkpoints(out))
        rotate_checkpoints(out, keep, log=lambda *a: None)
        assert any(not checkpoint_problems(c) for c in list_checkpoints(out))
        remove_leftover_deletions(out)
        assert not list(out.glob(DELETING_PREFIX + "*"))
        assert _select_checkpoint(out, log=lambda *a: None) is not None


def test_a_resume_on_drive_needs_only_the_epochs_to_come(fake_drive):
    run = fake_drive / "run"
    (run / "checkpoint-96").mkdir(parents=True)  # 3 of 5 epochs done (32 steps an epoch)
    cfg = TrainConfig(output_dir=str(run), keep_checkpoints=1)
    assert "31.7 GB" in run_dir._drive_space_problem(cfg)
    assert run_dir._drive_space_problem(replace(cfg, resume_from_checkpoint="auto")) is None  # 2 x 5.9 + 2 GB


@pytest.mark.slow
def test_a_real_grpo_run_matches_its_printed_need(tmp_path):
    """The tiny model through run_training (GRPOTrainer, LoRA, 3 epochs, keep 2): sizes as estimated."""
    from musclebob_helpers.training import run_training

    cfg = TrainConfig(
        model="tiny",
        lora=True,
        learning_rate=5e-3,
        epochs=3,
        num_samples=8,
        batch_size=4,
        num_generations=2,
        max_completion_length=16,
        validation_samples=1,
        output_dir=str(tmp_path / "run"),
    )
    lines = []
    run_training(start(cfg), log=lines.append)
    need = drive_need(cfg)
    assert need.line() in lines and "Removed checkpoint-2 (keeping the newest 2" in " ".join(map(str, lines))
    ckpts = list_checkpoints(tmp_path / "run")
    assert [c.name for c in ckpts] == ["checkpoint-4", "checkpoint-6"]
    assert need.checkpoint == pytest.approx(run_dir._folder_bytes(ckpts[-1]), rel=0.03)
    root = sum(p.stat().st_size for p in (tmp_path / "run").iterdir() if p.is_file())
    assert root <= need.final + need.peak - need.checkpoint * 2  # the final model + the run's own files
