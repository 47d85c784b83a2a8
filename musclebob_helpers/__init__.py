"""Musclebob helpers: everything the notebooks and the two scripts call.

One module per concern; imports run one way, each module using only those below it in this list (docs/development.md's
Layout section has the same list, a test keeps the graph free of cycles):

* ``notebook``, ``compare``, ``colab`` — the notebooks' steps: the training notebook's cells, base-vs-trained
  comparison, Colab-only steps (setup, Drive, keep-alive)
* ``estimate``    — ``python -m musclebob_helpers.estimate``: GPU memory and disk need on the command line
* ``cli``         — flags generated from ``TrainConfig``, the printed configuration, one-line errors
* ``startup``     — the run's start, decided once: values, Hub token, run folder, model, hardware -> one ``Start``
* ``training``    — the GRPO run with TRL's ``GRPOTrainer`` (resumable data order), hardware, callbacks, artifacts
* ``share``       — the run's model card (``README.md``), the push to the Hub, the download zip;
  ``python -m musclebob_helpers.share RUN OWNER/NAME`` pushes a finished run
* ``plots``       — reward curves, validation bars, the live progress panel
* ``monitoring``  — mid-training validation and live health warnings
* ``evaluation``  — loading models, generation, validation rates and the health check
* ``run_dir``     — the run folder: its file names, the start-up check (writable, free space, finished or not,
  resume mismatch), which checkpoint is intact and which one ``auto`` resumes, checkpoint rotation
* ``lock``        — one writer per run folder: ``.musclebob.lock`` (flock + heartbeat record)
* ``memory``      — GPU memory and disk need of a configuration, the model measured on the meta device
* ``lora``        — PEFT's LoraConfig, QLoRA's 4-bit config, adapter folders and merging
* ``tiny_model``  — the tiny offline Qwen2 base model behind ``--model tiny``
* ``rewards``     — pure reward functions in TRL's signature (``guide`` and the hardened ``musclebob``)
* ``data``        — SpongeBob, few-shot and control prompts; training and validation rows
* ``io``          — atomic JSON writes
* ``config``      — ``TrainConfig``, presets, model defaults, pure validation: imports nothing of ours

Importing the package is cheap: torch, transformers and TRL load only when used.
"""

from .config import ConfigError, TrainConfig, validate_config  # noqa: F401
from .data import build_train_rows, validation_rows  # noqa: F401
from .rewards import guide_reward, make_reward_functions  # noqa: F401

__version__ = "0.1.0"
