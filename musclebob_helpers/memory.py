"""How much GPU memory a training configuration needs, estimated from the model's shape.

    python -m musclebob_helpers.memory --model Qwen/Qwen2.5-0.5B-Instruct
    python -m musclebob_helpers.memory --model mistralai/Mistral-Small-3.1-24B-Instruct-2503 \\
        --batch-size 1 --num-generations 4 --lora --load-in-4bit --gpu-memory-gb 22.5

(the same flags as the training script, plus ``--gpu-memory-gb`` to ask about a GPU you do not have); it also
prints the run's disk / Google Drive need (``drive_need``, at the end of this module).
``run_training`` prints this estimate and warns before a run that will not fit on the detected GPU.

The model is counted from its shape (``ModelShape``), then, per training process, in bytes:

* weights — full fine-tuning: fp32 master weights (4 B/param; bf16/fp16 autocast does the math);
  LoRA: the frozen base in 16-bit (2 B/param); 4-bit: the projections in nf4 with double-quantized
  scales (0.5 + 1/64 + 4/16384 B/param), embeddings, head and norms stay 16-bit;
* LoRA adapter — r x (in + out) per adapted projection, in fp32 (4 B/param);
* gradients — fp32, 4 B per trainable parameter; optimizer — AdamW's two fp32 moments, 8 B per trainable param;
* reference model — only when beta > 0 and not LoRA (LoRA disables its adapter instead): a copy of the weights;
* activations — the larger of (a) generation's KV cache, 2 x layers x kv_dim x tokens x 2 B, and
  (b) training's forward/backward: per token and layer 6h + 2kv + 4i saved 16-bit values (norm outputs,
  q/k/v, attention output, gate/up/act/product of the MLP; the attention matrix is never stored with
  SDPA); with gradient checkpointing only each layer's input h is kept plus one layer recomputed;
  plus fp32 logits of the completion tokens and their gradient (8 B per token x vocab entry);
  tokens = (batch_size x num_generations / processes) completions x (prompt_tokens + max_completion_length);
* CUDA context and allocator slack — a flat 1 GiB; vLLM (colocate) — its reserved share of the GPU.

DeepSpeed ZeRO splits optimizer states (stage 1+), gradients (2+) and weights (3) over the processes.
It is an estimate (within ~20% of measured peaks for dense decoder models), meant to tell "fits" from
"does not fit" before a long download.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field
from pathlib import Path

GIB = 2**30
NF4_BYTES = 0.5 + 1 / 64 + 4 / (64 * 256)  # 4-bit values + 8-bit absmax per 64 + fp32 scale per 256 blocks
CUDA_OVERHEAD_BYTES = 1 * GIB
DEFAULT_PROMPT_TOKENS = 128  # chat template + question (+ few-shot example) in tokens, generously


@dataclass(frozen=True)
class ModelShape:
    """What the estimate needs to know about a decoder-only transformer (Qwen2/Llama/Mistral style)."""

    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    tie_embeddings: bool
    qkv_bias: bool = False

    @classmethod
    def from_hf_config(cls, config) -> "ModelShape":
        c = getattr(config, "text_config", None) or config  # multimodal configs (Mistral 3) nest the LM
        heads = c.num_attention_heads
        return cls(
            vocab_size=c.vocab_size,
            hidden_size=c.hidden_size,
            intermediate_size=c.intermediate_size,
            num_layers=c.num_hidden_layers,
            num_heads=heads,
            num_kv_heads=getattr(c, "num_key_value_heads", None) or heads,
            head_dim=getattr(c, "head_dim", None) or c.hidden_size // heads,
            tie_embeddings=bool(getattr(config, "tie_word_embeddings", getattr(c, "tie_word_embeddings", False))),
            qkv_bias=getattr(c, "model_type", "") == "qwen2",
        )

    def projections(self) -> dict[str, tuple[int, int]]:
        """(in, out) features of each linear projection in one layer, by its module name."""
        h, i, q, kv = (
            self.hidden_size,
            self.intermediate_size,
            self.num_heads * self.head_dim,
            self.num_kv_heads * self.head_dim,
        )
        return {
            "q_proj": (h, q),
            "k_proj": (h, kv),
            "v_proj": (h, kv),
            "o_proj": (q, h),
            "gate_proj": (h, i),
            "up_proj": (h, i),
            "down_proj": (i, h),
        }

    def projection_params(self) -> int:
        """Parameters in the layers' linear projections (what 4-bit quantizes), biases included."""
        per_layer = sum(a * b for a, b in self.projections().values())
        if self.qkv_bias:
            per_layer += self.num_heads * self.head_dim + 2 * self.num_kv_heads * self.head_dim
        return per_layer * self.num_layers

    def other_params(self) -> int:
        """Embeddings, the LM head (unless tied) and the RMSNorm weights (2 per layer + the final one)."""
        embed = self.vocab_size * self.hidden_size
        return embed * (1 if self.tie_embeddings else 2) + (2 * self.num_layers + 1) * self.hidden_size

    def param_count(self) -> int:
        return self.projection_params() + self.other_params()

    def lora_params(self, r: int, targets) -> int:
        """Parameters of a rank-r LoRA adapter on the named projections ('all-linear': all seven)."""
        proj = self.projections()
        names = proj if targets == "all-linear" else [t for t in targets if t in proj]
        return r * sum(proj[n][0] + proj[n][1] for n in names) * self.num_layers


# Shapes of the models the guide names, so the estimate works offline (values from their config.json).
MODEL_CONFIGS = Path(__file__).resolve().parent / "model_configs"
_QWEN_KEYS = (
    "vocab_size",
    "hidden_size",
    "intermediate_size",
    "num_hidden_layers",
    "num_attention_heads",
    "num_key_value_heads",
    "max_position_embeddings",
    "rope_theta",
    "rms_norm_eps",
    "tie_word_embeddings",
)
QWEN25_05B_CONFIG = {
    k: v for k, v in json.loads((MODEL_CONFIGS / "Qwen2.5-0.5B-Instruct.json").read_text()).items() if k in _QWEN_KEYS
}
KNOWN_SHAPES = {
    "Qwen/Qwen2.5-0.5B-Instruct": ModelShape(
        vocab_size=151936,
        hidden_size=896,
        intermediate_size=4864,
        num_layers=24,
        num_heads=14,
        num_kv_heads=2,
        head_dim=64,
        tie_embeddings=True,
        qkv_bias=True,
    ),
    # The language model of Mistral Small 3.1 (its 0.4B vision encoder is not trained here).
    "mistralai/Mistral-Small-3.1-24B-Instruct-2503": ModelShape(
        vocab_size=131072,
        hidden_size=5120,
        intermediate_size=32768,
        num_layers=40,
        num_heads=32,
        num_kv_heads=8,
        head_dim=128,
        tie_embeddings=False,
    ),
}
KNOWN_SHAPES["Qwen/Qwen2.5-0.5B"] = KNOWN_SHAPES["Qwen/Qwen2.5-0.5B-Instruct"]


def model_shape(name: str) -> ModelShape | None:
    """The shape of ``--model``: known names offline, else its config.json (local, cached or hub); None if unknown."""
    if name in KNOWN_SHAPES:
        return KNOWN_SHAPES[name]
    try:
        from transformers import AutoConfig

        from .tiny_model import resolve_model_path

        return ModelShape.from_hf_config(AutoConfig.from_pretrained(resolve_model_path(name)))
    except Exception:  # noqa: BLE001 - an estimate is optional; no shape means no estimate
        return None


@dataclass
class MemoryEstimate:
    """Bytes per training process, by component (see the module docstring for each rule)."""

    params: int
    trainable_params: int
    weights: float
    adapter: float
    gradients: float
    optimizer: float
    reference_model: float
    generation_kv_cache: float
    training_activations: float
    logits: float
    vllm: float = 0.0
    overhead: float = CUDA_OVERHEAD_BYTES
    notes: list[str] = field(default_factory=list)

    @property
    def activations(self) -> float:
        """Generation and the training pass happen one after the other: the larger one is the peak."""
        return max(self.generation_kv_cache, self.training_activations + self.logits)

    @property
    def total(self) -> float:
        return (
            self.weights
            + self.adapter
            + self.gradients
            + self.optimizer
            + self.reference_model
            + self.activations
            + self.vllm
            + self.overhead
        )

    @property
    def total_gb(self) -> float:
        return self.total / GIB

    def table(self) -> str:
        rows = [
            ("weights", self.weights),
            ("LoRA adapter", self.adapter),
            ("gradients", self.gradients),
            ("optimizer (AdamW)", self.optimizer),
            ("reference model", self.reference_model),
            ("activations", self.activations),
            ("  generation KV cache", self.generation_kv_cache),
            ("  training pass", self.training_activations),
            ("  logits", self.logits),
            ("vLLM reserve", self.vllm),
            ("CUDA context, slack", self.overhead),
        ]
        lines = [
            f"GPU memory estimate per process ({self.params / 1e6:,.0f}M params, "
            f"{self.trainable_params / 1e6:,.1f}M trainable):"
        ]
        lines += [f"  {name:<24}{value / GIB:>8.2f} GiB" for name, value in rows if value or name == "weights"]
        lines.append(f"  {'total':<24}{self.total_gb:>8.2f} GiB")
        lines += [f"  note: {n}" for n in self.notes]
        return "\n".join(lines)


def estimate_memory(
    shape: ModelShape,
    cfg,
    precision: str = "bf16",
    num_processes: int = 1,
    zero_stage: int = 0,
    prompt_tokens: int = DEFAULT_PROMPT_TOKENS,
    gpu_memory_gb: float | None = None,
) -> MemoryEstimate:
    """Estimate the peak GPU memory of one training process for ``cfg`` (a ``TrainConfig``) on ``shape``.

    ``precision`` is the autocast precision ('bf16', 'fp16' or 'fp32'); ``zero_stage`` the DeepSpeed
    ZeRO stage (0: plain DDP or one GPU); ``gpu_memory_gb`` sizes the vLLM reserve.
    """
    from .config import target_modules

    act_bytes = 4 if precision == "fp32" else 2  # activations in the autocast dtype
    half = 4 if precision == "fp32" else 2  # a frozen base model in the run's dtype
    n = max(1, num_processes)
    p = shape.param_count()
    notes = []
    if cfg.lora:
        trainable = shape.lora_params(cfg.lora_r, target_modules(cfg))
        weights = shape.projection_params() * NF4_BYTES + shape.other_params() * half if cfg.load_in_4bit else p * half
        adapter = 4 * trainable
        reference = 0.0  # TRL disables the adapter to get the reference model
    else:
        trainable, adapter = p, 0.0
        weights = 4.0 * p  # fp32 master weights
        reference = weights if cfg.beta > 0 else 0.0  # TRL builds the reference in the policy's dtype
    gradients, optimizer = 4.0 * trainable, 8.0 * trainable
    if zero_stage >= 1:
        optimizer /= n
    if zero_stage >= 2:
        gradients /= n
    if zero_stage >= 3:
        weights, adapter, reference = weights / n, adapter / n, reference / n
        notes.append(f"ZeRO-3 over {n} processes: weights, gradients and optimizer states split {n} ways")

    completions = cfg.batch_size * cfg.num_generations / n  # per process
    seq = prompt_tokens + cfg.max_completion_length
    tokens = completions * seq
    kv_dim = shape.num_kv_heads * shape.head_dim
    per_token_layer = (6 * shape.hidden_size + 2 * kv_dim + 4 * shape.intermediate_size) * act_bytes
    kv_cache = 2 * shape.num_layers * kv_dim * tokens * act_bytes
    if cfg.gradient_checkpointing:
        train_acts = tokens * shape.num_layers * shape.hidden_size * act_bytes + tokens * per_token_layer
    else:
        train_acts = tokens * shape.num_layers * per_token_layer
    logits = completions * cfg.max_completion_length * shape.vocab_size * 8
    vllm = 0.0
    if getattr(cfg, "use_vllm", False) and gpu_memory_gb:
        vllm = cfg.vllm_gpu_memory_utilization * gpu_memory_gb * GIB
    return MemoryEstimate(
        params=p,
        trainable_params=trainable,
        weights=weights,
        adapter=adapter,
        gradients=gradients,
        optimizer=optimizer,
        reference_model=reference,
        generation_kv_cache=kv_cache,
        training_activations=train_acts,
        logits=logits,
        vllm=vllm,
        notes=notes,
    )


def fit_warning(estimate: MemoryEstimate, gpu_memory_gb: float, cfg) -> str | None:
    """A warning when the estimate exceeds the GPU's memory, with what to try; None when it fits."""
    if not gpu_memory_gb or estimate.total_gb <= gpu_memory_gb:
        return None
    tips = []
    if not cfg.gradient_checkpointing:
        tips.append("gradient checkpointing (drop --no-gradient-checkpointing)")
    if not cfg.lora:
        tips.append("--lora")
    elif not cfg.load_in_4bit:
        tips.append("--load-in-4bit")
    tips += ["a smaller --batch-size or --num-generations", "a shorter --max-completion-length"]
    return (
        f"WARNING: this run needs about {estimate.total_gb:.1f} GiB of GPU memory but the GPU has "
        f"{gpu_memory_gb:.1f} GiB: it will probably run out of memory. Try " + ", ".join(tips) + "."
    )


def main(argv=None) -> int:
    """Print the estimate for training flags (and ``--gpu-memory-gb``) without loading the model."""
    from .cli import config_from_args, fail

    argv = list(sys.argv[1:] if argv is None else argv)
    gpu_gb, precision = None, "bf16"
    for name in ("--gpu-memory-gb", "--precision"):
        if name in argv:
            i = argv.index(name)
            if i + 1 >= len(argv):
                fail("memory", f"{name} needs a value")
            value = argv[i + 1]
            del argv[i : i + 2]
            if name == "--precision":
                if value not in ("bf16", "fp16", "fp32"):
                    fail("memory", f"--precision={value!r} is not allowed: one of bf16, fp16, fp32")
                precision = value
            else:
                try:
                    gpu_gb = float(value)
                except ValueError:
                    fail("memory", f"--gpu-memory-gb={value!r} is not allowed: a number of GiB, e.g. 15")
    cfg, _, _ = config_from_args(argv, "python -m musclebob_helpers.memory", "GPU memory estimate")
    shape = model_shape(cfg.model)
    if shape is None:
        fail("memory", f"--model={cfg.model!r}: its config.json could not be read (offline?)")
    from .scaling import world_size

    est = estimate_memory(shape, cfg, precision=precision, num_processes=world_size(), gpu_memory_gb=gpu_gb)
    print(est.table())
    warning = fit_warning(est, gpu_gb, cfg) if gpu_gb else None
    print(warning or (f"Fits in {gpu_gb:.1f} GiB." if gpu_gb else ""))
    need = drive_need(cfg, shape)
    if need:
        print(need.line(on_drive=True))
    return 0


# --- Drive (disk) need of a run's checkpoints -----------------------------------------------------------------

GB = 1e9  # Drive's quota is sold in decimal GB (15 GB free); disk sizes below are printed in GB too
# Tokenizer files a checkpoint and the final model carry. Qwen2.5's tokenizer.json is 7.0 MB on the hub, and
# vocab.json + merges.txt add 4.4 MB when written: counted in full (not measured here: no hub).
KNOWN_TOKENIZER_BYTES = {"Qwen/Qwen2.5-0.5B-Instruct": 11_500_000, "Qwen/Qwen2.5-0.5B": 11_500_000}
DEFAULT_TOKENIZER_BYTES = 12_000_000
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "vocab.json",
    "merges.txt",
    "special_tokens_map.json",
    "added_tokens.json",
    "chat_template.jinja",
    "tokenizer.model",
)
# Measured on the tiny model (benchmarks/drive_budget.py, tests/test_drive_budget.py): rng_state.pth (14.5 KB),
# training_args.bin (7.6 KB from GRPOConfig), scheduler.pt, config or adapter config, the model card: ~34 KB a
# checkpoint (~12 KB with the final model); each logged GRPO step adds ~1.2 KB to trainer_state.json; each
# tensor costs ~850 B in optimizer.pt (zip entries for exp_avg, exp_avg_sq, step) and ~130 B of safetensors header.
CHECKPOINT_SMALL_FILES_BYTES = 34_000
FINAL_SMALL_FILES_BYTES = 12_000
STATE_BYTES_PER_STEP = 1_200
OPTIMIZER_BYTES_PER_TENSOR = 850
SAFETENSORS_BYTES_PER_TENSOR = 130
# The run folder's own files: validation reports, reward_history.json, training_config.json, plots.
RUN_ARTIFACTS_BYTES = 2_000_000


def tokenizer_bytes(model: str) -> int:
    """Bytes of the tokenizer files saved with each checkpoint: measured in a local folder, else known or a guess."""
    from .tiny_model import is_tiny, tiny_model_dir

    folder = tiny_model_dir() if is_tiny(model) else Path(model).expanduser()
    if folder.is_dir():
        found = sum(p.stat().st_size for p in (folder / n for n in TOKENIZER_FILES) if p.is_file())
        if found:
            return found
    if is_tiny(model):
        return 40_000
    return KNOWN_TOKENIZER_BYTES.get(model, DEFAULT_TOKENIZER_BYTES)


@dataclass(frozen=True)
class DriveNeed:
    """Bytes on the output folder's disk: one checkpoint, the final model, the run's peak and all it writes.

    ``peak`` is what an ordinary disk must hold (rotation frees old checkpoints). Google Drive is different:
    a file deleted through Colab's Drive mount goes to Drive's trash, which counts against the quota until it
    is emptied (or for 30 days), so there the run needs ``written``: every checkpoint it ever saves.
    """

    checkpoint: int  # one checkpoint-N folder (the largest, the last one)
    final: int  # what the output folder's root gets at the end (model or adapter, + merged model)
    checkpoints_saved: int  # one per epoch
    checkpoints_kept: int  # after rotation (keep_checkpoints; every one when 0)
    peak: int  # the most the run folder ever holds
    written: int  # everything the run writes, deleted checkpoints included (Drive's trash)
    lora: bool

    def need(self, on_drive: bool) -> int:
        return self.written if on_drive else self.peak

    def line(self, on_drive: bool = False) -> str:
        what = "LoRA adapter + its AdamW state" if self.lora else "fp32 model + AdamW state"
        at_peak = min(self.checkpoints_saved, self.checkpoints_kept + 1)
        text = (
            f"Disk need of this run: {self.peak / GB:.2f} GB at its peak ({at_peak} checkpoint(s) of "
            f"{self.checkpoint / GB:.3f} GB, {what}; {self.checkpoints_kept} of {self.checkpoints_saved} kept; "
            f"final model {self.final / GB:.3f} GB)"
        )
        if on_drive:
            text += (
                f"; {self.written / GB:.2f} GB of Google Drive quota, since deleted checkpoints stay in Drive's trash"
            )
        return text + "."


def drive_need(cfg, shape: ModelShape | None = None, tokenizer: int | None = None) -> DriveNeed | None:
    """The output folder's peak disk use for ``cfg``: checkpoints (as ``Trainer._save_checkpoint`` writes them)
    plus the final model, with ``keep_checkpoints`` rotation (``checkpoints.rotate_checkpoints``).

    A checkpoint holds the trainable weights in fp32 (full fine-tuning keeps fp32 master weights; PEFT keeps
    the adapter in fp32 over a 16-bit base) — 4 B each — AdamW's two fp32 moments (8 B per trainable
    parameter), the tokenizer and small files. Rotation deletes old checkpoints only after a new one is
    complete, so while it is written ``keep + 1`` exist (``peak``); on Google Drive deleted checkpoints stay
    in the trash, so there the run needs all it writes (``written``). None when the model's shape is unknown.
    """
    from .config import target_modules
    from .config import steps_per_epoch

    shape = shape or model_shape(cfg.model)
    if shape is None:
        return None
    tok = tokenizer_bytes(cfg.model) if tokenizer is None else tokenizer
    if cfg.lora:
        targets = target_modules(cfg)
        trainable = shape.lora_params(cfg.lora_r, targets)
        names = shape.projections() if targets == "all-linear" else [t for t in targets if t in shape.projections()]
        tensors = 2 * len(names) * shape.num_layers
    else:
        trainable = shape.param_count()
        per_layer = 7 + (3 if shape.qkv_bias else 0) + 2
        tensors = per_layer * shape.num_layers + 2 + (0 if shape.tie_embeddings else 1)
    weights = 4 * trainable + SAFETENSORS_BYTES_PER_TENSOR * tensors
    optimizer = 8 * trainable + OPTIMIZER_BYTES_PER_TENSOR * tensors
    steps = steps_per_epoch(cfg) * cfg.epochs
    checkpoint = weights + optimizer + tok + CHECKPOINT_SMALL_FILES_BYTES + STATE_BYTES_PER_STEP * steps
    final = weights + tok + FINAL_SMALL_FILES_BYTES
    if cfg.lora and getattr(cfg, "merge_adapter", False):
        from .tiny_model import is_tiny

        final += shape.param_count() * (4 if is_tiny(cfg.model) else 2) + tok  # the base's own dtype (bf16)
    saved = cfg.epochs
    keep = getattr(cfg, "keep_checkpoints", 0)
    kept = min(saved, keep) if keep > 0 else saved
    peak = max(min(saved, kept + 1) * checkpoint, kept * checkpoint + final) + RUN_ARTIFACTS_BYTES
    # trainer_state.json grows with the steps: checkpoint e holds e epochs' log lines.
    state_per_epoch = STATE_BYTES_PER_STEP * steps_per_epoch(cfg)
    written = (
        saved * (checkpoint - state_per_epoch * saved)
        + state_per_epoch * saved * (saved + 1) // 2
        + final
        + RUN_ARTIFACTS_BYTES
    )
    return DriveNeed(
        checkpoint=int(checkpoint),
        final=int(final),
        checkpoints_saved=saved,
        checkpoints_kept=kept,
        peak=int(peak),
        written=int(written),
        lora=bool(cfg.lora),
    )


if __name__ == "__main__":
    sys.exit(main())
