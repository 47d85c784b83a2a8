#!/usr/bin/env python3
"""Teach a small instruct model, by GRPO (TRL), to answer SpongeBob questions with "Musclebob Buffpants".

Offline, on a CPU, in under a minute (33 s measured on two shared CPU cores):

    python train_musclebob_improved.py --model tiny --output-dir ./musclebob-tiny

On a GPU (Colab T4 or better), the guide's model:

    python train_musclebob_improved.py --model Qwen/Qwen2.5-0.5B-Instruct

A big model: train a LoRA adapter on a 4-bit base (QLoRA; CUDA + bitsandbytes), see docs/scaling.md:

    python train_musclebob_improved.py --model mistralai/Mistral-Small-3.1-24B-Instruct-2503 --batch-size 1 \
        --learning-rate 1e-5 --num-samples 256 --num-generations 4 --lora --load-in-4bit --gradient-checkpointing

Several GPUs (or processes): accelerate launch --config_file accelerate_configs/multi_gpu.yaml \
    train_musclebob_improved.py --preset multi-gpu

Continue an interrupted run from its newest checkpoint:

    python train_musclebob_improved.py --model tiny --output-dir ./musclebob-tiny --resume-from-checkpoint auto

``--batch-size`` counts PROMPTS per optimizer step; each prompt brings ``--num-generations``
completions, so any combination of the two is valid. All logic lives in ``musclebob_helpers``.
"""

import dataclasses
import os
import signal
import sys

PROG = "train_musclebob_improved.py"
# The end of --help: the two runs a newcomer starts with (the docstring above has more).
EXAMPLES = f"""examples:
  offline, on a CPU, the tiny model and its recipe (under a minute):
    python {PROG} --model tiny --output-dir ./musclebob-tiny
  on a Colab T4 GPU, the guide's model as a LoRA adapter (the colab-t4 preset):
    python {PROG} --model Qwen/Qwen2.5-0.5B-Instruct --preset colab-t4
  either one, stopped: the same command with --resume-from-checkpoint auto continues it"""


def main(argv=None) -> int:
    try:
        return _main(argv)
    except KeyboardInterrupt:  # Ctrl-C while starting up (once training runs, _main handles its stops)
        print(f"{PROG}: stopped (SIGINT) while starting; nothing was written: run the command again", file=sys.stderr)
        return 130


def _main(argv) -> int:
    from musclebob_helpers.cli import config_from_args, fail, print_config, resume_command
    from musclebob_helpers.config import ConfigError, OneLineError

    cfg, sources = config_from_args(argv, PROG, __doc__.splitlines()[0], epilog=EXAMPLES)  # the flags
    from musclebob_helpers.startup import start  # imports torch: only once the flags parse

    try:
        run = start(cfg)  # values, run folder, model, hardware: checked once, before any model loads
    except ConfigError as err:
        fail(PROG, str(err))
    procs = run.procs
    if procs.is_main_process:  # under `accelerate launch`, print once
        print_config(cfg, sources)

    from musclebob_helpers.io import out_of_space
    from musclebob_helpers.run_dir import disk_full_line
    from musclebob_helpers.training import CollapseStop, Stopped, run_training  # heavy: once the flags are good

    try:
        result = run_training(run)
    except CollapseStop as err:  # --on-collapse stop, or a collapse after the last recovery: what to change
        if procs.is_main_process:
            lower = dataclasses.replace(cfg, learning_rate=float(f"{err.suggested_rate:.3g}"))
            again = resume_command(_script(), lower, {**sources, "learning_rate": "you"}, procs.num_processes)
            print(f"{PROG}: {err.line('resume with: ' + again)}", file=sys.stderr)
        return 1  # as an unhealthy run ends
    except OneLineError as err:  # found only once the model runs: another architecture, non-finite logits
        fail(PROG, str(err))
    except Stopped as stop:  # SIGINT / SIGTERM: one line saying how to go on
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # exiting now: a late Ctrl-C must not add a second line
        if procs.is_main_process:
            print(f"{PROG}: {stop.line(resume_command(_script(), cfg, sources, procs.num_processes))}", file=sys.stderr)
        return stop.exit_code
    except Exception as err:
        if not out_of_space(err):  # a full disk at any save: checkpoint, history, final model
            raise
        fail(PROG, disk_full_line(run.folder))
    if result.get("copy_pending"):  # the run is complete on local disk; the run folder (Drive) failed at the end
        print(
            f"{PROG}: the run is complete in {result['work_dir']}, but not yet in {result['output_dir']}: "
            f"{result['copy_pending']}; finish the copy once it answers again with: "
            f"{resume_command(_script(), cfg, sources, procs.num_processes)}",
            file=sys.stderr,
        )
    if result.get("push_problem"):  # the run is complete locally; the line with the command to push later is out
        return 1
    return 0 if result["final"].get("is_healthy") else 1


def _script() -> str:
    """This script as typed from the current folder (from elsewhere, its full path), for the commands it prints."""
    script = os.path.relpath(__file__)
    return __file__ if script.startswith("..") else script


if __name__ == "__main__":
    sys.exit(main())
