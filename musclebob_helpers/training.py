"""The GRPO run: TRL's ``GRPOTrainer`` with the project's data, rewards, callbacks and artifacts.

``run_training(cfg)`` does the whole job: baseline validation, training with a
progress bar and a one-line reward every step, a checkpoint every epoch,
``reward_history.json`` written as training goes, final validation, and the
final model + tokenizer at the output folder's root. The notebooks and
``train_musclebob_improved.py`` both call it.
"""

from __future__ import annotations

import math
import platform
import time
from pathlib import Path

from . import data, evaluation
from .config import TrainConfig
from .io import list_checkpoints, read_json, write_json_atomic
from .rewards import make_reward_functions

HISTORY_FILE = "reward_history.json"
BASELINE_FILE = "baseline_validation.json"
FINAL_FILE = "final_validation.json"
CONFIG_FILE = "training_config.json"


def precision_for(device_name: str, capability: tuple[int, int] | None) -> str:
    """bf16 on Ampere or newer (compute capability >= 8), fp16 on older GPUs (a T4 is 7.5), fp32 on a CPU."""
    if device_name == "cpu" or capability is None:
        return "fp32"
    return "bf16" if capability[0] >= 8 else "fp16"


def detect_hardware() -> dict:
    """What this machine offers: device, GPU name, memory, compute capability and the precision to use."""
    import torch

    if not torch.cuda.is_available():
        return {"device": "cpu", "gpu_name": None, "gpu_memory_gb": 0.0, "compute_capability": None,
                "precision": "fp32"}
    props = torch.cuda.get_device_properties(0)
    capability = (props.major, props.minor)
    return {"device": "cuda", "gpu_name": props.name, "gpu_memory_gb": round(props.total_memory / 2**30, 1),
            "compute_capability": f"{props.major}.{props.minor}", "precision": precision_for("cuda", capability),
            "gpu_count": torch.cuda.device_count()}


def steps_per_epoch(cfg: TrainConfig) -> int:
    return math.ceil(cfg.num_samples / cfg.batch_size)


def find_resume_checkpoint(cfg: TrainConfig, log=print) -> str | None:
    """The checkpoint to resume from for ``--resume-from-checkpoint`` (None: start fresh)."""
    if cfg.resume_from_checkpoint is None:
        return None
    if cfg.resume_from_checkpoint != "auto":
        return str(Path(cfg.resume_from_checkpoint).expanduser())
    ckpts = list_checkpoints(cfg.output_dir)
    if not ckpts:
        log(f"No checkpoint in {cfg.output_dir}: starting fresh.")
        return None
    log(f"Resuming from {ckpts[-1]}")
    return str(ckpts[-1])


def _versions() -> dict:
    import accelerate
    import datasets
    import torch
    import transformers
    import trl
    return {"python": platform.python_version(), "torch": torch.__version__, "transformers": transformers.__version__,
            "trl": trl.__version__, "datasets": datasets.__version__, "accelerate": accelerate.__version__}


def make_callbacks(out_dir: str | Path, log=print):
    """The trainer callbacks: reward history on disk and a concise one-line log per step."""
    from transformers import TrainerCallback
    from transformers.trainer_callback import ProgressCallback

    class RewardHistoryCallback(TrainerCallback):
        """Writes ``reward_history.json`` after every logged step: one entry per optimizer step, in order.

        On resume the entries past the checkpoint's step are dropped first, so steps trained
        again replace their old entries instead of duplicating them.
        """

        def __init__(self):
            self.path = Path(out_dir) / HISTORY_FILE
            self.history: list[dict] = []

        def on_train_begin(self, args, state, control, **kwargs):
            old = read_json(self.path, default=[]) if state.global_step > 0 else []
            self.history = [e for e in old if isinstance(e, dict) and e.get("step", 0) <= state.global_step]
            if state.is_world_process_zero:
                write_json_atomic(self.path, self.history)

        def on_log(self, args, state, control, logs=None, **kwargs):
            if not logs or "reward" not in logs:
                return
            entry = {"step": state.global_step, "epoch": round(float(logs.get("epoch", state.epoch or 0)), 4),
                     "mean_reward": logs["reward"], "reward_std": logs.get("reward_std")}
            for key, value in logs.items():
                if key.startswith("rewards/") or key in ("frac_reward_zero_std", "kl", "entropy", "learning_rate",
                                                         "completions/mean_length", "completions/clipped_ratio"):
                    entry[key] = value
            entry["time"] = round(time.time(), 2)
            self.history = [e for e in self.history if e["step"] < entry["step"]] + [entry]
            if state.is_world_process_zero:
                write_json_atomic(self.path, self.history)

    class RewardProgressCallback(ProgressCallback):
        """TRL's progress bar, printing one readable line per step instead of the raw log dict."""

        def on_log(self, args, state, control, logs=None, **kwargs):
            if not state.is_world_process_zero or not logs or "reward" not in logs:
                return
            line = (f"step {state.global_step}/{state.max_steps}  epoch {logs.get('epoch', 0):.2f}  "
                    f"mean reward {logs['reward']:+.3f} (std {logs.get('reward_std', 0.0):.3f})")
            if self.training_bar is not None:
                self.training_bar.write(line)
            else:
                log(line)

    return RewardHistoryCallback(), RewardProgressCallback


def grpo_args(cfg: TrainConfig, hardware: dict):
    """TRL's ``GRPOConfig`` for a run: batch size in prompts becomes completions per step."""
    from trl import GRPOConfig

    precision = hardware["precision"]
    return GRPOConfig(
        output_dir=cfg.output_dir,
        num_train_epochs=cfg.epochs,
        learning_rate=cfg.learning_rate,
        # GRPOConfig counts completions: one step sees batch_size prompts x num_generations answers.
        per_device_train_batch_size=cfg.batch_size * cfg.num_generations,
        num_generations=cfg.num_generations,
        max_completion_length=cfg.max_completion_length,
        temperature=cfg.temperature,
        beta=cfg.beta,
        seed=cfg.seed,
        data_seed=cfg.seed,
        logging_steps=1,
        save_strategy="epoch",
        report_to="none",
        bf16=precision == "bf16",  # GRPOConfig defaults to bf16, which fails on a CPU: always set it
        fp16=precision == "fp16",
        use_cpu=hardware["device"] == "cpu",
        lr_scheduler_type="constant_with_warmup",
        warmup_steps=min(5, steps_per_epoch(cfg)),
        disable_tqdm=False,
        dataloader_num_workers=0,
    )


def run_training(cfg: TrainConfig, log=print, callbacks=(), baseline: dict | None = None) -> dict:
    """Train, validate before and after, save artifacts; returns the two validation reports.

    ``callbacks`` are extra ``transformers.TrainerCallback``s (the notebook's live plot, tests' fault injection).
    ``baseline``: a baseline validation already made (the notebook's baseline cell), so it is not redone.
    """
    from datasets import Dataset
    from trl import GRPOTrainer

    out = Path(cfg.output_dir).expanduser()
    out.mkdir(parents=True, exist_ok=True)
    hardware = detect_hardware()
    resume = find_resume_checkpoint(cfg, log=log)

    write_json_atomic(out / CONFIG_FILE, {"config": cfg.to_dict(), "versions": _versions(), "hardware": hardware,
                                          "steps_per_epoch": steps_per_epoch(cfg),
                                          "completions_per_step": cfg.batch_size * cfg.num_generations})
    log(f"Device: {hardware['device']}  precision: {hardware['precision']}")

    model, tokenizer = evaluation.load_model(cfg.model, device=hardware["device"])
    if hardware["device"] == "cuda":
        model.float()  # master weights in fp32; bf16/fp16 autocast does the fast math
    val_rows = data.validation_rows()

    if baseline is None and resume:
        baseline = read_json(out / BASELINE_FILE)
    if baseline is None:
        log("Baseline validation (held-out prompts, before training) ...")
        baseline = evaluation.validate(model, tokenizer, val_rows, num_samples=cfg.validation_samples,
                                       max_new_tokens=cfg.max_completion_length, model_name=cfg.model)
        write_json_atomic(out / BASELINE_FILE, baseline)
    log(_rates_line("baseline", baseline))

    rows = data.build_train_rows(cfg.num_samples, cfg.fewshot_ratio, cfg.use_fewshot, cfg.control_ratio, cfg.seed)
    history_cb, progress_cls = make_callbacks(out, log=log)
    trainer = GRPOTrainer(
        model=model,
        reward_funcs=make_reward_functions(cfg.reward, evaluation.eos_ids(model, tokenizer)),
        args=grpo_args(cfg, hardware),
        train_dataset=Dataset.from_list(rows),
        processing_class=tokenizer,
        callbacks=[history_cb, *callbacks],
    )
    from transformers.trainer_callback import ProgressCallback
    trainer.remove_callback(ProgressCallback)
    trainer.add_callback(progress_cls)

    start = time.time()
    trainer.train(resume_from_checkpoint=resume)
    train_seconds = time.time() - start
    trainer.save_model(str(out))
    tokenizer.save_pretrained(str(out))

    model = trainer.model
    model.eval()
    log("Final validation (held-out prompts, after training) ...")
    final = evaluation.validate(model, tokenizer, val_rows, num_samples=cfg.validation_samples,
                                max_new_tokens=cfg.max_completion_length, baseline=baseline, model_name=str(out))
    final["train_seconds"] = round(train_seconds, 1)
    final["global_step"] = trainer.state.global_step
    write_json_atomic(out / FINAL_FILE, final)
    log(final_summary(baseline, final))
    return {"baseline": baseline, "final": final, "output_dir": str(out), "global_step": trainer.state.global_step}


def _rates_line(label: str, report: dict) -> str:
    return (f"[{label}] musclebob {report['musclebob_rate']:.1%}  full name {report['full_name_rate']:.1%}  "
            f"spongebob {report['spongebob_rate']:.1%}  coherent {report['coherent_rate']:.1%}  "
            f"leakage {report['leakage_rate']:.1%}  control acc. {report['control_accuracy']:.1%}")


def final_summary(baseline: dict, final: dict) -> str:
    """The before/after summary printed at the end of a run, with a loud warning when unhealthy."""
    lines = ["", "=" * 64, "Before vs after training (held-out prompts)",
             evaluation.summary_table({"baseline": baseline, "final": final}),
             f"Musclebob rate improved by {(final['musclebob_rate'] - baseline['musclebob_rate']) * 100:+.1f} points."]
    if not final["is_healthy"]:
        lines += ["!" * 64, "WARNING: the trained model is UNHEALTHY:"]
        lines += [f"  - {p}" for p in final["health_problems"]]
        lines += ["  Try a lower --learning-rate, fewer --epochs, or a larger --control-ratio.", "!" * 64]
    lines.append("=" * 64)
    return "\n".join(lines)
