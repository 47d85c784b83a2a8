"""One writer per run folder (``lock.RunLock``): a second run on a held folder is refused in one line naming the
holder, before it writes or deletes anything; a dead holder's lock is stale (flock dies with its process; the record
rule decides where flock cannot: another machine, or a file system without flock).

The fast tests take the lock in this process (a second ``open`` + ``flock`` of the same file conflicts even here);
the slow one starts two real training processes on one folder.
"""

import errno
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import TINY_RUN_ARGS
from musclebob_helpers import lock as run_lock
from musclebob_helpers import run_dir
from musclebob_helpers.config import ConfigError, TrainConfig
from musclebob_helpers.lock import LOCK_FILE, RunLock

ROOT = Path(__file__).resolve().parent.parent


def snapshot(folder: Path) -> dict:
    """Every file under ``folder`` with its size and modification time: what "untouched" means."""
    return {str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns) for p in folder.rglob("*")}


def dead_pid() -> int:
    """The pid of a process that has exited (and been reaped)."""
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def write_record(folder: Path, **fields) -> Path:
    record = {"host": socket.gethostname(), "pid": dead_pid(), "started": time.time(), "heartbeat": int(time.time())}
    path = folder / LOCK_FILE
    path.write_text(json.dumps({**record, **fields}))
    return path


@pytest.fixture
def no_flock(monkeypatch):
    """A file system that refuses flock (as some FUSE mounts do): the record alone is the lock."""

    def refuse(fd, flags):
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(run_lock, "_flock", refuse)


def test_a_held_folder_is_refused_naming_the_holder_and_freed_on_release(tmp_path):
    out = tmp_path / "run"
    first = RunLock(out).acquire()
    try:
        record = json.loads((out / LOCK_FILE).read_text())
        assert record["pid"] == os.getpid() and record["host"] == socket.gethostname()
        with pytest.raises(ConfigError) as err:
            RunLock(out, shown="runs/x").acquire()
        line = str(err.value)
        assert "\n" not in line and line.startswith("--output-dir='runs/x' is not allowed: another run is writing")
        assert f"pid {os.getpid()} on host {socket.gethostname()}" in line
        assert run_lock.lock_holder(out)["pid"] == os.getpid()  # a reader's question: who is writing?
    finally:
        first.release()
    assert not (out / LOCK_FILE).exists() and run_lock.lock_holder(out) is None
    RunLock(out).acquire().release()  # free again


def test_a_killed_holders_lock_is_stale_at_once(tmp_path):
    """SIGKILL leaves the file (the record of a dead pid) but not the flock: the next run takes the folder."""
    out = tmp_path / "run"
    out.mkdir()
    write_record(out)
    assert run_lock.lock_holder(out) is None
    lock = RunLock(out).acquire()
    assert json.loads((out / LOCK_FILE).read_text())["pid"] == os.getpid()
    lock.release()


def test_flock_does_not_reach_another_machine_the_heartbeat_does(tmp_path):
    """Two Colab runtimes on one Drive: flock is per machine, so the other host's fresh heartbeat holds the folder."""
    out = tmp_path / "run"
    out.mkdir()
    write_record(out, host="other-runtime", pid=4242)
    with pytest.raises(ConfigError, match="pid 4242 on host other-runtime"):
        RunLock(out).acquire()
    assert run_lock.lock_holder(out)["host"] == "other-runtime"
    write_record(out, host="other-runtime", pid=4242, heartbeat=int(time.time()) - run_lock._LOCK_STALE_SECONDS - 1)
    assert run_lock.lock_holder(out) is None  # silent too long: gone
    RunLock(out).acquire().release()
    # a file system whose flock accepts and does not lock: a live process's fresh record still holds the folder
    write_record(out, pid=os.getppid())
    with pytest.raises(ConfigError, match=f"pid {os.getppid()} on host"):
        RunLock(out).acquire()


def test_without_flock_the_record_is_the_lock(tmp_path, no_flock):
    out = tmp_path / "run"
    first = RunLock(out).acquire()  # created exclusively
    assert not first.uses_flock
    with pytest.raises(ConfigError, match=f"pid {os.getpid()} on host"):
        RunLock(out).acquire()
    first.release()
    assert not (out / LOCK_FILE).exists()

    # the stale rule: on this host a dead pid is gone; a live one holds while its heartbeat is recent
    write_record(out)
    RunLock(out).acquire().release()
    write_record(out, pid=os.getppid())  # alive: the process that started this test
    with pytest.raises(ConfigError, match=f"pid {os.getppid()} on host"):
        RunLock(out).acquire()
    write_record(out, pid=os.getppid(), heartbeat=int(time.time()) - run_lock._LOCK_STALE_SECONDS - 1)
    RunLock(out).acquire().release()
    # a record of this very pid that this process does not hold: a restarted kernel's leftover
    write_record(out, pid=os.getpid(), token="old-kernel")
    RunLock(out).acquire().release()
    # another machine: its heartbeat alone decides (test_flock_does_not_reach_another_machine_the_heartbeat_does)
    # a record caught mid-write (unreadable) holds while the file is fresh, not once it is old
    (out / LOCK_FILE).write_text('{"host": "x", "pi')
    with pytest.raises(ConfigError, match="lock record is unreadable"):
        RunLock(out).acquire(attempts=1)
    old = time.time() - run_lock._LOCK_STALE_SECONDS - 1
    os.utime(out / LOCK_FILE, (old, old))
    RunLock(out).acquire().release()


def test_the_holder_keeps_its_heartbeat_fresh(tmp_path, monkeypatch, no_flock):
    """The record on disk is rewritten with the current time while the lock is held: a silent (0) heartbeat is
    replaced, and the value goes on rising (whole seconds) instead of staying at the time the lock was taken."""
    monkeypatch.setattr(run_lock, "_LOCK_HEARTBEAT_SECONDS", 0.05)
    lock = RunLock(tmp_path / "run").acquire()

    def on_disk():
        return json.loads(lock.path.read_text())["heartbeat"]

    def wait_for(condition, what):
        deadline = time.monotonic() + 30
        while not condition():
            assert time.monotonic() < deadline, f"the heartbeat {what}: {on_disk()}"
            time.sleep(0.05)

    try:
        lock.record["heartbeat"] = 0  # as if it had been silent for ages
        lock._write()
        wait_for(lambda: on_disk() > 0, "stayed silent")
        first = on_disk()
        assert abs(first - time.time()) < 5  # the current time, not a stale one
        wait_for(lambda: on_disk() > first, f"stayed at {first}")  # at the next whole second
    finally:
        lock.release()


def test_writer_lock_is_released_on_an_exception_and_nests_in_one_process(tmp_path):
    out = tmp_path / "run"
    with pytest.raises(RuntimeError):
        with run_lock.writer_lock(out) as outer:
            with run_lock.writer_lock(out) as inner:  # the notebook's train() around run_training
                assert inner is outer and run_lock.lock_holder(out) is None  # this process's own: not "another run"
            raise RuntimeError("boom")
    assert not (out / LOCK_FILE).exists()
    RunLock(out).acquire().release()


def held_folder(tmp_path):
    """A run folder another run is writing: its lock held, a live temporary file of its in it."""
    out = tmp_path / "run"
    lock = RunLock(out).acquire()
    (out / "reward_history.json.0123abcd.tmp").write_text("[")  # the holder's write in progress
    return out, lock


def test_run_training_refuses_a_held_folder_before_touching_it(tmp_path):
    from musclebob_helpers.startup import Start, start
    from musclebob_helpers.training import detect_hardware, process_state, run_training

    out, lock = held_folder(tmp_path)
    before = snapshot(out)
    try:
        cfg = TrainConfig(model="tiny", output_dir=str(out))
        with pytest.raises(ConfigError, match=f"another run is writing to it \\(pid {os.getpid()}"):
            run_training(start(cfg), log=lambda *a: None)  # refused by the start-up check
        # the race: both runs passed the check, the lock decides (and the loser deletes nothing)
        passed = Start(cfg, detect_hardware(), run_dir.RunFolder(str(out), out, out, "new", None), process_state())
        with pytest.raises(ConfigError, match="another run is writing"):
            run_training(passed, log=lambda *a: None)
        assert snapshot(out) == before
    finally:
        lock.release()


def test_the_cli_refuses_a_held_folder_in_one_line_exit_2(tmp_path, capsys):
    import train_musclebob_improved

    out, lock = held_folder(tmp_path)
    before = snapshot(out)
    try:
        with pytest.raises(SystemExit) as exc:
            train_musclebob_improved.main(["--model", "tiny", "--output-dir", str(out)])
    finally:
        lock.release()
    err = capsys.readouterr().err.strip().splitlines()
    assert exc.value.code == 2 and len(err) == 1, err
    assert "another run is writing to it" in err[0] and f"pid {os.getpid()}" in err[0]
    assert {k: v for k, v in snapshot(out).items() if k != LOCK_FILE} == {
        k: v for k, v in before.items() if k != LOCK_FILE
    }


def test_the_notebook_says_the_same_and_overwrite_deletes_nothing(tmp_path):
    from musclebob_helpers import notebook

    out, lock = held_folder(tmp_path)
    (out / "checkpoint-2").mkdir()
    (out / run_dir.CONFIG_FILE).write_text(json.dumps({"config": TrainConfig(model="tiny").to_dict()}))
    before = snapshot(out)
    try:
        for cfg in (
            TrainConfig(model="tiny", output_dir=str(out), overwrite=True),  # would clear the old run's files
            TrainConfig(model="tiny", output_dir=str(out)),  # continues the unfinished run
        ):
            with pytest.raises(ConfigError) as err:
                notebook.train(cfg, live=False, log=lambda *a: None)
            assert err.value._render_traceback_() == [f"ConfigError: {err.value}"]  # one line in the notebook
            assert "another run is writing to it" in str(err.value)
        assert snapshot(out) == before
    finally:
        lock.release()


# ---------------------------------------------------------------------------------------------
# Two real training processes on one folder.

RUN_ARGS = TINY_RUN_ARGS  # 2 epochs of 2 steps: seconds per run


def start(out: Path, seed: int, umask: int = 0o022) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(
        [
            sys.executable,
            str(ROOT / "train_musclebob_improved.py"),
            *RUN_ARGS,
            "--seed",
            str(seed),
            "--output-dir",
            str(out),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        cwd=ROOT,
        preexec_fn=lambda: os.umask(umask),
    )


def rewards(out: Path) -> list:
    return [
        (e["step"], e["mean_reward"], e["reward_std"]) for e in json.loads((out / "reward_history.json").read_text())
    ]


@pytest.mark.slow  # three training processes
def test_two_runs_on_one_folder_one_refused_the_other_untouched(tmp_path):
    out = tmp_path / "same"
    runs = {42: start(out, 42, umask=0o002), 7: start(out, 7, umask=0o002)}  # started together
    results = {seed: (proc.wait(timeout=900), *proc.communicate()) for seed, proc in runs.items()}
    codes = sorted(code for code, _, _ in results.values())
    assert codes[0] in (0, 1) and codes[1] == 2, {s: (c, e[-2000:]) for s, (c, _, e) in results.items()}
    winner = next(s for s, (c, _, _) in results.items() if c != 2)
    loser_err = next(e for c, _, e in results.values() if c == 2).strip().splitlines()
    assert len(loser_err) == 1 and "another run is writing to it" in loser_err[0], loser_err
    # the folder is the winner's alone: its settings, its complete history, equal to the same run made alone
    assert json.loads((out / run_dir.CONFIG_FILE).read_text())["config"]["seed"] == winner
    alone = tmp_path / "alone"
    proc = start(alone, winner)
    proc.communicate(timeout=900)
    assert rewards(out) == rewards(alone)
    assert not (out / LOCK_FILE).exists()  # released at the end
    # every artifact readable by the group (umask 002), the model's weights included (safetensors makes 0600)
    modes = {str(p.relative_to(out)): oct(p.stat().st_mode & 0o777) for p in out.rglob("*") if p.is_file()}
    assert set(modes.values()) == {"0o664"}, modes


def test_a_full_disk_while_taking_the_lock_leaves_no_lock(tmp_path, monkeypatch):
    def full(fd, data, offset):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(run_lock.os, "pwrite", full)
    with pytest.raises(OSError) as err:
        RunLock(tmp_path / "run").acquire()
    assert err.value.errno == errno.ENOSPC  # the CLI's "the disk is full" line
    monkeypatch.undo()
    assert not (tmp_path / "run" / LOCK_FILE).exists()
    RunLock(tmp_path / "run").acquire().release()
