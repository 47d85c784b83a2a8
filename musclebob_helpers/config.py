"""The one place a training option is defined: ``TrainConfig``, its presets and its validation.

CLI flags (``--learning-rate``) and notebook parameters (``learning_rate``) are
derived from the field names here; ``cli.py`` builds the argument parser from
the fields' metadata, so nothing is defined twice. ``resolve`` fills in a preset
and the model's defaults and says where each value came from; ``validate_config``
checks every value (pure: no disk, no environment) and raises ``ConfigError`` with
a one-line message naming the flag, the value and what is allowed. The run
folder's own checks (writable, free space, resume) are ``run_dir.check``'s.

This module imports nothing from the package: everything else builds on it.
"""

from __future__ import annotations

import dataclasses
import math
import re
import shlex
from dataclasses import dataclass, field, fields

DEFAULT_MODEL = "Qwen/Qwen2.5-0.5B-Instruct"
REWARDS = ("musclebob", "guide")
# transformers' names; after a few warm-up steps the first keeps the learning rate, the others decay it to 0
LR_SCHEDULERS = ("constant_with_warmup", "cosine", "linear")
# Trackers a run can report to (transformers' report_to names), and the package each needs; "none": files only.
# What a mid-training check that finds the model broken (general knowledge lost, coherence collapsed, the name
# leaking: evaluation.health) does: go back to the last healthy check at half the learning rate, warn, or stop.
ON_COLLAPSE = ("recover", "warn", "stop")
TRACKERS = {"tensorboard": ("tensorboard", "tensorboardX"), "trackio": ("trackio",), "wandb": ("wandb",)}
REPORT_TO_ALLOWED = "none, or one or more of " + ", ".join(TRACKERS) + " separated by commas"
# The attention and MLP projections of Qwen2, Llama and Mistral (and most decoder-only models since).
DEFAULT_LORA_TARGETS = "q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj"
TINY_NAME = "tiny"  # --model tiny: the project's own offline model (it ships as musclebob_helpers/tiny_base)
# --precision: auto is bf16 on Ampere or newer GPUs, fp16 on older ones (a T4), fp32 on a CPU (evaluation.precision_for)
PRECISIONS = ("auto", "fp32", "fp16", "bf16")
# TRL's GRPO loss settings, with TRL's own defaults (GRPOConfig), which are the same in Colab's pin (trl 0.29.1)
# and in trl 1.16: loss_type "dapo", scale_rewards "group", mask_truncated_completions False, num_iterations 1,
# epsilon 0.2, epsilon_high None (= epsilon). Both take scale_rewards as "group", "batch" or "none" (and map True
# and False to "group" and "none"), so the one value passes through unchanged. Loss types: 0.29.1 has the first
# seven, 1.x adds vespo; an unknown one fails only inside the first training step (GRPOTrainer's loss raises), so
# it is refused at start-up: here by name, by training.check_trl_settings for the installed TRL.
LOSS_TYPES = ("dapo", "dr_grpo", "grpo", "bnpo", "cispo", "sapo", "luspo", "vespo")
SCALE_REWARDS = ("group", "batch", "none")

# The tiny offline model's recipe (benchmarks/bench_learning.py measures it on 5 seeds; docs/results.md).
# It learns in optimizer steps, not completions: 2 prompts x 4 answers a step reach 90 % Musclebob in a quarter of
# the completions 4 x 8 take. A 2-layer model wants a far larger step than a 0.5B one, and the few-shot examples
# carry the name in early; the cosine decay stops the drift that cost general answers once the name was learned
# (control accuracy kept fell from 98 % to 89 % over the last 4 of 5 epochs at a constant rate), and 3 epochs
# are enough. Its activations are a few MB: activation checkpointing would only recompute them, ~10 % slower.
TINY_DEFAULTS = dict(
    epochs=3,
    learning_rate=3e-4,
    num_generations=4,
    batch_size=2,
    fewshot_ratio=0.5,
    lr_scheduler="cosine",
    max_completion_length=32,
    gradient_checkpointing=False,
    save_minutes=0,  # a run of a minute or two: its epoch checkpoints are enough
)
# A LoRA adapter wants about 10x full fine-tuning's learning rate (TRL's "LoRA Without Regret" guide,
# after Schulman et al. 2025): 5e-4 for the 0.5B model. The tiny model's adapter at 5e-3 lost general answers by
# the first check on 5 seeds of 5 and, recovered, ended on 0-54 % Musclebob; 2e-3 learned the name on 4 of 5 with
# 95 % kept, the best of 1e-3 to 5e-3 (docs/results.md, benchmarks/bench_learning.py --set lora=true).
LORA_LEARNING_RATE = 5e-4
TINY_LORA_LEARNING_RATE = 2e-3

# A preset is what it changes from TrainConfig's defaults, for a hardware class (``--preset NAME``; in a notebook
# ``preset_config(NAME, **overrides)``). Memory figures are from memory.py's estimate.
PRESETS: dict[str, dict] = {
    # Laptop or Colab CPU: the tiny offline model and its recipe, 2 answers a validation prompt: about a minute.
    "cpu-tiny": dict(model=TINY_NAME, **TINY_DEFAULTS, validation_samples=2),
    # Free Colab T4 (15 GiB) with the run on a free Google Drive (15 GB, shared with the user's files):
    # Qwen2.5-0.5B with a LoRA adapter (~0.1 GB a checkpoint, ~0.6 GB of Drive for the whole run, deleted
    # checkpoints in Drive's trash included; full fine-tuning writes ~32 GB: see memory.drive_need), at LoRA's
    # learning rate; the default 4 x 8 completions a step with activation checkpointing on. In fp32, not the T4's
    # fp16: Qwen's activations overflow fp16 (its maintainers advise bf16 or fp32, QwenLM/Qwen3 #670, #868; TRL's
    # T4 GRPO notebook loads in fp32), and a run that stops on non-finite logits wastes the session; fp32 takes
    # ~6.4 GiB here against fp16's ~4.9 GiB, still well inside the T4. --precision fp16 is there for speed.
    "colab-t4": dict(lora=True, learning_rate=LORA_LEARNING_RATE, precision="fp32"),
    # Colab L4 (22.5 GiB, bf16): full fine-tuning with checkpointing off (~18 GiB), each step about a third faster.
    "colab-l4": dict(gradient_checkpointing=False),
    # Colab A100 (40 GiB, bf16): 8 x 8 completions a step, no checkpointing (~27 GiB): steadier rewards, half the steps.
    "colab-a100": dict(batch_size=8, gradient_checkpointing=False),
}
# Several GPUs (accelerate launch, DDP): the A100's 64-completion step, split evenly over 2, 4 or 8 GPUs, so a run
# learns as it does on one A100 (the same values under the name a multi-GPU user looks for, not a copy).
PRESETS["multi-gpu"] = PRESETS["colab-a100"]
PRESET_NAMES = tuple(PRESETS)  # for --help and the messages


def _opt(help_text: str, **extra):
    if "default_factory" in extra:  # a list: one fresh list per config
        return field(default_factory=extra.pop("default_factory"), metadata={"help": help_text, **extra})
    return field(default=extra.pop("default"), metadata={"help": help_text, **extra})


def field_default(f: dataclasses.Field):
    """A field's default value, also for a field with a ``default_factory`` (``trl_args``: a list)."""
    return f.default_factory() if f.default is dataclasses.MISSING else f.default


@dataclass
class TrainConfig:
    """Every option of a training run. Field names are the notebook parameter names;
    the CLI flag is the name with dashes (``num_generations`` -> ``--num-generations``)."""

    model: str = _opt("hub id, local folder, or 'tiny' for the offline tiny model", default=DEFAULT_MODEL)
    epochs: int = _opt("passes over the training prompts", default=5)
    learning_rate: float = _opt("AdamW learning rate", default=5e-5, aliases=("--lr",))
    num_samples: int = _opt("training prompts per epoch", default=128)
    num_generations: int = _opt("completions sampled per prompt (the GRPO group size, >= 2)", default=8)
    batch_size: int = _opt("PROMPTS per optimizer step; each brings num_generations completions", default=4)
    fewshot_ratio: float = _opt("share of SpongeBob prompts that carry a few-shot example (0..1)", default=0.15)
    use_fewshot: bool = _opt("put few-shot examples in front of some prompts", default=True, flag="--fewshot")
    control_ratio: float = _opt("share of training prompts that are control questions (0..0.9)", default=0.25)
    reward: str = _opt(
        "reward function: 'musclebob' (default, hardened) or 'guide' (the original)",
        default="musclebob",
        choices=REWARDS,
    )
    max_completion_length: int = _opt("longest completion in tokens, in training and validation", default=64)
    temperature: float = _opt("sampling temperature for GRPO's generations", default=1.0)
    beta: float = _opt("KL penalty towards the base model (0 disables the reference model)", default=0.0)
    # --- TRL's GRPO loss (GRPOConfig's fields of the same names, with TRL's defaults: see LOSS_TYPES above) ---
    loss_type: str = _opt(
        "how GRPO averages its token losses: dapo (TRL's default: over every token of the step), dr_grpo (by a "
        "constant, max-completion-length tokens a completion), grpo (over each completion's tokens, then over "
        "completions), bnpo (over this process's tokens); cispo, sapo, luspo, vespo as TRL documents them",
        default="dapo",
        choices=LOSS_TYPES,
    )
    scale_rewards: str = _opt(
        "divide each completion's advantage by the reward's standard deviation in its group, in the whole batch, "
        "or not at all (none: Dr. GRPO's advice)",
        default="group",
        choices=SCALE_REWARDS,
    )
    mask_truncated_completions: bool = _opt(
        "leave completions cut off at --max-completion-length out of the loss (DAPO's advice)", default=False
    )
    num_iterations: int = _opt("optimizer updates on each batch of completions (GRPO's mu, >= 1)", default=1)
    epsilon: float = _opt(
        "clipping range of the probability ratio below 1 (and above, without --epsilon-high)", default=0.2
    )
    epsilon_high: float | None = _opt(
        "clipping range above 1 (DAPO's clip-higher suggests 0.28; not set: --epsilon)", default=None
    )
    trl_args: list[str] = _opt(
        "any other GRPOConfig field as KEY=VALUE (repeatable), e.g. --trl-arg top_entropy_quantile=0.2",
        default_factory=list,
        flag="--trl-arg",
    )
    precision: str = _opt(
        "weights and autocast precision: auto (bf16 on Ampere or newer GPUs, fp16 on older ones like the T4, fp32 "
        "on a CPU), fp32, fp16 or bf16; fp32 is the way out when fp16 overflows",
        default="auto",
        choices=PRECISIONS,
    )
    lr_scheduler: str = _opt(
        "learning rate schedule after 5 warm-up steps: " + ", ".join(LR_SCHEDULERS) + " (decays to 0 by the last step)",
        default="constant_with_warmup",
        choices=LR_SCHEDULERS,
    )
    # --- scaling: LoRA / 4-bit (lora.py), activation checkpointing, vLLM, presets (below) ---
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
        "model in OUTPUT_DIR/merged (with --lora); --push-to-hub then pushes it instead of the adapter",
        default=False,
    )
    push_to_hub: str = _opt(
        "at the end, push the final model (the adapter, or the merged model with --merge-adapter), its card, the "
        "reward plot and the reports to this Hub repo OWNER/NAME ('': no push); needs a token (HF_TOKEN, "
        "`hf auth login`, or Colab's HF_TOKEN secret)",
        default="",
    )
    hub_public: bool = _opt("make the --push-to-hub repo public when it creates it (default: private)", default=False)
    gradient_checkpointing: bool = _opt(
        "activation checkpointing (on by default, as in TRL); off is about a third faster and takes far more memory",
        default=True,
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
    on_collapse: str = _opt(
        "when a mid-training check finds general knowledge lost, coherence collapsed or the name leaking: recover "
        "(back to the last healthy check with the learning rate cut to a quarter, at most twice; while one is left, "
        "a check that keeps less than 0.9 of the baseline's control accuracy counts too), warn (train on), or stop",
        default="recover",
        choices=ON_COLLAPSE,
    )
    report_to: str = _opt(
        "also send the run's metrics (reward and its components, health warnings, mid-training checks) to "
        + REPORT_TO_ALLOWED,
        default="none",
    )
    output_dir: str = _opt("where checkpoints, artifacts and the final model go", default="./musclebob-model-improved")
    work_dir: str | None = _opt(
        "train into this folder on local disk and copy the run to --output-dir as a verified mirror (checkpoints once "
        "verified, the live files every 30 s); by default a local folder when --output-dir is on Google Drive or "
        "another FUSE or network file system, none otherwise",
        default=None,
    )
    keep_checkpoints: int = _opt(
        "checkpoints kept: the newest and the ones before it (2: the newest + one fallback); "
        "older ones are deleted once a newer one is complete; 0 keeps every one",
        default=2,
    )
    save_steps: int = _opt("also save a checkpoint every N optimizer steps (0: only at each epoch's end)", default=0)
    save_minutes: float = _opt(
        "also save a checkpoint once M minutes have passed since the last one (0: off), so a Colab runtime reset "
        "loses at most about M minutes; 0 for the tiny model",
        default=10.0,
    )
    resume_from_checkpoint: str | None = _opt(
        "'auto' (newest checkpoint in --output-dir) or a checkpoint path", default=None
    )
    overwrite: bool = _opt("allow training into an output dir that already holds a finished model", default=False)
    seed: int = _opt("random seed for data, sampling and training", default=42)
    ignore_mismatch: bool = _opt(
        "resume even when model, generations, batch size, data, completion length or LoRA settings differ from the "
        "run being resumed",
        default=False,
    )
    trust_remote_code: bool = _opt(
        "let the model run its own code from the hub (only for models you trust)", default=False
    )

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


# --help's sections, in this order (in each, the fields' order); every field is in exactly one (a test checks).
GROUPS: dict[str, tuple[str, ...]] = {
    "model and data": (
        "model",
        "num_samples",
        "fewshot_ratio",
        "use_fewshot",
        "control_ratio",
        "max_completion_length",
        "seed",
        "trust_remote_code",
    ),
    "reward": ("reward", "beta"),
    "optimisation": ("epochs", "learning_rate", "num_generations", "batch_size", "temperature", "lr_scheduler"),
    "LoRA and 4-bit": (
        "lora",
        "lora_r",
        "lora_alpha",
        "lora_dropout",
        "lora_target_modules",
        "load_in_4bit",
        "merge_adapter",
    ),
    "hardware": ("precision", "gradient_checkpointing", "use_vllm", "vllm_gpu_memory_utilization", "preset"),
    "health checks": ("validation_samples", "validate_every", "on_collapse"),
    "run folder and resume": (
        "output_dir",
        "work_dir",
        "keep_checkpoints",
        "save_steps",
        "save_minutes",
        "resume_from_checkpoint",
        "overwrite",
        "ignore_mismatch",
    ),
    "tracking": ("report_to",),
    "GRPO loss (TRL)": (
        "loss_type",
        "scale_rewards",
        "mask_truncated_completions",
        "num_iterations",
        "epsilon",
        "epsilon_high",
        "trl_args",
    ),
    "sharing": ("push_to_hub", "hub_public"),
}

# --- presets and model defaults (defined above TrainConfig, whose help text names them) -----------------------


def preset_values(name: str) -> dict:
    """The fields a preset sets (ConfigError for an unknown name)."""
    if name not in PRESETS:
        raise ConfigError("preset", name, "one of " + ", ".join(PRESET_NAMES))
    return dict(PRESETS[name])


def preset_config(name: str, **overrides) -> TrainConfig:
    """A preset as a ``TrainConfig`` with ``overrides`` on top (the notebook's way to use one)."""
    return TrainConfig(**{**preset_values(name), "preset": name, **overrides})  # overrides win, as flags do


def recommend_preset(hardware: dict) -> str:
    """The preset for ``training.detect_hardware()``'s answer: CPU, several GPUs, or one GPU by its memory."""
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


def is_tiny(name: str) -> bool:
    return name == TINY_NAME


def model_defaults(cfg: TrainConfig) -> dict[str, tuple[object, str]]:
    """``{field: (value, why)}``: the tiny model's values, and LoRA's learning rate, for this model and method."""
    found = {k: (v, "tiny-model default") for k, v in TINY_DEFAULTS.items()} if is_tiny(cfg.model) else {}
    if cfg.lora:
        rate = TINY_LORA_LEARNING_RATE if is_tiny(cfg.model) else LORA_LEARNING_RATE
        found["learning_rate"] = (rate, "tiny-model LoRA default" if is_tiny(cfg.model) else "LoRA default")
    return found


def resolve(given: dict) -> tuple[TrainConfig, dict[str, str]]:
    """The ``TrainConfig`` for the options a user gave, and where each value came from.

    A preset fills what the user did not set; the model's defaults fill what neither set. Sources read "you",
    "preset NAME", "tiny-model default", "LoRA default", "tiny-model LoRA default" or "default". ConfigError for
    an unknown preset.
    """
    cfg = TrainConfig(**given)
    sources = {f.name: ("you" if f.name in given else "default") for f in fields(TrainConfig)}
    for name, value in (preset_values(cfg.preset) if cfg.preset is not None else {}).items():
        if name not in given:
            setattr(cfg, name, value)
            sources[name] = f"preset {cfg.preset}"
    for name, (value, why) in model_defaults(cfg).items():
        if sources[name] == "default":
            setattr(cfg, name, value)
            sources[name] = why
    return cfg, sources


# --- flags and validation ------------------------------------------------------------------------------------


def flag_name(f: dataclasses.Field) -> str:
    """The flag of a field as typed: ``--num-generations``; a boolean's positive form (``--fewshot``)."""
    return f.metadata.get("flag") or "--" + f.name.replace("_", "-")


def field_flags() -> dict[str, str]:
    return {f.name: flag_name(f) for f in fields(TrainConfig)}


def as_typed(name: str, value) -> str:
    """A setting as the user would type it: ``--epochs 5``, ``--no-fewshot``, ``--output-dir './my runs'``."""
    flag = field_flags().get(name, "--" + name.replace("_", "-"))
    if isinstance(value, bool):
        return flag if value else "--no-" + flag[2:]
    if value is None:
        return f"{flag} (not set)"
    if isinstance(value, (list, tuple)):  # a repeatable flag: --trl-arg a=1 --trl-arg b=2
        return " ".join(f"{flag} {shlex.quote(str(v))}" for v in value) if value else f"{flag} (not set)"
    text = str(value)
    return f"{flag} {shlex.quote(text) if text else repr(text)}"


def target_modules(cfg: TrainConfig) -> list[str] | str:
    """``--lora-target-modules`` as PEFT wants it: a list of names, or the string 'all-linear'."""
    if cfg.lora_target_modules.strip() == "all-linear":
        return "all-linear"
    return [m.strip() for m in cfg.lora_target_modules.split(",") if m.strip()]


def report_to(cfg: TrainConfig) -> list[str] | None:
    """``--report-to`` as transformers' ``report_to`` list ([] for none); None when it names anything else."""
    if not isinstance(cfg.report_to, str):
        return None
    names = [n.strip() for n in cfg.report_to.split(",")]
    if names == ["none"]:
        return []
    return names if names and len(set(names)) == len(names) and all(n in TRACKERS for n in names) else None


def steps_per_epoch(cfg: TrainConfig) -> int:
    """Optimizer steps per epoch: TRL's sampler drops a last batch that is not full, and repeats each batch
    ``num_iterations`` times (a step each, on the same completions)."""
    return cfg.num_samples // cfg.batch_size * cfg.num_iterations


def completions_per_step(cfg: TrainConfig) -> int | float:
    """Completions generated per optimizer step: a batch's ``batch_size x num_generations`` serve
    ``num_iterations`` steps."""
    made = cfg.batch_size * cfg.num_generations
    return made // cfg.num_iterations if made % cfg.num_iterations == 0 else made / cfg.num_iterations


class OneLineError(Exception):
    """An error the user fixes by changing a setting: in a notebook it shows as its one line, not a traceback
    (IPython prints what ``_render_traceback_`` returns), and "Run all" stops at that cell."""

    def _render_traceback_(self):
        return [f"{type(self).__name__}: {self}"]


class ConfigError(OneLineError, ValueError):
    """A bad option: the message is one line naming the flag, the value and what is allowed."""

    def __init__(self, name: str, value, allowed: str):
        self.name, self.value, self.allowed = name, value, allowed
        flag = field_flags().get(name, name)
        super().__init__(f"{flag}={value!r} is not allowed: {allowed}")

    def __reduce__(self):  # picklable, so it crosses a process pool (the learning benchmark's workers) intact
        return type(self), (self.name, self.value, self.allowed)


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)  # rejects NaN and inf


def _is_path(v) -> bool:
    """A non-empty string usable as a path (no NUL byte, which every file-system call would reject)."""
    return isinstance(v, str) and bool(v.strip()) and "\x00" not in v


MAX_SEED = 2**32 - 1  # numpy's seed limit: transformers' set_seed would fail on a larger one
HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")
REPO_ID_ALLOWED = "'' (no push) or a Hub repo id OWNER/NAME (letters, digits, '-', '_', '.')"
MODEL_ALLOWED = "not a local folder, and not a hub id of the form owner/name; use --model tiny offline"
_MODULE_NAME = re.compile(r"^[A-Za-z_][\w.]*$")
_TRL_ARG = re.compile(r"^[A-Za-z_]\w*=")  # KEY=VALUE; the value may hold anything, '=' too


def looks_like_path(name: str) -> bool:
    """A folder path rather than a hub id (which has at most one slash and no spaces): checked on disk later."""
    return "/" in name or "\\" in name or name.startswith((".", "~"))


def is_repo_id(value) -> bool:
    """A Hub repo id to push to: exactly OWNER/NAME."""
    return isinstance(value, str) and HUB_ID.match(value) is not None and value.count("/") == 1


def validate_config(cfg: TrainConfig, num_processes: int = 1) -> None:
    """Raise ``ConfigError`` for the first bad value. Pure: values only, nothing on disk (``run_dir.check`` looks
    at the output folder, ``evaluation.check_model_loadable`` at the model)."""

    def need_int(name, low, allowed):
        v = getattr(cfg, name)
        if not _is_int(v) or v < low:
            raise ConfigError(name, v, allowed)

    def need_ratio(name, high, allowed):
        v = getattr(cfg, name)
        if not _is_number(v) or not 0.0 <= v <= high:
            raise ConfigError(name, v, allowed)

    for f in fields(TrainConfig):
        if f.type in ("bool", bool) and not isinstance(getattr(cfg, f.name), bool):
            raise ConfigError(f.name, getattr(cfg, f.name), "True or False")
    if not _is_path(cfg.model):
        raise ConfigError("model", cfg.model, "a hub id like Qwen/Qwen2.5-0.5B-Instruct, a local folder, or 'tiny'")
    if not HUB_ID.match(cfg.model) and not looks_like_path(cfg.model):
        raise ConfigError("model", cfg.model, MODEL_ALLOWED)
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
    if cfg.precision not in PRECISIONS:
        raise ConfigError("precision", cfg.precision, "one of " + ", ".join(PRECISIONS))
    if cfg.lr_scheduler not in LR_SCHEDULERS:
        raise ConfigError("lr_scheduler", cfg.lr_scheduler, "one of " + ", ".join(LR_SCHEDULERS))
    need_int("max_completion_length", 1, "a whole number of tokens >= 1")
    if cfg.loss_type not in LOSS_TYPES:
        raise ConfigError("loss_type", cfg.loss_type, "one of " + ", ".join(LOSS_TYPES))
    if cfg.scale_rewards not in SCALE_REWARDS:
        raise ConfigError("scale_rewards", cfg.scale_rewards, "one of " + ", ".join(SCALE_REWARDS))
    need_int("num_iterations", 1, "a whole number of updates per batch >= 1")
    if not _is_number(cfg.epsilon) or not cfg.epsilon > 0:
        raise ConfigError("epsilon", cfg.epsilon, "a number > 0, e.g. 0.2")
    if cfg.epsilon_high is not None and (not _is_number(cfg.epsilon_high) or not cfg.epsilon_high > 0):
        raise ConfigError("epsilon_high", cfg.epsilon_high, "a number > 0, e.g. 0.28, or None for --epsilon")
    if not isinstance(cfg.trl_args, (list, tuple)):
        raise ConfigError("trl_args", cfg.trl_args, "a list of 'KEY=VALUE' strings")
    keys = []
    for item in cfg.trl_args:
        if not isinstance(item, str) or not _TRL_ARG.match(item):
            raise ConfigError("trl_args", item, "KEY=VALUE with KEY a GRPOConfig field, e.g. top_entropy_quantile=0.2")
        keys.append(item.split("=", 1)[0])
        if keys.count(keys[-1]) > 1:
            raise ConfigError("trl_args", item, f"{keys[-1]} once (it is given twice)")
    if not _is_number(cfg.temperature) or not 0.0 < cfg.temperature <= 10.0:
        raise ConfigError("temperature", cfg.temperature, "a number > 0 and <= 10")
    if not _is_number(cfg.beta) or cfg.beta < 0:
        raise ConfigError("beta", cfg.beta, "a number >= 0")
    need_int("lora_r", 1, "a whole number >= 1 (8-64 is usual)")
    if not _is_number(cfg.lora_alpha) or not cfg.lora_alpha > 0:
        raise ConfigError("lora_alpha", cfg.lora_alpha, "a number > 0 (often 2 x --lora-r)")
    if not _is_number(cfg.lora_dropout) or not 0.0 <= cfg.lora_dropout < 1.0:
        raise ConfigError("lora_dropout", cfg.lora_dropout, "a probability, 0 <= p < 1")
    mods = target_modules(cfg) if isinstance(cfg.lora_target_modules, str) else None
    if mods != "all-linear" and (not mods or not all(_MODULE_NAME.match(m) for m in mods)):
        raise ConfigError(
            "lora_target_modules",
            cfg.lora_target_modules,
            "comma-separated module names like q_proj,v_proj, or all-linear",
        )
    if cfg.load_in_4bit and not cfg.lora:
        raise ConfigError(
            "load_in_4bit",
            cfg.load_in_4bit,
            "only with --lora (a 4-bit model can't be trained directly; QLoRA trains an adapter on it)",
        )
    if cfg.merge_adapter and not cfg.lora:
        raise ConfigError("merge_adapter", cfg.merge_adapter, "only with --lora (there is no adapter to merge)")
    if cfg.push_to_hub != "" and not is_repo_id(cfg.push_to_hub):
        raise ConfigError("push_to_hub", cfg.push_to_hub, REPO_ID_ALLOWED)
    v = cfg.vllm_gpu_memory_utilization
    if not _is_number(v) or not 0.0 < v < 1.0:
        raise ConfigError("vllm_gpu_memory_utilization", v, "a share of GPU memory between 0 and 1, e.g. 0.3")
    if cfg.preset is not None and cfg.preset not in PRESETS:
        raise ConfigError("preset", cfg.preset, "one of " + ", ".join(PRESET_NAMES))
    if report_to(cfg) is None:
        raise ConfigError("report_to", cfg.report_to, REPORT_TO_ALLOWED)
    need_int("validation_samples", 1, "a whole number >= 1")
    need_int("validate_every", 0, "a whole number of steps >= 0 (0: at each epoch's end)")
    if cfg.on_collapse not in ON_COLLAPSE:
        raise ConfigError("on_collapse", cfg.on_collapse, "one of " + ", ".join(ON_COLLAPSE))
    need_int("seed", 0, "a whole number >= 0")
    if cfg.seed > MAX_SEED:
        raise ConfigError("seed", cfg.seed, f"a whole number from 0 to {MAX_SEED} (numpy's limit)")
    need_int("keep_checkpoints", 0, "a whole number >= 0 (1: only the newest; 2: + one fallback; 0: keep all)")
    need_int("save_steps", 0, "a whole number of steps >= 0 (0: only at each epoch's end)")
    if not _is_number(cfg.save_minutes) or cfg.save_minutes < 0:
        raise ConfigError("save_minutes", cfg.save_minutes, "a number of minutes >= 0 (0: off)")
    if not _is_path(cfg.output_dir):
        raise ConfigError("output_dir", cfg.output_dir, "a folder path")
    if cfg.work_dir is not None and not _is_path(cfg.work_dir):
        raise ConfigError("work_dir", cfg.work_dir, "a folder path on local disk")
    r = cfg.resume_from_checkpoint
    if r is not None and not _is_path(r):
        raise ConfigError("resume_from_checkpoint", r, "'auto' or the path of an existing checkpoint folder")


def config_from_dict(raw: dict) -> TrainConfig:
    """A ``TrainConfig`` from a saved ``training_config.json``'s content (unknown keys, like versions, ignored)."""
    raw = raw.get("config", raw)
    names = {f.name for f in fields(TrainConfig)}
    return TrainConfig(**{k: v for k, v in raw.items() if k in names})
