"""Command-line plumbing shared by the scripts: the training parser is generated from ``TrainConfig``'s fields,
and every error is one line on stderr with exit code 2, before any model loads or any file is written.
"""

from __future__ import annotations

import argparse
import difflib
import shlex
import sys
import textwrap
import typing
from dataclasses import fields

from .config import (
    GROUPS,
    TINY_NAME,
    ConfigError,
    TrainConfig,
    as_typed,
    completions_per_step,
    field_default,
    flag_name,
    model_defaults,
    resolve,
)


class _HelpFormatter(argparse.HelpFormatter):
    """Text with line breaks of its own (the examples) keeps them; help wraps between words only, so a flag in it
    stays whole."""

    def _fill_text(self, text, width, indent):
        if "\n" not in text.strip():
            return super()._fill_text(text, width, indent)
        return "".join(indent + line for line in text.splitlines(keepends=True))

    def _split_lines(self, text, width):
        return textwrap.wrap(" ".join(text.split()), width, break_on_hyphens=False, break_long_words=False)


class OneLineParser(argparse.ArgumentParser):
    """argparse for a first contact: an error is one line with exit code 2, a flag is matched whole (``--lr`` is no
    prefix of ``--lr-scheduler``), an unknown flag names the closest known one (argparse's ``suggest_on_error``,
    3.14+, covers only choices)."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("allow_abbrev", False)
        kwargs.setdefault("formatter_class", _HelpFormatter)
        super().__init__(*args, **kwargs)

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message}\n")

    def parse_args(self, args=None, namespace=None):
        parsed, extras = self.parse_known_args(args, namespace)
        flag = next((a.split("=", 1)[0] for a in extras if a.startswith("-")), None)
        if flag is not None:
            self.error(f"unrecognized argument {flag}{self._did_you_mean(flag)}")
        if extras:
            self.error(f"unrecognized arguments: {' '.join(extras)}")
        return parsed

    def _did_you_mean(self, flag: str) -> str:
        known = [s for a in self._actions if a.help != argparse.SUPPRESS for s in a.option_strings if s[:2] == "--"]
        typed = flag.replace("_", "-")  # --learning_rate: transformers' spelling
        starts = [k for k in known if k.startswith(typed)]  # what prefix matching would have picked
        close = starts if len(starts) == 1 else difflib.get_close_matches(typed, known, n=1)
        return f"; did you mean {close[0]}?" if close else ""


def fail(prog: str, message: str, code: int = 2):
    print(f"{prog}: error: {message}", file=sys.stderr)
    raise SystemExit(code)


def _build_train_parser(prog: str, description: str, epilog: str | None = None) -> argparse.ArgumentParser:
    """One flag per ``TrainConfig`` field in ``config.GROUPS``' sections, each help ending with its defaults.
    Not ``HfArgumentParser``: it spells flags with underscores and prints the usage on an error. Defaults stay out
    of the namespace (SUPPRESS) so ``resolve`` knows what the user typed."""
    parser = OneLineParser(
        prog=prog,
        usage="%(prog)s [-h] [OPTIONS]",  # not 40 lines of every flag: the sections below list them
        description=description,
        epilog=epilog,
        argument_default=argparse.SUPPRESS,
    )
    sections = {title: parser.add_argument_group(title) for title in GROUPS}
    section = {name: sections[title] for title, names in GROUPS.items() for name in names}
    # What config.resolve fills in instead of a default: "(default: 5; 3 with --model tiny)".
    tiny = model_defaults(TrainConfig(model=TINY_NAME))
    tiny_lora = model_defaults(TrainConfig(model=TINY_NAME, lora=True))
    others = [
        (f"with --model {TINY_NAME}", tiny),
        ("with --lora", model_defaults(TrainConfig(lora=True))),
        (f"with --lora --model {TINY_NAME}", {k: v for k, v in tiny_lora.items() if tiny.get(k) != v}),
    ]
    hints = typing.get_type_hints(TrainConfig)
    for f in fields(TrainConfig):
        kind = next((a for a in typing.get_args(hints[f.name]) if a is not type(None)), hints[f.name])
        notes = [f"{_shown(f.name, kind, found[f.name][0])} {when}" for when, found in others if f.name in found]
        help_text = f"{f.metadata['help']} (default: {'; '.join([_shown(f.name, kind, field_default(f)), *notes])})"
        flags = [flag_name(f), *f.metadata.get("aliases", ())]
        group = section[f.name]
        if kind is bool:
            group.add_argument(*flags, dest=f.name, action=argparse.BooleanOptionalAction, help=help_text)
        elif typing.get_origin(hints[f.name]) is list:  # repeatable (--trl-arg a=1 --trl-arg b=2): a list
            group.add_argument(*flags, dest=f.name, action="append", metavar="KEY=VALUE", help=f.metadata["help"])
        else:
            choices = {"choices": f.metadata["choices"]} if "choices" in f.metadata else {}
            group.add_argument(*flags, dest=f.name, type=kind, metavar=f.name.upper(), help=help_text, **choices)
    return parser


def _shown(name: str, kind: type, value) -> str:
    """A default as --help shows it: a yes/no one by its form (``--fewshot``), a value without its flag (``5``)."""
    if value is None:
        return "not set"
    typed = as_typed(name, value)
    return typed if kind is bool else typed.split(" ", 1)[-1]


def config_from_args(
    argv: list[str] | None, prog: str, description: str, epilog: str | None = None
) -> tuple[TrainConfig, dict[str, str]]:
    """Parse the training flags: (config, where each value came from); ``startup.start`` checks the values."""
    given = vars(_build_train_parser(prog, description, epilog).parse_args(argv))  # --help and flag errors exit here
    try:
        return resolve(given)
    except ConfigError as err:
        fail(prog, str(err))


def print_config(cfg: TrainConfig, sources: dict[str, str], log=print) -> None:
    """Each option as the user would type it, and where its value came from (you, a preset, a model default)."""
    log("Training with:")
    for f in fields(TrainConfig):
        log(f"  {as_typed(f.name, getattr(cfg, f.name)):<46}  ({sources.get(f.name, 'default')})")
    made = cfg.batch_size * cfg.num_generations
    step = f"{cfg.batch_size} prompts x {cfg.num_generations} generations = {made} completions"
    if cfg.num_iterations > 1:  # one generated batch serves num_iterations optimizer steps
        step += f", each batch used for {cfg.num_iterations} steps: {completions_per_step(cfg)} completions"
    log(f"  (one step = {step})")


def resume_command(script: str, cfg: TrainConfig, sources: dict[str, str], num_processes: int = 1) -> str:
    """The command that continues a stopped run: the options the user gave, ``--resume-from-checkpoint auto``."""
    launcher = ["python"] if num_processes <= 1 else ["accelerate", "launch", "--num_processes", str(num_processes)]
    words = [*launcher, script]
    for f in fields(TrainConfig):
        if sources.get(f.name) == "you" and f.name not in ("resume_from_checkpoint", "overwrite"):
            words += shlex.split(as_typed(f.name, getattr(cfg, f.name)))
    return shlex.join([*words, "--resume-from-checkpoint", "auto"])
