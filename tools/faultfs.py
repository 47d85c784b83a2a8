#!/usr/bin/env python3
"""faultfs: a FUSE pass-through file system that fails or slows on demand, the test stand-in for Google Drive.

    python tools/faultfs.py BACKING MOUNTPOINT --control FILE      # foreground, until unmounted or SIGTERM
    fusermount3 -u MOUNTPOINT                                      # stop it

Everything under MOUNTPOINT is BACKING's, read and written through real file descriptors on BACKING's files. The
mount shows in /proc/mounts as ``faultfs MOUNTPOINT fuse.faultfs``, a FUSE mount like Colab's Drive
(``drive /content/drive fuse.drive``). What goes wrong is set live in the JSON control FILE (keep it outside the
mount), re-read whenever it changes (checked by a stat of it per operation: ~5 us, against the ~350 us a stat
through the mount costs here):

    {"fail": "none", "errno": 107, "latency_ms": 0, "write_mbps": 0, "fail_after_bytes": null, "paths": []}

- ``fail``: ``none``; ``all``: every operation, stat of the mountpoint included, fails with ``errno`` (Drive gone:
  107 ENOTCONN, 5 EIO, 116 ESTALE); ``writes``: only what changes something fails (create, write, truncate and an
  open with O_TRUNC, rename, mkdir, unlink, rmdir, chmod, chown, utimens, fsync, flush of a handle that wrote,
  symlink, link), reads and stat work: a full quota (122 EDQUOT, 28 ENOSPC) or a read-only Drive (30 EROFS).
- ``errno``: a number or a name (``"EDQUOT"``).
- ``fail_after_bytes``: the failure starts only once this many bytes have been written since the control file
  last changed; the write that crosses the mark is cut short there (a copy stops midway, as a quota runs out).
  With ``fail: none`` it means ``writes``.
- ``latency_ms``: each create, rename, fsync, unlink, mkdir, rmdir, and the flush and release of a handle that
  wrote, sleeps this long first (Drive: ~30 ms).
- ``write_mbps``: writes share this throughput (MB/s, all files together; Drive: ~30). 0: unthrottled.
- ``paths``: fnmatch patterns on the path inside the mount (``*`` crosses ``/``; ``"*checkpoint-*"``): ``fail``,
  ``fail_after_bytes`` and ``latency_ms`` then apply only to matching paths. Empty: everything.

What it did is counted in ``FILE.stats.json``: ``failed`` and ``delayed`` per operation and ``throttled_writes``,
written as each happens (current when the call that met the fault returns); ``bytes_written``, within 0.2 s.

Kernel caches are off (attribute, entry and negative timeouts 0), so a fault shows at once; reads of a file
already open may still come from the page cache. Locks (flock, fcntl) are the kernel's local ones: faultfs
implements no lock operation, as a FUSE file system that does not is handled. Unlinking an open file removes it
at once (``hard_remove``: no ``.fuse_hidden`` files left to block an rmtree). Release (the last close, which the
kernel sends after close() returned) never fails: its result is ignored anyway, and the backing fd must close.
rename's flags (RENAME_NOREPLACE, RENAME_EXCHANGE) are dropped by mfusepy 3.1: a plain rename is done. Unthrottled
it writes ~200 MB/s here (2 shared cores).

From Python (tests, benchmarks)::

    with FaultFS(backing, mountpoint) as fs:         # mounted on entry, unmounted on exit whatever happened
        fs.set(fail="all", errno=errno.ENOTCONN)     # merged into the current settings
        fs.heal()                                    # all back to defaults
"""

from __future__ import annotations

import argparse
import errno as errnos
import fnmatch
import json
import logging
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

DEFAULTS = {
    "fail": "none",
    "errno": errnos.ENOTCONN,
    "latency_ms": 0,
    "write_mbps": 0,
    "fail_after_bytes": None,
    "paths": [],
}
FAIL_MODES = ("none", "all", "writes")
FSNAME = "faultfs"  # /proc/mounts: "faultfs MOUNTPOINT fuse.faultfs ..."

log = logging.getLogger("faultfs")


def normalize(settings: dict) -> dict:
    """The control file's settings with defaults filled and checked; a ValueError names what is wrong."""
    unknown = set(settings) - set(DEFAULTS)
    if unknown:
        raise ValueError(f"unknown faultfs settings {sorted(unknown)}; known: {sorted(DEFAULTS)}")
    out = {**DEFAULTS, **settings}
    if out["fail"] not in FAIL_MODES:
        raise ValueError(f"fail must be one of {FAIL_MODES}, not {out['fail']!r}")
    code = out["errno"]
    if isinstance(code, str):
        if not code.isupper() or not isinstance(getattr(errnos, code, None), int):
            raise ValueError(f"no errno named {code!r}")
        code = getattr(errnos, code)
    if not isinstance(code, int) or code <= 0:
        raise ValueError(f"errno must be a positive number or a name, not {out['errno']!r}")
    out["errno"] = code
    if isinstance(out["paths"], str):
        out["paths"] = [out["paths"]]
    for key in ("latency_ms", "write_mbps"):
        if not isinstance(out[key], (int, float)) or out[key] < 0:
            raise ValueError(f"{key} must be a number >= 0, not {out[key]!r}")
    if out["fail_after_bytes"] is not None and (
        not isinstance(out["fail_after_bytes"], int) or out["fail_after_bytes"] < 0
    ):
        raise ValueError(f"fail_after_bytes must be null or an integer >= 0, not {out['fail_after_bytes']!r}")
    return out


def write_json_atomically(path: Path, data: dict) -> None:
    """Write ``data`` to ``path`` through a temporary file and a rename: a reader sees the old file or the new one,
    and the new inode tells faultfs it changed even within one mtime tick."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    with os.fdopen(fd, "w") as f:
        json.dump(data, f)
    os.replace(tmp, path)


def damage_inside(path, nbytes: int = 200_000) -> tuple[int, int]:
    """Invert ``nbytes`` bytes in the middle of the file at ``path``, its length, head and tail kept: a checkpoint
    damaged inside (its header still parses, its sizes still match). At most half the file is touched. Returns the
    (offset, length) damaged; every byte in it now differs from before."""
    size = os.path.getsize(path)
    length = min(nbytes, size // 2)
    offset = (size - length) // 2
    fd = os.open(path, os.O_RDWR)
    try:
        data = os.pread(fd, length, offset)
        os.pwrite(fd, bytes(b ^ 0xFF for b in data), offset)
        os.fsync(fd)
    finally:
        os.close(fd)
    return offset, length


# --- the server ---------------------------------------------------------------------------------------------------


def make_operations(backing: str, control: str, stats: str):
    """The mfusepy Operations of a faultfs over ``backing`` (imported here: ``--help`` and the client need no FUSE)."""
    import mfusepy
    from mfusepy import FuseOSError

    class FaultOps(mfusepy.Operations):
        use_ns = True  # utimens gets nanoseconds (mfusepy warns otherwise)

        def __init__(self):
            self.backing = os.path.realpath(backing)
            self.control = control
            self.stats_path = stats
            self.mutex = threading.Lock()
            self.control_key = None
            self.settings = normalize({})
            self.written_since_change = 0  # bytes, for fail_after_bytes
            self.tripped = False
            self.handle_paths = {}  # fd -> the path it was opened by
            self.wrote = set()  # fds of handles that wrote (flush and release of them fail and sleep)
            self.next_free = 0.0  # write_mbps: when the shared "link" is free again (time.monotonic)
            self.counts = {"failed": {}, "delayed": {}, "throttled_writes": 0, "bytes_written": 0}
            threading.Thread(target=self.dump_now_and_then, daemon=True).start()

        # -- control and bookkeeping --

        def current(self) -> dict:
            """The control file's settings, re-read when its inode, mtime or size changed (a stat per call)."""
            try:
                st = os.stat(self.control)
                key = (st.st_ino, st.st_mtime_ns, st.st_size)
            except FileNotFoundError:
                key = None
            if key != self.control_key:
                with self.mutex:
                    if key != self.control_key:
                        try:
                            with open(self.control) as f:
                                settings = normalize(json.load(f))
                        except FileNotFoundError:
                            settings = normalize({})
                        except (OSError, ValueError) as e:  # a bad control file: keep the last good settings
                            log.error("faultfs: control file %s ignored: %s", self.control, e)
                            settings = self.settings
                        self.settings, self.control_key = settings, key
                        self.written_since_change, self.tripped = 0, False
            return self.settings

        def dump_stats(self) -> None:  # under self.mutex
            tmp = f"{self.stats_path}.{threading.get_ident()}.tmp"
            with open(tmp, "w") as f:
                json.dump(self.counts, f)
            os.replace(tmp, self.stats_path)

        def dump_now_and_then(self) -> None:
            """bytes_written, which changes with every write, reaches the file within 0.2 s (a dump per write
            would cost more than the write)."""
            dumped = None
            while True:
                time.sleep(0.2)
                with self.mutex:
                    if self.counts["bytes_written"] != dumped:
                        dumped = self.counts["bytes_written"]
                        self.dump_stats()

        def count(self, kind: str, op: str) -> None:
            with self.mutex:
                self.counts[kind][op] = self.counts[kind].get(op, 0) + 1
                self.dump_stats()

        @staticmethod
        def matches(settings: dict, *paths) -> bool:
            if not settings["paths"]:
                return True
            # An operation on an unlinked file's handle has no path: it counts as matching.
            return any(p is None or any(fnmatch.fnmatchcase(p.lstrip("/"), pat) for pat in settings["paths"])
                       for p in paths)  # fmt: skip

        def guard(self, op: str, *paths, mutating: bool = False, delayed: bool = False) -> dict:
            """Fail or sleep as the settings say, before ``op`` on ``paths`` runs; returns the settings."""
            s = self.current()
            hit = self.matches(s, *paths)
            mode = s["fail"] if s["fail"] != "none" or s["fail_after_bytes"] is None else "writes"
            if s["fail_after_bytes"] is not None and not self.tripped:
                mode = "none"
            if hit and (mode == "all" or (mode == "writes" and mutating)):
                self.count("failed", op)
                raise FuseOSError(s["errno"])
            if hit and delayed and s["latency_ms"]:
                time.sleep(s["latency_ms"] / 1000)
                self.count("delayed", op)
            return s

        def path_of(self, path, fi):
            """The path an operation is about: with nullpath_ok a handle's operations come without one, so the
            path the handle was opened by (its name before any rename since; enough for ``paths`` patterns)."""
            return path if path is not None or fi is None else self.handle_paths.get(fi.fh)

        def full(self, path: str) -> str:
            if path is None:
                raise FuseOSError(errnos.ENOENT)  # a path operation on a file unlinked meanwhile
            return os.path.join(self.backing, path.lstrip("/"))

        # -- configuration --

        def init_with_config(self, conn_info, config):
            if conn_info is not None:
                # Plain READDIR: with READDIRPLUS libfuse stats every entry, so a listing would fail as soon as one
                # entry matches ``paths``, and pay a getattr per entry that the zero timeouts throw away anyway.
                conn_info.want &= ~(FUSE_CAP_READDIRPLUS | FUSE_CAP_READDIRPLUS_AUTO)
            if config is not None:
                # No kernel caching of attributes or names: a fault set now shows on the very next stat.
                config.entry_timeout = config.negative_timeout = config.attr_timeout = 0.0
                config.hard_remove = 1  # no .fuse_hidden files (they would make an rmtree fail)
                config.nullpath_ok = 1  # handle operations on an unlinked file then come without a path

        # -- metadata --

        def getattr(self, path, fh=None):
            self.guard("getattr", self.path_of(path, fh))
            st = os.fstat(fh.fh) if fh is not None else os.lstat(self.full(path))
            attrs = {k: getattr(st, k) for k in ("st_mode", "st_nlink", "st_uid", "st_gid", "st_size", "st_ino")}
            attrs.update(st_atime=st.st_atime_ns, st_mtime=st.st_mtime_ns, st_ctime=st.st_ctime_ns)
            attrs.update(st_blocks=st.st_blocks, st_blksize=st.st_blksize)
            return attrs

        def access(self, path, amode):
            self.guard("access", path)
            if not os.access(self.full(path), amode):
                raise FuseOSError(errnos.EACCES)

        def opendir(self, path):
            self.guard("opendir", path)
            fd = os.open(self.full(path), os.O_RDONLY | os.O_DIRECTORY)  # readdir comes without a path
            self.handle_paths[fd] = path
            return fd

        def readdir(self, path, fh):
            self.guard("readdir", path if path is not None else self.handle_paths.get(fh))
            return [".", "..", *os.listdir(fh)]

        def releasedir(self, path, fh):
            self.handle_paths.pop(fh, None)
            os.close(fh)

        def readlink(self, path):
            self.guard("readlink", path)
            return os.readlink(self.full(path))

        def statfs(self, path):
            self.guard("statfs", path)
            sv = os.statvfs(self.full(path))
            keys = ("f_bsize", "f_frsize", "f_blocks", "f_bfree", "f_bavail", "f_files", "f_ffree", "f_favail")
            return {k: getattr(sv, k) for k in (*keys, "f_namemax")}

        def chmod(self, path, mode, fh=None):
            self.guard("chmod", self.path_of(path, fh), mutating=True)
            os.chmod(fh.fh if fh is not None else self.full(path), mode)

        def chown(self, path, uid, gid):
            self.guard("chown", path, mutating=True)
            os.lchown(self.full(path), uid, gid)

        def utimens(self, path, times=None, fh=None):
            self.guard("utimens", self.path_of(path, fh), mutating=True)
            target = fh.fh if fh is not None else self.full(path)
            if times:  # UTIME_NOW: now; UTIME_OMIT: as it is
                st, now = os.stat(target), time.time_ns()
                kept = (st.st_atime_ns, st.st_mtime_ns)
                times = tuple(now if t == "now" else old if t == "omit" else t for t, old in zip(times, kept))
            os.utime(target, ns=times) if times else os.utime(target)

        def truncate(self, path, length, fh=None):
            self.guard("truncate", self.path_of(path, fh), mutating=True)
            os.ftruncate(fh.fh, length) if fh is not None else os.truncate(self.full(path), length)

        def mkdir(self, path, mode):
            self.guard("mkdir", path, mutating=True, delayed=True)
            os.mkdir(self.full(path), mode)

        def rmdir(self, path):
            self.guard("rmdir", path, mutating=True, delayed=True)
            os.rmdir(self.full(path))

        def unlink(self, path):
            self.guard("unlink", path, mutating=True, delayed=True)
            os.unlink(self.full(path))

        def rename(self, old, new):
            self.guard("rename", old, new, mutating=True, delayed=True)
            os.rename(self.full(old), self.full(new))  # over an existing file, as os.replace does

        def symlink(self, target, source):
            self.guard("symlink", target, mutating=True)
            os.symlink(source, self.full(target))

        def link(self, target, source):
            self.guard("link", target, source, mutating=True)
            os.link(self.full(source), self.full(target))

        # -- files (raw_fi: fi.fh is a real fd on the backing file) --

        def open(self, path, fi):
            self.guard("open", path, mutating=bool(fi.flags & os.O_TRUNC))
            fi.fh = os.open(self.full(path), fi.flags & ~(os.O_CREAT | os.O_EXCL))
            self.handle_paths[fi.fh] = path
            return 0

        def create(self, path, mode, fi):
            self.guard("create", path, mutating=True, delayed=True)
            fi.fh = os.open(self.full(path), fi.flags | os.O_CREAT, mode)
            self.handle_paths[fi.fh] = path
            self.wrote.add(fi.fh)
            return 0

        def read(self, path, size, offset, fi):
            self.guard("read", self.path_of(path, fi))
            return os.pread(fi.fh, size, offset)

        def write(self, path, data, offset, fi):
            path = self.path_of(path, fi)
            s = self.guard("write", path, mutating=True)
            if s["fail_after_bytes"] is not None and self.matches(s, path):
                with self.mutex:
                    room = s["fail_after_bytes"] - self.written_since_change
                    if len(data) >= room:
                        self.tripped = True
                        if room <= 0:
                            self.counts["failed"]["write"] = self.counts["failed"].get("write", 0) + 1
                            self.dump_stats()
                            raise FuseOSError(s["errno"])
                        data = data[:room]  # a short write: the caller's next write meets the failure
                    self.written_since_change += len(data)
            if s["write_mbps"]:
                with self.mutex:  # reserve this write's share of the link, then sleep outside the lock
                    start = max(time.monotonic(), self.next_free)
                    self.next_free = start + len(data) / (s["write_mbps"] * 1e6)
                    self.counts["throttled_writes"] += 1
                time.sleep(max(0.0, self.next_free - time.monotonic()))
            written = os.pwrite(fi.fh, data, offset)
            self.wrote.add(fi.fh)
            with self.mutex:
                self.counts["bytes_written"] += written
                if s["write_mbps"]:
                    self.dump_stats()
            return written

        def fsync(self, path, datasync, fi):
            self.guard("fsync", self.path_of(path, fi), mutating=True, delayed=True)
            (os.fdatasync if datasync else os.fsync)(fi.fh)

        def flush(self, path, fi):
            wrote = fi.fh in self.wrote
            self.guard("flush", self.path_of(path, fi), mutating=wrote, delayed=wrote)

        def release(self, path, fi):
            # The fd is closed whatever the settings (the kernel ignores release's result anyway); only the delay.
            wrote = fi.fh in self.wrote
            path = self.path_of(path, fi)
            self.wrote.discard(fi.fh)
            self.handle_paths.pop(fi.fh, None)
            os.close(fi.fh)
            if wrote:
                s = self.current()
                if s["latency_ms"] and self.matches(s, path):
                    time.sleep(s["latency_ms"] / 1000)
                    self.count("delayed", "release")

    return FaultOps()


FUSE_CAP_READDIRPLUS, FUSE_CAP_READDIRPLUS_AUTO = 1 << 13, 1 << 14  # fuse_common.h
UTIME_SPECIAL = {(1 << 30) - 1: "now", (1 << 30) - 2: "omit"}  # utimensat's UTIME_NOW, UTIME_OMIT (Linux)


def fuse_class():
    """mfusepy's FUSE, with the handle passed on for truncate, chmod and utimens: with nullpath_ok (set in
    init_with_config) an ftruncate, fchmod or futimens comes without a path, and mfusepy 3.1 drops the handle."""
    import mfusepy

    class FaultFUSE(mfusepy.FUSE):
        def decode(self, path):
            return None if path is None else path.decode(self.encoding, self.errors)

        def truncate_fuse_3(self, path, length, fip):
            return self.operations.truncate(self.decode(path), length, fip.contents if fip else None)

        def chmod_fuse_3(self, path, mode, fip):
            return self.operations.chmod(self.decode(path), mode, fip.contents if fip else None)

        def utimens_fuse_3(self, path, buf, fip):
            times = None
            if buf:  # nanoseconds, or "now" / "omit" for utimensat's UTIME_NOW / UTIME_OMIT (touch sends them)
                times = tuple(UTIME_SPECIAL.get(ts.tv_nsec, ts.tv_sec * 10**9 + ts.tv_nsec)
                              for ts in (buf.contents.actime, buf.contents.modtime))  # fmt: skip
            return self.operations.utimens(self.decode(path), times, fip.contents if fip else None)

    return FaultFUSE


def watch_parent(parent: int, mountpoint: str) -> None:
    """Unmount when the process that started us is gone (a test process killed outright leaves no mount behind)."""
    while os.getppid() == parent:
        time.sleep(0.5)
    subprocess.run(["fusermount3", "-u", "-z", mountpoint], capture_output=True)


def serve(backing: str, mountpoint: str, control: str, stats: str | None = None, debug: bool = False) -> None:
    ops = make_operations(backing, control, stats or f"{control}.stats.json")
    try:
        # fsname/subtype: the /proc/mounts line a FUSE-mount detector sees; multithreaded (the default), as the
        # training process and a background copier use the mount at once.
        fuse_class()(ops, mountpoint, raw_fi=True, foreground=True, debug=debug, fsname=FSNAME, subtype=FSNAME)
    except RuntimeError:
        # libfuse 3.14 ends with an error when fusermount3 -u unmounted it first (its own unmount then fails):
        # that is the ordinary way to stop it.
        if mounted_fstype(mountpoint) is not None:
            raise


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("backing", help="the folder whose files the mount shows")
    parser.add_argument("mountpoint", help="an empty folder to mount on")
    parser.add_argument("--control", required=True, help="the JSON control file (outside the mount)")
    parser.add_argument("--stats", help="where the counts go (default: CONTROL.stats.json)")
    parser.add_argument("--exit-with-parent", type=int, metavar="PID", help="unmount when process PID is gone")
    parser.add_argument("--debug", action="store_true", help="libfuse's trace of every operation, on stderr")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.debug else logging.WARNING)
    if args.exit_with_parent:
        threading.Thread(target=watch_parent, args=(args.exit_with_parent, args.mountpoint), daemon=True).start()
    serve(args.backing, args.mountpoint, args.control, args.stats, args.debug)
    return 0


# --- the client ---------------------------------------------------------------------------------------------------


def mounted_fstype(mountpoint) -> str | None:
    """The fstype /proc/mounts gives ``mountpoint`` (``fuse.faultfs``), None when nothing is mounted there. Read
    from the kernel's table, never by a stat through the mount (which a dead or failing mount answers with an
    error, or a stuck one never)."""
    target = os.path.realpath(mountpoint)
    fstype = None
    with open("/proc/self/mounts") as f:
        for line in f:
            fields = line.split()
            # /proc/mounts writes a space in a path as \040 (tab, newline, backslash likewise, in octal).
            where = re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), fields[1])
            if where == target:
                fstype = fields[2]  # the last one listed is the one on top
    return fstype


def stats_path(control) -> Path:
    """Where ``FaultFS`` has the server write its counts, beside the control file."""
    return Path(f"{control}.stats.json")


def read_stats(path) -> dict:
    """The server's counts in ``path`` (see the module docstring); zeros before the first fault."""
    try:
        return json.loads(Path(path).read_text())
    except FileNotFoundError:
        return {"failed": {}, "delayed": {}, "throttled_writes": 0, "bytes_written": 0}


class FaultFS:
    """A faultfs server in a subprocess, mounted while the object is entered.

    ``control`` defaults to ``MOUNTPOINT.faultfs.json`` beside the mountpoint; the server's stderr goes to
    ``CONTROL.log`` (quoted in the error when it does not come up; ``debug``: with libfuse's trace of every call)."""

    def __init__(self, backing, mountpoint, control=None, timeout: float = 15.0, debug: bool = False):
        self.backing, self.mountpoint = Path(backing), Path(mountpoint)
        self.control = Path(control) if control else self.mountpoint.with_name(self.mountpoint.name + ".faultfs.json")
        self.stats_path = stats_path(self.control)
        self.log_path = Path(f"{self.control}.log")
        self.timeout, self.debug = timeout, debug
        self.settings = normalize({})
        self.process: subprocess.Popen | None = None

    def __enter__(self) -> FaultFS:
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.unmount()

    def start(self) -> None:
        self.backing.mkdir(parents=True, exist_ok=True)
        self.mountpoint.mkdir(parents=True, exist_ok=True)
        write_json_atomically(self.control, self.settings)
        self.stats_path.unlink(missing_ok=True)
        command = [sys.executable, str(Path(__file__).resolve()), str(self.backing), str(self.mountpoint)]
        command += ["--control", str(self.control), "--stats", str(self.stats_path)] + ["--debug"] * self.debug
        with open(self.log_path, "wb") as log_file:
            # Its own session: a Ctrl-C meant for the tests reaches it only through unmount(), in order.
            self.process = subprocess.Popen(
                [*command, "--exit-with-parent", str(os.getpid())],
                stdout=log_file,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        deadline = time.monotonic() + self.timeout
        while mounted_fstype(self.mountpoint) != f"fuse.{FSNAME}":
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.unmount()
                why = "exited" if self.process.returncode is not None else f"did not mount in {self.timeout:g} s"
                raise RuntimeError(f"faultfs on {self.mountpoint} {why}; its log:\n{self.log_path.read_text()}")
            time.sleep(0.02)

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process else None

    def set(self, **fields) -> dict:
        """Merge ``fields`` into the current settings and write them; the next operation on the mount obeys them."""
        self.settings = normalize({**self.settings, **fields})
        write_json_atomically(self.control, self.settings)
        return self.settings

    def heal(self) -> dict:
        """Every setting back to its default: no failures, no latency, no throttle."""
        self.settings = normalize({})
        write_json_atomically(self.control, self.settings)
        return self.settings

    def stats(self) -> dict:
        """What the server counted so far (see the module docstring); zeros before the first fault."""
        return read_stats(self.stats_path)

    def mounted(self) -> bool:
        return mounted_fstype(self.mountpoint) is not None

    def unmount(self) -> None:
        """Unmount and stop the server, whatever state either is in: healed first (so the last flushes succeed),
        then ``fusermount3 -u``, lazily (``-uz``) when busy, then the server stopped by signal if it lingers.
        Idempotent."""
        alive = self.process is not None and self.process.poll() is None
        if alive:
            self.heal()
        lazily = False
        if self.mounted():
            if subprocess.run(["fusermount3", "-u", str(self.mountpoint)], capture_output=True).returncode:
                lazily = True  # busy: detached now, but the server would serve the open files until they close
                subprocess.run(["fusermount3", "-u", "-z", str(self.mountpoint)], capture_output=True)
        if self.mounted():  # fusermount3 refused (not ours, or missing): the kernel's lazy unmount
            lazily = True
            subprocess.run(["umount", "-l", str(self.mountpoint)], capture_output=True)
        if self.process is not None:
            # After a clean unmount the server ends by itself; after a lazy one SIGTERM ends it at once (what is
            # still open there then fails with ENOTCONN, like a Drive gone).
            for stop in ((signal.SIGTERM,) if lazily else (None, signal.SIGTERM)) + (signal.SIGKILL,):
                if stop is not None and self.process.poll() is None:
                    self.process.send_signal(stop)
                try:
                    self.process.wait(timeout=5)
                    break
                except subprocess.TimeoutExpired:
                    continue
        if self.mounted():
            raise RuntimeError(f"faultfs could not unmount {self.mountpoint}")


def fuse_missing() -> str | None:
    """Why a faultfs cannot be mounted here (no /dev/fuse, fusermount3 or mfusepy), or None when it can."""
    if not os.path.exists("/dev/fuse"):
        return "no /dev/fuse"
    if shutil.which("fusermount3") is None:
        return "no fusermount3 (Debian: apt-get install fuse3)"
    try:
        import mfusepy  # noqa: F401 (loads libfuse3 too)
    except (ImportError, OSError) as e:
        return f"mfusepy unusable: {e} (pip install mfusepy; Debian: apt-get install fuse3)"
    return None


if __name__ == "__main__":
    sys.exit(main())
