"""How much GPU memory and disk a training configuration needs, from the model's measured shape
(``python -m musclebob_helpers.estimate``; ``run_training`` warns before a run that will not fit its GPU, and the
start-up check refuses one whose checkpoints will not fit its disk: ``drive_need``).

The model is built on the meta device from its config (nothing allocated or downloaded) and measured. Per training
process, in bytes: weights (full fine-tuning: fp32 master weights; LoRA: the base in 16-bit; 4-bit: the linear
projections in nf4 with double-quantized scales); the LoRA adapter, r x (in + out) per adapted projection in
fp32; fp32 gradients (4 B) and AdamW's two moments (8 B) per trainable parameter; a reference model only when
beta > 0 without LoRA; activations, the larger of generation's KV cache and the training pass (per token and layer
6h + 2kv + 4i saved values with SDPA; checkpointing keeps each layer's input plus one layer) plus fp32 logits and
their gradient; 1 GiB of CUDA context and slack; vLLM's reserved share. ZeRO splits optimizer states (stage 1+),
gradients (2+) and weights (3). An estimate (within ~20 % of measured peaks), to tell "fits" from "does not fit".
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from .config import is_tiny, steps_per_epoch, target_modules
from .tiny_model import SHIPPED_DIR

_GIB = 2**30
_NF4_BYTES = 0.5 + 1 / 64 + 4 / (64 * 256)  # 4-bit values + 8-bit absmax per 64 + fp32 scale per 256 blocks
_CUDA_OVERHEAD_BYTES = 1 * _GIB
_DEFAULT_PROMPT_TOKENS = 128  # chat template + question (+ few-shot example) in tokens, generously

# The models the guide names, so that the estimate and the disk check work offline: their config.json.
_MODEL_CONFIGS = Path(__file__).resolve().parent / "model_configs"
_KNOWN_CONFIGS = {
    "Qwen/Qwen2.5-0.5B-Instruct": "Qwen2.5-0.5B-Instruct.json",
    "Qwen/Qwen2.5-0.5B": "Qwen2.5-0.5B-Instruct.json",  # the base model: the same architecture
    "mistralai/Mistral-Small-3.1-24B-Instruct-2503": "Mistral-Small-3.1-24B-Instruct-2503.json",
}


def known_config(name: str) -> dict | None:
    """The stored config.json of a model the guide names (our ``_source`` note left out); else None."""
    if name not in _KNOWN_CONFIGS:
        return None
    raw = json.loads((_MODEL_CONFIGS / _KNOWN_CONFIGS[name]).read_text())
    return {k: v for k, v in raw.items() if not k.startswith("_")}


def _model_config(name: str, offline: bool = False):
    """transformers' config of ``--model``: stored, the tiny model's, a local folder's, else the hub's (``offline``:
    its cache only); None when it cannot be read."""
    try:
        from transformers import AutoConfig

        raw = known_config(name)
        if raw is not None:
            return AutoConfig.for_model(raw.pop("model_type"), **raw)
        folder = SHIPPED_DIR if is_tiny(name) else Path(name).expanduser()
        return AutoConfig.from_pretrained(str(folder) if folder.is_dir() else name, local_files_only=offline)
    except Exception:  # noqa: BLE001 - an estimate is optional; no config means no estimate
        return None


def model_shape(name: str, offline: bool = False) -> ModelShape | None:
    """The measured shape of ``--model``; None if unknown."""
    config = _model_config(name, offline=offline)
    if config is None:
        return None
    try:
        return ModelShape.from_hf_config(config)
    except Exception:  # noqa: BLE001 - an architecture transformers cannot build here: no estimate
        return None


@dataclass(frozen=True)
class ModelShape:
    """A decoder-only causal LM as the estimate needs it: sizes from its config, parameters measured."""

    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    params: int  # every parameter once (a head tied to the embeddings is the embeddings)
    quantized_params: int  # the weights 4-bit loading stores in nf4 (biases stay 16-bit)
    tensors: int  # parameter tensors: safetensors entries, and AdamW's state entries when all are trained
    linears: tuple[tuple[str, int, int], ...]  # (name, in, out) of each linear LoRA may adapt

    @classmethod
    def from_hf_config(cls, config, trust_remote_code: bool = False) -> ModelShape:
        """Build the model on the meta device and measure it; once per config (a build takes about a second)."""
        text = config.get_text_config()  # multimodal configs (Mistral 3) nest the LM: only it is trained here
        key = (text.to_json_string(), trust_remote_code)
        if key not in _MEASURED:
            _MEASURED[key] = _measure(text, trust_remote_code)
        return _MEASURED[key]

    def adapted(self, targets) -> list[tuple[str, int, int]]:
        """The linears PEFT adapts for ``targets``: 'all-linear', or names matched as PEFT does (whole name or
        its last dotted parts)."""
        if targets == "all-linear":
            return list(self.linears)
        return [lin for lin in self.linears if any(lin[0] == t or lin[0].endswith("." + t) for t in targets)]

    def trainable(self, cfg) -> tuple[int, int]:
        """(parameters, tensors) ``cfg`` trains: a LoRA adapter's A (r x in) and B (out x r) per adapted linear."""
        if not cfg.lora:
            return self.params, self.tensors
        adapted = self.adapted(target_modules(cfg))
        return cfg.lora_r * sum(n_in + n_out for _, n_in, n_out in adapted), 2 * len(adapted)


_MEASURED: dict[tuple[str, bool], ModelShape] = {}


def _measure(text_config, trust_remote_code: bool) -> ModelShape:
    import torch
    from accelerate import init_empty_weights
    from transformers import AutoModelForCausalLM

    c = text_config
    with init_empty_weights():
        model = AutoModelForCausalLM.from_config(c, trust_remote_code=trust_remote_code)
    model.tie_weights()  # init_empty_weights re-registers every parameter, which unties a tied head
    # bitsandbytes loading and PEFT's 'all-linear' leave out the LM head: every other linear is quantized/adapted.
    head = model.get_output_embeddings()
    linears = [(n, m) for n, m in model.named_modules() if isinstance(m, torch.nn.Linear) and m is not head]
    unique = list(model.parameters())  # parameters() yields a tied tensor once, as save_pretrained writes it
    heads = c.num_attention_heads
    return ModelShape(
        vocab_size=c.vocab_size,
        hidden_size=c.hidden_size,
        intermediate_size=c.intermediate_size,
        num_layers=c.num_hidden_layers,
        num_heads=heads,
        num_kv_heads=getattr(c, "num_key_value_heads", None) or heads,
        head_dim=getattr(c, "head_dim", None) or c.hidden_size // heads,
        params=sum(p.numel() for p in unique),
        quantized_params=sum(m.weight.numel() for _, m in linears),
        tensors=len(unique),
        linears=tuple((n, m.in_features, m.out_features) for n, m in linears),
    )


@dataclass
class _MemoryEstimate:
    """Bytes per training process, by component (the module docstring gives each rule)."""

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
    overhead: float = _CUDA_OVERHEAD_BYTES
    notes: list[str] = field(default_factory=list)

    @property
    def activations(self) -> float:
        """Generation and the training pass happen one after the other: the larger one is the peak."""
        return max(self.generation_kv_cache, self.training_activations + self.logits)

    @property
    def total(self) -> float:
        parts = (self.weights, self.adapter, self.gradients, self.optimizer, self.reference_model, self.vllm)
        return sum(parts) + self.activations + self.overhead

    @property
    def total_gb(self) -> float:
        return self.total / _GIB

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
        lines += [f"  {name:<24}{value / _GIB:>8.2f} GiB" for name, value in rows if value or name == "weights"]
        lines.append(f"  {'total':<24}{self.total_gb:>8.2f} GiB")
        lines += [f"  note: {n}" for n in self.notes]
        return "\n".join(lines)


def estimate_memory(
    shape: ModelShape,
    cfg,
    precision: str = "bf16",
    num_processes: int = 1,
    zero_stage: int = 0,
    prompt_tokens: int = _DEFAULT_PROMPT_TOKENS,
    gpu_memory_gb: float | None = None,
) -> _MemoryEstimate:
    """The peak GPU memory of one training process for ``cfg`` on ``shape``; ``precision``: the autocast one,
    ``zero_stage``: DeepSpeed's (0: none), ``gpu_memory_gb`` sizes the vLLM reserve."""
    act_bytes = 4 if precision == "fp32" else 2  # activations in the autocast dtype
    half = 4 if precision == "fp32" else 2  # a frozen base model in the run's dtype
    n = max(1, num_processes)
    p = shape.params
    notes = []
    if cfg.lora:
        trainable = shape.trainable(cfg)[0]
        quantized = shape.quantized_params if cfg.load_in_4bit else 0
        weights = quantized * _NF4_BYTES + (p - quantized) * half
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
        vllm = cfg.vllm_gpu_memory_utilization * gpu_memory_gb * _GIB
    return _MemoryEstimate(
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


def fit_warning(estimate: _MemoryEstimate, gpu_memory_gb: float, cfg) -> str | None:
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


# --- Drive (disk) need of a run's checkpoints -----------------------------------------------------------------

GB = 1e9  # Drive's quota is sold in decimal GB (15 GB free)
# Qwen2.5's tokenizer files as written: tokenizer.json 7.0 MB + vocab.json and merges.txt 4.4 MB (from the hub).
_KNOWN_TOKENIZER_BYTES = {"Qwen/Qwen2.5-0.5B-Instruct": 11_500_000, "Qwen/Qwen2.5-0.5B": 11_500_000}
_DEFAULT_TOKENIZER_BYTES = 12_000_000
_TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "vocab.json",
    "merges.txt",
    "special_tokens_map.json",
    "added_tokens.json",
    "chat_template.jinja",
    "tokenizer.model",
)
# Measured on the tiny model (benchmarks/drive_budget.py): a checkpoint's small files (rng state, training args,
# scheduler, configs, card), a logged step's share of trainer_state.json, a tensor's optimizer.pt entries and header.
_CHECKPOINT_SMALL_FILES_BYTES = 34_000 + 1_600  # + its manifest (run_dir.MANIFEST_FILE: ~130 B a file, 12 files)
_FINAL_SMALL_FILES_BYTES = 12_000
_STATE_BYTES_PER_STEP = 1_200
_OPTIMIZER_BYTES_PER_TENSOR = 850
_SAFETENSORS_BYTES_PER_TENSOR = 130
RUN_ARTIFACTS_BYTES = 2_000_000  # reports, histories, plots


def tokenizer_bytes(model: str) -> int:
    """Bytes of the tokenizer files each checkpoint saves: measured in a local folder, else known or a guess."""
    folder = SHIPPED_DIR if is_tiny(model) else Path(model).expanduser()
    if folder.is_dir():
        found = sum(p.stat().st_size for p in (folder / n for n in _TOKENIZER_FILES) if p.is_file())
        if found:
            return found
    if is_tiny(model):
        return 40_000
    return _KNOWN_TOKENIZER_BYTES.get(model, _DEFAULT_TOKENIZER_BYTES)


@dataclass(frozen=True)
class DriveNeed:
    """Bytes on the run folder's disk. ``peak``: what an ordinary disk must hold; on Google Drive deleted files
    stay in the trash, counted against the quota, so there the run needs ``written``: every checkpoint it saves."""

    checkpoint: int  # one checkpoint-N folder (the largest, the last one)
    final: int  # what the output folder's root gets at the end (model or adapter, + merged model)
    checkpoints_saved: int  # one per epoch, and one every --save-steps steps (--save-minutes' are not counted)
    checkpoints_kept: int  # after rotation (keep_checkpoints; every one when 0)
    peak: int  # the most the run folder ever holds
    written: int  # everything the run writes, deleted checkpoints included (Drive's trash)
    lora: bool
    saved_at: tuple[int, ...] = ()  # the steps a checkpoint is saved at (by epoch and by --save-steps)
    save_minutes: float = 0.0  # --save-minutes: its checkpoints are not counted (the run time is not known)

    @property
    def uncounted(self) -> str:
        """What the figures leave out, for the messages ('' when nothing)."""
        if not self.save_minutes:
            return ""
        return (
            f"not counted: one more checkpoint per {self.save_minutes:g} minutes of training (--save-minutes), "
            "since a run's duration is not known before it runs"
        )

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
        return text + (f"; {self.uncounted}." if self.uncounted else ".")


def drive_need(cfg, shape: ModelShape | None = None, tokenizer: int | None = None) -> DriveNeed | None:
    """The run folder's disk use for ``cfg`` with ``keep_checkpoints`` rotation; None when the shape is unknown.
    A checkpoint holds the trainable weights in fp32 (a bf16 QLoRA adapter is half: an overestimate), AdamW's two
    moments, the tokenizer and small files; rotation deletes only once a new one is complete (``keep + 1``)."""
    shape = shape or model_shape(cfg.model)
    if shape is None:
        return None
    tok = tokenizer_bytes(cfg.model) if tokenizer is None else tokenizer
    trainable, tensors = shape.trainable(cfg)
    weights = 4 * trainable + _SAFETENSORS_BYTES_PER_TENSOR * tensors
    optimizer = 8 * trainable + _OPTIMIZER_BYTES_PER_TENSOR * tensors
    per_epoch = steps_per_epoch(cfg)
    steps = per_epoch * cfg.epochs
    checkpoint = weights + optimizer + tok + _CHECKPOINT_SMALL_FILES_BYTES + _STATE_BYTES_PER_STEP * steps
    final = weights + tok + _FINAL_SMALL_FILES_BYTES
    if cfg.lora and getattr(cfg, "merge_adapter", False):
        final += shape.params * (4 if is_tiny(cfg.model) else 2) + tok  # the base's own dtype (bf16)
    every = getattr(cfg, "save_steps", 0)
    saved_at = sorted({*range(per_epoch, steps + 1, per_epoch), *(range(every, steps + 1, every) if every else ())})
    saved = len(saved_at)
    keep = getattr(cfg, "keep_checkpoints", 0)
    kept = min(saved, keep) if keep > 0 else saved
    peak = max(min(saved, kept + 1) * checkpoint, kept * checkpoint + final) + RUN_ARTIFACTS_BYTES
    # trainer_state.json grows with the steps: the checkpoint of step s holds s steps' log lines.
    written = (
        saved * (checkpoint - _STATE_BYTES_PER_STEP * steps)
        + _STATE_BYTES_PER_STEP * sum(saved_at)
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
        saved_at=tuple(saved_at),
        save_minutes=getattr(cfg, "save_minutes", 0) or 0.0,
    )
