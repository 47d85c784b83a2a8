"""The run folder: what is in it, whether a run may start there, and which checkpoint a resume trusts.

One module owns it, so the CLI, the trainer callbacks and the notebooks get the same answers: the artifact names,
``state``, the start-up ``check`` (which returns the ``RunFolder`` the rest of the start uses), the settings per
segment, intact checkpoints (``checkpoint_problems``, manifests), rotation and the disk-space checks.
docs/reliability.md and docs/drive.md give the reasons."""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from .config import ConfigError, TrainConfig, as_typed, config_from_dict, steps_per_epoch
from .io import TEMP_GLOB, give_umask_mode, read_json, write_json_atomic
from .lock import LOCK_FILE, RunLock, lock_holder

if TYPE_CHECKING:
    from .memory import DriveNeed

# --- the files of a run folder ---------------------------------------------------------------------------

CONFIG_FILE = "training_config.json"  # the run's settings, versions and hardware (what a resume continues)
HISTORY_FILE = "reward_history.json"  # one entry per optimizer step
BASELINE_FILE = "baseline_validation.json"  # the base model on the held-out prompts
FINAL_FILE = "final_validation.json"  # the trained model on the same prompts: written last, so "finished"
VALIDATION_HISTORY_FILE = "validation_history.json"  # mid-training checks (--validate-every)
WARNINGS_FILE = "health_warnings.json"  # live health warnings
COMPLETIONS_FILE = "completions.jsonl"  # a few sampled completions per step, with their rewards
REWARD_PLOT_FILE = "reward_plot.png"  # the run at a glance: reward, its components, before vs after
MODEL_CARD_FILE = "README.md"  # the model card (share.write_model_card), written last, over TRL's boilerplate
MODEL_CONFIG_FILES = ("config.json", "adapter_config.json")  # the final model at the root: full or LoRA
# in a checkpoint-N: the last healthy check's state, which a collapse goes back to (training.CollapseRecovery)
HEALTHY_STATE_FILE = "healthy_state.pt"
MANIFEST_FILE = "musclebob_manifest.json"  # in each checkpoint-N: every file's size and hash, written last
_DAMAGED_SUFFIX = ".damaged"
DELETING_PREFIX = ".deleting-"
COPYING_PREFIX = ".copying-"  # a checkpoint being copied into the run folder (mirror.py): renamed once verified
_CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")

DRIVE_MOUNT = Path(os.environ.get("MUSCLEBOB_DRIVE_MOUNTPOINT", "/content/drive"))  # where Colab mounts Drive
_MIN_FREE_BYTES = 200 * 2**20  # below this even the tiny model's checkpoints will not fit
_DRIVE_MARGIN = 1.05  # the estimate is within a few % of measured sizes; Drive's quota also counts the trash

# Settings a checkpoint is meaningless without (docs/reliability.md); every other one may change on resume.
_RESUME_MUST_MATCH = (
    "model",
    "num_generations",
    "batch_size",
    "num_samples",
    "seed",
    "reward",
    "control_ratio",
    "fewshot_ratio",
    "use_fewshot",
    "max_completion_length",
    "num_iterations",  # steps per epoch: a resumed epoch would skip the wrong batches
    "lora",
    "lora_r",
    "lora_alpha",
    "lora_target_modules",
    "load_in_4bit",
)
# Options of one start, not settings of the run: never recorded as a change.
PER_START_OPTIONS = (
    "output_dir",
    "work_dir",
    "resume_from_checkpoint",
    "overwrite",
    "ignore_mismatch",
    "push_to_hub",
    "hub_public",
)
_ARCHITECTURE_KEYS = ("model_type", "vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads")


def expand_path(path: str | Path) -> Path:
    """``~`` expanded; a path whose ``~user`` has no home folder is kept as written (``expanduser`` would raise)."""
    try:
        return Path(path).expanduser()
    except RuntimeError:  # "~nobody/x": no such home folder; keep the path as written
        return Path(path)


def folder_path(output_dir: str | Path) -> Path:
    """``expand_path`` with the part up to the last ``..`` resolved as the kernel would: left as written,
    ``mkdir(parents=True)`` creates ``out/a`` of ``out/a/../b`` on the way."""
    path = expand_path(output_dir)
    parts = path.parts
    if ".." not in parts:
        return path
    last = len(parts) - 1 - parts[::-1].index("..")
    return Path(os.path.realpath(Path(*parts[: last + 1]))).joinpath(*parts[last + 1 :])


# --- what the folder holds -------------------------------------------------------------------------------


def list_checkpoints(out_dir: str | Path) -> list[Path]:
    """``checkpoint-N`` folders in ``out_dir``, oldest (lowest N) first."""
    out = Path(out_dir)
    if not out.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in out.iterdir() if p.is_dir() and (m := _CHECKPOINT.match(p.name))]
    return [p for _, p in sorted(found)]


def is_finished(out_dir: str | Path) -> bool:
    out = Path(out_dir)
    return any((out / name).exists() for name in MODEL_CONFIG_FILES) and (out / FINAL_FILE).exists()


def state(out_dir: str | Path) -> str:
    """'new' (nothing there), 'started' (no checkpoint yet), 'unfinished' (checkpoints) or 'finished'."""
    out = Path(out_dir)
    if is_finished(out):
        return "finished"
    if list_checkpoints(out):
        return "unfinished"
    return "started" if (out / CONFIG_FILE).exists() else "new"


def describe(out_dir: str | Path) -> str:
    out = Path(out_dir)
    found = state(out)
    if found == "finished":
        final = read_json(out / FINAL_FILE, default={})
        return f"holds a finished run (step {final.get('global_step', '?')})"
    if found == "unfinished":
        return f"holds an unfinished run (newest checkpoint: {list_checkpoints(out)[-1].name})"
    return "holds a run stopped before its first checkpoint" if found == "started" else "is new"


def _last_activity(out: Path) -> float:
    marks = [out / HISTORY_FILE, out / CONFIG_FILE, *list_checkpoints(out)]
    return max((m.stat().st_mtime for m in marks if m.exists()), default=0.0)


def unfinished_runs(root: str | Path) -> list[Path]:
    """The resumable run folders directly under ``root``, the most recently active first."""
    root = Path(root)
    runs = [
        p
        for p in (root.iterdir() if root.is_dir() else ())
        if p.is_dir() and not p.name.startswith(".") and state(p) in ("unfinished", "started")
    ]
    return sorted(runs, key=_last_activity, reverse=True)


def _saved_settings(out_dir: str | Path) -> dict | None:
    """The ``config`` part of the folder's ``training_config.json`` as saved (None: missing or unreadable)."""
    saved = read_json(Path(out_dir) / CONFIG_FILE)
    settings = saved.get("config", saved) if isinstance(saved, dict) else None
    return settings if isinstance(settings, dict) else None


def saved_config(out_dir: str | Path) -> TrainConfig | None:
    """The settings the run in ``out_dir`` was started with (unknown keys ignored)."""
    settings = _saved_settings(out_dir)
    return None if settings is None else config_from_dict(settings)


_RUN_FILES = (
    CONFIG_FILE,
    HISTORY_FILE,
    BASELINE_FILE,
    FINAL_FILE,
    VALIDATION_HISTORY_FILE,
    WARNINGS_FILE,
    COMPLETIONS_FILE,
    REWARD_PLOT_FILE,
    *MODEL_CONFIG_FILES,
)


def clear_run(out_dir: str | Path) -> list[str]:
    """Remove a run's checkpoints and results (``--overwrite``: a later resume must not pick the previous
    run's checkpoint); damaged checkpoints and other files stay. Returns what went."""
    out = Path(out_dir)
    removed = []
    for ckpt in list_checkpoints(out):
        remove_checkpoint(ckpt)
        removed.append(ckpt.name)
    for name in _RUN_FILES:
        if (out / name).is_file():
            (out / name).unlink()
            removed.append(name)
    return removed


def remove_stale_temp_files(out_dir: str | Path) -> list[Path]:
    """Delete the temporary files ``io.write_json_atomic`` leaves when killed before its rename."""
    stale = [p for p in Path(out_dir).glob(TEMP_GLOB) if p.is_file()]  # none when the folder is missing
    for p in stale:
        p.unlink(missing_ok=True)
    return stale


# --- checkpoints a resume can trust ----------------------------------------------------------------------


def _json_problem(path: Path) -> str | None:
    if not path.is_file():
        return f"{path.name} is missing"
    try:
        json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        return f"{path.name} is not valid JSON ({type(err).__name__})"
    return None


def _safetensors_problem(path: Path) -> str | None:
    """None when ``path`` has a readable header and exactly the length it promises."""
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


def _torch_file_problem(path: Path) -> str | None:
    """None when ``torch.load`` opens ``path`` (memory-mapped: cheap even for a large optimizer)."""
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
    """Why the weights in ``ckpt`` cannot load (missing, cut short, padded, config unreadable); headers and
    sizes only."""
    index = ckpt / "model.safetensors.index.json"
    if index.is_file():
        problem = _json_problem(index)
        if problem:
            return [problem]
        shards = sorted(set((read_json(index) or {}).get("weight_map", {}).values()))
        return [p for p in (_safetensors_problem(ckpt / s) for s in shards) if p] or (
            [] if shards else ["model.safetensors.index.json lists no shards"]
        )
    for name, config in (("model.safetensors", "config.json"), ("adapter_model.safetensors", "adapter_config.json")):
        if (ckpt / name).exists():
            return [p for p in (_safetensors_problem(ckpt / name), _json_problem(ckpt / config)) if p]
    if (ckpt / "pytorch_model.bin.index.json").is_file():  # an older model's shards: their list parses, at least
        return [p for p in (_json_problem(ckpt / "pytorch_model.bin.index.json"),) if p]
    for name in ("pytorch_model.bin", "adapter_model.bin"):
        if (ckpt / name).exists():
            return [p for p in (_torch_file_problem(ckpt / name),) if p]
    return ["the model weights (model.safetensors or adapter_model.safetensors) are missing"]


_MODEL_JSON_FILES = ("tokenizer.json", "tokenizer_config.json", "generation_config.json")  # loaded with the model


def model_folder_problems(folder: str | Path) -> list[str]:
    """Why a model folder cannot load: its weights and the JSON files loaded with them. [] when it can."""
    folder = Path(folder)
    problems = _weights_problems(folder)
    return problems + [p for p in (_json_problem(folder / n) for n in _MODEL_JSON_FILES if (folder / n).exists()) if p]


def checkpoint_problems(ckpt: str | Path) -> list[str]:
    """Why ``ckpt`` can't be resumed from, in plain words; [] means intact."""
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
    problems += [p for p in map(_torch_file_problem, [ckpt / "optimizer.pt", ckpt / "scheduler.pt", *rng]) if p]
    named = {p.split(" ", 1)[0] for p in problems}  # a file the structure already named is not named twice
    return problems + [p for p in manifest_problems(ckpt) if p.split(" ", 1)[0] not in named]


def set_aside(ckpt: Path) -> Path:
    """Rename a damaged checkpoint to ``checkpoint-N.damaged`` (``-2``, ... if taken); nothing is deleted."""
    target = ckpt.with_name(ckpt.name + _DAMAGED_SUFFIX)
    n = 2
    while target.exists():
        target = ckpt.with_name(f"{ckpt.name}{_DAMAGED_SUFFIX}-{n}")
        n += 1
    ckpt.rename(target)
    return target


def _select_checkpoint(out_dir: str | Path | tuple[Path, ...], log=print) -> str | None:
    """The newest intact checkpoint in ``out_dir`` (a folder, or several: at equal steps the first
    folder's), None to start fresh; damaged newer ones are set aside, and each skip is logged."""
    folders = tuple(Path(f) for f in out_dir) if isinstance(out_dir, tuple) else (Path(out_dir),)
    where = " or ".join(str(f) for f in folders)
    found = [(checkpoint_step(c) or 0, -rank, c) for rank, f in enumerate(folders) for c in list_checkpoints(f)]
    ckpts = [c for *_, c in sorted(found, key=lambda t: t[:2])]
    if not ckpts:
        log(f"No checkpoint in {where}: starting fresh.")
        return None
    for ckpt in reversed(ckpts):
        try:
            problems = checkpoint_problems(ckpt)
        except OSError as err:  # its file system failing (a Drive disconnect): the next one may be elsewhere
            log(f"Checkpoint {ckpt} cannot be read ({err.strerror or err}); trying the one before it.")
            continue
        if not problems:
            log(f"Resuming from {ckpt}" + ("" if (ckpt / MANIFEST_FILE).is_file() else _UNVERIFIED))
            return str(ckpt)
        try:
            moved = set_aside(ckpt).name
        except OSError:
            moved = f"{ckpt.name} (it could not be renamed)"
        log(
            f"Checkpoint {ckpt.name} is damaged ({'; '.join(problems[:3])}); kept as {moved}, trying the one before it."
        )
    log(
        f"No intact checkpoint in {where}: starting fresh (the damaged ones are kept as "
        f"checkpoint-N{_DAMAGED_SUFFIX}, nothing was deleted)."
    )
    return None


# --- checkpoint manifests: bytes changed inside a file of the right length (docs/drive.md) -----------------

MANIFEST_HASH = "sha256"  # benchmarks/bench_hash.py: ~1.5 GB/s here, far faster than a checkpoint is written
_UNVERIFIED = f" (unverified: it has no {MANIFEST_FILE}, so it was saved by an older version or killed just before)"
_HASH_CHUNK = 1 << 20


def file_hash(path: Path, algorithm: str = MANIFEST_HASH) -> str:
    """The hex digest of ``path`` in 1 MiB chunks (``hashlib.file_digest`` is Python 3.11+)."""
    digest = hashlib.new(algorithm)
    buffer = memoryview(bytearray(_HASH_CHUNK))
    with open(path, "rb", buffering=0) as fh:
        while n := fh.readinto(buffer):
            digest.update(buffer[:n])
    return digest.hexdigest()


def _listed_files(ckpt: Path) -> list[Path]:
    return sorted(p for p in ckpt.rglob("*") if p.is_file() and p.name != MANIFEST_FILE and not p.match(TEMP_GLOB))


def write_manifest(ckpt: str | Path) -> dict:
    """Write ``ckpt``'s manifest (each file's relative path, size, hash) atomically, last in a save."""
    ckpt = Path(ckpt)
    files = {
        p.relative_to(ckpt).as_posix(): {"bytes": p.stat().st_size, MANIFEST_HASH: file_hash(p)}
        for p in _listed_files(ckpt)
    }
    manifest = {"hash": MANIFEST_HASH, "files": files}
    write_json_atomic(ckpt / MANIFEST_FILE, manifest)
    return manifest


def manifest_problems(ckpt: str | Path) -> list[str]:
    """How ``ckpt``'s files differ from its manifest ([] also without one: an older save). Sizes first:
    a file cut short is not hashed."""
    ckpt = Path(ckpt)
    path = ckpt / MANIFEST_FILE
    if not path.is_file():
        return []
    manifest = read_json(path)
    files = manifest.get("files") if isinstance(manifest, dict) else None
    algorithm = manifest.get("hash") if isinstance(manifest, dict) else None
    if not isinstance(files, dict) or not isinstance(algorithm, str):
        return [f"{MANIFEST_FILE} is unreadable (not the JSON a save writes)"]
    problems = []
    for name, entry in files.items():
        file = ckpt / name
        if not file.is_file():
            problems.append(f"{name} is missing (its manifest lists it)")
            continue
        size = file.stat().st_size
        if size != entry.get("bytes"):
            problems.append(f"{name} is {size} bytes, its manifest says {entry.get('bytes')} (changed after the save)")
            continue
        try:
            same = file_hash(file, algorithm) == entry.get(algorithm)
        except (ValueError, OSError) as err:  # an unknown algorithm, an unreadable file
            problems.append(f"{name} cannot be checked against its manifest ({err})")
            continue
        if not same:
            problems.append(f"{name} does not match its manifest (hash differs: damaged after it was saved)")
    return problems


def _every_process_saved() -> None:
    """Under ``accelerate launch`` each rank writes its own ``rng_state_K.pth``: wait for all, so
    the manifest lists them. A no-op with one process."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        dist.barrier()


def _find_resume_checkpoint(folder: RunFolder, cfg: TrainConfig, log=print) -> str | None:
    """The checkpoint ``--resume-from-checkpoint`` names (``auto``: ``_select_checkpoint`` over
    the run's folders); None starts fresh."""
    if cfg.resume_from_checkpoint is None:
        return None
    if cfg.resume_from_checkpoint != "auto":
        return str(expand_path(cfg.resume_from_checkpoint))
    return _select_checkpoint(folder.folders(), log=log)


def rotate_checkpoints(out_dir: str | Path, keep: int, log=print) -> list[str]:
    """Delete all but the ``keep`` newest checkpoints, only once the newest is intact (``keep`` <= 0
    keeps all); returns the names deleted. Not transformers' ``save_total_limit``: it counts ``.damaged`` folders and
    never checks what it keeps."""
    ckpts = list_checkpoints(out_dir)
    if keep <= 0 or len(ckpts) <= keep:
        return []
    problems = checkpoint_problems(ckpts[-1])
    if problems:
        log(f"Keeping every checkpoint: the newest, {ckpts[-1].name}, is not intact ({'; '.join(problems[:2])}).")
        return []
    for old in ckpts[:-keep]:
        remove_checkpoint(old)
    return [old.name for old in ckpts[:-keep]]


def remove_checkpoint(ckpt: Path) -> None:
    """Delete a checkpoint, renamed to ``.deleting-checkpoint-N`` first so a kill mid-delete never
    leaves one that looks resumable."""
    doomed = ckpt.with_name(DELETING_PREFIX + ckpt.name)
    ckpt.rename(doomed)
    shutil.rmtree(doomed, ignore_errors=True)


def remove_leftover_deletions(out_dir: str | Path) -> list[str]:
    """Finish deletions and copies a kill interrupted; returns their names."""
    out = Path(out_dir)  # glob finds nothing in a folder that is missing
    leftovers = sorted([*out.glob(DELETING_PREFIX + "checkpoint-*"), *out.glob(COPYING_PREFIX + "checkpoint-*")])
    for folder in leftovers:
        shutil.rmtree(folder, ignore_errors=True)
    return [f.name for f in leftovers]


def make_save_callback(keep: int, log=print):
    """A callback for after each save: umask permissions on the weights (safetensors writes 0600),
    the manifest (last: a checkpoint with one is complete), then rotation."""
    from transformers import TrainerCallback

    class AfterSave(TrainerCallback):
        def on_save(self, args, state, control, **kwargs):
            _every_process_saved()
            if not state.is_world_process_zero:
                return
            ckpt = Path(args.output_dir) / f"checkpoint-{state.global_step}"
            give_umask_mode(ckpt)
            write_manifest(ckpt)
            removed = rotate_checkpoints(args.output_dir, keep, log=log)  # [] when keep <= 0 (keep all)
            if removed:
                log(f"Removed {', '.join(removed)} (keeping the newest {keep}: --keep-checkpoints).")

    return AfterSave()


# --- does a resume make sense ----------------------------------------------------------------------------


def _resume_mismatch(cfg: TrainConfig, folder: RunFolder) -> dict[str, tuple]:
    """``{field: (saved, requested)}`` for the ``_RESUME_MUST_MATCH`` settings that differ from the
    interrupted run's."""
    r = cfg.resume_from_checkpoint
    if r is None:
        return {}
    saved = _saved_settings(newest_files(folder) if r == "auto" else expand_path(r).parent)
    if saved is None:
        return {}
    return {
        name: (saved[name], getattr(cfg, name))
        for name in _RESUME_MUST_MATCH
        if name in saved and saved[name] != getattr(cfg, name)
    }


def architecture_mismatch(ckpt: str | Path, model_config: dict) -> dict[str, tuple]:
    """``{key: (checkpoint's, model's)}`` where a checkpoint describes another architecture."""
    saved = read_json(Path(ckpt) / "config.json")
    if not isinstance(saved, dict):
        return {}  # an adapter-only checkpoint, or no config: nothing to compare
    return {
        k: (saved[k], model_config.get(k)) for k in _ARCHITECTURE_KEYS if k in saved and saved[k] != model_config.get(k)
    }


def checkpoint_step(ckpt: str | Path) -> int | None:
    """A checkpoint's global step: its ``trainer_state.json``, else the N of ``checkpoint-N``."""
    step = (read_json(Path(ckpt) / "trainer_state.json") or {}).get("global_step")
    if isinstance(step, int):
        return step
    m = _CHECKPOINT.match(Path(ckpt).name)
    return int(m.group(1)) if m else None


def settings_segments(out_dir: str | Path, cfg: TrainConfig, from_step: int) -> tuple[list[dict], dict]:
    """The run's settings per segment for ``training_config.json``, and ``{field: [old, new]}`` changed
    at this start. A resume from ``from_step`` (0: fresh) drops the segments after it and adds one when a setting
    differs from those in effect there."""
    now = {k: v for k, v in cfg.to_dict().items() if k not in PER_START_OPTIONS}
    fresh = [{"from_step": 0, "config": now}], {}
    saved = read_json(Path(out_dir) / CONFIG_FILE) if from_step > 0 else None
    if not isinstance(saved, dict):
        return fresh
    segments = [seg for seg in saved.get("segments") or [] if isinstance(seg, dict)]
    if not (segments and isinstance(segments[0].get("config"), dict)):
        first = _saved_settings(out_dir)  # a record from before segments were kept: its settings began at 0
        first = {k: v for k, v in first.items() if k not in PER_START_OPTIONS} if first is not None else None
        segments = [{"from_step": 0, "config": first}] if first is not None else []
    kept = [seg for seg in segments if isinstance(seg.get("from_step", 0), int) and _kept(seg, from_step)]
    if not kept:
        return fresh
    effective = dict(kept[0]["config"])
    for seg in kept[1:]:
        if "recovery" not in seg:  # a recovery's rate is the run's, not the user's: compared with theirs apart
            effective.update({k: new for k, (_, new) in seg.get("changed", {}).items()})
    changed = {k: [effective[k], v] for k, v in now.items() if k in effective and effective[k] != v}
    return kept + ([{"from_step": from_step, "changed": changed}] if changed else []), changed


def _kept(segment: dict, from_step: int) -> bool:
    """A segment a resume from ``from_step`` keeps: one begun before it, or a recovery at that very step (the
    recovery precedes the step's save)."""
    step = segment.get("from_step", 0)
    return step < from_step or ("recovery" in segment and step == from_step)


def recoveries(segments: list[dict]) -> list[dict]:
    return [seg for seg in segments if isinstance(seg.get("recovery"), dict)]


def recovered_rate(segments: list[dict], learning_rate: float) -> float:
    """``learning_rate`` scaled by each recovery's factor, so a recovered rate stays lowered across a
    resume."""
    for seg in recoveries(segments):
        old, new = seg["changed"]["learning_rate"]
        learning_rate *= new / old
    return learning_rate


def add_recovery(out_dir: str | Path, step: int, old_rate: float, new_rate: float, recovery: dict) -> None:
    """Append a recovery made at ``step`` to ``training_config.json``'s segments."""
    path = Path(out_dir) / CONFIG_FILE
    record = read_json(path, default={})
    record = record if isinstance(record, dict) else {}
    segments = [s for s in record.get("segments") or [] if isinstance(s, dict) and s.get("from_step", 0) <= step]
    segments.append({"from_step": step, "changed": {"learning_rate": [old_rate, new_rate]}, "recovery": recovery})
    write_json_atomic(path, {**record, "segments": segments})


def _check_resume(cfg: TrainConfig, folder: RunFolder) -> None:
    """Refuse a damaged explicit checkpoint, other settings than the interrupted run's, and fewer epochs
    than trained."""
    r = cfg.resume_from_checkpoint
    if r is None:
        return
    if r != "auto":
        problems = checkpoint_problems(expand_path(r))
        if problems:
            raise ConfigError(
                "resume_from_checkpoint",
                r,
                f"that checkpoint is damaged or incomplete ({'; '.join(problems[:2])}); use "
                "--resume-from-checkpoint auto to take the newest intact one",
            )
    differs = _resume_mismatch(cfg, folder)
    if differs and not cfg.ignore_mismatch:
        asked = " ".join(as_typed(k, new) for k, (_, new) in differs.items())
        used = " ".join(as_typed(k, old) for k, (old, _) in differs.items())
        raise ConfigError(
            "resume_from_checkpoint",
            r,
            f"this run asks for {asked}, but the run being resumed used {used}; pass the same values, "
            "--ignore-mismatch to resume anyway, or another --output-dir",
        )
    ckpts = [expand_path(r)] if r != "auto" else [c for f in folder.folders() for c in list_checkpoints(f)]
    done = max((checkpoint_step(c) or 0 for c in ckpts), default=None)
    per_epoch = max(1, steps_per_epoch(cfg))
    if done is not None and cfg.epochs * per_epoch < done:
        raise ConfigError(
            "epochs",
            cfg.epochs,
            f"at least {-(-done // per_epoch)}: the run being resumed has trained {done} steps "
            f"({per_epoch} an epoch); more epochs may be given on resume, not fewer",
        )


def disk_full_line(folder: RunFolder, resume_with: str = "") -> str:
    """The one line for a run that ran out of space: the folder training writes, need and free space,
    and how to go on (``resume_with``). Never raises."""
    from .memory import GB

    out, need = folder.work, folder.need

    def size(n: int) -> str:  # a full disk has megabytes left, the tiny model's run needs a few dozen
        return f"{n / GB:.1f} GB" if n >= GB else f"{n / 2**20:.0f} MB"

    try:
        free = size(shutil.disk_usage(_nearest_existing(out.absolute())).free) + " are free"
    except OSError as err:
        free = f"its free space cannot be read ({err.strerror or err})"
    wanted = f"this run needs about {size(need.need(on_drive(out)))} there, " if need else ""
    return (
        f"the disk is full ({out}): {wanted}{free}; free some space, then "
        f"{resume_with or 'rerun with --resume-from-checkpoint auto'}: the newest intact checkpoint is used"
    )


# --- can the folder's disk take the run ------------------------------------------------------------------


def _nearest_existing(path: Path) -> Path:
    for candidate in (path, *path.parents):
        if candidate.exists():
            return candidate
    return Path(path.anchor or ".")


def on_drive(output_dir: str | Path) -> bool:
    """Is ``output_dir`` on the Google Drive mount (where deleted files stay in the trash, counted)?"""
    path = Path(output_dir).expanduser().absolute()
    drive = DRIVE_MOUNT.absolute()
    return path == drive or drive in path.parents


# FUSE ('fuse.drive' on Colab, sshfs, rclone) and network file systems; 'fuseblk' is a local disk (ntfs-3g).
_REMOTE_FS_TYPES = ("fuse", "nfs", "cifs", "smb", "ceph", "glusterfs", "afs", "9p", "davfs", "lustre", "gpfs")
_WORK_ROOT_ENV = "MUSCLEBOB_WORK_ROOT"  # where automatic working folders go (default: ~/.cache/musclebob/work)


def _file_system_type(path: str | Path) -> str:
    """The type of the file system holding ``path`` from ``/proc/self/mounts`` ('' off Linux)."""
    try:
        mounts = Path("/proc/self/mounts").read_text().splitlines()
    except OSError:
        return ""
    target = os.path.realpath(_nearest_existing(Path(path).absolute()))
    best, found = -1, ""
    for line in mounts:
        fields = line.split()
        if len(fields) < 3:
            continue
        point = fields[1].encode().decode("unicode_escape")  # a space in a mount point reads \040
        if (target == point or target.startswith(point.rstrip("/") + "/")) and len(point) > best:
            best, found = len(point), fields[2]
    return found


def _is_remote_fs(fs_type: str) -> bool:
    return fs_type != "fuseblk" and fs_type.split(".")[0].startswith(_REMOTE_FS_TYPES)


def work_folder(out: Path, work_dir: str | None = None, fs_type: str | None = None) -> Path:
    """Where a run whose run folder is ``out`` trains: ``--work-dir``; on a remote file system a local folder
    named after the run (the same at every start, so a resume finds it); else ``out``."""
    if work_dir:
        return folder_path(work_dir)
    remote = _is_remote_fs(_file_system_type(out) if fs_type is None else fs_type) or on_drive(out)
    if not remote:
        return out
    root = os.environ.get(_WORK_ROOT_ENV) or Path.home() / ".cache" / "musclebob" / "work"
    key = hashlib.sha256(os.path.realpath(out.absolute()).encode()).hexdigest()[:10]
    return Path(root) / f"{out.name or 'run'}-{key}"


_STATE_ORDER = ("new", "started", "unfinished", "finished")


def combined_state(path: Path, work: Path) -> tuple[str, bool]:
    """The further state of the run folder and its working folder, and whether only the working folder
    holds it (a local finish whose copy a failing Drive held back)."""
    here, there = state(path), state(work) if work != path else "new"
    return (there, True) if _STATE_ORDER.index(there) > _STATE_ORDER.index(here) else (here, False)


def newest_files(folder: RunFolder) -> Path:
    """The folder with the run's newest settings and history: the working folder, unless the run folder's
    checkpoint is further on (a resume on a new machine)."""
    if not folder.mirrored:
        return folder.path
    steps = [max((checkpoint_step(c) or 0 for c in list_checkpoints(f)), default=-1) for f in folder.folders()]
    local = (folder.work / CONFIG_FILE).exists() or (folder.work / FINAL_FILE).exists()
    return folder.work if local and steps[0] >= steps[1] else folder.path


def _baseline_matches(report: dict | None, cfg: TrainConfig, precision: str) -> bool:
    sampling = (report or {}).get("sampling", {})
    return (
        bool(report)
        and report.get("model") == cfg.model
        and sampling.get("samples_per_prompt") == cfg.validation_samples
        and sampling.get("max_new_tokens") == cfg.max_completion_length
        and report.get("dtype", {}).get("precision") == precision
    )


def saved_baseline(folder: RunFolder, cfg: TrainConfig, precision: str) -> dict | None:
    """The baseline validation a start reuses (None: measure it). A continued run keeps its own; another
    start reuses one of the same model, sampling and precision; ``--overwrite`` never."""
    if folder.action == "overwrite":
        return None
    report = read_json(newest_files(folder) / BASELINE_FILE)
    if not isinstance(report, dict) or not report:
        return None
    return report if folder.action == "continue" or _baseline_matches(report, cfg, precision) else None


def output_location_problem(output_dir: str | Path, min_free_bytes: int = _MIN_FREE_BYTES) -> str | None:
    """Why a run cannot write to ``output_dir`` (None when it can); the write probe leaves nothing."""
    try:
        path = Path(output_dir).expanduser().absolute()
        path.exists()  # raises ValueError on an embedded NUL byte
    except (ValueError, OSError, RuntimeError) as err:
        return f"not a usable path ({err})"
    drive = DRIVE_MOUNT.absolute()
    if on_drive(path) and not (drive / "MyDrive").is_dir():
        return (
            f"Google Drive is not mounted at {drive}; run `from google.colab import drive; "
            f"drive.mount('{drive}')` first, or choose a local --output-dir"
        )
    base = _nearest_existing(path)
    if not base.is_dir():
        return f"{base} is a file, so no folder can be created inside it"
    try:
        before = base.stat()
        fd, probe = tempfile.mkstemp(prefix=".musclebob-write-test-", dir=base)
        os.close(fd)
        os.unlink(probe)
    except OSError as err:
        return f"{base} cannot be written ({err.strerror or type(err).__name__}); choose a writable --output-dir"
    with contextlib.suppress(OSError):  # leave the folder as found, its mtime too (some network file systems refuse)
        os.utime(base, ns=(before.st_atime_ns, before.st_mtime_ns))
    free = shutil.disk_usage(base).free
    if free < min_free_bytes:
        return (
            f"only {free / 2**20:.0f} MB free on the disk of {base}; a run needs at least "
            f"{min_free_bytes / 2**20:.0f} MB for checkpoints and the final model: free some space"
        )
    return None


def _folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def _free_for_run(out: Path, drive: bool) -> int:
    """Free bytes for a run in ``out``; off Drive its checkpoints count too (rotation frees them)."""
    free = shutil.disk_usage(_nearest_existing(out.absolute())).free
    return free if drive else free + sum(_folder_bytes(c) for c in list_checkpoints(out))


def _drive_space_problem(cfg: TrainConfig, shape=None, need=None, folder: RunFolder | None = None) -> str | None:
    """Why the output disk cannot hold this run; None when it can. On Drive deletes only move to the
    trash, so the run needs all it writes; elsewhere its peak, counting checkpoints it will reuse."""
    from .memory import GB, drive_need

    need = need or drive_need(cfg, shape)
    if need is None:
        return None
    out = (folder.path if folder is not None else folder_path(cfg.output_dir)).absolute()
    drive = on_drive(out)
    free = _free_for_run(out, drive)
    wanted = need.need(drive)
    if drive and cfg.resume_from_checkpoint is not None:  # a resumed run writes only the checkpoints still to come
        ckpts = list_checkpoints(out)
        done = int(ckpts[-1].name.split("-")[1]) if ckpts else 0
        wanted -= sum(1 for step in need.saved_at if step <= done) * need.checkpoint
    if wanted * _DRIVE_MARGIN <= free:
        return None
    tips = ["free space there" + (" (and empty Drive's trash)" if drive else "")]
    if not cfg.lora:
        tips.append("train a LoRA adapter (--lora / lora = True: ~0.1 GB a checkpoint for a 0.5B model)")
    if drive:
        tips.append("fewer --epochs (one checkpoint each)")
    if drive and cfg.save_steps:
        tips.append("a larger --save-steps (or 0: saves at epoch ends only)")
    elif cfg.keep_checkpoints != 1:
        tips.append("keep fewer checkpoints (--keep-checkpoints 1)")
    tips.append("or another --output-dir")
    how = (
        f"{need.checkpoints_saved} checkpoints of {need.checkpoint / GB:.2f} GB + the final model, deleted "
        "ones staying in Drive's trash"
        if drive
        else f"{min(need.checkpoints_saved, need.checkpoints_kept + 1)} checkpoints of {need.checkpoint / GB:.2f} GB "
        "at once + the final model"
    )
    how += f"; {need.uncounted}" if need.uncounted else ""
    return (
        f"this run needs about {wanted / GB:.1f} GB there ({how}), but only {free / GB:.1f} GB are free: "
        + ", ".join(tips)
    )


def check_drive_space(cfg: TrainConfig, folder: RunFolder | None = None, shape=None) -> DriveNeed | None:
    """``ConfigError`` when the run will not fit its disk(s); returns the ``DriveNeed`` (None: unknown)."""
    from .memory import GB, drive_need, model_shape

    shape = shape or model_shape(cfg.model, offline=True)
    need = drive_need(cfg, shape) if shape else None  # no network here: an unknown hub id is checked once loaded
    problem = _drive_space_problem(cfg, need=need, folder=folder) if need else None
    if problem:
        raise ConfigError("output_dir", cfg.output_dir, problem)
    if need and folder is not None and folder.mirrored:  # the working folder holds the run at its peak too
        free = _free_for_run(folder.work, False)
        if need.need(False) * _DRIVE_MARGIN > free:
            raise ConfigError(
                "work_dir",
                cfg.work_dir or str(folder.work),
                f"the run trains there on local disk and needs about {need.need(False) / GB:.1f} GB at its peak, but "
                f"only {free / GB:.1f} GB are free: free some space, or pass --work-dir on a larger disk",
            )
    return need


# --- the start-up check ----------------------------------------------------------------------------------


def decide(cfg: TrainConfig, found: str, local_only: bool = False, continue_unfinished: bool = False) -> str:
    """What a start does with the folder it found in state ``found``: 'new', 'continue', 'overwrite' or
    'refuse', one rule for the CLI and the notebook (``continue_unfinished``: the notebook continues an unfinished
    run where the CLI asks for ``--resume-from-checkpoint auto``)."""
    if found == "new":
        return "new"
    if cfg.resume_from_checkpoint is not None:
        return "continue"
    if cfg.overwrite:
        return "overwrite"
    if found == "finished" and not local_only:
        return "refuse"
    if continue_unfinished:
        return "continue"
    return "new" if found == "started" else "refuse"


class FolderRefused(ConfigError):
    """``decide`` said 'refuse': the line names the flags that take the folder."""

    def __init__(self, output_dir: str, found: str, local_only: bool, work: Path):
        if local_only:
            allowed = (
                f"its run finished in the working folder {work} but was not all copied here yet; pass "
                "--resume-from-checkpoint auto to finish the copy, --overwrite to start over, or another --output-dir"
            )
        elif found == "finished":
            allowed = (
                "it already holds a finished model; pass --overwrite, --resume-from-checkpoint auto, or another "
                "--output-dir"
            )
        else:
            allowed = (
                "it holds checkpoints of an unfinished run; pass --resume-from-checkpoint auto to continue it, "
                "--overwrite to start over, or another --output-dir"
            )
        self.found, self.local_only, self.work = found, local_only, work
        super().__init__("output_dir", output_dir, allowed)

    def __reduce__(self):
        return type(self), (self.value, self.found, self.local_only, self.work)


@dataclass(frozen=True)
class RunFolder:
    """The run folder of one start, resolved once by ``check`` and handed down. ``path`` is the run folder
    (``--output-dir``), ``work`` where training writes (a local folder that ``mirror.Mirror`` copies to ``path`` when
    that is on Drive/FUSE/network), ``resume`` the checkpoint chosen once the folder is locked."""

    shown: str  # --output-dir as the user typed it (what a refusal names)
    path: Path
    work: Path
    state: str  # the run before this start: 'new', 'started', 'unfinished' or 'finished' (``combined_state``)
    need: DriveNeed | None  # the run's disk need; None when the model's shape is not known before loading it
    fs_type: str = ""  # the run folder's file system (``/proc/mounts``), e.g. 'ext4', 'fuse.drive'
    resume: Path | None = None
    action: str = "new"  # what this start does with the folder (``decide``): 'new', 'continue' or 'overwrite'

    @property
    def mirrored(self) -> bool:
        return self.work != self.path

    def folders(self) -> tuple[Path, ...]:
        """Where the run's checkpoints may be: the working folder (the newer) first."""
        return (self.work, self.path) if self.mirrored else (self.path,)

    def with_resume(self, cfg: TrainConfig, log=print) -> RunFolder:
        chosen = _find_resume_checkpoint(self, cfg, log=log)
        return dataclasses.replace(self, resume=Path(chosen) if chosen else None)


def check(cfg: TrainConfig, writer: bool = True) -> RunFolder:
    """The start-up check of the run folder, before any model loads; returns the ``RunFolder``. Raises
    ``ConfigError`` for the first problem: a missing explicit checkpoint, a file in the way, another writer
    (``writer`` False on accelerate's other ranks), a used folder ``decide`` refuses, a folder that cannot be
    written, too little space, a bad resume. Disk probes come last; a failing file system is one line too."""
    try:
        return _check(cfg, writer)
    except OSError as err:
        why = f"it cannot be read ({err.strerror or err}); on Colab remount Google Drive (rerun the Drive cell), then "
        raise ConfigError("output_dir", cfg.output_dir, why + "run this again") from None


def _check(cfg: TrainConfig, writer: bool) -> RunFolder:
    r = cfg.resume_from_checkpoint
    if r is not None and r != "auto" and not expand_path(r).is_dir():
        raise ConfigError("resume_from_checkpoint", r, "'auto' or the path of an existing checkpoint folder")
    out = folder_path(cfg.output_dir)
    if out.exists() and not out.is_dir():
        raise ConfigError("output_dir", cfg.output_dir, "a folder, but a file of that name exists")
    holder = lock_holder(out) if writer else None
    if holder is not None:
        raise RunLock(out, cfg.output_dir).refusal(holder)
    fs_type = _file_system_type(out)
    work = work_folder(out, cfg.work_dir, fs_type)
    if work.exists() and not work.is_dir():
        raise ConfigError("work_dir", cfg.work_dir or str(work), "a folder, but a file of that name exists")
    if work != out and work.is_dir() and state(work) == "new" and any(p.name != LOCK_FILE for p in work.iterdir()):
        # a run's working folder is emptied at the end: never one that holds the user's own files
        raise ConfigError("work_dir", cfg.work_dir, "an empty folder, or the working folder of this same run")
    found, local_only = combined_state(out, work)
    action = decide(cfg, found, local_only)
    if action == "refuse":
        raise FolderRefused(cfg.output_dir, found, local_only, work)
    folder = RunFolder(
        shown=cfg.output_dir, path=out, work=work, state=found, action=action, need=None, fs_type=fs_type
    )
    problem = output_location_problem(cfg.output_dir)
    if problem:
        raise ConfigError("output_dir", cfg.output_dir, problem)
    if folder.mirrored:
        problem = output_location_problem(work)
        if problem:
            raise ConfigError("work_dir", cfg.work_dir or str(work), problem.replace("--output-dir", "--work-dir"))
    need = check_drive_space(cfg, folder)  # models whose shape is not known offline are checked again once loaded
    _check_resume(cfg, folder)
    return dataclasses.replace(folder, need=need)
