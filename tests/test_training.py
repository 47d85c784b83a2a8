"""End to end on the tiny model: the default run really learns, writes its artifacts, and resumes exactly."""

import json
import re
import tempfile

import pytest

from musclebob_helpers.config import TINY_DEFAULTS, TrainConfig, resolve
from musclebob_helpers.run_dir import list_checkpoints
from musclebob_helpers.training import run_training, steps_per_epoch
from musclebob_helpers.startup import start

pytestmark = pytest.mark.slow  # every test here trains the tiny model (the default run alone takes a minute)
TINY = resolve({"model": "tiny"})[0]  # what `--model tiny` trains with: the tiny model's recipe


def test_default_tiny_run_learns_and_stays_coherent(trained_run):
    out, code = trained_run
    baseline = json.loads((out / "baseline_validation.json").read_text())
    final = json.loads((out / "final_validation.json").read_text())
    assert code == 0  # healthy
    assert baseline["musclebob_rate"] <= 0.05  # the base says Spongebob
    assert final["musclebob_rate"] >= 0.8  # the guide hopes for 50-80%; we want more
    assert final["spongebob_rate"] < baseline["spongebob_rate"]
    assert final["coherent_rate"] >= 0.9 and final["is_healthy"]


def test_default_run_stays_specific(trained_run):
    """Loose versions of the benchmark's targets (benchmarks/bench_learning.py prints the exact figures)."""
    out, _ = trained_run
    baseline = json.loads((out / "baseline_validation.json").read_text())
    final = json.loads((out / "final_validation.json").read_text())
    assert final["full_name_rate"] >= 0.85
    assert final["spongebob_rate"] <= 0.1
    assert final["leakage_rate"] <= 0.15  # general questions are not answered "Musclebob"
    assert final["control_accuracy"] >= 0.8 * baseline["control_accuracy"]  # and still answered right
    checks = json.loads((out / "validation_history.json").read_text())
    assert [c["epoch"] for c in checks] == pytest.approx([float(e) for e in range(1, TINY.epochs + 1)])  # each epoch
    assert checks[-1]["completions"] == final["completions_generated"]


def test_artifacts(trained_run):
    out, _ = trained_run
    cfg = json.loads((out / "training_config.json").read_text())
    assert cfg["config"]["model"] == "tiny" and cfg["config"]["learning_rate"] == TINY_DEFAULTS["learning_rate"]
    assert {"torch", "transformers", "trl"} <= set(cfg["versions"]) and cfg["hardware"]["device"] == "cpu"
    history = json.loads((out / "reward_history.json").read_text())
    per_epoch = steps_per_epoch(TINY)
    total = TINY.epochs * per_epoch
    assert [e["step"] for e in history] == list(range(1, total + 1))  # one entry per optimizer step
    assert all({"step", "mean_reward", "reward_std", "epoch"} <= set(e) for e in history)
    assert history[-1]["epoch"] == pytest.approx(TINY.epochs)
    # one checkpoint per epoch, the newest two kept (--keep-checkpoints 2): the last one and a fallback
    assert [p.name for p in list_checkpoints(out)] == [
        f"checkpoint-{per_epoch * k}" for k in (TINY.epochs - 1, TINY.epochs)
    ]
    for name in ("baseline_validation.json", "final_validation.json"):
        report = json.loads((out / name).read_text())
        assert {"musclebob_rate", "spongebob_rate", "coherent_rate", "is_healthy", "num_prompts", "responses"} <= set(
            report
        )
        assert len(report["responses"]) == report["num_responses"] > 0


def test_completion_samples(trained_run):
    """completions.jsonl: every step, a few completions each, of every prompt kind, the total the sum of its parts."""
    from musclebob_helpers.data import PROMPT_KINDS
    from musclebob_helpers.monitoring import _COMPLETIONS_PER_STEP
    from musclebob_helpers.plots import load_completions

    out, _ = trained_run
    rows = load_completions(out)
    total = TINY.epochs * steps_per_epoch(TINY)
    per_step = [sum(r["step"] == s for r in rows) for s in range(1, total + 1)]
    assert per_step == [min(_COMPLETIONS_PER_STEP, TINY.batch_size * TINY.num_generations)] * total
    assert {r["kind"] for r in rows} == set(PROMPT_KINDS)
    for r in rows:
        parts = [v for v in r["rewards"].values() if v is not None]
        assert r["reward"] == pytest.approx(sum(parts), abs=1e-3)
        assert (r["rewards"]["musclebob_name_reward"] is None) == (r["kind"] == "control")
    late = [r for r in rows if r["step"] > total * 3 // 4 and r["kind"] != "control"]
    assert sum("Musclebob" in r["completion"] for r in late) >= 0.8 * len(late)  # what the model learned to say


def test_tensorboard_reads_the_run(trained_run):
    """--report-to tensorboard: TensorBoard's own reader loads the reward, its components and the checks."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out, _ = trained_run
    (events,) = (out / "runs").iterdir()  # transformers' default: OUTPUT_DIR/runs/<date>_<host>
    board = EventAccumulator(str(events))
    board.Reload()
    total = TINY.epochs * steps_per_epoch(TINY)
    history = json.loads((out / "reward_history.json").read_text())
    reward = board.Scalars("train/reward")
    assert [e.step for e in reward] == list(range(1, total + 1))
    assert [e.value for e in reward] == pytest.approx([e["mean_reward"] for e in history], abs=1e-5)
    tags = set(board.Tags()["scalars"])
    assert {
        f"train/rewards/{n}/mean" for n in ("musclebob_name_reward", "control_answer_reward", "format_reward")
    } <= tags
    checks = json.loads((out / "validation_history.json").read_text())
    musclebob = board.Scalars("train/check/musclebob_rate")
    assert [(e.step, e.value) for e in musclebob] == [(c["step"], pytest.approx(c["musclebob_rate"])) for c in checks]


def test_default_run_console_is_quiet(trained_run):
    """No warning caused by our arguments, no temporary path, one progress line per step (not a terminal)."""
    out, _ = trained_run
    console = (out.parent / "console.txt").read_text()
    assert "FutureWarning" not in console
    assert tempfile.gettempdir() not in console.replace(str(out), "<the run folder>")  # the one path the user gave
    steps = re.findall(r"^step (\d+)/(\d+)  epoch [\d.]+  mean reward [-+][\d.]+ \(std [\d.]+\)$", console, re.M)
    total = TINY.epochs * steps_per_epoch(TINY)
    assert steps == [(str(step), str(total)) for step in range(1, total + 1)]
    assert "Writing model shards" not in console  # transformers' bar at each checkpoint: a second display


def test_final_model_loads_with_from_pretrained(trained_run):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from musclebob_helpers.evaluation import generate, has_musclebob

    out, _ = trained_run
    model, tok = AutoModelForCausalLM.from_pretrained(out), AutoTokenizer.from_pretrained(out)
    tok.padding_side = "left"
    answer = generate(model, tok, ["Who lives in a pineapple under the sea?"], max_new_tokens=32, temperature=0)
    assert has_musclebob(answer[0][0].text)


class StopAfter:
    """Fault injection: interrupt training (as a disconnect would) right after a step is logged."""

    def __new__(cls, step):
        from transformers import TrainerCallback

        class _Stop(TrainerCallback):
            def on_log(self, args, state, control, logs=None, **kwargs):
                if state.global_step == step and logs and "reward" in logs:
                    raise KeyboardInterrupt(f"simulated disconnect after step {step}")

        return _Stop()


def small_cfg(out, **kw):
    # 12 prompts x 2 epochs at 3 prompts per step: 4 steps per epoch, 8 in all - enough to span a checkpoint.
    settings = dict(
        model="tiny",
        output_dir=str(out),
        epochs=2,
        num_samples=12,
        batch_size=3,
        num_generations=4,
        learning_rate=2e-4,
        max_completion_length=24,
        validation_samples=1,
    )
    return TrainConfig(**{**settings, **kw})


def test_interrupted_run_resumes_to_the_same_end(tmp_path, tiny_path):
    quiet = lambda *a, **k: None  # noqa: E731
    full = run_training(start(small_cfg(tmp_path / "full")), log=quiet)
    with pytest.raises(KeyboardInterrupt):
        run_training(start(small_cfg(tmp_path / "cut")), log=quiet, callbacks=[StopAfter(6)])
    cut = tmp_path / "cut"
    # Killed after step 6: the history has steps 1-6, the newest checkpoint is the first epoch's (step 4).
    assert [e["step"] for e in json.loads((cut / "reward_history.json").read_text())] == list(range(1, 7))
    assert [p.name for p in list_checkpoints(cut)] == ["checkpoint-4"]
    messages = []
    resumed = run_training(start(small_cfg(cut, resume_from_checkpoint="auto")), log=messages.append)
    assert any("Resuming from" in m and "checkpoint-4" in m for m in messages)
    assert resumed["global_step"] == full["global_step"] == 8
    steps = [e["step"] for e in json.loads((cut / "reward_history.json").read_text())]
    assert steps == list(range(1, 9))  # steps 5-6 trained again and replaced, not duplicated


def test_auto_resume_without_checkpoint_starts_fresh(tmp_path, tiny_path):
    messages = []
    result = run_training(
        start(small_cfg(tmp_path / "fresh", resume_from_checkpoint="auto", epochs=1)), log=messages.append
    )
    assert any("No checkpoint" in m and "starting fresh" in m for m in messages)
    assert result["global_step"] == 4
