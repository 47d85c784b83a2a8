"""Every temporary thing cleaned, every file readable: atomic writes leave nothing after SIGTERM or Ctrl-C, a
SIGKILL's leftovers are removed at the next start, artifacts get the umask's permissions, and a path through ``..``
makes no folder on the way."""

import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from musclebob_helpers import io, run_dir
from musclebob_helpers.config import ConfigError, TrainConfig
from musclebob_helpers.startup import start

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(params=[0o022, 0o002], ids=["umask022", "umask002"])
def umask(request):
    old = os.umask(request.param)
    yield request.param
    os.umask(old)


def mode(path: Path) -> int:
    return path.stat().st_mode & 0o777


def test_artifacts_get_the_umasks_permissions(tmp_path, umask, tiny_model):
    """JSON, JSON lines, temporary folders and safetensors weights (which safetensors itself writes 0600)."""
    io.write_json_atomic(tmp_path / "a.json", {"x": 1})
    io.write_json_list_atomic(tmp_path / "b.json", [io.json_list_item(1)])
    io.write_lines_atomic(tmp_path / "c.jsonl", ["{}"])
    for name in ("a.json", "b.json", "c.jsonl"):
        assert mode(tmp_path / name) == 0o666 & ~umask, name
    assert mode(io.make_temp_dir(tmp_path, "t-")) == 0o777 & ~umask
    assert io._umask_mode() == 0o666 & ~umask

    model, _ = tiny_model
    ckpt = tmp_path / "run" / "checkpoint-2"
    model.save_pretrained(ckpt)  # as the trainer saves a checkpoint
    callback = run_dir.make_save_callback(keep=0)
    callback.on_save(
        SimpleNamespace(output_dir=str(tmp_path / "run")),
        SimpleNamespace(is_world_process_zero=True, global_step=2),
        None,
    )
    assert {p.name: mode(p) for p in ckpt.iterdir()} == {p.name: 0o666 & ~umask for p in ckpt.iterdir()}


def test_stale_temporaries_of_every_atomic_write_are_removed(tmp_path):
    for name in ("reward_history.json.0a1b2c3d.tmp", "completions.jsonl.0a1b2c3d.tmp"):
        (tmp_path / name).write_text("[")
    (tmp_path / "notes.tmp").write_text("the user's")
    assert sorted(p.name for p in run_dir.remove_stale_temp_files(tmp_path)) == [
        "completions.jsonl.0a1b2c3d.tmp",
        "reward_history.json.0a1b2c3d.tmp",
    ]
    assert [p.name for p in tmp_path.iterdir()] == ["notes.tmp"]


class Loaded(Exception):
    """Raised where the model would load: everything before it ran for real."""


def test_a_path_through_dotdot_makes_no_folder_on_the_way(tmp_path, monkeypatch):
    from musclebob_helpers import evaluation
    from musclebob_helpers.training import run_training

    def load_model(*args, **kwargs):
        raise Loaded

    monkeypatch.setattr(evaluation, "load_model", load_model)
    with pytest.raises(Loaded):
        run_training(
            start(TrainConfig(model="tiny", output_dir=str(tmp_path / "out" / "a" / ".." / "b"))), log=lambda *a: None
        )
    assert sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*")) == ["out", "out/b"]
    assert run_dir.folder_path("x/y") == Path("x/y")  # no '..': as written

    finished = tmp_path / "out" / "b"  # the same folder, named through '..', is seen for what it holds
    for name in ("config.json", "final_validation.json"):
        (finished / name).write_text("{}")
    with pytest.raises(ConfigError, match="already holds a finished model"):
        run_dir.check(TrainConfig(model="tiny", output_dir=str(tmp_path / "out" / "nowhere" / ".." / "b")))
    assert not (tmp_path / "out" / "nowhere").exists()


# ---------------------------------------------------------------------------------------------
# Signals, in real processes.

WRITER = """
import os, signal, sys
from musclebob_helpers import io
real_fsync = os.fsync
def fsync(fd):  # the signal arrives in the middle of the write, after the temporary file is written
    os.kill(os.getpid(), signal.{sig})
    real_fsync(fd)
os.fsync = fsync
io.write_json_atomic(sys.argv[1], {{"whole": list(range(1000))}})
print("survived")
"""


@pytest.mark.slow  # a process signalled in the middle of a write
@pytest.mark.parametrize("sig", ["SIGTERM", "SIGINT"])
def test_a_signal_during_an_atomic_write_leaves_the_whole_file_and_no_temporary(tmp_path, sig):
    target = tmp_path / "reward_history.json"
    proc = subprocess.run(
        [sys.executable, "-c", WRITER.format(sig=sig), str(target)], capture_output=True, text=True, cwd=ROOT
    )
    assert proc.returncode != 0 and "survived" not in proc.stdout  # it did stop
    assert not list(tmp_path.glob("*.tmp"))
    if sig == "SIGTERM":  # held back until the rename: the file is whole, then the process dies by the signal
        assert proc.returncode == -signal.SIGTERM
        assert json.loads(target.read_text()) == {"whole": list(range(1000))}
