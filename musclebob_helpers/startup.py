"""The start of a run, decided once: ``start(cfg)`` checks everything a run needs before any model loads and
returns one ``Start`` that the command line, the notebook and ``training.run_training`` hand on: the values, the
Hub token, the run folder (``run_dir.check``), the model and the machine, each failure one line (``ConfigError``).
Nothing is written; the checkpoint to resume is chosen once the folder is locked, in ``run_training``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from . import evaluation, run_dir, share, training
from .config import ConfigError, TrainConfig, validate_config


@dataclass(frozen=True)
class Start:
    """One run's start, resolved once by ``start``."""

    cfg: TrainConfig  # the settings it trains with (``--output-dir`` resolved; the notebook's continue: the saved)
    hardware: dict  # ``training.detect_hardware``: device, precision, ...
    folder: run_dir.RunFolder  # run and working folder, their state, what to do with it, the disk need
    procs: object  # accelerate's ``PartialState``: how many processes, whether this one writes


def start(cfg: TrainConfig, *, on_unfinished: str = "refuse", machine: dict | None = None, log=print) -> Start:
    """Check ``cfg``, its run folder, its model and this machine; the run's ``Start`` (``ConfigError``: why not).
    ``on_unfinished``: an unfinished run in the folder is refused (the command line) or continued with its saved
    settings (the notebook). ``machine``: a ``training.detect_hardware`` already made."""
    procs = training.process_state()
    validate_config(cfg, num_processes=procs.num_processes)
    if on_unfinished == "continue":
        continued = _continued(cfg, log)
        if continued is not cfg:  # the run's own settings, as saved by an older version perhaps
            cfg = continued
            validate_config(cfg, num_processes=procs.num_processes)
    share.check_hub_token(cfg)  # --push-to-hub without a token: one line now, not after training
    folder = run_dir.check(cfg, writer=procs.is_main_process)
    evaluation.check_model_loadable(cfg.model, cfg.trust_remote_code, cfg.max_completion_length)
    # The machine asked once (the notebook's parameters cell may have asked already), --precision decided here.
    hardware = training.with_precision(machine or training.detect_hardware(), cfg.precision)
    training.check_hardware_support(cfg, hardware)  # 16-bit, 4-bit, vLLM, trackers: before any model loads
    if str(folder.path) != str(run_dir.expand_path(cfg.output_dir)):
        cfg = dataclasses.replace(cfg, output_dir=str(folder.path))  # out/a/../b is out/b: no empty out/a made
    return Start(cfg=cfg, hardware=hardware, folder=folder, procs=procs)


def _continued(cfg: TrainConfig, log) -> TrainConfig:
    """``cfg``, or the saved settings of the unfinished run in its folder when ``run_dir.decide`` continues it."""
    path = run_dir.folder_path(cfg.output_dir)
    if not path.is_dir():
        return cfg
    found, local_only = run_dir.combined_state(path, run_dir.work_folder(path, cfg.work_dir))
    if cfg.resume_from_checkpoint is not None or run_dir.decide(cfg, found, local_only, True) != "continue":
        return cfg
    log("This run folder holds an unfinished run: continuing it.")
    return continue_with_saved(path, found, log, current=cfg)


def continue_with_saved(path, found: str, log, current: TrainConfig | None = None) -> TrainConfig:
    """The settings an unfinished run in ``path`` saved, to resume it (``current``: the settings asked for now,
    which lose: a change is named)."""
    # In the run folder, or only in the working folder when Drive failed before the first copy.
    saved = run_dir.saved_config(path) or run_dir.saved_config(
        run_dir.work_folder(path, current.work_dir if current else None)
    )
    if saved is None:
        raise ConfigError(
            "output_dir",
            str(path),
            f"{run_dir.CONFIG_FILE} there is missing or unreadable: the run's settings are lost",
        )
    saved = dataclasses.replace(saved, output_dir=str(path), resume_from_checkpoint="auto", overwrite=False)
    if current is not None:
        changed = [
            f.name
            for f in dataclasses.fields(TrainConfig)
            if f.name not in ("output_dir", "resume_from_checkpoint", "overwrite")
            and getattr(current, f.name) != getattr(saved, f.name)
        ]
        if changed:
            log(
                f"Note: {', '.join(changed)} differ from the run's saved settings; the run continues with its own "
                "(use a new run_name to train with the new ones)."
            )
    if found == "started":
        log("No checkpoint yet (it stopped in its first epoch): training this run again from step 0.")
    return saved


def saved_baseline(run: Start) -> dict | None:
    """The baseline this start reuses (``run_dir.saved_baseline``'s one rule), None: measure it."""
    return run_dir.saved_baseline(run.folder, run.cfg, run.hardware["precision"])
