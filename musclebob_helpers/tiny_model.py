"""The tiny offline base model behind ``--model tiny``, shipped with the package (``tiny_base``, 2 MB): a real
Qwen2 with a byte-level BPE tokenizer and a ChatML template, pre-trained on a synthetic corpus to behave like a
web-trained base. ``tools/build_tiny_model.py`` holds the recipe and rebuilds it.
"""

from __future__ import annotations

from pathlib import Path

from .config import is_tiny

SHIPPED_DIR = Path(__file__).resolve().parent / "tiny_base"  # written by tools/build_tiny_model.py

# Big enough to learn the corpus, small enough for a GRPO step in a fraction of a second on a CPU.
MODEL_SHAPE = dict(
    hidden_size=128,
    intermediate_size=384,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=512,
)


def resolve_model_path(name: str) -> str:
    """What ``from_pretrained`` should load for a ``--model`` value: ``tiny`` becomes the shipped folder."""
    return str(SHIPPED_DIR) if is_tiny(name) else name
