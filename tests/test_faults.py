"""Fault injection: SIGKILL anywhere, SIGINT / SIGTERM, a full disk at any save, damaged checkpoints, unwritable
outputs, mismatched resumes, bad flags.

The kill tests run the real training CLI as a subprocess on the tiny model through ``tests/fault_runner.py
POINT:STEP`` (which installs the fault from outside the product), let it die by SIGKILL, resume with
``--resume-from-checkpoint auto`` and compare with an uninterrupted run of the same seed: same steps, same
rewards, same final weights. The signal tests send the CLI SIGINT / SIGTERM mid-epoch and resume with the command
its one line prints; the full-disk tests let a checkpoint, history or final-model write fail as a full disk does.
"""

import contextlib
import json
import os
import re
import shlex
import signal
from dataclasses import replace
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import fault_runner
from conftest import TINY_RUN, TINY_RUN_ARGS
from musclebob_helpers import run_dir
from musclebob_helpers.config import ConfigError, TrainConfig
from musclebob_helpers.plots import load_completions
from musclebob_helpers.run_dir import check, checkpoint_problems, list_checkpoints, _select_checkpoint
from musclebob_helpers.startup import start

ROOT = Path(__file__).resolve().parent.parent
PROG = "train_musclebob_improved.py"
KILL_ARGS = [*TINY_RUN_ARGS, "--seed", "42"]
TOTAL_STEPS = 4
FINAL_FILES = ("config.json", "model.safetensors", "final_validation.json")


def train(out, *extra, fault=None):
    env = dict(os.environ)
    env.setdefault("OMP_NUM_THREADS", "1")  # the tiny model gains nothing from threads; shared CPUs run it faster
    # A fault: the same CLI, with the kill installed from outside by the test-only runner.
    command = [str(ROOT / "tests" / "fault_runner.py"), fault] if fault else [str(ROOT / PROG)]
    return subprocess.run(
        [sys.executable, *command, *KILL_ARGS, "--output-dir", str(out), *extra],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        timeout=600,
    )


def train_until(out, step, sig, *extra):
    """The CLI, sent ``sig`` once step ``step`` is logged: ``fault_runner`` holds the run there until the run's own
    handler has taken the signal, so it lands in step ``step + 1`` however loaded the machine is."""
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    env.setdefault("OMP_NUM_THREADS", "1")
    after = fault_runner.WAITING
    command = [
        sys.executable,
        str(ROOT / "tests" / "fault_runner.py"),
        f"wait-for-signal:{step}",
        *KILL_ARGS,
        "--output-dir",
        str(out),
        *extra,
    ]
    with open(Path(out).parent / f"{Path(out).name}.stderr", "w+") as err:  # a file: a full pipe cannot block it
        proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=err, text=True, env=env, cwd=ROOT)
        seen = []
        for line in proc.stdout:
            seen.append(line)
            if line.startswith(after):
                proc.send_signal(sig)
                break
        rest, _ = proc.communicate(timeout=600)
        err.seek(0)
        return subprocess.CompletedProcess(command, proc.returncode, "".join(seen) + rest, err.read())


def resume_line(stderr):
    """The one line a stopped run ends with, and the command it says to resume with (run here as it is)."""
    [line] = [line for line in stderr.splitlines() if "stopped" in line]
    words = shlex.split(line.split("resume with: ", 1)[1])
    assert words[:2] == ["python", PROG], line
    return line, [sys.executable, *words[1:]]


def one_error_line(stderr):
    """The error line of a run that failed in one line: no traceback, nothing else but loading bars and the
    fault runner's marker."""
    assert "Traceback" not in stderr, stderr[-3000:]
    [line] = [line for line in stderr.splitlines() if "error:" in line]
    return line


def history(out):
    return json.loads((Path(out) / "reward_history.json").read_text())


def rewards_by_step(out):
    return [(e["step"], e["mean_reward"], e["reward_std"]) for e in history(out)]


def all_json_parses(out):
    """Every JSON artifact under ``out`` (checkpoints included) is complete, valid JSON."""
    files = [p for p in Path(out).rglob("*.json")]
    for p in files:
        json.loads(p.read_text())
    return files


def weights(path):
    from safetensors.torch import load_file

    return load_file(str(Path(path) / "model.safetensors"))


def uninterrupted_run(folder: Path):
    """The uninterrupted run (on local disk) a killed or disturbed run must end up identical to: (folder, exit code)."""
    out = folder / "reference"
    proc = train(out)
    assert proc.returncode in (0, 1), proc.stderr[-2000:]
    assert [e["step"] for e in history(out)] == list(range(1, TOTAL_STEPS + 1))
    return out, proc.returncode


@pytest.fixture(scope="module")
def reference(tmp_path_factory, tiny_path):
    """The uninterrupted run every killed run must end up identical to."""
    return uninterrupted_run(tmp_path_factory.mktemp("faults"))


def assert_same_as_reference(out, reference, resumed):
    import torch
    from transformers import AutoModelForCausalLM

    ref, ref_code = reference
    assert resumed.returncode == ref_code, resumed.stderr[-2000:]
    assert json.loads((out / "final_validation.json").read_text())["global_step"] == TOTAL_STEPS
    assert [e["step"] for e in history(out)] == list(range(1, TOTAL_STEPS + 1))  # each step once, in order
    assert rewards_by_step(out) == rewards_by_step(ref)  # steps trained again reproduce the lost ones exactly
    samples = load_completions(out)  # the completion samples too: each step's once, as the straight run's
    assert sorted({r["step"] for r in samples}) == list(range(1, TOTAL_STEPS + 1))
    assert samples == load_completions(ref)
    mine, theirs = weights(out), weights(ref)
    assert mine.keys() == theirs.keys() and all(torch.equal(mine[k], theirs[k]) for k in mine)
    assert not list(out.rglob("*.tmp"))  # no half-written temporary file left
    all_json_parses(out)
    AutoModelForCausalLM.from_pretrained(out)  # the final model loads
    record = json.loads((out / "training_config.json").read_text())
    assert [seg["from_step"] for seg in record["segments"]] == [0]  # resumed with the same settings: one segment


KILLS = [
    # (fault, what the resume must say, checkpoints kept). Two of the kills also keep one checkpoint only
    # (--keep-checkpoints 1): checkpoint-2 is deleted once checkpoint-4 is complete, so a kill before that
    # must leave it, and the resume must then rotate it away.
    ("generation:3", "Resuming from", 2),  # mid-generation, after checkpoint-2
    ("optimizer:3", "Resuming from", 1),  # inside the optimizer step: weights changed in memory only
    ("history:3", "Resuming from", 2),  # half of reward_history.json's temporary file written
    ("checkpoint:4", "checkpoint-4 is damaged", 1),  # half of checkpoint-4/optimizer.pt written
    ("checkpoint:2", "No intact checkpoint", 2),  # the only checkpoint half written: start fresh
    # After the last checkpoint: the resume has no step left to train, only the final model and validation.
    ("train-end:4", "Resuming from", 2),  # checkpoint-4 saved, the final model not yet begun
    ("final:4", "Resuming from", 1),  # half of the final model.safetensors written (its config.json whole)
]
AFTER_THE_LAST_CHECKPOINT = ("train-end", "final")


@pytest.mark.slow  # two training processes each
@pytest.mark.parametrize("fault,message,keep", KILLS, ids=[f"{k} keep {n}" for k, _, n in KILLS])
def test_kill_anywhere_then_resume_ends_as_if_nothing_happened(tmp_path, reference, fault, message, keep):
    out = tmp_path / "run"
    keeping = ["--keep-checkpoints", str(keep)]
    killed = train(out, *keeping, fault=fault)
    assert killed.returncode == -9, killed.stderr[-2000:]  # really SIGKILLed
    assert f"{fault_runner.MARKER} killing the process" in killed.stderr
    point, step = fault_runner.parse(fault)
    if point == "final":  # save_pretrained writes the config first, then the weights it died in
        assert (out / "config.json").is_file() and not (out / "final_validation.json").exists()
        cut = (out / "model.safetensors").stat().st_size
        assert 0 < cut < (reference[0] / "model.safetensors").stat().st_size
    else:
        assert not any((out / f).exists() for f in FINAL_FILES)  # it died before the end
    all_json_parses(out)  # whatever a reader opens meanwhile is whole
    done = [e["step"] for e in history(out)]
    # Steps logged before the kill: through step N when the checkpoint after it (or the end) died, else N - 1.
    assert done == list(range(1, (step if point in ("checkpoint", *AFTER_THE_LAST_CHECKPOINT) else step - 1) + 1))
    if point in AFTER_THE_LAST_CHECKPOINT:  # the last checkpoint is whole; rotation has run
        assert not checkpoint_problems(out / f"checkpoint-{step}")
        rotated = [f"checkpoint-{step}"] if keep == 1 else ["checkpoint-2", f"checkpoint-{step}"]
        assert [c.name for c in list_checkpoints(out)] == rotated
    if step > 2:  # the last intact checkpoint survives the kill, rotation or not
        assert any(not checkpoint_problems(c) for c in list_checkpoints(out))
    if point == "checkpoint":
        assert checkpoint_problems(out / f"checkpoint-{step}")  # the kill left it damaged
        damaged = {
            p.relative_to(out / f"checkpoint-{step}"): p.read_bytes()
            for p in (out / f"checkpoint-{step}").rglob("*")
            if p.is_file()
        }

    resumed = train(out, *keeping, "--resume-from-checkpoint", "auto")
    assert message in resumed.stdout, resumed.stdout[-3000:]
    assert_same_as_reference(out, reference, resumed)
    if point == "checkpoint":  # the damaged checkpoint was moved aside, not deleted
        kept = out / f"checkpoint-{step}.damaged"
        assert {p.relative_to(kept): p.read_bytes() for p in kept.rglob("*") if p.is_file()} == damaged
    if point in AFTER_THE_LAST_CHECKPOINT:
        assert f"checkpoint-{step}" in resumed.stdout  # resumed from the last one: nothing trained again
    if keep == 1:
        if point not in AFTER_THE_LAST_CHECKPOINT:  # killed before checkpoint-4 was whole: the resume rotates
            assert "Removed checkpoint-2" in resumed.stdout
        assert [c.name for c in list_checkpoints(out)] == ["checkpoint-4"]


# ---------------------------------------------------------------------------------------------
# SIGINT / SIGTERM: stop at the end of the step, save it, one line, resume exactly.

SIGNALS = [
    # (signal, exit code, checkpoints kept): "step 2/" is printed at the end of step 2 (an epoch's end), so the
    # signal comes while step 3 (mid-epoch) runs: checkpoint-3 is saved after it. With --keep-checkpoints 1,
    # rotation deletes checkpoint-2 once checkpoint-3 is intact, and checkpoint-3 once checkpoint-4 is.
    (signal.SIGINT, 130, 2),
    (signal.SIGTERM, 143, 1),
]


@pytest.mark.slow  # two training processes each
@pytest.mark.parametrize("sig,code,keep", SIGNALS, ids=[s.name for s, _, _ in SIGNALS])
def test_a_signal_saves_the_step_and_resume_ends_as_if_nothing_happened(tmp_path, reference, sig, code, keep):
    out = tmp_path / "run"
    keeping = ["--keep-checkpoints", str(keep)]
    stopped = train_until(out, 2, sig, *keeping)
    assert stopped.returncode == code, stopped.stderr[-3000:]
    assert "Traceback" not in stopped.stderr
    line, command = resume_line(stopped.stderr)
    assert line.startswith(f"{PROG}: stopped at step 3 of {TOTAL_STEPS}; checkpoint-3 saved; resume with: python ")
    assert f"--keep-checkpoints {keep}" in line  # the same flags
    assert command[-2:] == ["--resume-from-checkpoint", "auto"]
    assert command[command.index("--output-dir") + 1] == str(out)
    assert not checkpoint_problems(out / "checkpoint-3")  # the Trainer's own save, mid-epoch
    assert [c.name for c in list_checkpoints(out)] == (
        ["checkpoint-3"] if keep == 1 else ["checkpoint-2", "checkpoint-3"]
    )
    assert [e["step"] for e in history(out)] == [1, 2, 3]  # flushed
    assert sorted({r["step"] for r in load_completions(out)}) == [1, 2, 3]
    assert not any((out / f).exists() for f in FINAL_FILES)  # no final validation, no final model
    all_json_parses(out)

    env = dict(os.environ, OMP_NUM_THREADS="1")
    resumed = subprocess.run(command, capture_output=True, text=True, env=env, cwd=ROOT, timeout=600)
    assert "Resuming from" in resumed.stdout and "checkpoint-3" in resumed.stdout
    assert_same_as_reference(out, reference, resumed)
    assert [c.name for c in list_checkpoints(out)] == (
        ["checkpoint-4"] if keep == 1 else ["checkpoint-3", "checkpoint-4"]
    )


@pytest.mark.slow  # two training processes
def test_a_second_ctrl_c_stops_at_once_and_the_run_still_resumes(tmp_path, reference):
    """The second SIGINT comes in the middle of step 3's generation (``fault_runner``), the first as it began."""
    out = tmp_path / "run"
    stopped = train(out, fault="interrupt-twice:3")
    assert stopped.returncode == 130, stopped.stderr[-3000:]
    assert "Traceback" not in stopped.stderr and f"{fault_runner.MARKER} SIGINT again" in stopped.stderr
    line, command = resume_line(stopped.stderr)
    assert line.startswith(
        f"{PROG}: stopped at once (SIGINT) at step 2 of {TOTAL_STEPS}; the step in progress is lost; resume with: "
    )
    assert not (out / "checkpoint-3").exists() and [e["step"] for e in history(out)] == [1, 2]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    resumed = subprocess.run(command, capture_output=True, text=True, env=env, cwd=ROOT, timeout=600)
    assert "Resuming from" in resumed.stdout and "checkpoint-2" in resumed.stdout
    assert_same_as_reference(out, reference, resumed)


# The notebook's interrupt button (SIGINT to a real kernel, then the resume, ending as the uninterrupted run):
# tests/test_notebooks.py::test_the_interrupt_button_stops_training_in_one_line_and_the_kernel_trains_on.


def test_the_stop_handlers_are_put_back_and_a_signal_outside_the_steps_stops_at_once():
    from types import SimpleNamespace

    from musclebob_helpers.training import GracefulStop, Stopped

    before = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    stop = GracefulStop()
    with pytest.raises(Stopped) as info, stop.handlers():  # loading the model, validating: nothing to finish
        signal.raise_signal(signal.SIGTERM)
    assert (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)) == before
    assert info.value.exit_code == 143
    assert info.value.line("X") == "stopped (SIGTERM) before training began; start again with: X"

    stop = GracefulStop()
    stop.training, stop.state = True, SimpleNamespace(global_step=3, max_steps=8)  # as on_train_begin sets them
    with pytest.raises(Stopped) as info, stop.handlers():
        signal.raise_signal(signal.SIGINT)
        assert stop.signum == signal.SIGINT  # the first one only asks for a stop at the end of the step
        signal.raise_signal(signal.SIGINT)
    assert info.value.exit_code == 130 and info.value.checkpoint is None
    assert (
        info.value.line("X") == "stopped at once (SIGINT) at step 3 of 8; the step in progress is lost; resume with: X"
    )

    ignored = signal.signal(signal.SIGTERM, signal.SIG_IGN)  # nohup-like: told to ignore it
    try:
        with GracefulStop().handlers():
            assert signal.getsignal(signal.SIGTERM) is signal.SIG_IGN
    finally:
        signal.signal(signal.SIGTERM, ignored)


def test_under_accelerate_launch_the_forwarded_ctrl_c_is_not_a_second_one(monkeypatch):
    """``accelerate launch`` (torchrun, which sets TORCHELASTIC_RUN_ID) forwards the terminal's Ctrl-C to each process
    that already got it from the terminal: the same signal again within _LAUNCHER_ECHO_S is that echo, not the
    user's second Ctrl-C, so the run still stops at the end of its step. Real signals to this process."""
    from types import SimpleNamespace

    from musclebob_helpers import training
    from musclebob_helpers.training import GracefulStop, Stopped

    def training_stop():
        stop = GracefulStop()
        stop.training, stop.state = True, SimpleNamespace(global_step=3, max_steps=8)  # as on_train_begin sets them
        return stop

    monkeypatch.setenv("TORCHELASTIC_RUN_ID", "none")  # what torchrun exports to every process it starts
    stop = training_stop()
    try:
        with stop.handlers():
            signal.raise_signal(signal.SIGINT)  # the terminal's
            signal.raise_signal(signal.SIGINT)  # the launcher's copy of it, at once
    except Stopped as err:  # a BaseException, like KeyboardInterrupt: caught here, or it ends the session
        pytest.fail(f"the launcher's echo was taken for a second Ctrl-C: {err}")
    assert stop.signum == signal.SIGINT  # asked to stop at the step's end, nothing raised
    with pytest.raises(Stopped) as info, stop.handlers():
        signal.raise_signal(signal.SIGTERM)  # another signal is never the echo
    assert info.value.signum == signal.SIGTERM and info.value.exit_code == 143
    stop = training_stop()
    with pytest.raises(Stopped) as info, stop.handlers():
        signal.raise_signal(signal.SIGINT)
        stop.first_at -= training._LAUNCHER_ECHO_S  # the user's own second Ctrl-C, later: stops at once
        signal.raise_signal(signal.SIGINT)
    assert info.value.exit_code == 130 and info.value.checkpoint is None

    monkeypatch.delenv("TORCHELASTIC_RUN_ID")  # a plain python run: the same signal twice is the user's, twice
    stop = training_stop()
    with pytest.raises(Stopped), stop.handlers():
        signal.raise_signal(signal.SIGINT)
        signal.raise_signal(signal.SIGINT)


@pytest.mark.parametrize("epoch,saves", [(1.5, True), (2.0, False)], ids=["mid-epoch", "epoch end"])
def test_a_stop_saves_the_step_it_ends_on_once(epoch, saves):
    """Mid-epoch the stop asks for a save at the step's end and cancels the epoch-end save a break would add; at an
    epoch's end the epoch's own checkpoint is the step's. Training stops once that checkpoint is written."""
    from types import SimpleNamespace

    from transformers import TrainerControl

    from musclebob_helpers.training import GracefulStop

    stop = GracefulStop()
    callback, control = stop.callback(), TrainerControl()
    state = SimpleNamespace(global_step=3, max_steps=4, epoch=epoch)
    callback.on_train_begin(None, state, control)
    callback.on_step_end(None, state, control)
    assert not control.should_save and stop.stop_step is None  # no signal: nothing changes
    stop.signum = signal.SIGINT
    callback.on_step_end(None, state, control)
    assert control.should_save is saves and stop.stop_step == 3 and not control.should_training_stop
    control.should_save = True  # the trainer's own epoch-end flow asks for its save
    callback.on_epoch_end(None, state, control)
    assert control.should_save is not saves
    callback.on_save(None, state, control)
    assert control.should_training_stop


def test_the_resume_command_repeats_the_options_given(tmp_path):
    from musclebob_helpers.cli import _build_train_parser, resume_command
    from musclebob_helpers.config import resolve

    argv = ["--preset", "cpu-tiny", "--output-dir", "my runs/a", "--no-fewshot", "--overwrite", "--epochs", "4"]
    cfg, sources = resolve(vars(_build_train_parser(PROG, "").parse_args(argv)))
    assert resume_command(PROG, cfg, sources) == (
        f"python {PROG} --epochs 4 --no-fewshot --preset cpu-tiny --output-dir 'my runs/a' "
        "--resume-from-checkpoint auto"
    )
    argv = ["--output-dir", "x", "--resume-from-checkpoint", str(tmp_path)]
    cfg, sources = resolve(vars(_build_train_parser(PROG, "").parse_args(argv)))
    assert resume_command(PROG, cfg, sources, num_processes=2) == (
        f"accelerate launch --num_processes 2 {PROG} --output-dir x --resume-from-checkpoint auto"
    )


# ---------------------------------------------------------------------------------------------
# A full disk at any save: one line, the newest intact checkpoint and the history kept, resume after freeing space.


@contextlib.contextmanager
def tmpfs(mount: Path, size: str):
    """A real disk of ``size`` at ``mount`` (a tmpfs: root only, the test skipped elsewhere), unmounted afterwards."""
    mount.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(mount)], capture_output=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.decode().strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", str(mount)], check=True)


@pytest.fixture
def full_disk(tmp_path):
    """A real 1 MB disk."""
    with tmpfs(tmp_path / "disk", "1M") as mount:
        yield mount


def test_each_writer_s_full_disk_error_is_out_of_space(full_disk):
    """What torch.save, safetensors and our atomic JSON writes raise on a really full disk, and errors that are not."""
    import errno

    import torch
    from safetensors.torch import save_file

    from musclebob_helpers.io import out_of_space, write_json_atomic

    big = {"w": torch.zeros(1_000_000)}  # 4 MB on a 1 MB disk
    writes = {
        "torch.save to a path": lambda: torch.save(big, full_disk / "a.pt"),  # RuntimeError: ... unexpected pos
        "torch.save to a file": lambda: torch.save(big, open(full_disk / "b.pt", "wb")),
        "safetensors": lambda: save_file(big, full_disk / "c.safetensors"),  # SafetensorError: ... os error 28
        "JSON": lambda: write_json_atomic(full_disk / "d.json", [0.5] * 400_000),  # OSError(ENOSPC)
    }
    for what, write in writes.items():
        with pytest.raises(Exception) as err:
            write()
        assert out_of_space(err.value), (what, repr(err.value))
        for leftover in full_disk.iterdir():
            leftover.unlink()
    assert not list(full_disk.iterdir())  # the JSON write removed its temporary file itself
    try:
        raise RuntimeError("PytorchStreamWriter failed writing file data/3: file write failed")
    except RuntimeError as short:
        assert out_of_space(short)
    for other in (
        OSError(errno.EACCES, "Permission denied"),
        RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB"),
        ValueError("No space left on device"),  # not an I/O error, whatever it says
    ):
        assert not out_of_space(other), other


@pytest.mark.parametrize("error", ["ENOSPC", "torch short write"])
def test_full_disk_during_a_checkpoint_save_is_one_line(tmp_path, monkeypatch, capsys, tiny_path, error):
    """ENOSPC, and torch's own RuntimeError from a short write (the issue's traceback), end in one line that names
    the folder, the run's disk need and the free space, exit code 2."""
    import train_musclebob_improved
    from musclebob_helpers import training

    def short_write(cfg, **kw):
        full = OSError(28, "No space left on device", str(tmp_path / "out" / "checkpoint-2" / "optimizer.pt"))
        if error == "ENOSPC":
            raise full
        try:
            raise full
        except OSError as err:
            raise RuntimeError(fault_runner.TORCH_SHORT_WRITE) from err

    monkeypatch.setattr(training, "run_training", short_write)
    out = tmp_path / "out"
    with pytest.raises(SystemExit) as exc:
        train_musclebob_improved.main(["--model", "tiny", "--output-dir", str(out)])
    [line] = capsys.readouterr().err.strip().splitlines()
    assert exc.value.code == 2
    assert re.fullmatch(
        rf"{PROG}: error: the disk is full \({re.escape(str(out))}\): this run needs about \d+ MB there, [0-9.]+ [GM]B "
        "are free; free some space, then rerun with --resume-from-checkpoint auto: the newest intact checkpoint "
        "is used",
        line,
    )


FULL_DISK = [
    # (fault, what the resume must say, steps in the history when it stopped)
    ("nospace-checkpoint:4", "checkpoint-4 is damaged", [1, 2, 3, 4]),  # torch's own short-write RuntimeError
    ("nospace-history:3", "Resuming from", [1, 2]),  # OSError(ENOSPC) writing reward_history.json
    ("nospace-final:4", "Resuming from", [1, 2, 3, 4]),  # safetensors' error writing the final model
]


@pytest.mark.slow  # two training processes each
@pytest.mark.parametrize("fault,message,steps", FULL_DISK, ids=[f for f, _, _ in FULL_DISK])
def test_a_full_disk_at_any_save_is_one_line_and_resumes(tmp_path, reference, fault, message, steps):
    out = tmp_path / "run"
    failed = train(out, fault=fault)
    assert failed.returncode == 2, failed.stderr[-3000:]
    assert f"{fault_runner.MARKER} no space left" in failed.stderr
    line = one_error_line(failed.stderr)
    assert line.startswith(f"{PROG}: error: the disk is full ({out}): this run needs about ")
    assert "free some space, then rerun with --resume-from-checkpoint auto" in line
    assert [e["step"] for e in history(out)] == steps  # the history as it was before the failed write
    assert not list(out.rglob("*.tmp"))
    assert not checkpoint_problems(out / "checkpoint-2")  # the newest intact checkpoint is kept
    all_json_parses(out)
    resumed = train(out, "--resume-from-checkpoint", "auto")  # the space freed: the fault is not installed
    assert message in resumed.stdout, resumed.stdout[-3000:]
    assert_same_as_reference(out, reference, resumed)


@pytest.mark.slow  # two training processes
def test_a_disk_that_fills_mid_run_stops_in_one_line_and_resumes_once_freed(tmp_path, reference):
    """A real full disk: a 256 MB tmpfs (root only) that ``fault_runner``'s ballast fills as step 2 begins, so
    checkpoint-2's save fails in torch's own writer; deleting the ballast is "freeing space"."""
    with tmpfs(tmp_path / "disk", "256M") as disk:
        out = disk / "run"
        failed = train(out, fault="fill-disk:2")
        assert failed.returncode == 2, failed.stderr[-3000:]
        line = one_error_line(failed.stderr)
        full = rf"{PROG}: error: the disk is full \({re.escape(str(out))}\): "
        assert re.match(full + r"this run needs about \d+ MB there, [0-3] MB are free", line)
        assert [e["step"] for e in history(out)] == [1, 2]  # readable, whole
        assert checkpoint_problems(out / "checkpoint-2")  # cut short by the full disk
        all_json_parses(out)
        (disk / fault_runner.BALLAST).unlink()  # space freed
        resumed = train(out, "--resume-from-checkpoint", "auto")
        assert "checkpoint-2 is damaged" in resumed.stdout and "No intact checkpoint" in resumed.stdout
        assert_same_as_reference(out, reference, resumed)


def _interrupted_copy(reference, dest):
    """The reference run as a kill after its last checkpoint would leave it (no final model yet)."""
    shutil.copytree(reference[0], dest)
    for name in FINAL_FILES:
        (dest / name).unlink()
    return dest


# ---------------------------------------------------------------------------------------------
# Settings on resume: a new learning rate and more epochs take effect, and the record says from which step.


@pytest.mark.parametrize("rate,total", [(2e-4, 10), (1e-3, 10), (2e-4, 20), (1e-3, 20)])
def test_a_resumed_schedule_is_the_one_asked_for_at_the_loaded_step(rate, total):
    """As a resume does: the trainer builds optimizer and schedule from this run's settings, then loads the
    checkpoint's states, which bring back the old rate and the old schedule's rate for the next step;
    ``_resume_schedule`` makes them what a run with these settings from the start would have at that step."""
    import torch
    from transformers import get_cosine_schedule_with_warmup

    from musclebob_helpers.training import _resume_schedule

    def optimizer_and_schedule(rate, total, steps=0):
        optimizer = torch.optim.AdamW([torch.nn.Parameter(torch.ones(2))], lr=rate)
        schedule = get_cosine_schedule_with_warmup(optimizer, num_warmup_steps=2, num_training_steps=total)
        for _ in range(steps):
            optimizer.step()
            schedule.step()
        return optimizer, schedule

    interrupted = optimizer_and_schedule(2e-4, 10, steps=4)  # trained at 2e-4 over 10 steps, stopped after 4
    optimizer, schedule = optimizer_and_schedule(rate, total)
    optimizer.load_state_dict(interrupted[0].state_dict())
    schedule.load_state_dict(interrupted[1].state_dict())
    assert schedule.get_last_lr() == interrupted[1].get_last_lr()  # loaded: the checkpoint's schedule wins
    assert _resume_schedule(optimizer, schedule, rate) == (2e-4 if rate != 2e-4 else None)
    if (rate, total) == (2e-4, 10):  # nothing changed: exactly the loaded rates, so a resume stays exact
        assert schedule.get_last_lr() == interrupted[1].get_last_lr()
        assert optimizer.param_groups[0]["lr"] == interrupted[0].param_groups[0]["lr"]
    fresh = optimizer_and_schedule(rate, total, steps=4)  # these settings from the start, at the same step
    for _ in range(3):
        assert schedule.get_last_lr() == pytest.approx(fresh[1].get_last_lr(), rel=1e-12)
        assert optimizer.param_groups[0]["lr"] == pytest.approx(fresh[0].param_groups[0]["lr"], rel=1e-12)
        for opt, sched in ((optimizer, schedule), fresh):
            opt.step()
            sched.step()


def _stopped_after(reference, dest, step):
    """The reference run as a stop after ``step`` (an epoch's end) would leave it."""
    out = _interrupted_copy(reference, dest)
    for ckpt in list_checkpoints(out):
        if int(ckpt.name.split("-")[1]) > step:
            shutil.rmtree(ckpt)
    return out


@pytest.mark.slow  # a training process
def test_a_new_learning_rate_takes_effect_from_the_resumed_step(tmp_path, reference):
    out = _stopped_after(reference, tmp_path / "run", 2)
    resumed = train(out, "--resume-from-checkpoint", "auto", "--learning-rate", "1e-3")  # trained at 3e-4 (tiny)
    assert resumed.returncode in (0, 1), resumed.stderr[-3000:]
    assert (
        "Resuming with other settings: learning_rate 0.0003 -> 0.001; they take effect after step 2" in resumed.stdout
    )
    rate = {e["step"]: e["learning_rate"] for e in history(out)}
    before = {e["step"]: e["learning_rate"] for e in history(reference[0])}
    assert [rate[1], rate[2]] == [before[1], before[2]]  # trained before the resume
    assert before[3] == 3e-4 and rate[3] == pytest.approx(1e-3)  # the new base times the schedule's factor (1)
    assert rate[4] == pytest.approx(before[4] * 1e-3 / 3e-4)
    record = json.loads((out / "training_config.json").read_text())
    assert record["config"]["learning_rate"] == 1e-3  # the settings now in effect
    assert record["segments"][0]["from_step"] == 0 and record["segments"][0]["config"]["learning_rate"] == 3e-4
    assert record["segments"][1:] == [{"from_step": 2, "changed": {"learning_rate": [3e-4, 1e-3]}}]
    mine, theirs = weights(out), weights(reference[0])
    assert any(not mine[k].equal(theirs[k]) for k in mine)  # the new rate trained the last two steps


@pytest.mark.slow  # a training process
def test_more_epochs_on_resume_extend_the_schedule(tmp_path, reference):
    import math

    out = _stopped_after(reference, tmp_path / "run", TOTAL_STEPS)
    resumed = train(out, "--resume-from-checkpoint", "auto", "--epochs", "3")
    assert resumed.returncode in (0, 1), resumed.stderr[-3000:]
    assert [e["step"] for e in history(out)] == list(range(1, TOTAL_STEPS + 3))  # one more epoch of 2 steps
    assert rewards_by_step(out)[:TOTAL_STEPS] == rewards_by_step(reference[0])
    rate = {e["step"]: e["learning_rate"] for e in history(out)}
    # The tiny model's cosine decay (2 warm-up steps) now spans 6 steps: the rate of step s is the factor at s - 1.
    for step in (5, 6):
        assert rate[step] == pytest.approx(3e-4 * 0.5 * (1 + math.cos(math.pi * (step - 1 - 2) / (6 - 2))))
    record = json.loads((out / "training_config.json").read_text())
    assert record["segments"][1:] == [{"from_step": TOTAL_STEPS, "changed": {"epochs": [2, 3]}}]
    assert json.loads((out / "final_validation.json").read_text())["global_step"] == TOTAL_STEPS + 2


def _truncate(path, keep=0.5):
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


@pytest.mark.slow
def test_damaged_newest_checkpoint_falls_back_to_the_one_before(tmp_path, reference):
    """A cut-short weights file and a missing RNG state in checkpoint-4 (each one alone is named by
    ``checkpoint_problems``: the tests below): the resume says why, sets it aside, and trains on from checkpoint-2."""
    out = _interrupted_copy(reference, tmp_path / "run")
    _truncate(out / "checkpoint-4" / "model.safetensors")
    (out / "checkpoint-4" / "rng_state.pth").unlink()
    resumed = train(out, "--resume-from-checkpoint", "auto")
    [said] = [line for line in resumed.stdout.splitlines() if "checkpoint-4 is damaged" in line]
    assert "model.safetensors" in said and "rng_state.pth" in said and "Resuming from" in resumed.stdout
    assert (out / "checkpoint-4.damaged").is_dir()
    assert_same_as_reference(out, reference, resumed)


@pytest.mark.slow
def test_a_lost_history_is_rebuilt_from_the_checkpoint(tmp_path, reference):
    out = _interrupted_copy(reference, tmp_path / "run")
    (out / "reward_history.json").unlink()  # deleted, or a Drive copy that never arrived
    resumed = train(out, "--resume-from-checkpoint", "auto")
    assert "Resuming from" in resumed.stdout and "checkpoint-4" in resumed.stdout
    assert_same_as_reference(out, reference, resumed)  # all 4 steps back, from checkpoint-4's own log


# ---------------------------------------------------------------------------------------------
# What "intact" means, file by file.

CHECKPOINT_FILES = [
    "trainer_state.json",
    "model.safetensors",
    "config.json",
    "optimizer.pt",
    "scheduler.pt",
    "rng_state.pth",
]


@pytest.fixture
def checkpoint(tmp_path, reference):
    dest = tmp_path / "checkpoint-2"
    shutil.copytree(reference[0] / "checkpoint-2", dest)
    return dest


@pytest.mark.slow  # the checkpoint fixture copies the reference run: a training process
def test_a_complete_checkpoint_is_intact(checkpoint):
    assert checkpoint_problems(checkpoint) == []


@pytest.mark.slow  # the reference run's checkpoint
@pytest.mark.parametrize("name", CHECKPOINT_FILES)
def test_a_missing_file_is_named(checkpoint, name):
    (checkpoint / name).unlink()
    problems = checkpoint_problems(checkpoint)
    assert problems and any(name in p and "missing" in p for p in problems), problems


@pytest.mark.slow  # the reference run's checkpoint
@pytest.mark.parametrize("keep", [0.0, 0.5, 0.99])
@pytest.mark.parametrize("name", CHECKPOINT_FILES)
def test_a_truncated_file_is_named(checkpoint, name, keep):
    _truncate(checkpoint / name, keep)
    problems = checkpoint_problems(checkpoint)
    assert problems and any(name in p for p in problems), problems


@pytest.mark.slow  # the reference run's checkpoint
def test_padded_weights_and_wrong_step_are_damage(checkpoint):
    with open(checkpoint / "model.safetensors", "ab") as fh:
        fh.write(b"\0" * 10)  # a file longer than its header says is not the file that was saved
    renamed = checkpoint.rename(checkpoint.with_name("checkpoint-3"))  # trainer_state.json says step 2
    problems = checkpoint_problems(renamed)
    assert any("model.safetensors" in p and "promises" in p for p in problems)
    assert any("global_step=2" in p for p in problems)


@pytest.mark.slow  # a copy of the reference run
def test_no_intact_checkpoint_starts_fresh_and_deletes_nothing(tmp_path, reference):
    out = _interrupted_copy(reference, tmp_path / "run")
    for ckpt in list_checkpoints(out):
        _truncate(ckpt / "optimizer.pt")
    before = {
        p.relative_to(out)
        .as_posix()
        .replace("checkpoint-2", "checkpoint-2.damaged")
        .replace("checkpoint-4", "checkpoint-4.damaged"): p.read_bytes()
        for p in out.rglob("*")
        if p.is_file()
    }
    messages = []
    assert _select_checkpoint(out, log=messages.append) is None
    assert any("No intact checkpoint" in m and "starting fresh" in m for m in messages)
    assert any("checkpoint-4 is damaged" in m and "optimizer.pt" in m for m in messages)
    after = {p.relative_to(out).as_posix(): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    assert after == before  # every byte still there, the checkpoints only renamed
    assert list_checkpoints(out) == []  # so the fresh run can write its own checkpoint-2


@pytest.mark.slow  # a copy of the reference run
def test_an_explicit_damaged_checkpoint_is_refused(tmp_path, reference):
    out = _interrupted_copy(reference, tmp_path / "run")
    _truncate(out / "checkpoint-4" / "scheduler.pt")
    with pytest.raises(ConfigError, match="damaged or incomplete.*scheduler.pt"):
        check(TrainConfig(model="tiny", output_dir=str(out), resume_from_checkpoint=str(out / "checkpoint-4")))


@pytest.mark.slow  # a copy of the reference run's checkpoint
def test_a_checkpoint_of_another_architecture_is_refused_after_loading(tmp_path, reference):
    from musclebob_helpers.training import run_training

    out = tmp_path / "foreign"
    shutil.copytree(reference[0] / "checkpoint-2", out / "checkpoint-2")  # no training_config.json to compare
    cfg_path = out / "checkpoint-2" / "config.json"
    cfg_path.write_text(json.dumps({**json.loads(cfg_path.read_text()), "hidden_size": 256}))
    run_dir.write_manifest(out / "checkpoint-2")  # saved so, not damaged later: its manifest says what it holds
    cfg = TrainConfig(**TINY_RUN, output_dir=str(out), resume_from_checkpoint="auto")
    with pytest.raises(ConfigError, match="another architecture.*hidden_size 256"):
        run_training(start(cfg), log=lambda *a: None)
    assert not (out / "model.safetensors").exists()


# ---------------------------------------------------------------------------------------------
# Output locations that cannot be written: found at start-up, before any model is loaded.


def test_unwritable_locations_are_refused(tmp_path, monkeypatch):
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    assert "is a file" in run_dir.output_location_problem(str(blocker / "out"))
    if Path("/proc/self").is_dir():  # a pseudo file system: not writable even by root
        assert "cannot be written" in run_dir.output_location_problem("/proc/musclebob-out")
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        probe_ok = os.access(ro, os.W_OK)  # root ignores permission bits: then the folder IS writable
        assert (run_dir.output_location_problem(str(ro / "out")) is None) == probe_ok
    finally:
        ro.chmod(0o755)
    assert run_dir.output_location_problem(str(tmp_path / "new" / "deep" / "out")) is None
    assert not (tmp_path / "new").exists()  # checking created nothing


def test_no_space_left_is_refused(tmp_path, monkeypatch):
    usage = shutil.disk_usage(tmp_path)
    monkeypatch.setattr(run_dir.shutil, "disk_usage", lambda p: usage._replace(free=5 * 2**20))
    with pytest.raises(ConfigError, match="--output-dir=.*only 5 MB free"):
        check(TrainConfig(model="tiny", output_dir=str(tmp_path / "out")))


def test_unmounted_google_drive_is_refused(tmp_path, monkeypatch):
    drive = tmp_path / "content" / "drive"
    monkeypatch.setattr(run_dir, "DRIVE_MOUNT", drive)
    with pytest.raises(ConfigError, match="Google Drive is not mounted"):
        check(TrainConfig(model="tiny", output_dir=str(drive / "MyDrive" / "musclebob")))
    (drive / "MyDrive").mkdir(parents=True)  # mounted: fine
    check(TrainConfig(model="tiny", output_dir=str(drive / "MyDrive" / "musclebob")))


# ---------------------------------------------------------------------------------------------
# Mismatched resume, trust_remote_code.


def _run_dir(tmp_path, **saved):
    out = tmp_path / "run"
    (out / "checkpoint-2").mkdir(parents=True)
    config = {**TrainConfig(model="tiny", num_generations=4, batch_size=3).to_dict(), **saved}
    (out / "training_config.json").write_text(json.dumps({"config": config}))
    return out


def test_resume_with_other_settings_is_refused_unless_asked(tmp_path):
    out = _run_dir(tmp_path)
    cfg = TrainConfig(model="tiny", output_dir=str(out), resume_from_checkpoint="auto", num_generations=8, batch_size=3)
    with pytest.raises(ConfigError) as err:
        check(cfg)
    assert str(err.value) == (
        "--resume-from-checkpoint='auto' is not allowed: this run asks for --num-generations 8, but the run being "
        "resumed used --num-generations 4; pass the same values, --ignore-mismatch to resume anyway, or another "
        "--output-dir"
    )
    assert "--batch-size" not in str(err.value)  # only what differs is named
    cfg.ignore_mismatch = True
    check(cfg)
    check(
        TrainConfig(
            model="tiny",
            output_dir=str(out),
            resume_from_checkpoint="auto",
            num_generations=4,
            batch_size=3,
            epochs=9,
            learning_rate=1e-3,
        )
    )  # more epochs, another rate: fine


def test_remote_code_is_off_unless_asked(monkeypatch, tmp_path):
    import transformers

    from musclebob_helpers import evaluation, training

    seen = {}

    def fake_config(name, trust_remote_code=False, **kw):
        seen["trust"] = trust_remote_code
        if not trust_remote_code:
            raise ValueError("The repository contains custom code which must be executed; set trust_remote_code=True")
        return transformers.PretrainedConfig(max_position_embeddings=4096)

    monkeypatch.setattr(transformers.AutoConfig, "from_pretrained", fake_config)
    with pytest.raises(ConfigError, match="--trust-remote-code only if you trust"):
        evaluation.check_model_loadable("someone/custom-model")
    assert seen["trust"] is False
    evaluation.check_model_loadable("someone/custom-model", trust_remote_code=True)
    assert seen["trust"] is True

    class Loaded(Exception):
        pass

    def fake_load(name, device=None, trust_remote_code=None, **kwargs):
        seen["load"] = trust_remote_code
        raise Loaded

    monkeypatch.setattr(evaluation, "load_model", fake_load)
    for flag in (False, True):
        with pytest.raises(Loaded):
            training.run_training(
                start(TrainConfig(model="tiny", output_dir=str(tmp_path / str(flag)), trust_remote_code=flag)),
                log=lambda *a: None,
            )
        assert seen["load"] is flag


def test_mismatched_settings_are_named_as_the_user_types_them(tmp_path):
    out = _run_dir(tmp_path, use_fewshot=False, model="tiny")
    cfg = TrainConfig(model="./my model", output_dir=str(out), resume_from_checkpoint="auto", num_generations=4)
    with pytest.raises(ConfigError) as err:
        check(replace(cfg, batch_size=3))
    assert (
        "this run asks for --model './my model' --fewshot, but the run being resumed used --model tiny --no-fewshot;"
        in str(err.value)
    )


def test_fault_spec_parsing():
    assert fault_runner.parse(None) is None and fault_runner.parse("") is None
    assert fault_runner.parse("checkpoint:12") == ("checkpoint", 12)
    for bad in ("checkpoint", "nowhere:3", "history:0", "optimizer:x"):
        with pytest.raises(ValueError):
            fault_runner.parse(bad)


def test_the_product_carries_no_fault_hooks():
    """Faults are installed from outside (tests/fault_runner.py): importing and training patch nothing."""
    import importlib.util

    import torch

    save, replace_ = torch.save, os.replace
    import musclebob_helpers.io  # noqa: F401
    import musclebob_helpers.training  # noqa: F401

    assert torch.save is save and os.replace is replace_
    assert importlib.util.find_spec("musclebob_helpers.faults") is None
    sources = [*(ROOT / "musclebob_helpers").glob("*.py"), ROOT / PROG]
    assert not [p.name for p in sources if re.search(r"MUSCLEBOB_FAULT|\bfaults\b", p.read_text())]


def test_every_json_artifact_is_written_atomically():
    """The project writes JSON only through ``io.write_json_atomic`` (temp file + rename): no other writer exists."""
    sources = [*(ROOT / "musclebob_helpers").glob("*.py"), *ROOT.glob("*.py")]
    writers = [
        p.name
        for p in sources
        if p.name != "io.py" and any(s in p.read_text() for s in ("json.dump(", "save_to_json(", ".write_text(json"))
    ]
    assert writers == []


@pytest.mark.parametrize("items", [[], [{"step": 1}], [{"step": 1, "x": [1.5, "ü"]}, {"step": 2, "y": None}]])
def test_a_list_written_from_its_items_texts_is_the_same_file(tmp_path, items):
    from musclebob_helpers.io import json_list_item, write_json_atomic, write_json_list_atomic

    write_json_atomic(tmp_path / "whole.json", items)
    write_json_list_atomic(tmp_path / "items.json", [json_list_item(i) for i in items])
    assert (tmp_path / "items.json").read_bytes() == (tmp_path / "whole.json").read_bytes()


def test_the_reward_history_is_renamed_whole_each_step_and_fsynced_at_the_end(tmp_path, monkeypatch):
    """The per-step history write skips fsync (a kill keeps a renamed file; a crash is repaired on resume from the
    checkpoint's log), the end of training makes it durable, and every other artifact is fsynced as before."""
    from types import SimpleNamespace

    from musclebob_helpers.io import write_json_atomic
    from musclebob_helpers.training import _make_callbacks

    real_fsync, synced = os.fsync, []
    monkeypatch.setattr(os, "fsync", lambda fd: (synced.append(fd), real_fsync(fd)))
    history_cb, _ = _make_callbacks(tmp_path, log=lambda *a, **k: None)
    state = SimpleNamespace(global_step=0, epoch=0.0, is_world_process_zero=True, log_history=[])
    history_cb.on_train_begin(None, state, None)

    def steps_on_disk():
        return [e["step"] for e in json.loads((tmp_path / "reward_history.json").read_text())]

    for step in (1, 2, 3):
        state.global_step, state.epoch = step, step / 4
        history_cb.on_log(None, state, None, logs={"reward": float(step), "reward_std": 0.1})
        assert steps_on_disk() == list(range(1, step + 1))  # renamed into place at every step
    assert len(synced) == 1  # on_train_begin's write only (durable by default); none per step
    assert not list(tmp_path.glob("*.tmp"))
    history_cb.on_train_end(None, state, None)
    assert len(synced) == 2 and steps_on_disk() == [1, 2, 3]
    write_json_atomic(tmp_path / "final_validation.json", {"global_step": 3})
    assert len(synced) == 3  # the run's other artifacts keep their fsync
