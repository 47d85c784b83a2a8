"""Where the widget test environments live (built by ``tools/browser_frontends.py build --dir``), and how to
run Jupyter in one of them without picking up this machine's own kernels, nbextensions or settings."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ENVS_DIR = Path(os.environ.get("MUSCLEBOB_BROWSER_ENVS", "~/.cache/musclebob/browser-envs")).expanduser()
BUILD = f"python tools/browser_frontends.py build --dir {ENVS_DIR}"


def env_or_skip(name: str) -> Path:
    """The built environment ``name``; skip (or fail, with MUSCLEBOB_REQUIRE_BROWSER=1) when it isn't built."""
    env = ENVS_DIR / name
    if not (env / ".built").exists():
        reason = f"{env} not built (run: {BUILD})"
        if os.environ.get("MUSCLEBOB_REQUIRE_BROWSER") == "1":
            pytest.fail(reason)
        pytest.skip(reason)
    return env


def isolated_jupyter_env(env: Path, home: Path) -> dict[str, str]:
    """Environment variables that make Jupyter use only ``env``: its own ``python3`` kernel (a user-level one
    installed for another interpreter would win otherwise), its nbextensions and config, nothing from ~."""
    for sub in ("data", "config", "runtime"):
        (home / sub).mkdir(parents=True, exist_ok=True)
    return {
        **os.environ,
        "JUPYTER_DATA_DIR": str(home / "data"),
        "JUPYTER_CONFIG_DIR": str(home / "config"),
        "JUPYTER_RUNTIME_DIR": str(home / "runtime"),
        "JUPYTER_PREFER_ENV_PATH": "1",
        "IPYTHONDIR": str(home / "ipython"),
        "PATH": f"{env / 'bin'}:{os.environ['PATH']}",
        "VIRTUAL_ENV": str(env),
        "OMP_NUM_THREADS": "1",
        "MKL_NUM_THREADS": "1",
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
    }
