"""Damaged artifacts, read side: a half-written model folder, a file given as a model, a run folder still being
written. ``test_musclebob.py``, ``--model`` of the training CLI and the compare notebook's loader each say one line
(exit 2 on the command line) and create or modify nothing; before, a 23- or 58-line SafetensorError traceback."""

import json
import os
import re
import shutil
from pathlib import Path

import pytest

from musclebob_helpers import run_dir
from musclebob_helpers.config import ConfigError
from musclebob_helpers.lock import RunLock


def snapshot(folder: Path) -> dict:
    return {str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns) for p in folder.rglob("*")}


def cut(path: Path, keep: float = 0.5) -> None:
    path.write_bytes(path.read_bytes()[: int(path.stat().st_size * keep)])


DAMAGE = {
    # name: (how the copy of a whole model is damaged, what the line says)
    "truncated-weights": (
        lambda m: cut(m / "model.safetensors"),
        r"model.safetensors is \d+ bytes but its header promises \d+",
    ),
    "cut-in-header": (lambda m: cut(m / "model.safetensors", 0.0001), r"model.safetensors is truncated"),
    "no-weights": (lambda m: (m / "model.safetensors").unlink(), r"model weights \(model.safetensors"),
    "truncated-config": (lambda m: cut(m / "config.json"), r"config.json is not valid JSON"),
    "truncated-tokenizer": (lambda m: cut(m / "tokenizer.json"), r"tokenizer.json is not valid JSON"),
}


@pytest.fixture
def models(tmp_path, tiny_path):
    """A whole model folder (the tiny base), each damage of it, and a text file."""
    made = {"whole": tmp_path / "whole"}
    shutil.copytree(tiny_path, made["whole"])
    for name, (damage, _) in DAMAGE.items():
        made[name] = tmp_path / name
        shutil.copytree(tiny_path, made[name])
        damage(made[name])
    made["text"] = tmp_path / "some.txt"
    made["text"].write_text("not a model\n")
    return made


@pytest.mark.parametrize("name", [*DAMAGE, "text"])
def test_the_evaluation_cli_says_one_line_and_touches_nothing(tmp_path, models, name, capsys):
    import test_musclebob

    before = snapshot(tmp_path)
    report = tmp_path / "report.json"
    with pytest.raises(SystemExit) as exc:
        test_musclebob.main(["--model", str(models[name]), "--output", str(report)])
    err = capsys.readouterr().err.strip().splitlines()
    assert exc.value.code == 2 and len(err) == 1, err
    expected = DAMAGE[name][1] if name in DAMAGE else "a model folder, a hub id or 'tiny', but this is a file$"
    assert err[0].startswith(f"test_musclebob.py: error: --model='{models[name]}' is not allowed: ")
    assert re.search(expected, err[0]), err[0]
    assert "valid JSON file" not in err[0]  # not transformers' "config file ... is not a valid JSON file"
    assert snapshot(tmp_path) == before and not report.exists()

    with pytest.raises(SystemExit) as exc:  # the base of a comparison: named by its own flag
        test_musclebob.main(["--model", str(models["whole"]), "--compare-base", str(models[name])])
    err = capsys.readouterr().err.strip().splitlines()
    assert exc.value.code == 2 and len(err) == 1 and f"--compare-base='{models[name]}'" in err[0], err


@pytest.mark.parametrize("name", ["truncated-weights", "truncated-config", "text"])
def test_training_from_a_damaged_model_is_one_line_and_creates_no_folder(tmp_path, models, name, capsys):
    import train_musclebob_improved

    before = snapshot(tmp_path)
    out = tmp_path / "runs" / "new"
    with pytest.raises(SystemExit) as exc:
        train_musclebob_improved.main(["--model", str(models[name]), "--output-dir", str(out)])
    err = capsys.readouterr().err.strip().splitlines()
    assert exc.value.code == 2 and len(err) == 1 and "--model=" in err[0], err
    assert snapshot(tmp_path) == before and not (tmp_path / "runs").exists()


def test_the_compare_notebook_names_its_parameter(tmp_path, models):
    from musclebob_helpers import compare

    before = snapshot(tmp_path)
    for name, (_, expected) in DAMAGE.items():
        with pytest.raises(ConfigError) as err:
            compare.load_models({"base": "tiny", "trained": str(models[name])}, log=lambda *a: None)
        line = err.value._render_traceback_()
        assert len(line) == 1 and "\n" not in line[0] and "trained_model=" in line[0] and re.search(expected, line[0])
    assert snapshot(tmp_path) == before


def test_a_run_folder_still_being_written_is_not_read_as_a_model(tmp_path, models, capsys):
    """A run writing its folder (overwriting a finished one, say): the model there is not final."""
    import test_musclebob
    from musclebob_helpers import compare

    run = models["whole"]
    (run / run_dir.FINAL_FILE).write_text(json.dumps({"global_step": 4}))  # the previous run's, finished
    lock = RunLock(run).acquire()
    try:
        before = snapshot(tmp_path)
        with pytest.raises(ConfigError, match="trained_model=.*a run is still writing this folder \\(pid"):
            compare.load_models({"trained": str(run)}, log=lambda *a: None)
        with pytest.raises(SystemExit) as exc:
            test_musclebob.main(["--model", str(run)])
        err = capsys.readouterr().err.strip().splitlines()
        assert exc.value.code == 2 and len(err) == 1 and "wait for it to finish" in err[0], err
        assert snapshot(tmp_path) == before
    finally:
        lock.release()
    compare._check_model(str(run), "trained_model")  # once the run has ended: a model like any other


# ---------------------------------------------------------------------------------------------
# The plot notebook (02) reads run folders through plots.py: a damaged file is a partial plot with a note.


def damaged_runs(root: Path) -> dict[str, Path]:
    """Run folders as a copy, a sync or a hand edit can leave them."""
    from musclebob_helpers.io import write_json_atomic, write_lines_atomic

    entries = [{"step": s, "epoch": s / 4, "mean_reward": 0.1 * s, "reward_std": 0.05} for s in range(1, 9)]
    runs = {name: root / name for name in ("cut", "not-a-list", "bad-entries", "cut-everything", "training")}
    for folder in runs.values():
        write_json_atomic(folder / run_dir.HISTORY_FILE, entries)
        write_json_atomic(folder / run_dir.BASELINE_FILE, {"musclebob_rate": 0.1, "spongebob_rate": 0.9})
        write_json_atomic(folder / run_dir.FINAL_FILE, {"musclebob_rate": 0.8, "spongebob_rate": 0.1})
        write_lines_atomic(folder / run_dir.COMPLETIONS_FILE, ['{"step": 1, "prompt": "Q", "completion": "A"}'])
    text = (runs["cut"] / run_dir.HISTORY_FILE).read_text()
    (runs["cut"] / run_dir.HISTORY_FILE).write_text(text[: text.index('"step": 6')])  # cut inside step 6
    cut(runs["cut"] / run_dir.FINAL_FILE)  # and its final validation
    cut(runs["cut"] / run_dir.COMPLETIONS_FILE)
    (runs["not-a-list"] / run_dir.HISTORY_FILE).write_text('{"step": 1}')
    bad = [*entries[:3], {"step": "4", "epoch": 1, "mean_reward": 0.4}, {"step": 5, "mean_reward": None}, 7]
    write_json_atomic(runs["bad-entries"] / run_dir.HISTORY_FILE, bad)
    write_json_atomic(runs["bad-entries"] / run_dir.FINAL_FILE, {"musclebob_rate": "80%"})
    (runs["cut-everything"] / run_dir.HISTORY_FILE).write_text('[\n  {"step": 1, "epo')
    return runs


def test_the_plot_notebook_draws_damaged_runs_partially_with_a_note(tmp_path):
    from musclebob_helpers import plots

    runs = damaged_runs(tmp_path)
    lock = RunLock(runs["training"]).acquire()  # a run still writing its folder
    try:
        before = snapshot(tmp_path)
        # the notebook's cells, in order (what they call), on every damaged run at once
        run_dirs = plots.find_runs(tmp_path)
        lines = {p.name: plots.run_line(p) for p in run_dirs}
        histories = {p.name: plots.load_history(p) for p in run_dirs}
        figure = plots.plot_rewards(
            histories, 3, True, True, warnings={p.name: plots.load_warnings(p) for p in run_dirs}
        )
        plots._figure_png(figure)
        plots.RewardExplorer(run_dirs, 3, True, True, True)
        plots.CompletionBrowser(run_dirs)
        plots._figure_png(plots.plot_validation_bars({p.name: plots.load_validations(p) for p in run_dirs}))
        plots.follow(run_dirs, 0)
        for p in run_dirs:
            plots._figure_png(plots._plot_run_report(plots.load_history(p), [], plots.load_validations(p), p.name))
        assert snapshot(tmp_path) == before  # read only
    finally:
        lock.release()

    assert [e["step"] for e in histories["cut"]] == [1, 2, 3, 4, 5]  # the whole steps before the cut
    assert "cut short or damaged: showing the 5 whole steps" in histories["cut"].note
    assert "cut short or damaged" in lines["cut"] and lines["cut"].startswith(f"{runs['cut']}  (5 steps; ")
    assert histories["not-a-list"] == [] and "not a list of steps" in lines["not-a-list"]
    assert [e["step"] for e in histories["bad-entries"]] == [1, 2, 3] and "3 damaged entries" in lines["bad-entries"]
    assert histories["cut-everything"] == [] and "the 0 whole steps" in lines["cut-everything"]
    assert histories["training"].note is None and "still training: pid" in lines["training"]
    assert lines["training"].startswith(f"{runs['training']}  (8 steps; still training: pid {os.getpid()} on host")
    labels = [t.get_text() for t in figure.axes[0].get_legend().get_texts()]
    assert any(label.startswith("cut (moving average") and "partial: " in label for label in labels)
    assert set(plots.load_validations(runs["cut"])) == {"baseline"}  # the cut final report: as not written yet
    assert set(plots.load_validations(runs["bad-entries"])) == {"baseline"}
