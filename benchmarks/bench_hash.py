"""What a checkpoint's manifest costs (``run_dir.write_manifest`` at each save, ``manifest_problems`` at a resume).

    OMP_NUM_THREADS=1 python benchmarks/bench_hash.py            # about two minutes; writes ~6 GB, then deletes it

Three checkpoints: (a) the tiny model's, saved by a real 1-epoch run; (b) a Qwen2.5-0.5B LoRA checkpoint and
(c) a Qwen2.5-0.5B full fine-tuning checkpoint, as files of the sizes ``memory.drive_need`` gives (the weights in
fp32, AdamW's two moments, the tokenizer; the bytes are repeated random blocks: a hash's speed does not depend on
them). For each: MB, then seconds and MB/s per hash algorithm (hashlib's, and xxhash's xxh3_128 where datasets
installed it), read from the page cache (the files were just written, as at a save), and the manifest as the
project writes and checks it (SHA-256), warm and, where the kernel drops the pages on request, cold (read from
disk, as a resume after a restart reads them). Everything is written under a temporary folder and removed.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

ALGORITHMS = ("sha256", "blake2b", "sha1", "md5", "sha512")
BLOCK = 64 * 2**20


def tiny_checkpoint(folder: Path) -> Path:
    """A checkpoint of the tiny model, saved by the real path (a 1-epoch run of 2 steps)."""
    import contextlib
    import io

    import train_musclebob_improved

    args = ["--model", "tiny", "--epochs", "1", "--num-samples", "4", "--batch-size", "2", "--num-generations", "2"]
    args += ["--max-completion-length", "8", "--validation-samples", "1", "--output-dir", str(folder / "run")]
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        code = train_musclebob_improved.main(args)
    assert code in (0, 1), code
    from musclebob_helpers.run_dir import list_checkpoints

    return list_checkpoints(folder / "run")[-1]


def synthetic_checkpoint(folder: Path, lora: bool) -> Path:
    """A checkpoint folder with a Qwen2.5-0.5B checkpoint's files at their sizes (``memory.drive_need``)."""
    from musclebob_helpers.config import TrainConfig
    from musclebob_helpers.memory import model_shape

    cfg = TrainConfig(lora=lora)
    shape = model_shape(cfg.model, offline=True)
    trainable = shape.trainable(cfg)[0]
    sizes = {
        "adapter_model.safetensors" if lora else "model.safetensors": 4 * trainable,
        "optimizer.pt": 8 * trainable,
        "tokenizer.json": 7_000_000,
        "vocab.json": 2_700_000,
        "merges.txt": 1_700_000,
        "trainer_state.json": 200_000,
        "rng_state.pth": 14_500,
        "training_args.bin": 7_600,
        "scheduler.pt": 1_500,
    }
    ckpt = folder / ("lora" if lora else "full") / "checkpoint-160"
    ckpt.mkdir(parents=True)
    block = os.urandom(BLOCK)
    for name, size in sizes.items():
        with open(ckpt / name, "wb") as fh:
            for start in range(0, size, BLOCK):
                fh.write(block[: min(BLOCK, size - start)])
    return ckpt


def files_of(ckpt: Path) -> list[Path]:
    return [p for p in sorted(ckpt.rglob("*")) if p.is_file()]


def drop_from_cache(ckpt: Path) -> bool:
    """Ask the kernel to forget the files' pages (written back first); False where it cannot."""
    if not hasattr(os, "posix_fadvise"):
        return False
    for path in files_of(ckpt):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)
    return True


def time_hash(ckpt: Path, algorithm: str) -> float:
    from musclebob_helpers.run_dir import file_hash

    start = time.perf_counter()
    for path in files_of(ckpt):
        if algorithm == "xxh3_128":
            import xxhash

            digest = xxhash.xxh3_128()
            with open(path, "rb") as fh:
                while chunk := fh.read(2**20):
                    digest.update(chunk)
        else:
            file_hash(path, algorithm)
    return time.perf_counter() - start


def time_manifest(ckpt: Path) -> tuple[float, float]:
    from musclebob_helpers.run_dir import manifest_problems, write_manifest

    start = time.perf_counter()
    write_manifest(ckpt)
    wrote = time.perf_counter() - start
    start = time.perf_counter()
    assert manifest_problems(ckpt) == []
    return wrote, time.perf_counter() - start


def measure(label: str, ckpt: Path, algorithms: tuple[str, ...], cold: bool) -> dict:
    mb = sum(p.stat().st_size for p in files_of(ckpt)) / 1e6
    time_hash(ckpt, "sha256")  # the files in the page cache, as right after a save
    row = {"checkpoint": label, "MB": round(mb, 1), "hashes (cached)": {}}
    for algorithm in algorithms:
        seconds = time_hash(ckpt, algorithm)
        row["hashes (cached)"][algorithm] = {"s": round(seconds, 3), "MB/s": round(mb / seconds)}
        print(f"  {label:<24}{mb:>9.1f} MB  {algorithm:<9} {seconds:>7.3f} s  {mb / seconds:>7.0f} MB/s  (cached)")
    wrote, checked = time_manifest(ckpt)
    row["manifest sha256 (cached)"] = {"write_s": round(wrote, 3), "verify_s": round(checked, 3)}
    print(f"  {label:<24}{mb:>9.1f} MB  manifest  write {wrote:.3f} s + verify {checked:.3f} s  (sha256, cached)")
    if cold and drop_from_cache(ckpt):
        start = time.perf_counter()
        from musclebob_helpers.run_dir import manifest_problems

        assert manifest_problems(ckpt) == []
        seconds = time.perf_counter() - start
        row["manifest sha256 verify (not cached)"] = {"s": round(seconds, 3), "MB/s": round(mb / seconds)}
        print(f"  {label:<24}{mb:>9.1f} MB  manifest  verify {seconds:.3f} s, {mb / seconds:.0f} MB/s  (not cached)")
    return row


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--skip-full", action="store_true", help="leave out the ~6 GB full checkpoint")
    parser.add_argument("--dir", default=None, help="where to write the checkpoints (default: a temporary folder)")
    parser.add_argument("--json", default=None, help="also write the figures to this file")
    args = parser.parse_args(argv)
    import hashlib

    try:
        import xxhash  # noqa: F401 - installed with datasets (not a dependency of ours)

        algorithms = (*ALGORITHMS, "xxh3_128")
    except ImportError:
        algorithms = ALGORITHMS
    algorithms = tuple(a for a in algorithms if a == "xxh3_128" or a in hashlib.algorithms_available)
    print(f"{os.cpu_count()} CPUs, Python {sys.version.split()[0]}; MB = 1e6 bytes")
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-hash-", dir=args.dir) as tmp:
        tmp = Path(tmp)
        rows.append(measure("tiny (real save)", tiny_checkpoint(tmp), algorithms, cold=True))
        rows.append(measure("Qwen2.5-0.5B LoRA", synthetic_checkpoint(tmp, lora=True), algorithms, cold=True))
        if not args.skip_full:
            rows.append(measure("Qwen2.5-0.5B full", synthetic_checkpoint(tmp, lora=False), algorithms, cold=True))
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
