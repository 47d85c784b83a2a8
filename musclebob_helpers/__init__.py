"""Musclebob helpers: everything the notebooks and the two scripts call.

One module per concern:

* ``config``      — ``TrainConfig``, the single source of truth for every option, and its validation
* ``data``        — SpongeBob, few-shot and control prompts; training and validation rows
* ``rewards``     — pure reward functions in TRL's signature (``guide`` and the hardened ``musclebob``)
* ``tiny_model``  — the tiny offline Qwen2 base model behind ``--model tiny``
* ``evaluation``  — loading models, generation, validation rates and the health check
* ``training``    — the GRPO run with TRL's ``GRPOTrainer``, callbacks and artifacts
* ``monitoring``  — mid-training validation and live health warnings
* ``io``          — atomic JSON artifacts and checkpoint listing
* ``checkpoints`` — which checkpoint is intact, resume selection, mismatch checks, a resumable trainer
* ``preflight``   — start-up checks of the output location and the resume (before any model loads)
* ``faults``      — opt-in fault injection (``MUSCLEBOB_FAULT``) for the kill tests
* ``scaling``     — LoRA / 4-bit / vLLM settings and multi-process helpers
* ``lora``        — adapter folders: base model, merging
* ``memory``      — GPU memory and disk need of a configuration, the model measured on the meta device
* ``estimate``    — ``python -m musclebob_helpers.estimate``: that need on the command line
* ``presets``     — named configurations per hardware class
* ``cli``         — argument parsing shared by the scripts
* ``colab``, ``notebook``, ``plots``, ``compare`` — the notebooks' steps: Colab-only steps (Drive, keep-alive,
  setup), the training notebook's cells, reward plots and live progress, base-vs-trained comparison

Importing the package is cheap: torch, transformers and TRL load only when used.
"""

from .config import ConfigError, TrainConfig, validate_config  # noqa: F401
from .data import build_train_rows, validation_rows  # noqa: F401
from .rewards import guide_reward, make_reward_functions  # noqa: F401

__version__ = "0.1.0"
