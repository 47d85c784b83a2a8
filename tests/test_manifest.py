"""Checkpoints a resume can prove intact (each save's manifest) and checkpoints by step and by time.

One real tiny run, in-process, saving every step (``--save-steps 1``) and keeping every checkpoint: the mid-epoch
checkpoints are there, each with its manifest; a copy of it is then damaged in ways the structural checks cannot
see, and resumed from a mid-epoch checkpoint.
"""

import json
import math
import shutil
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import pytest

from conftest import TINY_RUN_ARGS
from musclebob_helpers import run_dir, training
from musclebob_helpers.config import ConfigError, TrainConfig, resolve, validate_config
from musclebob_helpers.memory import drive_need
from musclebob_helpers.run_dir import (
    MANIFEST_FILE,
    _RESUME_MUST_MATCH,
    checkpoint_problems,
    list_checkpoints,
    manifest_problems,
    rotate_checkpoints,
    _select_checkpoint,
    write_manifest,
)

FINAL_FILES = ("config.json", "model.safetensors", "final_validation.json")


def train(out, *extra):
    import train_musclebob_improved

    return train_musclebob_improved.main([*TINY_RUN_ARGS, "--seed", "42", "--output-dir", str(out), *extra])


@pytest.fixture(scope="module")
def every_step(tmp_path_factory, tiny_path):
    """The 4-step tiny run (2 steps an epoch) with a checkpoint after every step, all kept."""
    out = tmp_path_factory.mktemp("manifest") / "run"
    assert train(out, "--save-steps", "1", "--keep-checkpoints", "0") in (0, 1)
    return out


def rewards(out):
    return [
        (e["step"], e["mean_reward"], e["reward_std"]) for e in json.loads((out / "reward_history.json").read_text())
    ]


def flip_a_byte(path: Path, from_end: int = 100) -> None:
    """Bytes changed inside a file, its length intact: what a bad block or a stale sync leaves."""
    data = bytearray(path.read_bytes())
    data[-from_end] ^= 0xFF
    path.write_bytes(bytes(data))


def interrupted_copy(run, dest, after_step):
    """The run as a kill after checkpoint ``after_step`` would leave it: later checkpoints and final files gone."""
    shutil.copytree(run, dest)
    for ckpt in list_checkpoints(dest):
        if int(ckpt.name.split("-")[1]) > after_step:
            shutil.rmtree(ckpt)
    for name in FINAL_FILES:
        (dest / name).unlink()
    return dest


# --------------------------------------------------------------------------------- the manifest


def test_every_save_writes_a_manifest_of_every_file(every_step):
    ckpts = list_checkpoints(every_step)
    assert [c.name for c in ckpts] == ["checkpoint-1", "checkpoint-2", "checkpoint-3", "checkpoint-4"]  # 1, 3 mid-epoch
    for ckpt in ckpts:
        manifest = json.loads((ckpt / MANIFEST_FILE).read_text())
        on_disk = {p.relative_to(ckpt).as_posix() for p in ckpt.rglob("*") if p.is_file() and p.name != MANIFEST_FILE}
        assert set(manifest["files"]) == on_disk and "model.safetensors" in on_disk
        entry = manifest["files"]["model.safetensors"]
        assert entry["bytes"] == (ckpt / "model.safetensors").stat().st_size and len(entry["sha256"]) == 64
        assert manifest_problems(ckpt) == [] and checkpoint_problems(ckpt) == []


def test_write_manifest_returns_what_it_wrote(tmp_path):
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "a.bin").write_bytes(b"abc")
    got = write_manifest(tmp_path)
    assert got == json.loads((tmp_path / MANIFEST_FILE).read_text())
    assert got["files"] == {
        "sub/a.bin": {"bytes": 3, "sha256": "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"}
    }


def test_bytes_changed_inside_are_caught_and_the_resume_takes_the_one_before(every_step, tmp_path):
    out = interrupted_copy(every_step, tmp_path / "run", after_step=4)
    flip_a_byte(out / "checkpoint-4" / "model.safetensors")  # in the weights, header and length intact
    assert checkpoint_problems(out / "checkpoint-4") == [
        "model.safetensors does not match its manifest (hash differs: damaged after it was saved)"
    ]
    said = []
    assert _select_checkpoint(out, log=said.append) == str(out / "checkpoint-3")
    assert said[0].startswith("Checkpoint checkpoint-4 is damaged (model.safetensors does not match its manifest")
    assert "hash differs" in said[0] and said[1] == f"Resuming from {out / 'checkpoint-3'}"
    assert (out / "checkpoint-4.damaged" / "model.safetensors").is_file()  # moved aside, not deleted


def test_a_file_missing_or_resized_is_named_and_an_extra_one_is_not_damage(every_step, tmp_path):
    ckpt = shutil.copytree(every_step / "checkpoint-2", tmp_path / "checkpoint-2")
    (ckpt / "desktop.ini").write_text("a sync client's own file")  # added after the save: the resume never reads it
    assert checkpoint_problems(ckpt) == []
    (ckpt / "tokenizer.json").unlink()  # the structural checks do not look at the tokenizer
    with open(ckpt / "tokenizer_config.json", "a") as fh:
        fh.write(" ")  # still valid JSON, one byte longer
    assert manifest_problems(ckpt) == [
        "tokenizer.json is missing (its manifest lists it)",
        f"tokenizer_config.json is {(ckpt / 'tokenizer_config.json').stat().st_size} bytes, its manifest says "
        f"{(ckpt / 'tokenizer_config.json').stat().st_size - 1} (changed after the save)",
    ]
    (ckpt / "optimizer.pt").unlink()  # named once, by the structural check
    assert [p for p in checkpoint_problems(ckpt) if p.startswith("optimizer.pt")] == ["optimizer.pt is missing"]


def test_an_unreadable_manifest_is_damage(every_step, tmp_path):
    ckpt = shutil.copytree(every_step / "checkpoint-2", tmp_path / "checkpoint-2")
    (ckpt / MANIFEST_FILE).write_text("{}")
    assert checkpoint_problems(ckpt) == [f"{MANIFEST_FILE} is unreadable (not the JSON a save writes)"]


def test_without_a_manifest_a_checkpoint_resumes_as_before_said_unverified(every_step, tmp_path):
    """Saved by an older version, or killed between trainer_state.json and the manifest: the structural checks
    alone decide, and the resume line says so. (Bytes changed inside then go unseen, as before manifests.)"""
    out = interrupted_copy(every_step, tmp_path / "run", after_step=4)
    (out / "checkpoint-4" / MANIFEST_FILE).unlink()
    flip_a_byte(out / "checkpoint-4" / "model.safetensors")
    assert checkpoint_problems(out / "checkpoint-4") == []
    said = []
    assert _select_checkpoint(out, log=said.append) == str(out / "checkpoint-4")
    assert said == [f"Resuming from {out / 'checkpoint-4'}{run_dir._UNVERIFIED}"] and "unverified" in said[0]


def test_rotation_keeps_every_checkpoint_while_the_newest_fails_its_manifest(every_step, tmp_path):
    out = interrupted_copy(every_step, tmp_path / "run", after_step=4)
    flip_a_byte(out / "checkpoint-4" / "model.safetensors")
    said = []
    assert rotate_checkpoints(out, 1, log=said.append) == []
    assert len(list_checkpoints(out)) == 4 and "hash differs" in said[0]


# --------------------------------------------------------------------------------- checkpoints by step and time


def test_a_mid_epoch_checkpoint_resumes_exactly(every_step, tmp_path):
    """Resumed from checkpoint-3 (step 3 of epoch 2's two), the run ends as the uninterrupted one did."""
    out = interrupted_copy(every_step, tmp_path / "run", after_step=3)
    assert train(out, "--save-steps", "1", "--resume-from-checkpoint", "auto") in (0, 1)
    assert rewards(out) == rewards(every_step)
    import torch
    from safetensors.torch import load_file

    mine, theirs = load_file(out / "model.safetensors"), load_file(every_step / "model.safetensors")
    assert mine.keys() == theirs.keys() and all(torch.equal(mine[k], theirs[k]) for k in mine)
    assert [c.name for c in list_checkpoints(out)] == ["checkpoint-3", "checkpoint-4"]  # --keep-checkpoints 2


def _state(step, epoch):
    return SimpleNamespace(global_step=step, epoch=epoch, is_world_process_zero=True)


def test_the_time_schedule_saves_mid_epoch_once_due_and_never_twice_at_an_epoch_end(monkeypatch):
    clock = [1000.0]
    monkeypatch.setattr(training.time, "monotonic", lambda: clock[0])
    callback = training._save_schedule_callback(save_steps=0, save_minutes=10)
    callback.on_train_begin(None, _state(0, 0.0), SimpleNamespace(should_save=False))
    clock[0] += 9 * 60
    assert not callback.on_step_end(None, _state(1, 0.25), SimpleNamespace(should_save=False)).should_save
    clock[0] += 60
    assert callback.on_step_end(None, _state(2, 0.5), SimpleNamespace(should_save=False)).should_save
    callback.on_save(None, _state(2, 0.5), None)  # the save restarts the clock
    clock[0] += 9 * 60
    assert not callback.on_step_end(None, _state(3, 0.75), SimpleNamespace(should_save=False)).should_save
    clock[0] += 60
    # Due, but the epoch ends here: save_strategy="epoch" saves this step already.
    assert not callback.on_step_end(None, _state(4, 1.0), SimpleNamespace(should_save=False)).should_save
    steps = training._save_schedule_callback(save_steps=3, save_minutes=0)
    due = [
        s
        for s in range(1, 9)
        if steps.on_step_end(None, _state(s, s / 4), SimpleNamespace(should_save=False)).should_save
    ]
    assert due == [3, 6]  # 12 would be an epoch's end


@pytest.mark.parametrize(
    "name,value",
    [("save_steps", -1), ("save_steps", 1.5), ("save_steps", True), ("save_minutes", -1), ("save_minutes", math.nan)],
)
def test_bad_save_settings_are_one_line(name, value):
    with pytest.raises(ConfigError, match=f"--{name.replace('_', '-')}="):
        validate_config(replace(TrainConfig(), **{name: value}))


def test_defaults_save_every_10_minutes_on_a_real_model_and_not_on_the_tiny_one():
    cfg, sources = resolve({})
    assert (cfg.save_steps, cfg.save_minutes) == (0, 10.0)
    tiny, sources = resolve({"model": "tiny"})
    assert tiny.save_minutes == 0 and sources["save_minutes"] == "tiny-model default"
    assert "save_steps" not in _RESUME_MUST_MATCH and "save_minutes" not in _RESUME_MUST_MATCH  # may change on resume


def test_the_drive_need_counts_checkpoints_by_step_and_names_those_by_time():
    cfg = TrainConfig(lora=True, save_minutes=0)  # 32 steps an epoch, 5 epochs
    plain = drive_need(cfg)
    assert plain.saved_at == (32, 64, 96, 128, 160) and plain.uncounted == ""
    by_steps = drive_need(replace(cfg, save_steps=10))  # 16 every-10 saves + the 5 epochs' (160 is both)
    assert by_steps.checkpoints_saved == 16 + 4 and by_steps.saved_at[:4] == (10, 20, 30, 32)
    assert by_steps.written > plain.written + 14 * plain.checkpoint
    timed = drive_need(replace(cfg, save_minutes=10))
    assert timed.written == plain.written and "per 10 minutes of training (--save-minutes)" in timed.line(True)
