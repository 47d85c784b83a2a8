#!/usr/bin/env python3
"""Evaluate a model on held-out SpongeBob and control questions: Musclebob, Spongebob, full-name and coherence rates.

    python test_musclebob.py ./musclebob-tiny                      # a run folder (the same as --model ./musclebob-tiny)
    python test_musclebob.py ./musclebob-tiny --compare-base tiny  # side by side with the base
    python test_musclebob.py --model tiny --interactive            # ask your own questions
    python test_musclebob.py ./musclebob-tiny --output results.json
    python test_musclebob.py OWNER/NAME                            # a pushed run (--push-to-hub)

Sampling is fixed and seeded (temperature 0.7, top-p 0.95, seed 1234): two runs on the same model give the
same figures. All logic lives in ``musclebob_helpers``.
"""

import argparse
import sys

PROG = "test_musclebob.py"
NO_MODEL = "no model to evaluate: pass --model RUN_FOLDER (or tiny, or a hub id)"


def build_parser():
    from musclebob_helpers.cli import OneLineParser

    p = OneLineParser(
        prog=PROG,
        description=__doc__.split("\n\n")[0],
        epilog="examples:\n" + __doc__.split("\n\n")[1],
    )
    p.add_argument("run_folder", nargs="?", metavar="RUN_FOLDER", help="the model to evaluate, as --model")
    # No default: a model a user did not name (a folder that may not exist) is a worse first error than asking.
    p.add_argument(
        "--model",
        help="the model to evaluate: a run folder, a hub id (a pushed LoRA adapter too: its base is read from "
        "adapter_config.json), or 'tiny' (required, or RUN_FOLDER)",
    )
    p.add_argument("--compare-base", metavar="MODEL", help="also evaluate this model and print both side by side")
    p.add_argument(
        "--num-prompts",
        type=int,
        default=None,
        help="SpongeBob prompts to use (a proportional share of control prompts comes with them) "
        "(default: all held-out prompts)",
    )
    p.add_argument(
        "--num-samples",
        type=int,
        default=4,
        help="answers sampled per prompt, from which the rates are measured (default: 4)",
    )
    p.add_argument("--max-new-tokens", type=int, default=64, help="longest answer in tokens (default: 64)")
    p.add_argument(
        "--interactive", action="store_true", help="ask your own questions (quit, empty line or Ctrl-D ends)"
    )
    p.add_argument("--output", metavar="FILE.json", help="write the report(s) to this JSON file (default: none)")
    p.add_argument(
        "--show",
        type=int,
        default=5,
        metavar="N",
        help="answers to print per model, as examples, out of all those sampled (default: 5)",
    )
    # --show's old name, easily read as --num-samples: still works, not listed.
    p.add_argument("--samples", type=int, dest="old_show", help=argparse.SUPPRESS)
    return p


def interactive(models: dict, max_new_tokens: int) -> None:
    from musclebob_helpers.evaluation import generate

    print("Ask a question (quit, an empty line or Ctrl-D to stop).")
    while True:
        try:
            question = input("> ").strip()
        except (EOFError, KeyboardInterrupt):
            print()
            break
        if not question or question.lower() in ("quit", "exit", "q"):
            break
        for name, (model, tok) in models.items():
            answer = generate(model, tok, [question], max_new_tokens=max_new_tokens)[0][0].text
            print(f"[{name}] {answer}")


def main(argv=None) -> int:
    from musclebob_helpers.cli import fail
    from musclebob_helpers.evaluation import check_model_loadable
    from musclebob_helpers.config import ConfigError

    args = build_parser().parse_args(argv)
    if args.run_folder and args.model and args.run_folder != args.model:
        fail(PROG, f"RUN_FOLDER={args.run_folder!r} and --model={args.model!r} name two models: give one")
    args.model = args.model or args.run_folder
    if args.old_show is not None:
        print(f"{PROG}: note: --samples is now --show (answers to print)", file=sys.stderr)
        args.show = args.old_show
    if args.num_prompts is not None and args.num_prompts < 1:
        fail(PROG, f"--num-prompts={args.num_prompts} is not allowed: a whole number >= 1")
    if args.num_samples < 1:
        fail(PROG, f"--num-samples={args.num_samples} is not allowed: a whole number >= 1")
    if args.max_new_tokens < 1:
        fail(PROG, f"--max-new-tokens={args.max_new_tokens} is not allowed: a whole number >= 1")
    if not args.model:
        fail(PROG, NO_MODEL)
    names = {"model": args.model}
    if args.compare_base:
        names = {"base": args.compare_base, "model": args.model}
    for flag, name in (("--model", args.model), ("--compare-base", args.compare_base)):
        if name is None:
            continue
        try:
            check_model_loadable(name)
        except ConfigError as err:
            fail(PROG, str(err).replace("--model", flag, 1))

    from musclebob_helpers import data, evaluation
    from musclebob_helpers.io import write_json_atomic

    models = {label: evaluation.load_model(name) for label, name in names.items()}
    if args.interactive:
        interactive(models, args.max_new_tokens)
        return 0

    rows = data.validation_rows(args.num_prompts)
    reports = {}
    for label, (model, tok) in models.items():
        reports[label] = evaluation.validate(
            model,
            tok,
            rows,
            num_samples=args.num_samples,
            max_new_tokens=args.max_new_tokens,
            baseline=reports.get("base"),
            model_name=names[label],
        )
    for label, report in reports.items():
        print(f"\n== {label}: {names[label]}  ({report['num_prompts']} prompts, {report['num_responses']} answers)")
        for r in report["responses"][:: max(1, len(report["responses"]) // max(1, args.show))][: args.show]:
            print(f"  Q: {r['prompt']}\n  A: {r['response']}")
    print()
    print(evaluation.summary_table(reports))
    for label, report in reports.items():
        for problem in report["health_problems"]:
            print(f"WARNING ({label}): {problem}")
    if args.output:
        write_json_atomic(args.output, reports if args.compare_base else reports["model"])
        print(f"\nWrote {args.output}")
    if args.compare_base:
        print(f"Reward plot: {compare_plot(args.model, reports)}")
    return 0


def compare_plot(model: str, reports: dict):
    """``reward_plot.png`` with these base vs model rates: in the --model folder, beside its reward history, when it
    is a local folder (a run folder); else in the current folder."""
    from pathlib import Path

    from musclebob_helpers.plots import save_run_report
    from musclebob_helpers.run_dir import expand_path

    folder = expand_path(model)
    return save_run_report(
        folder if folder.is_dir() else Path.cwd(), reports={"base": reports["base"], "model": reports["model"]}
    )


if __name__ == "__main__":
    sys.exit(main())
