"""One writer per run folder: ``.musclebob.lock``, held by the run from before it writes anything to its end.
Readers never take it; they ask ``lock_holder`` / ``being_written``."""

from __future__ import annotations

import contextlib
import errno
import json
import os
import secrets
import socket
import threading
import time
from pathlib import Path

from .config import ConfigError

LOCK_FILE = ".musclebob.lock"  # the run writing the folder: host, pid, start, heartbeat (JSON); flock'ed meanwhile
_LOCK_HEARTBEAT_SECONDS = 30  # how often the holder rewrites its heartbeat
_LOCK_STALE_SECONDS = 300  # a holder silent this long is gone (another machine, or a lock file without flock)


def _folder(folder: str | Path) -> Path:
    """The folder as the kernel resolves it (``~``, ``..``): taking a lock must not create ``out/a`` of
    ``out/a/../b``."""
    return Path(os.path.realpath(os.path.expanduser(folder)))


def _flock(fd: int, flags: int) -> None:
    try:
        import fcntl
    except ImportError:  # not a POSIX system: the record alone decides
        raise OSError(errno.ENOSYS, "no flock here") from None
    fcntl.flock(fd, flags)


def _read_lock(path: Path, tries: int = 3) -> dict | None:
    """The holder's record in a lock file (None: no file; {} unreadable, e.g. caught mid-write)."""
    for attempt in range(tries):
        try:
            record = json.loads(path.read_text(encoding="utf-8"))
            return record if isinstance(record, dict) else {}
        except FileNotFoundError:
            return None
        except (OSError, ValueError):
            if attempt < tries - 1:
                time.sleep(0.05)  # the holder writes it in one go: a second look sees it whole
    return {}


def _record_live(record: dict, path: Path) -> bool:
    """A holder flock cannot vouch for (another machine, no flock) is live while its heartbeat is recent and,
    on this host, its pid runs; with this process's pid only if we hold it (a restarted kernel can reuse a pid).
    An unreadable record is live while the file is recent."""
    now = time.time()
    if not record:
        try:
            return now - path.stat().st_mtime < _LOCK_STALE_SECONDS
        except OSError:
            return False
    heartbeat = record.get("heartbeat")
    if not isinstance(heartbeat, (int, float)) or now - heartbeat >= _LOCK_STALE_SECONDS:
        return False
    if record.get("host") == socket.gethostname():
        if record.get("pid") == os.getpid():
            return any(lock.record.get("token") == record.get("token") for lock in _HELD_HERE)
        return not _pid_gone(record.get("pid"))
    return True


def _pid_gone(pid) -> bool:
    """True when ``pid`` (of a process on this host) no longer exists; EPERM means alive, another user's."""
    if not isinstance(pid, int) or isinstance(pid, bool) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except OSError:
        return False
    return False


def describe_holder(record: dict | None) -> str:
    """'pid 123 on host abc, started 2026-11-29 06:55 UTC, last heartbeat 12 s ago' (what a refusal names)."""
    if not record:
        return "a run whose lock record is unreadable"
    parts = [f"pid {record.get('pid', '?')} on host {record.get('host', '?')}"]
    if isinstance(record.get("started"), (int, float)):
        parts.append("started " + time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(record["started"])))
    if isinstance(record.get("heartbeat"), (int, float)):
        parts.append(f"last heartbeat {max(0, round(time.time() - record['heartbeat']))} s ago")
    return ", ".join(parts)


def lock_holder(folder: str | Path) -> dict | None:
    """Who is writing ``folder`` now (its record; {} when unreadable), or None. Writes nothing."""
    path = _folder(folder) / LOCK_FILE
    if os.path.realpath(path.parent) in _HELD:
        return None  # this process holds it (the notebook's train() around run_training)
    record = _read_lock(path)
    if record is None:
        return None
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return None  # gone meanwhile: released
    try:
        _flock(fd, _LOCK_EX_NB)
    except BlockingIOError:
        return record  # a live process on this machine holds it
    except OSError:
        pass  # no flock on this file system: the record alone decides
    else:
        _flock(fd, _LOCK_UN)
        if not record:
            return None  # unlocked and unreadable: a run killed before it wrote its record
    finally:
        os.close(fd)
    return record if _record_live(record, path) else None


def being_written(folder: str | Path) -> str | None:
    """Why a reader should not take ``folder``'s model now (None: no run is writing it)."""
    holder = lock_holder(folder) if Path(folder).is_dir() else None
    if holder is None:
        return None
    return (
        f"a run is still writing this folder ({describe_holder(holder)}); its model is final only once that run "
        "ends: wait for it to finish"
    )


_LOCK_EX_NB = 2 | 4  # fcntl.LOCK_EX | fcntl.LOCK_NB (fcntl is imported only where it is used: not on Windows)
_LOCK_UN = 8
_HELD: dict[str, RunLock] = {}  # the folders this process writes (realpath -> its lock), by writer_lock
_HELD_HERE: list[RunLock] = []  # every lock this process holds now


class RunLock:
    """The lock of a run folder. An OS ``flock`` dies with its process, so a killed run leaves no stale lock;
    the file's record (host, pid, start, heartbeat) names the holder and covers what flock cannot see: another
    machine on a shared Drive, or a file system without flock (then the record, created exclusively, is the lock)."""

    def __init__(self, folder: str | Path, shown: str | None = None):
        self.folder = _folder(folder)
        self.path = self.folder / LOCK_FILE
        self.shown = str(folder) if shown is None else shown  # the --output-dir the user typed, for the refusal
        self.fd: int | None = None
        self.record: dict = {}
        self.uses_flock = False
        self._stop = threading.Event()
        self._beat: threading.Thread | None = None

    def refusal(self, record: dict | None) -> ConfigError:
        return ConfigError(
            "output_dir",
            self.shown,
            f"another run is writing to it ({describe_holder(record)}); wait for it to finish, or pick another "
            f"--output-dir (the lock of a run that died is free at once on its own machine, from another one "
            f"{_LOCK_STALE_SECONDS // 60} minutes after its last heartbeat)",
        )

    def acquire(self, attempts: int = 5) -> RunLock:
        """Create the folder, take the lock; ``ConfigError`` (one line, naming the holder) when another run has it."""
        self.folder.mkdir(parents=True, exist_ok=True)
        for attempt in range(attempts):
            try:
                fd, created = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o666), True
            except FileExistsError:
                try:
                    fd, created = os.open(self.path, os.O_RDWR), False
                except FileNotFoundError:
                    continue  # released between the two opens
            try:
                _flock(fd, _LOCK_EX_NB)
                self.uses_flock = True
            except BlockingIOError:
                os.close(fd)
                if attempt == attempts - 1:
                    raise self.refusal(_read_lock(self.path)) from None
                time.sleep(0.1)  # a reader's peek (lock_holder) holds it for an instant
                continue
            except OSError as err:
                if err.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL, errno.EBADF):
                    os.close(fd)
                    raise
            if not _same_file(fd, self.path):
                os.close(fd)  # the holder released (and removed) it between our open and our flock: start again
                continue
            if not created:
                # Unlocked, yet the record may live: another machine's run, or a file system whose flock does not
                # lock (some FUSE mounts accept it and do nothing). A killed run's record is stale by its dead pid;
                # one unreadable is stale too once flock vouches that nobody here holds the file.
                record = _read_lock(self.path)
                if (record if self.uses_flock else record is not None) and _record_live(record, self.path):
                    os.close(fd)
                    raise self.refusal(record)
            self.fd = fd
            self.record = {
                "host": socket.gethostname(),
                "pid": os.getpid(),
                "started": time.time(),
                "heartbeat": int(time.time()),
                "token": secrets.token_hex(8),
            }
            try:
                self._write()
            except OSError:  # a full disk: the caller says so in one line; no half lock is left behind
                if created:
                    self.path.unlink(missing_ok=True)
                os.close(fd)
                self.fd = None
                raise
            if not self.uses_flock and not created:
                time.sleep(0.2)  # two runs taking over one stale record: the last writer wins, the other sees it
                if (_read_lock(self.path) or {}).get("token") != self.record["token"]:
                    os.close(fd)
                    self.fd = None
                    raise self.refusal(_read_lock(self.path))
            _HELD_HERE.append(self)
            self._beat = threading.Thread(target=self._heartbeat, name="musclebob-lock-heartbeat", daemon=True)
            self._beat.start()
            return self
        raise self.refusal(_read_lock(self.path))

    def _write(self) -> None:
        """The record, in place (a rename would replace the flock'ed file); a whole-second heartbeat keeps
        the text's length, so a reader never sees leftovers."""
        text = json.dumps(self.record, sort_keys=True).encode() + b"\n"
        os.pwrite(self.fd, text, 0)
        os.ftruncate(self.fd, len(text))
        os.fsync(self.fd)  # another machine reads it through the shared file system

    def _heartbeat(self) -> None:
        while not self._stop.wait(_LOCK_HEARTBEAT_SECONDS):
            self.record["heartbeat"] = int(time.time())
            try:
                self._write()
            except OSError:
                pass  # a full or flaky disk: the run itself will say so; the lock stays held

    def release(self) -> None:
        if self.fd is None:
            return
        self._stop.set()
        if self._beat is not None:
            self._beat.join(timeout=5)
        try:
            if (_read_lock(self.path) or {}).get("token") == self.record.get("token"):
                self.path.unlink()  # still ours (a fallback record may have been taken over after a long stall)
        except OSError:
            pass
        try:
            os.close(self.fd)  # drops the flock
        except OSError:
            pass  # the run folder's file system is gone (a Drive disconnect): the lock went with it
        self.fd = None
        _HELD_HERE.remove(self)


def _same_file(fd: int, path: Path) -> bool:
    try:
        return os.fstat(fd).st_ino == path.stat().st_ino
    except OSError:
        return False


@contextlib.contextmanager
def writer_lock(folder: str | Path, shown: str | None = None):
    """Hold the run folder's lock for the block; inside a block of this process that holds it, go on."""
    key = str(_folder(folder))
    if key in _HELD:
        yield _HELD[key]
        return
    try:
        lock = RunLock(folder, shown).acquire()
    except OSError as err:
        if err.errno in (errno.ENOSPC, errno.EDQUOT):
            raise  # a full disk: the caller's one line for it (io.out_of_space) names the free space
        raise ConfigError(
            "output_dir",
            shown or str(folder),
            f"it cannot be written ({err.strerror or err}); on Colab remount Google Drive (rerun the Drive cell) "
            "and run this again",
        ) from None
    _HELD[key] = lock
    try:
        yield lock
    finally:
        del _HELD[key]
        lock.release()
