"""Watching a run while it trains: mid-training validation and plain-words health warnings.

``MidTrainingValidation`` samples answers to the held-out prompts every
``validate_every`` steps (or at each epoch's end) and appends the rates to
``validation_history.json``, with the number of completions generated so far.

``HealthMonitor`` reads the trainer's logged metrics and those checks and warns,
once per problem until it clears, on the console and in ``health_warnings.json``:

* no learning signal: every group's completions got the same reward for many steps;
* completions hitting the length limit;
* the reward collapsing from its best;
* coherence, leakage or control accuracy going bad in a mid-training check.
"""

from __future__ import annotations

import time
from collections import deque
from pathlib import Path

from . import evaluation
from .io import read_json, write_json_atomic
from .run_dir import VALIDATION_HISTORY_FILE, WARNINGS_FILE


NO_SIGNAL_STEPS = 10  # consecutive steps where every group had zero reward spread
CLIPPED_RATIO = 0.5  # share of completions cut off at the length limit
CLIPPED_STEPS = 3
COLLAPSE_WINDOW = 10  # steps in the moving average (batches mix prompt kinds, so one step's mean is noisy)
COLLAPSE_POINTS = 2.0  # reward points a collapse loses at least


def _callback_base():
    from transformers import TrainerCallback

    return TrainerCallback


class HealthMonitor(_callback_base()):
    """Turns logged metrics and mid-training checks into plain-words warnings."""

    def __init__(self, out_dir: str | Path, baseline: dict | None = None, log=print):
        self.path = Path(out_dir) / WARNINGS_FILE
        self.baseline = baseline
        self.log = log
        self.active: set[str] = set()  # problems warned about and not yet cleared
        self.warnings: list[dict] = []
        self.zero_std_run = 0
        self.clipped_run = 0
        self.rewards: deque[float] = deque(maxlen=COLLAPSE_WINDOW)
        self.first_avg: float | None = None
        self.best_avg: float | None = None

    def on_train_begin(self, args, state, control, **kwargs):
        old = read_json(self.path, default=[]) if state.global_step > 0 else []
        self.warnings = [w for w in old if isinstance(w, dict) and w.get("step", 0) <= state.global_step]

    def _set(self, state, kind: str, bad: bool, message: str) -> None:
        if bad and kind not in self.active:
            self.active.add(kind)
            entry = {"step": state.global_step, "kind": kind, "message": message, "time": round(time.time(), 2)}
            self.warnings.append(entry)
            self.log(f"WARNING (step {state.global_step}): {message}")
            if state.is_world_process_zero:
                write_json_atomic(self.path, self.warnings)
        elif not bad:
            self.active.discard(kind)

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not logs or "reward" not in logs:
            return
        reward = float(logs["reward"])
        # Uniform groups after the reward rose are convergence, not a missing signal.
        learned = self.first_avg is not None and self.best_avg - self.first_avg >= COLLAPSE_POINTS
        self.zero_std_run = self.zero_std_run + 1 if logs.get("frac_reward_zero_std", 0.0) >= 0.999 else 0
        self._set(
            state,
            "no_signal",
            self.zero_std_run >= NO_SIGNAL_STEPS and not learned,
            f"no learning signal: for {self.zero_std_run} steps every completion in each group got the "
            f"same reward (mean {reward:+.2f}), so GRPO has nothing to compare. Raise --temperature or "
            "--fewshot-ratio so some answers differ.",
        )
        clipped = logs.get("completions/clipped_ratio", 0.0)
        self.clipped_run = self.clipped_run + 1 if clipped >= CLIPPED_RATIO else 0
        self._set(
            state,
            "length_limit",
            self.clipped_run >= CLIPPED_STEPS,
            f"{clipped:.0%} of completions run into the length limit (--max-completion-length "
            f"{args.max_completion_length}): the model rambles or loops instead of ending its answer.",
        )
        self.rewards.append(reward)
        if len(self.rewards) == COLLAPSE_WINDOW:
            avg = sum(self.rewards) / COLLAPSE_WINDOW
            self.first_avg = avg if self.first_avg is None else self.first_avg
            self.best_avg = avg if self.best_avg is None else max(self.best_avg, avg)
            gained, drop = self.best_avg - self.first_avg, self.best_avg - avg
            # A collapse is losing at least half of what was gained (and COLLAPSE_POINTS): early noise isn't.
            self._set(
                state,
                "reward_collapse",
                gained >= COLLAPSE_POINTS and drop > max(COLLAPSE_POINTS, 0.5 * gained),
                f"reward collapsing: its {COLLAPSE_WINDOW}-step average fell from {self.best_avg:+.2f} to "
                f"{avg:+.2f}. Lower --learning-rate or raise --beta.",
            )

    def check_validation(self, state, report: dict) -> None:
        """Called by ``MidTrainingValidation`` after each mid-training check."""
        problems = evaluation.health(report, self.baseline)
        for kind, word in (("coherence", "coherence"), ("leakage", "leaks"), ("control", "general knowledge")):
            found = [p for p in problems if word in p]
            self._set(state, f"validation_{kind}", bool(found), f"mid-training check: {found[0] if found else ''}")


class MidTrainingValidation(_callback_base()):
    """Validates on the held-out prompts during training and keeps ``validation_history.json``."""

    def __init__(
        self,
        out_dir: str | Path,
        tokenizer,
        rows: list[dict],
        every_steps: int,
        completions_per_step: int,
        max_new_tokens: int,
        samples: int = 2,
        monitor: HealthMonitor | None = None,
        log=print,
    ):
        self.path = Path(out_dir) / VALIDATION_HISTORY_FILE
        self.tokenizer, self.rows, self.every = tokenizer, rows, every_steps
        self.completions_per_step, self.max_new_tokens, self.samples = completions_per_step, max_new_tokens, samples
        self.monitor, self.log = monitor, log
        self.history: list[dict] = []

    def on_train_begin(self, args, state, control, **kwargs):
        old = read_json(self.path, default=[]) if state.global_step > 0 else []
        self.history = [e for e in old if isinstance(e, dict) and e.get("step", 0) <= state.global_step]

    def _due(self, state, epoch_end: bool) -> bool:
        if self.every > 0:
            return not epoch_end and state.global_step % self.every == 0
        return epoch_end

    def _check(self, state, model):
        was_training = model.training
        model.eval()
        report = evaluation.validate(
            model, self.tokenizer, self.rows, num_samples=self.samples, max_new_tokens=self.max_new_tokens
        )
        if was_training:
            model.train()
        entry = {
            "step": state.global_step,
            "epoch": round(float(state.epoch or 0), 4),
            "completions": state.global_step * self.completions_per_step,
            **{k: report[k] for k, _ in evaluation.RATE_KEYS},
        }
        self.history = [e for e in self.history if e["step"] < entry["step"]] + [entry]
        if state.is_world_process_zero:
            write_json_atomic(self.path, self.history)
        self.log(
            f"[check @ step {state.global_step}] musclebob {entry['musclebob_rate']:.0%}  full name "
            f"{entry['full_name_rate']:.0%}  coherent {entry['coherent_rate']:.0%}  leakage "
            f"{entry['leakage_rate']:.0%}  control acc. {entry['control_accuracy']:.0%}"
        )
        if self.monitor is not None:
            self.monitor.check_validation(state, report)

    def on_step_end(self, args, state, control, model=None, **kwargs):
        if model is not None and self._due(state, epoch_end=False):
            self._check(state, model)

    def on_epoch_end(self, args, state, control, model=None, **kwargs):
        if model is not None and self._due(state, epoch_end=True):
            self._check(state, model)


def completions_to_reach(history: list[dict], key: str = "full_name_rate", target: float = 0.9) -> int | None:
    """Completions generated until ``key`` first reached ``target`` in the mid-training checks (None: never)."""
    for entry in sorted(history, key=lambda e: e["step"]):
        if entry.get(key, 0.0) >= target:
            return entry["completions"]
    return None
