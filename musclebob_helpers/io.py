"""Artifact I/O: every JSON the project writes goes to a temporary file and is renamed into place,
so a reader (the plot notebook, a user, a resumed run) never sees half a file."""

from __future__ import annotations

import json
import os
import re
import tempfile
from pathlib import Path

from . import faults

_CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")


def write_json_atomic(path: str | Path, obj) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as fh:
            json.dump(obj, fh, indent=2, ensure_ascii=False)
            fh.write("\n")
            fh.flush()
            os.fsync(fh.fileno())
        faults.before_replace(path, Path(tmp))  # no-op unless a fault-injection test asks for a kill here
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


def list_checkpoints(out_dir: str | Path) -> list[Path]:
    """``checkpoint-N`` folders in ``out_dir``, oldest (lowest N) first."""
    out = Path(out_dir)
    if not out.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in out.iterdir() if p.is_dir() and (m := _CHECKPOINT.match(p.name))]
    return [p for _, p in sorted(found)]


def remove_stale_temp_files(out_dir: str | Path) -> list[Path]:
    """Delete the temporary files ``write_json_atomic`` leaves when killed before its rename; returns them."""
    out = Path(out_dir)
    stale = [p for p in out.glob("*.json.*.tmp") if p.is_file()] if out.is_dir() else []
    for p in stale:
        p.unlink(missing_ok=True)
    return stale
