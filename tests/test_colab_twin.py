"""The notebooks on a Colab twin: Colab's published package versions, a stand-in ``google.colab``, Drive in a
temporary folder (``tools/colab_twin.py``).

* The install cell, run as on a fresh Colab runtime, adds only what Colab lacks and changes nothing Colab ships
  (an explicit allow-list; the diff is printed and logged in ``test-artifacts/colab-twin.log``), on the main twin
  (Python 3.11, CPU torch 2.13 as the stand-in) and on a Python 3.13 twin without torch where built. The three
  notebooks' setup cells differ only in the line importing their own modules, so the install runs for the first
  and the imports of all three run on a fresh runtime.
* Pins that would change what Colab ships are refused by pip, and the refusal says why.
* Run all of the three notebooks on the tiny model, with a disconnect after a few steps and then only the resume
  cell in a fresh runtime (trl uninstalled again, a new kernel, nothing else run).

The twin is built by ``python tools/colab_twin.py build --dir DIR`` (a few minutes; ``.ci/run`` does it);
``$MUSCLEBOB_TWIN_DIR`` names DIR (default ``~/.cache/musclebob/colab-twin``). Without a twin these tests skip,
unless ``MUSCLEBOB_REQUIRE_TWIN=1`` (CI), where a missing twin fails.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tools"))
import colab_twin as twin  # noqa: E402

slow_twin = [pytest.mark.slow, pytest.mark.twin]

TWIN_DIR = Path(os.environ.get("MUSCLEBOB_TWIN_DIR", Path.home() / ".cache" / "musclebob" / "colab-twin"))
# Colab's Python: a twin with no torch (a metadata-only stand-in) runs the install cell there too.
TWIN313_DIR = Path(os.environ.get("MUSCLEBOB_TWIN313_DIR", Path.home() / ".cache" / "musclebob" / "colab-twin-py313"))
NOTEBOOKS = ("01_train_musclebob.ipynb", "02_reward_plots.ipynb", "03_compare_models.ipynb")
ARTIFACTS = ROOT / "test-artifacts"
LOG = ARTIFACTS / "colab-twin.log"

# What an install cell may do to a Colab runtime: add trl, the one package the project needs that Colab lacks
# (requirements-colab.txt; trl 0.29.1's own requirements are all on Colab at versions it accepts). Nothing else is
# added, nothing changes version, nothing is removed.
MAY_ADD = {"trl"}
# What must never change, named: Colab's GPU build of torch and its companions, the widget stack Colab's frontend
# renders (ipywidgets 7), the kernel and notebook server, and the libraries whose code a running kernel has
# already imported when the install cell runs.
NEVER_CHANGE = (
    "torch",
    "torchvision",
    "numpy",
    "ipywidgets",
    "widgetsnbextension",
    "notebook",
    "ipykernel",
    "jupyter_client",
    "matplotlib",
    "transformers",
    "tokenizers",
    "accelerate",
    "datasets",
    "huggingface_hub",
    "peft",
)
# A run small enough for two CPU cores: 2 epochs of 4 steps.
SMALL = dict(model="tiny", epochs=2, num_samples=16, batch_size=4, num_generations=4, validation_samples=1)


def built(path: Path, required: bool) -> Path:
    if not twin.is_built(path):
        reason = f"Colab twin not built at {path}: python tools/colab_twin.py build --dir {path}"
        if required:
            pytest.fail(reason)
        pytest.skip(reason)
    return path


@pytest.fixture(scope="module")
def twin_dir():
    return built(TWIN_DIR, os.environ.get("MUSCLEBOB_REQUIRE_TWIN") == "1")


@pytest.fixture(params=["twin", "twin-py313"])
def any_twin(request):
    """The main twin, and the Python 3.13 one (required where CI names it in $MUSCLEBOB_TWIN313_DIR)."""
    if request.param == "twin":
        return built(TWIN_DIR, os.environ.get("MUSCLEBOB_REQUIRE_TWIN") == "1")
    return built(TWIN313_DIR, os.environ.get("MUSCLEBOB_REQUIRE_TWIN") == "1" and "MUSCLEBOB_TWIN313_DIR" in os.environ)


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    """The project as Colab has it after the clone: the repository's files (no ignored ones) in a fresh folder."""
    dest = tmp_path_factory.mktemp("content") / "musclebob"
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    if listed.returncode == 0:
        for rel in filter(None, listed.stdout.split("\0")):
            src = ROOT / rel
            if src.is_file():
                (dest / rel).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(src, dest / rel)
    else:  # not a git checkout
        shutil.copytree(ROOT, dest, ignore=shutil.ignore_patterns(".git", "runs", "test-artifacts", "__pycache__"))
    return dest


def log(text: str) -> None:
    print(text)
    ARTIFACTS.mkdir(exist_ok=True)
    with LOG.open("a") as f:
        f.write(text + "\n")


def runtime(tmp: Path, project: Path, twin_dir: Path) -> dict:
    """A fresh Colab runtime: the kernel's environment, with its own temp folder (where the setup marker lives)."""
    (tmp / "tmp").mkdir(parents=True, exist_ok=True)
    env = twin.kernel_env(twin_dir, tmp / "drive", repo=project)
    env["TMPDIR"] = str(tmp / "tmp")
    env["MUSCLEBOB_HOME"] = str(project)
    return env


def tagged(name: str, project: Path, tags: set[str], dest: Path) -> Path:
    """The notebook with only the cells tagged ``tags`` (in their order)."""
    import nbformat

    notebook = nbformat.read(project / "notebooks" / name, as_version=4)
    notebook.cells = [c for c in notebook.cells if tags & set(c.metadata.get("tags", []))]
    assert notebook.cells, f"{name} has no cell tagged {sorted(tags)}"
    nbformat.write(notebook, dest)
    return dest


def execute(twin_dir, notebook: Path, out: Path, env: dict, project: Path, **parameters):
    import nbformat

    done = twin.run_notebook(twin_dir, notebook, out, parameters, env, cwd=project / "notebooks")
    executed = nbformat.read(out, as_version=4) if out.exists() else None
    return done, executed


def cell_text(cell) -> str:
    parts = []
    for o in cell.get("outputs", []):
        if o.output_type == "stream":
            parts.append(o.text)
        elif o.output_type in ("display_data", "execute_result"):
            parts.append(o.data.get("text/plain", ""))
        elif o.output_type == "error":
            parts.append(f"{o.ename}: {o.evalue}")
    return "".join(parts)


def tagged_cell(executed, tag: str):
    return next(c for c in executed.cells if tag in c.metadata.get("tags", []))


def history_steps(run_dir: Path) -> list[int]:
    return [e["step"] for e in json.loads((run_dir / "reward_history.json").read_text())]


# --- the twin's recipe (pure, fast) ---------------------------------------------------------------------------

FREEZE = """\
accelerate==1.14.0
google-colab @ file:///colabtools/dist/google_colab-1.0.0.tar.gz
jupyter_kernel_gateway @ git+https://github.com/googlecolab/kernel_gateway@b134e99
setuptools==75.2.0
torch @ https://download.pytorch.org/whl/cpu/torch-2.11.0%2Bcpu-cp313-cp313-manylinux_2_28_x86_64.whl
torchvision @ https://download.pytorch.org/whl/cpu/torchvision-0.26.0%2Bcpu-cp313-cp313-manylinux_2_28_x86_64.whl
en_core_web_sm @ https://github.com/x/download/en_core_web_sm-3.8.0/en_core_web_sm-3.8.0-py3-none-any.whl#sha256=1
"""


def test_freeze_lines_pinned_to_urls_give_their_wheels_version():
    freeze = twin.parse_freeze(FREEZE)
    assert freeze["torch"] == ("torch", "2.11.0+cpu") and freeze["en-core-web-sm"] == ("en_core_web_sm", "3.8.0")
    assert "google-colab" not in freeze and "jupyter-kernel-gateway" not in freeze  # not on an index


def test_constraints_name_the_torch_stand_in():
    freeze = twin.parse_freeze(FREEZE)
    on_311 = twin.colab_constraints(freeze, (3, 11))
    assert "torch==2.13.0" in on_311 and "accelerate==1.14.0" in on_311
    assert not any(line.startswith(("torchvision", "setuptools")) for line in on_311)  # the stand-in's needs float
    assert "torch==2.11.0" in twin.colab_constraints(freeze, (3, 13))  # metadata-only: Colab's version
    assert "setuptools==75.2.0" in twin.colab_constraints(freeze, (3, 13))


def test_diff_names_added_changed_removed():
    d = twin.diff(
        {"a": ("A", "1"), "b": ("b", "1"), "c": ("c", "1")}, {"a": ("A", "2"), "b": ("b", "1"), "d": ("d", "3")}
    )
    assert d == {"added": [("d", "3")], "removed": [("c", "1")], "changed": [("A", "1", "2")]}
    assert twin.format_diff(d).splitlines() == ["  added   d 3", "  changed A 1 -> 2", "  removed c 1"]


# --- the twin ---------------------------------------------------------------------------------------------------


OWN_IMPORT = "from musclebob_helpers import colab, "  # the one line where the setup cells differ


def setup_cells() -> dict[str, str]:
    import nbformat

    return {
        name: next(
            c.source
            for c in nbformat.read(ROOT / "notebooks" / name, as_version=4).cells
            if "setup" in c.metadata.get("tags", [])
        )
        for name in NOTEBOOKS
    }


def test_setup_cells_differ_only_in_what_they_import():
    """Why the install is run for the first notebook only: the three setup cells are the same code (the bootstrap,
    tests/test_notebooks.py, then ``colab.setup_project``) but for the line importing the notebook's own modules,
    which test_setup_cell_imports_need_nothing_colab_lacks runs on a fresh runtime."""
    cells = {
        name: [line for line in text.splitlines() if not line.startswith(OWN_IMPORT)]
        for name, text in setup_cells().items()
    }
    assert all(sum(line.startswith(OWN_IMPORT) for line in text.splitlines()) == 1 for text in setup_cells().values())
    assert cells[NOTEBOOKS[1]] == cells[NOTEBOOKS[0]] and cells[NOTEBOOKS[2]] == cells[NOTEBOOKS[0]]
    assert cells[NOTEBOOKS[0]][-1] == "ROOT = colab.setup_project(ROOT)"  # the imports come before the install


@pytest.mark.slow
@pytest.mark.twin
def test_setup_cell_imports_need_nothing_colab_lacks(any_twin, project, tmp_path):
    """Each notebook imports its modules before its setup cell installs anything: on a fresh runtime (no trl; on
    the Python 3.13 twin no torch either, a metadata-only stand-in) those imports work and pull in neither."""
    twin.reset(any_twin, log=lambda *a: None)
    imports = [line for text in setup_cells().values() for line in text.splitlines() if line.startswith(OWN_IMPORT)]
    code = "\n".join(
        [
            f"import sys; sys.path.insert(0, {str(project)!r})",
            *imports,
            "print(sorted(m for m in ('trl', 'torch') if m in sys.modules))",
        ]
    )
    done = subprocess.run(
        [str(twin.venv_python(any_twin)), "-c", code],
        env=runtime(tmp_path, project, any_twin),
        cwd=project / "notebooks",
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip().splitlines()[-1] == "[]"


@pytest.mark.slow
@pytest.mark.twin
def test_install_cell_adds_only_what_colab_lacks(any_twin, project, tmp_path):
    """The first notebook's setup cell on a fresh runtime (the others' install the same way:
    test_setup_cells_differ_only_in_what_they_import); on the main twin, a rerun then installs nothing."""
    twin_dir, name = any_twin, NOTEBOOKS[0]
    twin.reset(twin_dir, log=lambda *a: None)  # a fresh Colab runtime: nothing installed by an earlier run
    before = twin.installed(twin_dir)
    env = runtime(tmp_path, project, twin_dir)
    notebook = tagged(name, project, {"parameters", "setup"}, tmp_path / f"setup-{name}")
    done, executed = execute(twin_dir, notebook, tmp_path / f"setup-out-{name}", env, project)
    after = twin.installed(twin_dir)
    d = twin.diff(before, after)
    setup = tagged_cell(executed, "setup") if executed else {}
    seconds = setup.get("metadata", {}).get("papermill", {}).get("duration") if setup else None
    py = json.loads((twin_dir / twin.MARKER).read_text())["python"]
    log(
        f"\n== {name}: install cell on the Colab twin (Python {py}, {twin_dir}), "
        f"{seconds if seconds is None else round(seconds, 1)} s\n"
        f"allowed to add: {sorted(MAY_ADD)}; never to change: {', '.join(NEVER_CHANGE)}\n"
        f"package diff before -> after:\n{twin.format_diff(d)}\n"
        f"the cell's output:\n{cell_text(setup) if setup else done.stderr[-2000:]}"
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert d["changed"] == [] and d["removed"] == [], twin.format_diff(d)
    assert {twin.norm(n) for n, _ in d["added"]} <= {twin.norm(n) for n in MAY_ADD}, twin.format_diff(d)
    for pkg in NEVER_CHANGE:
        key = twin.norm(pkg)
        assert before.get(key) == after.get(key), pkg
    # On a fresh runtime the cell installs the pinned trl and says so, with pip's verdict on it.
    pins = (ROOT / "requirements-colab.txt").read_text()
    assert [(n, v) for n, v in d["added"]] == [("trl", v) for v in [pins.split("trl==")[1].split()[0]]]
    text = cell_text(setup)
    assert "Colab: installed trl (new) -> " in text and "pip check: no conflict" in text, text
    if twin_dir != TWIN_DIR:
        return
    # Run again in the same runtime: the cell says so and installs nothing.
    before = twin.installed(twin_dir)
    done, executed = execute(twin_dir, notebook, tmp_path / "again.ipynb", env, project)
    assert done.returncode == 0, done.stderr[-2000:]
    assert twin.installed(twin_dir) == before
    assert "already set up" in cell_text(tagged_cell(executed, "setup"))
    # A new kernel in a runtime that has the pins (the marker gone): the script itself installs nothing.
    env["PYTHON"] = str(twin.venv_python(twin_dir))
    done = subprocess.run(["bash", str(project / "colab_setup.sh")], env=env, capture_output=True, text=True)
    assert done.returncode == 0 and "already installed: trl==" in done.stdout and "nothing to install" in done.stdout
    assert twin.installed(twin_dir) == before


@pytest.mark.slow
@pytest.mark.twin
def test_pins_that_would_change_colab_are_refused_in_one_report(twin_dir, project, tmp_path):
    """trl 1.x needs datasets>=4.7 (Colab ships 4.0.0): the install refuses rather than upgrade datasets."""
    twin.reset(twin_dir, log=lambda *a: None)
    work = tmp_path / "musclebob"
    shutil.copytree(project, work)
    (work / "requirements-colab.txt").write_text("trl==1.16.0\n")
    env = runtime(tmp_path, work, twin_dir)
    env["PYTHON"] = str(twin.venv_python(twin_dir))
    before = twin.installed(twin_dir)
    done = subprocess.run(["bash", str(work / "colab_setup.sh")], env=env, capture_output=True, text=True)
    log(f"\n== colab_setup.sh asked for trl==1.16.0 on the twin: exit {done.returncode}\n{done.stdout}")
    assert done.returncode == 1
    assert "could not install it without changing what Colab ships" in done.stdout
    assert "datasets" in done.stdout  # the conflict, as pip reported it
    assert twin.installed(twin_dir) == before


@pytest.mark.slow
@pytest.mark.twin
def test_run_all_then_resume_cell_alone_on_the_twin(twin_dir, project, tmp_path, tiny_path):
    """Run all of notebook 01 with a disconnect after step 6, then a new runtime (trl gone, a fresh kernel) runs
    only the resume cell; then Run all of notebooks 02 and 03 on the finished run."""
    twin.reset(twin_dir, log=lambda *a: None)
    drive_root = tmp_path / "drive"  # both runtimes see the same Drive
    first = runtime(tmp_path / "runtime-1", project, twin_dir)
    first["MUSCLEBOB_DRIVE_MOUNTPOINT"] = str(drive_root)
    run_dir = drive_root / "MyDrive" / "twin-run"
    done, executed = execute(
        twin_dir,
        project / "notebooks" / NOTEBOOKS[0],
        tmp_path / "01-cut.ipynb",
        first,
        project,
        run_name="twin-run",
        stop_after_steps=6,
        **SMALL,
    )
    log(f"\n== Run all of {NOTEBOOKS[0]} on the twin, stopped after step 6: exit {done.returncode}")
    assert "SimulatedDisconnect" in done.stderr + done.stdout, done.stderr[-3000:]
    assert history_steps(run_dir) == list(range(1, 7))
    assert not (run_dir / "final_validation.json").exists()
    before = json.loads((run_dir / "reward_history.json").read_text())

    # After the disconnect: a new runtime, Colab's packages only, and only the resume cell.
    undone = twin.reset(twin_dir, log=lambda *a: None)
    assert [n for n, _ in undone["added"]] == ["trl"]
    second = runtime(tmp_path / "runtime-2", project, twin_dir)
    second["MUSCLEBOB_DRIVE_MOUNTPOINT"] = str(drive_root)
    resume_nb = tagged(NOTEBOOKS[0], project, {"resume"}, tmp_path / "resume-only.ipynb")
    done, executed = execute(twin_dir, resume_nb, tmp_path / "resumed.ipynb", second, project)
    log(
        f"== the resume cell alone in a fresh runtime: exit {done.returncode}\n"
        + (cell_text(executed.cells[-1])[-1500:] if executed else "")
        + done.stderr[-1500:] * (done.returncode != 0)
    )
    assert done.returncode == 0, done.stderr[-3000:]
    after = json.loads((run_dir / "reward_history.json").read_text())
    assert [e["step"] for e in after] == list(range(1, 9))  # continued to the end, each step once
    assert after[:4] == before[:4]  # up to the checkpoint (step 4) as it was: continued, not restarted
    assert json.loads((run_dir / "final_validation.json").read_text())["global_step"] == 8

    # The other two notebooks, Run all, in the same runtime (the run is on Drive).
    done, executed = execute(
        twin_dir, project / "notebooks" / NOTEBOOKS[1], tmp_path / "02.ipynb", second, project, window=3
    )
    log(f"== Run all of {NOTEBOOKS[1]} on the twin: exit {done.returncode}")
    assert done.returncode == 0, done.stderr[-3000:]
    done, executed = execute(
        twin_dir,
        project / "notebooks" / NOTEBOOKS[2],
        tmp_path / "03.ipynb",
        second,
        project,
        base_model="tiny",
        run_name="twin-run",
        num_prompts=2,
        samples_per_prompt=1,
        max_new_tokens=24,
    )
    log(f"== Run all of {NOTEBOOKS[2]} on the twin: exit {done.returncode}")
    assert done.returncode == 0, done.stderr[-3000:]
