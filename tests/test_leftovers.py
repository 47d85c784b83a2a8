"""Every temporary thing cleaned, every file readable: atomic writes and the tiny model's build leave nothing after
SIGTERM or Ctrl-C, a SIGKILL's leftovers are removed at the next start, artifacts get the umask's permissions, and a
path through ``..`` makes no folder on the way."""

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from musclebob_helpers import io, run_dir
from musclebob_helpers import tiny_model as tiny
from musclebob_helpers.config import ConfigError, TrainConfig

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
    assert io.umask_mode() == 0o666 & ~umask

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


def test_a_sigkilled_builds_folder_is_removed_at_the_next_start(tmp_path, monkeypatch):
    monkeypatch.setenv(tiny.CACHE_ENV, str(tmp_path))
    me = {"host": socket.gethostname(), "started": time.time()}
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()

    def build(name, owner):
        folder = tmp_path / f"tiny-v2-seed{name}{tiny.BUILDING}abcd1234"
        folder.mkdir()
        if owner is not None:
            (folder / tiny.BUILD_OWNER_FILE).write_text(json.dumps(owner))
        return folder

    killed = build(5, {**me, "pid": dead.pid})  # its process is gone: SIGKILL
    running = build(6, {**me, "pid": os.getpid()})  # a build in progress (this process)
    elsewhere = build(7, {**me, "host": "other-machine", "pid": 1})  # another machine's: only age tells
    no_owner = build(8, None)
    old = build(9, {**me, "host": "other-machine", "pid": 1})
    an_hour_ago = time.time() - tiny.BUILD_STALE_SECONDS - 1
    os.utime(old, (an_hour_ago, an_hour_ago))
    removed = tiny.remove_stale_builds(tmp_path)
    assert sorted(removed) == sorted([killed, old])
    assert running.is_dir() and elsewhere.is_dir() and no_owner.is_dir()
    tiny.ensure_tiny_model(seed=0, log=lambda *a: None)  # every start looks (seed 0 ships: nothing built)
    os.utime(no_owner, (an_hour_ago, an_hour_ago))
    tiny.ensure_tiny_model(seed=0, log=lambda *a: None)
    assert not no_owner.exists()


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
            TrainConfig(model="tiny", output_dir=str(tmp_path / "out" / "a" / ".." / "b")), log=lambda *a: None
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


class SignalInDel:
    """Sends a Ctrl-C to this process while it is being freed. Python runs the handler inside ``__del__``, where
    the KeyboardInterrupt it raises is printed as "Exception ignored" and dropped: what happened to a SIGTERM that
    landed in ``import torch``'s module-lock callback on CI."""

    def __del__(self):
        signal.raise_signal(signal.SIGINT)


@pytest.fixture
def python_sigint(monkeypatch):
    """Python's own Ctrl-C handler, whatever the test runner installed, and SIGTERM's default (``_sigterm_kills``)."""
    old = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, old)


@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")  # the dropped interrupt
def test_a_signal_swallowed_by_a_finalizer_is_raised_at_the_next_check_or_the_blocks_end(python_sigint):
    reached = []
    with pytest.raises(KeyboardInterrupt):
        with io.sigterm_raises():
            SignalInDel()  # freed at once
            reached.append("after")  # the interrupt was swallowed: the code went on
            io.raise_if_signalled()
    assert reached == ["after"]
    io.raise_if_signalled()  # outside the block nothing is pending

    reached.clear()
    with pytest.raises(KeyboardInterrupt):
        with io.sigterm_raises():  # a block with no check of its own: its end raises it
            SignalInDel()
            reached.append("after")
    assert reached == ["after"]


@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")  # the dropped interrupt
def test_the_tiny_build_stops_on_a_swallowed_signal_and_leaves_nothing(tmp_path, monkeypatch, python_sigint):
    corpus = tiny.pretraining_corpus

    def corpus_then_signal(seed, size=None):
        SignalInDel()
        return corpus(seed, 200)  # a small corpus: the build gets to its pre-training loop in a second

    monkeypatch.setattr(tiny, "pretraining_corpus", corpus_then_signal)
    target = tmp_path / "tiny-seed3"
    said = []
    with pytest.raises(KeyboardInterrupt):
        tiny._build_into(target, 3, log=said.append)
    # Stopped before the first pre-training step ended: its line ("step 1/2000") is printed once the step is done.
    assert not [line for line in said if "pre-training step" in line], said
    assert list(tmp_path.iterdir()) == []


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


@pytest.mark.slow  # a build process signalled while it builds
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_during_the_tiny_build_leaves_no_temporary_folder(tmp_path, sig):
    env = {**os.environ, tiny.CACHE_ENV: str(tmp_path), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(
        [
            sys.executable,
            "-u",  # each line as it is printed: the test waits for one
            "-c",
            "from musclebob_helpers.tiny_model import ensure_tiny_model; ensure_tiny_model(seed=3)",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        cwd=ROOT,
    )
    # Well into the build: its first pre-training step is done (corpus, tokenizer and model built, files written).
    for line in proc.stdout:  # ends if the process does; the communicate below then has its timeout
        if "tiny pre-training step 1/" in line:
            break
    else:
        pytest.fail(f"the build ended before its first pre-training step: {proc.communicate(timeout=60)[1][-2000:]}")
    assert list(tmp_path.glob(f"*{tiny.BUILDING}*/{tiny.BUILD_OWNER_FILE}")), "no build folder while it builds"
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode != 0, err[-2000:]
    if sig == signal.SIGTERM:
        assert proc.returncode == -signal.SIGTERM  # dies by the signal, as without the cleanup
    assert list(tmp_path.iterdir()) == []  # no tiny-v2-seed3.building-* left, no half model
