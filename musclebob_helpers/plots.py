"""Reward plots and the run's panels: ``reward_history.json`` of one or more runs, live during training and after,
the run report saved as ``reward_plot.png``, and the plot notebook's widgets (``RewardExplorer``,
``CompletionBrowser``). Figures are plain ``matplotlib.figure.Figure`` objects shown as PNG, so they look the same
in Colab, Jupyter and papermill."""

from __future__ import annotations

import base64
import bisect
import html
import json
import io as _io
import itertools
import math
import time
from pathlib import Path

from .data import PROMPT_KINDS
from .evaluation import RATE_KEYS
from .io import read_json, read_json_lines, write_bytes_atomic
from .lock import describe_holder, lock_holder
from .rewards import highlight
from .run_dir import BASELINE_FILE, COMPLETIONS_FILE, FINAL_FILE, HISTORY_FILE, REWARD_PLOT_FILE, WARNINGS_FILE


# --- data ------------------------------------------------------------------------------------------------


class _History(list):
    """A run's reward history, oldest step first; ``note`` says what was wrong with a damaged file (the plots
    show what is whole, with the note)."""

    note: str | None = None


def _whole_items(text: str) -> list:
    """The items of a JSON list that are whole, from its start: what a file cut short still holds."""
    decoder, items = json.JSONDecoder(), []
    at = text.find("[") + 1
    while 0 < at < len(text):
        while at < len(text) and text[at] in " \t\r\n,":
            at += 1
        try:
            item, at = decoder.raw_decode(text, at)
        except ValueError:
            break  # the cut, or the closing bracket
        items.append(item)
    return items


def _is_entry(e) -> bool:
    return isinstance(e, dict) and all(
        isinstance(e.get(k), (int, float)) and not isinstance(e.get(k), bool) for k in ("step", "mean_reward", "epoch")
    )


def load_history(run_dir: str | Path) -> _History:
    """The run's reward history ([] when none yet). Never raises: of a damaged file the whole entries are
    kept and ``note`` says what was wrong."""
    path = Path(run_dir) / HISTORY_FILE
    note = None
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return _History()
    except (OSError, ValueError) as err:
        text, note = "[]", f"{HISTORY_FILE} cannot be read ({type(err).__name__})"
    try:
        found = json.loads(text)
    except ValueError:
        found = _whole_items(text)
        note = f"{HISTORY_FILE} is cut short or damaged: showing the {len(found)} whole steps before the damage"
    if not isinstance(found, list):
        found, note = [], f"{HISTORY_FILE} is not a list of steps"
    entries = [e for e in found if _is_entry(e)]
    if len(entries) < len(found) and note is None:
        note = f"{len(found) - len(entries)} damaged entries of {HISTORY_FILE} skipped"
    history = _History(sorted(entries, key=lambda e: e["step"]))
    history.note = note
    return history


def run_line(run_dir: str | Path) -> str:
    """One line about a run for the plot notebook's list: folder, steps, damage, a run still writing it."""
    history = load_history(run_dir)
    parts = [f"{len(history)} steps"]
    if history.note:
        parts.append(history.note)
    holder = lock_holder(run_dir)
    if holder is not None:
        parts.append(f"still training: {describe_holder(holder)}")
    return f"{run_dir}  ({'; '.join(parts)})"


def find_runs(root: str | Path) -> list[Path]:
    """Run folders under ``root`` (or ``root`` itself) holding a ``reward_history.json``."""
    root = Path(root).expanduser()
    if (root / HISTORY_FILE).exists():
        return [root]
    if not root.is_dir():
        return []
    return sorted(p for p in root.iterdir() if (p / HISTORY_FILE).exists())


def load_warnings(run_dir: str | Path) -> list[dict]:
    """The run's health warnings, oldest step first ([] when none fired)."""
    found = read_json(Path(run_dir) / WARNINGS_FILE, default=[])
    found = found if isinstance(found, list) else []
    entries = [
        w for w in found if isinstance(w, dict) and isinstance(w.get("step"), int) and isinstance(w.get("kind"), str)
    ]
    return sorted(entries, key=lambda w: w["step"])


def _moving_average(values: list[float], window: int) -> list[float]:
    """Trailing mean over the last ``window`` values (fewer at the start); ``window`` <= 1 returns a copy."""
    if window <= 1:
        return list(values)
    sums = [0.0, *itertools.accumulate(values)]  # the mean of values[a:b] is (sums[b] - sums[a]) / (b - a)
    return [(sums[b] - sums[max(0, b - window)]) / min(b, window) for b in range(1, len(values) + 1)]


def _epoch_boundaries(history: list[dict]) -> list[int]:
    """The steps that end an epoch (epoch reaches a whole number), except the last step of the history."""
    steps = []
    for prev, entry in zip([None, *history], history):
        before = math.floor(prev["epoch"] + 1e-6) if prev else 0
        if math.floor(entry["epoch"] + 1e-6) > before and entry is not history[-1]:
            steps.append(entry["step"])
    return steps


# --- figures ---------------------------------------------------------------------------------------------


# kind (as ``monitoring.HealthMonitor`` names it) -> marker, its colour, and the legend's plain words
_WARNING_MARKS = {
    "no_signal": ("o", "lightgrey", "no learning signal (each group's answers scored alike)"),
    "length_limit": ("s", "gold", "answers cut off at the length limit"),
    "reward_collapse": ("v", "red", "reward collapsing"),
    "validation_coherence": ("X", "black", "coherence collapsed (mid-training check)"),
    "validation_leakage": ("P", "magenta", "the name leaks into other questions (mid-training check)"),
    "validation_control": ("D", "saddlebrown", "general knowledge lost (mid-training check)"),
    # not warnings: what --on-collapse did about a broken check (the labels say so, without "warning:")
    "recovery": ("^", "limegreen", "recovery: back to the last healthy check, learning rate lowered"),
    "collapse_stop": ("X", "red", "stopped at a collapse"),
}
_MARK_STYLE = {"linestyle": "none", "markersize": 9, "markeredgecolor": "black", "zorder": 5}  # every kind's
_ACTIONS = ("recovery", "collapse_stop")  # entries of health_warnings.json that record an action, not a warning


def _value_at(steps: list[int], values: list[float], step: int) -> float:
    """The curve at ``step``: that step's value, else the latest before it (the first for an earlier step)."""
    return values[max(0, bisect.bisect_right(steps, step) - 1)]


def _draw_rewards(
    ax, runs, window, show_epochs=True, show_std=True, warnings=None, title="Mean reward per step", empty=""
):
    marked: set[str] = set()  # one legend entry per warning kind, whichever run it fired in
    for i, (name, history) in enumerate(runs.items()):
        if not history:
            continue
        color = f"C{i}"
        steps = [e["step"] for e in history]
        mean = [e["mean_reward"] for e in history]
        smooth = _moving_average(mean, window)
        label = name if window <= 1 else f"{name} (moving average, {window} steps)"
        if getattr(history, "note", None):  # a partial curve says so
            label += f"\n(partial: {history.note})"
        if window > 1:
            ax.plot(steps, mean, color=color, alpha=0.25, linewidth=1)
        ax.plot(steps, smooth, color=color, label=label, linewidth=2)
        if show_std:
            std = _moving_average([e.get("reward_std") or 0.0 for e in history], window)
            low, high = [m - s for m, s in zip(smooth, std)], [m + s for m, s in zip(smooth, std)]
            ax.fill_between(steps, low, high, color=color, alpha=0.15, linewidth=0)
        if show_epochs:
            for k, step in enumerate(_epoch_boundaries(history)):
                ax.axvline(
                    step, color=color, linestyle=":", alpha=0.6, label="epoch end" if k == 0 and i == 0 else None
                )
        by_kind: dict[str, list[int]] = {}
        for warning in (warnings or {}).get(name, ()):
            by_kind.setdefault(warning["kind"], []).append(warning["step"])
        for kind, at in by_kind.items():
            marker, face, words = _WARNING_MARKS.get(kind, ("*", "white", kind.replace("_", " ")))
            label = None if kind in marked else (words if kind in _ACTIONS else f"warning: {words}")
            ys = [_value_at(steps, smooth, step) for step in at]
            ax.plot(at, ys, marker=marker, markerfacecolor=face, gid=f"health:{kind}", label=label, **_MARK_STYLE)
            marked.add(kind)
    if any(runs.values()):
        ax.legend(loc="lower right", fontsize=8)
    else:
        notes = [f"{name}: {h.note}" for name, h in runs.items() if getattr(h, "note", None)]
        ax.text(0.5, 0.5, "\n".join(notes) or empty, ha="center", va="center", transform=ax.transAxes, wrap=True)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("mean reward" + (" (band: ± std)" if show_std else ""))
    ax.set_title(title)
    ax.grid(alpha=0.3)


def plot_rewards(
    runs: dict[str, list[dict]],
    window: int = 1,
    show_epochs: bool = True,
    show_std: bool = True,
    title: str = "Mean reward per step",
    warnings: dict[str, list[dict]] | None = None,
):
    """Mean reward over steps for each run (name -> history); ``warnings`` (name -> ``load_warnings``)
    marks where a health warning fired. Returns the Figure."""
    return _figure((8, 4), _draw_rewards, runs, window, show_epochs, show_std, warnings, title, "no reward history yet")


def _figure(size, draw, *args):
    """A one-panel Figure of ``size`` inches that ``draw(ax, *args)`` fills."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=size, dpi=100)
    draw(fig.add_subplot(), *args)
    fig.tight_layout()
    return fig


def _reward_label(name: str) -> str:
    """``musclebob_name_reward`` -> ``musclebob name``."""
    return name.removesuffix("_reward").replace("_", " ")


def _reward_components(history: list[dict]) -> dict[str, tuple[list[int], list[float]]]:
    """Reward function name -> (steps, its mean per step), from TRL's ``rewards/<name>/mean``; steps
    where it judged no prompt are left out."""
    found: dict[str, tuple[list[int], list[float]]] = {}
    for entry in history:
        for key, value in entry.items():
            if key.startswith("rewards/") and key.endswith("/mean"):
                steps, values = found.setdefault(key[len("rewards/") : -len("/mean")], ([], []))
                if isinstance(value, (int, float)) and math.isfinite(value):
                    steps.append(entry["step"])
                    values.append(value)
    return found


def _draw_components(ax, history: list[dict], window: int, empty: str) -> None:
    """Each reward function's mean per step, smoothed like the reward: a batch holds few prompts of
    each kind, so one step's mean is noisy or missing."""
    components = _reward_components(history)
    for i, (name, (steps, values)) in enumerate(components.items()):
        if window > 1:
            ax.plot(steps, values, color=f"C{i}", alpha=0.25, linewidth=1)
        ax.plot(steps, _moving_average(values, window), color=f"C{i}", linewidth=2, label=_reward_label(name))
    if components:
        ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), title="reward function", title_fontsize=8)
    else:
        ax.text(0.5, 0.5, empty, ha="center", va="center", transform=ax.transAxes)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("mean over the prompts it judges")
    ax.set_title("Reward components" + (f" (moving average, {window} steps)" if window > 1 else ""))
    ax.grid(alpha=0.3)


def load_validations(run_dir: str | Path) -> dict[str, dict]:
    """``{"baseline": ..., "final": ...}`` for the validation files the run has so far."""
    run_dir = Path(run_dir)
    found = {"baseline": read_json(run_dir / BASELINE_FILE), "final": read_json(run_dir / FINAL_FILE)}
    # a file cut short reads as None; rates that are not numbers (edited by hand) would make a bar a TypeError
    return {
        k: v
        for k, v in found.items()
        if isinstance(v, dict)
        and all(isinstance(v.get(key, 0.0), (int, float)) and not isinstance(v.get(key), bool) for key, _ in RATE_KEYS)
    }


def plot_validation_bars(runs: dict[str, dict[str, dict]], title: str = "Held-out validation: before vs after"):
    """Bars of the rates in ``RATE_KEYS`` for each run's baseline and final validation (run -> reports)."""
    return _figure((9, 3.5), _draw_validation_bars, runs, title)


def _draw_validation_bars(ax, runs: dict[str, dict[str, dict]], title: str) -> None:
    series = [
        (f"{run} · {stage}" if len(runs) > 1 else stage, report)
        for run, reports in runs.items()
        for stage, report in reports.items()
    ]
    width = 0.8 / max(1, len(series))
    for i, (label, report) in enumerate(series):
        xs = [k + (i - (len(series) - 1) / 2) * width for k in range(len(RATE_KEYS))]
        values = [report.get(key, 0.0) * 100 for key, _ in RATE_KEYS]
        bars = ax.bar(xs, values, width, label=label, color=f"C{i}")
        if len(series) <= 2:  # with more bars the labels overlap; the axis is enough
            ax.bar_label(bars, fmt="%.0f%%", fontsize=7)
    ax.set_xticks(range(len(RATE_KEYS)), [label for _, label in RATE_KEYS])
    ax.set_ylim(0, 112)
    ax.set_ylabel("% of answers")
    ax.set_title(title)
    if series:
        ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    else:
        ax.text(0.5, 0.5, "no validation yet", ha="center", va="center", transform=ax.transAxes)


def _plot_run_report(history: list[dict], warnings: list[dict], reports: dict[str, dict], title: str = ""):
    """One run at a glance: the mean reward (epochs, std band, warnings), each reward function's mean,
    and the validation rates of ``reports`` (label -> report). Returns the Figure."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(9, 11), dpi=100)
    grid = fig.add_gridspec(3, 1, height_ratios=[3, 2.5, 2.5])
    reward_ax = fig.add_subplot(grid[0])
    parts_ax = fig.add_subplot(grid[1], sharex=reward_ax)  # the same steps, one above the other
    bars_ax = fig.add_subplot(grid[2])
    # smoothed over about 1/20 of the run (the raw curve stays drawn behind it)
    name, window = title or "run", max(1, len(history) // 20)
    _draw_rewards(
        reward_ax, {name: history}, window, warnings={name: warnings}, empty="no reward history in this folder"
    )
    _draw_components(parts_ax, history, window, "no reward history in this folder")
    _draw_validation_bars(bars_ax, {name: reports}, "Held-out validation rates")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def save_run_report(run_dir: str | Path, reports: dict[str, dict] | None = None) -> Path:
    """Write ``_plot_run_report`` of the run folder as its ``reward_plot.png``, atomically."""
    run_dir = Path(run_dir)
    figure = _plot_run_report(
        load_history(run_dir),
        load_warnings(run_dir),
        load_validations(run_dir) if reports is None else reports,
        title=run_dir.name,
    )
    path = run_dir / REWARD_PLOT_FILE
    write_bytes_atomic(path, _figure_png(figure))
    return path


def _reward_image(name: str, history: list[dict], window: int, title: str, warnings: list[dict] | None):
    """One run's ``plot_rewards`` as an IPython Image (the live and followed plots)."""
    from IPython.display import Image

    figure = plot_rewards({name: history}, window, title=title, warnings=None if warnings is None else {name: warnings})
    return Image(data=_figure_png(figure))


def _figure_png(fig) -> bytes:
    buf = _io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def show_figure(fig, save_to: str | Path | None = None):
    """Display a Figure as PNG (and save it when ``save_to`` is given); returns the PNG bytes."""
    from IPython.display import Image, display

    png = _figure_png(fig)
    if save_to is not None:
        write_bytes_atomic(save_to, png)
    display(Image(data=png))
    return png


def _history_table_html(history: list[dict], last: int = 5) -> str:
    rows = "".join(
        f"<tr><td>{e['step']}</td><td>{e.get('epoch', 0):.2f}</td><td>{e['mean_reward']:+.3f}</td>"
        f"<td>{(e.get('reward_std') or 0.0):.3f}</td></tr>"
        for e in history[-last:]
    )
    return "<table><tr><th>step</th><th>epoch</th><th>mean reward</th><th>std</th></tr>" + rows + "</table>"


# --- the plot notebook's widgets ------------------------------------------------------------------------


def set_output(output, data: dict[str, str]) -> None:
    """Replace what an ``ipywidgets.Output`` shows with one display, in one synced state update: capturing
    with ``with output: display(...)`` can make nbclient (papermill) with Colab's jupyter_client 7.4.9 miss the
    cell's reply and hang until its timeout."""
    output.outputs = ({"output_type": "display_data", "data": dict(data), "metadata": {}},)


class RewardExplorer:
    """ipywidgets: pick runs, smoothing window, epoch boundaries, std band and health warnings; every redraw
    rereads the files."""

    def __init__(
        self,
        run_dirs: list[str | Path],
        window: int = 1,
        show_epochs: bool = True,
        show_std: bool = True,
        show_warnings: bool = True,
    ):
        import ipywidgets as w

        self.run_dirs = {Path(p).name: Path(p) for p in run_dirs}
        names = list(self.run_dirs)
        self.runs = w.SelectMultiple(
            options=names, value=tuple(names), description="runs", rows=min(6, max(2, len(names)))
        )
        self.window = w.IntSlider(value=window, min=1, max=50, description="smoothing", continuous_update=False)
        self.show_epochs = w.Checkbox(value=show_epochs, description="epoch boundaries")
        self.show_std = w.Checkbox(value=show_std, description="std band")
        self.show_warnings = w.Checkbox(value=show_warnings, description="health warnings")
        self.reload = w.Button(description="Reload", tooltip="reread reward_history.json (a run still training)")
        self.output = w.Output()
        for control in (self.runs, self.window, self.show_epochs, self.show_std, self.show_warnings):
            control.observe(lambda _change: self.redraw(), names="value")
        self.reload.on_click(lambda _button: self.redraw())
        toggles = w.VBox([self.window, self.show_epochs, self.show_std, self.show_warnings, self.reload])
        self.widget = w.VBox([w.HBox([self.runs, toggles]), self.output])
        self.redraws = 0

    def figure(self):
        runs = {name: load_history(self.run_dirs[name]) for name in self.runs.value}
        warnings = {name: load_warnings(self.run_dirs[name]) for name in runs} if self.show_warnings.value else None
        shown = self.window.value, self.show_epochs.value, self.show_std.value  # plot_rewards' window, epochs, std
        return plot_rewards(runs, *shown, warnings=warnings)

    def redraw(self):
        set_output(
            self.output,
            {"image/png": base64.b64encode(_figure_png(self.figure())).decode("ascii"), "text/plain": "<reward plot>"},
        )
        self.redraws += 1

    def show(self):
        from IPython.display import display

        display(self.widget)
        self.redraw()
        return self


# --- the completions sampled while training ---------------------------------------------------------------

_KIND_BADGES = {  # prompt kind (data.PROMPT_KINDS) -> its badge's words and colour
    "spongebob": ("SpongeBob", "#ffe08a"),
    "fewshot": ("few-shot", "#cfe2ff"),
    "control": ("control", "#e2e3e5"),
}


def _completions_html(rows: list[dict]) -> str:
    """``completions.jsonl`` rows as HTML: each prompt (with its kind's badge) heads its completions,
    each with the names highlighted, each reward function's score and the total."""
    if not rows:
        return "<p><i>No completions match these filters.</i></p>"
    parts, prompt = [], None
    for row in rows:
        if (row.get("kind"), row.get("prompt")) != prompt:
            prompt = (row.get("kind"), row.get("prompt"))
            words, color = _KIND_BADGES.get(row.get("kind"), (str(row.get("kind", "unknown")), "#eeeeee"))
            parts.append(
                f"<div style='margin:10px 0 2px 0'><span class='kind' style='background:{color};border-radius:8px;"
                f"padding:0 6px;font-size:85%'>{html.escape(words)}</span> "
                f"<span class='prompt' style='color:#444;white-space:pre-wrap'>{html.escape(row.get('prompt', ''))}"
                "</span></div>"
            )
        scores = [
            f"{html.escape(_reward_label(name))} {value:+.2f}"
            for name, value in (row.get("rewards") or {}).items()
            if isinstance(value, (int, float))
        ]
        total = row.get("reward")
        scores.append(f"<b>total {total:+.2f}</b>" if isinstance(total, (int, float)) else "<b>total —</b>")
        if isinstance(row.get("advantage"), (int, float)):
            scores.append(f"advantage {row['advantage']:+.2f}")
        parts.append(
            "<div class='completion' style='border:1px solid #ddd;border-radius:4px;padding:4px 8px;margin:3px 0 3px"
            f" 16px'><div style='white-space:pre-wrap'>{highlight(row['completion']) or '<i>(empty)</i>'}</div>"
            f"<div style='font-size:85%;color:#333'>{' · '.join(scores)}</div></div>"
        )
    return "".join(parts)


def load_completions(run_dir: str | Path) -> list[dict]:
    """A run's ``completions.jsonl`` rows, oldest step first, whole rows only; rereads the file."""
    rows = [
        r
        for r in read_json_lines(Path(run_dir) / COMPLETIONS_FILE)
        if isinstance(r, dict) and isinstance(r.get("step"), int) and isinstance(r.get("completion"), str)
    ]
    return sorted(rows, key=lambda r: r["step"])


class CompletionBrowser:
    """ipywidgets: step through a run's sampled completions (step slider, run picker, prompt kind,
    reward range, Reload). Reaching the newest step rereads the file, so it follows a run still training."""

    def __init__(self, run_dirs: list[str | Path]):
        import ipywidgets as w

        self.run_dirs = {Path(p).name: Path(p) for p in run_dirs}
        names = list(self.run_dirs)
        with_rows = [n for n in names if (self.run_dirs[n] / COMPLETIONS_FILE).exists()]
        # The run most recently written to: the one a user following a run wants.
        first = max(with_rows, key=lambda n: (self.run_dirs[n] / COMPLETIONS_FILE).stat().st_mtime, default=None)
        self.run = w.Dropdown(options=names, value=first or (names[0] if names else None), description="run")
        self.step = w.IntSlider(value=0, min=0, max=0, description="step", continuous_update=False)
        # (label, value) pairs; no description: JupyterLab puts a ToggleButtons' description on a line of its own
        kinds = [("all prompts", "all")] + [(_KIND_BADGES[k][0], k) for k in PROMPT_KINDS]
        self.kind = w.ToggleButtons(options=kinds, value="all")
        self.reward = w.FloatRangeSlider(  # one decimal: ipywidgets 8's readout cuts "-6.00 – 6.00" short
            value=(0.0, 1.0),
            min=0.0,
            max=1.0,
            step=0.1,
            readout_format=".1f",
            description="reward",
            continuous_update=False,
        )
        self.reload = w.Button(description="Reload", tooltip="reread completions.jsonl (a run still training)")
        self.output = w.Output()
        self.rows: list[dict] = []
        self.steps: list[int] = []
        self.quiet = False  # set while load() moves the sliders itself: one redraw at its end, not one per trait
        self.redraws = 0
        self.run.observe(lambda _change: self.load(newest=True), names="value")
        self.step.observe(self._step_moved, names="value")
        for control in (self.kind, self.reward):
            control.observe(lambda _change: self.quiet or self.redraw(), names="value")
        self.reload.on_click(lambda _button: self.load())
        self.widget = w.VBox([w.HBox([self.run, self.reload]), self.step, self.kind, self.reward, self.output])
        self.load(redraw=False, newest=True)

    def load(self, redraw: bool = True, newest: bool = False) -> None:
        """Reread the chosen run's file; a slider at the newest step (or ``newest``) moves on to it."""
        follow = newest or not self.steps or self.step.value >= self.steps[-1]
        full_range = self.reward.value == (self.reward.min, self.reward.max)
        self.rows = load_completions(self.run_dirs[self.run.value]) if self.run.value is not None else []
        self.steps = sorted({r["step"] for r in self.rows})
        totals = [r["reward"] for r in self.rows if isinstance(r.get("reward"), (int, float))]
        low, high = (math.floor(min(totals)), math.ceil(max(totals))) if totals else (0, 1)
        high = max(high, low + 1)
        self.quiet = True
        try:
            with self.step.hold_trait_notifications(), self.reward.hold_trait_notifications():
                first, last = (self.steps[0], self.steps[-1]) if self.steps else (0, 0)
                self.step.min, self.step.max = first, last
                self.step.value = last if follow else min(max(self.step.value, first), last)
                self.step.disabled = not self.steps
                lo, hi = (low, high) if full_range else self.reward.value
                self.reward.min, self.reward.max = low, high
                self.reward.value = (min(max(lo, low), high), max(min(hi, high), low))
                self.reward.disabled = not totals
        finally:
            self.quiet = False
        if redraw:
            self.redraw()

    def _step_moved(self, change) -> None:
        if self.quiet:
            return
        if self.steps and change["new"] >= self.steps[-1]:
            self.load()  # at the newest step: reread the file, there may be newer ones
        else:
            self.redraw()

    def shown_step(self) -> int | None:
        """The slider's step, or the kept step before it (older steps are thinned)."""
        if not self.steps:
            return None
        return max((s for s in self.steps if s <= self.step.value), default=self.steps[0])

    def visible(self) -> list[dict]:
        """The shown step's rows that pass the filters, each prompt's together, best first."""
        step = self.shown_step()
        rows = [r for r in self.rows if r["step"] == step]
        if self.kind.value != "all":
            rows = [r for r in rows if r.get("kind") == self.kind.value]
        lo, hi = self.reward.value
        if (lo, hi) != (self.reward.min, self.reward.max):  # narrowed: rows without a total drop out
            rows = [r for r in rows if isinstance(r.get("reward"), (int, float)) and lo <= r["reward"] <= hi]
        order = {prompt: i for i, prompt in reversed(list(enumerate(r.get("prompt") for r in rows)))}
        score = {id(r): r["reward"] if isinstance(r.get("reward"), (int, float)) else -math.inf for r in rows}
        return sorted(rows, key=lambda r: (order[r.get("prompt")], -score[id(r)]))

    def html(self) -> str:
        if self.run.value is None:
            return "<p><i>No runs found: check runs_root.</i></p>"
        if not self.rows:
            return (
                f"<p><i>No completions in {html.escape(self.run.value)} yet: training writes {COMPLETIONS_FILE} from"
                " its first logged step (runs trained before it existed have none).</i></p>"
            )
        step, rows = self.shown_step(), self.visible()
        at = [r for r in self.rows if r["step"] == step]
        note = f" (step {self.step.value} was not kept: older steps are thinned)" if step != self.step.value else ""
        header = (
            f"<p><b>{html.escape(self.run.value)}</b> · step {step}{note} · epoch {at[0].get('epoch', 0):.2f} · "
            f"{len(rows)} of {len(at)} completions shown</p>"
        )
        return header + _completions_html(rows)

    def redraw(self) -> None:
        set_output(self.output, {"text/html": self.html(), "text/plain": "<completions>"})
        self.redraws += 1

    def show(self):
        from IPython.display import display

        display(self.widget)
        self.load()
        return self


def follow(
    run_dirs: list[str | Path], seconds: float, every: float = 10.0, window: int = 5, show_warnings: bool = True
) -> int:
    """Redraw the newest run's plot in place every ``every`` s for up to ``seconds`` (stops when it finishes);
    returns the frames drawn."""
    from IPython.display import display

    if seconds <= 0 or not run_dirs:
        return 0
    run_dir = max((Path(p) for p in run_dirs), key=lambda p: (p / HISTORY_FILE).stat().st_mtime)

    def frame():
        warnings = load_warnings(run_dir) if show_warnings else None
        return _reward_image(run_dir.name, load_history(run_dir), window, f"{run_dir.name} (following)", warnings)

    handle = display(frame(), display_id=True)
    deadline, frames = time.time() + seconds, 1
    while time.time() < deadline and not (run_dir / FINAL_FILE).exists():
        time.sleep(min(every, max(0.0, deadline - time.time())))
        handle.update(frame())
        frames += 1
    return frames


# --- live progress during training ----------------------------------------------------------------------


def live_progress(run_dir: str | Path, min_interval: float = 2.0, window: int = 5):
    """A ``TrainerCallback`` keeping a reward plot, a table of the latest steps and the newest sampled
    completions up to date in the notebook, at most every ``min_interval`` s (a draw costs ~0.1 s) and at the end.
    A resumed run's earlier history is drawn too."""
    from transformers import TrainerCallback

    class LiveRewardProgress(TrainerCallback):
        shows_progress = True  # the run's one progress display: run_training adds no bar or step lines of its own

        def __init__(self):
            self.files = Path(run_dir)
            self.history: list[dict] = []
            self.max_steps = 0
            self.handles = None
            self.last_draw = 0.0
            self.draws = 0

        def on_train_begin(self, args, state, control, **kwargs):
            self.max_steps = state.max_steps
            if getattr(args, "output_dir", None):  # where the run writes: its working folder when Drive is mirrored
                self.files = Path(args.output_dir)
            self.history = [e for e in load_history(self.files) if e["step"] <= state.global_step]
            self._draw(state.global_step, force=True)

        def on_log(self, args, state, control, logs=None, **kwargs):
            if not logs or "reward" not in logs:
                return
            entry = {
                "step": state.global_step,
                "epoch": float(logs.get("epoch", state.epoch or 0)),
                "mean_reward": float(logs["reward"]),
                "reward_std": float(logs.get("reward_std") or 0.0),
            }
            self.history = [e for e in self.history if e["step"] < entry["step"]] + [entry]
            self._draw(state.global_step, force=state.global_step >= self.max_steps)

        def on_train_end(self, args, state, control, **kwargs):
            self._draw(state.global_step, force=True)

        def _draw(self, step: int, force: bool = False):
            if not force and time.time() - self.last_draw < min_interval:
                return
            from IPython.display import HTML, display

            # What the model is saying: the newest step's sampled completions (completions.jsonl, written before
            # this callback runs), under the table.
            rows = load_completions(self.files)
            newest = [r for r in rows if r["step"] == rows[-1]["step"]] if rows else []
            said = (
                f"<div><b>What the model said at step {newest[0]['step']}</b></div>{_completions_html(newest)}"
                if newest
                else ""
            )
            status = HTML(_progress_html(step, self.max_steps, self.history) + said)
            plot = _reward_image(
                Path(run_dir).name, self.history, window, "Mean reward per step (live)", load_warnings(self.files)
            )
            if self.handles is None or None in self.handles:  # first draw (outside a kernel display returns None)
                self.handles = (display(status, display_id=True), display(plot, display_id=True))
            else:
                self.handles[0].update(status)
                self.handles[1].update(plot)
            self.last_draw = time.time()
            self.draws += 1

    return LiveRewardProgress()


def _progress_html(step: int, max_steps: int, history: list[dict]) -> str:
    latest = history[-1] if history else None
    text = f"step {step}/{max_steps}" + (
        f" · epoch {latest['epoch']:.2f} · mean reward {latest['mean_reward']:+.3f}" if latest else ""
    )
    return (
        f"<div><progress value='{step}' max='{max(1, max_steps)}' style='width:60%'></progress> "
        f"{html.escape(text)}</div>" + (_history_table_html(history) if history else "")
    )
