"""Command-line plumbing shared by the two scripts.

The training parser is generated from ``TrainConfig``'s fields, so a new option
is added in one place. Every error is one line on stderr and exit code 2: the
parser's own errors (a word where a number belongs) and ``ConfigError``s from
validation alike, before any model is loaded or any file is written.
"""

from __future__ import annotations

import argparse
import shlex
import sys
import typing
from dataclasses import fields

from .config import ConfigError, TrainConfig, as_typed, flag_name, resolve


class OneLineParser(argparse.ArgumentParser):
    """argparse, but an error is one line (no usage dump) and exits with code 2."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message}\n")


def fail(prog: str, message: str, code: int = 2):
    print(f"{prog}: error: {message}", file=sys.stderr)
    raise SystemExit(code)


def build_train_parser(prog: str, description: str) -> argparse.ArgumentParser:
    """One flag per ``TrainConfig`` field; a boolean gets both forms (``--fewshot`` / ``--no-fewshot``).

    Not transformers' ``HfArgumentParser``: it spells flags with underscores (``--use_fewshot``) and prints the
    whole usage on an error, where the scripts keep the original flags and one line. Defaults are left out of the
    parsed namespace (SUPPRESS) so ``resolve`` knows which values the user typed."""
    parser = OneLineParser(prog=prog, description=description, argument_default=argparse.SUPPRESS)
    hints = typing.get_type_hints(TrainConfig)
    for f in fields(TrainConfig):
        kind = next((a for a in typing.get_args(hints[f.name]) if a is not type(None)), hints[f.name])
        default = as_typed(f.name, f.default)  # "--fewshot", "--epochs 5": a yes/no default is named by its form
        if kind is bool:
            help_text = f"{f.metadata['help']} (default: {default})"
            parser.add_argument(flag_name(f), dest=f.name, action=argparse.BooleanOptionalAction, help=help_text)
        else:
            help_text = f"{f.metadata['help']} (default: {default.split(' ', 1)[-1]})"
            choices = {"choices": f.metadata["choices"]} if "choices" in f.metadata else {}
            parser.add_argument(flag_name(f), dest=f.name, type=kind, metavar=f.name.upper(), help=help_text, **choices)
    return parser


def config_from_args(argv: list[str] | None, prog: str, description: str) -> tuple[TrainConfig, dict[str, str]]:
    """Parse the training flags: (config, where each value came from: see ``config.resolve``). The values are
    checked by the start (``startup.start``), or by the caller that does not start a run (the estimate CLI)."""
    given = vars(build_train_parser(prog, description).parse_args(argv))  # --help and flag errors exit here
    try:
        return resolve(given)
    except ConfigError as err:
        fail(prog, str(err))


def print_config(cfg: TrainConfig, sources: dict[str, str], log=print) -> None:
    """Each option as the user would type it, and where its value came from (you, a preset, a model default)."""
    log("Training with:")
    for f in fields(TrainConfig):
        log(f"  {as_typed(f.name, getattr(cfg, f.name)):<46}  ({sources.get(f.name, 'default')})")
    log(
        f"  (one step = {cfg.batch_size} prompts x {cfg.num_generations} generations = "
        f"{cfg.batch_size * cfg.num_generations} completions)"
    )


def resume_command(script: str, cfg: TrainConfig, sources: dict[str, str], num_processes: int = 1) -> str:
    """The command that continues a stopped run: the options the user gave (as ``print_config`` names them: a
    preset's and the model's defaults follow again from the same options), ``--resume-from-checkpoint auto``."""
    launcher = ["python"] if num_processes <= 1 else ["accelerate", "launch", "--num_processes", str(num_processes)]
    words = [*launcher, script]
    for f in fields(TrainConfig):
        if sources.get(f.name) == "you" and f.name not in ("resume_from_checkpoint", "overwrite"):
            words += shlex.split(as_typed(f.name, getattr(cfg, f.name)))
    return shlex.join([*words, "--resume-from-checkpoint", "auto"])
