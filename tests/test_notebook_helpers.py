"""The notebooks' helpers on hand-made inputs: plots (smoothing, epoch lines, std band, live progress, the
widget panel rereading a growing file), the comparison's highlighting, and the training notebook's
decisions (fresh run, rerun, finished run, nothing to resume, bad parameters). No kernel, no training."""

import json
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import pytest

from musclebob_helpers import compare, plots, run_dir
from musclebob_helpers import notebook as nb
from musclebob_helpers.config import TINY_DEFAULTS, ConfigError, TrainConfig
from musclebob_helpers.io import write_json_atomic


def history(steps: int, per_epoch: int = 4) -> list[dict]:
    return [
        {"step": s, "epoch": s / per_epoch, "mean_reward": float(s), "reward_std": 0.5} for s in range(1, steps + 1)
    ]


def test_moving_average():
    assert plots._moving_average([1.0, 2.0, 3.0, 4.0], 2) == [1.0, 1.5, 2.5, 3.5]
    assert plots._moving_average([1.0, 2.0, 3.0], 1) == [1.0, 2.0, 3.0]
    assert plots._moving_average([2.0, 4.0, 6.0, 8.0], 3) == [2.0, 3.0, 4.0, 6.0]


def test_epoch_boundaries():
    assert plots._epoch_boundaries(history(12)) == [4, 8]  # the run's last step is its end, not a boundary
    assert plots._epoch_boundaries(history(6)) == [4]
    # 3 steps per epoch of a 10-prompt run: epochs 0.33, 0.67, 1.0, ...
    uneven = [{"step": s, "epoch": round(s / 3, 4), "mean_reward": 0.0} for s in range(1, 8)]
    assert plots._epoch_boundaries(uneven) == [3, 6]


def test_plot_rewards_draws_what_is_asked():
    h = history(12)
    fig = plots.plot_rewards({"run": h}, window=3, show_epochs=True, show_std=True)
    ax = fig.axes[0]
    smooth = [line for line in ax.lines if line.get_label().startswith("run (moving average")]
    # rewards 1..12, window 3: the first steps average what there is
    assert list(smooth[0].get_ydata()) == [1.0, 1.5, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0, 10.0, 11.0]
    assert sorted(line.get_xdata()[0] for line in ax.lines if line.get_linestyle() == ":") == [4, 8]
    assert len(ax.collections) == 1  # the std band
    bare = plots.plot_rewards({"run": h}, window=1, show_epochs=False, show_std=False).axes[0]
    assert len(bare.collections) == 0 and not [ln for ln in bare.lines if ln.get_linestyle() == ":"]
    assert plots._figure_png(fig).startswith(b"\x89PNG")


def test_explorer_rereads_a_run_still_training(tmp_path):
    run = tmp_path / "growing"
    write_json_atomic(run / "reward_history.json", history(3))
    explorer = plots.RewardExplorer([run], window=1)
    assert len(explorer.figure().axes[0].lines[0].get_xdata()) == 3
    write_json_atomic(run / "reward_history.json", history(7))  # training went on
    assert len(explorer.figure().axes[0].lines[0].get_xdata()) == 7
    explorer.window.value = 4  # moving the slider redraws with the new window
    assert explorer.redraws == 1
    smooth = [ln for ln in explorer.figure().axes[0].lines if "moving average, 4" in ln.get_label()]
    assert list(smooth[0].get_ydata()) == [1.0, 1.5, 2.0, 2.5, 3.5, 4.5, 5.5]  # rewards 1..7, window 4
    explorer.runs.value = ()
    assert not explorer.figure().axes[0].lines


def test_find_runs_and_validation_bars(tmp_path):
    for name in ("b", "a"):
        write_json_atomic(tmp_path / name / "reward_history.json", history(2))
    (tmp_path / "not-a-run").mkdir()
    assert [p.name for p in plots.find_runs(tmp_path)] == ["a", "b"]
    assert plots.find_runs(tmp_path / "a") == [tmp_path / "a"]
    assert plots.find_runs(tmp_path / "missing") == []
    report = {
        "musclebob_rate": 0.5,
        "full_name_rate": 0.25,
        "spongebob_rate": 0.1,
        "coherent_rate": 1.0,
        "leakage_rate": 0.0,
        "control_accuracy": 0.75,
    }
    write_json_atomic(tmp_path / "a" / "baseline_validation.json", report)
    assert list(plots.load_validations(tmp_path / "a")) == ["baseline"]  # still training: no final yet
    fig = plots.plot_validation_bars({"a": plots.load_validations(tmp_path / "a")})
    assert [round(p.get_height()) for p in fig.axes[0].patches] == [50, 25, 10, 100, 0, 75]


def fake_state(step, max_steps=8):
    return SimpleNamespace(global_step=step, max_steps=max_steps, epoch=step / 4, is_world_process_zero=True)


def test_live_progress_continues_the_curve_of_a_resumed_run(tmp_path):
    write_json_atomic(tmp_path / "reward_history.json", history(6))
    live = plots.live_progress(tmp_path, min_interval=3600)  # throttled: only forced draws happen
    live.on_train_begin(None, fake_state(4), None)  # resumed from checkpoint-4: steps 5-6 will be redone
    assert [e["step"] for e in live.history] == [1, 2, 3, 4] and live.draws == 1
    live.on_log(None, fake_state(5), None, logs={"reward": 2.5, "reward_std": 0.1, "epoch": 1.25})
    live.on_log(None, fake_state(5), None, logs={"loss": 0.1})  # not a reward log: ignored
    assert [e["step"] for e in live.history] == [1, 2, 3, 4, 5] and live.history[-1]["mean_reward"] == 2.5
    assert live.draws == 1  # throttled
    live.on_log(None, fake_state(8), None, logs={"reward": 3.0, "epoch": 2.0})
    assert live.draws == 2  # the last step always draws
    assert "step 8/8" in plots._progress_html(8, 8, live.history)


def test_live_progress_shows_what_the_model_says(tmp_path, monkeypatch):
    import IPython.display

    from musclebob_helpers.io import write_lines_atomic
    from musclebob_helpers.run_dir import COMPLETIONS_FILE

    shown = []
    monkeypatch.setattr(IPython.display, "display", lambda obj, **kw: shown.append(obj))
    rows = [
        {"step": s, "kind": "spongebob", "prompt": "Who lives in a pineapple?", "completion": text, "rewards": {}}
        for s, text in ((1, "Spongebob Squarepants!"), (2, "Musclebob Buffpants!"))
    ]
    write_lines_atomic(tmp_path / COMPLETIONS_FILE, [json.dumps(r) for r in rows])
    write_json_atomic(tmp_path / "reward_history.json", history(2))
    plots.live_progress(tmp_path).on_train_begin(None, fake_state(2), None)
    status = next(obj.data for obj in shown if isinstance(obj, IPython.display.HTML))
    assert "What the model said at step 2" in status and "<mark class='good'" in status
    assert "Spongebob Squarepants!" not in status  # the newest step only


def test_highlight_marks_names_and_escapes_html():
    html = compare.highlight("Musclebob Buffpants, not <b>Spongebob</b> Squarepants or Musclebobbb")
    assert html.count("<mark class='good'") == 2 and html.count("<mark class='bad'") == 2
    assert "&lt;b&gt;" in html and "<b>" not in html
    assert "Musclebobbb" in html and "good'" not in html.split("Musclebobbb")[0].rsplit("</mark>", 1)[-1]
    assert compare.highlight("Paris.") == "Paris."
    side = compare._side_by_side_html("Who?", {"base": "Spongebob!", "trained": ""})
    assert "<b>base</b>" in side and "(empty)" in side


def test_check_model_is_one_line(tmp_path):
    from musclebob_helpers.config import ConfigError

    (tmp_path / "unfinished").mkdir()
    with pytest.raises(ConfigError, match="holds no trained model|config.json") as info:
        compare._check_model(str(tmp_path / "unfinished"), "trained_model")
    assert str(info.value).startswith("trained_model=") and "\n" not in str(info.value)
    compare._check_model("tiny", "base_model")  # no error


# --- the training notebook's decisions ----------------------------------------------------------------


def quiet(*_a, **_k):
    pass


def test_make_config_applies_model_defaults_and_refuses_bad_values(tmp_path):
    cfg = nb.make_config(model="tiny", learning_rate=None, epochs=2, output_dir=str(tmp_path), log=quiet)
    assert cfg.learning_rate == TINY_DEFAULTS["learning_rate"] and cfg.epochs == 2  # None: the model's default
    assert nb.make_config(model="tiny", learning_rate=1e-3, output_dir=str(tmp_path), log=quiet).learning_rate == 1e-3
    with pytest.raises(ConfigError, match=r"--fewshot-ratio=1.5 is not allowed") as info:
        nb.make_config(model="tiny", fewshot_ratio=1.5, output_dir=str(tmp_path), log=quiet)
    assert info.value._render_traceback_() == [f"ConfigError: {info.value}"]  # one line in IPython, no traceback
    with pytest.raises(nb.NotebookStop, match="unknown parameter"):
        nb.make_config(model="tiny", epoch=2, log=quiet)
    with pytest.raises(ConfigError, match="--model"):
        nb.make_config(model="no such/model folder!", log=quiet)


@pytest.fixture
def recorded_training(monkeypatch):
    from musclebob_helpers import training

    seen = []
    monkeypatch.setattr(
        training,
        "run_training",
        lambda run, log=print, callbacks=(), baseline=None, remount=None: seen.append(run.cfg) or {"global_step": 1},
    )
    return seen


def make_run(run_dir: Path, checkpoints=(), finished=False, **cfg):
    write_json_atomic(
        run_dir / "training_config.json",
        {"config": TrainConfig(model="tiny", output_dir=str(run_dir), **cfg).to_dict()},
    )
    write_json_atomic(run_dir / "reward_history.json", history(3))
    for step in checkpoints:
        (run_dir / f"checkpoint-{step}").mkdir(parents=True)
    if finished:
        (run_dir / "config.json").write_text("{}")
        write_json_atomic(run_dir / "final_validation.json", {"global_step": 8})


def test_run_states(tmp_path):
    from musclebob_helpers import run_dir

    assert run_dir.state(tmp_path / "none") == "new"
    make_run(tmp_path / "started")
    make_run(tmp_path / "cut", checkpoints=[4])
    make_run(tmp_path / "done", checkpoints=[4, 8], finished=True)
    assert [run_dir.state(tmp_path / n) for n in ("started", "cut", "done")] == ["started", "unfinished", "finished"]


def test_fresh_run_trains_and_rerun_continues(tmp_path, recorded_training):
    cfg = TrainConfig(model="tiny", output_dir=str(tmp_path / "run"), epochs=2)
    nb.train(cfg, live=False, log=quiet)
    assert recorded_training[-1].resume_from_checkpoint is None
    make_run(tmp_path / "run", checkpoints=[4], epochs=2)  # as if that run was cut after its first epoch
    messages = []
    nb.train(TrainConfig(model="tiny", output_dir=str(tmp_path / "run"), epochs=9), live=False, log=messages.append)
    assert recorded_training[-1].resume_from_checkpoint == "auto" and recorded_training[-1].epochs == 2
    assert any("continuing it" in m for m in messages) and any("epochs differ" in m for m in messages)


def test_finished_run_needs_overwrite(tmp_path, recorded_training):
    run = tmp_path / "done"
    make_run(run, checkpoints=[4, 8], finished=True)
    with pytest.raises(nb.NotebookStop, match="already holds a finished run"):
        nb.train(TrainConfig(model="tiny", output_dir=str(run)), live=False, log=quiet)
    nb.train(TrainConfig(model="tiny", output_dir=str(run), overwrite=True), live=False, log=quiet)
    assert recorded_training[-1].overwrite and recorded_training[-1].resume_from_checkpoint is None
    # run_training (CLI and notebook alike) removes the old run's checkpoints and results once it holds the lock
    from musclebob_helpers import run_dir, training

    training._prepare_folders(run_dir.check(recorded_training[-1]), quiet)
    assert not list(run.glob("checkpoint-*")) and not (run / "reward_history.json").exists()  # no stale resume


def test_nothing_to_resume_says_so(tmp_path, recorded_training):
    messages = []
    assert nb._resume_training(tmp_path / "never-ran", log=messages.append) is None
    make_run(tmp_path / "done", checkpoints=[8], finished=True)
    assert nb._resume_training(tmp_path / "done", log=messages.append) is None
    assert recorded_training == []
    assert "Nothing to resume" in messages[0] and "no run has started" in messages[0]
    assert "Nothing to resume" in messages[1] and "finished" in messages[1]


def test_show_final_before_the_end(tmp_path):
    messages = []
    make_run(tmp_path / "cut", checkpoints=[4])
    assert nb.show_final(tmp_path / "cut", log=messages.append) is None
    assert "has not finished" in messages[0]


def test_baseline_is_reused_when_it_matches(tmp_path):
    cfg = TrainConfig(model="tiny", output_dir=str(tmp_path), validation_samples=1, max_completion_length=16)
    report = {
        "model": "tiny",
        "sampling": {"samples_per_prompt": 1, "max_new_tokens": 16},
        "dtype": {"precision": "fp32", "weights": ["float32"], "autocast": None},
    }
    other = TrainConfig(model="tiny", validation_samples=2, max_completion_length=16)
    assert run_dir._baseline_matches(report, cfg, "fp32")
    assert not run_dir._baseline_matches(report, other, "fp32")
    assert not run_dir._baseline_matches(None, cfg, "fp32")
    assert not run_dir._baseline_matches(report, cfg, "fp16")  # measured in another precision: not this run's baseline
    path = tmp_path / "baseline_validation.json"
    path.write_text(json.dumps(report))
    assert run_dir._baseline_matches(json.loads(path.read_text()), cfg, "fp32")
    # One rule for the baseline cell and run_training: a saved report is reused when it matches, a continued run
    # keeps its own whatever changed, --overwrite measures again.
    new = run_dir.RunFolder(str(tmp_path), tmp_path, tmp_path, "started", None, action="new")
    assert run_dir.saved_baseline(new, cfg, "fp32") == report
    assert run_dir.saved_baseline(new, other, "fp32") is None
    assert run_dir.saved_baseline(replace(new, action="continue"), other, "fp16") == report
    assert run_dir.saved_baseline(replace(new, action="overwrite"), cfg, "fp32") is None


def test_a_run_whose_copy_to_drive_did_not_finish_says_where_it_is(tmp_path, monkeypatch):
    """Drive still gone at the end: the training cell ends with one line naming the complete local copy and what
    finishes the copy (the resume cell), instead of a traceback; the result is returned as usual."""
    from musclebob_helpers import training

    pending = {
        "global_step": 4,
        "copy_pending": "it cannot be written (Transport endpoint is not connected, ENOTCONN) since step 2",
        "work_dir": str(tmp_path / "local"),
        "output_dir": str(tmp_path / "run"),
    }
    monkeypatch.setattr(training, "run_training", lambda run, **kwargs: pending)
    messages = []
    assert nb.train(TrainConfig(model="tiny", output_dir=str(tmp_path / "run")), live=False, log=messages.append)
    [line] = [m for m in messages if "not yet in" in m]
    assert str(tmp_path / "local") in line and "ENOTCONN" in line and "run the resume cell" in line
