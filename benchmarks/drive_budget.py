#!/usr/bin/env python3
"""Disk (Google Drive) need of a training run, measured: real checkpoints of a Qwen2.5-0.5B-shaped model.

    OMP_NUM_THREADS=1 python benchmarks/drive_budget.py             # full fine-tuning and LoRA, ~20 GB of writes
    OMP_NUM_THREADS=1 python benchmarks/drive_budget.py --only lora # the notebook's default only (fast)
    python benchmarks/drive_budget.py --model tiny                  # the tiny model (seconds)

The model is built from ``musclebob_helpers/model_configs/Qwen2.5-0.5B-Instruct.json`` with random weights
(no hub) and the tiny model's tokenizer (Qwen's own tokenizer files, ~11.5 MB a copy, are added to the
estimate, not measured). Each run takes one real optimizer step on the CPU (so AdamW's moments exist), then
writes one checkpoint per epoch with ``Trainer._save_checkpoint`` — model, optimizer, scheduler, RNG state,
trainer state, tokenizer, exactly what a GRPO run writes — followed by the project's rotation
(``run_dir.rotate_checkpoints``, ``--keep-checkpoints``) and the final ``save_model``. It measures bytes on
disk after every save (before and after rotation: the peak) and prints them next to ``memory.drive_need``.
``--epochs-written N`` writes only the first N epochs' checkpoints (the peak is reached at epoch
keep + 1; the rest repeat it) and extrapolates everything written from the measured sizes.
Results go to ``benchmarks/results_drive_budget.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

QWEN = "Qwen/Qwen2.5-0.5B-Instruct"


def tree_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in Path(path).rglob("*") if p.is_file())


def grpo_log_entry(step: int, epoch: float) -> dict:
    """A log entry shaped like TRL 1.x GRPO's (what trainer_state.json's log_history holds per step)."""
    keys = [
        "loss",
        "grad_norm",
        "learning_rate",
        "num_tokens",
        "completions/mean_length",
        "completions/min_length",
        "completions/max_length",
        "completions/clipped_ratio",
        "completions/mean_terminated_length",
        "completions/min_terminated_length",
        "completions/max_terminated_length",
        "rewards/musclebob_reward/mean",
        "rewards/musclebob_reward/std",
        "reward",
        "reward_std",
        "frac_reward_zero_std",
        "entropy",
        "clip_ratio/low_mean",
        "clip_ratio/low_min",
        "clip_ratio/high_mean",
        "clip_ratio/high_max",
        "clip_ratio/region_mean",
        "step_time",
    ]
    entry = {k: 0.123456789012345 + step for k in keys}
    entry.update(epoch=epoch, step=step)
    return entry


def build_qwen_shaped(dtype=None):
    """A Qwen2.5-0.5B-shaped causal LM with random weights (fp32 unless ``dtype``), from its stored config."""
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from musclebob_helpers.memory import known_config

    raw = known_config(QWEN)
    raw.pop("torch_dtype", None)
    torch.manual_seed(0)
    model = Qwen2ForCausalLM(Qwen2Config(**raw))
    return model.to(dtype) if dtype is not None else model


def simulate_run(model, tokenizer, cfg, out: Path, epochs_written: int | None = None, log=print) -> dict:
    """Write a run's checkpoints as the trainer does (see the module docstring); returns the measured bytes."""
    import torch
    from transformers import Trainer, TrainingArguments

    from musclebob_helpers import lora
    from musclebob_helpers.run_dir import checkpoint_problems, rotate_checkpoints
    from musclebob_helpers.config import steps_per_epoch

    if cfg.lora:
        from peft import get_peft_model

        model = get_peft_model(model, lora.lora_config(cfg))
    args = TrainingArguments(
        output_dir=str(out),
        save_strategy="epoch",
        report_to="none",
        use_cpu=True,
        learning_rate=cfg.learning_rate,
        lr_scheduler_type="constant_with_warmup",
        warmup_steps=5,
        logging_steps=1,
        disable_tqdm=True,
    )
    trainer = Trainer(model=model, args=args, processing_class=tokenizer)
    spe = steps_per_epoch(cfg)
    trainer.create_optimizer_and_scheduler(num_training_steps=spe * cfg.epochs)
    ids = torch.randint(0, len(tokenizer), (1, 8))
    model.train()
    model(input_ids=ids, labels=ids).loss.backward()  # one real step: AdamW's moments exist for every parameter
    trainer.optimizer.step()
    trainer.lr_scheduler.step()
    trainer.optimizer.zero_grad(set_to_none=True)
    written = cfg.epochs if epochs_written is None else min(cfg.epochs, epochs_written)
    checkpoints, peak, removed_bytes = [], 0, 0
    for epoch in range(1, written + 1):
        step = epoch * spe
        trainer.state.log_history += [
            grpo_log_entry(s, s / spe) for s in range(trainer.state.global_step + 1, step + 1)
        ]
        trainer.state.global_step, trainer.state.epoch = step, float(epoch)
        trainer._save_checkpoint(trainer.model, trial=None)
        ckpt = out / f"checkpoint-{step}"
        assert not checkpoint_problems(ckpt), checkpoint_problems(ckpt)
        size = tree_bytes(ckpt)
        before = tree_bytes(out)
        peak = max(peak, before)
        old = {c.name: tree_bytes(c) for c in out.glob("checkpoint-*")}
        removed = rotate_checkpoints(out, cfg.keep_checkpoints, log=log)
        removed_bytes += sum(old[n] for n in removed)
        checkpoints.append({"step": step, "bytes": size, "folder_bytes_before_rotation": before, "removed": removed})
        log(
            f"  epoch {epoch}: checkpoint-{step} {size / 1e9:.3f} GB; run folder {before / 1e9:.3f} GB before "
            f"rotation{', removed ' + ', '.join(removed) if removed else ''}"
        )
    trainer.save_model(str(out))  # the final model (or adapter) + tokenizer at the folder's root
    final = tree_bytes(out) - sum(tree_bytes(c) for c in out.glob("checkpoint-*"))
    peak = max(peak, tree_bytes(out))
    return {
        "checkpoints": checkpoints,
        "checkpoint_bytes": checkpoints[-1]["bytes"],
        "final_bytes": final,
        "peak_bytes": peak,
        "epochs_written": written,
        "removed_bytes": removed_bytes,
        "trainable_params": sum(p.numel() for p in model.parameters() if p.requires_grad),
    }


def measure(name: str, cfg, build, tokenizer, scratch: Path, epochs_written=None, qwen_tokenizer_bytes=0) -> dict:
    from musclebob_helpers.memory import ModelShape, drive_need, tokenizer_bytes

    out = Path(tempfile.mkdtemp(prefix=f"drive-{name}-", dir=scratch))
    print(
        f"{name}: {'LoRA r=%d' % cfg.lora_r if cfg.lora else 'full fine-tuning'}, {cfg.epochs} epochs, "
        f"keep {cfg.keep_checkpoints} -> {out}"
    )
    start = time.time()
    model = build()
    shape = ModelShape.from_hf_config(model.config)
    try:
        got = simulate_run(model, tokenizer, cfg, out, epochs_written)
    finally:
        shutil.rmtree(out, ignore_errors=True)
    del model
    tok = tokenizer_bytes("tiny")  # the tokenizer saved here is the tiny one
    est = drive_need(cfg, shape, tokenizer=tok)
    n = got["epochs_written"]
    # What the whole run writes (Drive's quota, trash included): measured checkpoint sizes, extrapolated when
    # only the first epochs were written (later checkpoints differ only by trainer_state.json's log lines).
    written = (
        sum(c["bytes"] for c in got["checkpoints"]) + (cfg.epochs - n) * got["checkpoint_bytes"] + got["final_bytes"]
    )
    row = {
        "name": name,
        "lora": cfg.lora,
        "epochs": cfg.epochs,
        "keep_checkpoints": cfg.keep_checkpoints,
        "params": shape.params,
        "trainable_params": got["trainable_params"],
        "measured": {
            "checkpoint": got["checkpoint_bytes"],
            "final": got["final_bytes"],
            "peak": got["peak_bytes"],
            "written": written,
            "epochs_written": n,
        },
        "estimate": {
            "checkpoint": est.checkpoint,
            "final": est.final,
            "peak": est.peak - _artifacts(),
            "written": est.written - _artifacts(),
        },
        "seconds": round(time.time() - start, 1),
    }
    if qwen_tokenizer_bytes:  # the same run with Qwen's real tokenizer files (estimate only)
        real = drive_need(cfg, shape)
        row["estimate_with_qwen_tokenizer"] = {
            "checkpoint": real.checkpoint,
            "final": real.final,
            "peak": real.peak,
            "written": real.written,
        }
    return row


def _artifacts() -> int:
    from musclebob_helpers.memory import RUN_ARTIFACTS_BYTES

    return RUN_ARTIFACTS_BYTES  # validation reports etc.: not written by this benchmark


def table(rows: list[dict]) -> str:
    lines = [
        f"{'run':<28}{'':>10}{'checkpoint':>12}{'final':>10}{'peak':>10}{'written':>10}  (GB; written = Drive "
        "quota incl. trash)"
    ]
    for r in rows:
        for kind in ("measured", "estimate", "estimate_with_qwen_tokenizer"):
            if kind not in r:
                continue
            v = r[kind]
            label = r["name"] if kind == "measured" else ""
            lines.append(
                f"{label:<28}{kind.replace('_with_qwen_tokenizer', '+qwen tok'):>10}"
                f"{v['checkpoint'] / 1e9:>12.4f}{v['final'] / 1e9:>10.4f}{v['peak'] / 1e9:>10.3f}"
                f"{v['written'] / 1e9:>10.3f}"
            )
        m, e = r["measured"], r["estimate"]
        err = {k: (e[k] - m[k]) / m[k] * 100 for k in ("checkpoint", "final", "peak", "written")}
        lines.append(
            f"{'':<28}{'error %':>10}"
            + "".join(
                f"{err[k]:>{w}.2f}" for k, w in (("checkpoint", 12), ("final", 10), ("peak", 10), ("written", 10))
            )
        )
    return "\n".join(lines)


def main(argv=None) -> int:
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", choices=("qwen", "tiny"), default="qwen")
    parser.add_argument("--only", choices=("full", "lora"), default=None)
    parser.add_argument(
        "--epochs-written",
        type=int,
        default=None,
        help="write only this many epochs' checkpoints (default: all for LoRA, 3 for full)",
    )
    parser.add_argument("--scratch", default=tempfile.gettempdir(), help="where the checkpoints are written")
    parser.add_argument("--output", default=str(ROOT / "benchmarks" / "results_drive_budget.json"))
    args = parser.parse_args(argv)

    from transformers import AutoModelForCausalLM, AutoTokenizer

    from musclebob_helpers.config import TrainConfig
    from musclebob_helpers.config import preset_config
    from musclebob_helpers.tiny_model import SHIPPED_DIR as tiny

    tokenizer = AutoTokenizer.from_pretrained(tiny)
    if args.model == "qwen":
        build, model_name = build_qwen_shaped, QWEN
    else:

        def build():
            return AutoModelForCausalLM.from_pretrained(tiny)

        model_name = "tiny"
    full = TrainConfig(model=model_name)  # the CLI's default run: full fine-tuning, 5 epochs, keep 2
    default = replace(preset_config("colab-t4"), model=model_name)  # the notebook's default on a T4: LoRA
    runs = [
        ("full fine-tuning (CLI)", full, args.epochs_written or (3 if args.model == "qwen" else None)),
        ("LoRA (colab-t4, notebook)", default, args.epochs_written),
    ]
    if args.only:
        runs = [r for r in runs if r[1].lora == (args.only == "lora")]
    rows = [
        measure(name, cfg, build, tokenizer, Path(args.scratch), n, qwen_tokenizer_bytes=args.model == "qwen")
        for name, cfg, n in runs
    ]
    print(table(rows))
    results = json.loads(Path(args.output).read_text()) if Path(args.output).is_file() else {}
    kept = results.get(args.model, {}) if args.only else {}  # --only replaces its own row, keeps the other
    results[args.model] = {**kept, **{r["name"]: r for r in rows}}
    Path(args.output).write_text(json.dumps(results, indent=2) + "\n")
    print(f"Wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
