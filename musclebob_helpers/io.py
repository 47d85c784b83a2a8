"""Artifact I/O: every file the project writes goes to a temporary file renamed into place, so a reader never
sees half a file; temporaries get the umask's permissions and a SIGTERM mid-write waits for the rename.
``out_of_space`` says whether a failed write (ours or a library's) failed for lack of space."""

from __future__ import annotations

import contextlib
import errno
import json
import os
import secrets
import signal
import stat
import textwrap
import threading
from pathlib import Path

TEMP_SUFFIX = ".tmp"
# What _write_atomic leaves when SIGKILLed before its rename (<name>.<8 random>.tmp): run_dir removes them.
TEMP_GLOB = "*.????????" + TEMP_SUFFIX


def write_json_atomic(path: str | Path, obj, durable: bool = True) -> None:
    """Write ``obj`` as JSON to ``path`` through a temporary file renamed into place. ``durable=False``
    skips the fsync (only a machine crash loses a renamed file), for often-rewritten files a resume rebuilds."""
    _write_atomic(Path(path), json.dumps(obj, indent=2, ensure_ascii=False) + "\n", durable)


def json_list_item(item) -> str:
    return textwrap.indent(json.dumps(item, indent=2, ensure_ascii=False), "  ")


def write_json_list_atomic(path: str | Path, items: list[str], durable: bool = True) -> None:
    """``write_json_atomic(path, list)`` byte for byte, from ``json_list_item`` texts, so a list
    growing by one item a step is not encoded whole each time. A whole rewrite, not an append: no state between
    two JSON lists parses, so a reader would meet a cut file."""
    text = ("[\n" + ",\n".join(items) + "\n]\n") if items else "[]\n"
    _write_atomic(Path(path), text.encode("utf-8"), durable)


def write_lines_atomic(path: str | Path, lines: list[str], durable: bool = True) -> None:
    _write_atomic(Path(path), lines_bytes(lines), durable)


def read_json_lines(path: str | Path) -> list:
    """The JSON values of a JSON-lines file, skipping lines that do not parse ([] when missing). Each line
    is decoded on its own: a kill mid-append may cut a UTF-8 character, and only that line must be lost."""
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
    return "".join(line + "\n" for line in lines).encode("utf-8")


def append_lines(path: str | Path, lines: list[str], size: int, keep: int | None = None) -> int | None:
    """Append JSON ``lines`` to ``path`` in one ``O_APPEND`` write, after cutting it back to ``keep`` bytes
    (None: cut nothing). Returns the new size, or None (nothing written) when the file is not the ``size`` bytes
    the caller left: it then rewrites it whole. Not atomic (``read_json_lines`` skips a cut line); no fsync."""
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
    """fsync ``path``'s data (False when it is missing)."""
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
    _write_atomic(Path(path), data, durable)


def _write_atomic(path: Path, data: str | bytes, durable: bool) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with _sigterm_deferred():  # a SIGTERM now would leave the temporary file behind: it waits for the rename
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
    """Allocate the bytes before writing: renaming an unallocated file over another makes ext4 flush it
    (``auto_da_alloc``). Any failure: the write goes on without."""
    if size and hasattr(os, "posix_fallocate"):
        with contextlib.suppress(OSError):
            os.posix_fallocate(fd, 0, size)


def create_temp_file(path: Path) -> tuple[int, str]:
    """A new ``<name>.<random>.tmp`` beside ``path``, open for writing; not ``mkstemp``, whose 0600 the
    rename would carry to the artifact."""
    while True:
        tmp = str(path.parent / f"{path.name}.{secrets.token_hex(4)}{TEMP_SUFFIX}")
        try:
            return os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666), tmp
        except FileExistsError:
            continue


def make_temp_dir(parent: Path, prefix: str) -> Path:
    """A new folder ``<prefix><random>`` in ``parent`` with the umask's permissions (``mkdtemp``: 0700)."""
    while True:
        folder = parent / f"{prefix}{secrets.token_hex(4)}"
        try:
            folder.mkdir(0o777)
            return folder
        except FileExistsError:
            continue


def _umask_mode() -> int:
    """0666 cut by the umask (read without changing it where Linux says it)."""
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
    """Give the files matching ``pattern`` the umask's permissions (safetensors writes 0600); returns
    those changed."""
    mode = _umask_mode()
    changed = []
    for path in Path(folder).glob(pattern):
        try:
            if path.is_file() and stat.S_IMODE(path.stat().st_mode) != mode:
                path.chmod(mode)
                changed.append(path)
        except OSError:
            continue  # a file system without modes (some FUSE mounts): nothing to give
    return changed


def _sigterm_kills() -> bool:
    """Whether a SIGTERM would kill this process outright (no handler) and this is the main thread."""
    return threading.current_thread() is threading.main_thread() and signal.getsignal(signal.SIGTERM) == signal.SIG_DFL


@contextlib.contextmanager
def _sigterm_deferred():
    """A SIGTERM arriving inside the block is delivered when it ends (only where it would kill)."""
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


def read_json(path: str | Path, default=None):
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return default


# Besides OSError(ENOSPC): torch.save's zip writer raises RuntimeError, safetensors a SafetensorError.
_OUT_OF_SPACE_TEXTS = (
    "no space left on device",
    "disk quota exceeded",
    "storagefull",
    "pytorchstreamwriter failed writing file",
    "unexpected pos",
    "file write failed",
)


def out_of_space(err: BaseException) -> bool:
    """Did ``err`` (or an error it was raised from) come from a full disk or quota?"""
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
