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
from musclebob_helpers.config import ConfigError, TrainConfig

ROOT = Path(__file__).resolve().parent.parent
NB_DIR = ROOT / "notebooks"
NOTEBOOKS = colab.NOTEBOOKS
# Parameters of the training notebook that are not TrainConfig fields (they choose where and how it runs).
NOTEBOOK_ONLY = {"run_name", "use_drive", "keep_alive", "stop_after_steps"}
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
    drifted.write_text(py.read_text().replace("run_dir = nb.prepare_run_folder(", "run_dir = nb.prepare_run_folder(  ", 1)
                       .replace("seed = 42", "seed = 43"))
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
    assert {"model", "epochs", "learning_rate", "num_samples", "num_generations", "fewshot_ratio",
            "output_dir", "run_name"} <= names


def test_badges_and_clone_step_follow_repo_url(tmp_path):
    assert colab.stale_copies() == [], "run: python -m musclebob_helpers.colab --sync"
    for name in NOTEBOOKS:
        text = (NB_DIR / name).with_suffix(".py").read_text()
        assert colab.badge_markdown(name) in text and f'REPO_URL = "{colab.REPO_URL}"' in text
        assert colab.badge_markdown(name) in (ROOT / "README.md").read_text()
    # Setting another address makes every copy stale, and --sync's rewrite makes them current again.
    fork = "https://github.com/someone/musclebob-fork"
    assert len(colab.stale_copies(url=fork)) == 1 + 2 * len(NOTEBOOKS)
    for path in colab.synced_files():
        synced = colab.sync_text(path.read_text(), fork)
        assert colab.sync_text(synced, fork) == synced and "someone/musclebob-fork" in synced
    assert colab.colab_url(NOTEBOOKS[0], fork).endswith("someone/musclebob-fork/blob/main/notebooks/" + NOTEBOOKS[0])


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
    papermill.execute_notebook(str(src), str(out), parameters=parameters, kernel_name=kernel, cwd=str(NB_DIR),
                               progress_bar=False)
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


def test_training_notebook_runs_all(trained):
    executed, run_dir = trained
    errors = [o for c in executed.cells if c.cell_type == "code" for o in c.outputs if o.output_type == "error"]
    assert errors == []
    # The run folder holds everything: final model, validations, config, a checkpoint per epoch, the history.
    for name in ("config.json", "model.safetensors", "baseline_validation.json", "final_validation.json",
                 "training_config.json"):
        assert (run_dir / name).exists(), name
    assert sorted(p.name for p in run_dir.glob("checkpoint-*")) == ["checkpoint-4", "checkpoint-8"]
    assert history_steps(run_dir) == list(range(1, 9))
    # Live progress: the train cell ends with the progress line at the last step and a reward plot.
    train_out = outputs_of(executed, "nb.train(")
    assert "step 8/8" in text_of(train_out) and pngs(train_out)
    # The results cell shows both plots and saves them in the run folder.
    assert len(pngs(outputs_of(executed, "nb.show_final("))) == 2
    for name in ("reward_plot.png", "validation_plot.png"):
        assert (run_dir / name).read_bytes().startswith(PNG_MAGIC)
    assert "Before vs after training" in text_of(outputs_of(executed, "nb.show_final("))
    assert "<mark" in text_of(outputs_of(executed, "nb.baseline_validation("))  # answers with markers
    assert "Nothing to resume" in text_of(outputs_of(executed, "nb.resume_training("))  # a finished run
    assert "No GPU" in text_of(outputs_of(executed, "nb.show_hardware("))


def test_bad_parameter_stops_with_one_line(kernel, tmp_path):
    import papermill

    with pytest.raises(papermill.PapermillExecutionError) as info:
        execute(kernel, NOTEBOOKS[0], tmp_path / "bad.ipynb", model="tiny", epochs=0, output_dir=str(tmp_path / "r"))
    assert info.value.ename == "NotebookStop" and "--epochs=0" in info.value.evalue
    assert len(info.value.traceback) == 1  # one line, not a traceback wall


def test_missing_trained_model_is_one_line(kernel, tiny_path, tmp_path):
    import papermill

    with pytest.raises(papermill.PapermillExecutionError) as info:
        execute(kernel, NOTEBOOKS[2], tmp_path / "bad.ipynb", base_model="tiny", trained_model=str(tmp_path / "nope"))
    assert info.value.ename == "ConfigError" and info.value.evalue.startswith("trained_model=")
    assert len(info.value.traceback) == 1


def resume_only(tmp_path: Path) -> Path:
    """What a user does after a disconnect: a fresh kernel runs only parameters, setup, Drive and resume."""
    import nbformat

    notebook = nbformat.read(NB_DIR / NOTEBOOKS[0], as_version=4)
    keep = {"parameters", "setup", "drive", "resume"}
    notebook.cells = [c for c in notebook.cells if keep & set(c.metadata.get("tags", []))]
    assert len(notebook.cells) == len(keep)
    path = tmp_path / "resume_only.ipynb"
    nbformat.write(notebook, path)
    return path


def test_resume_cell_continues_a_disconnected_run(kernel, tiny_path, tmp_path):
    import papermill

    run_dir = tmp_path / "cut-run"
    params = dict(run_name="cut-run", output_dir=str(run_dir), **SMALL)
    # Run all, with a disconnect simulated after step 6: the first epoch's checkpoint (step 4) is saved.
    with pytest.raises(papermill.PapermillExecutionError) as info:
        execute(kernel, NOTEBOOKS[0], tmp_path / "cut.ipynb", stop_after_steps=6, **params)
    assert info.value.ename == "SimulatedDisconnect"
    assert history_steps(run_dir) == list(range(1, 7))
    assert [p.name for p in run_dir.glob("checkpoint-*")] == ["checkpoint-4"]
    before = json.loads((run_dir / "reward_history.json").read_text())

    resumed = execute(kernel, resume_only(tmp_path), tmp_path / "resumed.ipynb", **params)
    text = text_of(outputs_of(resumed, "nb.resume_training("))
    assert "Resuming from" in text and "checkpoint-4" in text
    after = json.loads((run_dir / "reward_history.json").read_text())
    assert [e["step"] for e in after] == list(range(1, 9))  # each step once: 5-6 retrained and replaced
    assert after[:4] == before[:4]  # steps up to the checkpoint kept as they were: continued, not restarted
    assert json.loads((run_dir / "final_validation.json").read_text())["global_step"] == 8
    assert pngs(outputs_of(resumed, "nb.resume_training("))  # the live plot, continuing the curve


def test_plot_notebook(kernel, trained, tmp_path):
    _, run_dir = trained
    executed = execute(kernel, NOTEBOOKS[1], tmp_path / "02.ipynb", runs_root=str(run_dir.parent), window=3)
    assert "nb-run  (8 steps)" in text_of(outputs_of(executed, "plots.find_runs("))
    assert pngs(outputs_of(executed, "plots.plot_rewards(")) and pngs(outputs_of(executed, "plot_validation_bars("))
    assert (run_dir.parent / "reward_plots.png").read_bytes().startswith(PNG_MAGIC)
    widget = outputs_of(executed, "RewardExplorer(")
    assert any("application/vnd.jupyter.widget-view+json" in o.get("data", {}) for o in widget)


def test_compare_notebook(kernel, trained, tmp_path):
    _, run_dir = trained
    executed = execute(kernel, NOTEBOOKS[2], tmp_path / "03.ipynb", base_model="tiny", trained_model=str(run_dir),
                       num_prompts=2, samples_per_prompt=1, max_new_tokens=24)
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
    monkeypatch.setattr(colab, "DRIVE_MOUNTPOINT", str(tmp_path / "content" / "drive"))
    monkeypatch.setattr(colab, "LOCAL_RUNS", tmp_path / "local-runs")
    return calls


def test_not_colab_here():
    assert not colab.is_colab()


def test_colab_run_folder_is_on_drive(fake_colab, tmp_path):
    assert colab.is_colab()
    my_drive = tmp_path / "content" / "drive" / "MyDrive"
    run_dir = nb.prepare_run_folder("my-run", "", use_drive=True, log=lambda *a: None)
    assert run_dir == my_drive / "my-run" and run_dir.is_dir()
    assert fake_colab["mount"] == [colab.DRIVE_MOUNTPOINT]
    nb.prepare_run_folder("my-run", "", use_drive=True, log=lambda *a: None)
    assert len(fake_colab["mount"]) == 1  # already mounted: not asked again
    messages = []
    assert nb.prepare_run_folder("my-run", "", use_drive=False, log=messages.append) == tmp_path / "local-runs" / "my-run"
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

    def fake_run_training(cfg, log=print, callbacks=(), baseline=None):
        seen["cfg"], seen["checkpoint"] = cfg, training.find_resume_checkpoint(cfg, log=lambda *a: None)
        return {"global_step": 0}

    from musclebob_helpers import checkpoints
    # The folders above stand in for real checkpoints: count them as intact (tests/test_faults.py checks that part).
    monkeypatch.setattr(checkpoints, "checkpoint_problems", lambda ckpt: [])
    monkeypatch.setattr(training, "run_training", fake_run_training)
    nb.resume_training(run_dir, live=False, log=lambda *a: None)
    assert seen["cfg"].output_dir == str(run_dir) and seen["cfg"].epochs == 3  # the run's own settings
    assert seen["checkpoint"] == str(run_dir / "checkpoint-12")


def test_colab_drive_problems_are_one_line(fake_colab, monkeypatch, tmp_path):
    with pytest.raises(ConfigError, match="Google Drive is not mounted"):
        colab.check_writable(Path(colab.DRIVE_MOUNTPOINT) / "MyDrive" / "run")

    def refuse(mountpoint):
        raise RuntimeError("credential propagation was unsuccessful\nmore detail")

    monkeypatch.setattr(sys.modules["google.colab"].drive, "mount", refuse)
    with pytest.raises(nb.NotebookStop) as info:
        nb.prepare_run_folder("my-run", "", use_drive=True)
    assert "could not be mounted (credential propagation was unsuccessful)" in str(info.value)
    assert "\n" not in str(info.value) and len(info.value._render_traceback_()) == 1


def test_unwritable_run_folder_is_one_line(tmp_path):
    (tmp_path / "a-file").write_text("not a folder")
    with pytest.raises(nb.NotebookStop, match="cannot be written") as info:
        nb.prepare_run_folder("run", str(tmp_path / "a-file" / "run"), log=lambda *a: None)
    assert "\n" not in str(info.value)
    with pytest.raises(nb.NotebookStop, match="--run_name|run_name"):
        nb.prepare_run_folder("../escape", "", log=lambda *a: None)


def test_keep_alive_installs_javascript_on_colab_only(fake_colab):
    status = colab.keep_alive(True, log=lambda *a: None)
    [js] = fake_colab["js"]
    assert "setInterval" in js and "60000" in js and ".click()" in js and "colab-connect-button" in js
    assert f"invokeFunction('{colab.KEEP_ALIVE_CALLBACK}'" in js  # really talks to the kernel through the page
    assert "Best effort" in status and "checkpoints on Drive" in status
    before = colab.keep_alive_pings()
    fake_colab["callbacks"][colab.KEEP_ALIVE_CALLBACK]()  # what the browser's ping does
    assert colab.keep_alive_pings() == before + 1
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
