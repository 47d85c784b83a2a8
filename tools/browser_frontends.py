"""Build the environments the widget tests need: Colab's kernel stack with either ipywidgets, and two browser
frontends.

    python tools/browser_frontends.py build --dir /work/venvs/browser           # everything (idempotent)
    python tools/browser_frontends.py build --dir /work/venvs/browser --only kernels

What it builds under ``--dir`` (Python 3.11: the only interpreter with a CPU torch wheel on disk):

* ``kernel-ipw7``, ``kernel-ipw8`` — Colab's kernel stack (ipykernel 6.17.1, ipython 7.34.0, jupyter_client
  7.4.9, traitlets 5.7.1, tornado 6.5.7, matplotlib 3.10.0, numpy 2.1.3) with ipywidgets 7.7.1 / 8.1.9 and
  papermill: small, no torch; they execute notebook 02 headless (tests/test_widget_stall.py).
* ``classic`` — Colab's kind of frontend: classic notebook 6.5.7, ipywidgets 7.7.1, widgetsnbextension 3.6.6
  (the ipywidgets 7 protocol; why not 3.6.10: CLASSIC_FRONTEND), the same kernel stack, torch 2.13.0 CPU and
  the project's run-time packages.
* ``classic-wnb3610`` — the same frontend with Colab's widgetsnbextension 3.6.10, no torch: shows its Output bug.
* ``lab`` — JupyterLab 4 with ipywidgets 8.1.9 (jupyterlab_widgets 3), the same kernel stack and packages.
* ``driver`` — playwright, which drives Debian's ``chromium`` (installed with apt when missing).

A finished environment is marked with a ``.built`` file holding the recipe it was built from, so running it
again is a no-op unless the recipe changed.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PYTHON = os.environ.get("MUSCLEBOB_PY311", "python3.11")
CHROMIUM = "/usr/bin/chromium"

# Colab's kernel side (../shared/colab/pip-freeze.cpu.txt): these decide how widget messages flow.
KERNEL_STACK = [
    "ipykernel==6.17.1",
    "ipython==7.34.0",
    "jupyter_client==7.4.9",
    "traitlets==5.7.1",
    "tornado==6.5.7",
    "pyzmq==26.2.1",
    "matplotlib==3.10.0",
    "numpy==2.1.3",
    "nbformat==5.11.1",
    "nbclient==0.10.4",
]
IPW7 = ["ipywidgets==7.7.1", "widgetsnbextension==3.6.10"]
IPW8 = ["ipywidgets==8.1.9"]
# The classic notebook with the ipywidgets 7 protocol. widgetsnbextension 3.6.6, not Colab's 3.6.10: from 3.6.7
# on, the wheels' nbextension bundle compiles @jupyter-widgets/base and /output to ES2015+ classes, but defines
# its own OutputModel with Backbone's ``.extend``, which copies only enumerable statics (a class's are not)
# and calls the parent as a function: every ``Output`` fails with "_deserialize_state is not a function",
# while sliders, checkboxes and buttons (plain classes) render. 3.6.1 to 3.6.6 are compiled to ES5 and work.
# Colab itself is unaffected: its frontend does not load widgetsnbextension's JavaScript.
CLASSIC_FRONTEND = ["ipywidgets==7.7.1", "widgetsnbextension==3.6.6", "notebook==6.5.7", "nbclassic==1.3.3"]
TORCH = "torch==2.13.0"  # the CPU wheel on local disk (an unpinned torch pulls the CUDA build)
# The project's run-time packages (models, training, comparison) from pyproject.toml; the pins above win.
RUNTIME_NAMES = ("transformers", "trl", "datasets", "accelerate", "peft", "tokenizers", "safetensors")

ENVS = {
    "kernel-ipw7": KERNEL_STACK + IPW7 + ["papermill"],
    "kernel-ipw8": KERNEL_STACK + IPW8 + ["papermill"],
    "classic": KERNEL_STACK + CLASSIC_FRONTEND + [TORCH, "runtime", "papermill"],
    # Colab's exact pair, kept to show widgetsnbextension 3.6.10's broken Output (see CLASSIC_FRONTEND).
    "classic-wnb3610": KERNEL_STACK + IPW7 + ["notebook==6.5.7", "nbclassic==1.3.3"],
    "lab": KERNEL_STACK + IPW8 + ["jupyterlab>=4.2,<5", TORCH, "runtime", "papermill"],
    "driver": ["playwright"],
}
GROUPS = {"kernels": ["kernel-ipw7", "kernel-ipw8"], "frontends": ["classic", "classic-wnb3610", "lab", "driver"]}


def runtime_requirements() -> list[str]:
    """pyproject.toml's run-time dependencies, but torch and the widget/plot packages pinned above."""
    import tomllib

    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    return [d for d in deps if re.split(r"[<>=!~\[ ;]", d, maxsplit=1)[0].lower() in RUNTIME_NAMES]


def recipe(name: str) -> list[str]:
    out = []
    for item in ENVS[name]:
        out.extend(runtime_requirements() if item == "runtime" else [item])
    return out


def run(cmd: list[str], **kw) -> None:
    print("+", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True, **kw)


def build_env(base: Path, name: str) -> Path:
    env = base / name
    want = recipe(name)
    marker = env / ".built"
    if marker.exists() and json.loads(marker.read_text()) == want:
        print(f"{env}: up to date")
        return env
    if env.exists():
        shutil.rmtree(env)
    run([PYTHON, "-m", "venv", str(env)])
    py = str(env / "bin" / "python")
    # Pins as constraints too, so nothing pulled in later (transformers, jupyterlab) can move them.
    constraints = env / "constraints.txt"
    constraints.write_text("\n".join(x for x in want if "==" in x) + "\n")
    run([py, "-m", "pip", "install", "--quiet", "-c", str(constraints), *want])
    if name.startswith("classic"):
        # widgetsnbextension registers its nbextension in the venv (sys-prefix) on install; say so explicitly
        # so a half-registered setup shows here, not as a blank widget in the browser.
        run([str(env / "bin" / "jupyter"), "nbextension", "enable", "--py", "--sys-prefix", "widgetsnbextension"])
    marker.write_text(json.dumps(want))
    print(f"{env}: built")
    return env


def ensure_chromium() -> None:
    if Path(CHROMIUM).exists():
        return
    run(["apt-get", "update", "-qq"])
    run(["apt-get", "install", "-y", "-qq", "chromium"], env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"})


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    b = sub.add_parser("build", help="build the environments under --dir (idempotent)")
    b.add_argument("--dir", required=True, type=Path)
    b.add_argument("--only", choices=[*GROUPS, *ENVS], help="one group or one environment")
    args = parser.parse_args(argv)
    if shutil.which(PYTHON) is None:
        print(f"browser_frontends: {PYTHON} not found (set MUSCLEBOB_PY311 to a Python 3.11)", file=sys.stderr)
        return 2
    names = GROUPS.get(args.only, [args.only]) if args.only else [*GROUPS["kernels"], *GROUPS["frontends"]]
    args.dir.mkdir(parents=True, exist_ok=True)
    if "driver" in names:
        ensure_chromium()
    for name in names:
        build_env(args.dir.resolve(), name)
    return 0


if __name__ == "__main__":
    sys.exit(main())
