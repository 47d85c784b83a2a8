"""``google.colab.drive``: ``mount`` makes ``<mountpoint>/MyDrive`` (a real folder standing in for Google Drive)."""

import os
from pathlib import Path

mounts: list[str] = []


def mount(mountpoint, force_remount=False, timeout_ms=120000, readonly=False):
    if os.environ.get("COLAB_STANDIN_REFUSE_DRIVE"):
        raise ValueError("mount failed: credential propagation was unsuccessful")
    (Path(mountpoint) / "MyDrive").mkdir(parents=True, exist_ok=True)
    mounts.append(str(mountpoint))
    print(f"Mounted at {mountpoint}")
