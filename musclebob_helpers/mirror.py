"""The run folder as a verified mirror of a working folder on local disk, for run folders that can fail.

On Google Drive or another FUSE/network mount (``run_dir.work_folder``) training writes locally and a ``Mirror``
copies to the run folder from a background thread: checkpoints verified into place, live files every
``interval`` seconds, ``final_validation.json`` last. A failing run folder only holds the copy back, in one line;
training never waits on it (docs/drive.md)."""

from __future__ import annotations

import errno
import hashlib
import os
import shutil
import stat
import threading
import time
from pathlib import Path

from . import run_dir
from .io import TEMP_SUFFIX, create_temp_file, make_temp_dir, read_json
from .lock import LOCK_FILE
from .run_dir import COPYING_PREFIX, DELETING_PREFIX, FINAL_FILE, MANIFEST_FILE, MANIFEST_HASH, RunFolder, file_hash

_INTERVAL_S = float(os.environ.get("MUSCLEBOB_MIRROR_INTERVAL", "30"))  # live files: at most this stale on Drive
_RETRY_S = float(os.environ.get("MUSCLEBOB_MIRROR_RETRY", "10"))  # a failing run folder: tried again this often
# at the end: a Drive hiccup heals in seconds, a lost mount never by itself (the user's command finishes it)
_FINAL_WAIT_S = float(os.environ.get("MUSCLEBOB_MIRROR_FINAL_WAIT", "60"))
_CHUNK = 8 * 2**20  # copy and hash in 8 MB reads: a multi-GB optimizer never sits in memory whole
_HASH = MANIFEST_HASH  # the checkpoint manifests' hash: a copy is compared with the manifest as it is made
_COPY_THREADS = 4  # files copied at once: Drive's latency is per file (rclone and gsutil copy in parallel too)


def _parallel(fn, items: list) -> list:
    """``[fn(item) for item in items]`` on up to ``_COPY_THREADS`` threads, in order; the first failure is raised
    once every copy has ended."""
    if len(items) <= 1:
        return [fn(item) for item in items]
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=min(_COPY_THREADS, len(items)), thread_name_prefix="musclebob-copy") as pool:
        futures = [pool.submit(fn, item) for item in items]
    failures = [f.exception() for f in futures if f.exception() is not None]
    if failures:
        raise next((e for e in failures if isinstance(e, FolderFailed)), failures[0])
    return [f.result() for f in futures]


class FolderFailed(Exception):
    """The run folder's file system failed (``err``): the copy falls behind, training goes on."""

    def __init__(self, err: OSError):
        super().__init__(err)
        self.err = err

    def reason(self) -> str:
        name = errno.errorcode.get(self.err.errno or 0, "")
        return f"{self.err.strerror or self.err}" + (f", {name}" if name else "")


def _dst(call, *args):
    """A call on the run folder's side: any OSError there is the run folder failing."""
    try:
        return call(*args)
    except OSError as err:
        raise FolderFailed(err) from err


def _make_parents(base: Path, rels: list[Path]) -> None:
    for folder in sorted({rel.parent for rel in rels} - {Path(".")}):
        _dst((base / folder).mkdir, 0o777, True, True)


def _copy_verified(
    src: Path, dst_dir: Path, name: str | None = None, durable: bool = False, litter: set[Path] | None = None
) -> str:
    """Copy ``src`` into ``dst_dir`` through a temporary file, read it back and compare hashes, rename into
    place; returns the hash. ``FolderFailed`` when the destination fails (closing too: FUSE may report a failed
    upload only then), ``FileNotFoundError`` when ``src`` is gone. ``litter`` gets a temporary a failing
    destination would not let go."""
    target = dst_dir / (name or src.name)
    fd, tmp = _dst(create_temp_file, target)
    try:
        digest = hashlib.new(_HASH)
        try:
            with open(src, "rb") as fin:
                while chunk := fin.read(_CHUNK):
                    digest.update(chunk)
                    view = memoryview(chunk)
                    while view:  # unbuffered: every write's failure is seen here, none is left to a buffer's close
                        view = view[_dst(os.write, fd, view) :]
            if durable:
                _dst(os.fsync, fd)
        finally:
            _dst(os.close, fd)
        if _dst(file_hash, Path(tmp), _HASH) != digest.hexdigest():
            raise FolderFailed(OSError(errno.EIO, f"{target.name} read back differs from what was written"))
        _dst(os.replace, tmp, target)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        except OSError:
            if litter is not None:
                litter.add(Path(tmp))
        raise
    return digest.hexdigest()


class Mirror:
    """Copies ``folder.work`` to ``folder.path`` from a background thread: ``start``, ``checkpoint_saved`` after
    each save, ``at_step`` (what a failure is dated by), ``finish`` in the main thread. ``remount`` (Colab's Drive
    remount) is tried once before ``finish`` gives up."""

    def __init__(
        self, folder: RunFolder, keep_checkpoints: int = 0, log=print, interval: float = _INTERVAL_S, remount=None
    ):
        self.src, self.dst = folder.work, folder.path
        self.keep, self.log, self.interval, self.remount = keep_checkpoints, log, interval, remount
        self.copied: dict[str, tuple[int, int]] = {}  # file (relative) -> (size, mtime_ns) when last copied
        # checkpoints saved and not yet copied -> when they were saved (None: an earlier start's, found missing)
        self.pending: dict[Path, float | None] = {}
        self.lags: list[float] = []  # seconds from a checkpoint's save to its verified copy
        self.verified: set[str] = set()  # checkpoints this mirror copied and verified
        self.step = 0
        self.failing: tuple[FolderFailed, int] | None = None  # the failure and the step it began at
        self.outages: list[dict] = []
        self.bytes_copied = 0
        self.missing_checked = False
        self.finish_s: float | None = None  # how long the final copy took (finish)
        self.litter: set[Path] = set()  # temporaries a failing run folder would not let go: removed next pass
        self._mutex = threading.Lock()  # one pass at a time: the thread's, or finish's
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> Mirror:
        self._thread = threading.Thread(target=self._loop, name="musclebob-mirror", daemon=True)
        self._thread.start()
        return self

    def checkpoint_saved(self, ckpt: str | Path) -> None:
        self.pending[Path(ckpt)] = time.monotonic()
        self._wake.set()

    def at_step(self, step: int) -> None:
        self.step = step

    def wake(self) -> None:
        self._wake.set()

    def seed_work_folder(self) -> None:
        """Copy the run folder's files (not checkpoints) into the working folder: a resume from a
        checkpoint there (a new machine) goes on from the files that go with it."""
        for rel in sorted(p.name for p in self.dst.iterdir() if p.is_file()):
            if rel != LOCK_FILE and not rel.endswith(TEMP_SUFFIX):
                _copy_verified(self.dst / rel, self.src)
                st = (self.src / rel).stat()
                self.copied[rel] = (st.st_size, st.st_mtime_ns)  # the run folder has it already

    def _enqueue_missing_checkpoints(self) -> None:
        """Queue the working folder's checkpoints the run folder lacks, once."""
        have = {c.name for c in _dst(run_dir.list_checkpoints, self.dst)}
        self.missing_checked = True
        for ckpt in run_dir.list_checkpoints(self.src):
            if ckpt.name not in have and ckpt not in self.pending:
                self.pending[ckpt] = None

    def _loop(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(_RETRY_S if self.failing else self.interval)
            self._wake.clear()
            if not self._stop.is_set():
                try:
                    self.sync()
                except Exception as err:  # noqa: BLE001 - the thread must live on: training goes on regardless
                    self.log(f"Copying to the run folder {self.dst} failed ({type(err).__name__}: {err}); retrying.")

    def sync(self, final: bool = False) -> bool:
        """One pass: pending checkpoints, changed files (``final``: all, ``final_validation.json`` last),
        rotation. True when the run folder is up to date."""
        with self._mutex:
            try:
                self._remove_litter()
                if not self.missing_checked:
                    self._enqueue_missing_checkpoints()
                for ckpt, saved_at in sorted(self.pending.items(), key=lambda kv: run_dir.checkpoint_step(kv[0]) or 0):
                    if self._copy_checkpoint(ckpt) and saved_at is not None:
                        self.lags.append(round(time.monotonic() - saved_at, 3))
                    self.pending.pop(ckpt, None)
                self._copy_files(final)
                self._rotate()
            except (FolderFailed, OSError) as err:  # an OSError here: the local side (say, a file unreadable)
                failed = err if isinstance(err, FolderFailed) else FolderFailed(err)
                if self.failing is None:
                    self.failing = (failed, self.step)
                    self.outages.append({"from_step": self.step, "reason": failed.reason()})
                    self.log(
                        f"The run folder {self.dst} cannot be written since step {self.step} ({failed.reason()}): "
                        f"training goes on in {self.src}; the copy catches up once the folder answers again."
                    )
                return False
            if self.failing is not None:
                since = self.failing[1]
                self.failing = None
                self.outages[-1]["to_step"] = self.step
                self.log(
                    f"The run folder {self.dst} answers again: its copy caught up at step {self.step} "
                    f"(behind since step {since})."
                )
            return True

    def _remove_litter(self) -> None:
        for path in sorted(self.litter):
            try:
                is_dir = stat.S_ISDIR(_dst(os.lstat, path).st_mode)
                _dst(shutil.rmtree if is_dir else os.unlink, path)
            except FolderFailed as failed:
                if not isinstance(failed.err, FileNotFoundError):
                    raise
            self.litter.discard(path)

    def _forget(self, staging: Path) -> None:
        shutil.rmtree(staging, ignore_errors=True)
        if os.path.lexists(staging):
            self.litter.add(staging)

    def _copy_checkpoint(self, ckpt: Path) -> bool:
        """Copy one checkpoint, verified, into place; False when rotated away meanwhile or when it
        fails its manifest (then it is set aside locally, never spread)."""
        if not ckpt.is_dir():
            return False
        target = self.dst / ckpt.name
        manifest = (read_json(ckpt / MANIFEST_FILE) or {}).get("files") or {}
        staging = _dst(make_temp_dir, self.dst, f"{COPYING_PREFIX}{ckpt.name}-")
        try:
            files = sorted(p.relative_to(ckpt) for p in ckpt.rglob("*") if p.is_file())
            _make_parents(staging, files)

            def copy(rel: Path) -> str:
                return _copy_verified(ckpt / rel, staging / rel.parent, durable=True, litter=self.litter)

            for rel, digest in zip(files, _parallel(copy, files)):
                listed = manifest.get(rel.as_posix(), {}).get(_HASH)
                if listed is not None and listed != digest:
                    self._forget(staging)
                    moved = run_dir.set_aside(ckpt)
                    self.log(
                        f"Checkpoint {ckpt.name} is damaged ({rel} does not match its manifest: hash differs); kept "
                        f"as {moved.name} in {self.src}, not copied to {self.dst}."
                    )
                    return False
            self.bytes_copied += sum((ckpt / rel).stat().st_size for rel in files)
            if _dst(target.exists):  # this step saved again (a run resumed before it): the old copy goes
                _dst(run_dir.remove_checkpoint, target)
            _dst(os.rename, staging, target)
        except FileNotFoundError as err:
            self._forget(staging)
            if err.filename and str(err.filename).startswith(str(self.src)):
                return False  # rotated away in the working folder while copying: a newer one is pending
            raise FolderFailed(err) from err
        except BaseException:
            self._forget(staging)
            raise
        self.verified.add(ckpt.name)
        return True

    def _files(self) -> list[Path]:
        """The working folder's files outside checkpoints, relative; no temporaries, lock or staging folders."""
        found = []
        for root, dirs, files in os.walk(self.src):
            rel_root = Path(root).relative_to(self.src)
            if rel_root == Path("."):
                dirs[:] = [d for d in dirs if not d.startswith((COPYING_PREFIX, DELETING_PREFIX, ".", "checkpoint-"))]
            found += [
                rel_root / f
                for f in files
                if not f.endswith(TEMP_SUFFIX) and f != LOCK_FILE and not f.startswith(".musclebob-write-test-")
            ]
        return sorted(found)

    def _copy_files(self, final: bool) -> None:
        """The changed files outside checkpoints; ``final``: ``final_validation.json`` too, last."""
        changed = []
        for rel in self._files():
            try:
                st = (self.src / rel).stat()
            except FileNotFoundError:
                continue
            if self.copied.get(str(rel)) != (st.st_size, st.st_mtime_ns):
                changed.append((rel, (st.st_size, st.st_mtime_ns)))
        last = [c for c in changed if c[0] == Path(FINAL_FILE)]
        changed = [c for c in changed if c not in last]
        _make_parents(self.dst, [rel for rel, _ in changed])

        def copy(item) -> None:
            rel, key = item
            try:
                _copy_verified(self.src / rel, self.dst / rel.parent, durable=final, litter=self.litter)
            except FileNotFoundError as err:
                if err.filename and str(err.filename).startswith(str(self.src)):
                    return  # replaced meanwhile (a rename into place): the next pass copies the new one
                raise FolderFailed(err) from err
            self.copied[str(rel)] = key
            self.bytes_copied += key[0]

        _parallel(copy, changed)
        if final:
            _parallel(copy, last)

    def _rotate(self) -> None:
        """Keep the ``keep`` newest checkpoints, once the newest is one this mirror verified."""
        ckpts = _dst(run_dir.list_checkpoints, self.dst)
        if self.keep <= 0 or len(ckpts) <= self.keep or ckpts[-1].name not in self.verified:
            return
        for old in ckpts[: -self.keep]:
            _dst(run_dir.remove_checkpoint, old)

    def finish(self, wait_s: float = _FINAL_WAIT_S) -> bool:
        """Stop the thread and copy everything, retried for ``wait_s`` (and after one ``remount``) while the
        run folder fails. True when it holds the whole run, verified."""
        self._stop.set()
        self._wake.set()
        began = time.monotonic()
        if self._thread is not None:
            self._thread.join()
        deadline = began + wait_s
        remounted = False
        while True:
            if self.sync(final=True):
                self.finish_s = round(time.monotonic() - began, 3)
                return True
            if not remounted and self.remount is not None:
                remounted = True
                try:
                    self.remount()
                except Exception as err:  # noqa: BLE001 - a remount that fails changes nothing: say so, go on
                    self.log(f"Remounting Google Drive failed ({err}).")
                continue
            if time.monotonic() >= deadline:
                self.finish_s = round(time.monotonic() - began, 3)
                return False
            time.sleep(min(_RETRY_S, max(0.1, deadline - time.monotonic())))

    def summary(self) -> dict:
        return {
            "run_folder": str(self.dst),
            "work_folder": str(self.src),
            "checkpoints_copied": sorted(self.verified, key=lambda n: int(n.split("-")[1])),
            "checkpoint_lag_s": self.lags,
            "bytes_copied": self.bytes_copied,
            "final_copy_s": self.finish_s,
            "outages": self.outages,
            "caught_up": self.failing is None,
        }


def behind_line(mirror: Mirror) -> str:
    """Why the run folder is not complete, for the line that says where the run is."""
    failed, since = mirror.failing if mirror.failing else (None, mirror.step)
    return f"it cannot be written ({failed.reason() if failed else 'unknown'}) since step {since}"


def make_mirror_callback(mirror: Mirror):
    """The trainer's side: the step, and each checkpoint once saved (after its manifest)."""
    from transformers import TrainerCallback

    class MirrorCheckpoints(TrainerCallback):
        def on_train_begin(self, args, state, control, **kwargs):
            mirror.at_step(state.global_step)
            if state.is_world_process_zero:
                mirror.start()

        def on_step_end(self, args, state, control, **kwargs):
            mirror.at_step(state.global_step)

        def on_save(self, args, state, control, **kwargs):
            if state.is_world_process_zero:
                mirror.checkpoint_saved(Path(args.output_dir) / f"checkpoint-{state.global_step}")

    return MirrorCheckpoints()
