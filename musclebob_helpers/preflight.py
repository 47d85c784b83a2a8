"""Start-up checks that touch the disk, run by ``validate_config`` before any model is loaded.

* ``output_location_problem``: can the output folder be written? A file in the way, a read-only or
  pseudo file system, Google Drive not mounted (a path under ``/content/drive`` would otherwise be
  created on the runtime's local disk and vanish with it), too little free space for even a small run.
* ``check_drive_space``: can that disk hold the run at its peak (``memory.drive_need``: the checkpoints kept,
  the one being written, the final model)? Refused in one line with what to change. Permission bits are
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

DRIVE_MOUNT = Path(os.environ.get("MUSCLEBOB_DRIVE_MOUNTPOINT", "/content/drive"))  # where Colab mounts Drive
MIN_FREE_BYTES = 200 * 2**20  # below this even the tiny model's checkpoints will not fit
DRIVE_MARGIN = 1.05  # the estimate is within a few % of measured sizes; Drive's quota also counts the trash


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
        return (
            f"Google Drive is not mounted at {drive}; run `from google.colab import drive; "
            f"drive.mount('{drive}')` first, or choose a local --output-dir"
        )
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
        return (
            f"only {free / 2**20:.0f} MB free on the disk of {base}; a run needs at least "
            f"{min_free_bytes / 2**20:.0f} MB for checkpoints and the final model: free some space"
        )
    return None


def offline_shape(model: str):
    """The model's shape without the network: known hub ids, the tiny model once built, a local folder."""
    from .memory import model_shape

    return model_shape(model, offline=True)


def on_drive(output_dir: str | Path) -> bool:
    """Is ``output_dir`` on the Google Drive mount (where deleted files stay in the trash, counted)?"""
    path = Path(output_dir).expanduser().absolute()
    drive = DRIVE_MOUNT.absolute()
    return path == drive or drive in path.parents


def folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def drive_space_problem(cfg, shape=None, need=None) -> str | None:
    """Why the output folder's disk cannot hold this run (``memory.drive_need``); None when it can.

    Free space is ``shutil.disk_usage`` of the nearest existing folder (on Colab's Drive mount it reports the
    Drive quota left). On an ordinary disk the run needs its peak, and checkpoints already in the folder count
    as space it will reuse (rotation frees them); on Drive, deleting only moves files to the trash, so the run
    needs everything it will write.
    """
    from .io import list_checkpoints
    from .memory import GB, drive_need

    need = need or drive_need(cfg, shape)
    if need is None:
        return None
    out = Path(cfg.output_dir).expanduser().absolute()
    drive = on_drive(out)
    free = shutil.disk_usage(nearest_existing(out)).free
    if not drive:
        free += sum(folder_bytes(c) for c in list_checkpoints(out))
    wanted = need.need(drive)
    if drive and cfg.resume_from_checkpoint is not None:  # a resumed run writes only the epochs still to come
        from .config import steps_per_epoch

        ckpts = list_checkpoints(out)
        done = int(ckpts[-1].name.split("-")[1]) // max(1, steps_per_epoch(cfg)) if ckpts else 0
        wanted -= min(done, need.checkpoints_saved) * need.checkpoint
    if wanted * DRIVE_MARGIN <= free:
        return None
    tips = ["free space there" + (" (and empty Drive's trash)" if drive else "")]
    if not cfg.lora:
        tips.append("train a LoRA adapter (--lora / lora = True: ~0.1 GB a checkpoint for a 0.5B model)")
    if drive:
        tips.append("fewer --epochs (one checkpoint each)")
    elif cfg.keep_checkpoints != 1:
        tips.append("keep fewer checkpoints (--keep-checkpoints 1)")
    tips.append("or another --output-dir")
    how = (
        f"{need.checkpoints_saved} checkpoints of {need.checkpoint / GB:.2f} GB + the final model, deleted "
        "ones staying in Drive's trash"
        if drive
        else f"{min(need.checkpoints_saved, need.checkpoints_kept + 1)} checkpoints of {need.checkpoint / GB:.2f} GB "
        "at once + the final model"
    )
    return (
        f"this run needs about {wanted / GB:.1f} GB there ({how}), but only {free / GB:.1f} GB are free: "
        + ", ".join(tips)
    )


def check_drive_space(cfg, shape=None):
    """``ConfigError`` when the run will not fit its output disk; returns the ``DriveNeed`` (None: unknown)."""
    from .memory import drive_need

    shape = shape or offline_shape(cfg.model)
    need = drive_need(cfg, shape) if shape else None  # no network here: an unknown hub id is checked once loaded
    problem = drive_space_problem(cfg, need=need) if need else None
    if problem:
        raise ConfigError("output_dir", cfg.output_dir, problem)
    return need


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
            raise ConfigError(
                "resume_from_checkpoint",
                r,
                f"that checkpoint is damaged or incomplete ({'; '.join(problems[:2])}); use "
                "--resume-from-checkpoint auto to take the newest intact one",
            )
    differs = resume_mismatch(cfg)
    if differs and not cfg.ignore_mismatch:
        flags = field_flags()
        saved = ", ".join(f"{flags[k]}={old!r}" for k, (old, _) in differs.items())
        asked = ", ".join(f"{flags[k]}={new!r}" for k, (_, new) in differs.items())
        raise ConfigError(
            "resume_from_checkpoint",
            r,
            f"the run being resumed used {saved}, this one asks for {asked}; pass the same values, "
            "--ignore-mismatch to resume anyway, or another --output-dir",
        )
