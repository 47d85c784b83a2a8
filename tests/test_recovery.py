"""--on-collapse: a mid-training check that finds the model broken sends it back to the last healthy check with the
learning rate cut to a quarter (at most twice, then one line), or warns, or stops; a check that keeps less than
90 % of the baseline's control accuracy counts as a collapse while a recovery is left; a kill after a recovery
resumes exactly.

The collapse is forced (``fault_runner.collapsing_check``: the checks at chosen steps see every control question
answered wrong), so each test knows the step it happens at; the runs are the smallest real ones (``TINY_RUN_ARGS``:
4 steps of 3 prompts x 2 answers, 2 an epoch) with a check after every step (``validate_every=1``).
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import fault_runner
from conftest import TINY_RUN, TINY_RUN_ARGS
from musclebob_helpers import run_dir
from musclebob_helpers.config import TrainConfig
from musclebob_helpers.monitoring import HealthMonitor
from musclebob_helpers.training import _MAX_RECOVERIES, _RECOVERY_RATE_FACTOR
from musclebob_helpers.startup import start

LOWER = _RECOVERY_RATE_FACTOR  # the rate after a recovery, as a share of the one before

ROOT = Path(__file__).resolve().parent.parent
RATE = 1e-3  # any rate: the collapse is forced, not learned
SMALL = dict(
    TINY_RUN,
    validate_every=1,  # a check after every step, so a collapse can be put at any step
    learning_rate=RATE,
    lr_scheduler="constant_with_warmup",
)


def small_config(out, **changes) -> TrainConfig:
    from musclebob_helpers.config import resolve

    return resolve({**SMALL, "output_dir": str(out), **changes})[0]


class Watch:
    """A trainer callback that keeps, after each step's checks, the trainable weights, Adam's first moments and the
    scheduler's base rate (the caller's callbacks run after the project's, so after a recovery's restore)."""

    def __init__(self):
        from transformers import TrainerCallback

        self.weights, self.moments, self.base_rate, self.group_rates = {}, {}, {}, {}
        watch = self

        class Cb(TrainerCallback):
            def on_step_end(self, args, state, control, model=None, optimizer=None, lr_scheduler=None, **kwargs):
                params = [p for p in model.parameters() if p.requires_grad]
                watch.weights[state.global_step] = [p.detach().clone() for p in params]
                moments = optimizer.state_dict()["state"]
                watch.moments[state.global_step] = [moments[i]["exp_avg"].clone() for i in sorted(moments)]
                watch.base_rate[state.global_step] = lr_scheduler.base_lrs[0]
                watch.group_rates[state.global_step] = [g["initial_lr"] for g in optimizer.param_groups]

        self.callback = Cb()


def same(a, b) -> bool:
    import torch

    return len(a) == len(b) and all(torch.equal(x, y) for x, y in zip(a, b))


def train_forced(monkeypatch, out, collapse_at, **changes):
    """``run_training`` with the checks at ``collapse_at`` seeing a collapse; returns (result, lines, watch)."""
    from musclebob_helpers.training import run_training

    monkeypatch.setattr(HealthMonitor, "check_validation", fault_runner.collapsing_check(set(collapse_at)))
    lines, watch = [], Watch()
    result = run_training(start(small_config(out, **changes)), log=lines.append, callbacks=[watch.callback])
    return result, lines, watch


def segments(out):
    return json.loads((Path(out) / run_dir.CONFIG_FILE).read_text())["segments"]


def test_a_collapse_goes_back_to_the_last_healthy_check_at_a_lower_rate(tmp_path, monkeypatch):
    out = tmp_path / "run"
    result, lines, watch = train_forced(monkeypatch, out, collapse_at={3})
    # one line: what the check saw, where it goes back to, the new rate
    [line] = [line for line in lines if "recovered" in line]
    assert line.startswith(
        f"recovered at step 3 (1 of {_MAX_RECOVERIES}): the check saw general knowledge lost: control accuracy 0%"
    )
    assert f"back to the healthy state of step 2, learning rate 0.001 -> {RATE * LOWER:.3g}" in line
    assert not [line for line in lines if line.startswith("WARNING")]  # the recovery's line replaces the warning
    # the weights and Adam's moments are step 2's again, and the step trained at the lower rate after them differs
    assert same(watch.weights[3], watch.weights[2]) and same(watch.moments[3], watch.moments[2])
    assert not same(watch.weights[4], watch.weights[3])
    assert watch.base_rate[2] == RATE and watch.base_rate[3] == RATE * LOWER
    assert all(rate == RATE * LOWER for rate in watch.group_rates[3])
    # recorded: training_config.json's segments, health_warnings.json (the plot's mark), the final report
    assert segments(out)[1:] == [
        {
            "from_step": 3,
            "changed": {"learning_rate": [RATE, RATE * LOWER]},
            "recovery": {"number": 1, "back_to": 2, "saw": [line.split("saw ")[1].split("; back")[0]]},
        }
    ]
    [entry] = json.loads((out / run_dir.WARNINGS_FILE).read_text())
    assert entry["kind"] == "recovery" and entry["step"] == 3 and entry["back_to"] == 2
    assert result["final"]["health_warnings"] == [line] and result["global_step"] == 4  # the run ends as planned


def test_the_last_recovery_then_a_one_line_stop(tmp_path, monkeypatch, capsys):
    import train_musclebob_improved

    out = tmp_path / "run"
    # the 4 steps' checks all collapse: recoveries at 1 and 2 (each back to step 0), the stop at 3
    assert _MAX_RECOVERIES == 2  # the steps below are laid out for it
    monkeypatch.setattr(HealthMonitor, "check_validation", fault_runner.collapsing_check({1, 2, 3, 4}))
    argv = [*TINY_RUN_ARGS, "--validate-every", "1", "--learning-rate", str(RATE), "--output-dir", str(out)]
    code = train_musclebob_improved.main(argv)
    err = capsys.readouterr().err
    assert code == 1
    [line] = [line for line in err.splitlines() if "stopped" in line]
    assert line.startswith(
        "train_musclebob_improved.py: stopped after 2 recoveries at step 3: the mid-training check saw general"
    )
    assert "checkpoint-3 holds the healthy state of step 0" in line
    now, lower = RATE * LOWER**2, RATE * LOWER**3
    assert f"(now {now:.3g}, try {lower:.3g})" in line and line.endswith("--resume-from-checkpoint auto")
    assert f"--learning-rate {lower:.3g}" in line  # the command to resume with says the lower rate
    rates = [seg["changed"]["learning_rate"] for seg in segments(out)[1:]]
    assert rates == [[RATE * LOWER**i, RATE * LOWER ** (i + 1)] for i in range(2)]  # each recovery lowers it again
    assert not (out / run_dir.FINAL_FILE).exists()  # stopped: no final model
    # the checkpoint it stops with holds the healthy state: step 0's, as checkpoint-2 (after the recovery at 2) does
    a, b = fault_runner_weights(out / "checkpoint-2"), fault_runner_weights(out / "checkpoint-3")
    assert a.keys() == b.keys() and all(same([a[k]], [b[k]]) for k in a)
    kinds = [w["kind"] for w in json.loads((out / run_dir.WARNINGS_FILE).read_text())]
    assert kinds == ["recovery", "recovery", "collapse_stop"]


def test_a_drift_below_90_percent_kept_recovers_while_a_recovery_is_left(tmp_path, monkeypatch):
    # every check keeps 85 % of the baseline's control accuracy: healthy to the health report (80 %), a collapse to
    # a recovery (90 %) until none is left; then the run trains on to its planned end, with a final model
    out = tmp_path / "run"
    monkeypatch.setattr(HealthMonitor, "check_validation", fault_runner.collapsing_check({1, 2, 3, 4}, kept=0.85))
    from musclebob_helpers.training import run_training

    lines = []
    result = run_training(start(small_config(out)), log=lines.append)
    assert [line.split(" (")[0] for line in lines if "recovered" in line] == [
        f"recovered at step {step}" for step in range(1, _MAX_RECOVERIES + 1)
    ]
    assert not [line for line in lines if line.startswith("WARNING")]  # 85 % kept is no collapse to the report
    assert result["global_step"] == 4 and (out / run_dir.FINAL_FILE).exists()
    card = (out / "README.md").read_text()  # the model card names each recovery
    recoveries = [x for x in card.splitlines() if x.startswith("- step ")]
    assert "## Recoveries from a collapse" in card and len(recoveries) == _MAX_RECOVERIES
    # warn: the same drift is healthy, as the health report says
    lines = []
    run_training(start(small_config(tmp_path / "warn", on_collapse="warn")), log=lines.append)
    assert not [line for line in lines if "recovered" in line or line.startswith("WARNING")]


def fault_runner_weights(path):
    from safetensors.torch import load_file

    return load_file(str(Path(path) / "model.safetensors"))


def test_warn_trains_on_as_before(tmp_path, monkeypatch):
    out = tmp_path / "run"
    result, lines, watch = train_forced(monkeypatch, out, collapse_at={3}, on_collapse="warn")
    assert [line for line in lines if line.startswith("WARNING (step 3): mid-training check: general knowledge")]
    assert not [line for line in lines if "recovered" in line]
    assert not same(watch.weights[3], watch.weights[2]) and watch.base_rate[3] == RATE
    assert len(segments(out)) == 1 and result["global_step"] == 4


def test_stop_stops_at_the_first_collapse_in_one_notebook_line(tmp_path, monkeypatch):
    from musclebob_helpers import notebook

    out = tmp_path / "run"
    monkeypatch.setattr(HealthMonitor, "check_validation", fault_runner.collapsing_check({3}))
    with pytest.raises(notebook.NotebookStop) as stop:
        notebook.train(small_config(out, on_collapse="stop"), live=False, log=lambda *a, **k: None)
    line = str(stop.value)
    assert line.startswith("stopped at step 3: the mid-training check saw general knowledge lost")
    assert "checkpoint-3 holds the healthy state of step 2" in line
    assert line.endswith(f"set learning_rate = {RATE * LOWER:.3g} and a new run_name")
    assert stop.value._render_traceback_() == [f"NotebookStop: {line}"]  # one line, no traceback
    a, b = fault_runner_weights(out / "checkpoint-2"), fault_runner_weights(out / "checkpoint-3")
    assert all(same([a[k]], [b[k]]) for k in a)  # saved at step 3: step 2's healthy state
    assert len(segments(out)) == 1  # stopping changes no rate


def test_segments_keep_a_recovery_across_a_resume(tmp_path):
    from musclebob_helpers.io import write_json_atomic

    cfg = TrainConfig(model="tiny", learning_rate=2e-3)
    write_json_atomic(tmp_path / run_dir.CONFIG_FILE, {"segments": run_dir.settings_segments(tmp_path, cfg, 0)[0]})
    run_dir.add_recovery(tmp_path, 32, 2e-3, 1e-3, {"number": 1, "back_to": 16, "saw": ["x"]})
    # a resume from the recovery's step or later keeps it (the checkpoint holds the restored state), with no
    # "changed settings" for a user who asks for the same rate; an earlier checkpoint trains the steps again
    for step, kept in ((31, 0), (32, 1), (64, 1)):
        found, changed = run_dir.settings_segments(tmp_path, cfg, step)
        assert len(run_dir.recoveries(found)) == kept and changed == {}
        assert run_dir.recovered_rate(found, cfg.learning_rate) == pytest.approx(2e-3 / 2**kept)
    # a new --learning-rate on resume is a change of the user's, lowered as the old one was
    found, changed = run_dir.settings_segments(tmp_path, TrainConfig(model="tiny", learning_rate=1e-3), 64)
    assert changed == {"learning_rate": [2e-3, 1e-3]} and run_dir.recovered_rate(found, 1e-3) == pytest.approx(5e-4)


def test_a_recovery_has_its_own_mark_on_the_reward_plot():
    from musclebob_helpers.plots import plot_rewards

    history = [{"step": s, "mean_reward": float(s), "reward_std": 0.1, "epoch": s / 4} for s in range(1, 9)]
    warnings = [
        {"step": 3, "kind": "validation_control", "message": "m"},
        {"step": 5, "kind": "recovery", "message": "recovered"},
    ]
    ax = plot_rewards({"run": history}, warnings={"run": warnings}).axes[0]
    marks = {line.get_gid(): line for line in ax.lines if line.get_gid()}
    assert {"health:recovery", "health:validation_control"} <= set(marks)
    assert marks["health:recovery"].get_marker() != marks["health:validation_control"].get_marker()
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert any(label.startswith("recovery:") for label in labels)  # an action, not labelled a warning


# --- a kill after a recovery ---------------------------------------------------------------------------------

# 3 epochs (6 steps, checkpoints at 2, 4, 6), checks at 3 and 6, both forced to collapse: the recovery at 3 goes
# back to step 0's state; checkpoint-4 carries it (run_dir.HEALTHY_STATE_FILE); the kill in step 5 resumes from
# checkpoint-4, whose lowered rate comes from the segments, and the recovery at 6 goes back to step 0 from the file.
KILL_AFTER_RECOVERY = [*TINY_RUN_ARGS[:2], "--epochs", "3", *TINY_RUN_ARGS[4:], "--seed", "42", "--validate-every", "3"]


def run_cli(out, fault, *extra):
    env = dict(os.environ, **{fault_runner.FORCE_COLLAPSE: "3,6"})
    env.setdefault("OMP_NUM_THREADS", "1")
    command = [sys.executable, str(ROOT / "tests" / "fault_runner.py"), fault, *KILL_AFTER_RECOVERY]
    return subprocess.run(
        [*command, "--output-dir", str(out), *extra], capture_output=True, text=True, env=env, cwd=ROOT, timeout=600
    )


@pytest.mark.slow  # three training processes
def test_a_kill_after_a_recovery_resumes_to_the_same_end(tmp_path):
    from test_faults import all_json_parses, rewards_by_step, weights

    from musclebob_helpers.plots import load_completions

    reference = tmp_path / "reference"
    straight = run_cli(reference, "generation:99")  # a point never reached: the forced collapses only
    assert straight.returncode == 0, straight.stderr[-2000:]
    assert straight.stdout.count("recovered at step") == 2
    out = tmp_path / "run"
    killed = run_cli(out, "generation:5")
    assert killed.returncode == -9, killed.stderr[-2000:]
    assert "recovered at step 3" in killed.stdout
    assert (out / "checkpoint-4" / run_dir.HEALTHY_STATE_FILE).is_file()  # step 0's state, saved with it
    resumed = run_cli(out, "generation:99", "--resume-from-checkpoint", "auto")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "Resuming with other settings" not in resumed.stdout  # the recovered rate is the run's, not a change
    assert (
        f"recovered at step 6 (2 of {_MAX_RECOVERIES})" in resumed.stdout
        and "back to the healthy state of step 0" in resumed.stdout
    )
    assert rewards_by_step(out) == rewards_by_step(reference)
    assert load_completions(out) == load_completions(reference)
    mine, theirs = weights(out), weights(reference)
    assert mine.keys() == theirs.keys() and all(same([mine[k]], [theirs[k]]) for k in mine)
    assert segments(out) == segments(reference)
    rates = [e["learning_rate"] for e in json.loads((out / run_dir.HISTORY_FILE).read_text())]
    assert rates == [e["learning_rate"] for e in json.loads((reference / run_dir.HISTORY_FILE).read_text())]
    all_json_parses(out)
