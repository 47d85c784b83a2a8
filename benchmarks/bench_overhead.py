#!/usr/bin/env python3
"""What the project's trainer costs over a bare TRL ``GRPOTrainer``, where that time goes, and how a step grows.

    python benchmarks/bench_overhead.py                          # 3 interleaved pairs + growth table, tiny defaults
    python benchmarks/bench_overhead.py --pairs 5 --gradient-checkpointing off
    python benchmarks/bench_overhead.py --pairs 1 --num-samples 8 --generations 4 --growth-steps 3  # smoke

**Bare vs project.** Both train the tiny model's defaults (``config.resolve({"model": "tiny"})``) for one epoch
(``--epochs``), which ends with the epoch-end check and a checkpoint save, under the same ``GRPOConfig`` from
``training.grpo_args``, with the same seed, prompts and reward functions. *bare* is ``trl.GRPOTrainer`` with
nothing of ours; *project* is ``training.build_trainer``, the trainer ``run_training`` trains with (its sampler,
reward history, health monitor, epoch-end checks, checkpoint rotation, progress). Only ``trainer.train()`` is
timed. Runs alternate bare, project, bare, project ..., each in a fresh process (no allocator or thread state
carried over) training into the same folder, so no ``GRPOConfig`` field differs, which the script checks.

**Where the difference goes.** Timers wrapped from here (not in the package) itemise, in ms per step and as a
share of the bare step: each of our callbacks (with the graceful stop's, which ``run_training`` adds, and the file
writes, appends and fsyncs inside them), the epoch-seeded sampler, and in both runs transformers' progress bar
(ours replaces it), the callback handler's dispatch, ``warnings.warn`` (``library_output_hidden`` filters it),
checkpoint saves and reward functions. What the items leave of the measured difference is printed as not
itemised. Machine load moves the items much less than the ratio (take the ratio on a quiet machine).

**Growth.** Step time of the bare trainer for ``--generations`` completions per prompt (same prompts per step),
the mean after two warm-up steps; a least-squares line gives the fixed cost per step and the cost per
completion. Mean completion length and how often the length limit was hit come from the trainer's own logs.

Prints the tables; raw figures go to ``--json``. Figures depend on the machine and its load: compare within
one run, not across machines.
"""

import argparse
import contextlib
import functools
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

DEFAULT_JSON = ROOT / "benchmarks" / "results_overhead.json"
WARMUP_STEPS = 2  # the first steps pay for lazy initialisation, not for what a step costs
# The project's callbacks by class name, as the share table names them.
CALLBACK_PARTS = {
    "RewardHistoryCallback": "reward history",
    "CompletionLog": "completion samples",
    "HealthMonitor": "health monitor",
    "MidTrainingValidation": "epoch-end checks",
    "AfterSave": "checkpoint manifest + rotation",
    "StepProgress": "progress",
    "BeforeManifest": "adapter base, collapse recovery",
    "StopAtStepEnd": "graceful stop",
    "SaveOnSchedule": "save schedule (--save-steps/--save-minutes)",
    "MirrorCheckpoints": "mirror (a run folder on Drive)",
}
# Timed inside the callbacks above (or in any code, for fsync), so shown as parts of them, not added to them.
WRITES, APPENDS, FSYNC = "whole-file writes", "appends", "fsync"
INSIDE = (WRITES, APPENDS, FSYNC)
SAMPLER = "epoch-seeded sampler"  # trainer_class()'s wrapper of TRL's sampler (set_epoch, __iter__)
SAVES, REWARDS = "checkpoint saves", "reward functions"  # in bare and project runs alike
# What transformers and the libraries do in both runs, timed in both: transformers' own progress bar (the bare run
# keeps it; show_progress puts StepProgress in its place), the callback handler's dispatch of every event to every
# callback (less the callbacks' own time), and warnings.warn (library_output_hidden's filter in the project run).
BAR, DISPATCH, WARN = "transformers' progress bar", "callback dispatch", "warnings.warn"
RESULT = "RESULT "  # a child's last line: its figures as JSON


# --- pure summaries (tested in tests/test_bench_overhead.py) ---------------------------------------------------


def config_differences(a: dict, b: dict) -> dict:
    """``{field: (a's value, b's value)}`` for the fields two ``GRPOConfig.to_dict()`` disagree on."""
    return {k: (a.get(k), b.get(k)) for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)}


def ratio_summary(pairs: list[tuple[float, float]]) -> dict:
    """Per pair (bare seconds, project seconds): project/bare; with their median, min and max."""
    ratios = [round(project / bare, 4) for bare, project in pairs]
    return {"ratios": ratios, "median": statistics.median(ratios), "min": min(ratios), "max": max(ratios)}


def fit_line(xs: list[float], ys: list[float]) -> tuple[float, float]:
    """Least-squares ``y = intercept + slope * x``: (intercept, slope)."""
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    sxx = sum((x - mx) ** 2 for x in xs)
    slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sxx if sxx else 0.0
    return my - slope * mx, slope


def log_means(log_history: list[dict]) -> dict:
    """Mean completion length (tokens) and share of completions cut at the length limit over the logged steps."""
    steps = [h for h in log_history if "completions/mean_length" in h]
    mean = lambda key: statistics.fmean(h.get(key, 0.0) for h in steps) if steps else None  # noqa: E731
    return {"mean_length": mean("completions/mean_length"), "clipped_ratio": mean("completions/clipped_ratio")}


# --- one run, in a child process ---------------------------------------------------------------------------------


def make_config(spec: dict):
    from musclebob_helpers.config import resolve

    given = {"model": "tiny", **spec["overrides"], "output_dir": spec["output_dir"]}
    return resolve(given)[0]


def timed(fn, bucket: dict, name: str):
    def wrapper(*args, **kwargs):
        start = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            bucket[name] = bucket.get(name, 0.0) + time.perf_counter() - start

    return wrapper


def time_our_callbacks(trainer, bucket: dict) -> None:
    """Wrap the methods each of our callbacks defines with a timer adding to ``bucket[part name]``."""
    from transformers import TrainerCallback

    for cb in trainer.callback_handler.callbacks:
        part = CALLBACK_PARTS.get(type(cb).__name__)
        if part is None:
            continue
        for name in dir(cb):
            if name.startswith("on_") and getattr(type(cb), name) is not getattr(TrainerCallback, name, None):
                setattr(cb, name, timed(getattr(cb, name), bucket, part))


def time_writes(bucket: dict) -> None:
    """Time every whole-file write and every append of the callbacks, and every ``os.fsync`` (any caller) inside
    ``train()``."""
    from musclebob_helpers import monitoring, training

    for module, name, part in (
        (training, "write_json_atomic", WRITES),
        (training, "write_json_list_atomic", WRITES),
        (monitoring, "write_json_atomic", WRITES),
        (monitoring, "write_lines_atomic", WRITES),
        (monitoring, "append_lines", APPENDS),
    ):
        if hasattr(module, name):
            setattr(module, name, timed(getattr(module, name), bucket, part))
    os.fsync = timed(os.fsync, bucket, FSYNC)


def time_library(trainer, library: dict, ours: dict) -> None:
    """Time into ``library``, in either run, transformers' progress bar, the callback dispatch (less the time of the
    callbacks, ours in ``ours`` and the bar) and ``warnings.warn`` (see BAR)."""
    import warnings

    from transformers.trainer_callback import ProgressCallback

    for cb in trainer.callback_handler.callbacks:
        if isinstance(cb, ProgressCallback):
            for name in dir(cb):
                if name.startswith("on_"):
                    setattr(cb, name, timed(getattr(cb, name), library, BAR))
    call_event = trainer.callback_handler.call_event

    def callbacks_s() -> float:
        return library.get(BAR, 0.0) + sum(v for k, v in ours.items() if k not in INSIDE)

    def dispatch(*args, **kwargs):
        before, start = callbacks_s(), time.perf_counter()
        try:
            return call_event(*args, **kwargs)
        finally:
            spent = time.perf_counter() - start - (callbacks_s() - before)
            library[DISPATCH] = library.get(DISPATCH, 0.0) + spent

    trainer.callback_handler.call_event = dispatch
    warnings.warn = timed(warnings.warn, library, WARN)


def time_sampler(bucket: dict) -> None:
    """Time trainer_class()'s sampler wrapper: what it adds to TRL's sampler (its set_epoch and __iter__)."""
    from musclebob_helpers.training import trainer_class

    cls = trainer_class()
    get_sampler = cls._get_train_sampler

    def wrapped(self, *args, **kwargs):
        sampler = get_sampler(self, *args, **kwargs)
        kind = type(sampler)
        if not getattr(kind, "_timed", False):  # once: a second dataloader must not time the timer
            for name in ("set_epoch", "__iter__"):
                setattr(kind, name, timed(getattr(kind, name), bucket, SAMPLER))
            kind._timed = True
        return sampler

    cls._get_train_sampler = wrapped


def run_one(mode: str, spec: dict) -> dict:
    """Train once as ``mode`` ('bare', 'project' or 'growth', the bare trainer with a step clock); the child's job."""
    import torch
    from transformers import TrainerCallback
    from trl import GRPOTrainer

    from musclebob_helpers import data, evaluation, training
    from musclebob_helpers.training import (
        GracefulStop,
        above_progress_bar,
        build_trainer,
        detect_hardware,
        grpo_args,
        grpo_trainer,
        library_output_hidden,
    )

    torch.manual_seed(spec["overrides"].get("seed", 42))
    cfg = make_config(spec)
    hw = detect_hardware()
    model, tokenizer = evaluation.load_model(cfg.model, device=hw["device"])
    args = grpo_args(cfg, hw)
    parts: dict[str, float] = {}
    stamps: list[float] = []
    if mode == "project":
        val_rows = data.validation_rows()
        # The health monitor compares checks with a baseline; one sample a prompt is enough for that, and it is
        # made before the clock starts, as run_training makes it.
        baseline = evaluation.validate(
            model, tokenizer, val_rows, num_samples=1, max_new_tokens=cfg.max_completion_length
        )
        time_sampler(parts)
        # With the graceful stop's callback, which run_training adds to build_trainer's.
        trainer, _ = build_trainer(
            cfg,
            model,
            tokenizer,
            hw,
            Path(cfg.output_dir),
            baseline,
            log=above_progress_bar(print),
            callbacks=[GracefulStop().callback()],
        )
        time_our_callbacks(trainer, parts)
        time_writes(parts)
        context = library_output_hidden()  # as run_training trains
    else:

        class Clock(TrainerCallback):
            def on_step_end(self, args, state, control, **kwargs):
                stamps.append(time.perf_counter())

        # TRL's own GRPOTrainer, nothing of ours but the prompts and the rewards both runs train on (this process
        # is the benchmark's child: the swap ends with it).
        training.trainer_class = lambda: GRPOTrainer
        trainer = grpo_trainer(cfg, model, tokenizer, args, callbacks=[Clock()] if mode == "growth" else [])
        context = contextlib.nullcontext()
    library: dict[str, float] = {}
    time_library(trainer, library, parts)
    # Code that bare and project runs share, for scale: TRL's checkpoint writes and our reward functions.
    shared: dict[str, float] = {}
    trainer._save_checkpoint = timed(trainer._save_checkpoint, shared, SAVES)
    trainer.reward_funcs = [functools.wraps(f)(timed(f, shared, REWARDS)) for f in trainer.reward_funcs]
    start = time.perf_counter()
    with context:
        trainer.train()
    train_s = time.perf_counter() - start
    # Between step ends: each difference is one step's time (logging included), from step WARMUP_STEPS + 1 on.
    steps = [b - a for a, b in zip(stamps[WARMUP_STEPS - 1 :], stamps[WARMUP_STEPS:])]
    return {
        "mode": mode,
        "train_s": train_s,
        "global_step": trainer.state.global_step,
        "completions_per_step": cfg.batch_size * cfg.num_generations,
        "num_generations": cfg.num_generations,
        "gradient_checkpointing": cfg.gradient_checkpointing,
        "step_s": statistics.fmean(steps) if steps else None,
        "parts_s": parts,
        "library_s": library,
        "shared_s": shared,
        **log_means(trainer.state.log_history),
        "rewards": [h["reward"] for h in trainer.state.log_history if "reward" in h],
        # What the trainer trained with: the same GRPOConfig in every bare and project run (checked by the parent).
        "grpo_config": plain(trainer.args),
        "built_config_differs": config_differences(plain(args), plain(trainer.args)),
    }


def plain(grpo_config) -> dict:
    """A ``GRPOConfig`` as JSON values (enums and paths as strings), comparable across processes."""
    return json.loads(json.dumps(grpo_config.to_dict(), default=str))


def child(argv: list[str]) -> int:
    result = run_one(argv[0], json.loads(argv[1]))
    print(RESULT + json.dumps(result), flush=True)
    return 0


def measure(mode: str, spec: dict) -> dict:
    """One run in a fresh process, into a fresh ``spec['output_dir']``."""
    shutil.rmtree(spec["output_dir"], ignore_errors=True)
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false"}
    cmd = [sys.executable, __file__, "--child", mode, json.dumps(spec)]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT)
    line = next((x for x in reversed(proc.stdout.splitlines()) if x.startswith(RESULT)), None)
    if line is None:
        raise RuntimeError(f"{mode} run failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
    return json.loads(line[len(RESULT) :])


# --- the parent ----------------------------------------------------------------------------------------------------


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--pairs", type=int, default=3, help="interleaved bare/project pairs")
    # One epoch of the tiny defaults' 128 prompts: an epoch-end check and a checkpoint save weigh what they
    # weigh in a real run (a shorter epoch would inflate them).
    p.add_argument("--num-samples", type=int, default=128, help="training prompts per epoch (tiny default: 128)")
    p.add_argument("--epochs", type=int, default=1, help="epochs (each ends with a check and a checkpoint)")
    p.add_argument("--seed", type=int, default=42, help="the same seed for every run")
    p.add_argument(
        "--gradient-checkpointing",
        choices=("on", "off"),
        default=None,
        help="override the tiny defaults' gradient_checkpointing (default: as config.resolve gives it)",
    )
    p.add_argument(
        "--generations", type=int, nargs="*", default=[4, 8, 16], help="--num-generations values of the growth table"
    )
    p.add_argument("--growth-steps", type=int, default=8, help="steps per growth row (the first two are warm-up)")
    p.add_argument("--json", type=Path, default=DEFAULT_JSON, help="where the raw figures go")
    args = p.parse_args(argv)
    if args.pairs < 1 or args.num_samples < 1 or args.epochs < 1 or args.growth_steps < WARMUP_STEPS + 1:
        p.error(f"--pairs, --num-samples and --epochs must be >= 1, --growth-steps >= {WARMUP_STEPS + 1}")
    return args


def overrides(args) -> dict:
    given = {"num_samples": args.num_samples, "epochs": args.epochs, "seed": args.seed}
    if args.gradient_checkpointing is not None:
        given["gradient_checkpointing"] = args.gradient_checkpointing == "on"
    return given


def pair_table(runs: list[dict], summary: dict) -> list[str]:
    lines = [f"{'pair':<6}{'bare train() s':>16}{'project train() s':>19}{'project/bare':>14}"]
    for i, ratio in enumerate(summary["ratios"]):
        bare, project = runs[2 * i], runs[2 * i + 1]
        lines.append(f"{i + 1:<6}{bare['train_s']:>16.2f}{project['train_s']:>19.2f}{ratio:>13.3f}x")
    lines.append(f"median {summary['median']:.3f}x  (range {summary['min']:.3f}-{summary['max']:.3f}x)")
    return lines


def per_step_ms(runs: list[dict], key: str, name: str) -> float:
    """Median over ``runs`` of ``run[key][name]`` in milliseconds per optimizer step."""
    return statistics.median(1e3 * r[key].get(name, 0.0) / r["global_step"] for r in runs) if runs else 0.0


def item_table(runs: list[dict]) -> list[str]:
    """Every per-step cost the project's trainer adds to the bare one, in ms per step (median over the runs) and
    as a share of the bare step, and what the items leave unexplained of the measured difference."""
    bares, projects = [r for r in runs if r["mode"] == "bare"], [r for r in runs if r["mode"] == "project"]
    bare_step = statistics.median(1e3 * r["train_s"] / r["global_step"] for r in bares)
    head = f"{'item':<40}{'bare ms':>9}{'project ms':>12}{'extra ms':>10}{'% of bare step':>16}"
    lines = [f"ms per optimizer step (median over the runs); a bare step takes {bare_step:.1f} ms", head]

    def row(label: str, bare: float, project: float) -> float:
        extra = project - bare
        lines.append(f"{label:<40}{bare:>9.3f}{project:>12.3f}{extra:>10.3f}{extra / bare_step:>16.2%}")
        return extra

    ours = sorted({n for r in projects for n in r["parts_s"]}, key=lambda n: (n in INSIDE, n == SAMPLER, n))
    total = 0.0
    for name in ours:
        inside = name in INSIDE
        extra = row(f"  incl. {name} (any callback)" if inside else name, 0.0, per_step_ms(projects, "parts_s", name))
        total += 0.0 if inside else extra
    for name in (BAR, DISPATCH, WARN):
        total += row(name, per_step_ms(bares, "library_s", name), per_step_ms(projects, "library_s", name))
    for name in (SAVES, REWARDS):  # the same code in both runs: what differs is noise
        total += row(
            f"{name} (both runs)", per_step_ms(bares, "shared_s", name), per_step_ms(projects, "shared_s", name)
        )
    measured = statistics.median(
        1e3 * (p["train_s"] - b["train_s"]) / p["global_step"] for b, p in zip(runs[0::2], runs[1::2])
    )
    lines.append(f"{'all the items':<40}{'':>9}{'':>12}{total:>10.3f}{total / bare_step:>16.2%}")
    lines.append(
        f"{'measured: project - bare train()':<40}{'':>9}{'':>12}{measured:>10.3f}{measured / bare_step:>16.2%}"
    )
    lines.append(
        f"{'not itemised (measured - items)':<40}{'':>9}{'':>12}{measured - total:>10.3f}"
        f"{(measured - total) / bare_step:>16.2%}"
    )
    return lines


def growth_table(rows: list[dict], fit: tuple[float, float] | None) -> list[str]:
    lines = [
        f"{'generations':<13}{'completions/step':>17}{'step s':>9}{'mean tokens':>13}{'hit limit':>11}",
    ]
    for r in rows:
        lines.append(
            f"{r['num_generations']:<13}{r['completions_per_step']:>17}{r['step_s']:>9.3f}"
            f"{r['mean_length']:>13.1f}{r['clipped_ratio']:>11.1%}"
        )
    if fit is not None:
        lines.append(f"step ~ {fit[0]:.3f} s fixed + {fit[1]:.4f} s per completion")
    return lines


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "--child":
        return child(argv[1:])
    args = parse_args(argv)
    given = overrides(args)
    work = Path(tempfile.mkdtemp(prefix="bench-overhead-"))
    try:
        # One folder for every bare and project run: output_dir is a GRPOConfig field too.
        spec = {"overrides": given, "output_dir": str(work / "run")}
        runs = []
        for i in range(args.pairs):
            for mode in ("bare", "project"):
                print(f"pair {i + 1}/{args.pairs}: {mode} ...", flush=True)
                runs.append(measure(mode, spec))
        for r in runs:
            differs = config_differences(runs[0]["grpo_config"], r["grpo_config"]) or r["built_config_differs"]
            if differs:
                raise RuntimeError(f"the {r['mode']} run trained with another GRPOConfig: {differs}")
        default = make_config(spec)

        def grown(g: int, **extra) -> dict:  # one epoch of --growth-steps steps, g completions per prompt
            prompts = args.growth_steps * default.batch_size
            return {
                "overrides": {**given, "num_generations": g, "num_samples": prompts, "epochs": 1, **extra},
                "output_dir": str(work / "growth"),
            }

        growth = []
        for g in args.generations:
            print(f"growth: --num-generations {g} ...", flush=True)
            growth.append(measure("growth", grown(g)))
        # The default row again with gradient checkpointing flipped: what it costs or saves here.
        same = next((r for r in growth if r["num_generations"] == default.num_generations), None)
        flipped = None
        if same is not None:
            print("growth: gradient checkpointing flipped ...", flush=True)
            flip = not default.gradient_checkpointing
            flipped = measure("growth", grown(default.num_generations, gradient_checkpointing=flip))
    finally:
        shutil.rmtree(work, ignore_errors=True)

    summary = ratio_summary([(b["train_s"], p["train_s"]) for b, p in zip(runs[0::2], runs[1::2])])
    xs, ys = [r["completions_per_step"] for r in growth], [r["step_s"] for r in growth]
    fit = fit_line(xs, ys) if len(set(xs)) > 1 else None  # a line needs two sizes
    first = runs[0]
    print(
        f"\nTiny defaults, --num-samples {args.num_samples} --epochs {args.epochs} --seed {args.seed}: "
        f"{first['global_step']} steps of {first['completions_per_step']} completions, gradient checkpointing "
        f"{'on' if first['gradient_checkpointing'] else 'off'}; the same GRPOConfig in every run."
    )
    print("\n".join(pair_table(runs, summary)))
    print()
    print("\n".join(item_table(runs)))
    print(f"completions: mean {first['mean_length']:.1f} tokens, {first['clipped_ratio']:.1%} cut at the length limit")
    # Same seed and data: the runs should do the same work, so a ratio's spread is the machine's, not the work's
    # (past the first epoch the project's sampler orders prompts by seed + epoch, TRL's by one running generator).
    identical = all(r["rewards"] == first["rewards"] for r in runs)
    print(f"every run logged the same reward at every step: {'yes' if identical else 'no'}")
    if growth:
        print()
        print("\n".join(growth_table(growth, fit)))
    if flipped:
        on, off = (same, flipped) if same["gradient_checkpointing"] else (flipped, same)
        print(
            f"gradient checkpointing (--num-generations {same['num_generations']}): on {on['step_s']:.3f} s/step, "
            f"off {off['step_s']:.3f} s/step (off/on {off['step_s'] / on['step_s']:.2f}x)"
        )
    raw = {
        "settings": {**vars(args), "json": str(args.json), "overrides": given},
        "machine": {"cpus": os.cpu_count(), "load_average": os.getloadavg()},
        "ratio": summary,
        "runs": [{k: v for k, v in r.items() if k != "grpo_config"} for r in runs],
        "grpo_config": runs[0]["grpo_config"],
        "growth": [{k: v for k, v in r.items() if k != "grpo_config"} for r in growth],
        "growth_fit": {"fixed_s": fit[0], "per_completion_s": fit[1]} if fit else None,
        "checkpointing_flipped": {k: v for k, v in flipped.items() if k != "grpo_config"} if flipped else None,
    }
    from musclebob_helpers.io import write_json_atomic

    write_json_atomic(args.json, raw)
    print(f"\nRaw figures: {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
