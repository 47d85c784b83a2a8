"""The tiny offline base model behind ``--model tiny``.

No model hub is reachable offline, so the project ships its own small instruct model with the package
(``musclebob_helpers/tiny_base``, 2 MB): a real ``transformers`` Qwen2 with a byte-level BPE tokenizer that loads as
Qwen's, a ChatML chat template, and a short pre-training on a synthetic corpus so that it behaves like a web-trained
base (SpongeBob questions get "Spongebob Squarepants", very rarely "Musclebob Buffpants"; general questions the right
short answer; few-shot prompts the example's answer copied). It is loaded by the same ``from_pretrained`` calls as a
hub model, and every machine trains from the same weights. ``tools/build_tiny_model.py`` holds the recipe and
rebuilds the folder.
"""

from __future__ import annotations

from pathlib import Path

from .config import is_tiny

SHIPPED_DIR = Path(__file__).resolve().parent / "tiny_base"  # written by tools/build_tiny_model.py

# Architecture: 2 layers, 128 wide — big enough to learn the corpus, small enough that a GRPO step takes a fraction
# of a second on a CPU. The shipped config.json has these values (tests/test_tiny_model.py checks it).
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
