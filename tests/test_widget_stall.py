"""The reward explorer's cell finishes under Colab's kernel stack (ipykernel 6.17.1, jupyter_client 7.4.9) with
ipywidgets 7.7.1 and 8.1.9, executed headless by papermill.

Why it could stall: papermill's nbclient stands in for the frontend of ``Output`` widgets. Output captured by
one (``with out: display(...)``, ``out.clear_output()``) makes nbclient send the widget's new state back on the
kernel's shell socket, from the task that reads IOPub, while another task waits on that socket for the cell's
``execute_reply``; with jupyter_client 7.4.9 that wait sometimes misses the reply (already there) and sleeps
until the execution timeout, then carries on as if nothing happened. The explorer redrew through exactly that
capture as the last thing its cell did. It now replaces the Output's ``outputs`` in one state update
(``plots.set_output``): nbclient writes nothing on the shell socket, so there is nothing to race.
"""

import json
import subprocess
from pathlib import Path

import nbformat
import pytest

from musclebob_helpers import plots
from musclebob_helpers.io import write_json_atomic
from tests.browser.envs import env_or_skip, isolated_jupyter_env

ROOT = Path(__file__).resolve().parent.parent
RUNNER = ROOT / "tests" / "browser" / "run_headless.py"
TIMEOUT = 60  # a stalled cell waits this long, then papermill carries on silently (no error)
REPRO_TIMEOUT = 15  # the mechanism test's cells take a second or two
KERNELS = ["kernel-ipw7", "kernel-ipw8"]


def hand_made_runs(root: Path) -> Path:
    for name, scale in (("run-a", 0.1), ("run-b", 0.07)):
        write_json_atomic(
            root / name / "reward_history.json",
            [{"step": s, "epoch": s / 4, "mean_reward": scale * s, "reward_std": 0.05} for s in range(1, 9)],
        )
    return root


def execute(env: Path, notebook: Path, out: Path, params: dict, tmp_path: Path, timeout: int = TIMEOUT) -> dict:
    done = subprocess.run(
        [str(env / "bin" / "python"), str(RUNNER), str(notebook), str(out), str(timeout), json.dumps(params)],
        check=False,
        cwd=ROOT / "notebooks",
        capture_output=True,
        text=True,
        env=isolated_jupyter_env(env, tmp_path / "jupyter"),
        timeout=20 * TIMEOUT,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def cell(report: dict, needle: str) -> dict:
    return next(c for c in report["cells"] if needle in c["source"])


def test_explorer_shows_its_plot_in_the_output_widget(tmp_path):
    explorer = plots.RewardExplorer(plots.find_runs(hand_made_runs(tmp_path)), window=3)
    explorer.redraw()
    explorer.show_std.value = False  # a toggle redraws: the Output holds the new plot, only that
    (shown,) = explorer.output.outputs
    assert shown["output_type"] == "display_data" and explorer.redraws == 2
    import base64

    assert base64.b64decode(shown["data"]["image/png"]).startswith(b"\x89PNG")


@pytest.mark.slow
@pytest.mark.parametrize("kernel", KERNELS)
def test_plot_notebook_finishes_on_colab_kernel(kernel, tmp_path):
    env = env_or_skip(kernel)
    out = tmp_path / "02.ipynb"
    report = execute(
        env,
        ROOT / "notebooks" / "02_reward_plots.ipynb",
        out,
        {"runs_root": str(hand_made_runs(tmp_path / "runs"))},
        tmp_path,
    )
    assert report["errors"] == []
    for needle in ("RewardExplorer", "CompletionBrowser"):
        widget = cell(report, needle)
        assert widget["shell_writes"] == 0  # nothing for the reply wait to race with
        assert widget["seconds"] < TIMEOUT  # a stalled cell "finishes" at the timeout, without an error
    # The explorer's Output holds the plot, the completion browser's its one line (these hand-made runs have no
    # completions.jsonl), in the saved widget state (what a frontend would render).
    state = nbformat.read(out, as_version=4).metadata.widgets["application/vnd.jupyter.widget-state+json"]["state"]
    shown = [o for m in state.values() if m["model_name"] == "OutputModel" for o in m["state"].get("outputs", [])]
    assert sorted(sorted(o["data"]) for o in shown) == [["image/png", "text/plain"], ["text/html", "text/plain"]]
    assert any("No completions in run-a yet" in o["data"].get("text/html", "") for o in shown)


REPRO = """\
import base64, ipywidgets as w
from IPython.display import Image, display
from musclebob_helpers import plots
PNG = plots._figure_png(plots.plot_rewards({"run": [{"step": 1, "epoch": 1.0, "mean_reward": 0.5}]}))
"""


@pytest.mark.slow
@pytest.mark.parametrize("kernel", KERNELS)
def test_capture_makes_the_runner_write_on_the_shell_socket(kernel, tmp_path):
    """The mechanism with plain ipywidgets: the old redraw (clear_output(wait=True), then display inside
    ``with out:``) makes nbclient write on the shell socket during the cell; ``set_output`` does not."""
    env = env_or_skip(kernel)
    nb = nbformat.v4.new_notebook(
        metadata={"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"}}
    )
    nb.cells = [
        nbformat.v4.new_code_cell(f"import sys; sys.path.insert(0, {str(ROOT)!r})\n" + REPRO),
        nbformat.v4.new_code_cell(
            "out = w.Output(); display(w.VBox([w.IntSlider(), out]))\n"
            "out.clear_output(wait=True)\nwith out:\n    display(Image(data=PNG))"
        ),
        nbformat.v4.new_code_cell(
            "out2 = w.Output(); display(w.VBox([w.IntSlider(), out2]))\n"
            "plots.set_output(out2, {'image/png': base64.b64encode(PNG).decode()})"
        ),
    ]
    src = tmp_path / "repro.ipynb"
    nbformat.write(nb, src)
    # A stalled cell sits out the whole timeout; here only the writes are counted, so a short one will do.
    report = execute(env, src, tmp_path / "repro-out.ipynb", {}, tmp_path, timeout=REPRO_TIMEOUT)
    assert report["errors"] == []
    assert cell(report, "with out:")["shell_writes"] >= 1
    assert cell(report, "set_output")["shell_writes"] == 0
