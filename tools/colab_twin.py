#!/usr/bin/env python3
"""A Colab twin: a virtual environment holding the versions Colab publishes, to test the notebooks against.

    python tools/colab_twin.py build --dir /work/venvs/colab-twin        # build (or check) the twin
    python tools/colab_twin.py reset --dir DIR                           # undo what an install cell changed
    python tools/colab_twin.py freeze-diff --dir DIR                     # the twin against Colab's list
    python tools/colab_twin.py run-notebook --dir DIR notebooks/02_reward_plots.ipynb -p window 3

What it holds: the packages the project and Jupyter touch, and their dependencies, at the versions of
``../shared/colab/pip-freeze.cpu.txt`` (beside the repository's clone; ``--freeze`` or ``$MUSCLEBOB_COLAB_FREEZE``
point elsewhere), plus every package Colab has that installing ``requirements-colab.txt`` would reach, so that
the install cell meets here what it meets on Colab. Not the whole list: Colab ships ~650 distributions, most of
which the project never imports.

Stand-ins, named: torch is ``torch==2.13.0`` CPU (Colab has 2.11.0; the wheel this machine has, Python 3.11 only),
and on Python 3.13 (Colab's) torch is a metadata-only distribution ``torch 2.11.0``: pip sees Colab's torch as
installed and so never pulls a multi-GB CUDA build, while ``import torch`` fails (the 3.13 twin runs what needs no
torch: the install cell's package diff, importing the package, the pure tests). ``google.colab`` is the
stand-in package in ``tests/colab_standin`` that kernels get on their ``PYTHONPATH``.

A build is idempotent: ``DIR/colab-twin.json`` records the hash of the freeze file, of ``requirements-colab.txt``
and of this recipe; an unchanged twin is left as it is. ``DIR/pristine.json`` is the package list right after the
build; ``reset`` puts it back (tests run the install cell on a pristine twin).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import unquote

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_FREEZE = ROOT.parent / "shared" / "colab" / "pip-freeze.cpu.txt"
COLAB_REQUIREMENTS = ROOT / "requirements-colab.txt"
STANDIN = ROOT / "tests" / "colab_standin"
KERNEL_NAME = "colab-twin"
MARKER = "colab-twin.json"
PRISTINE = "pristine.json"
CONSTRAINTS = "colab-constraints.txt"
RECIPE_VERSION = "3"  # bump when the recipe below changes what a build holds

TORCH_STANDIN = "2.13.0"  # the CPU wheel this machine has (Python 3.11)
# Colab builds of these go with its torch 2.11: a twin cannot honour them, and the project needs none of them
TORCH_FAMILY = {"torch", "torchvision", "torchaudio", "torchcodec"}
# The stand-in torch 2.13 needs setuptools>=77.0.3 (Colab's torch 2.11 ships beside setuptools 75.2.0): with the
# stand-in, setuptools floats.
STANDIN_NEEDS = {"setuptools"}
# What the project imports at run time (pyproject's dependencies, less trl which Colab lacks) and what a kernel
# and the widgets need: the roots of the twin; pip adds their dependencies at Colab's versions.
ROOTS = [
    "transformers",
    "datasets",
    "accelerate",
    "peft",
    "tokenizers",
    "safetensors",
    "huggingface_hub",
    "matplotlib",
    "numpy",
    "ipywidgets",
    "widgetsnbextension",
    "notebook",
    "ipykernel",
    "ipython",
    "jupyter_client",
    "jupyter_core",
    "traitlets",
    "tornado",
    "pyzmq",
    "matplotlib-inline",
    "nbformat",
    "pip",
    "setuptools",
    "wheel",
]


def norm(name: str) -> str:
    """A distribution name as pip compares them (PEP 503)."""
    return re.sub(r"[-_.]+", "-", name).lower()


def parse_freeze(text: str) -> dict[str, tuple[str, str]]:
    """``{normalised name: (name, version)}`` of a ``pip freeze``; a URL-pinned wheel gives its file's version,
    a git or local-file source (not installable from an index) is left out."""
    out = {}
    for line in text.splitlines():
        line = line.split("#", 1)[0].strip() if not line.lstrip().startswith("#") else ""
        if not line:
            continue
        if "==" in line:
            name, version = (s.strip() for s in line.split("==", 1))
        elif " @ " in line:
            name, url = (s.strip() for s in line.split(" @ ", 1))
            m = re.search(r"/([^/]+?)-([0-9][^-/]*)-[^/]*\.whl$", unquote(url))
            if not m:
                continue
            version = m.group(2)
        else:
            continue
        out[norm(name)] = (name, version)
    return out


def colab_constraints(freeze: dict[str, tuple[str, str]], python_minor: tuple[int, int]) -> list[str]:
    """Constraint lines pinning every package to Colab's version; torch to the stand-in."""
    lines = []
    for key, (name, version) in sorted(freeze.items()):
        if key in TORCH_FAMILY or (key in STANDIN_NEEDS and python_minor < (3, 13)):
            continue
        lines.append(f"{name}=={version}")
    lines.append(f"torch=={torch_version(python_minor)}")
    return lines


def torch_version(python_minor: tuple[int, int]) -> str:
    return TORCH_STANDIN if python_minor < (3, 13) else "2.11.0"


def sha(*texts: str) -> str:
    h = hashlib.sha256()
    for t in texts:
        h.update(t.encode())
        h.update(b"\0")
    return h.hexdigest()[:16]


# --- the twin's interpreter ---------------------------------------------------------------------------------


def venv_python(target: Path) -> Path:
    return target / "bin" / "python"


def installed(target: Path) -> dict[str, tuple[str, str]]:
    """``{normalised name: (name, version)}`` of what the twin holds (importlib.metadata, like ``pip list``)."""
    code = (
        "import importlib.metadata as m, json; print(json.dumps(sorted({(d.metadata['Name'], d.version) "
        "for d in m.distributions() if d.metadata['Name']})))"
    )
    out = subprocess.run([str(venv_python(target)), "-I", "-c", code], check=True, capture_output=True, text=True)
    return {norm(n): (n, v) for n, v in json.loads(out.stdout)}


def diff(before: dict, after: dict) -> dict[str, list]:
    """Which packages an install added, removed or changed: ``{"added": [(name, v)], "changed": [(name, old, new)],
    "removed": [(name, v)]}``."""
    return {
        "added": sorted((after[k][0], after[k][1]) for k in after.keys() - before.keys()),
        "removed": sorted((before[k][0], before[k][1]) for k in before.keys() - after.keys()),
        "changed": sorted(
            (after[k][0], before[k][1], after[k][1])
            for k in after.keys() & before.keys()
            if before[k][1] != after[k][1]
        ),
    }


def format_diff(d: dict[str, list]) -> str:
    lines = [f"  added   {n} {v}" for n, v in d["added"]]
    lines += [f"  changed {n} {old} -> {new}" for n, old, new in d["changed"]]
    lines += [f"  removed {n} {v}" for n, v in d["removed"]]
    return "\n".join(lines) or "  (nothing changed)"


def pip(target: Path, *args: str, log=print) -> None:
    cmd = [str(venv_python(target)), "-m", "pip", "--disable-pip-version-check", *args]
    log("$ " + " ".join(a if len(a) < 80 else a[:77] + "..." for a in cmd[1:]))
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        tail = "\n".join((done.stderr or done.stdout).strip().splitlines()[-15:])
        raise SystemExit(f"colab-twin: pip failed (exit {done.returncode}):\n{tail}")


def fake_torch(target: Path, version: str) -> None:
    """A metadata-only ``torch`` distribution: pip sees Colab's torch installed; ``import torch`` still fails."""
    site = next((target / "lib").glob("python3.*/site-packages"))
    info = site / f"torch-{version}.dist-info"
    info.mkdir(exist_ok=True)
    (info / "METADATA").write_text(
        f"Metadata-Version: 2.1\nName: torch\nVersion: {version}\n"
        "Summary: colab-twin stand-in: metadata only, no module\n"
    )
    (info / "INSTALLER").write_text("colab-twin\n")
    (info / "RECORD").write_text("")


# --- build ------------------------------------------------------------------------------------------------


def python_minor(python: str) -> tuple[int, int]:
    out = subprocess.run(
        [python, "-c", "import sys; print(*sys.version_info[:2])"], check=True, capture_output=True, text=True
    )
    major, minor = out.stdout.split()
    return int(major), int(minor)


def build(target: Path, python: str, freeze_path: Path, log=print) -> dict:
    """Build the twin in ``target`` (or leave an up-to-date one alone); returns its marker."""
    if not freeze_path.is_file():
        raise SystemExit(f"colab-twin: no Colab package list at {freeze_path} (pass --freeze)")
    freeze_text = freeze_path.read_text()
    pins_text = COLAB_REQUIREMENTS.read_text() if COLAB_REQUIREMENTS.is_file() else ""
    minor = python_minor(python)
    key = sha(freeze_text, pins_text, RECIPE_VERSION, " ".join(ROOTS), f"{minor}")
    marker_path = target / MARKER
    if marker_path.is_file() and venv_python(target).exists():
        marker = json.loads(marker_path.read_text())
        if marker.get("key") == key:
            log(f"colab-twin: {target} is up to date (Python {marker['python']}, built in {marker['build_s']} s)")
            return marker
        log(f"colab-twin: {target} was built from another recipe or package list: rebuilding")
    if target.exists():
        shutil.rmtree(target)
    start = time.monotonic()
    freeze = parse_freeze(freeze_text)
    subprocess.run([python, "-m", "venv", str(target)], check=True)
    constraints = target / CONSTRAINTS
    constraints.write_text("\n".join(colab_constraints(freeze, minor)) + "\n")
    c = ["-c", str(constraints)]
    # Colab's own pip first: the resolver that meets the install cell is Colab's.
    pip(target, "install", "-q", *c, "pip", log=log)
    if minor >= (3, 13):
        fake_torch(target, torch_version(minor))
        roots = ROOTS
    else:
        roots = [f"torch=={TORCH_STANDIN}", *(r for r in ROOTS if norm(r) not in STANDIN_NEEDS)]
    pip(target, "install", "-q", *c, *roots, log=log)
    # What installing the pinned Colab set reaches and Colab already has (jinja2, pandas, ...): put it here at
    # Colab's version, so the install cell finds it installed, as on Colab.
    if pins_text:
        pinned = {
            norm(re.split(r"[=<>!~ ;\[]", line, maxsplit=1)[0])
            for line in pins_text.splitlines()
            if line.strip() and not line.lstrip().startswith(("#", "-"))
        }
        report = target / "dry-run.json"
        pip(target, "install", "--dry-run", "-q", "--report", str(report), *c, "-r", str(COLAB_REQUIREMENTS), log=log)
        reached = {norm(item["metadata"]["name"]) for item in json.loads(report.read_text())["install"]}
        report.unlink()
        extra = sorted(freeze[k][0] for k in reached - pinned if k in freeze)
        if extra:
            pip(target, "install", "-q", *c, *extra, log=log)
    subprocess.run(
        [
            str(venv_python(target)),
            "-m",
            "ipykernel",
            "install",
            "--prefix",
            str(target),
            "--name",
            KERNEL_NAME,
            "--display-name",
            f"Colab twin (Python {minor[0]}.{minor[1]})",
        ],
        check=True,
        capture_output=True,
    )
    pristine = installed(target)
    (target / PRISTINE).write_text(json.dumps({k: list(v) for k, v in sorted(pristine.items())}, indent=1))
    marker = {
        "key": key,
        "python": ".".join(map(str, minor)),
        "freeze": str(freeze_path),
        "torch": pristine.get("torch", ("torch", "?"))[1],
        "packages": len(pristine),
        "build_s": round(time.monotonic() - start),
    }
    marker_path.write_text(json.dumps(marker, indent=1) + "\n")
    log(
        f"colab-twin: built {target} in {marker['build_s']} s: Python {marker['python']}, {len(pristine)} packages, "
        f"torch {marker['torch']} (stand-in)"
    )
    return marker


def is_built(target: Path) -> bool:
    return (target / MARKER).is_file() and (target / PRISTINE).is_file() and venv_python(target).exists()


def pristine(target: Path) -> dict[str, tuple[str, str]]:
    return {k: tuple(v) for k, v in json.loads((target / PRISTINE).read_text()).items()}


def reset(target: Path, log=print) -> dict[str, list]:
    """Put the twin back as built: uninstall what was added since, reinstall what changed. Returns what it undid."""
    d = diff(pristine(target), installed(target))
    if d["added"]:
        pip(target, "uninstall", "-y", "-q", *[n for n, _ in d["added"]], log=log)
    back = [f"{n}=={old}" for n, old, _ in d["changed"]] + [f"{n}=={v}" for n, v in d["removed"]]
    if back:
        pip(target, "install", "-q", "--no-deps", "-c", str(target / CONSTRAINTS), *back, log=log)
    return d


# --- kernels ------------------------------------------------------------------------------------------------


def kernel_env(target: Path, drive_mountpoint: Path, repo: Path = ROOT, base: dict | None = None) -> dict:
    """The environment a kernel of the twin runs in as a Colab kernel would: ``google.colab`` importable,
    Drive mounted under ``drive_mountpoint``, no hub."""
    env = dict(os.environ if base is None else base)
    for var in ("VIRTUAL_ENV", "PYTHONHOME"):
        env.pop(var, None)
    env.update(
        {
            "PYTHONPATH": str(repo / "tests" / "colab_standin"),
            "JUPYTER_PATH": str(target / "share" / "jupyter"),
            "MUSCLEBOB_DRIVE_MOUNTPOINT": str(drive_mountpoint),
            "HF_HUB_OFFLINE": "1",
            "TRANSFORMERS_OFFLINE": "1",
            "TOKENIZERS_PARALLELISM": "false",
            "OMP_NUM_THREADS": env.get("OMP_NUM_THREADS", "1"),
            "MKL_NUM_THREADS": env.get("MKL_NUM_THREADS", "1"),
            "PIP_DISABLE_PIP_VERSION_CHECK": "1",
        }
    )
    # the kernel's own `python`, `pip` and `bash colab_setup.sh` find the twin first, as on Colab
    env["PATH"] = f"{target / 'bin'}{os.pathsep}{env.get('PATH', '')}"
    return env


def run_notebook(
    target: Path, notebook: Path, out: Path, parameters: dict, env: dict, cwd: Path, timeout: int = 600
) -> subprocess.CompletedProcess:
    """Run all of ``notebook`` with papermill (this Python's) on a kernel of the twin."""
    cmd = [
        sys.executable,
        "-m",
        "papermill",
        str(notebook),
        str(out),
        "-k",
        KERNEL_NAME,
        "--cwd",
        str(cwd),
        "--execution-timeout",
        str(timeout),
        "--log-level",
        "WARNING",
    ]
    for k, v in parameters.items():
        cmd += ["-p", k, str(v)] if isinstance(v, str) else ["-y", f"{k}: {json.dumps(v)}"]
    return subprocess.run(cmd, env=env, capture_output=True, text=True)


# --- command line -------------------------------------------------------------------------------------------


def default_python() -> str:
    return sys.executable


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="tools/colab_twin.py", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    for name, help_ in (
        ("build", "build the twin, or leave an up-to-date one alone"),
        ("reset", "undo what was installed into the twin since it was built"),
        ("freeze-diff", "where the twin differs from Colab's package list"),
        ("run-notebook", "run a notebook on a kernel of the twin, as on Colab"),
    ):
        p = sub.add_parser(name, help=help_)
        p.add_argument("--dir", type=Path, required=True, help="the twin's folder")
        if name in ("build", "freeze-diff"):
            p.add_argument(
                "--freeze", type=Path, default=Path(os.environ.get("MUSCLEBOB_COLAB_FREEZE", DEFAULT_FREEZE))
            )
        if name == "build":
            p.add_argument("--python", default=default_python(), help="the interpreter (default: this one)")
        if name == "run-notebook":
            p.add_argument("notebook", type=Path)
            p.add_argument("-p", nargs=2, action="append", default=[], metavar=("NAME", "VALUE"))
            p.add_argument("--drive", type=Path, default=Path("/tmp/colab-twin-drive"))
    args = parser.parse_args(argv)
    target = args.dir.resolve()
    if args.cmd == "build":
        build(target, args.python, args.freeze)
        return 0
    if not is_built(target):
        print(f"colab-twin: no twin at {target}: run `python tools/colab_twin.py build --dir {args.dir}` first")
        return 2
    if args.cmd == "reset":
        print("colab-twin: undone:\n" + format_diff(reset(target)))
    elif args.cmd == "freeze-diff":
        colab = parse_freeze(args.freeze.read_text())
        twin = installed(target)
        same = sum(1 for k in twin if k in colab and colab[k][1] == twin[k][1])
        print(f"colab-twin: {same} of {len(twin)} packages at Colab's version; the others:")
        for k, (name, version) in sorted(twin.items()):
            if k not in colab:
                print(f"  {name} {version}: not on Colab")
            elif colab[k][1] != version:
                print(f"  {name} {version}: Colab has {colab[k][1]}")
    elif args.cmd == "run-notebook":
        out = Path("test-artifacts") / f"twin-{args.notebook.name}"
        out.parent.mkdir(exist_ok=True)
        params = {k: v for k, v in args.p}
        done = run_notebook(
            target,
            args.notebook.resolve(),
            out.resolve(),
            params,
            kernel_env(target, args.drive),
            args.notebook.resolve().parent,
        )
        print(done.stderr[-3000:] if done.returncode else f"colab-twin: ran {args.notebook} -> {out}")
        return done.returncode
    return 0


if __name__ == "__main__":
    sys.exit(main())
