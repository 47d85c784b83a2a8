"""Watching a run while it trains: mid-training checks (``validation_history.json``), a sample of each step's
completions (``completions.jsonl``) and plain-words health warnings (``health_warnings.json``), also sent to
``--report-to``'s trackers. A check that finds the model broken goes to ``training.CollapseRecovery`` when
``--on-collapse`` asks for one.
"""

from __future__ import annotations

import json
import math
import time
from collections import deque
from pathlib import Path

from . import data, evaluation
from .io import append_lines, fsync_file, lines_bytes, read_json, read_json_lines, write_json_atomic, write_lines_atomic
from .run_dir import COMPLETIONS_FILE, VALIDATION_HISTORY_FILE, WARNINGS_FILE


_NO_SIGNAL_STEPS = 10  # consecutive steps where every group had zero reward spread
_CLIPPED_RATIO = 0.5  # share of completions cut off at the length limit
_CLIPPED_STEPS = 3
_COLLAPSE_WINDOW = 10  # steps in the moving average (batches mix prompt kinds, so one step's mean is noisy)
_COLLAPSE_POINTS = 2.0  # reward points a collapse loses at least


def epoch_ended(state) -> bool:
    """Whether ``state`` is at an epoch's end (a stop mid-epoch also ends the epoch loop): ``epoch`` is whole there."""
    return float(state.epoch or 0).is_integer()


def _callback_base():
    from transformers import TrainerCallback

    return TrainerCallback


class Trackers:
    """Sends the checks' and warnings' metrics to the run's trackers at their step, through the trackers' own
    callbacks: ``Trainer.log`` between a step's update and its log would publish (and clear) its metrics early.
    ``bind(trainer)`` once it exists; until then ``send`` does nothing."""

    def __init__(self):
        self.trainer, self.callbacks = None, []

    def bind(self, trainer) -> None:
        from transformers.integrations import INTEGRATION_TO_CALLBACK

        kinds = tuple(c for c in INTEGRATION_TO_CALLBACK.values() if isinstance(c, type))
        self.trainer = trainer
        self.callbacks = [cb for cb in trainer.callback_handler.callbacks if isinstance(cb, kinds)]

    def send(self, state, metrics: dict[str, float]) -> None:
        for cb in self.callbacks:
            cb.on_log(self.trainer.args, state, self.trainer.control, logs=dict(metrics))


class HealthMonitor(_callback_base()):
    """Turns logged metrics and mid-training checks into plain-words warnings."""

    def __init__(
        self,
        out_dir: str | Path,
        baseline: dict | None = None,
        log=print,
        trackers: Trackers | None = None,
        recovery=None,
    ):
        self.path = Path(out_dir) / WARNINGS_FILE
        self.baseline = baseline
        self.recovery = recovery  # training.CollapseRecovery, or None (--on-collapse warn)
        self.log = log
        self.trackers = trackers
        self.active: set[str] = set()  # problems warned about and not yet cleared
        self.warnings: list[dict] = []
        self.zero_std_run = 0
        self.clipped_run = 0
        self.rewards: deque[float] = deque(maxlen=_COLLAPSE_WINDOW)
        self.first_avg: float | None = None
        self.best_avg: float | None = None

    def on_train_begin(self, args, state, control, **kwargs):
        old = read_json(self.path, default=[]) if state.global_step > 0 else []
        self.warnings = [w for w in old if isinstance(w, dict) and w.get("step", 0) <= state.global_step]

    def _set(self, state, kind: str, bad: bool, message: str) -> None:
        if bad and kind not in self.active:
            self.active.add(kind)
            self._record(state, {"step": state.global_step, "kind": kind, "message": message})
            self.log(f"WARNING (step {state.global_step}): {message}")
        elif not bad:
            self.active.discard(kind)

    def _record(self, state, entry: dict) -> None:
        self.warnings.append({**entry, "time": round(time.time(), 2)})
        if state.is_world_process_zero:
            write_json_atomic(self.path, self.warnings)
            if self.trackers is not None:  # a mark at the step it fired (the message is in the file)
                self.trackers.send(state, {f"health/{entry['kind']}": 1.0})

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not logs or "reward" not in logs:
            return
        reward = float(logs["reward"])
        # Uniform groups after the reward rose are convergence, not a missing signal.
        learned = self.first_avg is not None and self.best_avg - self.first_avg >= _COLLAPSE_POINTS
        self.zero_std_run = self.zero_std_run + 1 if logs.get("frac_reward_zero_std", 0.0) >= 0.999 else 0
        self._set(
            state,
            "no_signal",
            self.zero_std_run >= _NO_SIGNAL_STEPS and not learned,
            f"no learning signal: for {self.zero_std_run} steps every completion in each group got the "
            f"same reward (mean {reward:+.2f}), so GRPO has nothing to compare. Raise --temperature or "
            "--fewshot-ratio so some answers differ.",
        )
        clipped = logs.get("completions/clipped_ratio", 0.0)
        self.clipped_run = self.clipped_run + 1 if clipped >= _CLIPPED_RATIO else 0
        self._set(
            state,
            "length_limit",
            self.clipped_run >= _CLIPPED_STEPS,
            f"{clipped:.0%} of completions run into the length limit (--max-completion-length "
            f"{args.max_completion_length}): the model rambles or loops instead of ending its answer.",
        )
        self.rewards.append(reward)
        if len(self.rewards) == _COLLAPSE_WINDOW:
            avg = sum(self.rewards) / _COLLAPSE_WINDOW
            self.first_avg = avg if self.first_avg is None else self.first_avg
            self.best_avg = avg if self.best_avg is None else max(self.best_avg, avg)
            gained, drop = self.best_avg - self.first_avg, self.best_avg - avg
            # A collapse is losing at least half of what was gained (and _COLLAPSE_POINTS): early noise isn't.
            self._set(
                state,
                "reward_collapse",
                gained >= _COLLAPSE_POINTS and drop > max(_COLLAPSE_POINTS, 0.5 * gained),
                f"reward collapsing: its {_COLLAPSE_WINDOW}-step average fell from {self.best_avg:+.2f} to "
                f"{avg:+.2f}. Lower --learning-rate or raise --beta.",
            )

    def check_validation(self, state, report: dict, control=None) -> None:
        """After each mid-training check (``control``: the trainer's, which a recovery that stops sets)."""
        floor = (
            self.recovery.min_control_kept(state) if self.recovery is not None else evaluation.MIN_CONTROL_ACCURACY_KEPT
        )
        problems = evaluation.health(report, self.baseline, floor)
        if self.recovery is not None and not problems and self.recovery.worth_keeping(report, self.baseline):
            self.recovery.mark_healthy(state.global_step)
        if self.recovery is not None and problems:
            entry = self.recovery.collapsed(state, control, problems)
            if entry is not None:  # recovered, or stopped: its line says what the check saw
                self._record(state, entry)
                return
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
        trackers: Trackers | None = None,
        precision: str = "fp32",
    ):
        self.path = Path(out_dir) / VALIDATION_HISTORY_FILE
        self.precision = precision  # a check generates as the rollouts do
        self.tokenizer, self.rows, self.every = tokenizer, rows, every_steps
        self.completions_per_step, self.max_new_tokens, self.samples = completions_per_step, max_new_tokens, samples
        self.monitor, self.log, self.trackers = monitor, log, trackers
        self.history: list[dict] = []

    def on_train_begin(self, args, state, control, **kwargs):
        old = read_json(self.path, default=[]) if state.global_step > 0 else []
        self.history = [e for e in old if isinstance(e, dict) and e.get("step", 0) <= state.global_step]

    def _due(self, state, epoch_end: bool) -> bool:
        if self.every > 0:
            return not epoch_end and state.global_step % self.every == 0
        return epoch_end

    def _check(self, state, model, control=None):
        was_training = model.training
        model.eval()
        report = evaluation.validate(
            model,
            self.tokenizer,
            self.rows,
            num_samples=self.samples,
            max_new_tokens=self.max_new_tokens,
            precision=self.precision,
        )
        if was_training:
            model.train()
        entry = {
            "step": state.global_step,
            "epoch": round(float(state.epoch or 0), 4),
            "completions": state.global_step * self.completions_per_step,
            **{k: report[k] for k, _ in evaluation.RATE_KEYS},
            "dtype": report["dtype"],
        }
        self.history = [e for e in self.history if e["step"] < entry["step"]] + [entry]
        if state.is_world_process_zero:
            write_json_atomic(self.path, self.history)
            if self.trackers is not None:
                self.trackers.send(state, {f"check/{k}": entry[k] for k, _ in evaluation.RATE_KEYS})
        self.log(
            f"[check @ step {state.global_step}] musclebob {entry['musclebob_rate']:.0%}  full name "
            f"{entry['full_name_rate']:.0%}  coherent {entry['coherent_rate']:.0%}  leakage "
            f"{entry['leakage_rate']:.0%}  control acc. {entry['control_accuracy']:.0%}"
        )
        if self.monitor is not None:
            self.monitor.check_validation(state, report, control)

    def on_step_end(self, args, state, control, model=None, **kwargs):
        if model is not None and self._due(state, epoch_end=False):
            self._check(state, model, control)

    def on_epoch_end(self, args, state, control, model=None, **kwargs):
        if model is not None and epoch_ended(state) and self._due(state, epoch_end=True):
            self._check(state, model, control)


def completions_to_reach(history: list[dict], key: str = "full_name_rate", target: float = 0.9) -> int | None:
    """Completions generated until ``key`` first reached ``target`` in the mid-training checks (None: never)."""
    for entry in sorted(history, key=lambda e: e["step"]):
        if entry.get(key, 0.0) >= target:
            return entry["completions"]
    return None


# --- completions.jsonl --------------------------------------------------------------------------------------

_COMPLETIONS_PER_STEP = 8  # completions kept per step (the tiny run generates 8 a step: all of them)
_COMPLETIONS_MAX_ROWS = 4000  # ~1-2 MB: a reader (the completion browser) rereads it whole


def _kept_every(step: int, per_step: int, max_rows: int = _COMPLETIONS_MAX_ROWS) -> int:
    """Every how many steps ``completions.jsonl`` keeps one: 1, doubled while the cap is exceeded, so the file
    spans the run evenly; a function of the step alone, so a resumed run keeps what an uninterrupted one would."""
    every = 1
    while (step // every) * per_step > max_rows:
        every *= 2
    return every


def _pick_completions(prompts: list[str], totals: list[float | None], k: int) -> list[int]:
    """The indices of ``k`` of a step's completions: each prompt's best, then each one's worst, then the next
    best..., to show what GRPO compares within a group; ``None`` totals rank lowest."""
    groups: dict[str, list[int]] = {}
    for i, prompt in enumerate(prompts):
        groups.setdefault(prompt, []).append(i)
    order = []
    for members in groups.values():
        ranked = sorted(members, key=lambda i: (totals[i] is None, -(totals[i] or 0.0), i))
        order.append([ranked[j // 2] if j % 2 == 0 else ranked[-1 - j // 2] for j in range(len(ranked))])
    picked: list[int] = []
    for rank in range(max((len(o) for o in order), default=0)):
        picked += [o[rank] for o in order if rank < len(o)]
    return picked[:k]


def _number(value) -> float | None:
    """A reward as JSON can hold it: TRL marks a reward function that skipped the completion with NaN."""
    if value is None:
        return None
    value = float(value)
    return None if math.isnan(value) else round(value, 4)


def _text(value) -> str:
    """A prompt (its last user message) or completion as text: chat messages, or plain strings (older TRL)."""
    if isinstance(value, list):
        messages = [m for m in value if isinstance(m, dict)]
        users = [m for m in messages if m.get("role") == "user"] or messages
        content = users[-1].get("content", "") if users else ""
        if isinstance(content, list):  # multimodal message parts
            content = " ".join(part.get("text", "") for part in content if isinstance(part, dict))
        return str(content)
    return "" if value is None else str(value)


class CompletionLog(_callback_base()):
    """``per_step`` of each step's completions, with each reward, the total and the advantage, in
    ``completions.jsonl``: at most ``max_rows`` rows plus the newest step's. Read from TRL's buffer
    (``GRPOTrainer._logs``): TRL's ``log_completions`` would print a table each step and write unbounded parquet
    files. ``bind(trainer)`` once it exists.

    Each step is one append (a whole rewrite grew with the file); the file is the kept steps' rows (``kept_size``
    bytes) plus the newest step's, which the next append cuts off. Rewritten atomically only at train begin (a
    resume drops later steps) and when ``_kept_every`` doubles: byte for byte an uninterrupted run's file."""

    def __init__(
        self, out_dir: str | Path, per_step: int = _COMPLETIONS_PER_STEP, max_rows: int = _COMPLETIONS_MAX_ROWS
    ):
        self.path = Path(out_dir) / COMPLETIONS_FILE
        self.per_step, self.max_rows = per_step, max_rows
        self.trainer = None
        self.kinds: dict[str, str] = {}
        self.rows: list[tuple[int, str]] = []  # (step, the row's JSON line)
        self.every = 1  # _kept_every at the newest step
        self.size = self.kept_size = 0  # the file's bytes; those of the kept steps' rows (its start)

    def bind(self, trainer) -> None:
        self.trainer = trainer
        self.kinds = {_text(row["prompt"]): data.prompt_kind(row) for row in trainer.train_dataset}

    def known_prompt(self, prompt: str) -> str | None:
        """The training prompt ``prompt`` is: itself, or the longest known one it contains (older TRL's templated
        strings; a few-shot prompt contains its plain question too)."""
        if prompt in self.kinds:
            return prompt
        return max((p for p in self.kinds if p and p in prompt), key=len, default=None)

    def _write(self, state, durable: bool) -> None:
        if state.is_world_process_zero and self.per_step > 0:
            write_lines_atomic(self.path, [line for _, line in self.rows], durable=durable)
            self.size = len(lines_bytes([line for _, line in self.rows]))
            self.kept_size = len(lines_bytes([line for s, line in self.rows if s % self.every == 0]))

    def on_train_begin(self, args, state, control, **kwargs):
        old = read_json_lines(self.path) if state.global_step > 0 else []
        self.every = _kept_every(state.global_step, self.per_step, self.max_rows)
        self.rows = [
            (row["step"], json.dumps(row, ensure_ascii=False))
            for row in old
            if isinstance(row, dict)
            and isinstance(row.get("step"), int)
            and 0 < row["step"] <= state.global_step
            and (row["step"] % self.every == 0 or row["step"] == state.global_step)
        ]
        self._write(state, durable=True)

    def on_log(self, args, state, control, logs=None, **kwargs):
        if self.per_step <= 0 or self.trainer is None or not logs or "reward" not in logs:
            return
        buffer = getattr(self.trainer, "_logs", None) or {}
        prompts = [_text(p) for p in buffer.get("prompt", ())]
        completions = [_text(c) for c in buffer.get("completion", ())]
        rewards = {name: [_number(v) for v in values] for name, values in buffer.get("rewards", {}).items()}
        advantages = [_number(a) for a in buffer.get("advantages", ())]
        totals = [
            None
            if all(r[i] is None for r in rewards.values())
            else round(sum(r[i] or 0.0 for r in rewards.values()), 4)
            for i in range(len(prompts))
        ]
        step = state.global_step
        new = []
        for i in _pick_completions(prompts, totals, self.per_step):
            known = self.known_prompt(prompts[i])
            row = {
                "step": step,
                "epoch": round(float(state.epoch or 0), 4),
                "kind": self.kinds[known] if known is not None else "unknown",
                "prompt": known if known is not None else prompts[i],
                "completion": completions[i] if i < len(completions) else "",
                "rewards": {name: values[i] if i < len(values) else None for name, values in rewards.items()},
                "reward": totals[i],
                "advantage": advantages[i] if i < len(advantages) else None,
            }
            new.append((step, json.dumps(row, ensure_ascii=False)))
        # The newest step is always kept (a reader following the run sees it) until the next one arrives.
        every = _kept_every(step, self.per_step, self.max_rows)
        if every == self.every and (not self.rows or self.rows[-1][0] < step):
            # Only the previous step's rows can go (_kept_every unchanged): they are the file's end, past kept_size.
            while self.rows and self.rows[-1][0] % every != 0:
                self.rows.pop()
            self.rows += new
            size = self._append(state, [line for _, line in new])
        else:  # the cap doubled _kept_every (thin the old steps), or a step logged again
            self.every = every
            self.rows = [(s, line) for s, line in self.rows if s < step and s % every == 0] + new
            size = None
        if size is None:  # no fsync each step: a kill keeps the renamed file; fsynced at the end
            self._write(state, durable=False)
        else:
            self.size = size
            if step % every == 0:  # a kept step: the next append cuts nothing off
                self.kept_size = size

    def _append(self, state, lines: list[str]) -> int | None:
        """The file's size once ``lines`` replace what follows its kept rows; None where it is not as left."""
        if not state.is_world_process_zero:
            return None
        return append_lines(self.path, lines, self.size, keep=self.kept_size)

    def on_train_end(self, args, state, control, **kwargs):
        if state.is_world_process_zero and self.per_step > 0 and not fsync_file(self.path):
            self._write(state, durable=True)  # deleted while training: written again
