"""The one place a training option is defined: ``TrainConfig``.

CLI flags (``--learning-rate``) and notebook parameters (``learning_rate``) are
derived from the field names here; ``cli.py`` builds the argument parser from
the fields' metadata, so nothing is defined twice. ``validate_config`` checks
every value before anything heavy happens and raises ``ConfigError`` with a
one-line message naming the flag, the value and what is allowed.
"""

from __future__ import annotations

import dataclasses
import math
import re
from dataclasses import dataclass, field, fields
from pathlib import Path

DEFAULT_MODEL = "Qwen/Qwen2.5-0.5B-Instruct"
REWARDS = ("musclebob", "guide")
# The attention and MLP projections of Qwen2, Llama and Mistral (and most decoder-only models since).
DEFAULT_LORA_TARGETS = "q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj"
# Defined in presets.py (which needs TrainConfig); named here so the help text can list them.
PRESET_NAMES = ("cpu-tiny", "colab-t4", "colab-l4", "colab-a100", "multi-gpu")


def _opt(help_text: str, **extra):
    return field(default=extra.pop("default"), metadata={"help": help_text, **extra})


@dataclass
class TrainConfig:
    """Every option of a training run. Field names are the notebook parameter names;
    the CLI flag is the name with dashes (``num_generations`` -> ``--num-generations``)."""

    model: str = _opt("hub id, local folder, or 'tiny' for the offline tiny model", default=DEFAULT_MODEL)
    epochs: int = _opt("passes over the training prompts", default=5)
    learning_rate: float = _opt("AdamW learning rate", default=5e-5)
    num_samples: int = _opt("training prompts per epoch", default=128)
    num_generations: int = _opt("completions sampled per prompt (the GRPO group size, >= 2)", default=8)
    batch_size: int = _opt("PROMPTS per optimizer step; each brings num_generations completions", default=4)
    fewshot_ratio: float = _opt("share of SpongeBob prompts that carry a few-shot example (0..1)", default=0.15)
    use_fewshot: bool = _opt(
        "put few-shot examples in front of some prompts",
        default=True,
        flag="--no-fewshot",
        invert=True,
        flag_help="never put few-shot examples in front of prompts",
    )
    control_ratio: float = _opt("share of training prompts that are control questions (0..0.9)", default=0.25)
    reward: str = _opt(
        "reward function: 'musclebob' (default, hardened) or 'guide' (the original)",
        default="musclebob",
        choices=REWARDS,
    )
    max_completion_length: int = _opt("longest completion in tokens, in training and validation", default=64)
    temperature: float = _opt("sampling temperature for GRPO's generations", default=1.0)
    beta: float = _opt("KL penalty towards the base model (0 disables the reference model)", default=0.0)
    # --- scaling: LoRA / 4-bit / memory / multi-process / vLLM / presets (see scaling.py, presets.py) ---
    lora: bool = _opt(
        "train a LoRA adapter (PEFT) instead of every weight; the output holds the adapter", default=False
    )
    lora_r: int = _opt("LoRA rank (with --lora)", default=16)
    lora_alpha: int = _opt("LoRA alpha; the update is scaled by alpha / r (with --lora)", default=32)
    lora_dropout: float = _opt("dropout on the LoRA path (0 <= p < 1, with --lora)", default=0.05)
    lora_target_modules: str = _opt(
        "comma-separated module names LoRA adapts (Qwen/Llama/Mistral names), or 'all-linear'",
        default=DEFAULT_LORA_TARGETS,
    )
    load_in_4bit: bool = _opt(
        "QLoRA: load the base model in 4-bit nf4 (bitsandbytes, CUDA only; needs --lora)", default=False
    )
    merge_adapter: bool = _opt(
        "after training, also write the adapter merged into its base as a standalone "
        "model in OUTPUT_DIR/merged (with --lora)",
        default=False,
    )
    gradient_checkpointing: bool = _opt(
        "turn off activation checkpointing (on by default, as in TRL): about a third faster, far more memory",
        default=True,
        flag="--no-gradient-checkpointing",
        invert=True,
    )
    use_vllm: bool = _opt(
        "generate with vLLM inside the training process (TRL's colocate mode; needs a GPU and vllm installed)",
        default=False,
    )
    vllm_gpu_memory_utilization: float = _opt("share of GPU memory vLLM reserves with --use-vllm (0..1)", default=0.3)
    preset: str | None = _opt(
        "fill in values for a hardware class: "
        + ", ".join(PRESET_NAMES)
        + "; flags you pass override the preset's values",
        default=None,
    )
    validation_samples: int = _opt("sampled answers per validation prompt", default=4)
    validate_every: int = _opt(
        "steps between mid-training checks on held-out prompts (0: at each epoch's end)", default=0
    )
    output_dir: str = _opt("where checkpoints, artifacts and the final model go", default="./musclebob-model-improved")
    keep_checkpoints: int = _opt(
        "checkpoints kept: the newest and the ones before it (2: the newest + one fallback); "
        "older ones are deleted once a newer one is complete; 0 keeps every one",
        default=2,
    )
    resume_from_checkpoint: str | None = _opt(
        "'auto' (newest checkpoint in --output-dir) or a checkpoint path", default=None
    )
    overwrite: bool = _opt("allow training into an output dir that already holds a finished model", default=False)
    seed: int = _opt("random seed for data, sampling and training", default=42)
    ignore_mismatch: bool = _opt(
        "resume even when model, generations, batch size or data settings differ from the run being resumed",
        default=False,
    )
    trust_remote_code: bool = _opt(
        "let the model run its own code from the hub (only for models you trust)", default=False
    )

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def save(self, path: str | Path) -> None:
        from .io import write_json_atomic

        write_json_atomic(path, self.to_dict())


# Values that suit the tiny offline model; applied by ``apply_model_defaults`` only to
# fields the user did not set. (A 2-layer model wants a far larger step than a 0.5B one.)
TINY_DEFAULTS = dict(learning_rate=2e-4, max_completion_length=32)
# A LoRA adapter wants about 10x full fine-tuning's learning rate (TRL's "LoRA Without Regret" guide,
# after Schulman et al. 2025): 5e-4 for the 0.5B model; the tiny model learns with 5e-3 (benchmarks/bench_lora.py).
LORA_LEARNING_RATE = 5e-4
TINY_LORA_LEARNING_RATE = 5e-3


def flag_name(f: dataclasses.Field) -> str:
    return f.metadata.get("flag") or "--" + f.name.replace("_", "-")


def field_flags() -> dict[str, str]:
    return {f.name: flag_name(f) for f in fields(TrainConfig)}


def target_modules(cfg: "TrainConfig") -> list[str] | str:
    """``--lora-target-modules`` as PEFT wants it: a list of names, or the string 'all-linear'."""
    if cfg.lora_target_modules.strip() == "all-linear":
        return "all-linear"
    return [m.strip() for m in cfg.lora_target_modules.split(",") if m.strip()]


def steps_per_epoch(cfg: TrainConfig) -> int:
    """Optimizer steps per epoch: TRL's sampler drops a last batch that is not full."""
    return cfg.num_samples // cfg.batch_size


def apply_model_defaults(cfg: TrainConfig, user_set: set[str]) -> dict[str, object]:
    """Fill in the tiny model's defaults, and LoRA's learning rate, for fields not set by the user; returns what
    changed."""
    from .tiny_model import is_tiny

    changed = {}
    defaults = dict(TINY_DEFAULTS) if is_tiny(cfg.model) else {}
    if cfg.lora:
        defaults["learning_rate"] = TINY_LORA_LEARNING_RATE if is_tiny(cfg.model) else LORA_LEARNING_RATE
    for name, value in defaults.items():
        if name not in user_set:
            setattr(cfg, name, value)
            changed[name] = value
    return changed


class ConfigError(ValueError):
    """A bad option: the message is one line naming the flag, the value and what is allowed."""

    def __init__(self, name: str, value, allowed: str):
        self.name, self.value, self.allowed = name, value, allowed
        flag = field_flags().get(name, name)
        super().__init__(f"{flag}={value!r} is not allowed: {allowed}")


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)  # rejects NaN and inf


def _is_path(v) -> bool:
    """A non-empty string usable as a path (no NUL byte, which every file-system call would reject)."""
    return isinstance(v, str) and bool(v.strip()) and "\x00" not in v


def _expand(path: str) -> Path:
    try:
        return Path(path).expanduser()
    except RuntimeError:  # "~nobody/x": no such home folder; keep the path as written
        return Path(path)


BOOL_FIELDS = ("use_fewshot", "overwrite", "ignore_mismatch", "trust_remote_code")
MAX_SEED = 2**32 - 1  # numpy's seed limit: transformers' set_seed would fail on a larger one


_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")


def validate_config(cfg: TrainConfig, num_processes: int = 1) -> None:
    """Raise ``ConfigError`` for the first bad value; cheap (no model loading; on disk only ``preflight``'s
    checks: a write probe in the output location, the resumed run's ``training_config.json``)."""

    def need_int(name, low, allowed):
        v = getattr(cfg, name)
        if not _is_int(v) or v < low:
            raise ConfigError(name, v, allowed)

    def need_ratio(name, high, allowed):
        v = getattr(cfg, name)
        if not _is_number(v) or not 0.0 <= v <= high:
            raise ConfigError(name, v, allowed)

    for name in BOOL_FIELDS:
        if not isinstance(getattr(cfg, name), bool):
            raise ConfigError(name, getattr(cfg, name), "True or False")
    if not _is_path(cfg.model):
        raise ConfigError("model", cfg.model, "a hub id like Qwen/Qwen2.5-0.5B-Instruct, a local folder, or 'tiny'")
    if not _expand(cfg.model).is_dir() and cfg.model != "tiny" and not _HUB_ID.match(cfg.model):
        raise ConfigError(
            "model", cfg.model, "not a local folder, and not a hub id of the form owner/name; use --model tiny offline"
        )
    need_int("epochs", 1, "a whole number of epochs >= 1")
    if not _is_number(cfg.learning_rate) or not 0.0 < cfg.learning_rate < 1.0:
        raise ConfigError("learning_rate", cfg.learning_rate, "a number between 0 and 1 (exclusive), e.g. 5e-5")
    need_int("num_samples", 1, "a whole number of training prompts >= 1")
    need_int("num_generations", 2, "a whole number >= 2 (GRPO compares completions within a group)")
    need_int("batch_size", 1, "a whole number of prompts per step >= 1")
    if cfg.batch_size > cfg.num_samples:
        raise ConfigError("batch_size", cfg.batch_size, f"at most --num-samples ({cfg.num_samples}) prompts per step")
    if (cfg.batch_size * cfg.num_generations) % num_processes:
        raise ConfigError(
            "batch_size",
            cfg.batch_size,
            f"batch size x num generations ({cfg.batch_size * cfg.num_generations}) must divide "
            f"evenly over {num_processes} processes",
        )
    need_ratio("fewshot_ratio", 1.0, "a share between 0 and 1")
    need_ratio("control_ratio", 0.9, "a share between 0 and 0.9 (some SpongeBob prompts must remain)")
    if cfg.reward not in REWARDS:
        raise ConfigError("reward", cfg.reward, "one of " + ", ".join(REWARDS))
    need_int("max_completion_length", 1, "a whole number of tokens >= 1")
    if not _is_number(cfg.temperature) or not 0.0 < cfg.temperature <= 10.0:
        raise ConfigError("temperature", cfg.temperature, "a number > 0 and <= 10")
    if not _is_number(cfg.beta) or cfg.beta < 0:
        raise ConfigError("beta", cfg.beta, "a number >= 0")
    from .scaling import validate_scaling_options

    validate_scaling_options(cfg)
    need_int("validation_samples", 1, "a whole number >= 1")
    need_int("validate_every", 0, "a whole number of steps >= 0 (0: at each epoch's end)")
    need_int("seed", 0, "a whole number >= 0")
    if cfg.seed > MAX_SEED:
        raise ConfigError("seed", cfg.seed, f"a whole number from 0 to {MAX_SEED} (numpy's limit)")
    need_int("keep_checkpoints", 0, "a whole number >= 0 (1: only the newest; 2: + one fallback; 0: keep all)")
    if not _is_path(cfg.output_dir):
        raise ConfigError("output_dir", cfg.output_dir, "a folder path")
    r = cfg.resume_from_checkpoint
    if r is not None and not _is_path(r):
        raise ConfigError("resume_from_checkpoint", r, "'auto' or the path of an existing checkpoint folder")
