"""What a run prints: one progress display (a bar in a terminal, plain lines elsewhere), no warnings caused by our
own arguments, no temporary paths. Driven in-process with a hand-made TrainerState: no training."""

import io
import warnings

import pytest
from transformers import TrainerControl, TrainerState

from musclebob_helpers.config import resolve
from musclebob_helpers.training import (
    above_progress_bar,
    grpo_args,
    library_output_hidden,
    _make_callbacks,
    _show_progress,
)

REWARDS = [(-1.5, 4.2), (0.25, 3.5), (2.0, 1.125), (4.5, 0.5)]  # (mean reward, std) of each step


class FakeTerminal(io.StringIO):
    def isatty(self):
        return True


def drive(progress, between=lambda step: None):
    """Four logged steps through the progress callback, as the trainer calls it."""
    state, control = TrainerState(max_steps=len(REWARDS)), TrainerControl()
    progress.on_train_begin(None, state, control)
    for step, (reward, std) in enumerate(REWARDS, start=1):
        state.global_step, state.epoch = step, step / 2
        progress.on_step_end(None, state, control)
        progress.on_log(None, state, control, logs={"reward": reward, "reward_std": std, "epoch": step / 2, "loss": 0})
        between(step)
    progress.on_train_end(None, state, control)


def test_progress_is_one_line_per_step_when_stdout_is_not_a_terminal(tmp_path, monkeypatch):
    stdout, lines = io.StringIO(), []
    monkeypatch.setattr("sys.stdout", stdout)
    _, progress = _make_callbacks(tmp_path, log=lines.append)
    drive(progress)
    assert lines == [
        "step 1/4  epoch 0.50  mean reward -1.500 (std 4.200)",
        "step 2/4  epoch 1.00  mean reward +0.250 (std 3.500)",
        "step 3/4  epoch 1.50  mean reward +2.000 (std 1.125)",
        "step 4/4  epoch 2.00  mean reward +4.500 (std 0.500)",
    ]
    assert stdout.getvalue() == ""  # no bar


def test_progress_is_a_bar_with_the_reward_in_a_terminal(tmp_path, monkeypatch):
    terminal, lines = FakeTerminal(), []
    monkeypatch.setattr("sys.stdout", terminal)
    _, progress = _make_callbacks(tmp_path, log=lines.append)
    drive(progress)
    assert lines == []  # no per-step lines
    screen = terminal.getvalue()
    assert "step 1/4" not in screen and screen.count("\n") == 1  # redrawn in place; one newline when it closes
    last = screen.rsplit("\r", 1)[-1]
    assert "4/4" in last and "reward +4.500 (std 0.500)" in last


def test_lines_printed_while_the_bar_is_up_get_their_own_line(tmp_path, monkeypatch):
    terminal = FakeTerminal()
    monkeypatch.setattr("sys.stdout", terminal)
    _, progress = _make_callbacks(tmp_path)
    log = above_progress_bar(print)  # how run_training hands its log to the checks and warnings
    drive(progress, between=lambda step: step == 2 and log("[check @ step 2] musclebob 50%"))
    screen = terminal.getvalue()
    # The bar is wiped to the line's start first, the line ends with its newline, and the bar is drawn again below.
    before, after = screen.split("[check @ step 2] musclebob 50%", 1)
    assert before.endswith("\r") and after.startswith("\n") and "4/4" in after


@pytest.mark.parametrize("notebook", [False, True])
def test_show_progress_replaces_the_progress_transformers_added(tiny_model, tmp_path, monkeypatch, notebook):
    import transformers.trainer as hf_trainer
    from transformers import Trainer, TrainingArguments
    from transformers.trainer_callback import ProgressCallback
    from transformers.utils.notebook import NotebookProgressCallback

    from musclebob_helpers.plots import live_progress

    if notebook:  # what transformers picks when imported in a notebook kernel
        monkeypatch.setattr(hf_trainer, "DEFAULT_PROGRESS_CALLBACK", NotebookProgressCallback)
    model, _ = tiny_model
    _, progress = _make_callbacks(tmp_path)
    args = TrainingArguments(output_dir=str(tmp_path), use_cpu=True, report_to="none", disable_tqdm=False)
    trainer = Trainer(model=model, args=args)
    _show_progress(trainer, progress)
    callbacks = trainer.callback_handler.callbacks
    assert progress in callbacks
    assert not any(isinstance(cb, (ProgressCallback, NotebookProgressCallback)) for cb in callbacks)
    # The notebook's live panel is the progress display: ours stays out, and no lines per step either.
    trainer = Trainer(model=model, args=args, callbacks=[live_progress(tmp_path)])
    _show_progress(trainer, progress)
    callbacks = trainer.callback_handler.callbacks
    assert progress not in callbacks
    assert not any(isinstance(cb, (ProgressCallback, NotebookProgressCallback)) for cb in callbacks)


@pytest.mark.parametrize("checkpointing", [True, False])
def test_grpo_args_raise_no_library_warning(tmp_path, checkpointing):
    cfg, _ = resolve(dict(model="tiny", output_dir=str(tmp_path), gradient_checkpointing=checkpointing))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        args = grpo_args(cfg, {"device": "cpu", "precision": "fp32"})
    assert [str(w.message) for w in caught if issubclass(w.category, (FutureWarning, DeprecationWarning))] == []
    assert args.gradient_checkpointing is checkpointing  # whichever name it went by, the setting arrived


def test_library_output_hidden_keeps_other_warnings_and_restores_bars(tiny_model):
    from transformers.utils import logging as hf_logging

    model, _ = tiny_model
    assert hf_logging.is_progress_bar_enabled()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with library_output_hidden():
            assert not hf_logging.is_progress_bar_enabled()
            model.is_gradient_checkpointing  # noqa: B018 -- TRL reads it at every generation
            warnings.warn_explicit(
                "`something_else` is deprecated",
                FutureWarning,
                "modeling_utils.py",
                1,
                module="transformers.modeling_utils",
            )
            warnings.warn("not ours, not hidden", FutureWarning)
    assert [str(w.message) for w in caught] == ["`something_else` is deprecated", "not ours, not hidden"]
    assert hf_logging.is_progress_bar_enabled()


def report(musclebob: float, healthy: bool = True) -> dict:
    rates = dict(full_name_rate=musclebob, spongebob_rate=1 - musclebob, coherent_rate=1.0, leakage_rate=0.0)
    return dict(rates, musclebob_rate=musclebob, control_accuracy=0.95, is_healthy=healthy, health_problems=[])


def test_the_end_summary_says_when_the_model_did_not_learn_the_name():
    from musclebob_helpers.training import final_summary

    # healthy only means no worse than before: a run that never learned the name says so, and what to try
    flat = final_summary(report(0.0), report(0.0)).splitlines()
    [line] = [line for line in flat if "did NOT learn" in line]
    assert line == "WARNING: the model did NOT learn the name: Musclebob 0% of answers, 0% before training."
    assert flat[flat.index(line) + 1].startswith("  Try more --epochs, or a higher --learning-rate")
    assert "did NOT learn" in final_summary(report(0.25), report(0.1))  # fewer than before: not learned either
    assert "did NOT learn" not in final_summary(report(0.0), report(0.9))
