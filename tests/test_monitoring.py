"""Live health warnings from logged metrics and mid-training checks (driven with hand-made logs)."""

import json
from types import SimpleNamespace

from musclebob_helpers.monitoring import HealthMonitor, completions_to_reach
from musclebob_helpers.run_dir import WARNINGS_FILE


def state(step):
    return SimpleNamespace(global_step=step, is_world_process_zero=True, epoch=step / 10)


ARGS = SimpleNamespace(max_completion_length=32)


def feed(monitor, logs_per_step):
    for step, logs in enumerate(logs_per_step, start=1):
        monitor.on_log(ARGS, state(step), None, logs=logs)


def kinds(monitor):
    return [w["kind"] for w in monitor.warnings]


def test_no_signal_warns_once_and_is_written(tmp_path):
    seen = []
    m = HealthMonitor(tmp_path, log=seen.append)
    feed(m, [{"reward": -6.0, "frac_reward_zero_std": 1.0}] * 15)
    assert kinds(m) == ["no_signal"]  # once, not every step
    assert "no learning signal" in seen[0] and "WARNING" in seen[0]
    assert json.loads((tmp_path / WARNINGS_FILE).read_text())[0]["kind"] == "no_signal"


def test_uniform_groups_after_learning_are_convergence_not_a_warning(tmp_path):
    m = HealthMonitor(tmp_path, log=lambda *_: None)
    rising = [{"reward": -6.0 + 0.5 * i, "frac_reward_zero_std": 0.2} for i in range(24)]
    converged = [{"reward": 6.0, "frac_reward_zero_std": 1.0}] * 20
    feed(m, rising + converged)
    assert m.warnings == []


def test_length_limit_and_reward_collapse(tmp_path):
    m = HealthMonitor(tmp_path, log=lambda *_: None)
    rising = [{"reward": float(i), "frac_reward_zero_std": 0.0} for i in range(20)]
    crash = [{"reward": 0.0, "frac_reward_zero_std": 0.0, "completions/clipped_ratio": 0.9}] * 10
    feed(m, rising + crash)
    assert set(kinds(m)) == {"length_limit", "reward_collapse"}


def test_early_noise_is_no_collapse(tmp_path):
    m = HealthMonitor(tmp_path, log=lambda *_: None)
    # Batches mix SpongeBob and control prompts, so per-step means jump around by a point or two.
    noisy = (-2, -1, -3, 0, -3, -4, -1, -4, 0, -3, -2, -3, -1, -4, -2, -1, -3, -4, -1, -2)
    feed(m, [{"reward": r, "frac_reward_zero_std": 0.0} for r in noisy])
    assert m.warnings == []


def test_mid_training_check_warnings(tmp_path):
    m = HealthMonitor(tmp_path, baseline={"num_control_prompts": 5, "control_accuracy": 0.9}, log=lambda *_: None)
    good = {"coherent_rate": 1.0, "leakage_rate": 0.0, "control_accuracy": 0.9, "num_control_prompts": 5}
    m.check_validation(state(4), good)
    assert m.warnings == []
    m.check_validation(state(8), {**good, "coherent_rate": 0.5, "leakage_rate": 0.6, "control_accuracy": 0.3})
    assert set(kinds(m)) == {"validation_coherence", "validation_leakage", "validation_control"}


def test_completions_to_reach():
    history = [
        {"step": 4, "completions": 128, "musclebob_rate": 0.5},
        {"step": 8, "completions": 256, "musclebob_rate": 0.92},
        {"step": 12, "completions": 384, "musclebob_rate": 1.0},
    ]
    assert completions_to_reach(history, "musclebob_rate", 0.9) == 256
    assert completions_to_reach(history, "musclebob_rate", 1.01) is None
