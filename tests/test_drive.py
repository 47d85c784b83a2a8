"""Google Drive's own failures, on a real FUSE file system under the run folder (``tools/faultfs.py``).

The run folder is on a faultfs mount, as Colab's Drive is a FUSE mount: the run trains in a working folder on local
disk and mirrors it there (``musclebob_helpers/mirror.py``). The file system then fails with each errno Drive
shows (a disconnect: ENOTCONN; EIO, ESTALE; a full quota: EDQUOT, ENOSPC; read-only: EROFS), everywhere or for
writes only, from a chosen step (``tests/fault_runner.py drive:N``), slows down, or cuts a large copy midway. Each
case asserts the exit code, the lines printed, a reward history and final weights identical to an uninterrupted
run's, the final model in the run folder and nothing partial there.
"""

from __future__ import annotations

import errno
import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
from test_faults import KILL_ARGS, PROG, ROOT, assert_same_as_reference, uninterrupted_run

from musclebob_helpers.run_dir import COPYING_PREFIX, checkpoint_problems, list_checkpoints

pytestmark = pytest.mark.slow  # each case starts training processes on a FUSE mount

# The mirror's clocks, shortened so a 4-step run of a few seconds sees several copy passes and a failing folder
# retried in it; a run folder still failing at the end is waited for one second.
MIRROR_ENV = {"MUSCLEBOB_MIRROR_INTERVAL": "0.2", "MUSCLEBOB_MIRROR_RETRY": "0.2", "MUSCLEBOB_MIRROR_FINAL_WAIT": "1"}
HEAL = {"fail": "none", "errno": errno.ENOTCONN, "latency_ms": 0, "write_mbps": 0, "fail_after_bytes": None}


@pytest.fixture(scope="module")
def reference(tmp_path_factory, tiny_path):
    """The uninterrupted run on local disk every Drive case must end up identical to."""
    return uninterrupted_run(tmp_path_factory.mktemp("drive"))


def run_on(faultfs, tmp_path, schedule=None, *extra, command=None):
    """The training CLI with its run folder on ``faultfs``, the drive faults of ``schedule`` ({step: settings})
    applied as those steps begin (``fault_runner.py drive:N``); ``command``: another command line to run so."""
    env = dict(
        os.environ,
        **MIRROR_ENV,
        MUSCLEBOB_WORK_ROOT=str(tmp_path / "local-disk"),
        MUSCLEBOB_FAULTFS_CONTROL=str(faultfs.control),
        MUSCLEBOB_FAULTFS_SCHEDULE=json.dumps({str(k): {**HEAL, **v} for k, v in (schedule or {}).items()}),
    )
    env.setdefault("OMP_NUM_THREADS", "1")
    out = faultfs.mountpoint / "run"
    if command is None:
        first = min(schedule) if schedule else 1
        runner = [str(ROOT / "tests" / "fault_runner.py"), f"drive:{first}"] if schedule else [str(ROOT / PROG)]
        command = [sys.executable, *runner, *KILL_ARGS, "--output-dir", str(out), *extra]
    proc = subprocess.run(command, capture_output=True, text=True, env=env, cwd=ROOT, timeout=600)
    return out, proc


def assert_nothing_partial(out: Path):
    """The run folder holds no half file under any name, and every checkpoint in it is intact."""
    assert not list(out.rglob("*.tmp")), list(out.rglob("*.tmp"))
    assert not list(out.glob(COPYING_PREFIX + "*"))
    assert list_checkpoints(out), "no checkpoint reached the run folder"
    for ckpt in list_checkpoints(out):
        assert checkpoint_problems(ckpt) == [], ckpt


def lines(stderr_and_stdout: str, pattern: str) -> list[str]:
    return [line for line in stderr_and_stdout.splitlines() if re.search(pattern, line)]


FAILURES = [
    # (errno, how Drive fails with it): gone or broken everywhere, or only for writes (a full or read-only Drive)
    (errno.ENOTCONN, "all"),
    (errno.EIO, "all"),
    (errno.ESTALE, "all"),
    (errno.EDQUOT, "writes"),
    (errno.ENOSPC, "writes"),
    (errno.EROFS, "writes"),
]


@pytest.mark.parametrize("code,fail", FAILURES, ids=[errno.errorcode[c] for c, _ in FAILURES])
def test_drive_failing_during_a_checkpoint_copy_costs_nothing(faultfs, tmp_path, reference, code, fail):
    """Drive fails from step 2 (checkpoint-2 is saved, and copied, at its end) until step 4 begins: training goes
    on locally; one line when the copy falls behind, one when it catches up; the run ends as if nothing happened."""
    out, proc = run_on(faultfs, tmp_path, {2: {"fail": fail, "errno": code}, 4: {"after_a_failure": True}})
    said = proc.stdout + proc.stderr
    assert "Traceback" not in said, said[-3000:]
    [behind] = lines(said, r"cannot be written since step")
    assert os.strerror(code) in behind and str(out) in behind
    assert len(lines(said, r"answers again: its copy caught up")) == 1
    assert lines(said, r"complete and verified")
    assert_same_as_reference(out, reference, proc)
    assert_nothing_partial(out)
    assert faultfs.stats()["failed"], "the file system never failed: the case tested nothing"


@pytest.mark.parametrize("code,fail", FAILURES, ids=[errno.errorcode[c] for c, _ in FAILURES])
def test_a_history_copy_that_fails_is_retried(faultfs, tmp_path, reference, code, fail):
    """Only the reward history's copies fail, from step 1 to step 3 (checkpoints copy meanwhile): the copy falls
    behind in one line and catches up; the history in the run folder ends whole and equal to the straight run's."""
    schedule = {1: {"fail": fail, "errno": code, "paths": ["*reward_history.json*"]}, 3: {"after_a_failure": True}}
    out, proc = run_on(faultfs, tmp_path, schedule)
    said = proc.stdout + proc.stderr
    assert "Traceback" not in said, said[-3000:]
    [behind] = lines(said, r"cannot be written since step")
    assert os.strerror(code) in behind
    assert len(lines(said, r"answers again: its copy caught up")) == 1
    assert_same_as_reference(out, reference, proc)
    assert_nothing_partial(out)
    assert faultfs.stats()["failed"], "the file system never failed: the case tested nothing"


@pytest.mark.parametrize("code", [c for c, _ in FAILURES], ids=[errno.errorcode[c] for c, _ in FAILURES])
def test_a_large_copy_cut_midway_leaves_no_partial_checkpoint(faultfs, tmp_path, reference, code):
    """The run folder fails 3 MB into checkpoint-2's copy (its optimizer state is larger): the copy stops midway,
    nothing of it shows as ``checkpoint-2``, and it is copied whole once the folder answers again."""
    # Healed as step 4 begins, but only once the cut happened: on a loaded machine the copy can lag past step 3.
    schedule = {2: {"fail": "writes", "errno": code, "fail_after_bytes": 3_000_000}, 4: {"after_a_failure": True}}
    out, proc = run_on(faultfs, tmp_path, schedule)
    said = proc.stdout + proc.stderr
    assert "Traceback" not in said, said[-3000:]
    assert faultfs.stats()["failed"], "the copy was never cut: the case tested nothing"
    assert os.strerror(code) in lines(said, r"cannot be written since step")[0]
    assert_same_as_reference(out, reference, proc)
    assert_nothing_partial(out)


def test_an_outage_past_the_end_names_the_local_copy_and_the_command_finishes_it(faultfs, tmp_path, reference):
    """Drive disconnects at step 2 and stays gone: the run trains to its end locally, exits as a healthy run does,
    and says in one line where the complete run is and which command finishes the copy; that command, once Drive
    answers, copies the run (it trains nothing) and the run folder ends as an uninterrupted run's."""
    out, proc = run_on(faultfs, tmp_path, {2: {"fail": "all", "errno": errno.ENOTCONN}})
    said = proc.stdout + proc.stderr
    assert "Traceback" not in said, said[-3000:]
    assert proc.returncode == reference[1], said[-2000:]
    [line] = lines(proc.stderr, r"finish the copy")
    work = tmp_path / "local-disk"
    assert str(work) in line and str(out) in line and os.strerror(errno.ENOTCONN) in line
    words = shlex.split(line.split("finish the copy once it answers again with: ", 1)[1])
    assert words[:2] == ["python", PROG] and words[-2:] == ["--resume-from-checkpoint", "auto"]
    assert (next(work.iterdir()) / "final_validation.json").is_file()  # the complete run, on local disk

    faultfs.heal()
    out, again = run_on(faultfs, tmp_path, command=[sys.executable, *words[1:]])
    said = again.stdout + again.stderr
    assert "Traceback" not in said, said[-3000:]
    assert "copying it now" in said and not lines(said, r"^step \d+/")  # copied, not trained again
    assert_same_as_reference(out, reference, again)
    assert_nothing_partial(out)
    assert not list(work.iterdir())  # the working folder goes once the run folder holds everything, verified


def test_a_slow_mount_changes_nothing_but_time(faultfs, tmp_path, reference):
    """30 ms per create, rename, fsync, flush, unlink and mkdir, writes at 30 MB/s (the benchmark's slow Drive)."""
    faultfs.set(latency_ms=30, write_mbps=30)
    out, proc = run_on(faultfs, tmp_path)
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert not lines(proc.stdout + proc.stderr, r"cannot be written")
    assert_same_as_reference(out, reference, proc)
    assert_nothing_partial(out)
    assert faultfs.stats()["delayed"]


def test_two_runtimes_racing_for_one_drive_folder(faultfs, tmp_path, reference):
    """Two runs (two Colab runtimes: each its own local disk) start on one run folder at once: the lock on the run
    folder still decides through the mirror; one is refused in one line, the other ends as a solo run."""
    out = faultfs.mountpoint / "run"
    procs = []
    for name in ("one", "two"):
        env = dict(os.environ, **MIRROR_ENV, MUSCLEBOB_WORK_ROOT=str(tmp_path / name), OMP_NUM_THREADS="1")
        command = [sys.executable, str(ROOT / PROG), *KILL_ARGS, "--output-dir", str(out)]
        procs.append(subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env))
    results = [(p, *p.communicate(timeout=600)) for p in procs]
    refused = [r for r in results if r[0].returncode == 2]
    assert len(refused) == 1, [r[2][-1500:] for r in results]
    [line] = [x for x in refused[0][2].splitlines() if "error:" in x]
    assert "another run is writing to it" in line
    winner = next(r for r in results if r[0].returncode != 2)
    assert_same_as_reference(out, reference, subprocess.CompletedProcess([], winner[0].returncode, *winner[1:]))
    assert_nothing_partial(out)


def test_a_checkpoint_damaged_inside_on_drive_is_set_aside_and_the_one_before_used(faultfs, tmp_path, reference):
    """A runtime reset (SIGKILL, the local disk gone) after checkpoints 1-3 reached Drive, and checkpoint-3 damaged
    there with its length intact (200 KB changed in its weights): the resume proves it damaged against its
    manifest, sets it aside in one line, resumes from checkpoint-2 and ends as an uninterrupted run."""
    from tools.faultfs import damage_inside

    every_step = ["--save-steps", "1", "--keep-checkpoints", "3"]
    out, killed = run_on(faultfs, tmp_path, None, *every_step, command=None)
    assert killed.returncode == reference[1]  # first, the run whole: its checkpoints reached the run folder
    ckpts = [c.name for c in list_checkpoints(out)]
    assert ckpts == ["checkpoint-2", "checkpoint-3", "checkpoint-4"], ckpts
    # Back to the moment after step 3: the final model and checkpoint-4 never got there, the local disk is gone.
    import shutil

    for name in ("checkpoint-4", "final_validation.json", "config.json", "model.safetensors"):
        target = out / name
        shutil.rmtree(target) if target.is_dir() else target.unlink()
    shutil.rmtree(tmp_path / "local-disk", ignore_errors=True)
    damage_inside(out / "checkpoint-3" / "model.safetensors")
    command = [sys.executable, str(ROOT / PROG), *KILL_ARGS, "--output-dir", str(out), *every_step]
    out, resumed = run_on(faultfs, tmp_path, command=[*command, "--resume-from-checkpoint", "auto"])
    said = resumed.stdout + resumed.stderr
    assert "Traceback" not in said, said[-3000:]
    [line] = lines(said, r"checkpoint-3 is damaged")
    assert "hash differs" in line and "checkpoint-3.damaged" in line
    assert lines(said, r"Resuming from .*checkpoint-2$")
    assert_same_as_reference(out, reference, resumed)
    assert (out / "checkpoint-3.damaged").is_dir()  # kept, never deleted
