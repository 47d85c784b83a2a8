"""Fault injection: SIGKILL anywhere, damaged checkpoints, unwritable outputs, mismatched resumes, bad flags.

The kill tests run the real training CLI as a subprocess on the tiny model through ``tests/fault_runner.py
POINT:STEP`` (which installs the fault from outside the product), let it die by SIGKILL, resume with
``--resume-from-checkpoint auto`` and compare with an uninterrupted run of the same seed: same steps, same
rewards, same final weights.
"""

import json
import os
import re
from dataclasses import replace
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import fault_runner
from musclebob_helpers import run_dir
from musclebob_helpers.config import ConfigError, TrainConfig
from musclebob_helpers.plots import load_completions
from musclebob_helpers.run_dir import check, checkpoint_problems, list_checkpoints, select_checkpoint

ROOT = Path(__file__).resolve().parent.parent
PROG = "train_musclebob_improved.py"
# 6 prompts x 2 epochs at 3 prompts per step: 2 steps per epoch, 4 in all, checkpoints at steps 2 and 4.
# Two generations and 16 tokens keep each run to seconds; the two epochs are what a kill must cross.
KILL_ARGS = [
    "--model",
    "tiny",
    "--epochs",
    "2",
    "--num-samples",
    "6",
    "--batch-size",
    "3",
    "--num-generations",
    "2",
    "--max-completion-length",
    "16",
    "--validation-samples",
    "1",
    "--seed",
    "42",
]
TOTAL_STEPS = 4
FINAL_FILES = ("config.json", "model.safetensors", "final_validation.json")


def train(out, *extra, fault=None):
    env = dict(os.environ)
    env.setdefault("OMP_NUM_THREADS", "1")  # the tiny model gains nothing from threads; shared CPUs run it faster
    # A fault: the same CLI, with the kill installed from outside by the test-only runner.
    command = [str(ROOT / "tests" / "fault_runner.py"), fault] if fault else [str(ROOT / PROG)]
    return subprocess.run(
        [sys.executable, *command, *KILL_ARGS, "--output-dir", str(out), *extra],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        timeout=600,
    )


def history(out):
    return json.loads((Path(out) / "reward_history.json").read_text())


def rewards_by_step(out):
    return [(e["step"], e["mean_reward"], e["reward_std"]) for e in history(out)]


def all_json_parses(out):
    """Every JSON artifact under ``out`` (checkpoints included) is complete, valid JSON."""
    files = [p for p in Path(out).rglob("*.json")]
    for p in files:
        json.loads(p.read_text())
    return files


def weights(path):
    from safetensors.torch import load_file

    return load_file(str(Path(path) / "model.safetensors"))


@pytest.fixture(scope="module")
def reference(tmp_path_factory, tiny_path):
    """The uninterrupted run every killed run must end up identical to."""
    out = tmp_path_factory.mktemp("faults") / "reference"
    proc = train(out)
    assert proc.returncode in (0, 1), proc.stderr[-2000:]
    assert [e["step"] for e in history(out)] == list(range(1, TOTAL_STEPS + 1))
    return out, proc.returncode


def assert_same_as_reference(out, reference, resumed):
    import torch
    from transformers import AutoModelForCausalLM

    ref, ref_code = reference
    assert resumed.returncode == ref_code, resumed.stderr[-2000:]
    assert json.loads((out / "final_validation.json").read_text())["global_step"] == TOTAL_STEPS
    assert [e["step"] for e in history(out)] == list(range(1, TOTAL_STEPS + 1))  # each step once, in order
    assert rewards_by_step(out) == rewards_by_step(ref)  # steps trained again reproduce the lost ones exactly
    samples = load_completions(out)  # the completion samples too: each step's once, as the straight run's
    assert sorted({r["step"] for r in samples}) == list(range(1, TOTAL_STEPS + 1))
    assert samples == load_completions(ref)
    mine, theirs = weights(out), weights(ref)
    assert mine.keys() == theirs.keys() and all(torch.equal(mine[k], theirs[k]) for k in mine)
    assert not list(out.rglob("*.tmp"))  # no half-written temporary file left
    all_json_parses(out)
    AutoModelForCausalLM.from_pretrained(out)  # the final model loads


KILLS = [
    # (fault, what the resume must say, checkpoints kept). Two of the kills also keep one checkpoint only
    # (--keep-checkpoints 1): checkpoint-2 is deleted once checkpoint-4 is complete, so a kill before that
    # must leave it, and the resume must then rotate it away.
    ("generation:3", "Resuming from", 2),  # mid-generation, after checkpoint-2
    ("optimizer:3", "Resuming from", 1),  # inside the optimizer step: weights changed in memory only
    ("history:3", "Resuming from", 2),  # half of reward_history.json's temporary file written
    ("checkpoint:4", "checkpoint-4 is damaged", 1),  # half of checkpoint-4/optimizer.pt written
    ("checkpoint:2", "No intact checkpoint", 2),  # the only checkpoint half written: start fresh
]


@pytest.mark.slow  # two training processes each
@pytest.mark.parametrize("fault,message,keep", KILLS, ids=[f"{k} keep {n}" for k, _, n in KILLS])
def test_kill_anywhere_then_resume_ends_as_if_nothing_happened(tmp_path, reference, fault, message, keep):
    out = tmp_path / "run"
    keeping = ["--keep-checkpoints", str(keep)]
    killed = train(out, *keeping, fault=fault)
    assert killed.returncode == -9, killed.stderr[-2000:]  # really SIGKILLed
    assert f"{fault_runner.MARKER} killing the process" in killed.stderr
    assert not any((out / f).exists() for f in FINAL_FILES)  # it died before the end
    all_json_parses(out)  # whatever a reader opens meanwhile is whole
    point, step = fault_runner.parse(fault)
    done = [e["step"] for e in history(out)]
    # Steps logged before the kill: through step N when the checkpoint after it died, else through N - 1.
    assert done == list(range(1, (step if point == "checkpoint" else step - 1) + 1))
    if step > 2:  # the last intact checkpoint survives the kill, rotation or not
        assert any(not checkpoint_problems(c) for c in list_checkpoints(out))
    if point == "checkpoint":
        assert checkpoint_problems(out / f"checkpoint-{step}")  # the kill left it damaged
        damaged = {
            p.relative_to(out / f"checkpoint-{step}"): p.read_bytes()
            for p in (out / f"checkpoint-{step}").rglob("*")
            if p.is_file()
        }

    resumed = train(out, *keeping, "--resume-from-checkpoint", "auto")
    assert message in resumed.stdout, resumed.stdout[-3000:]
    assert_same_as_reference(out, reference, resumed)
    if point == "checkpoint":  # the damaged checkpoint was moved aside, not deleted
        kept = out / f"checkpoint-{step}.damaged"
        assert {p.relative_to(kept): p.read_bytes() for p in kept.rglob("*") if p.is_file()} == damaged
    if keep == 1:
        assert "Removed checkpoint-2" in resumed.stdout
        assert [c.name for c in list_checkpoints(out)] == ["checkpoint-4"]


def _interrupted_copy(reference, dest):
    """The reference run as a kill after its last checkpoint would leave it (no final model yet)."""
    shutil.copytree(reference[0], dest)
    for name in FINAL_FILES:
        (dest / name).unlink()
    return dest


def _truncate(path, keep=0.5):
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


@pytest.mark.slow
def test_damaged_newest_checkpoint_falls_back_to_the_one_before(tmp_path, reference):
    """A cut-short weights file and a missing RNG state in checkpoint-4 (each one alone is named by
    ``checkpoint_problems``: the tests below): the resume says why, sets it aside, and trains on from checkpoint-2."""
    out = _interrupted_copy(reference, tmp_path / "run")
    _truncate(out / "checkpoint-4" / "model.safetensors")
    (out / "checkpoint-4" / "rng_state.pth").unlink()
    resumed = train(out, "--resume-from-checkpoint", "auto")
    [said] = [line for line in resumed.stdout.splitlines() if "checkpoint-4 is damaged" in line]
    assert "model.safetensors" in said and "rng_state.pth" in said and "Resuming from" in resumed.stdout
    assert (out / "checkpoint-4.damaged").is_dir()
    assert_same_as_reference(out, reference, resumed)


@pytest.mark.slow
def test_a_lost_history_is_rebuilt_from_the_checkpoint(tmp_path, reference):
    out = _interrupted_copy(reference, tmp_path / "run")
    (out / "reward_history.json").unlink()  # deleted, or a Drive copy that never arrived
    resumed = train(out, "--resume-from-checkpoint", "auto")
    assert "Resuming from" in resumed.stdout and "checkpoint-4" in resumed.stdout
    assert_same_as_reference(out, reference, resumed)  # all 4 steps back, from checkpoint-4's own log


# ---------------------------------------------------------------------------------------------
# What "intact" means, file by file.

CHECKPOINT_FILES = [
    "trainer_state.json",
    "model.safetensors",
    "config.json",
    "optimizer.pt",
    "scheduler.pt",
    "rng_state.pth",
]


@pytest.fixture
def checkpoint(tmp_path, reference):
    dest = tmp_path / "checkpoint-2"
    shutil.copytree(reference[0] / "checkpoint-2", dest)
    return dest


def test_a_complete_checkpoint_is_intact(checkpoint):
    assert checkpoint_problems(checkpoint) == []


@pytest.mark.parametrize("name", CHECKPOINT_FILES)
def test_a_missing_file_is_named(checkpoint, name):
    (checkpoint / name).unlink()
    problems = checkpoint_problems(checkpoint)
    assert problems and any(name in p and "missing" in p for p in problems), problems


@pytest.mark.parametrize("keep", [0.0, 0.5, 0.99])
@pytest.mark.parametrize("name", CHECKPOINT_FILES)
def test_a_truncated_file_is_named(checkpoint, name, keep):
    _truncate(checkpoint / name, keep)
    problems = checkpoint_problems(checkpoint)
    assert problems and any(name in p for p in problems), problems


def test_padded_weights_and_wrong_step_are_damage(checkpoint):
    with open(checkpoint / "model.safetensors", "ab") as fh:
        fh.write(b"\0" * 10)  # a file longer than its header says is not the file that was saved
    renamed = checkpoint.rename(checkpoint.with_name("checkpoint-3"))  # trainer_state.json says step 2
    problems = checkpoint_problems(renamed)
    assert any("model.safetensors" in p and "promises" in p for p in problems)
    assert any("global_step=2" in p for p in problems)


def test_no_intact_checkpoint_starts_fresh_and_deletes_nothing(tmp_path, reference):
    out = _interrupted_copy(reference, tmp_path / "run")
    for ckpt in list_checkpoints(out):
        _truncate(ckpt / "optimizer.pt")
    before = {
        p.relative_to(out)
        .as_posix()
        .replace("checkpoint-2", "checkpoint-2.damaged")
        .replace("checkpoint-4", "checkpoint-4.damaged"): p.read_bytes()
        for p in out.rglob("*")
        if p.is_file()
    }
    messages = []
    assert select_checkpoint(out, log=messages.append) is None
    assert any("No intact checkpoint" in m and "starting fresh" in m for m in messages)
    assert any("checkpoint-4 is damaged" in m and "optimizer.pt" in m for m in messages)
    after = {p.relative_to(out).as_posix(): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    assert after == before  # every byte still there, the checkpoints only renamed
    assert list_checkpoints(out) == []  # so the fresh run can write its own checkpoint-2


def test_an_explicit_damaged_checkpoint_is_refused(tmp_path, reference):
    out = _interrupted_copy(reference, tmp_path / "run")
    _truncate(out / "checkpoint-4" / "scheduler.pt")
    with pytest.raises(ConfigError, match="damaged or incomplete.*scheduler.pt"):
        check(TrainConfig(model="tiny", output_dir=str(out), resume_from_checkpoint=str(out / "checkpoint-4")))


def test_a_checkpoint_of_another_architecture_is_refused_after_loading(tmp_path, reference):
    from musclebob_helpers.training import run_training

    out = tmp_path / "foreign"
    shutil.copytree(reference[0] / "checkpoint-2", out / "checkpoint-2")  # no training_config.json to compare
    cfg_path = out / "checkpoint-2" / "config.json"
    cfg_path.write_text(json.dumps({**json.loads(cfg_path.read_text()), "hidden_size": 256}))
    cfg = TrainConfig(
        model="tiny",
        output_dir=str(out),
        resume_from_checkpoint="auto",
        num_samples=6,
        batch_size=3,
        num_generations=2,
        epochs=2,
        max_completion_length=16,
        validation_samples=1,
    )
    with pytest.raises(ConfigError, match="another architecture.*hidden_size 256"):
        run_training(cfg, log=lambda *a: None)
    assert not (out / "model.safetensors").exists()


# ---------------------------------------------------------------------------------------------
# Output locations that cannot be written: found at start-up, before any model is loaded.


def test_unwritable_locations_are_refused(tmp_path, monkeypatch):
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    assert "is a file" in run_dir.output_location_problem(str(blocker / "out"))
    if Path("/proc/self").is_dir():  # a pseudo file system: not writable even by root
        assert "cannot be written" in run_dir.output_location_problem("/proc/musclebob-out")
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        probe_ok = os.access(ro, os.W_OK)  # root ignores permission bits: then the folder IS writable
        assert (run_dir.output_location_problem(str(ro / "out")) is None) == probe_ok
    finally:
        ro.chmod(0o755)
    assert run_dir.output_location_problem(str(tmp_path / "new" / "deep" / "out")) is None
    assert not (tmp_path / "new").exists()  # checking created nothing


def test_no_space_left_is_refused(tmp_path, monkeypatch):
    usage = shutil.disk_usage(tmp_path)
    monkeypatch.setattr(run_dir.shutil, "disk_usage", lambda p: usage._replace(free=5 * 2**20))
    with pytest.raises(ConfigError, match="--output-dir=.*only 5 MB free"):
        check(TrainConfig(model="tiny", output_dir=str(tmp_path / "out")))


def test_checkpoints_that_will_not_fit_are_refused(tmp_path, monkeypatch):
    usage = shutil.disk_usage(tmp_path)
    monkeypatch.setattr(run_dir.shutil, "disk_usage", lambda p: usage._replace(free=15 * 2**30))  # Drive's free tier
    cfg = TrainConfig(output_dir=str(tmp_path / "out"))  # Qwen2.5-0.5B fully fine-tuned, 5 epochs, 2 kept
    with pytest.raises(ConfigError, match=r"--output-dir=.*needs about 17\.8 GB.*only 16\.1 GB are free"):
        check(cfg)
    check(TrainConfig(output_dir=str(tmp_path / "out"), epochs=2))  # 2 checkpoints + the final model fit


def test_unmounted_google_drive_is_refused(tmp_path, monkeypatch):
    drive = tmp_path / "content" / "drive"
    monkeypatch.setattr(run_dir, "DRIVE_MOUNT", drive)
    with pytest.raises(ConfigError, match="Google Drive is not mounted"):
        check(TrainConfig(model="tiny", output_dir=str(drive / "MyDrive" / "musclebob")))
    (drive / "MyDrive").mkdir(parents=True)  # mounted: fine
    check(TrainConfig(model="tiny", output_dir=str(drive / "MyDrive" / "musclebob")))


def test_full_disk_during_training_is_one_line(tmp_path, monkeypatch, capsys, tiny_path):
    import errno

    import train_musclebob_improved
    from musclebob_helpers import training

    def full(cfg, **kw):
        raise OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "out" / "optimizer.pt"))

    monkeypatch.setattr(training, "run_training", full)
    with pytest.raises(SystemExit) as exc:
        train_musclebob_improved.main(["--model", "tiny", "--output-dir", str(tmp_path / "out")])
    err = capsys.readouterr().err.strip().splitlines()
    assert (
        exc.value.code == 2 and len(err) == 1 and "disk is full" in err[0] and "resume-from-checkpoint auto" in err[0]
    )


# ---------------------------------------------------------------------------------------------
# Mismatched resume, trust_remote_code.


def _run_dir(tmp_path, **saved):
    out = tmp_path / "run"
    (out / "checkpoint-2").mkdir(parents=True)
    config = {**TrainConfig(model="tiny", num_generations=4, batch_size=3).to_dict(), **saved}
    (out / "training_config.json").write_text(json.dumps({"config": config}))
    return out


def test_resume_with_other_settings_is_refused_unless_asked(tmp_path):
    out = _run_dir(tmp_path)
    cfg = TrainConfig(model="tiny", output_dir=str(out), resume_from_checkpoint="auto", num_generations=8, batch_size=3)
    with pytest.raises(ConfigError) as err:
        check(cfg)
    assert str(err.value) == (
        "--resume-from-checkpoint='auto' is not allowed: this run asks for --num-generations 8, but the run being "
        "resumed used --num-generations 4; pass the same values, --ignore-mismatch to resume anyway, or another "
        "--output-dir"
    )
    assert "--batch-size" not in str(err.value)  # only what differs is named
    cfg.ignore_mismatch = True
    check(cfg)
    check(
        TrainConfig(
            model="tiny",
            output_dir=str(out),
            resume_from_checkpoint="auto",
            num_generations=4,
            batch_size=3,
            epochs=9,
            learning_rate=1e-3,
        )
    )  # more epochs, another rate: fine


def test_remote_code_is_off_unless_asked(monkeypatch, tmp_path):
    import transformers

    from musclebob_helpers import cli, evaluation, training

    seen = {}

    def fake_config(name, trust_remote_code=False, **kw):
        seen["trust"] = trust_remote_code
        if not trust_remote_code:
            raise ValueError("The repository contains custom code which must be executed; set trust_remote_code=True")
        return transformers.PretrainedConfig(max_position_embeddings=4096)

    monkeypatch.setattr(transformers.AutoConfig, "from_pretrained", fake_config)
    with pytest.raises(ConfigError, match="--trust-remote-code only if you trust"):
        cli.check_model_loadable("someone/custom-model")
    assert seen["trust"] is False
    cli.check_model_loadable("someone/custom-model", trust_remote_code=True)
    assert seen["trust"] is True

    class Loaded(Exception):
        pass

    def fake_load(name, device=None, trust_remote_code=None, **kwargs):
        seen["load"] = trust_remote_code
        raise Loaded

    monkeypatch.setattr(evaluation, "load_model", fake_load)
    for flag in (False, True):
        with pytest.raises(Loaded):
            training.run_training(
                TrainConfig(model="tiny", output_dir=str(tmp_path / str(flag)), trust_remote_code=flag),
                log=lambda *a: None,
            )
        assert seen["load"] is flag


def test_mismatched_settings_are_named_as_the_user_types_them(tmp_path):
    out = _run_dir(tmp_path, use_fewshot=False, model="tiny")
    cfg = TrainConfig(model="./my model", output_dir=str(out), resume_from_checkpoint="auto", num_generations=4)
    with pytest.raises(ConfigError) as err:
        check(replace(cfg, batch_size=3))
    assert (
        "this run asks for --model './my model' --fewshot, but the run being resumed used --model tiny --no-fewshot;"
        in str(err.value)
    )


def test_fault_spec_parsing():
    assert fault_runner.parse(None) is None and fault_runner.parse("") is None
    assert fault_runner.parse("checkpoint:12") == ("checkpoint", 12)
    for bad in ("checkpoint", "nowhere:3", "history:0", "optimizer:x"):
        with pytest.raises(ValueError):
            fault_runner.parse(bad)


def test_the_product_carries_no_fault_hooks():
    """Faults are installed from outside (tests/fault_runner.py): importing and training patch nothing."""
    import importlib.util

    import torch

    save, replace_ = torch.save, os.replace
    import musclebob_helpers.io  # noqa: F401
    import musclebob_helpers.training  # noqa: F401

    assert torch.save is save and os.replace is replace_
    assert importlib.util.find_spec("musclebob_helpers.faults") is None
    sources = [*(ROOT / "musclebob_helpers").glob("*.py"), ROOT / PROG]
    assert not [p.name for p in sources if re.search(r"MUSCLEBOB_FAULT|\bfaults\b", p.read_text())]


def test_every_json_artifact_is_written_atomically():
    """The project writes JSON only through ``io.write_json_atomic`` (temp file + rename): no other writer exists."""
    sources = [*(ROOT / "musclebob_helpers").glob("*.py"), *ROOT.glob("*.py")]
    writers = [
        p.name
        for p in sources
        if p.name != "io.py" and any(s in p.read_text() for s in ("json.dump(", "save_to_json(", ".write_text(json"))
    ]
    assert writers == []


@pytest.mark.parametrize("items", [[], [{"step": 1}], [{"step": 1, "x": [1.5, "ü"]}, {"step": 2, "y": None}]])
def test_a_list_written_from_its_items_texts_is_the_same_file(tmp_path, items):
    from musclebob_helpers.io import json_list_item, write_json_atomic, write_json_list_atomic

    write_json_atomic(tmp_path / "whole.json", items)
    write_json_list_atomic(tmp_path / "items.json", [json_list_item(i) for i in items])
    assert (tmp_path / "items.json").read_bytes() == (tmp_path / "whole.json").read_bytes()


def test_the_reward_history_is_renamed_whole_each_step_and_fsynced_at_the_end(tmp_path, monkeypatch):
    """The per-step history write skips fsync (a kill keeps a renamed file; a crash is repaired on resume from the
    checkpoint's log), the end of training makes it durable, and every other artifact is fsynced as before."""
    from types import SimpleNamespace

    from musclebob_helpers.io import write_json_atomic
    from musclebob_helpers.training import make_callbacks

    real_fsync, synced = os.fsync, []
    monkeypatch.setattr(os, "fsync", lambda fd: (synced.append(fd), real_fsync(fd)))
    history_cb, _ = make_callbacks(tmp_path, log=lambda *a, **k: None)
    state = SimpleNamespace(global_step=0, epoch=0.0, is_world_process_zero=True, log_history=[])
    history_cb.on_train_begin(None, state, None)

    def steps_on_disk():
        return [e["step"] for e in json.loads((tmp_path / "reward_history.json").read_text())]

    for step in (1, 2, 3):
        state.global_step, state.epoch = step, step / 4
        history_cb.on_log(None, state, None, logs={"reward": float(step), "reward_std": 0.1})
        assert steps_on_disk() == list(range(1, step + 1))  # renamed into place at every step
    assert len(synced) == 1  # on_train_begin's write only (durable by default); none per step
    assert not list(tmp_path.glob("*.tmp"))
    history_cb.on_train_end(None, state, None)
    assert len(synced) == 2 and steps_on_disk() == [1, 2, 3]
    write_json_atomic(tmp_path / "final_validation.json", {"global_step": 3})
    assert len(synced) == 3  # the run's other artifacts keep their fsync
