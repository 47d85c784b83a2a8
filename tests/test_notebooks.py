"""The notebooks: stored clean, in sync with their percent scripts, parameters as plain literals; executed
headless with papermill in a real Jupyter kernel on the tiny model, including a disconnect and the resume cell;
and the Colab-only steps driven through a stand-in ``google.colab`` module."""

import ast
import json
import subprocess
import sys
import types
from pathlib import Path

import pytest

from musclebob_helpers import colab
from musclebob_helpers import notebook as nb
from musclebob_helpers import run_dir as run_folder  # `run_dir` is what these tests call a run's folder
from musclebob_helpers.config import ConfigError, TrainConfig

ROOT = Path(__file__).resolve().parent.parent
NB_DIR = ROOT / "notebooks"
sys.path.insert(0, str(ROOT / "tools"))
import sync_repo_url  # noqa: E402 - tools/sync_repo_url.py, the maintainers' address sync

NOTEBOOKS = sync_repo_url.NOTEBOOKS
# Where setup_project once kept its marker, in the project (still git-ignored); it now lives in the runtime's temp
# folder. An old copy of the project may still hold one: it must not travel, and it changes nothing.
OLD_SETUP_MARKER = ".musclebob_setup_done"
# Parameters of the training notebook that are not TrainConfig fields (they choose where and how it runs).
NOTEBOOK_ONLY = {"run_name", "use_drive", "keep_alive", "stop_after_steps", "repo_url"}
# Shrunk so a run takes seconds: 16 prompts at 4 per step = 4 steps per epoch, 8 in all (a checkpoint at 4);
# one validation answer per prompt is enough to see the artifacts, not to judge learning (test_training does).
SMALL = dict(model="tiny", epochs=2, num_samples=16, batch_size=4, num_generations=4, validation_samples=1)
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


# --- how the notebooks are kept ------------------------------------------------------------------------


def cell_summary(notebook) -> list[tuple]:
    return [(c.cell_type, c.source.strip(), tuple(c.metadata.get("tags", []))) for c in notebook.cells]


def pair_drift(ipynb: Path, py: Path) -> list[str]:
    """Where the .ipynb and its percent script disagree (cell kind, source or tags); [] when in sync."""
    import jupytext
    import nbformat

    a, b = cell_summary(nbformat.read(ipynb, as_version=4)), cell_summary(jupytext.read(py))
    diffs = [f"cell {i}: {x[:2]!r} != {y[:2]!r}" for i, (x, y) in enumerate(zip(a, b)) if x != y]
    if len(a) != len(b):
        diffs.append(f"{len(a)} cells in {ipynb.name}, {len(b)} in {py.name}")
    return diffs


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_pairs_are_in_sync(name):
    ipynb = NB_DIR / name
    meta = json.loads(ipynb.read_text())["metadata"]
    assert meta["jupytext"]["formats"] == "ipynb,py:percent"
    assert pair_drift(ipynb, ipynb.with_suffix(".py")) == [], "run: jupytext --sync notebooks/*.ipynb"


def test_drift_is_detected(tmp_path):
    py = (NB_DIR / NOTEBOOKS[0]).with_suffix(".py")
    drifted = tmp_path / py.name
    drifted.write_text(
        py.read_text()
        .replace("run_dir = nb.prepare_run_folder(", "run_dir = nb.prepare_run_folder(  ", 1)
        .replace("seed = 42", "seed = 43")
    )
    assert pair_drift(NB_DIR / NOTEBOOKS[0], drifted)


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_stored_without_outputs(name):
    cells = json.loads((NB_DIR / name).read_text())["cells"]
    code = [c for c in cells if c["cell_type"] == "code"]
    assert code and all(c["outputs"] == [] and c["execution_count"] is None for c in code)
    assert "widgets" not in json.loads((NB_DIR / name).read_text())["metadata"]


def parameters_cell(name):
    import nbformat

    notebook = nbformat.read(NB_DIR / name, as_version=4)
    tagged = [c for c in notebook.cells if "parameters" in c.metadata.get("tags", [])]
    assert len(tagged) == 1 and tagged[0].cell_type == "code"
    return notebook, tagged[0]


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_parameters_are_plain_literals_that_papermill_reads(name):
    import papermill

    notebook, cell = parameters_cell(name)
    names = []
    for stmt in ast.parse(cell.source).body:
        assert isinstance(stmt, ast.Assign) and len(stmt.targets) == 1 and isinstance(stmt.targets[0], ast.Name)
        ast.literal_eval(stmt.value)  # raises for anything but a plain literal
        names.append(stmt.targets[0].id)
    # papermill infers every one of them (a comment it can't parse would hide a parameter from --help-notebook)
    assert list(papermill.inspect_notebook(str(NB_DIR / name))) == names
    rest = "\n".join(c.source for c in notebook.cells if c.cell_type == "code" and c is not cell)
    assert all(n in rest for n in names)  # every parameter is used


def test_training_parameters_are_config_fields():
    _, cell = parameters_cell(NOTEBOOKS[0])
    names = {stmt.targets[0].id for stmt in ast.parse(cell.source).body}
    fields = set(TrainConfig.__dataclass_fields__)
    assert names - NOTEBOOK_ONLY <= fields
    assert {
        "model",
        "epochs",
        "learning_rate",
        "num_samples",
        "num_generations",
        "fewshot_ratio",
        "output_dir",
        "run_name",
    } <= names


def test_badges_and_repo_url_follow_the_synced_address(tmp_path):
    assert sync_repo_url.stale_copies() == [], "run: python tools/sync_repo_url.py"
    for name in NOTEBOOKS:
        text = (NB_DIR / name).with_suffix(".py").read_text()
        assert sync_repo_url.badge_markdown(name) in text
        assert (
            f'repo_url = "{sync_repo_url.REPO_URL}"' in text
            and f'globals().get("repo_url", "{sync_repo_url.REPO_URL}")' in text
        )
        assert sync_repo_url.badge_markdown(name) in (ROOT / "README.md").read_text()
    # Another address makes every copy stale (REPO_URL's own line too), and the tool's rewrite makes them current.
    fork = "https://github.com/someone/musclebob-fork"
    assert len(sync_repo_url.stale_copies(url=fork)) == 2 + 2 * len(NOTEBOOKS)
    for path in sync_repo_url.synced_files():
        synced = sync_repo_url.sync_text(path.read_text(), fork)
        assert sync_repo_url.sync_text(synced, fork) == synced and "someone/musclebob-fork" in synced
        assert "musclebob/musclebob" not in synced.replace("MyDrive/musclebob/musclebob_helpers", "")
    assert sync_repo_url.colab_url(NOTEBOOKS[0], fork).endswith(
        "someone/musclebob-fork/blob/main/notebooks/" + NOTEBOOKS[0]
    )


@pytest.mark.parametrize(
    "remote",
    [
        "git@github.com:someone/fork.git",
        "https://github.com/someone/fork.git",
        "https://github.com/someone/fork",
        "https://token@github.com/someone/fork/",
        "ssh://git@github.com/someone/fork.git",
    ],
)
def test_github_remotes_become_https_addresses(remote):
    assert sync_repo_url.github_url(remote) == "https://github.com/someone/fork"


@pytest.mark.parametrize(
    "remote",
    [
        "https://gitlab.com/someone/fork.git",
        "git@bitbucket.org:someone/fork.git",
        "/srv/git/fork",
        "https://github.com/someone",
    ],
)
def test_other_remotes_are_refused_in_one_line(remote):
    with pytest.raises(ValueError, match="not a GitHub repository address") as info:
        sync_repo_url.github_url(remote)
    assert "\n" not in str(info.value)


def copy_synced_files(dest: Path) -> Path:
    for path in sync_repo_url.synced_files():
        (dest / path.relative_to(ROOT)).parent.mkdir(parents=True, exist_ok=True)
        (dest / path.relative_to(ROOT)).write_text(path.read_text())
    return dest


@pytest.mark.slow
def test_sync_reads_the_origin_remote(tmp_path, capsys):
    root = copy_synced_files(tmp_path / "fork")
    git = ["git", "-C", str(root)]
    subprocess.run([*git, "init", "-q"], check=True)
    # No origin yet: one line, exit 2, nothing touched.
    assert sync_repo_url.main([], root=root) == 2
    err = capsys.readouterr().err.strip()
    assert "no 'origin' remote" in err and "\n" not in err
    assert sync_repo_url.stale_copies(root) == []
    subprocess.run([*git, "remote", "add", "origin", "git@github.com:someone/fork.git"], check=True)
    assert sync_repo_url.main([], root=root) == 0
    assert "updated tools/sync_repo_url.py" in capsys.readouterr().out
    assert sync_repo_url.stale_copies(root, "https://github.com/someone/fork") == []
    assert 'REPO_URL = "https://github.com/someone/fork"' in (root / "tools/sync_repo_url.py").read_text()
    assert "colab.research.google.com/github/someone/fork/blob/main/notebooks/" in (root / "README.md").read_text()
    # An address given on the command line wins; a non-GitHub one is refused in one line and changes nothing.
    assert sync_repo_url.main(["https://github.com/other/copy.git"], root=root) == 0
    assert sync_repo_url.stale_copies(root, "https://github.com/other/copy") == []
    capsys.readouterr()
    assert sync_repo_url.main(["https://gitlab.com/x/y"], root=root) == 2
    assert len(capsys.readouterr().err.strip().splitlines()) == 1
    assert sync_repo_url.stale_copies(root, "https://github.com/other/copy") == []
    capsys.readouterr()
    assert sync_repo_url.main(["--check"], root=root) == 1  # --check changes nothing: the copies differ from REPO_URL
    assert "stale: README.md" in capsys.readouterr().out
    assert sync_repo_url.stale_copies(root, "https://github.com/other/copy") == []


# --- the bootstrap (the setup cell's first lines, repeated in every notebook and the resume cell) -------

BOOTSTRAP_END = "sys.path.insert(0, str(ROOT))"


def bootstraps() -> dict[str, str]:
    """Every copy of the bootstrap: the lines of each setup cell (and the resume cell) up to ``BOOTSTRAP_END``."""
    import nbformat

    found = {}
    for name in NOTEBOOKS:
        for cell in nbformat.read(NB_DIR / name, as_version=4).cells:
            tags = set(cell.metadata.get("tags", [])) & {"setup", "resume"}
            if cell.cell_type == "code" and tags:
                assert BOOTSTRAP_END in cell.source, f"{name} {tags}: no bootstrap"
                found[f"{name}:{tags.pop()}"] = cell.source[: cell.source.index(BOOTSTRAP_END) + len(BOOTSTRAP_END)]
    return found


def test_bootstrap_is_the_same_everywhere():
    copies = bootstraps()
    assert sorted(copies) == sorted([f"{n}:setup" for n in NOTEBOOKS] + [f"{NOTEBOOKS[0]}:resume"])
    assert len(set(copies.values())) == 1, "the bootstrap differs between notebooks: copy one to the others"
    [code] = set(copies.values())
    assert len(code.splitlines()) <= 21 and f'"{sync_repo_url.REPO_URL}"' in code
    ast.parse(code)


def run_bootstrap(namespace: dict | None = None) -> dict:
    """Execute the bootstrap as a cell would (its globals are the notebook's); ``sys.path`` is put back after."""
    namespace, path = dict(namespace or {}), list(sys.path)
    try:
        exec(next(iter(bootstraps().values())), namespace)  # noqa: S102 - the notebooks' own code
        namespace["path0"] = sys.path[0]
    finally:
        sys.path[:] = path
    return namespace


@pytest.fixture(scope="session")
def project_repo(tmp_path_factory):
    """A git repository holding this working tree as it is now (committed or not): what a clone would fetch."""
    src = tmp_path_factory.mktemp("project") / "musclebob"
    listed = (
        subprocess.run(
            ["git", "-C", str(ROOT), "ls-files", "-co", "--exclude-standard", "-z"], capture_output=True, check=True
        )
        .stdout.decode()
        .split("\0")
    )
    for rel in filter(None, listed):
        if (ROOT / rel).is_file():
            (src / rel).parent.mkdir(parents=True, exist_ok=True)
            (src / rel).write_bytes((ROOT / rel).read_bytes())
    git = ["git", "-C", str(src), "-c", "user.name=t", "-c", "user.email=t@t"]
    subprocess.run([*git, "init", "-q"], check=True)
    subprocess.run([*git, "add", "-A"], check=True)
    subprocess.run([*git, "commit", "-qm", "snapshot"], check=True)
    return src


@pytest.fixture
def elsewhere(monkeypatch, tmp_path):
    """A working directory outside any copy of the project, and MUSCLEBOB_HOME / the Drive mountpoint in tmp."""
    cwd = tmp_path / "content"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    monkeypatch.setenv("MUSCLEBOB_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("MUSCLEBOB_DRIVE_MOUNTPOINT", str(tmp_path / "drive"))
    return tmp_path


def test_bootstrap_finds_the_project_above_the_working_directory(monkeypatch):
    monkeypatch.chdir(NB_DIR)
    assert run_bootstrap()["ROOT"] == ROOT


@pytest.mark.slow
def test_bootstrap_clones_repo_url(elsewhere, project_repo):
    ns = run_bootstrap({"repo_url": f"file://{project_repo}"})
    assert ns["ROOT"] == elsewhere / "home" and (ns["ROOT"] / "musclebob_helpers" / "colab.py").is_file()
    assert ns["path0"] == str(elsewhere / "home")
    assert run_bootstrap()["ROOT"] == elsewhere / "home"  # a rerun (or the resume cell) finds it: no second fetch


@pytest.mark.slow
def test_bootstrap_fetch_failure_is_one_line(elsewhere):
    with pytest.raises(Exception) as info:
        run_bootstrap({"repo_url": f"file://{elsewhere}/no-such-repo"})
    assert type(info.value).__name__ == "SetupStop"
    [line] = info.value._render_traceback_()
    assert "\n" not in line and "git clone file://" in line and "no-such-repo" in line
    assert "set repo_url in the first cell" in line and "MyDrive/musclebob" in line


def drive_holding(monkeypatch, contents: Path, mounts: list):
    """Make the stand-in ``drive.mount`` reveal ``contents`` as ``MyDrive`` (as a real Drive appears on mount)."""

    def mount(mountpoint):
        mounts.append(mountpoint)
        Path(mountpoint).mkdir(parents=True, exist_ok=True)
        contents.rename(Path(mountpoint) / "MyDrive")

    monkeypatch.setattr(sys.modules["google.colab"].drive, "mount", mount)


@pytest.mark.slow  # git processes build the project snapshot
def test_bootstrap_takes_the_project_from_drive_on_colab(elsewhere, fake_colab, project_repo, monkeypatch):
    import shutil

    shutil.copytree(project_repo, elsewhere / "my-drive" / "musclebob")
    (elsewhere / "my-drive" / "musclebob" / OLD_SETUP_MARKER).write_text("ok\n")  # a marker must not travel
    mounts = []
    drive_holding(monkeypatch, elsewhere / "my-drive", mounts)
    ns = run_bootstrap({"repo_url": "https://github.com/nobody/nothing"})  # never cloned: Drive comes first
    home = elsewhere / "home"
    assert ns["ROOT"] == home and (home / "musclebob_helpers" / "colab.py").is_file()
    assert mounts == [str(elsewhere / "drive")]
    assert not (home / ".git").exists() and not (home / OLD_SETUP_MARKER).exists()
    assert run_bootstrap()["ROOT"] == home and mounts == [str(elsewhere / "drive")]  # a rerun: found, not fetched


@pytest.mark.slow
def test_bootstrap_without_drive_clones(elsewhere, fake_colab, project_repo, monkeypatch):
    # use_drive = False: Drive is not even asked for.
    ns = run_bootstrap({"repo_url": f"file://{project_repo}", "use_drive": False})
    assert ns["ROOT"] == elsewhere / "home" and fake_colab["mount"] == []


@pytest.mark.slow
def test_bootstrap_with_drive_refused_clones(elsewhere, fake_colab, project_repo, monkeypatch):
    def refuse(mountpoint):
        raise RuntimeError("credential propagation was unsuccessful")

    monkeypatch.setattr(sys.modules["google.colab"].drive, "mount", refuse)
    assert run_bootstrap({"repo_url": f"file://{project_repo}"})["ROOT"] == elsewhere / "home"


# --- Colab metadata and the no-GPU decision -----------------------------------------------------------------


@pytest.mark.parametrize("name", [NOTEBOOKS[0], NOTEBOOKS[2]])
def test_gpu_notebooks_ask_colab_for_a_t4(name):
    import jupytext

    meta = json.loads((NB_DIR / name).read_text())["metadata"]
    assert meta["accelerator"] == "GPU" and meta["colab"]["gpuType"] == "T4"
    header = jupytext.read(NB_DIR / name.replace(".ipynb", ".py")).metadata  # kept by the pair, so a sync keeps it
    assert header["accelerator"] == "GPU" and header["colab"]["gpuType"] == "T4"


def test_no_gpu_goes_on_with_tiny_and_stops_for_qwen(monkeypatch):
    from musclebob_helpers import training

    monkeypatch.setattr(training, "detect_hardware", lambda: {"device": "cpu", "precision": "fp32"})
    said = []
    assert nb.show_hardware("tiny", log=said.append)["device"] == "cpu"
    assert len(said) == 1 and said[0].startswith("No GPU: going on with model = 'tiny'")
    with pytest.raises(nb.NotebookStop) as info:
        nb.show_hardware("Qwen/Qwen2.5-0.5B-Instruct", log=said.append)
    [line] = info.value._render_traceback_()
    assert "No GPU" in line and "model = 'tiny'" in line and "\n" not in line and len(said) == 1


def test_no_gpu_on_colab_names_the_runtime_menu(fake_colab, monkeypatch):
    from musclebob_helpers import training

    monkeypatch.setattr(training, "detect_hardware", lambda: {"device": "cpu", "precision": "fp32"})
    with pytest.raises(nb.NotebookStop, match="Runtime -> Change runtime type -> T4 GPU"):
        nb.show_hardware("Qwen/Qwen2.5-0.5B-Instruct")


# --- executing them ------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def kernel():
    """A 'python3' Jupyter kernel spec; a fresh machine may lack one, so install it for this interpreter."""
    from jupyter_client.kernelspec import KernelSpecManager, NoSuchKernel

    try:
        KernelSpecManager().get_kernel_spec("python3")
    except NoSuchKernel:
        subprocess.run([sys.executable, "-m", "ipykernel", "install", "--user", "--name", "python3"], check=True)
    return "python3"


def execute(kernel, name, out: Path, **parameters):
    import nbformat
    import papermill

    src = name if isinstance(name, Path) else NB_DIR / name
    papermill.execute_notebook(
        str(src), str(out), parameters=parameters, kernel_name=kernel, cwd=str(NB_DIR), progress_bar=False
    )
    return nbformat.read(out, as_version=4)


def outputs_of(notebook, needle: str) -> list:
    """The outputs of the code cells whose source contains ``needle``."""
    return [o for c in notebook.cells if c.cell_type == "code" and needle in c.source for o in c.outputs]


def text_of(outputs) -> str:
    parts = []
    for o in outputs:
        if o.output_type == "stream":
            parts.append(o.text)
        elif o.output_type in ("display_data", "execute_result"):
            parts.append(o.data.get("text/html", "") + o.data.get("text/plain", ""))
    return "\n".join(parts)


def pngs(outputs) -> list[str]:
    return [o.data["image/png"] for o in outputs if o.output_type == "display_data" and "image/png" in o.data]


def history_steps(run_dir: Path) -> list[int]:
    return [e["step"] for e in json.loads((run_dir / "reward_history.json").read_text())]


@pytest.fixture(scope="module")
def trained(kernel, tiny_path, tmp_path_factory):
    """The training notebook, run all, on the tiny model with small settings."""
    root = tmp_path_factory.mktemp("nb-runs")
    run_dir = root / "nb-run"
    executed = execute(kernel, NOTEBOOKS[0], root / "01.ipynb", run_name="nb-run", output_dir=str(run_dir), **SMALL)
    return executed, run_dir


@pytest.mark.slow
def test_training_notebook_runs_all(trained):
    executed, run_dir = trained
    errors = [o for c in executed.cells if c.cell_type == "code" for o in c.outputs if o.output_type == "error"]
    assert errors == []
    # The run folder holds everything: final model, validations, config, a checkpoint per epoch, the history.
    for name in (
        "config.json",
        "model.safetensors",
        "baseline_validation.json",
        "final_validation.json",
        "training_config.json",
    ):
        assert (run_dir / name).exists(), name
    assert sorted(p.name for p in run_dir.glob("checkpoint-*")) == ["checkpoint-4", "checkpoint-8"]
    assert history_steps(run_dir) == list(range(1, 9))
    # Live progress: the train cell ends with the progress line at the last step and a reward plot.
    train_out = outputs_of(executed, "nb.train(")
    assert "step 8/8" in text_of(train_out) and pngs(train_out)
    # ...and it is the one progress display: no per-step lines, no transformers table, no warning of ours.
    assert "step 1/8  epoch" not in text_of(train_out) and "Training Loss" not in text_of(train_out)
    assert "FutureWarning" not in text_of(train_out)
    # The results cell shows the run report, the reward_plot.png the run wrote (as the command line's).
    (report,) = pngs(outputs_of(executed, "nb.show_final("))
    assert (run_dir / "reward_plot.png").read_bytes().startswith(PNG_MAGIC)
    assert "Before vs after training" in text_of(outputs_of(executed, "nb.show_final("))
    assert "<mark" in text_of(outputs_of(executed, "nb.baseline_validation("))  # answers with markers
    resume_text = text_of(outputs_of(executed, "nb.resume("))  # Run all ends with the resume cell: nothing to do
    assert "run named in the parameters cell" in resume_text and "Nothing to resume" in resume_text
    assert "No GPU" in text_of(outputs_of(executed, "nb.show_hardware("))
    # The download cell: off Colab, the zip's path (share.download_zip; its contents are tested in test_share)
    assert f"{run_dir.name}.zip" in text_of(outputs_of(executed, "share.download_zip("))


@pytest.mark.slow  # a kernel: the one line as a notebook shows it
def test_bad_parameter_stops_with_one_line(kernel, tmp_path):
    import papermill

    with pytest.raises(papermill.PapermillExecutionError) as info:
        execute(kernel, NOTEBOOKS[0], tmp_path / "bad.ipynb", model="tiny", epochs=0, output_dir=str(tmp_path / "r"))
    assert info.value.ename == "ConfigError" and "--epochs=0" in info.value.evalue
    assert len(info.value.traceback) == 1  # one line, not a traceback wall


@pytest.mark.slow  # a kernel
def test_missing_trained_model_is_one_line(kernel, tiny_path, tmp_path):
    import papermill

    with pytest.raises(papermill.PapermillExecutionError) as info:
        execute(kernel, NOTEBOOKS[2], tmp_path / "bad.ipynb", base_model="tiny", trained_model=str(tmp_path / "nope"))
    assert info.value.ename == "ConfigError" and info.value.evalue.startswith("trained_model=")
    assert len(info.value.traceback) == 1


def only_cell(tag: str, dest: Path) -> Path:
    """The training notebook cut down to its one cell tagged ``tag``: what a user runs after a disconnect."""
    import nbformat

    notebook = nbformat.read(NB_DIR / NOTEBOOKS[0], as_version=4)
    notebook.cells = [c for c in notebook.cells if tag in c.metadata.get("tags", [])]
    assert len(notebook.cells) == 1
    nbformat.write(notebook, dest)
    return dest


def rewards_by_step(run_dir: Path) -> list[tuple]:
    history = json.loads((run_dir / "reward_history.json").read_text())
    return [(e["step"], e["mean_reward"], e["reward_std"]) for e in history]


def standin_colab(mp: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """Kernels started from here import the stand-in ``google.colab``; Drive is a folder in tmp (its MyDrive)."""
    import os

    standin = str(ROOT / "tests" / "colab_standin")
    mp.setenv("PYTHONPATH", os.pathsep.join(filter(None, [standin, os.environ.get("PYTHONPATH")])))
    mp.setenv("MUSCLEBOB_DRIVE_MOUNTPOINT", str(tmp_path / "drive"))
    return tmp_path / "drive" / "MyDrive"


@pytest.mark.slow
def test_the_resume_cell_alone_continues_a_disconnected_run(
    kernel, tiny_path, trained, project_repo, tmp_path, request
):
    """Run all on Colab (the stand-in) stops after step 6 (as a disconnect would); a fresh kernel runs only the resume
    cell; the run ends exactly as an uninterrupted one (same steps, same rewards: resume is exact). The same cut
    run, copied to this machine's runs folder, resumes there too, off Colab: one cut run serves both places (each
    costs a kernel, the setup, a baseline and six steps; the off-Colab Run all is test_training_notebook_runs_all)."""
    import shutil

    import nbformat
    import papermill

    # The install itself is the Colab twin's test (tests/test_colab_twin.py); off Colab the marker changes nothing.
    (project_repo / OLD_SETUP_MARKER).write_text("ok\n")
    request.addfinalizer(lambda: (project_repo / OLD_SETUP_MARKER).unlink(missing_ok=True))
    nb_dir = project_repo / "notebooks"

    def resume(runs: Path, out: str) -> str:
        """The kernel is gone (papermill shut it down); a new one runs the resume cell and nothing else."""
        papermill.execute_notebook(
            str(only_cell("resume", tmp_path / "resume.ipynb")),
            str(tmp_path / out),
            kernel_name=kernel,
            cwd=str(nb_dir),
            progress_bar=False,
        )
        resumed = nbformat.read(tmp_path / out, as_version=4)
        text = text_of(outputs_of(resumed, "nb.resume("))
        run_dir = runs / "cut-run"
        assert f"resuming the most recent unfinished run under {runs}: {run_dir.name}" in text
        assert "Resuming from" in text and "checkpoint-4" in text
        assert rewards_by_step(run_dir) == rewards_by_step(trained[1])  # as if the disconnect never happened
        assert json.loads((run_dir / "final_validation.json").read_text())["global_step"] == 8
        assert pngs(outputs_of(resumed, "nb.resume("))  # the live plot, continuing the curve
        return text

    with pytest.MonkeyPatch.context() as mp:
        drive = standin_colab(mp, tmp_path)
        run_dir = drive / "cut-run"
        with pytest.raises(papermill.PapermillExecutionError) as info:
            papermill.execute_notebook(
                str(nb_dir / NOTEBOOKS[0]),
                str(tmp_path / "cut.ipynb"),
                kernel_name=kernel,
                cwd=str(nb_dir),
                progress_bar=False,
                parameters=dict(run_name=run_dir.name, stop_after_steps=6, **SMALL),
            )
        assert info.value.ename == "SimulatedDisconnect"
        assert history_steps(run_dir) == list(range(1, 7))
        assert [p.name for p in run_dir.glob("checkpoint-*")] == ["checkpoint-4"]
        shutil.copytree(run_dir, project_repo / "runs" / run_dir.name)  # the same cut run, on this machine
        assert "Google Drive mounted" in resume(drive, "resumed-on-drive.ipynb")
    resume(project_repo / "runs", "resumed-here.ipynb")


@pytest.mark.slow  # a kernel
def test_the_interrupt_button_stops_training_in_one_line_and_the_kernel_trains_on(kernel, tiny_path, tmp_path, trained):
    """Colab's "Interrupt execution" is the kernel manager's interrupt: SIGINT to the kernel, whose main thread
    runs the cell. The step in progress finishes and is saved, the cell stops with one line, and the same kernel
    resumes the run to the end the uninterrupted Run all reached (same rewards, completions and weights);
    afterwards an interrupt is the kernel's own KeyboardInterrupt again (its handler is back)."""
    import os

    from jupyter_client.manager import start_new_kernel

    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    km, kc = start_new_kernel(kernel_name=kernel, cwd=str(NB_DIR), env=env)

    def run(code: str, interrupt_after: str | None = None) -> tuple[dict, str]:
        """Execute ``code``; interrupt the kernel once its output shows ``interrupt_after``. (reply, output)"""
        msg_id, output = kc.execute(code), []
        while True:
            msg = kc.get_iopub_msg(timeout=600)
            if msg["parent_header"].get("msg_id") != msg_id:
                continue
            if msg["msg_type"] == "stream":
                output.append(msg["content"]["text"])
                if interrupt_after and interrupt_after in msg["content"]["text"]:
                    km.interrupt_kernel()
                    interrupt_after = None
            if msg["msg_type"] == "status" and msg["content"]["execution_state"] == "idle":
                # This request's reply: the shell channel may still hold an earlier one (start_new_kernel's
                # kernel_info_reply, depending on timing), which would put every reply one request behind.
                reply = kc.get_shell_msg(timeout=60)
                while reply["parent_header"].get("msg_id") != msg_id:
                    reply = kc.get_shell_msg(timeout=60)
                return reply["content"], "".join(output)

    run_dir = tmp_path / "run"
    try:
        reply, _ = run(
            f"import sys; sys.path.insert(0, {str(ROOT)!r})\n"
            "from musclebob_helpers import notebook as nb\n"
            f"cfg = nb.make_config(output_dir={str(run_dir)!r}, **{SMALL!r})"
        )
        assert reply["status"] == "ok", reply
        # The interrupt must land while training runs, wherever the machine's load puts the kernel's output: after
        # step 2 is logged the run waits (a stand-in for the notebook's live display, from outside the product)
        # until the kernel's SIGINT handler has run, so the stop comes at the end of step 3.
        reply, _ = run(
            "import threading, time\n"
            "from transformers import TrainerCallback\n"
            "from musclebob_helpers import plots, training\n"
            "got = threading.Event()\n"
            "handle = training.GracefulStop._handle\n"
            "def noting(self, signum, frame):\n"
            "    got.set()\n"
            "    return handle(self, signum, frame)\n"
            "training.GracefulStop._handle = noting\n"
            "class WaitAtStep2(TrainerCallback):\n"
            "    def on_log(self, args, state, control, logs=None, **kwargs):\n"
            "        if state.global_step == 2 and logs and 'reward' in logs:\n"
            "            print('waiting for the interrupt', flush=True)\n"
            "            got.wait(120)\n"
            "plots.live_progress = lambda *a, **k: WaitAtStep2()"
        )
        assert reply["status"] == "ok", reply
        reply, printed = run("nb.train(cfg)", interrupt_after="waiting for the interrupt")
        assert (reply["status"], reply["ename"]) == ("error", "NotebookStop"), printed[-3000:]
        assert reply["evalue"] == "stopped at step 3 of 8; checkpoint-3 saved; resume with: run the resume cell"
        assert len(reply["traceback"]) == 1  # one line, not a traceback wall
        assert history_steps(run_dir) == [1, 2, 3] and (run_dir / "checkpoint-3").is_dir()
        reply, printed = run(f"nb._resume_training({str(run_dir)!r}, live=False)")
        assert reply["status"] == "ok" and "Resuming from" in printed and "checkpoint-3" in printed
        assert history_steps(run_dir) == list(range(1, 9))
        # Stopped and resumed, it ends as the uninterrupted run of the same settings.
        from safetensors.torch import load_file

        from musclebob_helpers.plots import load_completions

        assert rewards_by_step(run_dir) == rewards_by_step(trained[1])
        assert load_completions(run_dir) == load_completions(trained[1])
        mine, theirs = load_file(run_dir / "model.safetensors"), load_file(trained[1] / "model.safetensors")
        assert mine.keys() == theirs.keys() and all(mine[k].equal(theirs[k]) for k in mine)
        reply, _ = run("import time; print('sleeping', flush=True); time.sleep(600)", interrupt_after="sleeping")
        assert reply["ename"] == "KeyboardInterrupt"
    finally:
        kc.stop_channels()
        km.shutdown_kernel(now=True)


@pytest.mark.slow
def test_setup_cell_clones_in_a_kernel_and_a_bad_address_is_one_line(kernel, project_repo, tmp_path, monkeypatch):
    """Run all from a kernel outside any copy of the project: the setup cell clones repo_url into MUSCLEBOB_HOME;
    with an address that does not exist it stops with one line (no CalledProcessError traceback)."""
    import nbformat
    import papermill

    notebook = nbformat.read(NB_DIR / NOTEBOOKS[1], as_version=4)
    notebook.cells = [c for c in notebook.cells if {"parameters", "setup"} & set(c.metadata.get("tags", []))]
    nbformat.write(notebook, tmp_path / "setup.ipynb")
    (tmp_path / "content").mkdir()
    monkeypatch.setenv("MUSCLEBOB_HOME", str(tmp_path / "home"))

    def run(url, out):
        papermill.execute_notebook(
            str(tmp_path / "setup.ipynb"),
            str(tmp_path / out),
            kernel_name=kernel,
            cwd=str(tmp_path / "content"),
            progress_bar=False,
            parameters={"repo_url": url},
        )
        return nbformat.read(tmp_path / out, as_version=4)

    with pytest.raises(papermill.PapermillExecutionError) as info:
        run("file:///nonexistent/musclebob", "bad.ipynb")
    assert info.value.ename == "SetupStop" and len(info.value.traceback) == 1
    assert "git clone file:///nonexistent/musclebob failed" in info.value.evalue and "repo_url" in info.value.evalue
    cloned = run(f"file://{project_repo}", "ok.ipynb")
    assert (tmp_path / "home" / "musclebob_helpers").is_dir()
    assert "Not on Colab" in text_of(outputs_of(cloned, "setup_project("))


@pytest.mark.slow
def test_plot_notebook(kernel, trained, tmp_path):
    _, run_dir = trained
    executed = execute(kernel, NOTEBOOKS[1], tmp_path / "02.ipynb", runs_root=str(run_dir.parent), window=3)
    assert "nb-run  (8 steps)" in text_of(outputs_of(executed, "plots.find_runs("))
    assert pngs(outputs_of(executed, "plots.plot_rewards(")) and pngs(outputs_of(executed, "plot_validation_bars("))
    assert (run_dir.parent / "reward_plots.png").read_bytes().startswith(PNG_MAGIC)
    widget = outputs_of(executed, "RewardExplorer(")
    assert any("application/vnd.jupyter.widget-view+json" in o.get("data", {}) for o in widget)
    # The completion browser, on the completions.jsonl the training notebook's run wrote: it starts at the newest
    # step and its Output (the saved widget state, what a frontend renders) holds that step's completions.
    browser = outputs_of(executed, "CompletionBrowser(")
    assert any("application/vnd.jupyter.widget-view+json" in o.get("data", {}) for o in browser)
    state = executed.metadata.widgets["application/vnd.jupyter.widget-state+json"]["state"]
    shown = [o for m in state.values() if m["model_name"] == "OutputModel" for o in m["state"].get("outputs", [])]
    pages = [o["data"]["text/html"] for o in shown if "text/html" in o["data"]]
    assert len(pages) == 1 and "<b>nb-run</b> · step 8 · epoch 2.00" in pages[0]
    assert pages[0].count("class='completion'") >= 1 and "total " in pages[0]


@pytest.mark.slow
def test_compare_notebook(kernel, trained, tmp_path):
    _, run_dir = trained
    executed = execute(
        kernel,
        NOTEBOOKS[2],
        tmp_path / "03.ipynb",
        base_model="tiny",
        trained_model=str(run_dir),
        num_prompts=2,
        samples_per_prompt=1,
        max_new_tokens=24,
    )
    side = text_of(outputs_of(executed, "compare.show_answers("))
    assert "<b>base</b>" in side and "<b>trained</b>" in side
    assert "<mark class='bad'" in side  # the tiny base model says Spongebob: highlighted
    batch = text_of(outputs_of(executed, "compare.show_batch("))
    assert "Musclebob" in batch and "Control acc." in batch and batch.count("<tr>") > 6


# --- the Colab branch, through a stand-in google.colab -------------------------------------------------


@pytest.fixture
def fake_colab(monkeypatch, tmp_path):
    """A stand-in ``google.colab``: ``drive.mount`` makes ``<mountpoint>/MyDrive``; ``output`` records the JS."""
    import importlib.machinery

    import transformers.trainer  # noqa: F401 - libraries that probe for Colab at import time see the real machine

    calls = {"mount": [], "js": [], "callbacks": {}}

    def mount(mountpoint):
        calls["mount"].append(mountpoint)
        (Path(mountpoint) / "MyDrive").mkdir(parents=True, exist_ok=True)

    def eval_js(js):
        calls["js"].append(js)
        return "keep-alive installed: every 60 s"

    google = types.ModuleType("google")
    fake = types.ModuleType("google.colab")
    fake.__spec__ = importlib.machinery.ModuleSpec("google.colab", None)  # find_spec() probes need one
    fake.drive = types.SimpleNamespace(mount=mount)
    fake.output = types.SimpleNamespace(eval_js=eval_js, register_callback=calls["callbacks"].__setitem__)
    google.colab = fake
    monkeypatch.setitem(sys.modules, "google", google)
    monkeypatch.setitem(sys.modules, "google.colab", fake)
    monkeypatch.setattr(run_folder, "DRIVE_MOUNT", tmp_path / "content" / "drive")
    monkeypatch.setattr(colab, "LOCAL_RUNS", tmp_path / "local-runs")
    return calls


def test_not_colab_here():
    assert not colab.is_colab()


def test_colab_run_folder_is_on_drive(fake_colab, tmp_path):
    assert colab.is_colab()
    my_drive = tmp_path / "content" / "drive" / "MyDrive"
    run_dir = nb.prepare_run_folder("my-run", "", use_drive=True, log=lambda *a: None)
    assert run_dir == my_drive / "my-run" and run_dir.is_dir()
    assert fake_colab["mount"] == [str(run_folder.DRIVE_MOUNT)]
    nb.prepare_run_folder("my-run", "", use_drive=True, log=lambda *a: None)
    assert len(fake_colab["mount"]) == 1  # already mounted: not asked again
    messages = []
    assert (
        nb.prepare_run_folder("my-run", "", use_drive=False, log=messages.append) == tmp_path / "local-runs" / "my-run"
    )
    assert any("LOST on a disconnect" in m for m in messages)
    assert colab.runs_root() == my_drive and colab.runs_root("/elsewhere") == Path("/elsewhere")


def test_colab_resume_continues_from_the_newest_checkpoint_on_drive(fake_colab, monkeypatch):
    from musclebob_helpers import training
    from musclebob_helpers.io import write_json_atomic

    run_dir = nb.prepare_run_folder("my-run", "", use_drive=True, log=lambda *a: None)
    saved = TrainConfig(model="tiny", epochs=3, output_dir="/content/drive/MyDrive/my-run")
    write_json_atomic(run_dir / "training_config.json", {"config": saved.to_dict()})
    for step in (4, 12, 8):
        (run_dir / f"checkpoint-{step}").mkdir()
    seen = {}

    def fake_run_training(run, log=print, callbacks=(), baseline=None, remount=None):
        cfg, folder = run.cfg, run.folder
        seen["cfg"], seen["checkpoint"] = cfg, run_folder._find_resume_checkpoint(folder, cfg, log=lambda *a: None)
        seen["mirrored"], seen["remount"] = folder.mirrored, remount
        return {"global_step": 0}

    # The folders above stand in for real checkpoints: count them as intact (tests/test_faults.py checks that part).
    monkeypatch.setattr(run_folder, "checkpoint_problems", lambda ckpt: [])
    monkeypatch.setattr(training, "run_training", fake_run_training)
    nb._resume_training(run_dir, live=False, log=lambda *a: None)
    assert seen["cfg"].output_dir == str(run_dir) and seen["cfg"].epochs == 3  # the run's own settings
    assert seen["checkpoint"] == str(run_dir / "checkpoint-12")
    assert seen["mirrored"] and seen["remount"] is colab.remount_drive  # Drive: trained locally, mirrored there


def make_run(run_dir: Path, state: str, age: float) -> Path:
    """A run folder in ``state`` ('unfinished', 'started' or 'finished'), last active ``age`` seconds ago."""
    import os
    import time

    from musclebob_helpers.io import write_json_atomic

    run_dir.mkdir(parents=True)
    write_json_atomic(run_dir / "training_config.json", {"config": TrainConfig(model="tiny").to_dict()})
    if state == "unfinished":
        (run_dir / "checkpoint-4").mkdir()
    if state == "finished":
        for name in ("config.json", "model.safetensors", "final_validation.json"):
            (run_dir / name).write_text("{}")
    for p in [run_dir, *run_dir.iterdir()]:
        os.utime(p, (time.time() - age, time.time() - age))
    return run_dir


def test_resume_cell_picks_the_most_recent_unfinished_run_on_drive(fake_colab, tmp_path, monkeypatch):
    contents = tmp_path / "my-drive"
    make_run(contents / "old-run", "unfinished", age=3600)
    make_run(contents / "new-run", "started", age=60)
    make_run(contents / "done-run", "finished", age=1)
    (contents / "musclebob" / "musclebob_helpers").mkdir(parents=True)  # the project copy: not a run
    mounts, my_drive = [], run_folder.DRIVE_MOUNT / "MyDrive"
    drive_holding(monkeypatch, contents, mounts)
    said = []
    assert nb._find_run(None, log=said.append) == my_drive / "new-run"
    assert mounts == [str(run_folder.DRIVE_MOUNT)]  # a fresh runtime: the resume cell mounts Drive itself
    assert f"resuming the most recent unfinished run under {my_drive}: new-run; 1 other" in said[-1]
    assert nb._find_run("old-run", log=said.append) == my_drive / "old-run"  # the parameters cell ran: its run_name
    assert "run named in the parameters cell" in said[-1]
    assert nb._find_run(None, "/elsewhere/run", log=said.append) == Path("/elsewhere/run")


def test_resume_cell_with_nothing_to_resume_says_so(tmp_path, monkeypatch):
    monkeypatch.setattr(colab, "LOCAL_RUNS", tmp_path / "runs")
    make_run(tmp_path / "runs" / "done-run", "finished", age=1)
    said = []
    assert nb.resume(None, log=said.append) is None
    assert said == [
        f"Nothing to resume: no unfinished run under {tmp_path / 'runs'}. If the run is elsewhere, set "
        "run_name (and output_dir) in the first cell, run it, then this cell."
    ]


def test_colab_drive_problems_are_one_line(fake_colab, monkeypatch, tmp_path):
    with pytest.raises(ConfigError, match="Google Drive is not mounted"):
        colab.check_writable(run_folder.DRIVE_MOUNT / "MyDrive" / "run")

    def refuse(mountpoint):
        raise RuntimeError("credential propagation was unsuccessful\nmore detail")

    monkeypatch.setattr(sys.modules["google.colab"].drive, "mount", refuse)
    with pytest.raises(ConfigError) as info:
        nb.prepare_run_folder("my-run", "", use_drive=True)
    assert "could not be mounted (credential propagation was unsuccessful)" in str(info.value)
    assert "\n" not in str(info.value) and len(info.value._render_traceback_()) == 1


def test_unwritable_run_folder_is_one_line(tmp_path):
    (tmp_path / "a-file").write_text("not a folder")
    with pytest.raises(ConfigError, match="cannot be written") as info:
        nb.prepare_run_folder("run", str(tmp_path / "a-file" / "run"), log=lambda *a: None)
    assert "\n" not in str(info.value)
    with pytest.raises(ConfigError, match="--run_name|run_name"):
        nb.prepare_run_folder("../escape", "", log=lambda *a: None)


def test_keep_alive_installs_javascript_on_colab_only(fake_colab):
    status = colab.keep_alive(True, log=lambda *a: None)
    [js] = fake_colab["js"]
    assert "setInterval" in js and "60000" in js and ".click()" in js and "colab-connect-button" in js
    assert f"invokeFunction('{colab._KEEP_ALIVE_CALLBACK}'" in js  # really talks to the kernel through the page
    assert "Best effort" in status and "checkpoints on Drive" in status
    before = colab._keep_alive_pings()
    fake_colab["callbacks"][colab._KEEP_ALIVE_CALLBACK]()  # what the browser's ping does
    assert colab._keep_alive_pings() == before + 1
    assert "off" in colab.keep_alive(False, log=lambda *a: None) and len(fake_colab["js"]) == 1


def test_keep_alive_off_colab_does_nothing():
    assert "Not on Colab" in colab.keep_alive(True, log=lambda *a: None)


def test_setup_runs_colab_setup_once_on_colab_only(fake_colab, monkeypatch, tmp_path):
    calls = []

    def fake_run(cmd, **kwargs):
        calls.append(cmd)
        return subprocess.CompletedProcess(cmd, 0, stdout="Musclebob is ready\n", stderr="")

    monkeypatch.setattr(colab.subprocess, "run", fake_run)
    colab.setup_project(tmp_path, log=lambda *a: None)
    colab.setup_project(tmp_path, log=lambda *a: None)  # a rerun in the same runtime installs nothing
    assert calls == [["bash", str(tmp_path / "colab_setup.sh")]]
    monkeypatch.delitem(sys.modules, "google.colab")
    monkeypatch.setitem(sys.modules, "google", types.ModuleType("google"))
    calls.clear()
    colab.setup_project(tmp_path / "elsewhere", log=lambda *a: None)
    assert calls == []
