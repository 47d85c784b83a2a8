#!/usr/bin/env python3
"""GPU check: a few GRPO steps of a Qwen2.5-0.5B-shaped model (random weights, no hub) under each preset.

    python benchmarks/gpu_check.py               # on a CUDA machine: every variant this machine can run
    python benchmarks/gpu_check.py --steps 6     # more steps per variant (the first one is warm-up, not timed)
    python benchmarks/gpu_check.py --cpu-tiny    # the same loop on the CPU with the tiny model (what the test runs)

For each variant it prints the mean step time, completions per second, the peak GPU memory PyTorch allocated
and ``memory.estimate_memory``'s figure for the same settings, side by side. The model is built from
``musclebob_helpers/model_configs/Qwen2.5-0.5B-Instruct.json`` with random weights and the tiny model's
tokenizer, so it never stops early: every completion runs to ``max_completion_length`` (a worst case for
time and memory). "T4" variants run in fp16 as on a T4 (on any GPU: the point is the fp16 code path).
QLoRA runs when bitsandbytes is installed, vLLM when vllm is. On a machine without CUDA it says so in one
line and exits 0. Results also go to ``benchmarks/results_gpu_check.json``.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

QWEN_CONFIG = ROOT / "musclebob_helpers" / "model_configs" / "Qwen2.5-0.5B-Instruct.json"
RESULTS = ROOT / "benchmarks" / "results_gpu_check.json"

# name -> (preset, overrides of TrainConfig, precision forced, package it needs)
VARIANTS = {
    "colab-t4 preset (fp16)": ("colab-t4", {}, "fp16", None),
    "full fine-tune, fp16, checkpointing": ("colab-t4", {"lora": False, "gradient_checkpointing": True}, "fp16", None),
    "full fine-tune, bf16": ("colab-l4", {"lora": False, "gradient_checkpointing": False}, "bf16", None),
    "LoRA, bf16": ("colab-l4", {"lora": True}, "bf16", None),
    "QLoRA 4-bit, bf16": ("colab-l4", {"lora": True, "load_in_4bit": True}, "bf16", "bitsandbytes"),
    "vLLM colocate, bf16": ("colab-l4", {"use_vllm": True}, "bf16", "vllm"),
}


def build_qwen_shaped(folder: Path) -> Path:
    """Save a Qwen2.5-0.5B-shaped model with random weights (bf16) and the tiny tokenizer into ``folder``."""
    import torch
    from transformers import AutoTokenizer, Qwen2Config, Qwen2ForCausalLM

    from musclebob_helpers.tiny_model import ensure_tiny_model

    raw = {k: v for k, v in json.loads(QWEN_CONFIG.read_text()).items() if not k.startswith("_")}
    raw.pop("torch_dtype", None)
    torch.manual_seed(0)
    Qwen2ForCausalLM(Qwen2Config(**raw)).to(torch.bfloat16).save_pretrained(folder)
    AutoTokenizer.from_pretrained(ensure_tiny_model()).save_pretrained(folder)
    return folder


def run_variant(model_path: str, preset: str, overrides: dict, precision: str, steps: int, device: str) -> dict:
    """Train ``steps`` GRPO steps through the project's own trainer set-up; time and measure them."""
    import torch
    from transformers import TrainerCallback

    from musclebob_helpers import evaluation, lora, memory, training
    from musclebob_helpers.config import preset_config
    from musclebob_helpers.training import detect_hardware, grpo_args, grpo_trainer

    out = tempfile.mkdtemp(prefix="gpu-check-")
    cfg = preset_config(preset, model=model_path, output_dir=out, epochs=1, **overrides)
    per_step = cfg.batch_size * cfg.num_generations
    cfg.num_samples = cfg.batch_size * (steps + 1)
    hardware = dict(detect_hardware(), precision=precision)
    training.check_hardware_support(cfg, hardware)
    model, tokenizer = evaluation.load_model(
        cfg.model, device=device, quantization_config=lora.quantization_config(cfg, hardware)
    )
    if device != "cpu" and not cfg.load_in_4bit:
        # As run_training: fp32 master weights for full fine-tuning; a LoRA base stays in the 16-bit precision.
        model.to(torch.float32 if not cfg.lora else {"fp16": torch.float16, "bf16": torch.bfloat16}[precision])
    args = grpo_args(cfg, hardware)
    args.max_steps, args.save_strategy, args.disable_tqdm = steps, "no", True
    times: list[float] = []

    class Clock(TrainerCallback):
        def on_step_begin(self, *a, **k):
            self.t = time.perf_counter()

        def on_step_end(self, *a, **k):
            if device != "cpu":
                torch.cuda.synchronize()
            times.append(time.perf_counter() - self.t)

    trainer = grpo_trainer(cfg, model, tokenizer, args, callbacks=[Clock()])
    if device != "cpu":
        torch.cuda.reset_peak_memory_stats()
    trainer.train()
    timed = times[1:] or times  # the first step compiles kernels and fills caches
    step_s = sum(timed) / len(timed)
    row = {
        "steps": len(times),
        "step_s": round(step_s, 3),
        "completions_per_s": round(per_step / step_s, 1),
        "completions_per_step": per_step,
        "lora": cfg.lora,
        "gradient_checkpointing": cfg.gradient_checkpointing,
        "precision": precision,
        "peak_gib": None,
        "estimate_gib": None,
    }
    if device != "cpu":
        row["peak_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
        shape = memory.model_shape(cfg.model)
        if shape is not None:
            est = memory.estimate_memory(
                shape, cfg, precision=precision, num_processes=1, gpu_memory_gb=hardware["gpu_memory_gb"]
            )
            row["estimate_gib"] = round(est.total_gb, 2)
    del trainer, model
    if device != "cpu":
        torch.cuda.empty_cache()
    return row


def table(results: dict) -> str:
    lines = [f"{'variant':40} {'step s':>7} {'compl/s':>8} {'peak GiB':>9} {'estimate GiB':>13}"]
    for name, row in results.items():
        if "error" in row:
            lines.append(f"{name:40} failed: {row['error']}")
            continue
        fmt = lambda v: "-" if v is None else f"{v}"  # noqa: E731
        lines.append(
            f"{name:40} {row['step_s']:>7} {row['completions_per_s']:>8} {fmt(row['peak_gib']):>9} "
            f"{fmt(row['estimate_gib']):>13}"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=4, help="GRPO steps per variant (the first is not timed)")
    parser.add_argument("--cpu-tiny", action="store_true", help="run the loop on the CPU with the tiny model")
    parser.add_argument("--only", nargs="*", help="variant names to run (default: all that can run here)")
    parser.add_argument("--results", default=str(RESULTS), help="where to write the JSON results")
    args = parser.parse_args(argv)
    import torch

    from musclebob_helpers.training import package_available

    if args.cpu_tiny:
        results = {"cpu-tiny preset (fp32)": run_variant("tiny", "cpu-tiny", {}, "fp32", args.steps, "cpu")}
    elif not torch.cuda.is_available():
        print("No CUDA GPU here: gpu_check measures GPU training (try --cpu-tiny for the same loop on the CPU).")
        return 0
    else:
        print(f"GPU: {torch.cuda.get_device_name(0)}, torch {torch.__version__}")
        results = {}
        with tempfile.TemporaryDirectory() as tmp:
            model_path = str(build_qwen_shaped(Path(tmp) / "qwen2.5-0.5b-shaped"))
            for name, (preset, overrides, precision, needs) in VARIANTS.items():
                if args.only and name not in args.only:
                    continue
                if needs and not package_available(needs):
                    results[name] = {"error": f"skipped: {needs} is not installed"}
                    continue
                try:
                    results[name] = run_variant(model_path, preset, overrides, precision, args.steps, "cuda:0")
                except Exception as err:  # noqa: BLE001 - one variant failing is a finding, not the end
                    results[name] = {"error": f"{type(err).__name__}: {str(err).splitlines()[0][:160]}"}
                print(table({name: results[name]}).splitlines()[-1], flush=True)
    print(table(results))
    Path(args.results).write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
