#!/usr/bin/env python3
"""Learning benchmark on the tiny offline model: recipes x seeds, each figure a mean with a 95 % interval.

    python benchmarks/bench_learning.py                        # the project's default vs the guide's recipe, 5 seeds
    python benchmarks/bench_learning.py --mode advice          # the guide's troubleshooting commands, measured
    python benchmarks/bench_learning.py --mode loss            # TRL's loss types (docs/loss_types.md)
    python benchmarks/bench_learning.py --recipes default --seeds 42 7 --set beta=0.04   # try a lever
    python benchmarks/bench_learning.py --docs                 # rewrite the tables (docs/results.md, docs/loss_types.md)

Every run trains the tiny model from the same base with one seed, validates on the held-out prompts before and
after (12 SpongeBob phrasings and 124 general questions of 9 topics, 4 sampled answers each), and checks the
held-out SpongeBob prompts every ``--check-every`` steps to count the completions it took until the Musclebob
rate first reached 90 %. The interval is a percentile bootstrap over seeds and, within each seed, over prompts
(2,000 resamples): it says how much the figure would move with other seeds and other questions of the same kinds.
Runs go to ``--jobs`` worker processes (two on two cores, one thread each: the tiny model's matrices are too
small for two threads to help). Raw figures go to ``benchmarks/results_learning[_MODE].json``; ``--docs``
renders the tables of ``docs/results.md`` and ``docs/loss_types.md`` from them.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from musclebob_helpers.evaluation import RATE_KEYS  # noqa: E402 -- the rates' names and labels, defined once

SEEDS = (42, 7, 1234, 2024, 31337)
GUIDE_BUDGET = 128 * 5 * 8  # the guide's 128 prompts x 5 epochs x 8 completions; the target is an eighth of it
RESULTS_DOC = ROOT / "docs" / "results.md"  # the page whose tables --docs renders

# name -> (what it is, TrainConfig values on top of the tiny model's defaults). The guide's learning rates are for
# its 0.5B model, whose default is 5e-5: scaled to the tiny model's default (3e-4) by the same factor.
RECIPES = {
    "default": (
        "the project's default (`--model tiny`: 2 prompts x 4 answers a step, 3 epochs, few-shot 0.5, "
        "learning rate 3e-4 with cosine decay)",
        {},
    ),
    "guide": (
        "the guide's recipe: its reward, SpongeBob prompts only, 4 prompts x 8 answers, 5 epochs, few-shot 0.15, "
        "a constant learning rate (2e-4, the tiny model's first default)",
        {
            "reward": "guide",
            "control_ratio": 0.0,
            "num_generations": 8,
            "batch_size": 4,
            "epochs": 5,
            "fewshot_ratio": 0.15,
            "learning_rate": 2e-4,
            "lr_scheduler": "constant_with_warmup",
        },
    ),
    "no-fewshot": ("`--no-fewshot`: pure RL, no example in front of any prompt", {"use_fewshot": False}),
    "fewshot-0.15": ("`--fewshot-ratio 0.15`, the guide's own ratio", {"fewshot_ratio": 0.15}),
    "fewshot-0.3": ("`--fewshot-ratio 0.3`", {"fewshot_ratio": 0.3}),
    "longer": (
        "`--epochs 10 --learning-rate 1e-4 --num-samples 256` (tiny: `--learning-rate 6e-4`, 2x its default)",
        {"epochs": 10, "learning_rate": 6e-4, "num_samples": 256},
    ),
    "gentle": (
        "`--learning-rate 1e-5 --batch-size 2` (tiny: `--learning-rate 6e-5`, 1/5 of its default; "
        "2 prompts a step is its default)",
        {"learning_rate": 6e-5, "batch_size": 2},
    ),
    # TRL's loss types on the default recipe, whose loss is TRL's default, dapo (docs/loss_types.md)
    "dr_grpo": (
        "`--loss-type dr_grpo`: token losses summed, divided by a constant (max completion length)",
        {"loss_type": "dr_grpo"},
    ),
    "dr_grpo-unscaled": (
        "`--loss-type dr_grpo --scale-rewards none`: the Dr. GRPO paper's whole change",
        {"loss_type": "dr_grpo", "scale_rewards": "none"},
    ),
    "grpo": (
        "`--loss-type grpo`: each completion's token losses averaged, then the completions",
        {"loss_type": "grpo"},
    ),
    "bnpo": (
        "`--loss-type bnpo`: averaged over this process's tokens (one process: dapo's figure)",
        {"loss_type": "bnpo"},
    ),
}
MODES = {
    "main": ["default", "guide"],
    "advice": ["default", "no-fewshot", "fewshot-0.15", "fewshot-0.3", "longer", "gentle"],
    "loss": ["default", "dr_grpo", "dr_grpo-unscaled", "grpo", "bnpo"],
}
# Where each mode's table is rendered (--readme), between <!-- bench_learning MODE --> markers.
TABLE_FILES = {"main": RESULTS_DOC, "advice": RESULTS_DOC, "loss": ROOT / "docs" / "loss_types.md"}

# What the project's default is held to, on every seed (min/max over seeds) and on average (mean).
TARGETS = [
    ("control_kept", "min", ">=", 0.95),
    ("control_kept", "mean", ">=", 0.97),
    ("full_name_rate", "min", ">=", 0.95),
    ("spongebob_rate", "max", "<=", 0.02),
    ("leakage_rate", "max", "<=", 0.02),
    ("coherent_rate", "min", ">=", 0.98),
    ("completions_to_90", "max", "<=", GUIDE_BUDGET // 8),
]
# Figures from per-prompt counts (what the bootstrap resamples), then the per-run ones.
RATES = [key for key, _ in RATE_KEYS] + ["control_kept"]
PER_RUN = ["completions_to_90", "wall_seconds"]
COUNT_FIELDS = ["n", "musclebob", "full_name", "spongebob", "coherent", "correct", "leak", "base_correct"]


# --- one run -------------------------------------------------------------------------------------------------------


def recipe_config(name: str, seed: int, check_every: int, extra: dict, output_dir: str):
    from musclebob_helpers.config import resolve

    values = {**RECIPES[name][1], **extra}
    return resolve(dict(model="tiny", seed=seed, validate_every=check_every, output_dir=output_dir, **values))[0]


def prompt_counts(baseline: dict, final: dict) -> list[list]:
    """Per held-out prompt: [kind, question, n, musclebob, full_name, spongebob, coherent, correct, leak,
    base_correct] — what the bootstrap resamples (rates are sums of counts over prompts, as in evaluation)."""
    base_correct: dict[str, int] = {}
    for r in baseline["responses"]:
        base_correct[r["prompt"]] = base_correct.get(r["prompt"], 0) + bool(r["correct"])
    rows: dict[str, list] = {}
    for r in final["responses"]:
        row = rows.setdefault(r["prompt"], [r["kind"], r["prompt"]] + [0] * len(COUNT_FIELDS))
        c = row[2:]
        c[0] += 1
        c[1] += r["musclebob"]
        c[2] += r["full_name"]
        c[3] += r["spongebob"]
        c[4] += r["coherent"]
        c[5] += bool(r["correct"])
        c[6] += r["kind"] == "control" and (r["musclebob"] or r["spongebob"])
        row[2:] = c
    for row in rows.values():
        row[-1] = base_correct.get(row[1], 0)
    return list(rows.values())


def run_one(name: str, seed: int, check_every: int, extra: dict, threads: int) -> dict:
    """Train one recipe with one seed (in a worker process) and return its figures and per-prompt counts."""
    os.environ["OMP_NUM_THREADS"] = os.environ["MKL_NUM_THREADS"] = str(threads)
    import torch

    torch.set_num_threads(threads)
    from musclebob_helpers.io import read_json
    from musclebob_helpers.monitoring import completions_to_reach
    from musclebob_helpers.run_dir import VALIDATION_HISTORY_FILE
    from musclebob_helpers.startup import start as start_run
    from musclebob_helpers.training import CollapseStop, run_training

    stopped = None
    with tempfile.TemporaryDirectory(prefix="musclebob-bench-") as tmp:
        cfg = recipe_config(name, seed, check_every, extra, tmp)
        start = time.time()
        try:
            result = run_training(start_run(cfg), log=lambda *a, **k: None)
        except CollapseStop as stop:  # --on-collapse: what the user has then is the healthy checkpoint it saved
            stopped = str(stop)
            result = stopped_result(cfg, Path(tmp), stop)
        wall = time.time() - start
        history = read_json(Path(tmp) / VALIDATION_HISTORY_FILE, default=[])
    base, final = result["baseline"], result["final"]
    return {
        "recipe": name,
        "seed": seed,
        "settings": extra,
        "completions": final["completions_generated"],
        "completions_to_90": completions_to_reach(history, "musclebob_rate", 0.9),
        "wall_seconds": round(wall, 1),
        "control_accuracy_by_topic": final.get("control_accuracy_by_topic", {}),
        "baseline_control_accuracy": base["control_accuracy"],
        "health_warnings": final["health_warnings"],
        "stopped": stopped,  # the one line of a run --on-collapse stopped (its figures: the checkpoint it saved)
        # the checks' course: completions, Musclebob rate, control accuracy (on the check's prompts)
        "checks": [[e["completions"], e["musclebob_rate"], e["control_accuracy"]] for e in history],
        "prompts": prompt_counts(base, final),
    }


def stopped_result(cfg, out: Path, stop) -> dict:
    """The figures of a run stopped at a collapse: the checkpoint it saved, validated as a final model is."""
    from musclebob_helpers import data, evaluation
    from musclebob_helpers.config import completions_per_step
    from musclebob_helpers.io import read_json
    from musclebob_helpers.run_dir import BASELINE_FILE, WARNINGS_FILE

    baseline = read_json(out / BASELINE_FILE)
    model, tokenizer = evaluation.load_model(str(out / f"checkpoint-{stop.step}"), device="cpu")
    final = evaluation.validate(
        model,
        tokenizer,
        data.validation_rows(),
        num_samples=cfg.validation_samples,
        max_new_tokens=cfg.max_completion_length,
        baseline=baseline,
    )
    final["completions_generated"] = round(stop.step * completions_per_step(cfg))  # as training counts them
    final["health_warnings"] = [w["message"] for w in read_json(out / WARNINGS_FILE, default=[])]
    return {"baseline": baseline, "final": final}


# --- statistics ----------------------------------------------------------------------------------------------------


# How each rate adds up over the per-prompt counts, as evaluation.rates defines it: (prompts it counts over,
# numerator, denominator). The point figures, the bootstrap and one run's interval all sum through this table.
RATE_SUMS = {
    "musclebob_rate": ("spongebob", "musclebob", "n"),
    "full_name_rate": ("spongebob", "full_name", "n"),
    "spongebob_rate": ("spongebob", "spongebob", "n"),
    "coherent_rate": ("all", "coherent", "n"),
    "leakage_rate": ("control", "leak", "n"),
    "control_accuracy": ("control", "correct", "n"),
    "control_kept": ("control", "correct", "base_correct"),
}


def rates_from_sums(sums: dict):
    """Every rate from count sums by prompt kind (``sums[kind][..., field]``, numpy): one run's or many at once."""
    import numpy as np

    def field(kind, name):
        return sums[kind][..., COUNT_FIELDS.index(name)]

    return {key: field(k, num) / np.maximum(field(k, den), 1) for key, (k, num, den) in RATE_SUMS.items()}


def _kind_sums(counts, kinds: dict) -> dict:
    """One run's count sums over the prompts of each kind, and over all of them."""
    sums = {k: counts[ix].sum(axis=0) for k, ix in kinds.items()}
    sums["all"] = sums["spongebob"] + sums["control"]
    return sums


def _kinds(run: dict) -> dict:
    import numpy as np

    return {k: np.flatnonzero([p[0] == k for p in run["prompts"]]) for k in ("spongebob", "control")}


def _counts(runs: list[dict]):
    import numpy as np

    return np.array([[p[2:] for p in r["prompts"]] for r in runs], dtype=float)  # runs x prompts x fields


def run_rates(run: dict) -> dict:
    """The point figures of one run, from its per-prompt counts (the same sums as evaluation.rates)."""
    rates = rates_from_sums(_kind_sums(_counts([run])[0], _kinds(run)))
    return {
        **{key: float(v) for key, v in rates.items()},
        "completions_to_90": run["completions_to_90"],
        "wall_seconds": run["wall_seconds"],
    }


def bootstrap(runs: list[dict], resamples: int = 2000, seed: int = 0) -> dict:
    """Mean over seeds and a 95 % percentile interval, resampling seeds and, within each, prompts of each kind.

    ``completions_to_90`` and ``wall_seconds`` are per run, so only seeds are resampled for them; a run that never
    reached 90 % counts as its whole budget (so the mean is a lower bound, flagged by ``never``).
    """
    import numpy as np

    rng = np.random.default_rng(seed)
    kinds = _kinds(runs[0])
    counts = _counts(runs)
    n_runs = len(runs)
    reps = {key: np.empty(resamples) for key in RATES + PER_RUN}
    per_run = {
        key: np.array([r[key] if r[key] is not None else r["completions"] for r in runs], dtype=float)
        for key in PER_RUN
    }
    for b in range(resamples):
        pick = rng.integers(0, n_runs, n_runs)
        prompts = {k: ix[rng.integers(0, len(ix), (n_runs, len(ix)))] for k, ix in kinds.items()}
        sums = {k: counts[pick[:, None], ix].sum(axis=1) for k, ix in prompts.items()}  # runs x fields
        sums["all"] = sums["spongebob"] + sums["control"]
        for key, v in rates_from_sums(sums).items():
            reps[key][b] = float(np.mean(v))
        for key in PER_RUN:
            reps[key][b] = float(np.mean(per_run[key][pick]))
    points = [run_rates(r) for r in runs]
    out = {}
    for key in RATES + PER_RUN:
        values = [p[key] for p in points]
        known = [v for v in values if v is not None]
        out[key] = {
            "mean": float(np.mean([v if v is not None else r["completions"] for v, r in zip(values, runs)])),
            "low": float(np.percentile(reps[key], 2.5)),
            "high": float(np.percentile(reps[key], 97.5)),
            "min": min(known) if known else None,
            "max": max(known) if known else None,
            "never": sum(v is None for v in values),
        }
    return out


def seed_interval(run: dict, key: str = "control_accuracy", resamples: int = 2000, seed: int = 0) -> tuple:
    """One run's figure and its 95 % interval over prompts alone: how precisely one seed's figure is measured."""
    import numpy as np

    rng = np.random.default_rng(seed)
    kind = RATE_SUMS[key][0]
    counts = _counts([run])[0]
    kinds = _kinds(run)
    rows = counts if kind == "all" else counts[kinds[kind]]
    pick = rng.integers(0, len(rows), (resamples, len(rows)))
    sums = rows[pick].sum(axis=1)  # resamples x fields
    reps = rates_from_sums({"spongebob": sums, "control": sums, "all": sums})[key]
    return float(run_rates(run)[key]), float(np.percentile(reps, 2.5)), float(np.percentile(reps, 97.5))


def target_check(summary: dict) -> list[tuple[str, bool]]:
    lines = []
    for key, stat, op, bound in TARGETS:
        value = summary[key][stat]
        ok = (
            value is not None
            and (value >= bound if op == ">=" else value <= bound)
            and not (key == "completions_to_90" and summary[key]["never"])
        )
        lines.append((f"{key} ({stat} over seeds) {fmt(key, value)} {op} {fmt(key, bound)}", ok))
    return lines


# --- tables --------------------------------------------------------------------------------------------------------

COLUMNS = [
    *RATE_KEYS,
    ("control_kept", "Control kept (worst seed)"),
    ("completions_to_90", "Completions to 90% Musclebob"),
    ("wall_seconds", "Wall s"),
]


def fmt(key: str, v) -> str:
    if v is None:
        return "never"
    if key in RATES:
        return f"{100 * v:.1f}%"
    return f"{v:.0f}"


def cell(key: str, s: dict) -> str:
    """``mean [low, high]``; just the mean when the interval is that one value (every resample agreed)."""
    low, high = fmt(key, s["low"]), fmt(key, s["high"])
    text = fmt(key, s["mean"]) + ("" if low == high == fmt(key, s["mean"]) else f" [{low}, {high}]")
    if key == "control_kept":
        text += f" ({fmt(key, s['min'])})"
    if key == "completions_to_90" and s["never"]:
        text += f", {s['never']} never"
    return text


def markdown_table(results: dict) -> str:
    """The results table: one row per recipe, each cell mean [95 % interval] over the seeds."""
    seeds = sorted({r["seed"] for r in results["runs"]})
    lines = [
        "| recipe | " + " | ".join(label for _, label in COLUMNS) + " |",
        "|---|" + "---|" * len(COLUMNS),
    ]
    for name, summary in results["summary"].items():
        label = f"**{name}**" if name == "default" else name
        lines.append(f"| {label} | " + " | ".join(cell(k, summary[k]) for k, _ in COLUMNS) + " |")
    lines.append("")
    lines.append(
        f"Seeds {', '.join(map(str, seeds))}; mean [95 % interval], bootstrap over seeds and prompts; wall: seconds "
        f"a run took with {results.get('jobs', 1)} at a time on 2 cores. "
        + " ".join(f"{name}: {RECIPES[name][0]}." for name in results["summary"])
    )
    return "\n".join(lines)


def summarize(runs: list[dict]) -> dict:
    by_recipe: dict[str, list] = {}
    for r in runs:
        by_recipe.setdefault(r["recipe"], []).append(r)
    return {name: bootstrap(rs) for name, rs in by_recipe.items()}


def print_report(results: dict) -> bool:
    print()
    print(markdown_table(results))
    ok_all = True
    for run in results["runs"]:
        p, lo, hi = seed_interval(run)
        print(
            f"  {run['recipe']:<12} seed {run['seed']:>5}: control accuracy {p:.1%} [{lo:.1%}, {hi:.1%}] "
            f"(prompts only), kept {run_rates(run)['control_kept']:.1%}, "
            f"90% after {run['completions_to_90'] or 'never'} completions"
        )
    if "default" in results["summary"]:
        print("\nTargets for the project's default:")
        for line, ok in target_check(results["summary"]["default"]):
            ok_all &= ok
            print(f"  {line}  {'ok' if ok else 'MISSED'}")
    return ok_all


def base_says_the_name(samples: int = 16) -> dict:
    """How often the untrained base says "Musclebob" when sampled as GRPO samples it (temperature 1.0, no top-p) on the
    training phrasings with no few-shot example: what pure RL (--no-fewshot) has to start from."""
    from musclebob_helpers import data, evaluation

    model, tok = evaluation.load_model("tiny", device="cpu")
    gens = evaluation.generate(
        model,
        tok,
        data.SPONGEBOB_TRAIN_PROMPTS,
        max_new_tokens=32,
        num_samples=samples,
        temperature=1.0,
        top_p=1.0,
        seed=0,
    )
    answers = [g.text for gs in gens for g in gs]
    return {"answers": len(answers), "musclebob": sum(evaluation.has_musclebob(a) for a in answers)}


def dump_results(results: dict) -> str:
    """The results as JSON with one line per top-level key and per run: readable diffs, not 100,000 lines."""

    def one(v):
        return json.dumps(v, separators=(",", ":"), ensure_ascii=False)

    lines = [f"  {one(k)}: {one(v)}" for k, v in results.items() if k != "runs"]
    runs = ",\n".join(f"    {one(r)}" for r in results.get("runs", []))
    lines.append(f'  "runs": [\n{runs}\n  ]')
    return "{\n" + ",\n".join(lines) + "\n}\n"


def results_path(mode: str) -> Path:
    return ROOT / "benchmarks" / ("results_learning.json" if mode == "main" else f"results_learning_{mode}.json")


def update_doc(mode: str, doc: Path | None = None) -> None:
    """Replace the table for ``mode`` (between its two marker comments in ``TABLE_FILES[mode]``) with the one the
    JSON gives."""
    doc = doc or TABLE_FILES[mode]
    results = json.loads(results_path(mode).read_text())
    start, end = f"<!-- bench_learning {mode} -->", f"<!-- /bench_learning {mode} -->"
    text = doc.read_text()
    if start not in text or end not in text:
        raise SystemExit(f"{doc}: no '{start}' ... '{end}' markers to put the table between")
    head, rest = text.split(start, 1)
    _, tail = rest.split(end, 1)
    doc.write_text(f"{head}{start}\n{markdown_table(results)}\n{end}{tail}")


def parse_set(items: list[str]) -> dict:
    """``FIELD=VALUE`` pairs typed as TrainConfig's fields are (``beta=0.04``, ``lora=true``); one line on a typo."""
    import typing

    from musclebob_helpers.config import TrainConfig

    hints = typing.get_type_hints(TrainConfig)
    values = {}
    for item in items:
        key, _, raw = item.partition("=")
        key = key.replace("-", "_")
        if key not in hints:
            raise SystemExit(f"--set {item}: no TrainConfig field {key!r}")
        kinds = typing.get_args(hints[key]) or (hints[key],)  # float | None -> float; list[str] -> str
        kind = next(k for k in kinds if k is not type(None))
        if typing.get_origin(hints[key]) is list:  # --set trl_args=top_entropy_quantile=0.2 (repeatable)
            values.setdefault(key, []).append(raw)
        else:
            values[key] = raw.lower() in ("1", "true", "yes") if kind is bool else kind(raw)
    return values


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument(
        "--mode",
        choices=sorted(MODES),
        default="main",
        help="which recipes: main, the guide's advice, TRL's loss types",
    )
    p.add_argument("--recipes", nargs="+", choices=sorted(RECIPES), help="instead of the mode's recipes")
    p.add_argument("--seeds", type=int, nargs="+", default=list(SEEDS))
    p.add_argument("--set", nargs="*", default=[], metavar="FIELD=VALUE", help="change a TrainConfig value in all")
    p.add_argument(
        "--check-every",
        type=int,
        default=2,
        help="steps between held-out checks (2: 16 completions at the tiny defaults)",
    )
    p.add_argument("--jobs", type=int, default=2, help="worker processes (one thread each when more than one)")
    p.add_argument("--threads", type=int, help="torch threads per worker (default: 1 with --jobs > 1, else 2)")
    p.add_argument("--output", help="JSON file (default: benchmarks/results_learning[_MODE].json)")
    p.add_argument(
        "--docs",
        "--readme",  # its name while the tables were in the README
        dest="docs",
        action="store_true",
        help="only rewrite the tables in docs/results.md from the JSON files",
    )
    args = p.parse_args(argv)

    if args.docs:
        for mode in MODES:
            update_doc(mode)
            print(
                f"{TABLE_FILES[mode].relative_to(ROOT)}: table '{mode}' rewritten from {results_path(mode).relative_to(ROOT)}"
            )
        return 0

    extra = parse_set(args.set)
    names = args.recipes or MODES[args.mode]
    jobs = [(name, seed) for seed in args.seeds for name in names]
    threads = args.threads or (1 if args.jobs > 1 else 2)
    runs = []
    start = time.time()
    from concurrent.futures import ProcessPoolExecutor
    import multiprocessing

    with ProcessPoolExecutor(args.jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
        futures = [pool.submit(run_one, n, s, args.check_every, extra, threads) for n, s in jobs]
        for (name, seed), fut in zip(jobs, futures):
            runs.append(fut.result())
            r = run_rates(runs[-1])
            print(
                f"{name} seed {seed}: Musclebob {r['musclebob_rate']:.0%}, control kept {r['control_kept']:.1%}, "
                f"90% after {runs[-1]['completions_to_90']} completions ({runs[-1]['wall_seconds']} s)",
                flush=True,
            )
    results = {
        "mode": args.mode if not args.recipes else "custom",
        "base_says_the_name": base_says_the_name() if "no-fewshot" in names else None,
        "settings": extra,
        "seeds": args.seeds,
        "check_every": args.check_every,
        "jobs": args.jobs,
        "total_seconds": round(time.time() - start, 1),
        "summary": summarize(runs),
        "runs": runs,
    }
    ok = print_report(results)
    if results["base_says_the_name"]:
        b = results["base_says_the_name"]
        print(
            f"The untrained base says Musclebob in {b['musclebob']} of {b['answers']} answers sampled at "
            "temperature 1.0 on the training phrasings without few-shot: what pure RL starts from."
        )
    out = Path(args.output) if args.output else results_path(args.mode)
    out.write_text(dump_results(results))
    print(f"\nWrote {out}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
