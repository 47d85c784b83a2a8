#!/usr/bin/env python3
"""GPU check: a few GRPO steps of a Qwen2.5-0.5B-shaped model (random weights, no hub) under each preset, and one
real ``training.run_training``.

    python benchmarks/gpu_check.py               # on a CUDA machine: every variant this machine can run
    python benchmarks/gpu_check.py --steps 6     # more steps per variant (the first one is warm-up, not timed)
    python benchmarks/gpu_check.py --cpu-tiny    # the CPU variants only, on the tiny model (what the test runs)

For each variant it prints the mean step time, completions per second, the peak GPU memory PyTorch allocated,
``memory.estimate_memory``'s figure for the same settings, the GPU memory still allocated once the variant is gone
(after ``gc.collect()`` and ``torch.cuda.empty_cache()``: anything above ``LEFT_GIB`` is a leak, and the check exits
1), and how many forward passes produced non-finite logits (inf/nan: an fp16 overflow) out of all of them, in
generation and in training. The model is built from ``musclebob_helpers/model_configs/Qwen2.5-0.5B-Instruct.json``
with random weights and the tiny model's tokenizer, so it never stops early: every completion runs to
``max_completion_length`` (a worst case for time and memory). "T4" variants run in fp16 as on a T4 (on any GPU:
the point is the fp16 code path). QLoRA runs when bitsandbytes is installed, vLLM when vllm is. The run_training
variant goes through the whole run (baseline validation, ``model.float()`` of a full fine-tune, training, final
validation) in the precision the hardware gets (``training.detect_hardware``). On a machine without CUDA the GPU
variants are skipped, one line each, and the CPU ones run on the tiny model. Results also go to
``benchmarks/results_gpu_check.json``.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

QWEN_CONFIG = ROOT / "musclebob_helpers" / "model_configs" / "Qwen2.5-0.5B-Instruct.json"
RESULTS = ROOT / "benchmarks" / "results_gpu_check.json"

# name -> (preset, overrides of TrainConfig, precision forced, package it needs); all of them need a GPU.
VARIANTS = {
    "colab-t4 preset (fp16)": ("colab-t4", {}, "fp16", None),
    "full fine-tune, fp16, checkpointing": ("colab-t4", {"lora": False, "gradient_checkpointing": True}, "fp16", None),
    "QLoRA 4-bit, fp16 (T4)": ("colab-t4", {"lora": True, "load_in_4bit": True}, "fp16", "bitsandbytes"),
    "full fine-tune, bf16": ("colab-l4", {"lora": False, "gradient_checkpointing": False}, "bf16", None),
    "LoRA, bf16": ("colab-l4", {"lora": True}, "bf16", None),
    "QLoRA 4-bit, bf16": ("colab-l4", {"lora": True, "load_in_4bit": True}, "bf16", "bitsandbytes"),
    "vLLM colocate, bf16": ("colab-l4", {"use_vllm": True}, "bf16", "vllm"),
}
CPU_VARIANT = "cpu-tiny preset (fp32)"
RUN_TRAINING = "run_training: full fine-tune + validation"  # on the GPU and on the CPU (tiny model)
LEFT_GIB = 0.05  # GPU memory a finished variant may leave allocated (PyTorch's own small buffers), in GiB


def build_qwen_shaped(folder: Path) -> Path:
    """Save a Qwen2.5-0.5B-shaped model with random weights (bf16) and the tiny tokenizer into ``folder``."""
    import torch
    from transformers import AutoTokenizer, Qwen2Config, Qwen2ForCausalLM

    from musclebob_helpers.tiny_model import SHIPPED_DIR

    raw = {k: v for k, v in json.loads(QWEN_CONFIG.read_text()).items() if not k.startswith("_")}
    raw.pop("torch_dtype", None)
    torch.manual_seed(0)
    Qwen2ForCausalLM(Qwen2Config(**raw)).to(torch.bfloat16).save_pretrained(folder)
    AutoTokenizer.from_pretrained(SHIPPED_DIR).save_pretrained(folder)
    return folder


@contextlib.contextmanager
def logits_watch():
    """Count the forward passes of every transformers model (policy, reference) whose logits hold an inf or a nan,
    in generation and in training, while the block runs: ``{"forwards": n, "nonfinite": k}`` once it ends.

    A global forward hook, so it sees the models ``run_training`` loads too; only ``PreTrainedModel``s count (a PEFT
    wrapper returns the same logits again). The flags add up on the device and are read once at the end: no sync
    per forward pass, so the step times stay comparable."""
    import torch
    from transformers import PreTrainedModel

    flags: list = []

    def hook(module, args, output):
        logits = getattr(output, "logits", None) if isinstance(module, PreTrainedModel) else None
        if isinstance(logits, torch.Tensor):
            flags.append((~torch.isfinite(logits.detach())).any())

    counts = {"forwards": 0, "nonfinite": 0}
    handle = torch.nn.modules.module.register_module_forward_hook(hook)
    try:
        yield counts
    finally:
        handle.remove()
        counts["forwards"] = len(flags)
        counts["nonfinite"] = int(torch.stack(flags).sum()) if flags else 0


def step_clock(times: list[float], device: str):
    """A trainer callback appending each step's wall time to ``times`` (synchronised on a GPU)."""
    import torch
    from transformers import TrainerCallback

    class Clock(TrainerCallback):
        def on_step_begin(self, *a, **k):
            self.t = time.perf_counter()

        def on_step_end(self, *a, **k):
            if device != "cpu":
                torch.cuda.synchronize()
            times.append(time.perf_counter() - self.t)

    return Clock()


def measured(times: list[float], per_step: int, cfg, precision: str, watch: dict, device: str) -> dict:
    """A result row: step time and throughput (the first step compiles kernels and fills caches: not timed), peak
    memory, non-finite logits."""
    import torch

    timed = times[1:] or times
    step_s = sum(timed) / len(timed) if timed else float("nan")
    return {
        "steps": len(times),
        "step_s": round(step_s, 3),
        "completions_per_s": round(per_step / step_s, 1),
        "completions_per_step": per_step,
        "lora": cfg.lora,
        "gradient_checkpointing": cfg.gradient_checkpointing,
        "precision": precision,
        "peak_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2) if device != "cpu" else None,
        "estimate_gib": None,
        "forwards": watch["forwards"],
        "nonfinite_forwards": watch["nonfinite"],
    }


def run_variant(model_path: str, preset: str, overrides: dict, precision: str, steps: int, device: str) -> dict:
    """Train ``steps`` GRPO steps through the project's own trainer set-up (no validation); time and measure them."""
    import torch

    from musclebob_helpers import evaluation, lora, memory, training
    from musclebob_helpers.config import preset_config
    from musclebob_helpers.training import detect_hardware, grpo_args, grpo_trainer

    with tempfile.TemporaryDirectory(prefix="gpu-check-") as out:
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
        trainer = grpo_trainer(cfg, model, tokenizer, args, callbacks=[step_clock(times, device)])
        if device != "cpu":
            torch.cuda.reset_peak_memory_stats()
        with logits_watch() as watch:
            trainer.train()
        row = measured(times, per_step, cfg, precision, watch, device)
        if device != "cpu":
            shape = memory.model_shape(cfg.model)
            if shape is not None:
                est = memory.estimate_memory(
                    shape, cfg, precision=precision, num_processes=1, gpu_memory_gb=hardware["gpu_memory_gb"]
                )
                row["estimate_gib"] = round(est.total_gb, 2)
    return row


def run_training_variant(model_path: str, steps: int, device: str) -> dict:
    """The whole ``training.run_training`` on a short full fine-tune: baseline validation, ``model.float()`` (on a
    GPU), ``steps`` steps, saving, final validation, each in the precision the hardware gets. What ``run_variant``
    bypasses, and where an fp16 overflow in generation or a model left on the GPU would show."""
    import torch

    from musclebob_helpers.config import TrainConfig
    from musclebob_helpers.startup import start
    from musclebob_helpers.training import detect_hardware, run_training

    # A --precision choice, once TrainConfig has one, goes into this config; the row reports what the run used.
    precision = detect_hardware()["precision"]
    with tempfile.TemporaryDirectory(prefix="gpu-check-run-") as out:
        cfg = TrainConfig(
            model=model_path,
            output_dir=str(Path(out) / "run"),
            epochs=1,
            batch_size=2,
            num_generations=2,
            num_samples=2 * steps,  # batch_size prompts a step
            max_completion_length=16,  # the random-weight model never stops: every answer is this long
            validation_samples=1,
            lora=False,  # full fine-tuning: the path through model.float()
        )
        times: list[float] = []
        if device != "cpu":
            torch.cuda.reset_peak_memory_stats()
        with logits_watch() as watch:
            run_training(start(cfg), log=lambda *a, **k: None, callbacks=[step_clock(times, device)])
        return measured(times, cfg.batch_size * cfg.num_generations, cfg, precision, watch, device)


def released(device: str) -> float | None:
    """GiB still allocated on the GPU once a variant's objects are gone (None on the CPU)."""
    gc.collect()  # the trainer, its callbacks and the model hold each other: only the cycle collector frees them
    if device == "cpu":
        return None
    import torch

    torch.cuda.empty_cache()
    return round(torch.cuda.memory_allocated() / 2**30, 3)


def table(results: dict) -> str:
    head = f"{'variant':42} {'step s':>7} {'compl/s':>8} {'peak GiB':>9} {'estimate GiB':>13} {'left GiB':>9} {'non-finite':>11}"
    lines = [head]
    for name, row in results.items():
        if "error" in row:
            lines.append(f"{name:42} {row['error']}")
            continue
        fmt = lambda v: "-" if v is None else f"{v}"  # noqa: E731
        nonfinite = f"{row['nonfinite_forwards']}/{row['forwards']}"
        lines.append(
            f"{name:42} {row['step_s']:>7} {row['completions_per_s']:>8} {fmt(row['peak_gib']):>9} "
            f"{fmt(row['estimate_gib']):>13} {fmt(row.get('left_gib')):>9} {nonfinite:>11}"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=4, help="GRPO steps per variant (the first is not timed)")
    parser.add_argument("--cpu-tiny", action="store_true", help="the CPU variants only, on the tiny model")
    parser.add_argument("--only", nargs="*", help="variant names to run (default: all that can run here)")
    parser.add_argument("--results", default=str(RESULTS), help="where to write the JSON results")
    args = parser.parse_args(argv)
    if args.steps < 1:
        parser.error(f"--steps {args.steps}: a whole number >= 1")
    import torch

    from musclebob_helpers.training import detect_hardware, package_available

    on_gpu = torch.cuda.is_available() and not args.cpu_tiny
    device = "cuda:0" if on_gpu else "cpu"
    print(f"GPU: {torch.cuda.get_device_name(0)}, torch {torch.__version__}" if on_gpu else "No GPU in use: CPU only")
    gpu_precision = detect_hardware()["precision"]  # what a run here gets; bf16 variants need it
    results: dict = {}

    def run(name: str, job) -> None:
        if args.only and name not in args.only:
            return
        try:
            results[name] = job()
        except Exception as err:  # noqa: BLE001 - one variant failing is a finding, not the end
            results[name] = {"error": f"failed: {type(err).__name__}: {str(err).splitlines()[0][:160]}"}
        left = released(device)  # after the row is made: the variant's frames are gone
        if "error" not in results[name]:
            results[name]["left_gib"] = left
        print(table({name: results[name]}).splitlines()[-1], flush=True)

    with tempfile.TemporaryDirectory() as tmp:
        model_path = str(build_qwen_shaped(Path(tmp) / "qwen2.5-0.5b-shaped")) if on_gpu else "tiny"
        for name, (preset, overrides, precision, needs) in VARIANTS.items():
            if args.only and name not in args.only:
                continue
            why = None if on_gpu else "needs a CUDA GPU"
            if not why and precision == "bf16" and gpu_precision != "bf16":
                why = f"needs bf16, this GPU runs {gpu_precision}"  # a T4: its fp16 twins cover it
            why = why or (f"{needs} is not installed" if needs and not package_available(needs) else None)
            if why:
                results[name] = {"error": f"skipped: {why}"}
                print(f"{name}: skipped, {why}", flush=True)
                continue
            run(name, lambda: run_variant(model_path, preset, overrides, precision, args.steps, device))
        if not on_gpu:
            run(CPU_VARIANT, lambda: run_variant("tiny", "cpu-tiny", {}, "fp32", args.steps, device))
        run(RUN_TRAINING, lambda: run_training_variant(model_path, args.steps, device))
    print(table(results))
    Path(args.results).write_text(json.dumps(results, indent=2) + "\n")
    leaks = [name for name, row in results.items() if (row.get("left_gib") or 0) > LEFT_GIB]
    failed = [name for name, row in results.items() if row.get("error", "").startswith("failed")]
    if leaks:
        print(f"GPU memory left allocated (over {LEFT_GIB} GiB) after: {', '.join(leaks)}")
    return 1 if leaks or failed else 0


if __name__ == "__main__":
    sys.exit(main())
