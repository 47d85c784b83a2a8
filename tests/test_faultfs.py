"""The test harness tools/faultfs.py itself: a real FUSE mount that passes through, fails with a chosen errno
(everything, or only writes, or from the N-th byte on), sleeps per metadata call, and always unmounts.

Each test mounts its own faultfs (the ``faultfs`` fixture: ``tmp_path/backing`` at ``tmp_path/drive``); a second
or so each. Skipped where FUSE is missing, unless MUSCLEBOB_REQUIRE_FUSE=1.
"""

import errno
import fcntl
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time

import pytest

from conftest import ROOT, need_fuse
from tools.faultfs import FSNAME, damage_inside, mounted_fstype

MB = 1_000_000


def errno_of(call, *args):
    """The errno ``call(*args)`` fails with (None when it works)."""
    try:
        call(*args)
    except OSError as e:
        return e.errno
    return None


def test_pass_through_round_trip(faultfs):
    drive, backing = faultfs.mountpoint, faultfs.backing
    (drive / "state.json").write_text("old")
    (drive / "state.json.tmp").write_text("new")
    os.replace(drive / "state.json.tmp", drive / "state.json")  # the atomic save: a rename over the old file
    assert (backing / "state.json").read_text() == "new"
    assert sorted(os.listdir(drive)) == ["state.json"]

    fd = os.open(drive / "sparse.bin", os.O_RDWR | os.O_CREAT, 0o644)
    os.pwrite(fd, b"tail", 10)  # at an offset: the hole reads as zeros
    os.ftruncate(fd, 12)
    os.fsync(fd)
    os.close(fd)
    assert (backing / "sparse.bin").read_bytes() == b"\0" * 10 + b"ta"

    with open(drive / "state.json") as first, open(drive / "state.json") as second:
        fcntl.flock(first, fcntl.LOCK_EX | fcntl.LOCK_NB)
        with pytest.raises(BlockingIOError):  # the kernel's local flock still excludes a second holder
            fcntl.flock(second, fcntl.LOCK_EX | fcntl.LOCK_NB)

    assert shutil.disk_usage(drive).total == shutil.disk_usage(backing).total
    os.utime(drive / "state.json", ns=(1_000_000_000, 2_000_000_000))
    os.chmod(drive / "state.json", 0o600)
    assert (backing / "state.json").stat().st_mtime_ns == 2_000_000_000
    assert (backing / "state.json").stat().st_mode & 0o777 == 0o600

    fd, temp = tempfile.mkstemp(dir=drive)
    os.write(fd, b"x")
    os.close(fd)
    (drive / "run" / "checkpoint-2").mkdir(parents=True)
    shutil.copy2(drive / "state.json", drive / "run" / "checkpoint-2" / "state.json")
    assert (backing / "run" / "checkpoint-2" / "state.json").stat().st_mtime_ns == 2_000_000_000
    # A file unlinked while open is gone at once (no .fuse_hidden file left to block the rmtree).
    held = open(drive / "run" / "held.txt", "w")
    os.unlink(drive / "run" / "held.txt")
    held.write("still writable")
    held.close()
    shutil.rmtree(drive / "run")
    os.unlink(temp)
    assert sorted(os.listdir(backing)) == ["sparse.bin", "state.json"]


def test_two_writers_at_once(faultfs):
    """Multithreaded: a background copier and the training process write through the mount together."""
    drive = faultfs.mountpoint
    data = os.urandom(2 * MB)

    def copier():
        for i in range(3):
            (drive / f"copied-{i}").write_bytes(data)

    thread = threading.Thread(target=copier)
    thread.start()
    for i in range(3):
        (drive / f"saved-{i}").write_bytes(data[::-1])
    thread.join()
    assert all((faultfs.backing / f"copied-{i}").read_bytes() == data for i in range(3))
    assert all((faultfs.backing / f"saved-{i}").read_bytes() == data[::-1] for i in range(3))


def test_mount_is_listed_as_fuse(faultfs):
    """A FUSE-mount detector reading /proc/mounts sees it as it sees Colab's Drive (``fuse.drive``)."""
    assert mounted_fstype(faultfs.mountpoint) == f"fuse.{FSNAME}"
    with open("/proc/mounts") as f:
        assert any(line.split()[1:3] == [str(faultfs.mountpoint), "fuse.faultfs"] for line in f)


@pytest.mark.parametrize("code", [errno.ENOTCONN, errno.EIO])
def test_fail_all_then_heal(faultfs, code):
    drive = faultfs.mountpoint
    (drive / "kept.txt").write_text("kept")
    open_before = open(drive / "open-before.txt", "w")
    faultfs.set(fail="all", errno=code)
    assert errno_of(os.stat, drive / "kept.txt") == code
    assert errno_of(os.stat, drive) == code  # the mountpoint too: os.path.ismount is False while it fails
    assert not os.path.ismount(drive)
    assert errno_of(os.listdir, drive) == code
    assert errno_of((drive / "kept.txt").read_text) == code
    assert errno_of((drive / "new.txt").write_text, "x") == code
    assert errno_of(shutil.disk_usage, drive) == code
    open_before.write("x")
    assert errno_of(open_before.flush) == code  # a handle opened before the failure fails too
    assert errno_of(open_before.close) == code
    assert mounted_fstype(drive) == "fuse.faultfs"  # still listed: mounted, but dead
    assert faultfs.stats()["failed"]["getattr"] >= 2

    faultfs.heal()
    assert (drive / "kept.txt").read_text() == "kept"
    (drive / "new.txt").write_text("x")
    assert sorted(os.listdir(drive)) == ["kept.txt", "new.txt", "open-before.txt"]


@pytest.mark.parametrize("code", [errno.EDQUOT, errno.ENOSPC, errno.EROFS])
def test_fail_writes_keeps_reads(faultfs, code):
    drive = faultfs.mountpoint
    (drive / "model.safetensors").write_bytes(b"weights")
    (drive / "dir").mkdir()
    handle = open(drive / "open-before.bin", "wb")
    faultfs.set(fail="writes", errno=code)
    # What a full quota leaves working: reading, listing, stat, free space.
    assert (drive / "model.safetensors").read_bytes() == b"weights"
    assert sorted(os.listdir(drive)) == ["dir", "model.safetensors", "open-before.bin"]
    assert os.stat(drive / "model.safetensors").st_size == 7
    assert shutil.disk_usage(drive).total > 0
    # What it refuses.
    assert errno_of((drive / "new.bin").write_bytes, b"x") == code  # create
    handle.write(b"x" * 10)
    assert errno_of(handle.flush) == code  # write on a handle opened before
    assert errno_of(os.replace, drive / "model.safetensors", drive / "renamed") == code
    assert errno_of(os.mkdir, drive / "new-dir") == code
    assert errno_of(os.unlink, drive / "model.safetensors") == code
    assert errno_of(os.rmdir, drive / "dir") == code
    assert errno_of(open, drive / "model.safetensors", "wb") == code  # O_TRUNC truncates: a write
    assert errno_of(os.utime, drive / "model.safetensors") == code
    assert (faultfs.backing / "model.safetensors").read_bytes() == b"weights"
    assert faultfs.stats()["failed"].keys() >= {"create", "write", "rename", "mkdir", "unlink", "rmdir", "open"}
    faultfs.heal()
    handle.close()  # healed: the close's flush goes through
    (drive / "new.bin").write_bytes(b"x")


def test_fail_after_bytes_cuts_a_copy_midway(faultfs, tmp_path):
    source = tmp_path / "local.safetensors"
    source.write_bytes(os.urandom(8 * MB))
    faultfs.set(fail_after_bytes=3 * MB, errno=errno.EDQUOT)  # fail "none" with a byte mark: writes fail after it
    (faultfs.mountpoint / "small.json").write_text("{}")  # 2 bytes of the 3 MB
    with pytest.raises(OSError) as caught:
        shutil.copyfile(source, faultfs.mountpoint / "model.safetensors")
    assert caught.value.errno == errno.EDQUOT
    # The copy stopped exactly at the mark: a partial file, its head the source's.
    copied = (faultfs.backing / "model.safetensors").read_bytes()
    assert len(copied) == 3 * MB - 2
    assert copied == source.read_bytes()[: len(copied)]
    assert errno_of((faultfs.mountpoint / "later.json").write_text, "{}") == errno.EDQUOT  # and stays full
    assert (faultfs.mountpoint / "small.json").read_text() == "{}"  # reads still work
    faultfs.set(fail_after_bytes=None)  # a new control file: writes go through again
    shutil.copyfile(source, faultfs.mountpoint / "model.safetensors")
    assert (faultfs.backing / "model.safetensors").read_bytes() == source.read_bytes()


def test_paths_limit_the_failure(faultfs):
    drive = faultfs.mountpoint
    (drive / "run" / "checkpoint-4").mkdir(parents=True)
    faultfs.set(fail="all", errno=errno.EIO, paths=["*checkpoint-*"])
    (drive / "log.txt").write_text("fine")
    assert errno_of(os.mkdir, drive / "checkpoint-2") == errno.EIO
    assert errno_of(os.stat, drive / "run" / "checkpoint-4") == errno.EIO
    assert (drive / "log.txt").read_text() == "fine"
    assert os.listdir(drive / "run") == ["checkpoint-4"]


def test_latency_and_throttle_are_counted(faultfs):
    """Counted, not timed (no timing assertions): each metadata call the settings name is delayed once, the
    reads are not, and writes go through the throttle."""
    drive = faultfs.mountpoint
    faultfs.set(latency_ms=1, write_mbps=1000)
    with open(drive / "a.bin", "wb") as f:  # create, write, fsync, flush
        f.write(b"x" * 300_000)
        f.flush()
        os.fsync(f.fileno())
    os.replace(drive / "a.bin", drive / "b.bin")
    os.mkdir(drive / "d")
    os.rmdir(drive / "d")
    delayed = faultfs.stats()["delayed"]
    assert {op: delayed.get(op) for op in ("create", "fsync", "flush", "rename", "mkdir", "rmdir")} == dict.fromkeys(
        ("create", "fsync", "flush", "rename", "mkdir", "rmdir"), 1
    )
    (drive / "b.bin").read_bytes()  # a read-only open and close: no flush delayed
    os.unlink(drive / "b.bin")
    delayed = faultfs.stats()["delayed"]
    assert (delayed["flush"], delayed["unlink"]) == (1, 1)
    assert faultfs.stats()["throttled_writes"] >= 1
    deadline = time.monotonic() + 5  # release is asynchronous (close returns before it); so is bytes_written
    while faultfs.stats()["delayed"].get("release") != 1 or faultfs.stats()["bytes_written"] < 300_000:
        assert time.monotonic() < deadline, faultfs.stats()
        time.sleep(0.05)


def test_unmount_after_the_server_is_killed(faultfs, tmp_path):
    """A SIGKILLed server leaves a dead mount (ENOTCONN, the state that makes ``ls`` of the parent fail); unmount
    clears it."""
    (faultfs.mountpoint / "x").write_text("x")
    os.kill(faultfs.pid, signal.SIGKILL)
    faultfs.process.wait(timeout=10)
    assert errno_of(os.stat, faultfs.mountpoint) == errno.ENOTCONN
    faultfs.unmount()
    assert not faultfs.mounted()
    assert sorted(os.listdir(tmp_path)) == ["backing", "drive", "drive.faultfs.json", "drive.faultfs.json.log"]
    assert os.listdir(faultfs.mountpoint) == []
    assert (faultfs.backing / "x").read_text() == "x"


def test_no_mount_outlives_a_killed_test_process(tmp_path):
    """A test process killed outright never runs its unmount: the server sees its parent gone and unmounts."""
    need_fuse()
    starter = f"""
import os, signal, sys
sys.path.insert(0, {str(ROOT)!r})
from tools.faultfs import FaultFS
FaultFS({str(tmp_path / "backing")!r}, {str(tmp_path / "drive")!r}).start()
os.kill(os.getpid(), signal.SIGKILL)
"""
    assert subprocess.run([sys.executable, "-c", starter], timeout=60).returncode == -signal.SIGKILL
    deadline = time.monotonic() + 10
    while mounted_fstype(tmp_path / "drive") is not None:
        assert time.monotonic() < deadline, "still mounted"
        time.sleep(0.1)
    assert os.listdir(tmp_path / "drive") == []


def test_unmount_while_failing_and_busy(faultfs):
    """Unmount copes with a mount that fails every call and has a file open (the lazy unmount, then SIGTERM)."""
    held = open(faultfs.mountpoint / "held.txt", "w")
    faultfs.set(fail="all")
    faultfs.unmount()
    assert not faultfs.mounted()
    assert faultfs.process.returncode is not None
    assert errno_of(held.close) in (None, errno.ENOTCONN)


def test_cli_runs_until_sigterm(tmp_path):
    """The command in the module docstring: foreground until SIGTERM, then unmounted."""
    need_fuse()
    (tmp_path / "backing").mkdir()
    (tmp_path / "drive").mkdir()
    command = [sys.executable, str(ROOT / "tools" / "faultfs.py"), "backing", "drive", "--control", "control.json"]
    process = subprocess.Popen(command, cwd=tmp_path, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 15
    while mounted_fstype(tmp_path / "drive") is None:
        assert process.poll() is None and time.monotonic() < deadline, process.stderr.read()
        time.sleep(0.05)
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=10) == 0, process.stderr.read()
    assert mounted_fstype(tmp_path / "drive") is None


def test_torch_and_safetensors_save_through_the_mount(faultfs):
    torch = pytest.importorskip("torch")
    from safetensors.torch import load_file, save_file

    tensors = {"weight": torch.arange(300_000, dtype=torch.float32).reshape(600, 500), "bias": torch.ones(500)}
    torch.save({"model": tensors, "step": 4}, faultfs.mountpoint / "optimizer.pt")
    save_file(tensors, faultfs.mountpoint / "model.safetensors")
    loaded = torch.load(faultfs.mountpoint / "optimizer.pt", weights_only=True)
    assert loaded["step"] == 4 and torch.equal(loaded["model"]["weight"], tensors["weight"])
    mapped = load_file(faultfs.mountpoint / "model.safetensors")  # read through mmap
    assert all(torch.equal(mapped[k], tensors[k]) for k in tensors)


def test_damage_inside_keeps_length_head_and_tail(tmp_path):
    path = tmp_path / "model.safetensors"
    original = os.urandom(1 * MB)
    path.write_bytes(original)
    offset, length = damage_inside(path, nbytes=200_000)
    damaged = path.read_bytes()
    assert (offset, length) == (400_000, 200_000)
    assert len(damaged) == len(original)
    assert damaged[:offset] == original[:offset] and damaged[offset + length :] == original[offset + length :]
    assert all(a != b for a, b in zip(damaged[offset : offset + length], original[offset : offset + length]))
