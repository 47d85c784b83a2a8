"""The widgets of notebooks 02 and 03 seen in a browser: headless Chromium drives (a) the classic notebook 6.5.7
with ipywidgets 7.7.1 and widgetsnbextension 3.6.10 (the ipywidgets 7 protocol, Colab's kind of frontend) and
(b) JupyterLab 4 with ipywidgets 8. Each notebook is Run all on a finished tiny run, then a person's moves:
the smoothing slider, the std-band and epoch-boundary checkboxes, the completion browser's step slider and
prompt-kind buttons, a question in the comparison box. The output must change, and the browser console must
log no widget error. Screenshots before and after go to
``test-artifacts/browser/`` and are kept.

Environments: ``python tools/browser_frontends.py build --dir DIR`` (``MUSCLEBOB_BROWSER_ENVS=DIR``).
"""

from __future__ import annotations

import json
import secrets
import socket
import subprocess
import time
import urllib.request
from contextlib import contextmanager
from pathlib import Path

import nbformat
import pytest

from tests.browser.envs import env_or_skip, isolated_jupyter_env

ROOT = Path(__file__).resolve().parent.parent
ARTIFACTS = ROOT / "test-artifacts" / "browser"
WORK = ARTIFACTS / "work"  # inside the repository, so the notebooks' setup cell finds the project above them
DRIVER = ROOT / "tests" / "browser" / "drive.py"
FRONTENDS = {
    "classic": "classic notebook 6.5.7 + ipywidgets 7.7.1 + widgetsnbextension 3.6.6",
    "lab": "JupyterLab 4 + ipywidgets 8.1.9",
    # Colab's own pair: its Output cannot render in the classic notebook (tools/browser_frontends.py)
    "classic-wnb3610": "classic notebook 6.5.7 + ipywidgets 7.7.1 + widgetsnbextension 3.6.10",
}
BROKEN_OUTPUT = "classic-wnb3610"
SMALL_RUN = [
    "--model",
    "tiny",
    "--epochs",
    "2",  # two epochs: an epoch boundary to toggle
    "--num-samples",
    "16",
    "--batch-size",
    "4",
    "--num-generations",
    "4",
    "--validation-samples",
    "1",
]

pytestmark = [pytest.mark.slow, pytest.mark.browser]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def jupyter_server(kind: str, env: Path, home: Path):
    """A Jupyter server of ``kind`` on 127.0.0.1 with a token, no browser, serving the repository."""
    port, token = free_port(), secrets.token_hex(16)
    common = ["--no-browser", "--ip=127.0.0.1", f"--port={port}", "--allow-root"]  # CI runs as root
    if kind.startswith("classic"):
        cmd = [
            str(env / "bin" / "jupyter"),
            "notebook",
            *common,
            f"--NotebookApp.token={token}",
            f"--notebook-dir={ROOT}",
        ]
    else:
        cmd = [
            str(env / "bin" / "jupyter"),
            "lab",
            *common,
            f"--ServerApp.token={token}",
            f"--ServerApp.root_dir={ROOT}",
            "--LabApp.expose_app_in_browser=True",
            "--LabApp.news_url=",
            "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
        ]
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    with open(ARTIFACTS / f"{kind}-server.log", "w") as log:
        proc = subprocess.Popen(
            cmd, cwd=ROOT, env=isolated_jupyter_env(env, home), stdout=log, stderr=subprocess.STDOUT
        )
        url = f"http://127.0.0.1:{port}"
        try:
            for _ in range(120):
                if proc.poll() is not None:
                    pytest.fail(f"{kind} server exited ({proc.returncode}); see {log.name}")
                try:
                    urllib.request.urlopen(f"{url}/api/status?token={token}", timeout=2)
                    break
                except OSError:
                    time.sleep(1)
            yield url, token
        finally:
            proc.terminate()
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()


@pytest.fixture(scope="module")
def finished_run(tiny_path, tmp_path_factory):
    """One small finished training run (a model, its reward history and validations), made by the CLI in-process:
    the widgets are under test here, not the script (tests/test_cli.py)."""
    import train_musclebob_improved

    out = tmp_path_factory.mktemp("browser-runs") / "browser-run"
    assert train_musclebob_improved.main([*SMALL_RUN, "--output-dir", str(out)]) == 0
    return out


def prepared(name: str, params: dict) -> str:
    """The notebook with papermill-style injected parameters, written under WORK; its path from the root."""
    from papermill.iorw import load_notebook_node
    from papermill.parameterize import parameterize_notebook

    nb = parameterize_notebook(load_notebook_node(str(ROOT / "notebooks" / name)), params)
    WORK.mkdir(parents=True, exist_ok=True)
    nbformat.write(nb, WORK / name)
    return str((WORK / name).relative_to(ROOT))


def plain_widgets_notebook() -> str:
    """Plain ipywidgets, no project code: controls and an Output that captures print and display."""
    nb = nbformat.v4.new_notebook(
        metadata={"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"}}
    )
    nb.cells = [
        nbformat.v4.new_code_cell(
            "import ipywidgets as w\nfrom IPython.display import HTML, display\n"
            "out = w.Output()\ndisplay(w.VBox([w.IntSlider(description='plain'), "
            "w.Checkbox(description='plain box'), out]))"
        ),
        nbformat.v4.new_code_cell(
            "with out:\n    print('hello from Output', w.__version__)\n"
            "    display(HTML('<table><tr><td>a cell</td></tr></table>'))"
        ),
    ]
    WORK.mkdir(parents=True, exist_ok=True)
    nbformat.write(nb, WORK / "plain_widgets.ipynb")
    return str((WORK / "plain_widgets.ipynb").relative_to(ROOT))


@pytest.fixture(scope="module", params=list(FRONTENDS))
def frontend(request, tmp_path_factory):
    """One frontend's server at a time (two cores: one server and one Chromium)."""
    kind = request.param
    env, driver = env_or_skip(kind), env_or_skip("driver")
    if not Path("/usr/bin/chromium").exists():
        pytest.skip("no /usr/bin/chromium (run: tools/browser_frontends.py build)")
    with jupyter_server(kind, env, tmp_path_factory.mktemp(f"jupyter-{kind}")) as (url, token):
        yield kind, url, token, driver


def drive(frontend, path: str, scenario: str, name: str) -> dict:
    kind, url, token, driver = frontend
    done = subprocess.run(
        [
            str(driver / "bin" / "python"),
            str(DRIVER),
            "--frontend",
            "classic" if kind.startswith("classic") else kind,
            "--url",
            url,
            "--token",
            token,
            "--path",
            path,
            "--scenario",
            scenario,
            "--shots",
            str(ARTIFACTS),
            "--name",
            f"{kind}-{name}",
        ],
        check=False,
        capture_output=True,
        text=True,
        timeout=1200,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    (ARTIFACTS / f"{kind}-{name}.json").write_text(json.dumps(result, indent=1))
    return result


def skip_broken(frontend):
    if frontend[0] == BROKEN_OUTPUT:
        pytest.skip("widgetsnbextension 3.6.10 cannot render an Output widget (test_plain_output_widget_renders)")


def test_plain_output_widget_renders(frontend):
    """An Output widget renders captured print and display, next to a slider and a checkbox (the
    ``_deserialize_state is not a function`` seen before is widgetsnbextension 3.6.10's bundle: the
    classic-wnb3610 frontend shows it, see tools/browser_frontends.py)."""
    result = drive(frontend, plain_widgets_notebook(), "plain", "plain")
    if frontend[0] == BROKEN_OUTPUT:  # widgetsnbextension 3.6.10: the Output model cannot be created
        assert any("_deserialize_state is not a function" in e for e in result["widget_errors"]), result
        assert "hello from Output" not in result.get("output_text", "")
        return
    assert "failure" not in result, result
    assert "hello from Output" in result["output_text"] and "a cell" in result["output_text"]
    assert result["sliders"] == 1 and result["checkboxes"] == 1
    assert result["widget_errors"] == [], result["widget_errors"]


def test_reward_plots_widgets(frontend, finished_run):
    skip_broken(frontend)
    path = prepared("02_reward_plots.ipynb", {"runs_root": str(finished_run.parent)})
    result = drive(frontend, path, "plots", "02")
    assert "failure" not in result, result
    assert result["output_errors"] == []
    assert result["changed"] == {"slider": True, "std_band": True, "epoch_boundaries": True}, result
    assert result["slider_readout"] == "3"
    # The completion browser: it opens at the newest step; the step slider and the prompt-kind filter redraw it.
    assert result["completions"] == {"newest_first": "step 8", "step": True, "kind": True}, result
    assert result["widget_errors"] == [], result["widget_errors"]


def test_compare_widgets(frontend, finished_run, tiny_path):
    skip_broken(frontend)
    path = prepared(
        "03_compare_models.ipynb",
        {
            "base_model": str(tiny_path),
            "trained_model": str(finished_run),
            "num_prompts": 2,
            "samples_per_prompt": 1,
            "max_new_tokens": 16,
        },
    )
    result = drive(frontend, path, "compare", "03")
    assert "failure" not in result, result
    assert result["output_errors"] == []
    assert result["changed"] == {"answers": True}, result
    assert result["columns"] == 2  # base and trained, side by side
    assert result["widget_errors"] == [], result["widget_errors"]
