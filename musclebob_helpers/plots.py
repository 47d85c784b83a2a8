"""Reward plots: ``reward_history.json`` of one or more runs, live during training and afterwards.

* ``load_history`` / ``find_runs``   — read runs (rereading the file each time, so a running run is fine)
* ``moving_average``, ``epoch_boundaries`` — the small pure pieces, tested on hand-made numbers
* ``plot_rewards``                   — mean reward over steps: smoothing, epoch boundaries, std band
* ``plot_validation_bars``           — baseline vs final validation rates as a small bar chart
* ``RewardExplorer``                 — the ipywidgets panel of the plot notebook (pick runs, smooth, toggles)
* ``live_progress()``                — a ``TrainerCallback`` for ``run_training`` that redraws a plot and a
  table of the latest steps in the notebook while training runs

Figures are plain ``matplotlib.figure.Figure`` objects (no pyplot state) shown as PNG, so they look the
same in Colab, Jupyter and a papermill run, and can be saved next to the run.
"""

from __future__ import annotations

import base64
import html
import io as _io
import math
import time
from pathlib import Path

from .evaluation import RATE_KEYS
from .io import read_json
from .run_dir import BASELINE_FILE, FINAL_FILE, HISTORY_FILE


# --- data ------------------------------------------------------------------------------------------------


def load_history(run_dir: str | Path) -> list[dict]:
    """The run's reward history, oldest step first ([] when there is none yet)."""
    history = read_json(Path(run_dir) / HISTORY_FILE, default=[])
    entries = (
        [e for e in history if isinstance(e, dict) and "step" in e and "mean_reward" in e]
        if isinstance(history, list)
        else []
    )
    return sorted(entries, key=lambda e: e["step"])


def find_runs(root: str | Path) -> list[Path]:
    """Run folders under ``root`` (``root`` itself if it is one), those holding a ``reward_history.json``."""
    root = Path(root).expanduser()
    if (root / HISTORY_FILE).exists():
        return [root]
    if not root.is_dir():
        return []
    return sorted(p for p in root.iterdir() if (p / HISTORY_FILE).exists())


def moving_average(values: list[float], window: int) -> list[float]:
    """Trailing mean over the last ``window`` values (fewer at the start); ``window`` <= 1 returns a copy."""
    if window <= 1:
        return list(values)
    out, total = [], 0.0
    for i, v in enumerate(values):
        total += v
        if i >= window:
            total -= values[i - window]
        out.append(total / min(i + 1, window))
    return out


def epoch_boundaries(history: list[dict]) -> list[int]:
    """The steps that end an epoch (epoch reaches a whole number), except the last step of the history."""
    steps = []
    for prev, entry in zip([None, *history], history):
        before = math.floor(prev["epoch"] + 1e-6) if prev else 0
        if math.floor(entry["epoch"] + 1e-6) > before and entry is not history[-1]:
            steps.append(entry["step"])
    return steps


# --- figures ---------------------------------------------------------------------------------------------


def plot_rewards(
    runs: dict[str, list[dict]],
    window: int = 1,
    show_epochs: bool = True,
    show_std: bool = True,
    title: str = "Mean reward per step",
):
    """Mean reward over steps for each run (name -> history); returns the Figure."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(8, 4), dpi=100)
    ax = fig.add_subplot()
    for i, (name, history) in enumerate(runs.items()):
        if not history:
            continue
        color = f"C{i}"
        steps = [e["step"] for e in history]
        mean = [e["mean_reward"] for e in history]
        smooth = moving_average(mean, window)
        label = name if window <= 1 else f"{name} (moving average, {window} steps)"
        if window > 1:
            ax.plot(steps, mean, color=color, alpha=0.25, linewidth=1)
        ax.plot(steps, smooth, color=color, label=label, linewidth=2)
        if show_std:
            std = moving_average([e.get("reward_std") or 0.0 for e in history], window)
            ax.fill_between(
                steps,
                [m - s for m, s in zip(smooth, std)],
                [m + s for m, s in zip(smooth, std)],
                color=color,
                alpha=0.15,
                linewidth=0,
            )
        if show_epochs:
            for k, step in enumerate(epoch_boundaries(history)):
                ax.axvline(
                    step, color=color, linestyle=":", alpha=0.6, label="epoch end" if k == 0 and i == 0 else None
                )
    if not any(runs.values()):
        ax.text(0.5, 0.5, "no reward history yet", ha="center", va="center", transform=ax.transAxes)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("mean reward" + (" (band: ± std)" if show_std else ""))
    ax.set_title(title)
    ax.grid(alpha=0.3)
    if any(runs.values()):
        ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    return fig


def load_validations(run_dir: str | Path) -> dict[str, dict]:
    """``{"baseline": ..., "final": ...}`` for the validation files the run has so far."""
    run_dir = Path(run_dir)
    found = {"baseline": read_json(run_dir / BASELINE_FILE), "final": read_json(run_dir / FINAL_FILE)}
    return {k: v for k, v in found.items() if isinstance(v, dict)}


def plot_validation_bars(runs: dict[str, dict[str, dict]], title: str = "Held-out validation: before vs after"):
    """Bars of the rates in ``RATE_KEYS`` for each run's baseline and final validation (run -> reports)."""
    from matplotlib.figure import Figure

    series = [
        (f"{run} · {stage}" if len(runs) > 1 else stage, report)
        for run, reports in runs.items()
        for stage, report in reports.items()
    ]
    fig = Figure(figsize=(9, 3.5), dpi=100)
    ax = fig.add_subplot()
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
    fig.tight_layout()
    return fig


def figure_png(fig) -> bytes:
    buf = _io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def show_figure(fig, save_to: str | Path | None = None):
    """Display a Figure as PNG (and save it when ``save_to`` is given); returns the PNG bytes."""
    from IPython.display import Image, display

    png = figure_png(fig)
    if save_to is not None:
        Path(save_to).parent.mkdir(parents=True, exist_ok=True)
        Path(save_to).write_bytes(png)
    display(Image(data=png))
    return png


def history_table_html(history: list[dict], last: int = 5) -> str:
    """The latest steps as a small HTML table."""
    rows = "".join(
        f"<tr><td>{e['step']}</td><td>{e.get('epoch', 0):.2f}</td><td>{e['mean_reward']:+.3f}</td>"
        f"<td>{(e.get('reward_std') or 0.0):.3f}</td></tr>"
        for e in history[-last:]
    )
    return "<table><tr><th>step</th><th>epoch</th><th>mean reward</th><th>std</th></tr>" + rows + "</table>"


# --- the plot notebook's widgets ------------------------------------------------------------------------


def set_output(output, data: dict[str, str]) -> None:
    """Replace what an ``ipywidgets.Output`` shows with one display (mime type -> text, images in base64).

    Sets the widget's synced ``outputs`` in one state update instead of ``clear_output(wait=True)`` and
    ``with output: display(...)``. Capturing makes a headless runner that stands in for the frontend (nbclient,
    so papermill) send the captured output back on the kernel's shell channel while it waits on that socket for
    the cell's reply; with jupyter_client 7.4.9 (Colab's) that wait can miss the reply and sleep until the
    execution timeout (the cell "never finishes"). One state update sends nothing back, flickers less, and
    ``outputs`` is synced the same way by ipywidgets 7.7 and 8.x and by the classic, Lab and Colab frontends.
    """
    output.outputs = ({"output_type": "display_data", "data": dict(data), "metadata": {}},)


class RewardExplorer:
    """ipywidgets: pick runs, smoothing window, epoch boundaries and std band; every redraw rereads the files."""

    def __init__(self, run_dirs: list[str | Path], window: int = 1, show_epochs: bool = True, show_std: bool = True):
        import ipywidgets as w

        self.run_dirs = {Path(p).name: Path(p) for p in run_dirs}
        names = list(self.run_dirs)
        self.runs = w.SelectMultiple(
            options=names, value=tuple(names), description="runs", rows=min(6, max(2, len(names)))
        )
        self.window = w.IntSlider(value=window, min=1, max=50, description="smoothing", continuous_update=False)
        self.show_epochs = w.Checkbox(value=show_epochs, description="epoch boundaries")
        self.show_std = w.Checkbox(value=show_std, description="std band")
        self.reload = w.Button(description="Reload", tooltip="reread reward_history.json (a run still training)")
        self.output = w.Output()
        for control in (self.runs, self.window, self.show_epochs, self.show_std):
            control.observe(lambda _change: self.redraw(), names="value")
        self.reload.on_click(lambda _button: self.redraw())
        self.widget = w.VBox(
            [w.HBox([self.runs, w.VBox([self.window, self.show_epochs, self.show_std, self.reload])]), self.output]
        )
        self.redraws = 0

    def figure(self):
        """The figure for the current choices, from the files as they are now."""
        runs = {name: load_history(self.run_dirs[name]) for name in self.runs.value}
        return plot_rewards(
            runs, window=self.window.value, show_epochs=self.show_epochs.value, show_std=self.show_std.value
        )

    def redraw(self):
        set_output(
            self.output,
            {"image/png": base64.b64encode(figure_png(self.figure())).decode("ascii"), "text/plain": "<reward plot>"},
        )
        self.redraws += 1

    def show(self):
        from IPython.display import display

        display(self.widget)
        self.redraw()
        return self


def follow(run_dirs: list[str | Path], seconds: float, every: float = 10.0, window: int = 5) -> int:
    """Redraw the newest run's plot in place every ``every`` s for up to ``seconds`` (stops when it finishes).

    Returns the number of frames drawn (0 when ``seconds`` <= 0 or there is no run)."""
    from IPython.display import Image, display

    if seconds <= 0 or not run_dirs:
        return 0
    run_dir = max((Path(p) for p in run_dirs), key=lambda p: (p / HISTORY_FILE).stat().st_mtime)

    def frame():
        return Image(
            data=figure_png(
                plot_rewards({run_dir.name: load_history(run_dir)}, window, title=f"{run_dir.name} (following)")
            )
        )

    handle = display(frame(), display_id=True)
    deadline, frames = time.time() + seconds, 1
    while time.time() < deadline and not (run_dir / FINAL_FILE).exists():
        time.sleep(min(every, max(0.0, deadline - time.time())))
        handle.update(frame())
        frames += 1
    return frames


# --- live progress during training ----------------------------------------------------------------------


def live_progress(run_dir: str | Path, min_interval: float = 2.0, window: int = 5):
    """A ``TrainerCallback`` that keeps a reward plot and a table of the latest steps up to date in the notebook.

    Redraws at most every ``min_interval`` seconds (drawing costs ~0.1 s), and always at the end. On a resumed
    run the history before the checkpoint (from ``reward_history.json``) is drawn too, so the curve continues.
    """
    from transformers import TrainerCallback

    class LiveRewardProgress(TrainerCallback):
        shows_progress = True  # the run's one progress display: run_training adds no bar or step lines of its own

        def __init__(self):
            self.history: list[dict] = []
            self.max_steps = 0
            self.handles = None
            self.last_draw = 0.0
            self.draws = 0

        def on_train_begin(self, args, state, control, **kwargs):
            self.max_steps = state.max_steps
            self.history = [e for e in load_history(run_dir) if e["step"] <= state.global_step]
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
            from IPython.display import HTML, Image, display

            status = HTML(progress_html(step, self.max_steps, self.history))
            plot = Image(
                data=figure_png(
                    plot_rewards({Path(run_dir).name: self.history}, window=window, title="Mean reward per step (live)")
                )
            )
            if self.handles is None or None in self.handles:  # first draw (outside a kernel display returns None)
                self.handles = (display(status, display_id=True), display(plot, display_id=True))
            else:
                self.handles[0].update(status)
                self.handles[1].update(plot)
            self.last_draw = time.time()
            self.draws += 1

    return LiveRewardProgress()


def progress_html(step: int, max_steps: int, history: list[dict]) -> str:
    """A progress bar, the latest reward and a table of the latest steps, as HTML."""
    latest = history[-1] if history else None
    text = f"step {step}/{max_steps}" + (
        f" · epoch {latest['epoch']:.2f} · mean reward {latest['mean_reward']:+.3f}" if latest else ""
    )
    return (
        f"<div><progress value='{step}' max='{max(1, max_steps)}' style='width:60%'></progress> "
        f"{html.escape(text)}</div>" + (history_table_html(history) if history else "")
    )
