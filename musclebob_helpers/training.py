"""The GRPO run: TRL's ``GRPOTrainer`` with the project's data, rewards, callbacks and artifacts.

``run_training(start)`` validates before and after, trains with one progress display and a checkpoint per
epoch, and writes the history and the final model; the notebooks and the training script both call it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import importlib.util
import os
import platform
import shutil
import signal
import sys
import time
import types
from pathlib import Path

from . import data, evaluation, run_dir
from .evaluation import precision_for
from .config import (
    LOSS_TYPES,
    TRACKERS,
    ConfigError,
    OneLineError,
    TrainConfig,
    completions_per_step,
    field_flags,
    recommend_preset,
    report_to,
    steps_per_epoch,
)
from .lock import writer_lock
from .io import give_umask_mode, json_list_item, read_json, write_json_atomic, write_json_list_atomic
from .lora import lora_config, quantization_config
from .monitoring import CompletionLog, HealthMonitor, MidTrainingValidation, Trackers, epoch_ended
from .rewards import make_reward_functions
from .run_dir import BASELINE_FILE, CONFIG_FILE, FINAL_FILE, HISTORY_FILE, REWARD_PLOT_FILE


def detect_hardware(precision: str = "auto") -> dict:
    """This machine: device, GPU name, memory, compute capability, the precision for ``precision`` and the preset
    that suits it. Whether it can do the precision asked is ``check_hardware_support``'s."""
    import torch

    hw = {"device": "cpu", "gpu_name": None, "gpu_memory_gb": 0.0, "compute_capability": None}
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        hw = {
            "device": "cuda",
            "gpu_name": props.name,
            "gpu_memory_gb": round(props.total_memory / 2**30, 1),
            "compute_capability": f"{props.major}.{props.minor}",
            "gpu_count": torch.cuda.device_count(),
        }
    hw = with_precision(hw, precision)
    return {**hw, "recommended_preset": recommend_preset(hw)}


def with_precision(hardware: dict, precision: str) -> dict:
    """``hardware`` with the precision for ``precision`` (``--precision``)."""
    capability = hardware.get("compute_capability")
    major_minor = tuple(int(n) for n in capability.split(".")) if capability else None
    return {**hardware, "precision": precision_for(hardware["device"], major_minor, precision)}


def process_state():
    """accelerate's ``PartialState`` (the processes of an ``accelerate launch`` run). ``cpu=True`` without CUDA, as
    the trainer asks it: otherwise it counts one process where launch started several over gloo."""
    import torch
    from accelerate import PartialState

    return PartialState(cpu=not torch.cuda.is_available())


def package_available(name: str) -> bool:
    """Whether ``name`` is installed, without importing it (a broken install must not break us here)."""
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


def _installed_version(dist: str) -> str | None:
    """The installed version of ``dist`` (from its metadata), None when absent."""
    import importlib.metadata

    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def _declared_requirement(dist: str, on: str, extra: str = ""):
    """What installed ``dist`` requires of ``on`` (a ``Requirement``, None: nothing or absent); ``extra``: that
    extra's requirement (``trl[vllm]``) instead. A marker that does not hold here does not count."""
    import importlib.metadata

    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    try:
        declared = importlib.metadata.requires(dist) or []
    except importlib.metadata.PackageNotFoundError:
        return None
    for line in declared:
        req = Requirement(line)
        if canonicalize_name(req.name) != canonicalize_name(on):
            continue
        if (req.marker is not None and "extra" in str(req.marker)) != bool(extra):
            continue  # an extra's requirement when the plain one was asked, or the other way round
        if req.marker is None or req.marker.evaluate({"extra": extra}):
            return req
    return None


_VLLM_MIN_CAPABILITY = "8.0"  # vLLM's attention kernels (FlashAttention) need Ampere or newer: a T4 is 7.5


def check_hardware_support(cfg: TrainConfig, hardware: dict) -> None:
    """ConfigError when the machine cannot do what ``cfg`` asks (precision, 4-bit, vLLM, trackers)."""
    gpu = hardware.get("device") == "cuda"
    if cfg.precision in ("fp16", "bf16") and not gpu:
        raise ConfigError("precision", cfg.precision, "fp32 or auto on a CPU (16-bit autocast is for CUDA GPUs here)")
    major = int(str(hardware.get("compute_capability") or "0").split(".")[0])
    if cfg.precision == "bf16" and gpu and major < 8:
        # torch would emulate it (torch.cuda.is_bf16_supported() says True on a T4), many times slower.
        raise ConfigError(
            "precision",
            cfg.precision,
            f"bf16 needs an Ampere or newer GPU (compute capability >= 8.0; {hardware.get('gpu_name')} is "
            f"{hardware.get('compute_capability')}): use fp32, or fp16",
        )
    if cfg.load_in_4bit:
        if not gpu:
            raise ConfigError(
                "load_in_4bit",
                True,
                "needs a CUDA GPU (bitsandbytes 4-bit does not run on a CPU); drop --load-in-4bit and keep --lora",
            )
        if not package_available("bitsandbytes"):
            raise ConfigError("load_in_4bit", True, "needs bitsandbytes: pip install bitsandbytes")
    if cfg.use_vllm:  # the first of: not installed, no GPU, this GPU or these versions (_vllm_problem)
        problem = (
            "vLLM is not installed (pip install vllm, on a GPU machine)"
            if not package_available("vllm")
            else "needs a CUDA GPU"
            if not gpu
            else _vllm_problem(hardware)
        )
        if problem:
            raise ConfigError("use_vllm", True, f"{problem}; drop --use-vllm to generate with transformers")
    _check_trackers(cfg)
    check_trl_settings(cfg)


def _vllm_problem(hardware: dict) -> str | None:
    """Why vLLM cannot generate here (None: it can): a GPU below ``_VLLM_MIN_CAPABILITY``, a vllm outside what
    ``trl[vllm]`` declares (TRL only warns), or a vllm built for another torch (each release pins one; a torch
    reinstalled after it leaves kernels that do not load)."""
    from packaging.version import Version

    capability = hardware.get("compute_capability")
    if capability and Version(capability) < Version(_VLLM_MIN_CAPABILITY):
        return (
            f"vLLM needs a GPU of compute capability {_VLLM_MIN_CAPABILITY} or newer (A100, L4, H100); "
            f"this {hardware.get('gpu_name') or 'GPU'} is {capability}"
        )
    vllm = _installed_version("vllm")
    if vllm is None:
        return None  # importable but without metadata (a source checkout): nothing to compare
    trl = _installed_version("trl")
    supported = _declared_requirement("trl", "vllm", extra="vllm")
    if supported is not None and not supported.specifier.contains(vllm, prereleases=True):
        return f"vllm {vllm} is installed, TRL {trl} supports vllm{supported.specifier}: pip install 'trl[vllm]=={trl}'"
    torch = _installed_version("torch")
    wants = _declared_requirement("vllm", "torch")
    if torch and wants is not None and wants.specifier and not wants.specifier.contains(torch, prereleases=True):
        return (
            f"vllm {vllm} was built for torch{wants.specifier} but torch {torch} is installed (torch reinstalled "
            f"after vllm, or vllm installed without its dependencies): pip install 'vllm=={vllm}' brings its torch"
        )
    return None


def _check_trackers(cfg: TrainConfig) -> None:
    """ConfigError when ``--report-to`` names a tracker whose package is not installed."""
    for name in report_to(cfg) or []:
        if not any(package_available(package) for package in TRACKERS[name]):
            raise ConfigError("report_to", cfg.report_to, f"{name} is not installed: pip install {TRACKERS[name][0]}")


# GRPOConfig fields grpo_args sets from an option of its own, whose flag --trl-arg points to (the fields named as
# TrainConfig's, like learning_rate, point to their own flag), or sets itself for the run's sake (why).
_TRL_FIELDS_OWNED = {
    "num_train_epochs": "use --epochs",
    "per_device_train_batch_size": "use --batch-size (prompts a step; each brings --num-generations completions)",
    "data_seed": "use --seed",
    "lr_scheduler_type": "use --lr-scheduler",
    "bf16": "use --precision",
    "fp16": "use --precision",
    "activation_checkpointing": "use --gradient-checkpointing",
    "vllm_mode": "use --use-vllm (colocate mode)",
    "save_total_limit": "use --keep-checkpoints",
    "save_strategy": "use --save-steps or --save-minutes (a checkpoint at each epoch's end is always made)",
    "run_name": "the tracker's run name is the run folder's name (--output-dir)",
    "use_cpu": "the device is chosen from the hardware",
    "logging_steps": "the project logs every step (reward_history.json, the health checks)",
    "warmup_steps": "the project warms up for 5 steps",
    "disable_tqdm": "the project shows its own progress",
    "dataloader_num_workers": "the project loads its prompts in the training process",
    "gradient_accumulation_steps": "use --batch-size (prompts an optimizer step, with no accumulation)",
}


def _trl_loss_types() -> list[str]:
    """The loss types the installed TRL knows: those of ``LOSS_TYPES`` its GRPOConfig documents (it keeps no list,
    and its trainer raises on an unknown one only in the first step's loss)."""
    from trl import GRPOConfig

    doc = next(f for f in dataclasses.fields(GRPOConfig) if f.name == "loss_type").metadata.get("help", "")
    return [name for name in LOSS_TYPES if f"'{name}'" in doc]


def _trl_overrides(cfg: TrainConfig) -> dict:
    """``--trl-arg KEY=VALUE`` as GRPOConfig keyword arguments, each value of its field's type; ConfigError in one
    line for a name GRPOConfig lacks (with a did-you-mean), one this project sets (and how to set it), or a value
    of the wrong type."""
    import difflib
    import typing

    from trl import GRPOConfig

    known = {f.name for f in dataclasses.fields(GRPOConfig) if f.init}
    hints = typing.get_type_hints(GRPOConfig)
    flags = field_flags()
    values = {}
    for item in cfg.trl_args:
        key, raw = item.split("=", 1)
        if key not in known:
            [near] = difflib.get_close_matches(key, known, n=1) or [None]
            # A near name this project sets points at how to set it: that --trl-arg would only be refused next.
            if near is None:
                hint = "see TRL's GRPOConfig for the names"
            elif near in _TRL_FIELDS_OWNED:
                hint = f"did you mean {near}? ({_TRL_FIELDS_OWNED[near]})"
            else:
                hint = f"did you mean {flags.get(near, near)}?"
            raise ConfigError("trl_args", item, f"GRPOConfig has no field {key!r}; {hint}")
        if key in flags or key in _TRL_FIELDS_OWNED:
            raise ConfigError("trl_args", item, _TRL_FIELDS_OWNED.get(key) or f"use {flags[key]}")
        try:
            values[key] = _typed(raw, hints[key])
        except ValueError as err:
            raise ConfigError("trl_args", item, f"{key} takes {err}") from None
    return values


def _typed(raw: str, hint):
    """``raw`` as a value of type ``hint``: bool, int, float, str (or a str Enum), None, a JSON list or object, or a
    union of them; ValueError naming what the type takes."""
    import json
    import typing

    kinds = typing.get_args(hint) if typing.get_origin(hint) in (typing.Union, types.UnionType) else (hint,)
    word = raw.strip().lower()
    if type(None) in kinds and word in ("none", "null"):
        return None
    if bool in kinds and word in ("true", "false", "yes", "no", "1", "0"):
        return word in ("true", "yes", "1")
    for kind in (int, float):
        if kind in kinds:
            with contextlib.suppress(ValueError):
                return kind(raw)
    containers = {typing.get_origin(k) or k for k in kinds} & {list, dict}
    if containers:
        with contextlib.suppress(ValueError):
            value = json.loads(raw)
            if type(value) in containers:
                return value
    if any(isinstance(k, type) and issubclass(k, str) for k in kinds):  # str, or an Enum of str like SaveStrategy
        return raw
    words = {bool: "true or false", int: "a whole number", float: "a number", type(None): "none"}
    words.update({list: "a JSON list like [1, 2]", dict: 'a JSON object like {"a": 1}'})
    named = [words.get(typing.get_origin(k) or k) for k in kinds]
    raise ValueError(" or ".join(w for w in named if w) or f"{hint}, which cannot be typed on a command line")


def check_trl_settings(cfg: TrainConfig) -> None:
    """ConfigError when the installed TRL cannot do what ``cfg`` asks of it: a loss type it lacks (Colab's 0.29.1
    has no vespo), or a ``--trl-arg`` it would not take (``_trl_overrides``)."""
    import trl

    supported = _trl_loss_types()
    if cfg.loss_type not in supported:
        raise ConfigError(
            "loss_type", cfg.loss_type, f"one of {', '.join(supported)} with the installed TRL {trl.__version__}"
        )
    _trl_overrides(cfg)


def _versions() -> dict:
    import importlib

    libraries = ("torch", "transformers", "trl", "datasets", "accelerate")
    return {"python": platform.python_version(), **{n: importlib.import_module(n).__version__ for n in libraries}}


def _make_callbacks(out_dir: str | Path, log=print):
    """The reward history callback and the progress display (``_show_progress``)."""
    from transformers import TrainerCallback

    class RewardHistoryCallback(TrainerCallback):
        """``reward_history.json``, one entry per step, rewritten at each log; on resume the entries past the
        checkpoint go first, so steps trained again replace theirs."""

        def __init__(self):
            self.path = Path(out_dir) / HISTORY_FILE
            self.history: list[dict] = []
            self.texts: list[str] = []  # each entry's JSON, encoded once

        def on_train_begin(self, args, state, control, **kwargs):
            old = read_json(self.path, default=[]) if state.global_step > 0 else []
            old = old if isinstance(old, list) else []
            kept = [
                e
                for e in old
                if isinstance(e, dict) and isinstance(e.get("step"), int) and 0 < e["step"] <= state.global_step
            ]
            if [e["step"] for e in kept] != list(range(1, state.global_step + 1)):
                # The file lost entries (deleted, or a Drive copy behind): the checkpoint's own log has them.
                kept = [
                    _history_entry(h, h["step"])
                    for h in state.log_history
                    if "reward" in h and isinstance(h.get("step"), int) and h["step"] <= state.global_step
                ]
            self.history = kept
            self.texts = [json_list_item(e) for e in kept]
            if state.is_world_process_zero:
                write_json_list_atomic(self.path, self.texts)

        def on_log(self, args, state, control, logs=None, **kwargs):
            if not logs or "reward" not in logs:
                return
            entry = _history_entry({"epoch": state.epoch or 0, **logs}, state.global_step)
            entry["time"] = round(time.time(), 2)
            kept = [i for i, e in enumerate(self.history) if e["step"] < entry["step"]]
            self.history = [self.history[i] for i in kept] + [entry]
            self.texts = [self.texts[i] for i in kept] + [json_list_item(entry)]
            if state.is_world_process_zero:
                # No fsync each step (1-2 % of a tiny run's train(), more when other writers keep the disk busy): a
                # kill keeps the renamed file, and after a machine crash on_train_begin rebuilds lost entries from
                # the checkpoint's log. Made durable at the end.
                write_json_list_atomic(self.path, self.texts, durable=False)

        def on_train_end(self, args, state, control, **kwargs):
            if state.is_world_process_zero:
                write_json_list_atomic(self.path, self.texts)

    class StepProgress(TrainerCallback):
        """A tqdm bar with the reward in a terminal; elsewhere (a log, a pipe, a notebook) a line per step,
        which a bar would fill with carriage-return junk."""

        def __init__(self):
            self.bar = None

        def on_train_begin(self, args, state, control, **kwargs):
            # getattr: a replaced sys.stdout (a test's, a notebook's) need not have isatty
            if state.is_world_process_zero and getattr(sys.stdout, "isatty", lambda: False)():
                from tqdm.auto import tqdm

                # On stdout, where the decision was made; initial: a resumed run's bar starts at its checkpoint.
                self.bar = tqdm(
                    total=state.max_steps, initial=state.global_step, unit="step", dynamic_ncols=True, file=sys.stdout
                )

        def on_step_end(self, args, state, control, **kwargs):
            if self.bar is not None:
                self.bar.update(state.global_step - self.bar.n)

        def on_log(self, args, state, control, logs=None, **kwargs):
            if not state.is_world_process_zero or not logs or "reward" not in logs:
                return
            if self.bar is not None:
                self.bar.set_postfix_str(f"reward {logs['reward']:+.3f} (std {logs.get('reward_std', 0.0):.3f})")
            else:
                log(
                    f"step {state.global_step}/{state.max_steps}  epoch {logs.get('epoch', 0):.2f}  "
                    f"mean reward {logs['reward']:+.3f} (std {logs.get('reward_std', 0.0):.3f})"
                )

        def on_train_end(self, args, state, control, **kwargs):
            if self.bar is not None:
                self.bar.close()
                self.bar = None

    return RewardHistoryCallback(), StepProgress()


def above_progress_bar(log):
    """``log``, with the progress bar cleared before each line and redrawn after."""
    from tqdm import tqdm

    def write(*args, **kwargs):
        with tqdm.external_write_mode():
            log(*args, **kwargs)

    return write


def _show_progress(trainer, progress) -> None:
    """``progress`` replaces transformers' bar, unless a caller's callback has ``shows_progress`` (the live plot)."""
    import transformers.trainer as hf_trainer

    trainer.remove_callback(hf_trainer.DEFAULT_PROGRESS_CALLBACK)  # added when disable_tqdm is False, as we set it
    if not any(getattr(cb, "shows_progress", False) for cb in trainer.callback_handler.callbacks):
        trainer.add_callback(progress)


@contextlib.contextmanager
def library_output_hidden():
    """While training: the libraries' own bars off (a second progress display at each save), and the
    FutureWarnings TRL's calls of transformers' renamed ``*gradient_checkpointing*`` methods raise at every
    generation hidden (nothing we pass causes or cures them). Any other warning shows."""
    import warnings

    from huggingface_hub.utils import are_progress_bars_disabled, disable_progress_bars, enable_progress_bars
    from transformers.utils import logging as hf_logging

    bars, hub_bars = hf_logging.is_progress_bar_enabled(), not are_progress_bars_disabled()
    hf_logging.disable_progress_bar()  # the hub's bars too: both are put back as they were
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings(
                "ignore",
                message=r"`(is_gradient_checkpointing|gradient_checkpointing_enable|gradient_checkpointing_disable)` is",
                category=FutureWarning,
                module=r"transformers\.modeling_utils",
            )
            yield
    finally:
        if bars:
            hf_logging.enable_progress_bar()
        (enable_progress_bars if hub_bars else disable_progress_bars)()


def _history_entry(logs: dict, step: int) -> dict:
    """One ``reward_history.json`` entry from a logged dict (live, or from the saved log history)."""
    entry = {
        "step": step,
        "epoch": round(float(logs.get("epoch") or 0), 4),
        "mean_reward": logs["reward"],
        "reward_std": logs.get("reward_std"),
    }
    kept = "frac_reward_zero_std kl entropy learning_rate completions/mean_length completions/clipped_ratio".split()
    return {**entry, **{k: v for k, v in logs.items() if k.startswith("rewards/") or k in kept}}


def _memory_report(cfg: TrainConfig, hardware: dict, num_processes: int = 1, log=print) -> None:
    """Print the GPU memory estimate, and a warning when it will not fit (GPU runs only)."""
    from . import memory

    if hardware["device"] != "cuda":
        return
    shape = memory.model_shape(cfg.model)
    if shape is None:
        log("GPU memory estimate: unavailable (the model's config could not be read).")
        return
    gpu_gb = hardware["gpu_memory_gb"]
    est = memory.estimate_memory(
        shape, cfg, precision=hardware["precision"], num_processes=num_processes, gpu_memory_gb=gpu_gb
    )
    log(est.table())
    warning = memory.fit_warning(est, gpu_gb, cfg)
    if warning:
        log(warning)


def grpo_args(cfg: TrainConfig, hardware: dict, num_processes: int = 1, out: Path | None = None):
    """TRL's ``GRPOConfig`` for a run; ``out``: the folder the trainer writes (``RunFolder.work``)."""
    from trl import GRPOConfig

    precision = hardware["precision"]
    return GRPOConfig(
        output_dir=str(out) if out is not None else cfg.output_dir,
        num_train_epochs=cfg.epochs,
        learning_rate=cfg.learning_rate,
        # GRPOConfig counts completions per process: one step sees batch_size prompts x num_generations
        # answers in all, split evenly over the processes of an `accelerate launch` run.
        per_device_train_batch_size=cfg.batch_size * cfg.num_generations // num_processes,
        num_generations=cfg.num_generations,
        max_completion_length=cfg.max_completion_length,
        temperature=cfg.temperature,
        beta=cfg.beta,
        loss_type=cfg.loss_type,
        scale_rewards=cfg.scale_rewards,
        mask_truncated_completions=cfg.mask_truncated_completions,
        num_iterations=cfg.num_iterations,
        epsilon=cfg.epsilon,
        epsilon_high=cfg.epsilon_high,
        seed=cfg.seed,
        data_seed=cfg.seed,
        logging_steps=1,
        save_strategy="epoch",  # and mid-epoch with --save-steps / --save-minutes (_save_schedule_callback)
        # No save_total_limit: run_dir.rotate_checkpoints keeps --keep-checkpoints of them, and only once
        # the newest is intact (transformers' own rotation counts checkpoint-N.damaged folders as checkpoints).
        report_to=report_to(cfg) or "none",
        run_name=Path(cfg.output_dir).expanduser().name,  # the run's name in a tracker
        bf16=precision == "bf16",  # GRPOConfig defaults to bf16, which fails on a CPU: always set it
        fp16=precision == "fp16",
        use_cpu=hardware["device"] == "cpu",
        lr_scheduler_type=cfg.lr_scheduler,
        warmup_steps=min(5, steps_per_epoch(cfg)),
        disable_tqdm=False,
        dataloader_num_workers=0,
        **_checkpointing_arg(GRPOConfig, cfg.gradient_checkpointing),
        use_vllm=cfg.use_vllm,
        # TRL's colocate mode: one vLLM engine inside each training process, no separate server to start.
        **(
            dict(vllm_mode="colocate", vllm_gpu_memory_utilization=cfg.vllm_gpu_memory_utilization)
            if cfg.use_vllm
            else {}
        ),
        **_trl_overrides(cfg),  # --trl-arg: any other field (none of those above: _trl_overrides refuses them)
    )


def _checkpointing_arg(config_class, enabled: bool) -> dict:
    """Activation checkpointing under the installed transformers' name: newer ones renamed it (the old name warns,
    and TRL's default counts as using it); Colab's knows only ``gradient_checkpointing``."""
    names = {f.name for f in dataclasses.fields(config_class)}
    return {("activation_checkpointing" if "activation_checkpointing" in names else "gradient_checkpointing"): enabled}


def _resume_schedule(optimizer, scheduler, learning_rate: float) -> float | None:
    """The resumed run's schedule as this run defines it, at the loaded step; returns the checkpoint's base rate
    when ``learning_rate`` replaced it (None: the same). A loaded checkpoint restores the old run's rates, so a
    new ``--learning-rate``, ``--epochs`` or ``--lr-scheduler`` would be ignored for the first step or for good.
    Unchanged settings give back exactly the loaded rates; DeepSpeed's wrapper (no ``base_lrs``) is left alone."""
    bases = getattr(scheduler, "base_lrs", None)
    if not bases or not bases[0]:
        return None
    old = bases[0]
    if learning_rate != old:

        def rebased(value: float) -> float:
            return learning_rate if value == old else value * (learning_rate / old)

        scheduler.base_lrs = [rebased(b) for b in bases]
        for group in optimizer.param_groups:
            group["initial_lr"] = rebased(group.get("initial_lr", old))
    factors = getattr(scheduler, "lr_lambdas", None)  # every schedule of LR_SCHEDULERS is a LambdaLR
    if factors and len(factors) == len(optimizer.param_groups):
        for group, base, factor in zip(optimizer.param_groups, scheduler.base_lrs, factors):
            group["lr"] = base * factor(scheduler.last_epoch)
        scheduler._last_lr = [group["lr"] for group in optimizer.param_groups]  # what get_last_lr() reports
    return old if learning_rate != old else None


@functools.cache
def trainer_class():
    """``GRPOTrainer`` whose prompt order depends on (seed, epoch) only, so a resumed epoch sees the same batches:
    TRL's sampler seeds its generator once, so after a restart epoch 2 would replay epoch 1's order. A resume
    trains at the rate asked for (``_resume_schedule``)."""
    from torch.utils.data import Sampler
    from trl import GRPOTrainer

    class EpochSeededSampler(Sampler):
        def __init__(self, inner):
            self.inner = inner

        def set_epoch(self, epoch: int) -> None:
            if getattr(self.inner, "shuffle", False) and getattr(self.inner, "seed", None) is not None:
                self.inner.generator.manual_seed(self.inner.seed + epoch)

        def __iter__(self):
            return iter(self.inner)

        def __len__(self):
            return len(self.inner)

    class ResumableGRPOTrainer(GRPOTrainer):
        def _get_train_sampler(self, *args, **kwargs):
            return EpochSeededSampler(super()._get_train_sampler(*args, **kwargs))

        def _generate_single_turn(self, *args, **kwargs):
            # The rollouts in the run's autocast (a PEFT model's generate skips the one accelerate puts on
            # forward), and inf/nan logits as one line rather than torch.multinomial's traceback. vLLM
            # generates in its own engine: neither applies there.
            if self.use_vllm:
                return super()._generate_single_turn(*args, **kwargs)
            precision = "bf16" if self.args.bf16 else "fp16" if self.args.fp16 else "fp32"
            with (
                evaluation.generating_in(self.model, precision),
                evaluation.finite_logits_guard(self.model, precision, "a training rollout"),
            ):
                return super()._generate_single_turn(*args, **kwargs)

        def _load_optimizer_and_scheduler(self, checkpoint):
            super()._load_optimizer_and_scheduler(checkpoint)
            if checkpoint is not None:
                _resume_schedule(self.optimizer, self.lr_scheduler, self.args.learning_rate)

    return ResumableGRPOTrainer


def grpo_trainer(cfg: TrainConfig, model, tokenizer, args, callbacks=()):
    """A ``trainer_class()`` on the run's prompts and rewards, with ``args`` and ``cfg``'s LoRA adapter."""
    from datasets import Dataset

    rows = data.build_train_rows(cfg.num_samples, cfg.fewshot_ratio, cfg.use_fewshot, cfg.control_ratio, cfg.seed)
    trainer = trainer_class()(
        model=model,
        reward_funcs=make_reward_functions(cfg.reward, evaluation.eos_ids(model, tokenizer)),
        args=args,
        train_dataset=Dataset.from_list(rows),
        processing_class=tokenizer,
        callbacks=list(callbacks),
        peft_config=lora_config(cfg),
    )
    _fp32_trainables_under_fp16(trainer.model, args)  # before train() creates the optimizer over them
    return trainer


def _fp32_trainables_under_fp16(model, args) -> list[str]:
    """In an fp16 run, every trainable parameter in fp32; returns the names of those it cast. TRL casts a QLoRA
    model's trainables to bf16, and fp16's GradScaler has no bf16 unscale kernel (NotImplementedError at the first
    step); an fp16 adapter would lose AdamW's small updates. bf16 needs no scaler: it keeps TRL's adapter."""
    import torch

    if not args.fp16:
        return []
    cast = []
    for name, param in model.named_parameters():
        if param.requires_grad and param.is_floating_point() and param.dtype != torch.float32:
            param.data = param.data.float()
            cast.append(name)
    return cast


def build_trainer(
    cfg: TrainConfig,
    model,
    tokenizer,
    hardware: dict,
    out: Path,
    baseline: dict,
    log=print,
    callbacks=(),
    num_processes: int = 1,
    recovery: CollapseRecovery | None = None,
):
    """The trainer ``run_training`` trains with, its project callbacks before the caller's, and its
    ``HealthMonitor`` (a function of its own so ``benchmarks/bench_overhead.py`` times exactly this trainer)."""
    check_rows = data.check_rows()
    # A check asks fewer questions than the baseline did: compare it with the baseline's answers to the same ones.
    trackers = Trackers()
    monitor = HealthMonitor(
        out, baseline=evaluation.on_rows(baseline, check_rows), log=log, trackers=trackers, recovery=recovery
    )
    checks = MidTrainingValidation(
        out,
        tokenizer,
        check_rows,
        every_steps=cfg.validate_every,
        completions_per_step=completions_per_step(cfg),
        max_new_tokens=cfg.max_completion_length,
        monitor=monitor,
        log=log,
        trackers=trackers,
        precision=hardware["precision"],
    )
    history_cb, progress = _make_callbacks(out, log=log)
    completions = CompletionLog(out)
    args = grpo_args(cfg, hardware, num_processes, out=out)
    if recovery is not None:  # the rate of a resumed run that recovered before: lowered as it was
        args.learning_rate = run_dir.recovered_rate(recovery.recovered, cfg.learning_rate)
    trainer = grpo_trainer(
        cfg,
        model,
        tokenizer,
        args,
        callbacks=[
            history_cb,
            completions,
            monitor,
            checks,
            _before_manifest_callback(recovery, cfg.model if cfg.lora else None),
            run_dir.make_save_callback(cfg.keep_checkpoints, log=log),  # the checkpoint's manifest, then rotation
            _save_schedule_callback(cfg.save_steps, cfg.save_minutes),  # mid-epoch saves, if asked
            *callbacks,
        ],
    )
    completions.bind(trainer)
    trackers.bind(trainer)
    if recovery is not None:
        recovery.bind(trainer)
    _show_progress(trainer, progress)
    return trainer, monitor


# --- going back from a collapse (--on-collapse) -----------------------------------------------------------

_MAX_RECOVERIES = 2  # a collapse after two recoveries means the recipe is wrong, not bad luck
_RECOVERY_RATE_FACTOR = 0.25  # the learning rate after a recovery, as a share of the one before
# Control accuracy kept (share of the baseline's) below which a check sends the run back while a recovery is left:
# stricter than the health report's 80 %, since going back is cheap and the goal is 90 % kept at the end.
_RECOVERY_CONTROL_KEPT = 0.9
# ... and kept by a state worth going back to: a check just above 90 % is often a model on its way down
# (benchmarks/bench_learning.py: at lr 2e-3, 91-92 % at step 16, 83 % at the end).
_HEALTHY_CONTROL_KEPT = 0.95


class CollapseStop(OneLineError):
    """The run stopped at a collapse, its last healthy state saved as the checkpoint of the step it stopped at."""

    def __init__(self, step: int, problems: list[str], healthy_step: int, rate: float, recovered: int):
        super().__init__(step, problems, healthy_step, rate, recovered)
        self.step, self.problems, self.healthy_step, self.rate = step, problems, healthy_step, rate
        self.recovered = recovered

    @property
    def suggested_rate(self) -> float:
        return self.rate * _RECOVERY_RATE_FACTOR

    def line(self, resume_with: str) -> str:
        why = f"after {self.recovered} recoveries " if self.recovered else ""
        return (
            f"stopped {why}at step {self.step}: the mid-training check saw {'; '.join(self.problems)}; "
            f"checkpoint-{self.step} holds the healthy state of step {self.healthy_step}; lower the learning rate "
            f"(now {self.rate:.3g}, try {self.suggested_rate:.3g}) or raise --control-ratio, and {resume_with}"
        )

    def __str__(self) -> str:
        return self.line(f"resume with --learning-rate {self.suggested_rate:.3g} --resume-from-checkpoint auto")


class CollapseRecovery:
    """``--on-collapse``: a check that finds the model broken sends it back to the newest healthy state (trainable
    weights and Adam's state, on CPU: ~6 GB for a 0.5B full fine-tune) at a rate cut by ``_RECOVERY_RATE_FACTOR``,
    at most ``_MAX_RECOVERIES`` times, or stops there (``CollapseStop``). Step count, data order and schedule go on.

    A resume is exact: a checkpoint saved after the last healthy check carries its state
    (``run_dir.HEALTHY_STATE_FILE``), and each recovery is a segment of ``training_config.json`` whose rate a
    resume applies again. ``bind(trainer)`` once the trainer exists."""

    def __init__(self, mode: str, out: Path, resume: str | None, recovered: list[dict], log=print):
        self.mode, self.out, self.resume, self.log = mode, Path(out), resume, log
        self.recovered = list(recovered)  # this run's recoveries so far (the segments a resume kept)
        self.trainer = None
        self.healthy: dict | None = None  # {"step", "params", "optimizer"}: the newest healthy state, on CPU
        self.current = True  # whether the weights are still the healthy state's (no optimizer step since)
        self.stopped: CollapseStop | None = None

    def bind(self, trainer) -> None:
        self.trainer = trainer
        if getattr(trainer, "is_deepspeed_enabled", False):  # ZeRO shards the weights and the optimizer state
            self.log("--on-collapse: DeepSpeed shards the state a recovery would copy; a collapse only warns.")
            self.mode = "warn"

    def min_control_kept(self, state) -> float:
        """The control accuracy kept below which a check counts as a collapse: ``_RECOVERY_CONTROL_KEPT`` while a
        recovery is left and steps remain (at the last step the final validation judges), else the health report's."""
        steps_left = state.global_step < state.max_steps
        if self.mode == "recover" and self.healthy is not None and len(self.recovered) < _MAX_RECOVERIES and steps_left:
            return _RECOVERY_CONTROL_KEPT
        return evaluation.MIN_CONTROL_ACCURACY_KEPT

    def worth_keeping(self, report: dict, baseline: dict | None) -> bool:
        """Whether a check's state is one to go back to (``_HEALTHY_CONTROL_KEPT`` of the control accuracy kept)."""
        return not evaluation.health(report, baseline, _HEALTHY_CONTROL_KEPT)

    def _params(self) -> list:
        return [p for p in self.trainer.model.parameters() if p.requires_grad]

    def _copy_now(self, step: int) -> dict:
        state = self.trainer.optimizer.state_dict()["state"]
        return {
            "step": step,
            "params": [p.detach().to("cpu", copy=True) for p in self._params()],
            "optimizer": {k: {n: _copied(v) for n, v in s.items()} for k, s in state.items()},
        }

    def begin(self, step: int) -> None:
        """At train begin: the healthy state is the one the checkpoint carries, else the state loaded."""
        import torch

        if self.mode == "warn":
            return
        saved = Path(self.resume) / run_dir.HEALTHY_STATE_FILE if self.resume else None
        if saved is not None and saved.is_file():
            self.healthy, self.current = torch.load(saved, map_location="cpu", weights_only=True), False
        else:
            self.healthy, self.current = self._copy_now(step), True

    def mark_healthy(self, step: int) -> None:
        if self.mode != "warn":
            self.healthy, self.current = self._copy_now(step), True

    def stepped(self) -> None:
        self.current = False

    def _restore(self) -> None:
        import torch

        with torch.no_grad():
            for p, saved in zip(self._params(), self.healthy["params"]):
                p.copy_(saved)
        optimizer = self.trainer.optimizer
        now = optimizer.state_dict()  # its param_groups (the rates) stay; the moments go back
        # copies: load_state_dict keeps a tensor already on the right device as it is, and Adam updates in place
        now["state"] = {k: {n: _copied(v) for n, v in s.items()} for k, s in self.healthy["optimizer"].items()}
        optimizer.load_state_dict(now)
        self.current = True

    def collapsed(self, state, control, problems: list[str]) -> dict | None:
        """Act on a check that found ``problems``; the ``health_warnings.json`` entry (None: just warn)."""
        if self.mode == "warn" or self.healthy is None:
            return None
        saw, step, back = "; ".join(problems), state.global_step, self.healthy["step"]
        rate = getattr(self.trainer.lr_scheduler, "base_lrs", [None])[0] or self.trainer.args.learning_rate
        self._restore()
        if self.mode == "stop" or len(self.recovered) >= _MAX_RECOVERIES:
            self.stopped = CollapseStop(step, problems, back, rate, len(self.recovered))
            control.should_save = True  # the healthy state, as checkpoint-<step>: what a resume continues from
            control.should_training_stop = True
            message = f"stopped at step {step}: the check saw {saw}; checkpoint-{step} holds step {back}'s state"
            return {"step": step, "kind": "collapse_stop", "message": message, "back_to": back}
        new = rate * _RECOVERY_RATE_FACTOR
        _resume_schedule(self.trainer.optimizer, self.trainer.lr_scheduler, new)
        number = len(self.recovered) + 1
        recovery = {"number": number, "back_to": back, "saw": problems}
        self.recovered.append({"from_step": step, "changed": {"learning_rate": [rate, new]}, "recovery": recovery})
        if state.is_world_process_zero:
            run_dir.add_recovery(self.out, step, rate, new, recovery)
        message = (
            f"recovered at step {step} ({number} of {_MAX_RECOVERIES}): the check saw {saw}; back to the healthy "
            f"state of step {back}, learning rate {rate:.3g} -> {new:.3g}"
        )
        self.log(message)
        return {"step": step, "kind": "recovery", "message": message, "back_to": back, "learning_rate": new}

    def saved(self, checkpoint: Path) -> None:
        """After a checkpoint's files, before its manifest: the healthy state goes with it unless it is that state."""
        import torch

        if not self.current and self.healthy is not None and checkpoint.is_dir():
            torch.save(self.healthy, checkpoint / run_dir.HEALTHY_STATE_FILE)

    def raise_if_stopped(self) -> None:
        if self.stopped is not None:
            raise self.stopped


def _copied(value):
    """A CPU copy of an optimizer state tensor, or the number itself."""
    return value.detach().to("cpu", copy=True) if hasattr(value, "detach") else value


def _before_manifest_callback(recovery: CollapseRecovery | None, adapter_base: str | None):
    """Tells ``recovery`` of train begin, each optimizer step and each save (the checks reach it through
    ``HealthMonitor``), and records ``adapter_base`` (--model, e.g. 'tiny') as each adapter checkpoint's base. Goes
    before ``run_dir.make_save_callback``: the checkpoint's manifest must list what this adds or edits."""
    from transformers import TrainerCallback

    from .lora import is_adapter_dir, record_base_model

    class BeforeManifest(TrainerCallback):
        def on_train_begin(self, args, state, control, **kwargs):
            if recovery is not None:
                recovery.begin(state.global_step)

        def on_optimizer_step(self, args, state, control, **kwargs):
            if recovery is not None:
                recovery.stepped()

        def on_save(self, args, state, control, **kwargs):
            ckpt = Path(args.output_dir) / f"checkpoint-{state.global_step}"
            if state.is_world_process_zero and recovery is not None:
                recovery.saved(ckpt)
            if state.is_world_process_zero and adapter_base is not None and is_adapter_dir(ckpt):
                record_base_model(ckpt, adapter_base)

    return BeforeManifest()


# --- checkpoints by step and by time (--save-steps, --save-minutes) ---------------------------------------


def _save_schedule_callback(save_steps: int, save_minutes: float):
    """Mid-epoch checkpoints: every ``save_steps`` steps, and ``save_minutes`` after the last save (0: off). The
    processes of a launch agree on the time (``_max_over_processes``), or the others would wait in the save."""
    from transformers import TrainerCallback

    class SaveOnSchedule(TrainerCallback):
        def __init__(self):
            self.last_save = time.monotonic()

        def on_train_begin(self, args, state, control, **kwargs):
            self.last_save = time.monotonic()  # a resumed run counts from its start, not from its checkpoint

        def on_step_end(self, args, state, control, **kwargs):
            by_steps = save_steps > 0 and state.global_step % save_steps == 0
            by_time = save_minutes > 0 and _max_over_processes(
                int(time.monotonic() - self.last_save >= save_minutes * 60)
            )
            if (by_steps or by_time) and not epoch_ended(state):
                control.should_save = True
            return control

        def on_save(self, args, state, control, **kwargs):
            self.last_save = time.monotonic()  # every save, the epoch's and a signal's too, restarts the clock

    return SaveOnSchedule()


# --- a graceful stop (SIGINT, SIGTERM) ---------------------------------------------------------------------

_STOP_SIGNALS = ("SIGINT", "SIGTERM")  # Ctrl-C / Colab's "Interrupt execution"; a scheduler, `timeout`, docker stop
# Under `accelerate launch` a Ctrl-C reaches each process from the terminal and again from the launcher: the same
# signal within this many seconds is that echo, not a second Ctrl-C.
_LAUNCHER_ECHO_S = 5.0


class Stopped(KeyboardInterrupt):
    """The run stopped on a signal, its folder resumable; a KeyboardInterrupt, so ``except Exception`` does not
    swallow it. ``checkpoint``: the one saved at ``step`` (None: stopped at once, ``training``: during the steps)."""

    def __init__(
        self,
        signum: int,
        step: int | None = None,
        max_steps: int | None = None,
        checkpoint: str | None = None,
        training: bool = True,
    ):
        super().__init__(signum, step, max_steps, checkpoint, training)
        self.signum, self.step, self.max_steps, self.checkpoint = signum, step, max_steps, checkpoint
        self.training = training

    @property
    def exit_code(self) -> int:
        return 128 + self.signum  # the shell's convention: 130 for SIGINT, 143 for SIGTERM

    def line(self, resume_with: str) -> str:
        name = signal.Signals(self.signum).name
        if self.step is None:
            return f"stopped ({name}) before training began; start again with: {resume_with}"
        at = f"at step {self.step} of {self.max_steps}"
        if self.checkpoint is not None:
            return f"stopped {at}; {Path(self.checkpoint).name} saved; resume with: {resume_with}"
        if not self.training:  # validating or saving the trained model
            return f"stopped ({name}) {at}, before the end of the run; resume with: {resume_with}"
        return f"stopped at once ({name}) {at}; the step in progress is lost; resume with: {resume_with}"

    def __str__(self) -> str:
        return self.line("--resume-from-checkpoint auto")


def _max_over_processes(mine: int) -> int:
    """The largest of every process's ``mine`` (a MAX all-reduce); every process must call it at the same point."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
        return mine
    import torch

    device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else "cpu"
    flag = torch.tensor([mine], device=device)
    dist.all_reduce(flag, op=dist.ReduceOp.MAX)
    return int(flag.item())


class GracefulStop:
    """SIGINT / SIGTERM while ``run_training`` runs. While training, the first signal saves a checkpoint at the
    step's end and stops the trainer as usual; ``Stopped`` follows instead of the final validation. A second
    signal, or one outside training, raises ``Stopped`` at once (a resume repairs what it cuts short).

    Installed from the main thread only and put back after (a notebook kernel gets its own back); SIG_IGN
    (``nohup``) stays ignored. The processes of a launch agree at each step's end, so all stop together."""

    def __init__(self):
        self.signum: int | None = None  # the first signal received
        self.first_at = 0.0  # when (time.monotonic)
        self.echo_s = _LAUNCHER_ECHO_S if os.environ.get("TORCHELASTIC_RUN_ID") else 0.0  # set by torchrun
        self.stop_step: int | None = None  # the step every process agreed to stop after
        self.state = None  # the trainer's state while it trains
        self.training = False

    @contextlib.contextmanager
    def handlers(self):
        import threading

        installed = {}
        if threading.current_thread() is threading.main_thread():
            for name in _STOP_SIGNALS:
                signum = getattr(signal, name)
                if signal.getsignal(signum) is not signal.SIG_IGN:
                    installed[signum] = signal.signal(signum, self._handle)
        try:
            yield self
        finally:
            for signum, previous in installed.items():
                signal.signal(signum, previous)

    def _handle(self, signum, frame):
        # Nothing is printed here: a handler may run in the middle of a print to the same stream.
        now = time.monotonic()
        if signum == self.signum and now - self.first_at < self.echo_s:
            return  # the launcher forwarding the Ctrl-C this process already got
        first = self.signum is None
        if first:
            self.signum, self.first_at = signum, now
        if first and self.training:
            return
        step, total = (self.state.global_step, self.state.max_steps) if self.state else (None, None)
        raise Stopped(signum, step, total, training=self.training)

    def callback(self):
        from transformers import TrainerCallback

        stop = self

        class StopAtStepEnd(TrainerCallback):
            def on_train_begin(self, args, state, control, **kwargs):
                stop.state, stop.training = state, True

            def on_step_end(self, args, state, control, **kwargs):
                # The signal every process agrees to stop on (0: go on): each may get Ctrl-C in another step, and
                # one stopping alone would leave the others waiting in the next step's collectives.
                agreed = _max_over_processes(stop.signum or 0) if stop.stop_step is None else 0
                if agreed:
                    stop.signum, stop.stop_step = agreed, state.global_step
                    if not epoch_ended(state):
                        control.should_save = True  # at an epoch's end the epoch checkpoint is this step's
                return control

            def on_save(self, args, state, control, **kwargs):
                if stop.stop_step == state.global_step:
                    control.should_training_stop = True  # once saved: the saved state is a plain checkpoint's
                return control

            def on_epoch_end(self, args, state, control, **kwargs):
                if stop.stop_step is not None and not epoch_ended(state):
                    control.should_save = False  # this step's checkpoint is written; the epoch did not end
                return control

            def on_train_end(self, args, state, control, **kwargs):
                stop.training = False

        return StopAtStepEnd()

    def raise_if_stopped(self, out: Path) -> None:
        """After ``trainer.train()``: ``Stopped`` with the checkpoint saved, when a signal came while it trained."""
        if self.signum is None:
            return
        step = self.state.global_step
        saved = out / f"checkpoint-{step}"
        if not saved.is_dir():  # the signal came after the last step's own save
            saved = (run_dir.list_checkpoints(out) or [None])[-1]
        raise Stopped(self.signum, step, self.state.max_steps, str(saved) if saved else None)


def run_training(run, log=print, callbacks=(), baseline: dict | None = None, remount=None) -> dict:
    """Train, validate before and after, save artifacts; returns the two validation reports.

    ``run``: ``startup.start(cfg)``. ``callbacks``: extra ``TrainerCallback``s (the live plot, tests' fault injection).
    ``baseline``: one already measured (the notebook's cell). ``remount``: remounts Colab's Drive once before the
    mirror's final copy gives up. A signal raises ``Stopped``. ``copy_pending`` (None: all copied) says why a
    mirrored run folder lacks the run, complete in ``work_dir``; ``--resume-from-checkpoint auto`` copies it.
    """
    cfg, folder, hardware, procs = run.cfg, run.folder, run.hardware, run.procs
    stop = GracefulStop()
    with stop.handlers():
        # Under `accelerate launch` every process trains and validates; only the main one writes and logs.
        main = procs.is_main_process
        if not main:
            log = _quiet
        # One writer per folder: locked before anything in it is written or deleted.
        with contextlib.ExitStack() as held:
            if main:
                held.enter_context(writer_lock(folder.path, shown=folder.shown))
                if folder.mirrored:  # and its working folder: two runs given one --work-dir would mix their files
                    held.enter_context(writer_lock(folder.work, shown=folder.shown))
            result = _train(cfg, procs, hardware, folder, log, [*callbacks, stop.callback()], baseline, stop, remount)
            if main and cfg.push_to_hub:  # at the very end: a failed push is one line, the run stays complete
                from .share import push_after_run

                result["push_problem"] = push_after_run(cfg, result.get("work_dir") or result["output_dir"], log)
            return result


def _prepare_folders(folder: run_dir.RunFolder, log) -> None:
    """Under the lock: interrupted runs' leftovers removed, the previous run cleared on ``--overwrite``, the
    working folder made."""
    for place in folder.folders():
        for stale in run_dir.remove_stale_temp_files(place):
            log(f"Removed {stale.name}: a half-written temporary file left by an interrupted run.")
        for name in run_dir.remove_leftover_deletions(place):
            log(f"Removed {name}: an old checkpoint whose deletion or copy an interruption cut short.")
        if folder.action == "overwrite":
            removed = run_dir.clear_run(place)
            if removed:
                log(f"--overwrite: removed the previous run's {', '.join(removed)} in {place}.")
    folder.work.mkdir(parents=True, exist_ok=True)


def _train(cfg, procs, hardware, folder, log, callbacks, baseline, stop: GracefulStop, remount=None) -> dict:
    """``run_training`` once the folder is checked and locked, under ``stop``'s signal handlers."""
    from .mirror import Mirror

    main = procs.is_main_process
    if main:
        _prepare_folders(folder, log)
    out = folder.work  # where training writes; the run folder itself unless it is mirrored
    mirror = Mirror(folder, cfg.keep_checkpoints, log=log, remount=remount) if folder.mirrored and main else None
    if mirror is not None:
        where = f"on {folder.fs_type or 'a remote file system'}" if not cfg.work_dir else "mirrored (--work-dir)"
        log(
            f"The run folder {folder.path} is {where}: training in {out} on local disk, copied there as it goes "
            f"(checkpoints once verified, the rest every {mirror.interval:.0f} s)."
        )
    # A run finished in its working folder while the run folder failed: its resume only copies it.
    if folder.mirrored and cfg.resume_from_checkpoint == "auto":
        if run_dir.combined_state(folder.path, out) == ("finished", True):
            if mirror is None:  # another process of an `accelerate launch` run: the main one copies
                return {"final": read_json(out / FINAL_FILE) or {}, "output_dir": str(folder.path)}
            return _finish_copy(folder, mirror, log)
    folder = folder.with_resume(cfg, log=log)
    resume = str(folder.resume) if folder.resume else None
    if mirror is not None and folder.resume is not None and folder.resume.parent == folder.path:
        mirror.seed_work_folder()  # a new machine: the run's files as the run folder holds them
    try:
        result = _train_in(cfg, procs, hardware, folder, out, resume, log, callbacks, baseline, stop, mirror)
    except BaseException:
        if mirror is not None:  # stopped or failed: what was saved still reaches the run folder
            mirror.finish(wait_s=0)
        raise
    if mirror is not None:
        result.update(_end_copy(folder, mirror, log))
    return result


def _finish_copy(folder: run_dir.RunFolder, mirror, log) -> dict:
    """A run that finished in its working folder while the run folder failed: copy it, train nothing."""
    log(f"The run finished in {folder.work} but its copy to {folder.path} did not: copying it now.")
    done = _result(read_json(folder.work / BASELINE_FILE) or {}, read_json(folder.work / FINAL_FILE) or {}, folder)
    return {**done, **_end_copy(folder, mirror, log)}


def _result(baseline: dict, final: dict, folder: run_dir.RunFolder) -> dict:
    """What ``run_training`` returns of a run done: its two validations, folder and steps."""
    return {
        "baseline": baseline,
        "final": final,
        "output_dir": str(folder.path),
        "global_step": final.get("global_step"),
    }


def _end_copy(folder: run_dir.RunFolder, mirror, log) -> dict:
    """The mirror's final copy: the run folder complete (an automatic working folder removed), or why not."""
    from .mirror import behind_line

    if mirror.finish():
        lag = f"; each checkpoint verified there {max(mirror.lags):.1f} s after its save at most" if mirror.lags else ""
        log(f"Run folder {folder.path}: complete and verified{lag}.")
        log(f"Reward plot: {folder.path / REWARD_PLOT_FILE}")
        if folder.work == run_dir.work_folder(folder.path, None, folder.fs_type):
            shutil.rmtree(folder.work, ignore_errors=True)  # ours, and a copy of what the run folder now holds
        return {"copy_pending": None, "mirror": mirror.summary()}
    log(f"Reward plot: {folder.work / REWARD_PLOT_FILE}")
    return {"copy_pending": behind_line(mirror), "mirror": mirror.summary(), "work_dir": str(folder.work)}


def load_for_training(cfg: TrainConfig, hardware: dict, device: str | None = None):
    """(model, tokenizer) as a run trains them: in its precision (4-bit when asked), an adapter folder merged, the
    weights in ``evaluation.run_dtypes``' dtype. The notebook's baseline cell loads it so too."""
    model, tokenizer = evaluation.load_model(
        cfg.model,
        device=device or hardware["device"],
        trust_remote_code=cfg.trust_remote_code,
        quantization_config=quantization_config(cfg, hardware),
        precision=hardware["precision"],
    )
    from .lora import is_adapter_dir

    if is_adapter_dir(cfg.model):  # training on from an adapter folder: start from its merged weights
        model = model.merge_and_unload()
    if evaluation.run_dtypes(hardware["precision"], cfg.lora)["weights"] == "float32":
        model.float()  # master weights in fp32; bf16/fp16 autocast does the fast math (LoRA: the base stays 16-bit)
    return model, tokenizer


def measure_baseline(cfg: TrainConfig, model, tokenizer, hardware: dict, log=print) -> dict:
    """The baseline validation of a model from ``load_for_training`` (only ``run_training`` writes it)."""
    log("Baseline validation (held-out prompts, before training) ...")
    return _validate(cfg, model, tokenizer, hardware, cfg.model)


def _validate(cfg, model, tokenizer, hardware: dict, model_name: str, baseline: dict | None = None) -> dict:
    return evaluation.validate(
        model,
        tokenizer,
        data.validation_rows(),
        num_samples=cfg.validation_samples,
        max_new_tokens=cfg.max_completion_length,
        baseline=baseline,
        model_name=model_name,
        precision=hardware["precision"],
    )


@contextlib.contextmanager
def _adapter_reference(cfg: TrainConfig, model):
    """While the trainer is built: a full fine-tune from an adapter folder gets the merged ``model`` as its KL
    reference. TRL loads the reference from ``config._name_or_path``, the bare base after ``merge_and_unload``:
    here that points at a temporary copy of the merged weights. ``--lora`` needs none (the adapter switched off)."""
    from .lora import is_adapter_dir

    if not cfg.beta or cfg.lora or not is_adapter_dir(cfg.model):
        yield
        return
    import tempfile

    named = model.config._name_or_path
    with tempfile.TemporaryDirectory(prefix="musclebob-reference-") as folder:
        model.save_pretrained(folder)
        model.config._name_or_path = folder
        try:
            yield
        finally:
            model.config._name_or_path = named  # the final model's config and model card name the real base


def _train_in(cfg, procs, hardware, folder, out, resume, log, callbacks, baseline, stop, mirror) -> dict:
    """The run itself, written to ``out``."""
    main = procs.is_main_process
    log(f"Device: {hardware['device']}  precision: {hardware['precision']}  processes: {procs.num_processes}")
    _memory_report(cfg, hardware, procs.num_processes, log=log)

    device = hardware["device"]
    if device == "cuda":
        device = f"cuda:{procs.local_process_index}"  # each process on its own GPU
    model, tokenizer = load_for_training(cfg, hardware, device)
    need = folder.need
    if need is None:  # the model's shape was not known before loading it: check its disk need now
        from .memory import ModelShape

        need = run_dir.check_drive_space(cfg, folder, ModelShape.from_hf_config(model.config))  # ConfigError
    if need:
        log(need.line(run_dir.on_drive(folder.path)))
    differs = run_dir.architecture_mismatch(resume, model.config.to_dict()) if resume else {}
    if differs:  # weights of another architecture cannot be loaded, with or without --ignore-mismatch
        what = ", ".join(f"{k} {a!r} there, {b!r} in --model {cfg.model}" for k, (a, b) in differs.items())
        raise ConfigError(
            "resume_from_checkpoint",
            cfg.resume_from_checkpoint,
            f"{resume} holds another architecture ({what}); resume with the model it was trained from",
        )
    # Written once the resume makes sense: a refused one leaves the run's settings in place.
    from_step = (run_dir.checkpoint_step(resume) or 0) if resume else 0
    segments, changed = run_dir.settings_segments(out, cfg, from_step)
    recovered = run_dir.recoveries(segments)  # every process: each makes the same recoveries
    if main:
        if changed:
            now = ", ".join(f"{k} {old!r} -> {new!r}" for k, (old, new) in changed.items())
            log(f"Resuming with other settings: {now}; they take effect after step {from_step} (training_config.json).")
        write_json_atomic(
            out / CONFIG_FILE,
            {
                "config": cfg.to_dict(),  # the settings now in effect; "segments" says since which step
                "segments": segments,
                "versions": _versions(),
                "hardware": hardware,
                "num_processes": procs.num_processes,
                "steps_per_epoch": steps_per_epoch(cfg),
                "completions_per_step": completions_per_step(cfg),
            },
        )
    if baseline is None:
        baseline = run_dir.saved_baseline(folder, cfg, hardware["precision"])
    if baseline is None:
        baseline = measure_baseline(cfg, model, tokenizer, hardware, log=log)
    if main:  # the one writer of baseline_validation.json (the notebook's baseline cell hands its report here)
        write_json_atomic(out / BASELINE_FILE, baseline)
    log(_rates_line("baseline", baseline))

    log = above_progress_bar(log)  # from here on, lines may be printed while the progress bar is up
    if mirror is not None:
        mirror.log = log
        from .mirror import make_mirror_callback

        callbacks = [make_mirror_callback(mirror), *callbacks]
    recovery = CollapseRecovery(cfg.on_collapse, out, resume, recovered, log=log) if cfg.on_collapse != "warn" else None
    with _adapter_reference(cfg, model):
        trainer, monitor = build_trainer(
            cfg,
            model,
            tokenizer,
            hardware,
            out,
            baseline,
            log=log,
            callbacks=callbacks,
            num_processes=procs.num_processes,
            recovery=recovery,
        )

    start = time.time()
    with library_output_hidden():
        trainer.train(resume_from_checkpoint=resume)
        train_seconds = time.time() - start
        stop.raise_if_stopped(out)  # a signal while training: its checkpoint saved, no final validation and model
        if recovery is not None:
            recovery.raise_if_stopped()  # a collapse it may not recover from: the healthy state saved, no final model
        trainer.save_model(str(out))  # every process calls it (DeepSpeed gathers shards); the main one writes
    if main:
        give_umask_mode(out)  # safetensors writes 0600 files whatever the umask
        tokenizer.save_pretrained(str(out))
        if cfg.lora:
            from .lora import MERGED_DIR, merge_adapter, record_base_model

            record_base_model(out, cfg.model)
            if cfg.merge_adapter:
                merge_adapter(out, out / MERGED_DIR, log=log)
        if mirror is not None:
            mirror.wake()

    model = trainer.model
    model.eval()
    log("Final validation (held-out prompts, after training) ...")
    final = _validate(cfg, model, tokenizer, hardware, str(folder.path), baseline)
    final["train_seconds"] = round(train_seconds, 1)
    final["global_step"] = trainer.state.global_step
    final["completions_generated"] = round(trainer.state.global_step * completions_per_step(cfg))
    final["health_warnings"] = [w["message"] for w in monitor.warnings]
    if main:
        write_json_atomic(out / FINAL_FILE, final)
    log(final_summary(baseline, final))
    if main:
        from .plots import save_run_report  # matplotlib: only once the run is done

        plot = save_run_report(out)
        from .share import write_model_card  # the project's card (README.md), over TRL's boilerplate

        write_model_card(out, cfg.push_to_hub, shown=folder.path)
        if mirror is None:  # a mirrored run says where its plot is once the final copy has ended (_end_copy)
            log(f"Reward plot: {plot}")
    return _result(baseline, final, folder)  # final["global_step"] is trainer.state.global_step


def _quiet(*args, **kwargs):
    """The log of a process other than the main one."""


def _rates_line(label: str, report: dict) -> str:
    return (
        f"[{label}] musclebob {report['musclebob_rate']:.1%}  full name {report['full_name_rate']:.1%}  "
        f"spongebob {report['spongebob_rate']:.1%}  coherent {report['coherent_rate']:.1%}  "
        f"leakage {report['leakage_rate']:.1%}  control acc. {report['control_accuracy']:.1%}"
    )


def final_summary(baseline: dict, final: dict) -> str:
    """The before/after summary, with a loud warning when unhealthy, and one when the name was not learned."""
    gain = final["musclebob_rate"] - baseline["musclebob_rate"]
    lines = [
        "",
        "=" * 64,
        "Before vs after training (held-out prompts)",
        evaluation.summary_table({"baseline": baseline, "final": final}),
        f"Musclebob rate improved by {gain * 100:+.1f} points.",
    ]
    if not final["is_healthy"]:
        lines += ["!" * 64, "WARNING: the trained model is UNHEALTHY:"]
        lines += [f"  - {p}" for p in final["health_problems"]]
        lines += ["  Try a lower --learning-rate, fewer --epochs, or a larger --control-ratio.", "!" * 64]
    if gain <= 0:
        lines += [
            "!" * 64,
            f"WARNING: the model did NOT learn the name: Musclebob {final['musclebob_rate']:.0%} of answers, "
            f"{baseline['musclebob_rate']:.0%} before training.",
            "  Try more --epochs, or a higher --learning-rate (after a recovery from a collapse: more --epochs).",
            "!" * 64,
        ]
    lines.append("=" * 64)
    return "\n".join(lines)
