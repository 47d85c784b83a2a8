#!/usr/bin/env python3
"""Step time and peak memory of GRPO steps: full fine-tuning vs LoRA.

    python benchmarks/bench_lora.py              # tiny model on this machine; + Qwen2.5-0.5B-shaped on a GPU
    python benchmarks/bench_lora.py --steps 8

Each row runs in a fresh process (a clean memory peak): the run's GRPO config (``grpo_args``), real
prompts and rewards, ``--batch-size`` prompts x ``--num-generations`` completions a step, no validation.
Step time is the mean over the steps after the first two (warm-up). Peak memory is
``torch.cuda.max_memory_allocated`` on a GPU and the process's peak RSS (VmHWM) on a CPU, so a CPU
row includes Python, torch and the libraries. The Qwen2.5-0.5B-shaped model is built from its config
values (``memory.known_config``) with random weights and the tiny tokenizer: no download; its
answers are noise but the step costs what the real model's does. The memory estimate is printed alongside.
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def build_qwen_shaped(folder: Path) -> Path:
    """A Qwen2.5-0.5B-shaped model with random weights and the tiny model's tokenizer, saved to ``folder``."""
    import torch
    from transformers import AutoTokenizer, Qwen2Config, Qwen2ForCausalLM

    from musclebob_helpers.memory import known_config
    from musclebob_helpers.tiny_model import SHIPPED_DIR

    tok = AutoTokenizer.from_pretrained(SHIPPED_DIR)
    torch.manual_seed(0)
    raw = known_config("Qwen/Qwen2.5-0.5B-Instruct")
    raw.pop("torch_dtype", None)  # built in fp32; each row's run picks its own precision
    config = Qwen2Config(
        **{**raw, "eos_token_id": tok.eos_token_id, "pad_token_id": tok.pad_token_id, "bos_token_id": None}
    )
    Qwen2ForCausalLM(config).save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


def run_one(model: str, lora: bool, steps: int, batch_size: int, num_generations: int, max_len: int) -> dict:
    """Train ``steps`` GRPO steps in this process; returns timing and memory (the child's job)."""
    import torch
    from transformers import TrainerCallback
    from trl import GRPOTrainer

    from musclebob_helpers import evaluation, training
    from musclebob_helpers.config import TrainConfig
    from musclebob_helpers.training import detect_hardware, grpo_args, grpo_trainer

    hw = detect_hardware()
    out = tempfile.mkdtemp(prefix="bench-")
    cfg = TrainConfig(
        model=model,
        output_dir=out,
        epochs=1,
        num_samples=steps * batch_size,
        batch_size=batch_size,
        num_generations=num_generations,
        max_completion_length=max_len,
        lora=lora,
        learning_rate=1e-5,
        gradient_checkpointing=False,
    )
    m, tok = evaluation.load_model(model, device=hw["device"])
    if hw["device"] == "cuda" and not lora:
        m.float()  # as run_training: fp32 master weights for full fine-tuning
    if hw["device"] == "cuda":
        torch.cuda.reset_peak_memory_stats()
    stamps = []

    class Clock(TrainerCallback):
        def on_step_end(self, args, state, control, **kw):
            if hw["device"] == "cuda":
                torch.cuda.synchronize()
            stamps.append(time.perf_counter())

    args = grpo_args(cfg, hw)
    args.save_strategy, args.disable_tqdm = "no", True
    training.trainer_class = lambda: GRPOTrainer  # TRL's own trainer, timed bare (this process is a child: no leak)
    trainer = grpo_trainer(cfg, m, tok, args, callbacks=[Clock()])
    trainable = sum(p.numel() for p in trainer.model.parameters() if p.requires_grad)
    trainer.train()
    deltas = [b - a for a, b in zip(stamps[1:], stamps[2:])]  # drop the first two steps (warm-up)
    if hw["device"] == "cuda":
        peak, kind = torch.cuda.max_memory_allocated() / 2**30, "GPU allocated"
    else:
        hwm = next(line for line in Path("/proc/self/status").read_text().splitlines() if line.startswith("VmHWM"))
        peak, kind = int(hwm.split()[1]) / 2**20, "process RSS"
    return {
        "step_s": sum(deltas) / max(1, len(deltas)),
        "peak_gib": peak,
        "memory": kind,
        "trainable": trainable,
        "device": hw["device"],
    }


def child(argv) -> None:
    model, lora, steps, b, g, n = argv[0], argv[1] == "lora", int(argv[2]), int(argv[3]), int(argv[4]), int(argv[5])
    print("RESULT " + json.dumps(run_one(model, lora, steps, b, g, n)))


def measure(model, label, mode, args) -> dict:
    cmd = [
        sys.executable,
        __file__,
        "--child",
        model,
        mode,
        str(args.steps),
        str(args.batch_size),
        str(args.num_generations),
        str(args.max_completion_length),
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "TOKENIZERS_PARALLELISM": "false"})
    line = next((x for x in proc.stdout.splitlines() if x.startswith("RESULT ")), None)
    if line is None:
        return {"model": label, "mode": mode, "error": (proc.stderr.strip().splitlines() or ["?"])[-1]}
    return {"model": label, "mode": mode, **json.loads(line[len("RESULT ") :])}


def estimate_for(label, mode, args):
    from musclebob_helpers.config import TrainConfig
    from musclebob_helpers.memory import estimate_memory, model_shape

    if label != "qwen2.5-0.5b-shaped":
        return ""
    cfg = TrainConfig(
        batch_size=args.batch_size,
        num_generations=args.num_generations,
        max_completion_length=args.max_completion_length,
        lora=mode == "lora",
        gradient_checkpointing=False,
    )
    return f"{estimate_memory(model_shape('Qwen/Qwen2.5-0.5B-Instruct'), cfg).total_gb:.2f}"


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        child(sys.argv[2:])
        return 0
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=6, help="GRPO steps per row (the first two are not timed)")
    p.add_argument("--batch-size", type=int, default=4, help="prompts per step")
    p.add_argument("--num-generations", type=int, default=8, help="completions per prompt")
    p.add_argument("--max-completion-length", type=int, default=64, help="tokens per completion")
    args = p.parse_args()

    import torch

    from musclebob_helpers.tiny_model import SHIPPED_DIR

    models = [("tiny", str(SHIPPED_DIR))]
    skipped = None
    if torch.cuda.is_available():
        models.append(("qwen2.5-0.5b-shaped", str(build_qwen_shaped(Path(tempfile.mkdtemp(prefix="qwen05b-"))))))
    else:
        skipped = "qwen2.5-0.5b-shaped: skipped: no GPU"
    rows = [measure(path, label, mode, args) for label, path in models for mode in ("full", "lora")]
    print(
        f"\n{args.batch_size} prompts x {args.num_generations} completions x {args.max_completion_length} tokens "
        f"per step, {args.steps} steps per row"
    )
    print(
        f"{'model':<22}{'mode':<6}{'device':<8}{'trainable':>14}{'step (s)':>10}{'peak (GiB)':>12}  "
        f"{'memory':<14}{'estimate (GiB)':>14}"
    )
    for r in rows:
        if "error" in r:
            print(f"{r['model']:<22}{r['mode']:<6}failed: {r['error']}")
            continue
        print(
            f"{r['model']:<22}{r['mode']:<6}{r['device']:<8}{r['trainable']:>14,}{r['step_s']:>10.3f}"
            f"{r['peak_gib']:>12.2f}  {r['memory']:<14}{estimate_for(r['model'], r['mode'], args):>14}"
        )
    if skipped:
        print(skipped)
    return 0


if __name__ == "__main__":
    sys.exit(main())
