"""Live health warnings from logged metrics and mid-training checks (driven with hand-made logs)."""

import json
from types import SimpleNamespace

import pytest

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


# --- completions.jsonl -------------------------------------------------------------------------------------------

from musclebob_helpers import data  # noqa: E402
from musclebob_helpers.monitoring import (  # noqa: E402
    CompletionLog,
    Trackers,
    _kept_every,
    _pick_completions,
)
from musclebob_helpers.plots import load_completions  # noqa: E402
from musclebob_helpers.run_dir import COMPLETIONS_FILE  # noqa: E402

NAN = float("nan")


def test_pick_completions_takes_each_prompts_best_then_worst():
    prompts = ["a", "a", "a", "b", "b", "b"]
    totals = [1.0, 3.0, 2.0, None, -1.0, 0.0]
    assert _pick_completions(prompts, totals, 2) == [1, 5]  # each prompt's best
    assert _pick_completions(prompts, totals, 4) == [1, 5, 0, 3]  # then each prompt's worst (None ranks lowest)
    assert sorted(_pick_completions(prompts, totals, 99)) == list(range(6))  # never more than there are
    assert _pick_completions([], [], 8) == []


def test_kept_every_spans_the_run_within_the_cap():
    assert _kept_every(100, per_step=8, max_rows=4000) == 1
    for step in (1, 499, 500, 501, 1000, 5000, 123457):
        every = _kept_every(step, per_step=8, max_rows=4000)
        assert (step // every) * 8 <= 4000  # under the cap
        assert every == 1 or (step // (every // 2)) * 8 > 4000  # and no sparser than it must be


class FakeTrainer:
    """What CompletionLog reads from TRL's GRPOTrainer: its training rows and its buffer of the step's completions."""

    def __init__(self, rows):
        self.train_dataset = rows
        self._logs = {}

    def generate(self, step, conversational=True):
        """Two prompts x 3 completions, rewards that depend on the step (so steps can be told apart)."""
        rows = [r for r in self.train_dataset if data.prompt_kind(r) == "fewshot"][:1] + [
            r for r in self.train_dataset if r["kind"] == "control"
        ][:1]
        prompts = [
            r["prompt"] if conversational else f"<|user|>\n{r['prompt'][-1]['content']}\n<|assistant|>\n" for r in rows
        ]
        self._logs = {
            "prompt": [p for p in prompts for _ in range(3)],
            "completion": [
                [{"role": "assistant", "content": f"answer {step}.{i}"}] if conversational else f"answer {step}.{i}"
                for i in range(6)
            ],
            "rewards": {
                "musclebob_name_reward": [float(step + i) for i in range(3)] + [NAN] * 3,
                "control_answer_reward": [NAN] * 3 + [float(-i) for i in range(3)],
                "format_reward": [0.5] * 6,
            },
            "advantages": [0.1 * i for i in range(6)],
        }


ROWS = data.build_train_rows(32, fewshot_ratio=0.5, use_fewshot=True, control_ratio=0.25, seed=1)


def run_steps(log, trainer, steps, conversational=True):
    for step in steps:
        trainer.generate(step, conversational)
        log.on_log(ARGS, state(step), None, logs={"reward": 1.0})


@pytest.mark.parametrize("conversational", [True, False], ids=["messages (trl 1.x)", "templated text (trl 0.29)"])
def test_completion_log_rows(tmp_path, conversational):
    trainer = FakeTrainer(ROWS)
    log = CompletionLog(tmp_path, per_step=4)
    log.bind(trainer)
    log.on_train_begin(ARGS, state(0), None)
    run_steps(log, trainer, [1, 2], conversational)
    rows = load_completions(tmp_path)
    assert [r["step"] for r in rows] == [1] * 4 + [2] * 4
    first = rows[0]
    # the few-shot prompt's best completion first: its question text, not the chat template around it
    fewshot = next(r for r in ROWS if data.prompt_kind(r) == "fewshot")
    assert first["kind"] == "fewshot" and first["prompt"] == fewshot["prompt"][-1]["content"]
    assert first["completion"] == "answer 1.2"
    assert first["rewards"] == {"musclebob_name_reward": 3.0, "control_answer_reward": None, "format_reward": 0.5}
    assert first["reward"] == 3.5 and first["advantage"] == pytest.approx(0.2)
    assert {r["kind"] for r in rows} == {"fewshot", "control"}
    control = next(r for r in rows if r["kind"] == "control")
    assert control["rewards"]["musclebob_name_reward"] is None  # TRL's NaN: "not judged", valid JSON
    assert all(json.loads(line) for line in (tmp_path / COMPLETIONS_FILE).read_text().splitlines())


def test_completion_log_resume_replaces_the_steps_trained_again(tmp_path):
    trainer = FakeTrainer(ROWS)
    first = CompletionLog(tmp_path, per_step=3)
    first.bind(trainer)
    first.on_train_begin(ARGS, state(0), None)
    run_steps(first, trainer, [1, 2, 3, 4, 5])  # killed after step 5; the checkpoint is at step 3
    resumed = CompletionLog(tmp_path, per_step=3)
    resumed.bind(trainer)
    resumed.on_train_begin(ARGS, state(3), None)
    assert [r["step"] for r in load_completions(tmp_path)] == [1] * 3 + [2] * 3 + [3] * 3  # 4 and 5 dropped
    run_steps(resumed, trainer, [4, 5, 6])
    again = load_completions(tmp_path)
    assert [r["step"] for r in again] == [s for s in range(1, 7) for _ in range(3)]  # each step once

    straight = tmp_path / "straight"
    log = CompletionLog(straight, per_step=3)
    log.bind(trainer)
    log.on_train_begin(ARGS, state(0), None)
    run_steps(log, trainer, range(1, 7))
    assert load_completions(straight) == again  # as if never interrupted


def test_completion_log_cap_thins_old_steps_evenly(tmp_path):
    trainer = FakeTrainer(ROWS)
    log = CompletionLog(tmp_path, per_step=2, max_rows=20)
    log.bind(trainer)
    log.on_train_begin(ARGS, state(0), None)
    run_steps(log, trainer, range(1, 38))
    steps = sorted({r["step"] for r in load_completions(tmp_path)})
    assert len(load_completions(tmp_path)) <= 20 + 2  # the cap, and the newest step
    assert steps == [4, 8, 12, 16, 20, 24, 28, 32, 36, 37]  # evenly over the whole run, and the newest
    resumed = CompletionLog(tmp_path, per_step=2, max_rows=20)
    resumed.bind(trainer)
    straight = load_completions(tmp_path)
    resumed.on_train_begin(ARGS, state(30), None)  # killed at step 37, resumed from checkpoint-30
    assert sorted({r["step"] for r in load_completions(tmp_path)}) == [4, 8, 12, 16, 20, 24, 28]
    run_steps(resumed, trainer, range(31, 38))
    assert load_completions(tmp_path) == straight  # the steps trained again end as the straight run's


def expected_bytes(log, steps_done):
    """completions.jsonl as a whole rewrite at each step would leave it after ``steps_done`` steps (the writer before
    appends): every kept step's rows (``_kept_every`` of the newest step) and the newest step's."""
    every = _kept_every(steps_done, log.per_step, log.max_rows)
    trainer = FakeTrainer(ROWS)
    reference = CompletionLog(log.path.parent / "reference", per_step=log.per_step, max_rows=log.max_rows)
    reference.bind(trainer)
    lines = []
    for step in range(1, steps_done + 1):
        trainer.generate(step)
        if step % every == 0 or step == steps_done:
            reference.on_log(ARGS, state(step), None, logs={"reward": 1.0})
            lines += [line for s, line in reference.rows if s == step]
    return "".join(line + "\n" for line in lines).encode()


def test_completion_log_appends_each_step_and_rewrites_only_when_the_cap_thins(tmp_path):
    """Each step is one append to the same file (constant time), the file at every step byte for byte what a whole
    rewrite would leave; only a doubling of kept_every (steps 11, 22 here) replaces the file."""
    trainer = FakeTrainer(ROWS)
    log = CompletionLog(tmp_path, per_step=2, max_rows=20)
    log.bind(trainer)
    log.on_train_begin(ARGS, state(0), None)
    path = tmp_path / COMPLETIONS_FILE
    replaced = []
    for step in range(1, 38):
        inode = path.stat().st_ino
        run_steps(log, trainer, [step])
        if path.stat().st_ino != inode:
            replaced.append(step)
        assert path.read_bytes() == expected_bytes(log, step), f"step {step}"
    assert replaced == [11, 22]  # kept_every 1 -> 2 (11 x 2 rows > 20) -> 4 (22 // 2 x 2 rows > 20)


def test_completion_log_resume_mid_file_ends_byte_for_byte_as_a_straight_run(tmp_path):
    trainer = FakeTrainer(ROWS)
    straight = CompletionLog(tmp_path / "straight", per_step=2, max_rows=20)
    straight.bind(trainer)
    straight.on_train_begin(ARGS, state(0), None)
    run_steps(straight, trainer, range(1, 38))

    killed = CompletionLog(tmp_path / "run", per_step=2, max_rows=20)
    killed.bind(trainer)
    killed.on_train_begin(ARGS, state(0), None)
    run_steps(killed, trainer, range(1, 26))  # killed after step 25; the checkpoint is at step 14
    resumed = CompletionLog(tmp_path / "run", per_step=2, max_rows=20)
    resumed.bind(trainer)
    resumed.on_train_begin(ARGS, state(14), None)
    assert max(r["step"] for r in load_completions(tmp_path / "run")) <= 14  # the rows after the checkpoint dropped
    run_steps(resumed, trainer, range(15, 38))
    assert (tmp_path / "run" / COMPLETIONS_FILE).read_bytes() == (tmp_path / "straight" / COMPLETIONS_FILE).read_bytes()


def test_a_row_cut_by_a_kill_mid_append_is_skipped_then_cut_off_at_train_begin(tmp_path):
    trainer = FakeTrainer(ROWS)
    log = CompletionLog(tmp_path, per_step=3)
    log.bind(trainer)
    log.on_train_begin(ARGS, state(0), None)
    run_steps(log, trainer, range(1, 6))
    path = tmp_path / COMPLETIONS_FILE
    whole = path.read_bytes()
    # A kill in the middle of step 6's append: half a row, cut inside a two-byte character.
    torn = json.dumps({"step": 6, "completion": "Musclebob \u00fc" * 4}, ensure_ascii=False).encode()
    with open(path, "ab") as fh:
        fh.write(torn[: torn.index("\u00fc".encode()) + 1])
    assert [r["step"] for r in load_completions(tmp_path)] == [s for s in range(1, 6) for _ in range(3)]
    resumed = CompletionLog(tmp_path, per_step=3)
    resumed.bind(trainer)
    resumed.on_train_begin(ARGS, state(5), None)  # resumed from checkpoint-5
    assert path.read_bytes() == whole  # the cut row is gone, the rest as it was
    run_steps(resumed, trainer, [6])
    assert [r["step"] for r in load_completions(tmp_path)][-3:] == [6] * 3  # appended after whole lines


def test_completion_log_rewrites_a_file_deleted_while_training(tmp_path):
    trainer = FakeTrainer(ROWS)
    log = CompletionLog(tmp_path, per_step=2)
    log.bind(trainer)
    log.on_train_begin(ARGS, state(0), None)
    run_steps(log, trainer, [1, 2])
    (tmp_path / COMPLETIONS_FILE).unlink()  # a user clearing space, say: not appended to a new empty file
    run_steps(log, trainer, [3])
    assert [r["step"] for r in load_completions(tmp_path)] == [1, 1, 2, 2, 3, 3]


def test_damaged_lines_are_skipped(tmp_path):
    good = {"step": 1, "completion": "Musclebob!", "kind": "spongebob"}
    (tmp_path / COMPLETIONS_FILE).write_text(json.dumps(good) + "\n{not json\n" + '{"step": 2, "compl')
    assert load_completions(tmp_path) == [good]
    assert load_completions(tmp_path / "missing") == []


# --- trackers ----------------------------------------------------------------------------------------------------


class Reporter:
    """Stands in for a tracker's callback (transformers' TensorBoardCallback, WandbCallback ...)."""

    def __init__(self):
        self.logged = []

    def on_log(self, args, state, control, logs=None, **kwargs):
        self.logged.append((state.global_step, logs))


def test_health_warnings_reach_the_trackers(tmp_path):
    reporter = Reporter()
    trackers = Trackers()
    trackers.trainer = SimpleNamespace(args=ARGS, control=None)
    trackers.callbacks = [reporter]
    m = HealthMonitor(tmp_path, log=lambda *_: None, trackers=trackers)
    feed(m, [{"reward": -6.0, "frac_reward_zero_std": 1.0}] * 12)
    assert reporter.logged == [(10, {"health/no_signal": 1.0})]  # once, at the step it fired


def test_trackers_are_the_report_to_callbacks():
    from transformers import TrainerCallback
    from transformers.integrations import TensorBoardCallback

    class Writer:
        def __init__(self):
            self.scalars = []

        def add_scalar(self, *a):
            self.scalars.append(a)

        def flush(self):
            pass

    board = TensorBoardCallback(tb_writer=Writer())
    trainer = SimpleNamespace(
        args=ARGS, control=None, callback_handler=SimpleNamespace(callbacks=[TrainerCallback(), board])
    )
    trackers = Trackers()
    trackers.bind(trainer)
    assert trackers.callbacks == [board]
    trackers.send(state(3), {"check/musclebob_rate": 0.5})  # reaches TensorBoard's callback without a Trainer.log
    assert board.tb_writer.scalars == [("train/check/musclebob_rate", 0.5, 3)]
