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

from . import run_dir
from .config import (
    HUB_ID,
    MODEL_ALLOWED,
    ConfigError,
    TrainConfig,
    as_typed,
    field_default,
    flag_name,
    is_tiny,
    resolve,
    validate_config,
)


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
        default = as_typed(f.name, field_default(f))  # "--fewshot", "--epochs 5": a yes/no default by its form
        if kind is bool:
            help_text = f"{f.metadata['help']} (default: {default})"
            parser.add_argument(flag_name(f), dest=f.name, action=argparse.BooleanOptionalAction, help=help_text)
        elif typing.get_origin(hints[f.name]) is list:  # repeatable (--trl-arg a=1 --trl-arg b=2): a list
            parser.add_argument(
                flag_name(f), dest=f.name, action="append", metavar="KEY=VALUE", help=f.metadata["help"]
            )
        else:
            help_text = f"{f.metadata['help']} (default: {default.split(' ', 1)[-1]})"
            choices = {"choices": f.metadata["choices"]} if "choices" in f.metadata else {}
            parser.add_argument(flag_name(f), dest=f.name, type=kind, metavar=f.name.upper(), help=help_text, **choices)
    return parser


def config_from_args(
    argv: list[str] | None, prog: str, description: str, check_folder: bool = True
) -> tuple[TrainConfig, dict[str, str], run_dir.RunFolder | None]:
    """Parse and validate the training flags: (config, where each value came from: see ``config.resolve``, the run
    folder as the start-up check resolved it: ``run_dir.RunFolder``). ``check_folder=False`` (the estimate CLI)
    checks the values only."""
    given = vars(build_train_parser(prog, description).parse_args(argv))  # --help and flag errors exit here
    from .training import process_state  # imports torch: only once the flags parse

    checked = None
    try:
        cfg, sources = resolve(given)
        procs = process_state()
        validate_config(cfg, num_processes=procs.num_processes)
        if check_folder:  # once per start: run_training(checked=...) does not repeat it
            checked = run_dir.check(cfg, writer=procs.is_main_process)
    except ConfigError as err:
        fail(prog, str(err))
    return cfg, sources, checked


def check_model_loadable(name: str, trust_remote_code: bool = False, max_completion_length: int | None = None) -> None:
    """Fail early (ConfigError) when ``--model`` can't be loaded: typo, offline, gated, not a model folder,
    code from the hub that ``--trust-remote-code`` does not allow, or completions longer than the model's context."""
    from .tiny_model import MODEL_SHAPE

    if is_tiny(name):
        _check_context(name, MODEL_SHAPE, max_completion_length)
        return
    path = run_dir.expand_path(name)
    if path.is_file():  # "some.txt" also reads as a hub id, and transformers would parse it as a config file
        raise ConfigError("model", name, "a model folder, a hub id or 'tiny', but this is a file")
    if not path.is_dir() and not HUB_ID.match(name):
        raise ConfigError("model", name, MODEL_ALLOWED)
    if path.is_dir():
        writing = run_dir.being_written(path)
        if writing:
            raise ConfigError("model", name, writing)
        if not (path / "config.json").exists() and not (path / "adapter_config.json").exists():
            raise ConfigError("model", name, "a model folder holds config.json; this folder has none")
        problems = run_dir.model_folder_problems(path)
        if problems:  # a save cut short (a kill, a full disk, Drive still syncing): loading it would be a traceback
            raise ConfigError(
                "model",
                name,
                f"the model in it is damaged or incomplete ({'; '.join(problems[:2])}); point at a complete model "
                "folder, or save or train it again",
            )
        from .io import read_json

        _check_context(name, read_json(path / "config.json") or {}, max_completion_length)
        return
    import logging

    from transformers import AutoConfig

    # The hub client logs every retry; the user gets one line below instead.
    hub_log = logging.getLogger("huggingface_hub")
    level = hub_log.level
    hub_log.setLevel(logging.CRITICAL)
    try:
        config = AutoConfig.from_pretrained(name, trust_remote_code=trust_remote_code)
    except Exception as err:  # noqa: BLE001 - any failure means the same to the user
        reason = str(err).strip().splitlines()[0][:160] if str(err).strip() else type(err).__name__
        if "trust_remote_code" in str(err):
            raise ConfigError(
                "model",
                name,
                "it runs its own code from the hub; pass --trust-remote-code only if "
                "you trust its authors, or use another --model",
            ) from None
        raise ConfigError(
            "model",
            name,
            f"it cannot be loaded ({reason}); check the name and your network, or use --model tiny to run offline",
        ) from None
    finally:
        hub_log.setLevel(level)
    _check_context(name, config.to_dict(), max_completion_length)


def _check_context(name: str, config: dict, max_completion_length: int | None) -> None:
    """Completions must fit the model's context (prompts need room too): TRL would fail mid-run otherwise."""
    context = config.get("max_position_embeddings")
    if max_completion_length is not None and isinstance(context, int) and max_completion_length >= context:
        raise ConfigError(
            "max_completion_length",
            max_completion_length,
            f"fewer tokens than the context of --model {name} ({context}), leaving room for the prompt",
        )


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
