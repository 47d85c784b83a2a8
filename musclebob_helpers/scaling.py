"""Beyond one small model on one GPU: LoRA, 4-bit (QLoRA), vLLM generation and multi-process runs.

Nothing here is hand-written machinery: LoRA is PEFT's ``LoraConfig`` handed to ``GRPOTrainer`` as
``peft_config``, 4-bit loading is transformers' ``BitsAndBytesConfig``, vLLM is TRL's own colocate
mode, and several processes are whatever ``accelerate launch`` starts. This module builds those
configs from ``TrainConfig`` and refuses, in one line, what the machine cannot do:

* ``validate_scaling_options(cfg)``  — values only (called by ``validate_config``; no imports, no I/O)
* ``check_hardware_support(cfg, hw)`` — what needs a GPU or an optional package (bitsandbytes, vLLM)

Importing this module never imports torch, PEFT, bitsandbytes or vLLM.
"""

from __future__ import annotations

import importlib.util
import os
import re

from .config import PRESET_NAMES, ConfigError, TrainConfig, target_modules

_MODULE_NAME = re.compile(r"^[A-Za-z_][\w.]*$")


def validate_scaling_options(cfg: TrainConfig) -> None:
    """The scaling fields' values (ConfigError on the first bad one); hardware is checked elsewhere."""
    if not isinstance(cfg.lora_r, int) or isinstance(cfg.lora_r, bool) or cfg.lora_r < 1:
        raise ConfigError("lora_r", cfg.lora_r, "a whole number >= 1 (8-64 is usual)")
    if not isinstance(cfg.lora_alpha, (int, float)) or isinstance(cfg.lora_alpha, bool) or not cfg.lora_alpha > 0:
        raise ConfigError("lora_alpha", cfg.lora_alpha, "a number > 0 (often 2 x --lora-r)")
    if not isinstance(cfg.lora_dropout, (int, float)) or not 0.0 <= cfg.lora_dropout < 1.0:
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
    v = cfg.vllm_gpu_memory_utilization
    if not isinstance(v, (int, float)) or isinstance(v, bool) or not 0.0 < v < 1.0:
        raise ConfigError("vllm_gpu_memory_utilization", v, "a share of GPU memory between 0 and 1, e.g. 0.3")
    if cfg.preset is not None and cfg.preset not in PRESET_NAMES:
        raise ConfigError("preset", cfg.preset, "one of " + ", ".join(PRESET_NAMES))


def package_available(name: str) -> bool:
    """Whether ``name`` is installed, without importing it (a broken install must not break us here)."""
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


def check_hardware_support(cfg: TrainConfig, hardware: dict) -> None:
    """ConfigError when the machine cannot do what ``cfg`` asks: 4-bit or vLLM without a GPU or the package."""
    gpu = hardware.get("device") == "cuda"
    if cfg.load_in_4bit:
        if not gpu:
            raise ConfigError(
                "load_in_4bit",
                True,
                "needs a CUDA GPU (bitsandbytes 4-bit does not run on a CPU); drop --load-in-4bit and keep --lora",
            )
        if not package_available("bitsandbytes"):
            raise ConfigError("load_in_4bit", True, "needs bitsandbytes: pip install bitsandbytes")
    if cfg.use_vllm:
        if not package_available("vllm"):
            raise ConfigError(
                "use_vllm",
                True,
                "vLLM is not installed (pip install vllm, on a GPU machine); "
                "drop --use-vllm to generate with transformers",
            )
        if not gpu:
            raise ConfigError("use_vllm", True, "needs a CUDA GPU; drop --use-vllm to generate with transformers")


def world_size() -> int:
    """Processes in this run: ``accelerate launch`` / torchrun set WORLD_SIZE; a plain ``python`` run is 1."""
    return max(1, int(os.environ.get("WORLD_SIZE", "1")))


def process_rank() -> int:
    return int(os.environ.get("RANK", "0"))


def is_main_process() -> bool:
    """The one process that writes artifacts, history and validations (rank 0)."""
    return process_rank() == 0


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", "0"))


def lora_config(cfg: TrainConfig):
    """PEFT's ``LoraConfig`` for ``GRPOTrainer(peft_config=...)``; None without --lora."""
    if not cfg.lora:
        return None
    from peft import LoraConfig

    return LoraConfig(
        r=cfg.lora_r,
        lora_alpha=cfg.lora_alpha,
        lora_dropout=cfg.lora_dropout,
        target_modules=target_modules(cfg),
        bias="none",
        task_type="CAUSAL_LM",
    )


def quantization_config(cfg: TrainConfig, hardware: dict):
    """transformers' ``BitsAndBytesConfig`` for QLoRA (nf4, double quantization); None without --load-in-4bit."""
    if not cfg.load_in_4bit:
        return None
    import torch
    from transformers import BitsAndBytesConfig

    compute = torch.bfloat16 if hardware.get("precision") == "bf16" else torch.float16
    return BitsAndBytesConfig(
        load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True, bnb_4bit_compute_dtype=compute
    )


def vllm_args(cfg: TrainConfig) -> dict:
    """GRPOConfig keywords for TRL's vLLM generation in colocate mode (one vLLM engine per training process)."""
    if not cfg.use_vllm:
        return {"use_vllm": False}
    return {
        "use_vllm": True,
        "vllm_mode": "colocate",
        "vllm_gpu_memory_utilization": cfg.vllm_gpu_memory_utilization,
        "vllm_tensor_parallel_size": 1,
    }
