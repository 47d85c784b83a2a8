"""LoRA: PEFT's ``LoraConfig`` and QLoRA's 4-bit loading for a run, and adapter folders (recognise one, find its
base model, load it, merge it). An adapter records the user's ``--model`` (``tiny``, not this machine's folder) as
its base, so it loads on another machine.

    python merge_adapter.py ./musclebob-lora ./musclebob-lora-merged   # adapter -> standalone model
"""

from __future__ import annotations

import json
from pathlib import Path

from .config import TrainConfig, is_repo_id, target_modules
from .io import give_umask_mode

ADAPTER_CONFIG = "adapter_config.json"
MERGED_DIR = "merged"  # --merge-adapter writes OUTPUT_DIR/merged


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

    # The 4-bit weights are dequantized to the run's precision for each matmul (fp32 with --precision fp32).
    compute = {"bf16": torch.bfloat16, "fp32": torch.float32}.get(hardware.get("precision"), torch.float16)
    return BitsAndBytesConfig(
        load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True, bnb_4bit_compute_dtype=compute
    )


def is_adapter_dir(path: str | Path) -> bool:
    return (Path(path).expanduser() / ADAPTER_CONFIG).is_file()


def hub_adapter_folder(name: str) -> Path | None:
    """The local folder of a Hub repo holding a PEFT adapter (a pushed ``--lora`` run). None when ``name`` is no
    hub id, holds no adapter (a full model), or the Hub cannot be asked (loading then fails with its reason)."""
    if not is_repo_id(name) or Path(name).expanduser().exists():
        return None
    import logging

    from huggingface_hub import hf_hub_download, snapshot_download

    hub_log = logging.getLogger("huggingface_hub")
    level = hub_log.level
    hub_log.setLevel(logging.CRITICAL)  # "not found" is an answer here, not something to log
    try:
        hf_hub_download(name, ADAPTER_CONFIG)
        return Path(snapshot_download(name))
    except Exception:  # noqa: BLE001 - no adapter there, or no answer: the caller loads it as a plain model
        return None
    finally:
        hub_log.setLevel(level)


def adapter_folder(name: str | Path) -> Path | None:
    """The local folder of the adapter ``name`` names (a folder or a Hub repo); None when it is no adapter."""
    if is_adapter_dir(name):
        return Path(name).expanduser()
    return hub_adapter_folder(str(name))


def adapter_base_model(adapter_dir: str | Path) -> str:
    """The base model an adapter was trained on (hub id, folder or 'tiny'), from its adapter config."""
    raw = json.loads((Path(adapter_dir).expanduser() / ADAPTER_CONFIG).read_text())
    base = raw.get("base_model_name_or_path")
    if not base:
        raise ValueError(f"{adapter_dir}/{ADAPTER_CONFIG} names no base_model_name_or_path")
    return base


def record_base_model(adapter_dir: str | Path, base: str) -> None:
    """Write ``base`` (the user's ``--model`` value, e.g. 'tiny') as the adapter's base model."""
    from .io import write_json_atomic

    path = Path(adapter_dir) / ADAPTER_CONFIG
    raw = json.loads(path.read_text())
    if raw.get("base_model_name_or_path") != base:
        raw["base_model_name_or_path"] = base
        write_json_atomic(path, raw)


def has_tokenizer(folder: str | Path) -> bool:
    return (Path(folder) / "tokenizer_config.json").is_file()


def load_adapter(adapter_dir: str | Path, base_model):
    """``base_model`` with the adapter in ``adapter_dir`` applied (a PEFT ``PeftModel``, not trainable)."""
    from peft import PeftModel

    return PeftModel.from_pretrained(base_model, str(Path(adapter_dir).expanduser()), is_trainable=False)


def merge_adapter(adapter_dir: str | Path, out_dir: str | Path, log=print) -> Path:
    """Merge the adapter into its base (its own dtype, on the CPU) and save a model that loads without PEFT."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from .tiny_model import resolve_model_path

    adapter_dir, out_dir = Path(adapter_dir).expanduser(), Path(out_dir).expanduser()
    base = adapter_base_model(adapter_dir)
    base_path = resolve_model_path(base)
    log(f"Merging the adapter in {adapter_dir} into its base {base} ...")
    model = AutoModelForCausalLM.from_pretrained(base_path, dtype="auto")
    merged = load_adapter(adapter_dir, model).merge_and_unload()
    merged.save_pretrained(out_dir)
    give_umask_mode(out_dir)  # safetensors writes 0600 files
    AutoTokenizer.from_pretrained(adapter_dir if has_tokenizer(adapter_dir) else base_path).save_pretrained(out_dir)
    log(f"Wrote the merged model to {out_dir}")
    return out_dir
