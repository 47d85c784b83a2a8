"""The training notebook's steps, one function per cell, so the notebook stays thin and the branching is tested:
``prepare_run_folder`` -> ``make_config`` (the start) -> ``baseline_validation`` -> ``train`` -> ``show_final``;
after a disconnect ``resume`` continues a run from its folder alone. A bad parameter or a ``NotebookStop`` shows
as one line (``config.OneLineError``), and "Run all" stops there."""

from __future__ import annotations

import dataclasses
import html
from pathlib import Path

from . import colab
from .config import OneLineError, TrainConfig, is_tiny, preset_values, recommend_preset, resolve
from .io import read_json
from .run_dir import (
    BASELINE_FILE,
    FINAL_FILE,
    FolderRefused,
    combined_state,
    describe,
    is_finished,
    on_drive,
    unfinished_runs,
    work_folder,
)


def _run_state(run_dir: Path, work_dir: str | None = None) -> str:
    """The run's state over its folder and working folder; finished only locally counts as unfinished (the
    resume cell finishes the copy)."""
    found, local_only = combined_state(run_dir, work_folder(run_dir, work_dir))
    return "unfinished" if local_only and found == "finished" else found


class NotebookStop(OneLineError):
    """Stops "Run all" with a one-line message instead of a traceback (no GPU, a finished run, an unknown name)."""


class SimulatedDisconnect(NotebookStop):
    """Raised by ``stop_after_steps``: training ends abruptly, as when Colab disconnects."""


def show_hardware(model: str = "tiny", log=print) -> dict:
    """Print the device, GPU memory, compute capability and precision. Without a GPU the tiny model goes
    on; any other stops "Run all" (``NotebookStop``) rather than start a CPU run of hours."""
    from .training import detect_hardware

    hw = detect_hardware()
    if hw["device"] != "cpu":
        precision = preset_values(hw["recommended_preset"]).get("precision", hw["precision"])  # make_config's default
        why = {
            "bf16": "bf16 (Ampere or newer)",
            "fp16": "fp16 (older than Ampere, e.g. a T4)",
            "fp32": "fp32 (a T4's fp16 can overflow; precision = 'fp16' in the first cell for speed)",
        }[precision]
        log(
            f"GPU: {hw['gpu_name']}  memory {hw['gpu_memory_gb']} GiB  compute capability "
            f"{hw['compute_capability']}  precision {why}"
        )
    elif is_tiny(model):
        log("No GPU: going on with model = 'tiny' on the CPU in fp32 (a full run takes a minute or two).")
    else:
        fix = (
            "Runtime -> Change runtime type -> T4 GPU, then Run all again"
            if colab.is_colab()
            else "run it on a machine with a GPU"
        )
        raise NotebookStop(
            f"No GPU: stopping rather than train {model} on the CPU for hours; {fix}, or set "
            "model = 'tiny' in the first cell."
        )
    return hw


def prepare_run_folder(run_name: str, output_dir: str = "", use_drive: bool = True, log=print) -> Path:
    """Mount Drive (on Colab, when ``use_drive``), pick the run folder, prove it is writable, say what it holds."""
    drive_root = colab.mount_drive(log=log) if use_drive else None
    if colab.is_colab() and drive_root is None:
        log("use_drive = False: the run stays on this Colab machine and is LOST on a disconnect.")
    run_dir = colab.check_writable(colab.resolve_run_dir(run_name, output_dir, drive_root))
    log(f"Run folder: {run_dir} ({describe(run_dir)})")
    return run_dir


def make_config(log=print, **params) -> TrainConfig:
    """A ``TrainConfig`` from the parameters cell (``None``: the model's default); the run starts here, once
    (``startup.start``), and the baseline and training cells go on from that start."""
    names = {f.name for f in dataclasses.fields(TrainConfig)}
    unknown = sorted(set(params) - names)
    if unknown:
        raise NotebookStop(f"unknown parameter(s) {', '.join(unknown)}; the parameters are TrainConfig's fields")
    given = {k: v for k, v in params.items() if v is not None}
    if "lora" in params and params["lora"] is None:
        # the notebook's default: a hub model's LoRA checkpoints fit a free Drive; tiny trains every weight
        given["lora"] = not is_tiny(given.get("model", TrainConfig.model))
        log(f"lora = {given['lora']}  (the notebook's default for {given.get('model', TrainConfig.model)})")
    machine = None
    if "precision" in params and params["precision"] is None:
        # The notebook's own default: the precision of the preset for this GPU (colab-t4's fp32), else auto.
        from .training import detect_hardware

        machine = detect_hardware()  # handed to the start: the machine is asked once
        given["precision"] = preset_values(recommend_preset(machine)).get("precision", "auto")
        log(f"precision = {given['precision']!r}  (the notebook's default for this machine)")
    cfg, sources = resolve(given)
    run = _start(cfg, log, machine)
    _PENDING[:] = [(cfg, run)]
    for name, why in sources.items():
        if why not in ("you", "default"):
            log(f"{name} = {getattr(cfg, name)!r}  ({why})")
    log(
        f"One step = {run.cfg.batch_size} prompts x {run.cfg.num_generations} generations; "
        f"{run.cfg.epochs} epochs of {run.cfg.num_samples} prompts."
    )
    if run.folder.need:
        log(run.folder.need.line(on_drive(run.folder.path)))
    return cfg


# the parameters cell's (config, start); the training cell takes it, so a rerun of that cell starts again
_PENDING: list = []


def _start(cfg: TrainConfig, log, machine: dict | None = None):
    """``startup.start`` with the notebook's rule: an unfinished run goes on with its saved settings, a finished
    one stops "Run all" in one line."""
    from .startup import start

    try:
        return start(cfg, on_unfinished="continue", machine=machine, log=log)
    except FolderRefused as err:
        raise NotebookStop(
            f"{err.value} already holds a finished run: pick another run_name, or set overwrite = "
            "True to train it again from scratch"
        ) from None


def _started(cfg: TrainConfig, log, take: bool):
    """The start of ``cfg``: the parameters cell's (``take``: the training cell uses it up), or a new one."""
    if _PENDING and _PENDING[0][0] is cfg:
        run = _PENDING[0][1]
        if take:
            _PENDING.clear()
        return run
    run = _start(cfg, log)
    if not take:
        _PENDING[:] = [(cfg, run)]
    return run


def baseline_validation(cfg: TrainConfig, log=print) -> dict:
    """The base model on the held-out prompts before training (reused when ``saved_baseline`` says
    so), measured as ``run_training`` measures it; ``run_training`` writes the file."""
    from . import evaluation
    from .run_dir import newest_files
    from .startup import saved_baseline
    from .training import load_for_training, measure_baseline

    run = _started(cfg, log, take=False)
    report = saved_baseline(run)
    if report is not None:
        log(f"Baseline from {newest_files(run.folder) / BASELINE_FILE} (already measured for this run).")
    else:
        model, tok = load_for_training(run.cfg, run.hardware)
        report = measure_baseline(run.cfg, model, tok, run.hardware, log=log)
        del model
    log(evaluation.summary_table({"baseline": report}))
    _show_answers(report, limit=4)
    return report


def _show_answers(report: dict, limit: int = 4) -> None:
    sponge = [r for r in report["responses"] if r["kind"] == "spongebob"][:limit]
    _show_qa({r["prompt"]: r["response"] for r in sponge}, "<b>Sample answers</b>")


def _show_qa(answers: dict[str, str], title: str = "") -> None:
    """Questions and answers as an HTML list, name markers highlighted."""
    from IPython.display import HTML, display

    from .compare import highlight

    items = "".join(f"<li><i>{html.escape(q)}</i> &rarr; {highlight(a)}</li>" for q, a in answers.items())
    display(HTML(f"{title}<ul>{items}</ul>"))


def _stop_after(step: int):
    """A callback that simulates a disconnect right after ``step`` is logged (to try out resume)."""
    from transformers import TrainerCallback

    class StopAfter(TrainerCallback):
        def on_log(self, args, state, control, logs=None, **kwargs):
            if state.global_step >= step and logs and "reward" in logs:
                raise SimulatedDisconnect(
                    f"stopped after step {state.global_step} (stop_after_steps={step}), as "
                    "a disconnect would; run the resume cell to continue"
                )

    return StopAfter()


def train(
    cfg: TrainConfig, baseline: dict | None = None, live: bool = True, stop_after_steps: int = 0, log=print
) -> dict | None:
    """Train a new run; rerun on an unfinished one, continue it with its saved settings."""
    return _run(_started(cfg, log, take=True), baseline, live, stop_after_steps, log)


def _resume_training(run_dir: str | Path, live: bool = True, stop_after_steps: int = 0, log=print) -> dict | None:
    """Continue the run in ``run_dir`` from its newest checkpoint with its saved settings; None (with a
    line) when there is nothing to resume."""
    from .startup import continue_with_saved

    run_dir = Path(run_dir)
    state = _run_state(run_dir)
    if state == "new":
        log(
            f"Nothing to resume in {run_dir}: no run has started there. Check run_name (on Colab, run the Drive "
            "cell first), or start the run with the training cell."
        )
        return None
    if state == "finished":
        step = read_json(run_dir / FINAL_FILE, default={}).get("global_step", "?")
        log(f"Nothing to resume: the run in {run_dir} is finished (step {step}); its model and results are there.")
        return None
    cfg = continue_with_saved(run_dir, state, log)
    return _run(_start(cfg, log), None, live, stop_after_steps, log)


_RESUME_CELL = "run the resume cell"


def _run(run, baseline: dict | None, live: bool, stop_after_steps: int, log) -> dict:
    """``run_training`` with the notebook's callbacks; an interrupt or a full disk stops "Run all" with one line
    saying how to go on."""
    from .io import out_of_space
    from .plots import live_progress
    from .run_dir import disk_full_line
    from .training import CollapseStop, Stopped, run_training

    callbacks = [live_progress(run.cfg.output_dir)] if live else []
    callbacks += [_stop_after(stop_after_steps)] if stop_after_steps else []
    try:
        result = run_training(run, log=log, callbacks=callbacks, baseline=baseline, remount=colab.remount_drive)
    except Stopped as stop:
        raise NotebookStop(stop.line(_RESUME_CELL)) from None
    except CollapseStop as err:  # the resume cell keeps the run's rate: a lower one is a new run
        raise NotebookStop(err.line(f"set learning_rate = {err.suggested_rate:.3g} and a new run_name")) from None
    except Exception as err:
        if not out_of_space(err):
            raise
        raise NotebookStop(disk_full_line(run.folder, resume_with=_RESUME_CELL)) from None
    if result.get("copy_pending"):  # complete on this machine's disk; Drive failed at the end: say so, lose nothing
        log(
            f"The run is complete in {result['work_dir']} on this machine, but not yet in {result['output_dir']}: "
            f"{result['copy_pending']}. Once Drive answers again (rerun the Drive cell), {_RESUME_CELL}: it copies "
            "the run, it trains nothing. A runtime reset before that loses what Drive lacks."
        )
    return result


def _find_run(run_name: str | None = None, output_dir: str = "", use_drive: bool = True, log=print) -> Path | None:
    """The run the resume cell continues: the parameters cell's when it ran, else the most recently active
    unfinished run under the runs root; None when there is none. Says which and why."""
    drive_root = colab.mount_drive(log=log) if use_drive else None
    if (output_dir or "").strip() or run_name:
        run_dir = colab.resolve_run_dir(run_name or "run", output_dir or "", drive_root)
        log(f"Resuming the run named in the parameters cell: {run_dir}")
        return run_dir
    root = drive_root or colab.LOCAL_RUNS
    runs = unfinished_runs(root)
    if not runs:
        log(
            f"Nothing to resume: no unfinished run under {root}. If the run is elsewhere, set run_name (and "
            "output_dir) in the first cell, run it, then this cell."
        )
        return None
    others = (
        f"; {len(runs) - 1} other unfinished run(s) there: set run_name in the first cell to pick one"
        if len(runs) > 1
        else ""
    )
    log(
        f"No run_name set (the parameters cell has not run): resuming the most recent unfinished run under "
        f"{root}: {runs[0].name}{others}"
    )
    return runs[0]


def resume(
    run_name: str | None = None, output_dir: str = "", use_drive: bool = True, live: bool = True, log=print
) -> dict | None:
    """The resume cell: ``_find_run`` then ``_resume_training``; needs nothing from the other cells."""
    run_dir = _find_run(run_name, output_dir, use_drive, log=log)
    return None if run_dir is None else _resume_training(run_dir, live=live, log=log)


def show_final(run_dir: str | Path, log=print) -> dict | None:
    """The before/after summary and the run report, drawn again from the files."""
    from . import plots
    from .training import final_summary

    run_dir = Path(run_dir)
    validations = plots.load_validations(run_dir)
    if "final" not in validations:
        log(f"The run in {run_dir} has not finished: run the resume cell to continue it.")
        return None
    log(final_summary(validations["baseline"], validations["final"]))
    from IPython.display import Image, display

    display(Image(filename=str(plots.save_run_report(run_dir))))
    return validations


def try_model(run_dir: str | Path, questions: list[str], max_new_tokens: int = 64) -> dict[str, str]:
    """The trained model's greedy answers to a few questions, name markers highlighted."""
    from . import evaluation

    if not is_finished(run_dir):
        print(f"No trained model in {run_dir} yet.")
        return {}
    model, tok = evaluation.load_model(str(run_dir))
    answers = {
        q: evaluation.generate(model, tok, [q], max_new_tokens=max_new_tokens, temperature=0)[0][0].text
        for q in questions
    }
    _show_qa(answers)
    return answers
