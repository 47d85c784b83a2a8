"""Start-up checks that touch the disk, run by ``validate_config`` before any model is loaded.

* ``output_location_problem``: can the output folder be written? A file in the way, a read-only or
  pseudo file system, Google Drive not mounted (a path under ``/content/drive`` would otherwise be
  created on the runtime's local disk and vanish with it), too little free space. Permission bits are
  not trusted (root ignores them): a probe file is really created, in the nearest folder that exists,
  and removed again, so nothing is left behind and no folder is created.
* ``check_resume``: an explicit checkpoint must be intact, and a resume must use the settings of the run
  it continues (``checkpoints.resume_mismatch``) unless ``--ignore-mismatch``.

Both raise ``ConfigError`` (one line: flag, value, what is allowed).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from .config import ConfigError, field_flags

DRIVE_MOUNT = Path("/content/drive")  # where Colab mounts Google Drive
MIN_FREE_BYTES = 200 * 2**20  # below this even the tiny model's checkpoints will not fit


def nearest_existing(path: Path) -> Path:
    """``path`` itself or its closest ancestor that exists."""
    for candidate in (path, *path.parents):
        if candidate.exists():
            return candidate
    return Path(path.anchor or ".")


def output_location_problem(output_dir: str, min_free_bytes: int = MIN_FREE_BYTES) -> str | None:
    """Why training cannot write to ``output_dir`` (None when it can); creates nothing that stays."""
    try:
        path = Path(output_dir).expanduser().absolute()
        path.exists()  # raises ValueError on an embedded NUL byte
    except (ValueError, OSError, RuntimeError) as err:
        return f"not a usable path ({err})"
    drive = DRIVE_MOUNT.absolute()
    if (path == drive or drive in path.parents) and not (drive / "MyDrive").is_dir():
        return (f"Google Drive is not mounted at {drive}; run `from google.colab import drive; "
                f"drive.mount('{drive}')` first, or choose a local --output-dir")
    base = nearest_existing(path)
    if not base.is_dir():
        return f"{base} is a file, so no folder can be created inside it"
    try:
        before = base.stat()
        fd, probe = tempfile.mkstemp(prefix=".musclebob-write-test-", dir=base)
        os.close(fd)
        os.unlink(probe)
    except OSError as err:
        return f"{base} cannot be written ({err.strerror or type(err).__name__}); choose a writable --output-dir"
    try:  # leave the folder exactly as found, its modification time included
        os.utime(base, ns=(before.st_atime_ns, before.st_mtime_ns))
    except OSError:
        pass  # some network file systems refuse; harmless
    free = shutil.disk_usage(base).free
    if free < min_free_bytes:
        return (f"only {free / 2**20:.0f} MB free on the disk of {base}; a run needs at least "
                f"{min_free_bytes / 2**20:.0f} MB for checkpoints and the final model: free some space")
    return None


def space_warning(num_params: int, epochs: int, output_dir: str | Path) -> str | None:
    """A warning when the checkpoints of this run will likely not fit on the output disk (None when they will).

    Each epoch's checkpoint holds fp32 weights (4 bytes a parameter) and AdamW's two moments (8 bytes); the
    final model adds the weights once more. Drive's free 15 GB fills at epoch 3 with a 0.5B model.
    """
    need = num_params * (12 * epochs + 4)
    free = shutil.disk_usage(nearest_existing(Path(output_dir).expanduser().absolute())).free
    if need <= free:
        return None
    return (f"WARNING: {epochs} checkpoints of this model need about {need / 2**30:.1f} GB, but only "
            f"{free / 2**30:.1f} GB are free under {output_dir}; the run may stop with a full disk. Free space, "
            "use fewer --epochs, or another --output-dir.")


def check_output_location(cfg) -> None:
    problem = output_location_problem(cfg.output_dir)
    if problem:
        raise ConfigError("output_dir", cfg.output_dir, problem)


def check_resume(cfg) -> None:
    """Refuse a damaged explicit checkpoint, and a resume whose settings differ from the interrupted run's."""
    from .checkpoints import checkpoint_problems, resume_mismatch

    r = cfg.resume_from_checkpoint
    if r is None:
        return
    if r != "auto":
        problems = checkpoint_problems(Path(r).expanduser())
        if problems:
            raise ConfigError("resume_from_checkpoint", r,
                              f"that checkpoint is damaged or incomplete ({'; '.join(problems[:2])}); use "
                              "--resume-from-checkpoint auto to take the newest intact one")
    differs = resume_mismatch(cfg)
    if differs and not cfg.ignore_mismatch:
        flags = field_flags()
        saved = ", ".join(f"{flags[k]}={old!r}" for k, (old, _) in differs.items())
        asked = ", ".join(f"{flags[k]}={new!r}" for k, (_, new) in differs.items())
        raise ConfigError("resume_from_checkpoint", r,
                          f"the run being resumed used {saved}, this one asks for {asked}; pass the same values, "
                          "--ignore-mismatch to resume anyway, or another --output-dir")
