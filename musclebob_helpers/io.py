"""Artifact I/O: every JSON the project writes goes to a temporary file and is renamed into place,
so a reader (the plot notebook, a user, a resumed run) never sees half a file. ``out_of_space`` says whether a
failed write (ours or a library's) failed for lack of space."""

from __future__ import annotations

import errno
import json
import os
import tempfile
import textwrap
from pathlib import Path


def write_json_atomic(path: str | Path, obj, durable: bool = True) -> None:
    """Write ``obj`` as JSON to ``path`` through a temporary file renamed into place, so the file is always whole.

    ``durable=False`` skips the fsync: a killed process never loses a renamed file (the kernel has it), fsync only
    matters when the machine itself goes down, and it is often most of what a small write costs. For files
    rewritten often whose loss a crash can repair (the reward history: a resume rebuilds it from the checkpoint).
    """
    _write_text_atomic(Path(path), json.dumps(obj, indent=2, ensure_ascii=False) + "\n", durable)


def json_list_item(item) -> str:
    """One item of a JSON list, as ``write_json_atomic`` writes it inside the list."""
    return textwrap.indent(json.dumps(item, indent=2, ensure_ascii=False), "  ")


def write_json_list_atomic(path: str | Path, items: list[str], durable: bool = True) -> None:
    """``write_json_atomic(path, list)``, byte for byte, from the items' ``json_list_item`` texts: a list that grows
    by one item a step (the reward history) is then not encoded whole again at every step."""
    _write_text_atomic(Path(path), ("[\n" + ",\n".join(items) + "\n]\n") if items else "[]\n", durable)


def write_lines_atomic(path: str | Path, lines: list[str], durable: bool = True) -> None:
    """A JSON-lines file (one ``json.dumps`` per line) written whole through a temporary file, as
    ``write_json_atomic`` writes JSON: a reader following a run never meets a half-written last line."""
    _write_text_atomic(Path(path), "".join(line + "\n" for line in lines), durable)


def read_json_lines(path: str | Path) -> list:
    """The JSON values of a JSON-lines file, skipping lines that do not parse ([] when the file is missing)."""
    try:
        text = Path(path).read_text()
    except (OSError, ValueError):
        return []
    values = []
    for line in text.splitlines():
        try:
            values.append(json.loads(line))
        except ValueError:
            continue
    return values


def _write_text_atomic(path: Path, text: str, durable: bool) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as fh:
            # One string, one write: json.dump streams hundreds of thousands of small writes for a long history.
            fh.write(text)
            fh.flush()
            if durable:
                os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


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
