"""The training notebook's steps, one function per cell, so the notebook stays thin and the branching is tested.

``prepare_run_folder`` -> ``make_config`` -> ``baseline_validation`` -> ``train`` -> ``show_final``; after a
disconnect, ``resume_training`` continues the run from its folder alone (its settings are read back from
``training_config.json``, so nothing but the run folder is needed).

A bad parameter (``ConfigError``) or a notebook-only stop (``NotebookStop``) shows as one line, not a traceback:
both are ``config.OneLineError``s, whose ``_render_traceback_`` IPython prints, and "Run all" stops there instead
of failing again further down.
"""

from __future__ import annotations

import dataclasses
import html
from pathlib import Path

from . import colab
from .config import OneLineError, TrainConfig, is_tiny, preset_values, recommend_preset, resolve, validate_config
from .io import read_json
from .run_dir import (
    BASELINE_FILE,
    CONFIG_FILE,
    combined_state,
    work_folder,
    FINAL_FILE,
    describe,
    is_finished,
    saved_config,
    unfinished_runs,
)


def run_state(run_dir: Path, work_dir: str | None = None) -> str:
    """The run's state over its folder and its working folder (``run_dir.combined_state``); a run finished on this
    machine whose copy to Drive did not finish counts as unfinished: the resume cell finishes the copy."""
    found, local_only = combined_state(run_dir, work_folder(run_dir, work_dir))
    return "unfinished" if local_only and found == "finished" else found


class NotebookStop(OneLineError):
    """Stops "Run all" with a one-line message instead of a traceback (no GPU, a finished run, an unknown name)."""


class SimulatedDisconnect(NotebookStop):
    """Raised by ``stop_after_steps``: training ends abruptly, as when Colab disconnects."""


# --- hardware -------------------------------------------------------------------------------------------


def show_hardware(model: str = "tiny", log=print) -> dict:
    """Print the device, GPU memory, compute capability and the precision training will use.

    Without a GPU it says in one line what it does: the tiny model goes on, any other model stops "Run all"
    (``NotebookStop``) with what to change, rather than start a CPU run of many hours that a Colab runtime would
    not live to finish (and that is nearly always a runtime opened without a GPU by mistake)."""
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


# --- the run folder -------------------------------------------------------------------------------------


def prepare_run_folder(run_name: str, output_dir: str = "", use_drive: bool = True, log=print) -> Path:
    """Mount Drive (on Colab, when ``use_drive``), pick the run folder, prove it is writable, say what it holds."""
    drive_root = colab.mount_drive(log=log) if use_drive else None
    if colab.is_colab() and drive_root is None:
        log("use_drive = False: the run stays on this Colab machine and is LOST on a disconnect.")
    run_dir = colab.check_writable(colab.resolve_run_dir(run_name, output_dir, drive_root))
    log(f"Run folder: {run_dir} ({describe(run_dir)})")
    return run_dir


# --- configuration --------------------------------------------------------------------------------------


def make_config(log=print, **params) -> TrainConfig:
    """A validated ``TrainConfig`` from the parameters cell; ``None`` means "the model's default"."""
    from .cli import check_model_loadable

    names = {f.name for f in dataclasses.fields(TrainConfig)}
    unknown = sorted(set(params) - names)
    if unknown:
        raise NotebookStop(f"unknown parameter(s) {', '.join(unknown)}; the parameters are TrainConfig's fields")
    given = {k: v for k, v in params.items() if v is not None}
    if "lora" in params and params["lora"] is None:
        # The notebook's own default: a hub model trains a LoRA adapter, whose checkpoints fit a free Google
        # Drive (see memory.drive_need); the tiny model trains every weight, as on the command line.
        given["lora"] = not is_tiny(given.get("model", TrainConfig.model))
        log(f"lora = {given['lora']}  (the notebook's default for {given.get('model', TrainConfig.model)})")
    if "precision" in params and params["precision"] is None:
        # The notebook's own default: the precision of the preset for this GPU (colab-t4's fp32), else auto.
        from .training import detect_hardware

        given["precision"] = preset_values(recommend_preset(detect_hardware())).get("precision", "auto")
        log(f"precision = {given['precision']!r}  (the notebook's default for this machine)")
    cfg, sources = resolve(given)
    # The values and the model only: the folder (finished, checkpoints, free space) is checked once, by train().
    validate_config(cfg)
    from .share import check_hub_token

    check_hub_token(cfg)  # push_to_hub without a token: one line now, not after training
    check_model_loadable(cfg.model)
    from .training import check_hardware_support, detect_hardware

    check_hardware_support(cfg, detect_hardware(cfg.precision))  # precision, 4-bit, trackers: before any model loads
    for name, why in sources.items():
        if why not in ("you", "default"):
            log(f"{name} = {getattr(cfg, name)!r}  ({why})")
    log(
        f"One step = {cfg.batch_size} prompts x {cfg.num_generations} generations; "
        f"{cfg.epochs} epochs of {cfg.num_samples} prompts."
    )
    from .memory import drive_need, model_shape
    from .run_dir import on_drive

    shape = model_shape(cfg.model, offline=True)
    need = drive_need(cfg, shape) if shape else None
    if need:
        log(need.line(on_drive(cfg.output_dir)))
    return cfg


# --- baseline, training, resume -------------------------------------------------------------------------


def _matches(report: dict | None, cfg: TrainConfig, precision: str) -> bool:
    """Whether a saved baseline is this run's: its model, sampling and precision (``precision``: the run's)."""
    sampling = (report or {}).get("sampling", {})
    return (
        bool(report)
        and report.get("model") == cfg.model
        and sampling.get("samples_per_prompt") == cfg.validation_samples
        and sampling.get("max_new_tokens") == cfg.max_completion_length
        and report.get("dtype", {}).get("precision") == precision
    )


def baseline_validation(cfg: TrainConfig, log=print) -> dict:
    """The base model on the held-out prompts, before training (reused from the run folder when it is there).

    Measured as ``run_training`` measures it (``training.load_for_training``, ``training.measure_baseline``): the
    same weights, dtype and autocast as training's rollouts, so before and after compare fairly. ``train`` hands
    the report to ``run_training``, which writes ``baseline_validation.json`` (its one writer)."""
    from . import evaluation
    from .training import detect_hardware, load_for_training, measure_baseline

    path = Path(cfg.output_dir) / BASELINE_FILE
    report = read_json(path)
    hardware = detect_hardware(cfg.precision)
    if _matches(report, cfg, hardware["precision"]) and not cfg.overwrite:
        log(f"Baseline from {path} (already measured for this run).")
    else:
        model, tok = load_for_training(cfg, hardware)
        report = measure_baseline(cfg, model, tok, hardware, log=log)
        del model
    log(evaluation.summary_table({"baseline": report}))
    _show_answers(report, limit=4)
    return report


def _show_answers(report: dict, limit: int = 4) -> None:
    """A few of the report's SpongeBob answers, name markers highlighted."""
    from IPython.display import HTML, display

    from .compare import highlight

    sponge = [r for r in report["responses"] if r["kind"] == "spongebob"][:limit]
    display(
        HTML(
            "<b>Sample answers</b><ul>"
            + "".join(f"<li><i>{html.escape(r['prompt'])}</i> &rarr; {highlight(r['response'])}</li>" for r in sponge)
            + "</ul>"
        )
    )


def stop_after(step: int):
    """A callback that simulates a disconnect right after ``step`` is logged (for trying out resume)."""
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
    """Train a new run; on a rerun of an unfinished one, continue it with its saved settings (as the resume cell)."""
    run_dir = Path(cfg.output_dir)
    state = run_state(run_dir, cfg.work_dir)
    if state == "finished" and not cfg.overwrite:
        raise NotebookStop(
            f"{run_dir} already holds a finished run: pick another run_name, or set overwrite = "
            "True to train it again from scratch"
        )
    if state in ("unfinished", "started") and not cfg.overwrite:
        log("This run folder holds an unfinished run: continuing it.")
        return _continue(run_dir, state, live, stop_after_steps, log, current=cfg)
    # overwrite: run_training removes the old run's checkpoints and results once it holds the folder's lock
    return _run(cfg, baseline, live, stop_after_steps, log)


def resume_training(run_dir: str | Path, live: bool = True, stop_after_steps: int = 0, log=print) -> dict | None:
    """Continue the run in ``run_dir`` from its newest checkpoint, with its own saved settings.

    Returns the training result, or None (with a message) when there is nothing to resume.
    """
    run_dir = Path(run_dir)
    state = run_state(run_dir)
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
    return _continue(run_dir, state, live, stop_after_steps, log)


def _continue(run_dir: Path, state: str, live: bool, stop_after_steps: int, log, current: TrainConfig | None = None):
    """An unfinished run, trained on with the settings it saved (``current``: the parameters cell's, which lose)."""
    # Its settings: in the run folder, or only in the working folder when Drive failed before the first copy.
    cfg = saved_config(run_dir) or saved_config(work_folder(run_dir, current.work_dir if current else None))
    if cfg is None:
        raise NotebookStop(f"{run_dir / CONFIG_FILE} is missing or unreadable: the run's settings are lost")
    cfg = dataclasses.replace(cfg, output_dir=str(run_dir), resume_from_checkpoint="auto", overwrite=False)
    if current is not None:
        changed = [
            f.name
            for f in dataclasses.fields(TrainConfig)
            if f.name not in ("output_dir", "resume_from_checkpoint", "overwrite")
            and getattr(current, f.name) != getattr(cfg, f.name)
        ]
        if changed:
            log(
                f"Note: {', '.join(changed)} differ from the run's saved settings; the run continues with its own "
                "(use a new run_name to train with the new ones)."
            )
    if state == "started":
        log("No checkpoint yet (it stopped in its first epoch): training this run again from step 0.")
    return _run(cfg, read_json(run_dir / BASELINE_FILE), live, stop_after_steps, log)


RESUME_CELL = "run the resume cell"


def _run(cfg: TrainConfig, baseline: dict | None, live: bool, stop_after_steps: int, log) -> dict:
    """``run_training`` with the notebook's callbacks: the live panel, and the simulated disconnect when asked.
    The run folder is checked there, once (``run_dir.check``). The interrupt button (a SIGINT) and a full disk
    stop "Run all" with one line saying how to go on (``NotebookStop``), as on the command line."""
    from .io import out_of_space
    from .plots import live_progress
    from .run_dir import disk_full_line
    from .training import CollapseStop, Stopped, run_training

    callbacks = [live_progress(cfg.output_dir)] if live else []
    callbacks += [stop_after(stop_after_steps)] if stop_after_steps else []
    try:
        result = run_training(cfg, log=log, callbacks=callbacks, baseline=baseline, remount=colab.remount_drive)
    except Stopped as stop:
        raise NotebookStop(stop.line(RESUME_CELL)) from None
    except CollapseStop as err:  # the resume cell keeps the run's rate: a lower one is a new run
        raise NotebookStop(err.line(f"set learning_rate = {err.suggested_rate:.3g} and a new run_name")) from None
    except Exception as err:
        if not out_of_space(err):
            raise
        raise NotebookStop(disk_full_line(cfg, resume_with=RESUME_CELL)) from None
    if result.get("copy_pending"):  # complete on this machine's disk; Drive failed at the end: say so, lose nothing
        log(
            f"The run is complete in {result['work_dir']} on this machine, but not yet in {result['output_dir']}: "
            f"{result['copy_pending']}. Once Drive answers again (rerun the Drive cell), {RESUME_CELL}: it copies "
            "the run, it trains nothing. A runtime reset before that loses what Drive lacks."
        )
    return result


def find_run(run_name: str | None = None, output_dir: str = "", use_drive: bool = True, log=print) -> Path | None:
    """The run the resume cell continues: ``run_name`` (or ``output_dir``) from the parameters cell when it ran,
    else the most recently active unfinished run under the runs root (``MyDrive`` on Colab, ``runs/`` elsewhere).
    Mounts Drive on Colab (when ``use_drive``). Says which run it picked, and why; None when there is none."""
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
    """The resume cell: find the run (``find_run``) and continue it from its newest checkpoint (``resume_training``).

    Needs nothing from the other cells: in a fresh kernel the parameters are simply not defined."""
    run_dir = find_run(run_name, output_dir, use_drive, log=log)
    return None if run_dir is None else resume_training(run_dir, live=live, log=log)


# --- results --------------------------------------------------------------------------------------------


def show_final(run_dir: str | Path, log=print) -> dict | None:
    """The before/after summary and the run report (reward, its components, the validation bars): the same
    ``reward_plot.png`` the run wrote at its end, drawn again from the files."""
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
    """The trained model's greedy answers to a few questions, with the name markers highlighted."""
    from IPython.display import HTML, display

    from . import compare, evaluation

    if not is_finished(run_dir):
        print(f"No trained model in {run_dir} yet.")
        return {}
    model, tok = evaluation.load_model(str(run_dir))
    answers = {
        q: evaluation.generate(model, tok, [q], max_new_tokens=max_new_tokens, temperature=0)[0][0].text
        for q in questions
    }
    display(
        HTML(
            "<ul>"
            + "".join(f"<li><i>{html.escape(q)}</i> &rarr; {compare.highlight(a)}</li>" for q, a in answers.items())
            + "</ul>"
        )
    )
    return answers
