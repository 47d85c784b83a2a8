#!/usr/bin/env python3
"""Learning benchmark on the tiny offline model: the guide's reward and recipe vs the project's default.

    python benchmarks/bench_learning.py                 # both recipes, seed 42, the guide's budget
    python benchmarks/bench_learning.py --seeds 42 7    # several seeds (one table row per recipe and seed)

Both runs use the same seed and the same budget (the guide's: 128 prompts x 5 epochs x 8 generations = 5,120
completions). Each is checked on the held-out prompts every few steps, so the table can say how many completions
it took until the held-out Musclebob rate first reached 90%. Prints a table and the targets the project's
default is held to; writes everything to --output (JSON). Takes a few minutes on 2 CPU cores.
"""

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

GUIDE_BUDGET = 128 * 5 * 8
TARGETS = {  # the project's default on the tiny model
    "full_name_rate": (">=", 0.95),
    "spongebob_rate": ("<=", 0.02),
    "coherent_rate": (">=", 0.98),
    "leakage_rate": ("<=", 0.05),
    "control_kept": (">=", 0.95),
    "completions_to_90": ("<=", GUIDE_BUDGET // 4),
}


def recipes(seed: int, check_every: int):
    from musclebob_helpers.config import resolve

    def make(**kw):
        return resolve(dict(model="tiny", seed=seed, validate_every=check_every, **kw))[0]  # + tiny-model defaults

    # The guide: its reward, SpongeBob prompts only, no KL. The project: everything at its defaults.
    return {"guide": make(reward="guide", control_ratio=0.0), "default": make()}


def run(name: str, cfg, root: Path) -> dict:
    from musclebob_helpers.evaluation import RATE_KEYS
    from musclebob_helpers.io import read_json
    from musclebob_helpers.monitoring import completions_to_reach
    from musclebob_helpers.run_dir import VALIDATION_HISTORY_FILE
    from musclebob_helpers.training import run_training

    cfg.output_dir = str(root / f"{name}-seed{cfg.seed}")
    start = time.time()
    result = run_training(cfg, log=lambda *a, **k: None)
    wall = time.time() - start
    base, final = result["baseline"], result["final"]
    history = read_json(Path(cfg.output_dir) / VALIDATION_HISTORY_FILE, default=[])
    row = {
        "recipe": name,
        "seed": cfg.seed,
        "completions": final["completions_generated"],
        **{k: final[k] for k, _ in RATE_KEYS},
        "baseline_control_accuracy": base["control_accuracy"],
        "control_kept": round(final["control_accuracy"] / base["control_accuracy"], 4)
        if base["control_accuracy"]
        else None,
        "completions_to_90": completions_to_reach(history, "musclebob_rate", 0.9),
        "wall_seconds": round(wall, 1),
        "health_warnings": final["health_warnings"],
    }
    return row


def fmt(v, key=""):
    from musclebob_helpers.evaluation import RATE_KEYS

    if v is None:
        return "never"
    return f"{v:.1%}" if key in {k for k, _ in RATE_KEYS} | {"control_kept"} else str(v)  # rates as percentages


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", type=int, nargs="+", default=[42])
    p.add_argument(
        "--check-every", type=int, default=4, help="steps between held-out checks (4 steps = 128 completions)"
    )
    p.add_argument("--output", default="benchmarks/results_learning.json")
    args = p.parse_args(argv)

    rows = []
    with tempfile.TemporaryDirectory(prefix="musclebob-bench-") as tmp:
        for seed in args.seeds:
            for name, cfg in recipes(seed, args.check_every).items():
                print(f"training {name} (seed {seed}) ...", flush=True)
                rows.append(run(name, cfg, Path(tmp)))

    cols = [
        ("recipe", "recipe"),
        ("seed", "seed"),
        ("musclebob_rate", "musclebob"),
        ("full_name_rate", "full name"),
        ("spongebob_rate", "spongebob"),
        ("coherent_rate", "coherent"),
        ("leakage_rate", "leakage"),
        ("control_accuracy", "control acc."),
        ("control_kept", "ctrl kept"),
        ("completions_to_90", "compl. to 90%"),
        ("wall_seconds", "wall s"),
    ]
    print()
    print(" | ".join(f"{label:>13}" for _, label in cols))
    for row in rows:
        print(" | ".join(f"{fmt(row[key], key):>13}" for key, _ in cols))
    print(f"\n(held-out prompts; both recipes: the guide's budget of {GUIDE_BUDGET} completions, same seed)")
    print("Targets for the project's default:")
    ok_all = True
    for row in (r for r in rows if r["recipe"] == "default"):
        for key, (op, bound) in TARGETS.items():
            value = row[key]
            ok = value is not None and (value >= bound if op == ">=" else value <= bound)
            ok_all &= ok
            print(f"  seed {row['seed']}: {key} {fmt(value, key)} {op} {fmt(bound, key)}  {'ok' if ok else 'MISSED'}")
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(json.dumps(rows, indent=2) + "\n")
    print(f"\nWrote {args.output}")
    return 0 if ok_all else 1


if __name__ == "__main__":
    sys.exit(main())
