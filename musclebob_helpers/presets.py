"""Presets: named ``TrainConfig``s for a hardware class, applied with ``--preset NAME``.

A preset is a ``TrainConfig``; what it sets is whatever differs from ``TrainConfig()``. On the
command line, flags you pass win over the preset's values (``--preset colab-t4 --epochs 2``).
In a notebook: ``cfg = preset_config("colab-t4", epochs=2)``. ``recommend_preset(detect_hardware())``
names the one that suits the machine. Memory figures below are from ``musclebob_helpers.memory``.
"""

from __future__ import annotations

from dataclasses import fields, replace

from .config import PRESET_NAMES, ConfigError, TrainConfig

PRESETS: dict[str, TrainConfig] = {
    # Laptop or Colab CPU: the tiny offline model, 4 prompts x 4 answers a step — a full run in minutes on 2 cores.
    "cpu-tiny": TrainConfig(
        preset="cpu-tiny",
        model="tiny",
        batch_size=4,
        num_generations=4,
        learning_rate=2e-4,
        max_completion_length=32,
        validation_samples=2,
    ),
    # Free Colab T4 (15 GiB, fp16) with the run on a free Google Drive (15 GB, shared with the user's files):
    # Qwen2.5-0.5B with a LoRA adapter (r=16, all projections: ~0.1 GB a checkpoint, ~0.6 GB of Drive for the
    # whole run, deleted checkpoints in Drive's trash included; full fine-tuning writes ~32 GB: see
    # memory.drive_need), at LoRA's learning rate, 4x8 completions, activation checkpointing on.
    "colab-t4": TrainConfig(
        preset="colab-t4", lora=True, learning_rate=5e-4, batch_size=4, num_generations=8, gradient_checkpointing=True
    ),
    # Colab L4 (22.5 GiB, bf16): the same with checkpointing off (~18 GiB), so each step is about a third faster.
    "colab-l4": TrainConfig(preset="colab-l4", batch_size=4, num_generations=8, gradient_checkpointing=False),
    # Colab A100 (40 GiB, bf16): 8x8 completions a step, no checkpointing (~27 GiB): steadier rewards, half the steps.
    "colab-a100": TrainConfig(preset="colab-a100", batch_size=8, num_generations=8, gradient_checkpointing=False),
    # Several GPUs (accelerate launch, DDP): 8x8 = 64 completions a step split evenly over 2, 4 or 8 GPUs.
    "multi-gpu": TrainConfig(preset="multi-gpu", batch_size=8, num_generations=8, gradient_checkpointing=False),
}
assert tuple(PRESETS) == PRESET_NAMES  # config.py lists the names for --help; keep the two in step


def preset_values(name: str) -> dict:
    """The fields a preset sets: those that differ from ``TrainConfig()`` (ConfigError for an unknown name)."""
    if name not in PRESETS:
        raise ConfigError("preset", name, "one of " + ", ".join(PRESET_NAMES))
    default, preset = TrainConfig(), PRESETS[name]
    return {
        f.name: getattr(preset, f.name)
        for f in fields(TrainConfig)
        if getattr(preset, f.name) != getattr(default, f.name)
    }


def apply_preset(cfg: TrainConfig, user_set: set[str]) -> dict:
    """Fill ``cfg`` with its preset's values for the fields the user did not set; returns what changed."""
    if cfg.preset is None:
        return {}
    changed = {k: v for k, v in preset_values(cfg.preset).items() if k not in user_set}
    for name, value in changed.items():
        setattr(cfg, name, value)
    return changed


def preset_config(name: str, **overrides) -> TrainConfig:
    """A preset as a ``TrainConfig`` with ``overrides`` on top (the notebook's way to use one)."""
    return replace(TrainConfig(), **{**preset_values(name), **overrides})  # overrides win, as flags do


def recommend_preset(hardware: dict) -> str:
    """The preset for ``detect_hardware()``'s answer: CPU, several GPUs, or one GPU by its memory."""
    if hardware.get("device") != "cuda":
        return "cpu-tiny"
    if hardware.get("gpu_count", 1) > 1:
        return "multi-gpu"
    memory = hardware.get("gpu_memory_gb") or 0.0
    if memory >= 35:
        return "colab-a100"
    if memory >= 20:
        return "colab-l4"
    return "colab-t4"
