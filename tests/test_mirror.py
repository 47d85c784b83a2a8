"""The mirror (``musclebob_helpers/mirror.py``) and where a run trains (``run_dir.work_folder``), in-process.

The real file-system failures are in ``tests/test_drive.py`` (a FUSE mount); here the copying itself, between two
local folders: what is copied when, in which order, and that nothing half-copied ever shows under a real name.
"""

from __future__ import annotations

import errno
import json
from pathlib import Path

import pytest

from musclebob_helpers import run_dir
from musclebob_helpers.config import ConfigError, TrainConfig
from musclebob_helpers.mirror import FolderFailed, Mirror, _copy_verified
from musclebob_helpers.run_dir import RunFolder


@pytest.mark.parametrize(
    "fs,remote",
    [("ext4", False), ("tmpfs", False), ("fuseblk", False), ("fuse.drive", True), ("fuse", True), ("nfs4", True)],
)
def test_which_file_systems_are_mirrored(fs, remote):
    assert run_dir._is_remote_fs(fs) is remote


def test_the_working_folder(tmp_path, monkeypatch):
    monkeypatch.setenv(run_dir._WORK_ROOT_ENV, str(tmp_path / "work"))
    out = tmp_path / "run"
    assert run_dir.work_folder(out, None, "ext4") == out  # local disk: no second copy
    drive = run_dir.work_folder(out, None, "fuse.drive")
    assert drive.parent == tmp_path / "work" and drive.name.startswith("run-")
    assert run_dir.work_folder(out, None, "fuse.drive") == drive  # the same at every start: a resume finds it
    assert run_dir.work_folder(tmp_path / "other" / "run", None, "fuse.drive") != drive
    assert run_dir.work_folder(out, str(tmp_path / "mine"), "ext4") == tmp_path / "mine"  # --work-dir
    assert run_dir._file_system_type(tmp_path / "not" / "yet") == run_dir._file_system_type(tmp_path)


def test_check_resolves_the_folder_once(tmp_path, monkeypatch):
    monkeypatch.setenv(run_dir._WORK_ROOT_ENV, str(tmp_path / "work"))
    folder = run_dir.check(TrainConfig(model="tiny", output_dir=str(tmp_path / "run")))
    assert folder.path == folder.work == tmp_path / "run" and not folder.mirrored and folder.state == "new"
    mirrored = run_dir.check(
        TrainConfig(model="tiny", output_dir=str(tmp_path / "run"), work_dir=str(tmp_path / "local"))
    )
    assert mirrored.mirrored and mirrored.work == tmp_path / "local" and mirrored.folders()[0] == mirrored.work


def test_a_work_dir_holding_other_files_is_refused(tmp_path):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("mine")
    with pytest.raises(ConfigError, match="--work-dir=.* an empty folder"):
        run_dir.check(TrainConfig(model="tiny", output_dir=str(tmp_path / "run"), work_dir=str(tmp_path / "mine")))
    assert (tmp_path / "mine" / "notes.txt").read_text() == "mine"


def make_checkpoint(folder: Path, step: int) -> Path:
    ckpt = folder / f"checkpoint-{step}"
    ckpt.mkdir(parents=True)
    (ckpt / "trainer_state.json").write_text(json.dumps({"global_step": step}))
    (ckpt / "optimizer.pt").write_bytes(bytes(range(256)) * 4000)
    (ckpt / "sub").mkdir()
    (ckpt / "sub" / "part.bin").write_bytes(b"x" * 100)
    return ckpt


def mirror_of(tmp_path, keep=2) -> tuple[Mirror, Path, Path]:
    work, path = tmp_path / "work", tmp_path / "run"
    work.mkdir(parents=True)
    path.mkdir()
    folder = RunFolder(str(path), path, work, "new", None)
    messages = []
    mirror = Mirror(folder, keep, log=messages.append, interval=3600)
    mirror.messages = messages
    return mirror, work, path


def test_checkpoints_are_copied_whole_and_rotated(tmp_path):
    mirror, work, path = mirror_of(tmp_path, keep=2)
    for step in (2, 4, 6):
        mirror.checkpoint_saved(make_checkpoint(work, step))
    (work / "reward_history.json").write_text("[]\n")
    assert mirror.sync()
    assert [c.name for c in run_dir.list_checkpoints(path)] == ["checkpoint-4", "checkpoint-6"]  # --keep-checkpoints
    assert (path / "checkpoint-6" / "sub" / "part.bin").read_bytes() == b"x" * 100
    assert (path / "checkpoint-6" / "optimizer.pt").read_bytes() == (
        work / "checkpoint-6" / "optimizer.pt"
    ).read_bytes()
    assert (path / "reward_history.json").read_text() == "[]\n"
    assert not list(path.glob(".*")) and not list(path.rglob("*.tmp"))
    assert len(mirror.lags) == 3 and mirror.summary()["caught_up"]


def test_final_validation_is_copied_last_and_only_at_the_end(tmp_path):
    mirror, work, path = mirror_of(tmp_path)
    (work / "final_validation.json").write_text("{}")
    (work / "config.json").write_text("{}")
    assert mirror.sync()
    assert (path / "config.json").exists() and not (path / "final_validation.json").exists()  # not "finished" yet
    assert mirror.finish(wait_s=0)
    assert (path / "final_validation.json").exists()


def test_only_changed_files_are_copied_again(tmp_path):
    mirror, work, path = mirror_of(tmp_path)
    (work / "completions.jsonl").write_text("1\n")
    assert mirror.sync()
    copied = mirror.bytes_copied
    assert mirror.sync() and mirror.bytes_copied == copied
    (work / "completions.jsonl").write_text("1\n2\n")
    assert mirror.sync() and (path / "completions.jsonl").read_text() == "1\n2\n"


def test_a_failing_run_folder_is_one_line_then_one_when_it_answers(tmp_path):
    mirror, work, path = mirror_of(tmp_path)
    mirror.checkpoint_saved(make_checkpoint(work, 2))
    mirror.at_step(2)
    path.rename(tmp_path / "away")  # root ignores permission bits: the run folder becomes a file instead
    path.write_text("not a folder")  # every write into it fails (ENOTDIR), as a broken mount fails them
    assert not mirror.sync() and not mirror.sync()
    [line] = mirror.messages
    assert "cannot be written since step 2" in line and "Not a directory" in line and str(work) in line
    path.unlink()
    (tmp_path / "away").rename(path)
    mirror.at_step(3)
    assert mirror.sync()
    assert mirror.messages[-1].endswith("its copy caught up at step 3 (behind since step 2).")
    assert [c.name for c in run_dir.list_checkpoints(path)] == ["checkpoint-2"]
    assert mirror.summary()["outages"] == [{"from_step": 2, "reason": "Not a directory, ENOTDIR", "to_step": 3}]


def test_copy_verified_leaves_nothing_when_the_destination_fails(tmp_path):
    src = tmp_path / "a.bin"
    src.write_bytes(b"y" * 10_000)
    with pytest.raises(FolderFailed) as failed:
        _copy_verified(src, tmp_path / "missing-folder")
    assert failed.value.err.errno == errno.ENOENT
    (tmp_path / "dst").mkdir()
    _copy_verified(src, tmp_path / "dst")
    assert (tmp_path / "dst" / "a.bin").read_bytes() == src.read_bytes()
    assert [p.name for p in (tmp_path / "dst").iterdir()] == ["a.bin"]


def test_a_resume_takes_the_newest_intact_checkpoint_of_either_folder(tmp_path, monkeypatch):
    work, path = tmp_path / "work", tmp_path / "run"
    for folder, steps in ((work, (4,)), (path, (2, 6))):
        for step in steps:
            make_checkpoint(folder, step)
    monkeypatch.setattr(run_dir, "checkpoint_problems", lambda ckpt: [])
    folder = RunFolder(str(path), path, work, "unfinished", None)
    cfg = TrainConfig(model="tiny", output_dir=str(path), resume_from_checkpoint="auto")
    assert folder.with_resume(cfg, log=lambda *a: None).resume == path / "checkpoint-6"
    make_checkpoint(work, 6)
    assert folder.with_resume(cfg, log=lambda *a: None).resume == work / "checkpoint-6"  # equal steps: local


def test_finish_remounts_once_before_giving_up(tmp_path):
    """The notebook's Drive remount (``colab.remount_drive``) is tried once when the final copy fails: here it
    brings the run folder back, and the copy completes; without it, ``finish`` gives up after its wait."""
    mirror, work, path = mirror_of(tmp_path)
    (work / "final_validation.json").write_text("{}")
    path.rename(tmp_path / "away")
    path.write_text("not a folder")
    assert not mirror.finish(wait_s=0)  # no remount: given up

    mirror, work, _ = mirror_of(tmp_path / "again")
    (work / "final_validation.json").write_text("{}")
    remounts = []

    def remount():
        remounts.append(1)
        path.unlink()
        (tmp_path / "away").rename(path)

    mirror.dst, mirror.remount = path, remount
    assert mirror.finish(wait_s=0) and remounts == [1]
    assert (path / "final_validation.json").exists()


def test_a_checkpoint_damaged_on_local_disk_is_set_aside_not_copied(tmp_path):
    mirror, work, path = mirror_of(tmp_path)
    ckpt = make_checkpoint(work, 2)
    run_dir.write_manifest(ckpt)
    data = bytearray((ckpt / "optimizer.pt").read_bytes())
    data[5000] ^= 0xFF  # one byte, its length intact
    (ckpt / "optimizer.pt").write_bytes(bytes(data))
    mirror.checkpoint_saved(ckpt)
    assert mirror.sync()
    assert not run_dir.list_checkpoints(path) and not list(path.glob(".copying-*"))
    assert (work / "checkpoint-2.damaged").is_dir()
    [line] = mirror.messages
    assert "checkpoint-2 is damaged (optimizer.pt does not match its manifest" in line
