"""Artifact I/O: every JSON (and the run's PNG) the project writes goes to a temporary file and is renamed into
place, so a reader (the plot notebook, a user, a resumed run) never sees half a file. ``out_of_space`` says whether
a failed write (ours or a library's) failed for lack of space.

Temporary things are made so that nothing outlives them: a SIGTERM during a write is held back until the rename is
done (``sigterm_deferred``), and files and folders get the umask's permissions (``tempfile.mkstemp`` / ``mkdtemp``
make 0600 / 0700 whatever the umask, so a shared Drive folder or a second user could not read a run).
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import secrets
import signal
import socket
import stat
import textwrap
import threading
import time
from pathlib import Path

TEMP_SUFFIX = ".tmp"
# What _write_atomic leaves when SIGKILLed before its rename (<name>.<8 random>.tmp): run_dir removes them.
TEMP_GLOB = "*.????????" + TEMP_SUFFIX


def write_json_atomic(path: str | Path, obj, durable: bool = True) -> None:
    """Write ``obj`` as JSON to ``path`` through a temporary file renamed into place, so the file is always whole.

    ``durable=False`` skips the fsync: a killed process never loses a renamed file (the kernel has it), fsync only
    matters when the machine itself goes down, and it is often most of what a small write costs. For files
    rewritten often whose loss a crash can repair (the reward history: a resume rebuilds it from the checkpoint).
    """
    _write_atomic(Path(path), json.dumps(obj, indent=2, ensure_ascii=False) + "\n", durable)


def json_list_item(item) -> str:
    """One item of a JSON list, as ``write_json_atomic`` writes it inside the list."""
    return textwrap.indent(json.dumps(item, indent=2, ensure_ascii=False), "  ")


def write_json_list_atomic(path: str | Path, items: list[str], durable: bool = True) -> None:
    """``write_json_atomic(path, list)``, byte for byte, from the items' ``json_list_item`` texts: a list that grows
    by one item a step (the reward history) is then not encoded whole again at every step.

    Still a whole rewrite renamed into place, not an append in place (overwriting the closing ``]`` with
    ``,<item>]``, 0.006 ms): a JSON list has no state between the old and the new text that parses, so a reader
    meeting the write (the live plot, the Drive mirror's copy) would see a cut file, which the plot labels partial,
    and a kill there would leave one. What the rewrite cost was mostly the rename: ext4 flushes a file renamed over
    another when its blocks are not yet allocated (``auto_da_alloc``), 0.2-2 ms a step. ``durable=False`` writes
    (one a step) allocate them first (``_preallocate``), so the rename is ~0.1 ms whatever the size, and a version
    replaced before the kernel's writeback is never written to disk; what remains grows with the list (the copy
    into the page cache, ~0.2 ms a MB)."""
    text = ("[\n" + ",\n".join(items) + "\n]\n") if items else "[]\n"
    _write_atomic(Path(path), text.encode("utf-8"), durable)


def write_lines_atomic(path: str | Path, lines: list[str], durable: bool = True) -> None:
    """A JSON-lines file (one ``json.dumps`` per line) written whole through a temporary file, as
    ``write_json_atomic`` writes JSON: a reader following a run never meets a half-written last line."""
    _write_atomic(Path(path), lines_bytes(lines), durable)


def read_json_lines(path: str | Path) -> list:
    """The JSON values of a JSON-lines file, skipping lines that do not parse ([] when the file is missing).

    Each line is decoded on its own: a line cut by a kill mid-append (``append_lines``) may end inside a UTF-8
    character, and only that line must be lost, not the file."""
    try:
        raw = Path(path).read_bytes()
    except OSError:
        return []
    values = []
    for line in raw.split(b"\n"):
        try:
            values.append(json.loads(line.decode("utf-8")))
        except ValueError:  # UnicodeDecodeError and JSONDecodeError both are
            continue
    return values


def lines_bytes(lines: list[str]) -> bytes:
    """JSON lines as ``write_lines_atomic`` and ``append_lines`` put them in the file: UTF-8, one newline each."""
    return "".join(line + "\n" for line in lines).encode("utf-8")


def append_lines(path: str | Path, lines: list[str], size: int, keep: int | None = None) -> int | None:
    """Append ``lines`` (JSON lines) to ``path`` in one ``O_APPEND`` write, after cutting the file back to its first
    ``keep`` bytes (a line boundary; None: cut nothing). Returns the file's new size, or None, having written
    nothing, when the file is not the ``size`` bytes the caller last left (deleted, replaced, a failed append):
    the caller then rewrites it whole.

    Constant time where ``write_lines_atomic`` rewrites the whole file and renames it over the old one (which
    ext4 follows with a flush of the new file). Not atomic: a reader may meet the last line half written, or a kill
    may leave it so; ``read_json_lines`` skips such a line, and the writer rewrites the file when it starts again.
    No fsync: ``os.fsync`` once at the end, as ``write_json_atomic(durable=False)``."""
    data = lines_bytes(lines)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND)
    except FileNotFoundError:
        return None
    try:
        if os.fstat(fd).st_size != size:
            return None
        if keep is not None and keep != size:
            if not 0 <= keep < size:  # ftruncate past the end would pad the file with zeros
                raise ValueError(f"cannot cut {path} ({size} bytes) back to {keep} bytes")
            os.ftruncate(fd, keep)
            size = keep
        view = memoryview(data)
        while view:  # one write for a regular file, unless a signal or a full disk cuts it short
            view = view[os.write(fd, view) :]
    finally:
        os.close(fd)
    return size + len(data)


def fsync_file(path: str | Path) -> bool:
    """fsync ``path``'s data (False when it is missing): what an appended file needs to be durable."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return False
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    return True


def write_bytes_atomic(path: str | Path, data: bytes, durable: bool = True) -> None:
    """``data`` (an image) to ``path`` through a temporary file renamed into place, as ``write_json_atomic``."""
    _write_atomic(Path(path), data, durable)


def _write_atomic(path: Path, data: str | bytes, durable: bool) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with sigterm_deferred():  # a SIGTERM now would leave the temporary file behind: it waits for the rename
        fd, tmp = create_temp_file(path)
        try:
            with os.fdopen(fd, "wb" if isinstance(data, bytes) else "w") as fh:
                if not durable and isinstance(data, bytes):
                    _preallocate(fd, len(data))
                # One string, one write: json.dump streams hundreds of thousands of small writes for a long history.
                fh.write(data)
                fh.flush()
                if durable:
                    os.fsync(fh.fileno())
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise


def _preallocate(fd: int, size: int) -> None:
    """Allocate a new file's ``size`` bytes before writing them, so that renaming it over an older file does not
    make ext4 flush it (see ``write_json_list_atomic``). Where the file system cannot (``EOPNOTSUPP``), or any
    other failure: the write goes on without (a full disk then fails the write itself)."""
    if size and hasattr(os, "posix_fallocate"):
        with contextlib.suppress(OSError):
            os.posix_fallocate(fd, 0, size)


def create_temp_file(path: Path) -> tuple[int, str]:
    """A new ``<name>.<random>.tmp`` beside ``path``, opened for writing. Not ``mkstemp``: it makes 0600 files,
    and the rename would carry that mode to the artifact; ``os.open``'s 0666 is cut by the umask, as ``open`` is."""
    while True:
        tmp = str(path.parent / f"{path.name}.{secrets.token_hex(4)}{TEMP_SUFFIX}")
        try:
            return os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666), tmp
        except FileExistsError:
            continue


def make_temp_dir(parent: Path, prefix: str) -> Path:
    """A new folder ``<prefix><random>`` in ``parent`` with the umask's permissions (``mkdtemp`` makes 0700, which a
    folder renamed into place would keep)."""
    while True:
        folder = parent / f"{prefix}{secrets.token_hex(4)}"
        try:
            folder.mkdir(0o777)
            return folder
        except FileExistsError:
            continue


def umask_mode() -> int:
    """The permissions a new file gets here: 0666 cut by the umask (read without changing it where Linux says it)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return 0o666 & ~int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)  # not Linux: the only portable read sets it; put back at once
    os.umask(mask)
    return 0o666 & ~mask


def give_umask_mode(folder: str | Path, pattern: str = "*.safetensors") -> list[Path]:
    """Give the files matching ``pattern`` in ``folder`` the umask's permissions; returns those changed.

    safetensors (0.4 and later) writes its file to a ``tempfile`` (mode 0600) and renames it, so every
    ``model.safetensors`` of a checkpoint or a saved model would be unreadable by anyone else; called after each save.
    """
    mode = umask_mode()
    changed = []
    for path in Path(folder).glob(pattern):
        try:
            if path.is_file() and stat.S_IMODE(path.stat().st_mode) != mode:
                path.chmod(mode)
                changed.append(path)
        except OSError:
            continue  # a file system without modes (some FUSE mounts): nothing to give
    return changed


# --- signals around temporary things -------------------------------------------------------------------------


def _sigterm_kills() -> bool:
    """Whether a SIGTERM would kill this process outright, and this thread may change that: no handler installed
    (a handler someone else installed, the run's graceful stop, already decides what a SIGTERM does), main thread
    (a handler can be installed only there)."""
    return threading.current_thread() is threading.main_thread() and signal.getsignal(signal.SIGTERM) == signal.SIG_DFL


@contextlib.contextmanager
def sigterm_deferred():
    """A SIGTERM (a scheduler, ``timeout``, a container stop) that arrives inside the block is delivered when it ends.

    Only where SIGTERM would kill the process outright (``_sigterm_kills``).
    """
    if not _sigterm_kills():
        yield
        return
    received = []
    signal.signal(signal.SIGTERM, lambda signum, frame: received.append(signum))
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        if received:
            os.kill(os.getpid(), signal.SIGTERM)  # dies now, as it would have, with nothing half-written left


# --- who owns a temporary thing ------------------------------------------------------------------------------


def owner_record() -> dict:
    """This process as the owner of a lock or a temporary folder: host, pid and start time."""
    return {"host": socket.gethostname(), "pid": os.getpid(), "started": time.time()}


def owner_gone(record: dict) -> bool:
    """True when ``record``'s process is known to be dead: it ran on this host and its pid no longer exists.
    A process on another host cannot be seen from here: False (its owner's age or heartbeat decides)."""
    if not isinstance(record, dict) or record.get("host") != socket.gethostname():
        return False
    pid = record.get("pid")
    if not isinstance(pid, int) or isinstance(pid, bool) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except OSError:
        return False  # EPERM: alive, another user's
    return False


def read_json(path: str | Path, default=None):
    """The JSON in ``path``, or ``default`` when the file is missing or not valid JSON."""
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return default


# How a write that ran out of space fails, besides OSError(ENOSPC): torch.save's zip writer raises RuntimeError
# ("PytorchStreamWriter failed writing file ...", "[enforce fail at inline_container.cc:...] . unexpected pos"),
# safetensors' Rust writer a SafetensorError naming the OS error.
_OUT_OF_SPACE_TEXTS = (
    "no space left on device",
    "disk quota exceeded",
    "storagefull",
    "pytorchstreamwriter failed writing file",
    "unexpected pos",
    "file write failed",
)


def out_of_space(err: BaseException) -> bool:
    """Did ``err`` (or an error it was raised from) come from a full disk or quota? The one test the CLI and the
    notebook apply to a run that failed while saving."""
    seen = set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        if isinstance(err, OSError) and err.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        if isinstance(err, (RuntimeError, OSError)) or type(err).__name__ == "SafetensorError":
            text = str(err).lower()
            if any(t in text for t in _OUT_OF_SPACE_TEXTS):
                return True
        err = err.__cause__ or err.__context__
    return False
