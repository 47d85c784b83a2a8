"""The GPU memory and disk need of a training configuration, without loading the model.

    python -m musclebob_helpers.estimate --model Qwen/Qwen2.5-0.5B-Instruct
    python -m musclebob_helpers.estimate --model mistralai/Mistral-Small-3.1-24B-Instruct-2503 \\
        --batch-size 1 --num-generations 4 --lora --load-in-4bit --gpu-memory-gb 22.5

The training script's flags (``--precision auto`` is estimated as bf16), plus ``--gpu-memory-gb N``.
"""

from __future__ import annotations

import argparse
import sys

from .cli import OneLineParser, config_from_args, fail
from .config import ConfigError, validate_config
from .memory import drive_need, estimate_memory, fit_warning, model_shape

_PROG = "python -m musclebob_helpers.estimate"
# --help is the training parser's: its description names the two flags it does not know.
_DESCRIPTION = (
    "GPU memory and disk need of a training configuration, without loading the model. Takes the training "
    "script's flags (--precision auto is estimated as bf16), plus --gpu-memory-gb N (a GPU's memory in GiB, to ask "
    "about a GPU you do not have)."
)


def _gib(value: str) -> float:
    try:
        gib = float(value)
    except ValueError:
        gib = 0.0
    if not gib > 0:
        raise argparse.ArgumentTypeError(f"{value!r} is not allowed: a number of GiB, e.g. 15")
    return gib


def _own_flags() -> argparse.ArgumentParser:
    # The training flags are the training script's parser's business (--precision too): this one takes only its own.
    parser = OneLineParser(prog=_PROG, add_help=False, allow_abbrev=False)
    parser.add_argument("--gpu-memory-gb", type=_gib, default=None)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Print the estimate for training flags (and ``--gpu-memory-gb``)."""
    own, rest = _own_flags().parse_known_args(sys.argv[1:] if argv is None else argv)
    cfg, _ = config_from_args(rest, _PROG, _DESCRIPTION)
    from .training import process_state

    num_processes = process_state().num_processes
    try:  # the values only: nothing is started, so no folder, model or machine to check
        validate_config(cfg, num_processes=num_processes)
    except ConfigError as err:
        fail(_PROG, str(err))
    shape = model_shape(cfg.model)
    if shape is None:
        fail(_PROG, f"--model={cfg.model!r}: its config.json could not be read (offline?)")
    gpu_gb = own.gpu_memory_gb
    precision = "bf16" if cfg.precision == "auto" else cfg.precision  # auto: the GPU's, unknown here
    est = estimate_memory(shape, cfg, precision=precision, num_processes=num_processes, gpu_memory_gb=gpu_gb)
    print(est.table())
    warning = fit_warning(est, gpu_gb, cfg) if gpu_gb else None
    print(warning or (f"Fits in {gpu_gb:.1f} GiB." if gpu_gb else ""))
    need = drive_need(cfg, shape)
    if need:
        print(need.line(on_drive=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
