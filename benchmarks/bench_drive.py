#!/usr/bin/env python3
"""A run folder on a slow Google Drive against one on local disk: what the mirror costs, and what it saves.

    python benchmarks/bench_drive.py                                 # 3 interleaved pairs, the tiny default run
    python benchmarks/bench_drive.py --pairs 2 --with-direct         # + the run folder written directly (no mirror)
    python benchmarks/bench_drive.py --pairs 1 --num-samples 16 --epochs 1   # smoke

Each run is the training CLI's own run (``train_musclebob_improved.main``, the tiny model's defaults: 192 steps, a
checkpoint per epoch) in a fresh process, its run folder either on local disk (*local*) or on a faultfs mount
(``tools/faultfs.py``, a FUSE pass-through) slowed as a Drive might be: ``--latency-ms`` (30) on every create,
rename, fsync, flush, unlink and mkdir, writes at ``--write-mbps`` (30 MB/s). These are assumptions, not measured
Colab figures. On the mount the run trains in a working folder on local disk and mirrors it there (*drive*, what a
Colab user gets); ``--with-direct`` adds the run folder written directly on the slow mount (*direct*: ``--work-dir``
set to the run folder itself, no mirror: what a run did before the mirror). Runs alternate local, drive[, direct].

Per run: **steps**, seconds from the first optimizer step to the last (the reward history's time stamps: the
training steps themselves); **to last step**, from the process's start to its last step (start-up on the mount
included); **wall**, to the process's end, the final copy included; **final copy**, the mirror's ``finish`` (the
copy after training: final model, results, the last checkpoint's verification); **lag**, the most seconds from a
checkpoint's save to its verified copy in the run folder (``Mirror.summary``). Goals (issue 19): the steps <= 1.05x local,
wall <= 1.25x local on the tiny default.

Needs FUSE (``/dev/fuse``, Debian's fuse3, ``mfusepy``). Prints the tables; raw figures go to ``--json``.
"""

from __future__ import annotations

import argparse
import contextlib
import io
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

DEFAULT_JSON = ROOT / "benchmarks" / "results_drive.json"
RESULT = "RESULT "  # a child's last line: its figures as JSON
VARIANTS = ("local", "drive", "direct")


def child(argv: list[str]) -> int:
    """One run, in this process: ``--child VARIANT OUT [CLI flags]``; prints ``RESULT {...}``."""
    variant, out, flags = argv[0], Path(argv[1]), argv[2:]
    from musclebob_helpers import training

    real_run_training, box = training.run_training, {}

    def run_training(*args, **kwargs):  # the CLI's own call, its result kept (the mirror's figures)
        box["result"] = result = real_run_training(*args, **kwargs)
        return result

    training.run_training = run_training
    import train_musclebob_improved

    extra = ["--work-dir", str(out)] if variant == "direct" else []
    began = time.time()
    console = io.StringIO()
    with contextlib.redirect_stdout(console), contextlib.redirect_stderr(console):
        code = train_musclebob_improved.main([*flags, "--output-dir", str(out), *extra])
    ended = time.time()
    history = json.loads((out / "reward_history.json").read_text())
    mirror = box.get("result", {}).get("mirror") or {}
    figures = {
        "variant": variant,
        "exit_code": code,
        "steps": len(history),
        "to_last_step_s": round(history[-1]["time"] - began, 2),
        "steps_s": round(history[-1]["time"] - history[0]["time"], 2),
        "wall_s": round(ended - began, 2),
        "final_copy_s": mirror.get("final_copy_s"),
        "checkpoint_lag_s": mirror.get("checkpoint_lag_s"),
        "copy_pending": box.get("result", {}).get("copy_pending"),
    }
    print(RESULT + json.dumps(figures))
    return 0


def measure(variant: str, out: Path, flags: list[str], env: dict) -> dict:
    proc = subprocess.run(
        [sys.executable, __file__, "--child", variant, str(out), *flags],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
    )
    lines = [line for line in proc.stdout.splitlines() if line.startswith(RESULT)]
    if proc.returncode or not lines:
        raise SystemExit(f"the {variant} run failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}")
    return json.loads(lines[-1][len(RESULT) :])


def spread(values: list[float]) -> str:
    return f"{statistics.median(values):7.2f} ({min(values):.2f}-{max(values):.2f})"


def tables(runs: list[dict], variants: list[str]) -> list[str]:
    out = [
        f"{'variant':<8} {'steps s':>22} {'to last step s':>22} {'wall s':>22} {'final copy s':>22} {'max lag s':>22}"
    ]
    for v in variants:
        mine = [r for r in runs if r["variant"] == v]
        copy = [r["final_copy_s"] for r in mine if r["final_copy_s"] is not None]
        lag = [max(r["checkpoint_lag_s"]) for r in mine if r["checkpoint_lag_s"]]
        out.append(
            f"{v:<8} {spread([r['steps_s'] for r in mine]):>22} {spread([r['to_last_step_s'] for r in mine]):>22} "
            f"{spread([r['wall_s'] for r in mine]):>22} "
            f"{spread(copy) if copy else '-':>22} {spread(lag) if lag else '-':>22}"
        )
    local = [r for r in runs if r["variant"] == "local"]
    for v in variants[1:]:
        mine = [r for r in runs if r["variant"] == v]
        steps = [m["steps_s"] / b["steps_s"] for m, b in zip(mine, local)]
        last = [m["to_last_step_s"] / b["to_last_step_s"] for m, b in zip(mine, local)]
        wall = [m["wall_s"] / b["wall_s"] for m, b in zip(mine, local)]
        out.append(
            f"{v}/local, pair by pair: steps {spread(steps)}x   to last step {spread(last)}x   wall {spread(wall)}x"
        )
    return out


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--child"]:
        return child(argv[1:])
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--pairs", type=int, default=3, help="interleaved rounds (one run of each variant a round)")
    p.add_argument("--with-direct", action="store_true", help="also the run folder written directly on the mount")
    p.add_argument("--latency-ms", type=float, default=30, help="the slow mount's delay per metadata call")
    p.add_argument("--write-mbps", type=float, default=30, help="the slow mount's write throughput (MB/s)")
    p.add_argument("--epochs", type=int, default=None, help="epochs (default: the tiny model's, 3)")
    p.add_argument("--num-samples", type=int, default=None, help="prompts per epoch (default: the tiny model's)")
    p.add_argument("--json", type=Path, default=DEFAULT_JSON, help="where the raw figures go")
    args = p.parse_args(argv)
    from tools.faultfs import FaultFS, fuse_missing

    why = fuse_missing()
    if why:
        raise SystemExit(f"bench_drive.py needs FUSE: {why}")
    flags = ["--model", "tiny"]
    flags += ["--epochs", str(args.epochs)] if args.epochs else []
    flags += ["--num-samples", str(args.num_samples)] if args.num_samples else []
    variants = ["local", "drive"] + (["direct"] if args.with_direct else [])
    runs = []
    with tempfile.TemporaryDirectory(prefix="bench-drive-") as tmp:
        tmp = Path(tmp)
        env = dict(os.environ, MUSCLEBOB_WORK_ROOT=str(tmp / "work"))
        env.setdefault("OMP_NUM_THREADS", "1")
        with FaultFS(tmp / "backing", tmp / "drive") as fs:
            fs.set(latency_ms=args.latency_ms, write_mbps=args.write_mbps)
            for round_ in range(args.pairs):
                for v in variants:
                    out = (tmp / "local" if v == "local" else fs.mountpoint) / f"{v}-{round_}"
                    runs.append(measure(v, out, flags, env))
                    print(f"round {round_ + 1}/{args.pairs} {v}: {json.dumps(runs[-1])}", flush=True)
                    shutil.rmtree(out, ignore_errors=True)
    lines = [
        f"tiny run {' '.join(flags[2:]) or '(defaults)'}, {runs[0]['steps']} steps; slow mount: "
        f"{args.latency_ms:g} ms per metadata call, {args.write_mbps:g} MB/s (assumed, not measured on Colab)",
        *tables(runs, variants),
    ]
    print("\n".join(lines))
    args.json.write_text(
        json.dumps({"args": {k: str(v) for k, v in vars(args).items()}, "runs": runs, "table": lines}, indent=2) + "\n"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
