"""Command-line plumbing shared by the two scripts.

The training parser is generated from ``TrainConfig``'s fields, so a new option
is added in one place. Every error is one line on stderr and exit code 2: the
parser's own errors (a word where a number belongs) and ``ConfigError``s from
validation alike, before any model is loaded or any file is written.
"""

from __future__ import annotations

import argparse
import sys
import typing
from dataclasses import fields
from pathlib import Path

from . import run_dir
from .config import ConfigError, TrainConfig, apply_model_defaults, flag_name, validate_config
from .run_dir import RunCheck


class OneLineParser(argparse.ArgumentParser):
    """argparse, but an error is one line (no usage dump) and exits with code 2."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message}\n")


def fail(prog: str, message: str, code: int = 2):
    print(f"{prog}: error: {message}", file=sys.stderr)
    raise SystemExit(code)


def _field_type(f):
    hints = typing.get_type_hints(TrainConfig)
    t = hints[f.name]
    if typing.get_origin(t) in (typing.Union, getattr(__import__("types"), "UnionType", None)):
        t = next(a for a in typing.get_args(t) if a is not type(None))
    return t


def build_train_parser(prog: str, description: str) -> argparse.ArgumentParser:
    parser = OneLineParser(
        prog=prog,
        description=description,
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        argument_default=argparse.SUPPRESS,
    )
    for f in fields(TrainConfig):
        flag, help_text = flag_name(f), f.metadata["help"]
        if _field_type(f) is bool:
            action = "store_false" if f.metadata.get("invert") else "store_true"
            parser.add_argument(flag, dest=f.name, action=action, help=f.metadata.get("flag_help", help_text))
        else:
            kwargs = {"choices": f.metadata["choices"]} if "choices" in f.metadata else {}
            parser.add_argument(
                flag,
                dest=f.name,
                type=_field_type(f),
                metavar=f.name.upper(),
                help=f"{help_text} (default: {f.default})",
                **kwargs,
            )
    return parser


def config_from_args(
    argv: list[str] | None, prog: str, description: str, check_folder: bool = True
) -> tuple[TrainConfig, set[str], dict, RunCheck | None]:
    """Parse and validate the training flags: (config, fields the user set, model defaults applied, the run
    folder's start-up check). ``check_folder=False`` (the estimate CLI) checks the values only."""
    from .presets import apply_preset
    from .scaling import world_size

    args = vars(build_train_parser(prog, description).parse_args(argv))
    cfg = TrainConfig(**args)
    checked = None
    try:
        # A preset fills what the user did not set; the tiny model's defaults fill what neither set.
        applied = apply_preset(cfg, set(args))
        applied.update(apply_model_defaults(cfg, set(args) | set(applied)))
        validate_config(cfg, num_processes=world_size())
        if check_folder:
            checked = run_dir.check(cfg)  # once per start: run_training(checked=...) does not repeat it
    except ConfigError as err:
        fail(prog, str(err))
    return cfg, set(args), applied, checked


def check_model_loadable(name: str, trust_remote_code: bool = False, max_completion_length: int | None = None) -> None:
    """Fail early (ConfigError) when ``--model`` can't be loaded: typo, offline, gated, not a model folder,
    code from the hub that ``--trust-remote-code`` does not allow, or completions longer than the model's context."""
    from .tiny_model import MODEL_SHAPE, is_tiny

    if is_tiny(name):
        _check_context(name, MODEL_SHAPE, max_completion_length)
        return
    path = Path(name).expanduser()
    if path.is_dir():
        if not (path / "config.json").exists() and not (path / "adapter_config.json").exists():
            raise ConfigError("model", name, "a model folder holds config.json; this folder has none")
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


def print_config(cfg: TrainConfig, applied: dict, log=print) -> None:
    log("Training with:")
    for f in fields(TrainConfig):
        note = ""
        if f.name in applied:
            note = f"  (preset {cfg.preset})" if cfg.preset and f.name != "preset" else "  (tiny-model default)"
        log(f"  {flag_name(f):<26} {getattr(cfg, f.name)!r}{note}")
    log(
        f"  (one step = {cfg.batch_size} prompts x {cfg.num_generations} generations = "
        f"{cfg.batch_size * cfg.num_generations} completions)"
    )
