"""Checkpoints a resume can trust: what "intact" means, which one ``auto`` picks, and when a resume makes sense.

A kill in the middle of a save, or Google Drive syncing lazily, leaves a ``checkpoint-N`` folder with
a file missing or cut short. transformers writes ``trainer_state.json`` last but not atomically, and
loads whatever it finds, so the checks live here (``checkpoint_problems``):

* ``trainer_state.json`` is there, parses, and its ``global_step`` is the N of ``checkpoint-N``;
* the weights are there (full model, shards or a LoRA adapter), every safetensors header is readable and
  the file is exactly as long as its header says (a cut-short file never is);
* ``config.json`` / ``adapter_config.json`` parse;
* ``optimizer.pt``, ``scheduler.pt`` and the RNG state open with ``torch.load`` (memory-mapped, so a
  multi-GB optimizer costs no RAM: a cut-short zip has no central directory and fails at once).

``select_checkpoint`` walks from the newest checkpoint back to the newest intact one; damaged ones are
renamed ``checkpoint-N.damaged`` (moved aside, never deleted) so the resumed run can write a fresh
``checkpoint-N``. ``resume_mismatch`` compares the settings of a resume with the ``training_config.json``
the interrupted run left, and ``trainer_class`` is TRL's ``GRPOTrainer`` with a data order that survives
a resume (TRL's sampler would replay epoch 1's order after a restart).
"""

from __future__ import annotations

import json
from pathlib import Path

from .io import list_checkpoints, read_json

# Settings that make a checkpoint meaningless when they change: another model's weights, another
# group size or prompts per step (the optimizer's step count no longer maps onto the data), other data.
RESUME_MUST_MATCH = (
    "model",
    "num_generations",
    "batch_size",
    "num_samples",
    "seed",
    "reward",
    "control_ratio",
    "fewshot_ratio",
    "use_fewshot",
)
DAMAGED_SUFFIX = ".damaged"


def _json_problem(path: Path) -> str | None:
    if not path.is_file():
        return f"{path.name} is missing"
    try:
        json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        return f"{path.name} is not valid JSON ({type(err).__name__})"
    return None


def safetensors_problem(path: Path) -> str | None:
    """None when ``path`` is a complete safetensors file: readable header and exactly the promised length."""
    if not path.is_file():
        return f"{path.name} is missing"
    size = path.stat().st_size
    try:
        with open(path, "rb") as fh:
            head = fh.read(8)
            if len(head) < 8:
                return f"{path.name} is truncated ({size} bytes)"
            header_len = int.from_bytes(head, "little")
            if header_len > size - 8:
                return f"{path.name} is truncated ({size} bytes, header alone needs {header_len + 8})"
            header = json.loads(fh.read(header_len))
        end = max((v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"), default=0)
    except (OSError, ValueError, KeyError, TypeError, IndexError) as err:
        return f"{path.name} has an unreadable header ({type(err).__name__})"
    if size != 8 + header_len + end:
        return f"{path.name} is {size} bytes but its header promises {8 + header_len + end} (truncated or padded)"
    return None


def torch_file_problem(path: Path) -> str | None:
    """None when ``torch.load`` opens ``path`` (weights only, memory-mapped: cheap even for a large optimizer)."""
    if not path.is_file():
        return f"{path.name} is missing"
    import torch
    from transformers.trainer_pt_utils import safe_globals

    try:
        with safe_globals():  # the same allow-list transformers uses to load RNG states
            torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as err:  # noqa: BLE001 - any failure means the file can't be resumed from
        reason = (str(err).strip().splitlines() or [type(err).__name__])[0].split(". ")[0][:100]
        return f"{path.name} cannot be loaded ({reason})"
    return None


def _weights_problems(ckpt: Path) -> list[str]:
    index = ckpt / "model.safetensors.index.json"
    if index.is_file():
        problem = _json_problem(index)
        if problem:
            return [problem]
        shards = sorted(set((read_json(index) or {}).get("weight_map", {}).values()))
        return [p for p in (safetensors_problem(ckpt / s) for s in shards) if p] or (
            [] if shards else ["model.safetensors.index.json lists no shards"]
        )
    for name, config in (("model.safetensors", "config.json"), ("adapter_model.safetensors", "adapter_config.json")):
        if (ckpt / name).exists():
            return [p for p in (safetensors_problem(ckpt / name), _json_problem(ckpt / config)) if p]
    for name in ("pytorch_model.bin", "adapter_model.bin"):
        if (ckpt / name).exists():
            return [p for p in (torch_file_problem(ckpt / name),) if p]
    return ["the model weights (model.safetensors or adapter_model.safetensors) are missing"]


def checkpoint_problems(ckpt: str | Path) -> list[str]:
    """Why ``ckpt`` can't be resumed from, in plain words; an empty list means it is intact."""
    ckpt = Path(ckpt)
    if not ckpt.is_dir():
        return [f"{ckpt} is not a folder"]
    problems = []
    state_problem = _json_problem(ckpt / "trainer_state.json")
    if state_problem:
        problems.append(state_problem + " (the save did not finish)")
    else:
        step = (read_json(ckpt / "trainer_state.json") or {}).get("global_step")
        name_step = ckpt.name.removeprefix("checkpoint-")
        if not isinstance(step, int) or (name_step.isdigit() and int(name_step) != step):
            problems.append(f"trainer_state.json says global_step={step!r}, not {name_step}")
    problems += _weights_problems(ckpt)
    rng = sorted(ckpt.glob("rng_state*.pth")) or [ckpt / "rng_state.pth"]
    for path in [ckpt / "optimizer.pt", ckpt / "scheduler.pt", *rng]:
        problem = torch_file_problem(path)
        if problem:
            problems.append(problem)
    return problems


def is_intact(ckpt: str | Path) -> bool:
    return not checkpoint_problems(ckpt)


def set_aside(ckpt: Path) -> Path:
    """Rename a damaged checkpoint to ``checkpoint-N.damaged`` (``.damaged-2``, ... if taken); nothing is deleted."""
    target = ckpt.with_name(ckpt.name + DAMAGED_SUFFIX)
    n = 2
    while target.exists():
        target = ckpt.with_name(f"{ckpt.name}{DAMAGED_SUFFIX}-{n}")
        n += 1
    ckpt.rename(target)
    return target


def select_checkpoint(out_dir: str | Path, log=print) -> str | None:
    """The newest intact checkpoint in ``out_dir`` (None: start fresh); says what it skipped and why.

    Damaged checkpoints newer than the one chosen are moved aside (``set_aside``), never deleted.
    """
    ckpts = list_checkpoints(out_dir)
    if not ckpts:
        log(f"No checkpoint in {out_dir}: starting fresh.")
        return None
    for ckpt in reversed(ckpts):
        problems = checkpoint_problems(ckpt)
        if not problems:
            log(f"Resuming from {ckpt}")
            return str(ckpt)
        moved = set_aside(ckpt)
        log(
            f"Checkpoint {ckpt.name} is damaged ({'; '.join(problems[:3])}); kept as {moved.name}, "
            "trying the one before it."
        )
    log(
        f"No intact checkpoint in {out_dir}: starting fresh (the damaged ones are kept as "
        f"checkpoint-N{DAMAGED_SUFFIX}, nothing was deleted)."
    )
    return None


DELETING_PREFIX = ".deleting-"


def rotate_checkpoints(out_dir: str | Path, keep: int, log=print) -> list[str]:
    """Delete all but the ``keep`` newest ``checkpoint-N`` folders, only once the newest is intact; returns the
    names deleted. ``keep`` <= 0 keeps every one.

    Not transformers' ``save_total_limit``: its rotation globs ``checkpoint-*`` (so ``checkpoint-N.damaged``
    folders count towards the limit, and sorting by number puts ``checkpoint-4.damaged`` after ``checkpoint-4``
    as "the most recent"), and it never checks that what it keeps can be resumed from. Here damaged folders are
    neither counted nor deleted, and nothing is deleted unless the newest checkpoint passes
    ``checkpoint_problems``: a save cut short leaves every older checkpoint in place. A folder is first renamed
    to ``.deleting-checkpoint-N`` (atomic) and then removed, so a kill mid-delete never leaves a half-deleted
    ``checkpoint-N`` that looks like a resumable one; ``remove_leftover_deletions`` finishes the job next time.
    """
    import shutil

    ckpts = list_checkpoints(out_dir)
    if keep <= 0 or len(ckpts) <= keep:
        return []
    problems = checkpoint_problems(ckpts[-1])
    if problems:
        log(f"Keeping every checkpoint: the newest, {ckpts[-1].name}, is not intact ({'; '.join(problems[:2])}).")
        return []
    removed = []
    for old in ckpts[:-keep]:
        doomed = old.with_name(DELETING_PREFIX + old.name)
        old.rename(doomed)
        shutil.rmtree(doomed, ignore_errors=True)
        removed.append(old.name)
    return removed


def remove_leftover_deletions(out_dir: str | Path) -> list[str]:
    """Finish deletions a kill interrupted (``.deleting-checkpoint-N`` folders); returns their names."""
    import shutil

    out = Path(out_dir)
    leftovers = sorted(out.glob(DELETING_PREFIX + "checkpoint-*")) if out.is_dir() else []
    for folder in leftovers:
        shutil.rmtree(folder, ignore_errors=True)
    return [f.name for f in leftovers]


def make_rotation_callback(keep: int, log=print):
    """A trainer callback that rotates checkpoints after each save (``on_save`` runs once ``_save_checkpoint``
    has written every file, ``trainer_state.json`` last)."""
    from transformers import TrainerCallback

    class RotateCheckpoints(TrainerCallback):
        def on_save(self, args, state, control, **kwargs):
            if state.is_world_process_zero and keep > 0:
                removed = rotate_checkpoints(args.output_dir, keep, log=log)
                if removed:
                    log(f"Removed {', '.join(removed)} (keeping the newest {keep}: --keep-checkpoints).")

    return RotateCheckpoints()


def run_config_for(cfg) -> dict | None:
    """The settings the interrupted run saved (``training_config.json`` next to its checkpoints), if any."""
    r = cfg.resume_from_checkpoint
    folder = Path(cfg.output_dir).expanduser() if r == "auto" else Path(r).expanduser().parent
    saved = read_json(folder / "training_config.json")
    return saved.get("config") if isinstance(saved, dict) and isinstance(saved.get("config"), dict) else None


def resume_mismatch(cfg) -> dict[str, tuple]:
    """``{field: (saved value, requested value)}`` for the settings in ``RESUME_MUST_MATCH`` that differ."""
    saved = run_config_for(cfg)
    if cfg.resume_from_checkpoint is None or saved is None:
        return {}
    return {
        name: (saved[name], getattr(cfg, name))
        for name in RESUME_MUST_MATCH
        if name in saved and saved[name] != getattr(cfg, name)
    }


ARCHITECTURE_KEYS = ("model_type", "vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads")


def architecture_mismatch(ckpt: str | Path, model_config: dict) -> dict[str, tuple]:
    """``{key: (checkpoint's, model's)}`` where a checkpoint's ``config.json`` describes another architecture."""
    saved = read_json(Path(ckpt) / "config.json")
    if not isinstance(saved, dict):
        return {}  # an adapter-only checkpoint, or no config: nothing to compare
    return {
        k: (saved[k], model_config.get(k)) for k in ARCHITECTURE_KEYS if k in saved and saved[k] != model_config.get(k)
    }


_TRAINER_CLASS = None


def trainer_class():
    """``GRPOTrainer`` whose prompt order depends on (seed, epoch) only, so a resumed epoch sees the same batches.

    TRL's ``RepeatSampler`` draws each epoch's permutation from one generator seeded once, so after a restart
    epoch 2 would replay epoch 1's order. transformers calls ``set_epoch`` on the sampler at every epoch
    (also after a resume); here that reseeds the generator with ``seed + epoch``.
    """
    global _TRAINER_CLASS
    if _TRAINER_CLASS is None:
        from torch.utils.data import Sampler
        from trl import GRPOTrainer

        class EpochSeededSampler(Sampler):
            def __init__(self, inner):
                self.inner = inner

            def set_epoch(self, epoch: int) -> None:
                if getattr(self.inner, "shuffle", False) and getattr(self.inner, "seed", None) is not None:
                    self.inner.generator.manual_seed(self.inner.seed + epoch)

            def __iter__(self):
                return iter(self.inner)

            def __len__(self):
                return len(self.inner)

        class ResumableGRPOTrainer(GRPOTrainer):
            def _get_train_sampler(self, *args, **kwargs):
                return EpochSeededSampler(super()._get_train_sampler(*args, **kwargs))

        _TRAINER_CLASS = ResumableGRPOTrainer
    return _TRAINER_CLASS
