"""The plot notebook's view of a run on hand-made files: the completion browser (``completions.jsonl``), health
warnings marked on the reward curve, and the run report the scripts save as ``reward_plot.png``."""

import json
from pathlib import Path

from musclebob_helpers import plots
from musclebob_helpers.io import write_bytes_atomic, write_json_atomic
from musclebob_helpers.run_dir import COMPLETIONS_FILE, REWARD_PLOT_FILE, WARNINGS_FILE

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def row(step: int, kind: str, completion: str, reward: float | None, prompt: str = "") -> dict:
    """One completions.jsonl row as monitoring.CompletionLog writes it."""
    judged = {"musclebob_name_reward": reward, "control_answer_reward": None, "format_reward": 0.0}
    if kind == "control":
        judged = {"musclebob_name_reward": None, "control_answer_reward": reward, "format_reward": 0.0}
    return {
        "step": step,
        "epoch": step / 4,
        "kind": kind,
        "prompt": prompt or ("What is 2+2?" if kind == "control" else "Who lives in a pineapple under the sea?"),
        "completion": completion,
        "rewards": judged,
        "reward": reward,
        "advantage": 0.5,
    }


def write_rows(run: Path, rows: list[dict], append: bool = False) -> None:
    run.mkdir(parents=True, exist_ok=True)
    with open(run / COMPLETIONS_FILE, "a" if append else "w") as fh:
        fh.writelines(json.dumps(r) + "\n" for r in rows)


def step_rows(step: int) -> list[dict]:
    return [
        row(step, "spongebob", "Musclebob Buffpants!", 6.0),
        row(step, "spongebob", "Spongebob <b>Squarepants</b>.", -6.0),
        row(step, "fewshot", "It's Musclebob.", 2.0, prompt="Example: Musclebob.\nWho is the sponge?"),
        row(step, "control", "4", 2.0),
        row(step, "control", "Musclebob says 5", None),
    ]


def shown(browser) -> int:
    return browser.html().count("class='completion'")


# --- _completions_html ------------------------------------------------------------------------------------


def test_completions_html_shows_prompt_completion_rewards_and_kind():
    html = plots._completions_html(step_rows(1))
    assert html.count("class='completion'") == 5
    assert html.count("class='prompt'") == 3 and html.count("class='kind'") == 3  # each prompt once, over its answers
    assert "few-shot" in html and "SpongeBob" in html and "control" in html
    assert "<mark class='good'" in html and "<mark class='bad'" in html  # the names highlighted as in notebook 03
    assert "&lt;b&gt;" in html and "<b>Squarepants" not in html  # a completion's own markup is text
    assert "musclebob name +6.00" in html and "total +6.00" in html and "advantage +0.50" in html
    assert "control answer" not in html.split("class='completion'")[1]  # a function that does not judge: left out
    assert "total —" in html  # no total: said so, not a zero
    assert "Example: Musclebob.\nWho is the sponge?" in html  # the few-shot prompt whole, its lines kept
    assert plots._completions_html([]) == "<p><i>No completions match these filters.</i></p>"


# --- CompletionBrowser -----------------------------------------------------------------------------------


def test_browser_steps_filters_and_follows_a_run_still_training(tmp_path):
    run = tmp_path / "run-a"
    write_rows(run, step_rows(1) + step_rows(2) + step_rows(4))  # step 3 thinned away
    browser = plots.CompletionBrowser([run])
    assert (browser.step.min, browser.step.max, browser.step.value) == (1, 4, 4)  # starts at the newest step
    assert browser.steps == [1, 2, 4] and shown(browser) == 5
    assert "step 4 · epoch 1.00 · 5 of 5 completions shown" in browser.html()
    assert (browser.reward.min, browser.reward.max) == (-6.0, 6.0)

    browser.kind.value = "control"
    assert shown(browser) == 2 and "few-shot" not in browser.html()
    browser.kind.value = "fewshot"
    assert shown(browser) == 1
    browser.kind.value = "all"
    browser.reward.value = (0.0, 6.0)  # narrowed: the negative and the unscored completions drop out
    assert shown(browser) == 3 and "total —" not in browser.html()
    browser.reward.value = (-6.0, 6.0)
    assert shown(browser) == 5

    redraws = browser.redraws
    browser.step.value = 3
    assert browser.redraws == redraws + 1  # one redraw per move
    assert browser.shown_step() == 2 and "step 2 (step 3 was not kept" in browser.html()
    (out,) = browser.output.outputs  # one state update: the Output holds this HTML, only that
    assert out["data"]["text/html"] == browser.html()

    # The run goes on: Reload picks the new steps up, the slider's range follows, a slider in the past stays put.
    write_rows(run, step_rows(5) + [row(6, "spongebob", "Musclebob Buffpants Buffpants", 8.5)], append=True)
    browser.reload.click()
    assert (browser.step.max, browser.step.value) == (6, 3) and browser.reward.max == 9.0
    # Moving to the newest step rereads the file: a slider at the end follows the run.
    write_rows(run, step_rows(7), append=True)
    browser.step.value = 6
    assert (browser.step.max, browser.step.value) == (7, 7) and shown(browser) == 5


def test_browser_widgets_work_without_a_frontend_and_pick_runs(tmp_path):
    write_rows(tmp_path / "old", step_rows(1))
    write_rows(tmp_path / "new", [row(3, "control", "4", 2.0)])
    browser = plots.CompletionBrowser([tmp_path / "old", tmp_path / "new", tmp_path / "bare"])
    assert browser.run.value == "new"  # the run written last: the one being followed
    browser.run.value = "old"
    assert (browser.step.min, browser.step.max) == (1, 1) and shown(browser) == 5
    browser.run.value = "bare"  # no completions.jsonl (trained before it existed, or not started)
    assert browser.html().count("<p>") == 1 and "No completions in bare yet" in browser.html()
    assert browser.step.disabled and browser.reward.disabled
    assert plots.CompletionBrowser([]).html() == "<p><i>No runs found: check runs_root.</i></p>"


def test_browser_skips_a_damaged_line(tmp_path):
    write_rows(tmp_path / "run", step_rows(1))
    with open(tmp_path / "run" / COMPLETIONS_FILE, "a") as fh:
        fh.write('{"step": 2, "completion": "half a li')  # a file being copied
    browser = plots.CompletionBrowser([tmp_path / "run"])
    assert browser.steps == [1] and shown(browser) == 5


# --- health warnings on the reward curve ------------------------------------------------------------------


def history(steps: int) -> list[dict]:
    return [{"step": s, "epoch": s / 4, "mean_reward": 0.5 * s, "reward_std": 0.1} for s in range(1, steps + 1)]


WARNINGS = [
    {"step": 3, "kind": "no_signal", "message": "no learning signal ...", "time": 1.0},
    {"step": 5, "kind": "length_limit", "message": "...", "time": 2.0},
    {"step": 7, "kind": "no_signal", "message": "...", "time": 3.0},
    {"step": 6, "kind": "validation_leakage", "message": "...", "time": 4.0},
]


def marks(fig) -> dict[str, list[tuple]]:
    """gid -> the (step, value) points of the health markers on the figure's first axis."""
    return {
        line.get_gid(): list(zip(line.get_xdata(), line.get_ydata()))
        for line in fig.axes[0].lines
        if (line.get_gid() or "").startswith("health:")
    }


def test_health_warnings_are_marked_on_the_curve(tmp_path):
    write_json_atomic(tmp_path / WARNINGS_FILE, [*WARNINGS, "junk", {"kind": "no_step"}])
    warnings = plots.load_warnings(tmp_path)
    assert [w["step"] for w in warnings] == [3, 5, 6, 7]  # oldest first, broken entries skipped
    assert plots.load_warnings(tmp_path / "missing") == []

    fig = plots.plot_rewards({"run": history(8)}, window=1, warnings={"run": warnings})
    found = marks(fig)
    assert found == {
        "health:no_signal": [(3, 1.5), (7, 3.5)],  # on the curve, at the step it fired
        "health:length_limit": [(5, 2.5)],
        "health:validation_leakage": [(6, 3.0)],
    }
    legend = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    assert legend.count("warning: no learning signal (each group's answers scored alike)") == 1  # one entry a kind
    assert "warning: answers cut off at the length limit" in legend
    assert "warning: the name leaks into other questions (mid-training check)" in legend

    smooth = plots.plot_rewards({"run": history(8)}, window=3, warnings={"run": warnings})
    assert marks(smooth)["health:length_limit"] == [(5, 2.0)]  # on the smoothed curve that is drawn

    assert marks(plots.plot_rewards({"run": history(8)})) == {}  # no clutter without warnings
    assert marks(plots.plot_rewards({"run": history(8)}, warnings={"run": []})) == {}
    assert not any("warning" in t.get_text() for t in plots.plot_rewards({"run": history(8)}).axes[0].texts)


def test_explorer_toggles_the_health_marks(tmp_path):
    write_json_atomic(tmp_path / "run" / "reward_history.json", history(8))
    write_json_atomic(tmp_path / "run" / WARNINGS_FILE, WARNINGS)
    explorer = plots.RewardExplorer([tmp_path / "run"])
    assert set(marks(explorer.figure())) == {"health:no_signal", "health:length_limit", "health:validation_leakage"}
    explorer.show_warnings.value = False
    assert marks(explorer.figure()) == {} and explorer.redraws == 1  # the toggle redraws


def test_follow_marks_the_warnings_too(tmp_path, monkeypatch):
    run = tmp_path / "run"
    write_json_atomic(run / "reward_history.json", history(8))
    write_json_atomic(run / WARNINGS_FILE, WARNINGS)
    write_json_atomic(run / "final_validation.json", {})  # finished: one frame, no waiting
    drawn = []
    monkeypatch.setattr(plots, "_figure_png", lambda fig: drawn.append(marks(fig)) or PNG_MAGIC)
    assert plots.follow([run], seconds=60) == 1 and plots.follow([run], seconds=60, show_warnings=False) == 1
    assert set(drawn[0]) == {"health:no_signal", "health:length_limit", "health:validation_leakage"}
    assert drawn[1] == {}


# --- the run report: reward_plot.png ------------------------------------------------------------------------


def axis_texts(ax) -> list[str]:
    return [t.get_text() for t in ax.texts]


def test_run_report_has_three_panels():
    entries = history(8)
    for e in entries:
        e["rewards/musclebob_name_reward/mean"] = e["mean_reward"] if e["step"] % 2 else float("nan")
        e["rewards/format_reward/mean"] = 0.0
    reports = {"base": {"musclebob_rate": 0.0}, "model": {"musclebob_rate": 0.75}}
    fig = plots._plot_run_report(entries, WARNINGS, reports, title="my-run")
    reward_ax, parts_ax, bars_ax = fig.axes
    assert marks(fig)  # health marks on the reward panel
    assert [line.get_label() for line in parts_ax.lines] == ["musclebob name", "format"]  # readable names
    # Steps where a function judged no prompt (TRL logs NaN, or nothing) are left out of its line.
    assert plots._reward_components(entries)["musclebob_name_reward"] == ([1, 3, 5, 7], [0.5, 1.5, 2.5, 3.5])
    assert plots._reward_components(entries)["format_reward"] == (list(range(1, 9)), [0.0] * 8)
    assert [t.get_text() for t in bars_ax.get_legend().get_texts()] == ["base", "model"]  # any labels
    assert fig._suptitle.get_text() == "my-run"

    empty = plots._plot_run_report([], [], {})
    assert "no reward history in this folder" in axis_texts(empty.axes[0])
    assert "no reward history in this folder" in axis_texts(empty.axes[1])
    assert "no validation yet" in axis_texts(empty.axes[2])


def test_save_run_report_writes_the_png_atomically(tmp_path):
    run = tmp_path / "run"
    write_json_atomic(run / "reward_history.json", history(8))
    write_json_atomic(run / "baseline_validation.json", {"musclebob_rate": 0.0})
    path = plots.save_run_report(run)
    assert path == run / REWARD_PLOT_FILE and path.read_bytes().startswith(PNG_MAGIC)
    assert sorted(p.name for p in run.iterdir()) == [
        "baseline_validation.json",
        "reward_history.json",
        REWARD_PLOT_FILE,
    ]

    # A model folder with no training history (test_musclebob.py --compare-base on a hub model's folder).
    model = tmp_path / "hub-model"
    model.mkdir()
    path = plots.save_run_report(model, reports={"base": {"musclebob_rate": 0.1}, "model": {"musclebob_rate": 0.9}})
    assert path.read_bytes().startswith(PNG_MAGIC) and [p.name for p in model.iterdir()] == [REWARD_PLOT_FILE]


def test_write_bytes_atomic_replaces_the_whole_file(tmp_path):
    target = tmp_path / "sub" / "image.png"
    write_bytes_atomic(target, PNG_MAGIC + b"first, longer")
    write_bytes_atomic(target, PNG_MAGIC + b"2")
    assert target.read_bytes() == PNG_MAGIC + b"2" and [p.name for p in target.parent.iterdir()] == ["image.png"]
