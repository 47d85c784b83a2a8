"""Test-only: run the training CLI and SIGKILL it at a chosen point, as a Colab disconnect would.

    python tests/fault_runner.py POINT:STEP <training flags>

kills the process (no cleanup, no ``finally``) at:

* ``generation:N`` - in the middle of generating step N's completions (a few tokens in)
* ``optimizer:N``  - inside step N's optimizer step (weights updated in memory, nothing logged or saved)
* ``checkpoint:N`` - in the middle of writing ``checkpoint-N/optimizer.pt`` (half its bytes on disk;
  the model weights are already written, ``trainer_state.json`` is not)
* ``history:N``    - in the middle of writing ``reward_history.json`` with step N's entry
  (half of the temporary file written, not yet renamed into place)
* ``train-end:N``  - as training ends after step N, the last: its checkpoint saved, the final model not yet written
* ``final:N``      - in the middle of writing the final ``model.safetensors`` (after step N, the last; its
  ``config.json`` is already written, half the weights' bytes are on disk)

or lets a save fail as a full disk fails it (the process goes on and handles the error as it would):

* ``nospace-checkpoint:N`` - ``checkpoint-N/optimizer.pt`` half written, then torch's own short-write error
  (``RuntimeError: [enforce fail at inline_container.cc:672] . unexpected pos``)
* ``nospace-history:N``    - the temporary file of ``reward_history.json`` with step N's entry half written, then
  ``OSError(ENOSPC)``
* ``nospace-final:N``      - the final ``model.safetensors`` (after step N, the last) half written, then
  safetensors' ``SafetensorError`` naming "No space left on device"

* ``fill-disk:N``           - as step N begins, a file next to the output folder takes all but 3 MB of its disk
  (a small tmpfs in the tests): the checkpoint saved after step N fails for real, in whichever write runs out

or sends the process a signal, as a user pressing Ctrl-C does:

* ``interrupt-twice:N`` - SIGINT as step N begins, and again while it generates its completions

or makes the run folder's file system fail, as Google Drive does (``tools/faultfs.py``, a FUSE mount):

* ``drive:N``           - as each step N of the schedule in ``$MUSCLEBOB_FAULTFS_SCHEDULE`` (JSON ``{"N": settings}``)
  begins, its settings are written to the faultfs control file ``$MUSCLEBOB_FAULTFS_CONTROL`` (N in the point
  itself is the first step of the schedule, for the usage line); settings with ``"after_a_failure": true`` wait
  first (up to 2 min) until the mount has failed an operation, so a fault that waits for bytes (a copy cut
  midway) is not healed before the copy reaches it however slow the machine is

or waits for one, so a test's signal lands at a known step however loaded the machine is:

* ``wait-for-signal:N`` - once step N is logged, print a line saying so on stdout and wait (up to 10 min) until
  the run's own signal handler has run

The product carries no hook for this: the faults are installed from outside, by wrapping ``os.replace``
(the rename ``io.write_json_atomic`` ends with), ``torch.save`` (the trainer's checkpoint writer), transformers'
``safe_save_file`` (the model writer) and ``training.run_training`` (to add a trainer callback), and then
``train_musclebob_improved.main`` runs as usual.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MARKER = "[MUSCLEBOB_FAULT]"  # the tests look for it on stderr: the process died here, not elsewhere
POINTS = (
    "generation",
    "optimizer",
    "checkpoint",
    "history",
    "train-end",
    "final",
    "nospace-checkpoint",
    "nospace-history",
    "nospace-final",
    "interrupt-twice",
    "wait-for-signal",
    "fill-disk",
    "drive",
)
BALLAST = "ballast"  # fill-disk's file, next to the output folder: deleting it frees the space
TORCH_SHORT_WRITE = "[enforce fail at inline_container.cc:672] . unexpected pos 576 vs 534"  # torch 2.x, a full disk


def parse(spec: str | None) -> tuple[str, int] | None:
    """``"optimizer:6"`` -> ``("optimizer", 6)``; None or "" -> None; anything else raises ValueError."""
    if not spec:
        return None
    point, _, step = spec.partition(":")
    if point not in POINTS or not step.isdigit() or int(step) < 1:
        raise ValueError(f"{spec!r}: expected POINT:STEP with POINT one of {', '.join(POINTS)}")
    return point, int(step)


def kill(where: str) -> None:
    """Die at once, like a disconnected Colab runtime: SIGKILL, no cleanup."""
    print(f"{MARKER} killing the process {where}", file=sys.stderr, flush=True)
    sys.stdout.flush()
    os.kill(os.getpid(), signal.SIGKILL)


def no_space(where: str) -> OSError:
    import errno

    print(f"{MARKER} no space left {where}", file=sys.stderr, flush=True)
    return OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), where)


def _half_written_history(step: int, full_disk: bool = False) -> None:
    """``os.replace`` of ``reward_history.json``'s temporary file holding step ``step``: cut it in half and die
    (``full_disk``: fail with ENOSPC instead, as the write would have)."""
    import json

    real_replace = os.replace

    def replace(src, dst, *args, **kwargs):
        src_path, dst_path = Path(src), Path(dst)
        if dst_path.name == "reward_history.json" and src_path.name.endswith(".tmp"):
            entries = json.loads(src_path.read_text())
            if entries and entries[-1].get("step") == step:
                data = src_path.read_bytes()
                src_path.write_bytes(data[: len(data) // 2])  # half a file, as a kill mid-write leaves it
                if full_disk:
                    raise no_space(f"while writing {dst_path.name} for step {step}")
                kill(f"while writing {dst_path.name} for step {step}")
        return real_replace(src, dst, *args, **kwargs)

    os.replace = replace


def _half_written_optimizer(step: int, full_disk: bool = False) -> None:
    """``torch.save`` of ``checkpoint-<step>/optimizer.pt``: write half the file and die (``full_disk``: raise
    torch's own error for a short write instead)."""
    import io

    import torch

    real_save = torch.save

    def save(obj, f, *args, **kwargs):
        target = Path(f) if isinstance(f, (str, os.PathLike)) else None
        if target is not None and target.name == "optimizer.pt" and target.parent.name == f"checkpoint-{step}":
            buffer = io.BytesIO()
            real_save(obj, buffer, *args, **kwargs)
            data = buffer.getvalue()
            with open(target, "wb") as fh:
                fh.write(data[: len(data) // 2])
            if full_disk:
                no_space(f"while writing {target.parent.name}/{target.name}")
                raise RuntimeError(TORCH_SHORT_WRITE)
            kill(f"while writing {target.parent.name}/{target.name}")
        return real_save(obj, f, *args, **kwargs)

    torch.save = save


def _half_written_final_model(full_disk: bool = True) -> None:
    """transformers' ``safe_save_file`` of the output folder's own ``model.safetensors`` (the final model, not a
    checkpoint's): write half of it, then fail as safetensors does on a full disk (``full_disk``), or die."""
    import transformers.modeling_utils as modeling_utils
    from safetensors import SafetensorError

    real_save = modeling_utils.safe_save_file

    def save(tensors, filename, *args, **kwargs):
        target = Path(filename)
        if target.name == "model.safetensors" and not target.parent.name.startswith("checkpoint-"):
            real_save(tensors, filename, *args, **kwargs)
            data = target.read_bytes()
            target.write_bytes(data[: len(data) // 2])
            if not full_disk:
                kill(f"while writing the final {target.name}")
            no_space(f"while writing {target.name}")
            raise SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")
        return real_save(tensors, filename, *args, **kwargs)

    modeling_utils.safe_save_file = save


def interrupt(where: str) -> None:
    """Ctrl-C: SIGINT to this process, its handler run before this returns (two are never merged into one)."""
    print(f"{MARKER} SIGINT {where}", file=sys.stderr, flush=True)
    signal.raise_signal(signal.SIGINT)


def wait_for_a_failure(control: Path, step: int, timeout: float = 120.0) -> None:
    """Until the counts of the faultfs server behind ``control`` show a failed operation."""
    import time

    from tools.faultfs import read_stats, stats_path

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if read_stats(stats_path(control))["failed"]:
            return
        time.sleep(0.05)
    print(f"{MARKER} the mount never failed before step {step}", file=sys.stderr)


def fault_callback(point: str, step: int):
    """A trainer callback that dies during step ``step``'s generation or optimizer step, or interrupts it twice."""
    from transformers import TrainerCallback

    class FaultCallback(TrainerCallback):
        def on_step_begin(self, args, state, control, model=None, **kwargs):
            # global_step counts finished steps: step N begins when N - 1 are done.
            if point in ("generation", "interrupt-twice") and state.global_step == step - 1 and model is not None:
                import torch

                calls = []
                if point == "interrupt-twice":
                    interrupt(f"as step {step} begins")

                def hook(module, inputs):
                    if not torch.is_grad_enabled():  # generation runs without gradients
                        calls.append(1)
                        if len(calls) == 3:  # a few tokens into the completions
                            if point == "interrupt-twice":
                                interrupt(f"again while generating the completions of step {step}")
                            kill(f"while generating the completions of step {step}")

                model.register_forward_pre_hook(hook)

            if point == "drive":
                settings = DRIVE_SCHEDULE.get(str(state.global_step + 1))
                if settings is not None:
                    import json

                    control = Path(os.environ["MUSCLEBOB_FAULTFS_CONTROL"])
                    settings = dict(settings)
                    if settings.pop("after_a_failure", False):
                        wait_for_a_failure(control, step=state.global_step + 1)
                    tmp = control.with_name(control.name + ".next")
                    tmp.write_text(json.dumps(settings))
                    os.rename(tmp, control)  # whole, as FaultFS.set writes it
                    print(f"{MARKER} drive {settings} as step {state.global_step + 1} begins", file=sys.stderr)

            if point == "fill-disk" and state.global_step == step - 1:
                ballast = Path(args.output_dir).parent / BALLAST
                free = os.statvfs(ballast.parent).f_bavail * os.statvfs(ballast.parent).f_frsize
                print(f"{MARKER} filling the disk as step {step} begins", file=sys.stderr, flush=True)
                with open(ballast, "wb") as fh:
                    os.posix_fallocate(fh.fileno(), 0, free - 3 * 2**20)

        def on_train_end(self, args, state, control, **kwargs):
            if point == "train-end" and state.global_step == step:
                kill(f"as training ends after step {step}, before the final model is written")

        def on_optimizer_step(self, args, state, control, **kwargs):
            if point == "optimizer" and state.global_step == step - 1:
                kill(f"inside the optimizer step of step {step}")

        def on_log(self, args, state, control, logs=None, **kwargs):
            if point == "wait-for-signal" and state.global_step == step and logs and "reward" in logs:
                print(f"{WAITING} after step {step}", flush=True)
                SIGNALLED.wait(600)

    return FaultCallback()


WAITING = f"{MARKER} waiting for a signal"
DRIVE_SCHEDULE = __import__("json").loads(os.environ.get("MUSCLEBOB_FAULTFS_SCHEDULE") or "{}")
SIGNALLED = threading.Event()  # set once the run's signal handler (training.GracefulStop) has run


def _noting_signals() -> None:
    from musclebob_helpers import training

    handle = training.GracefulStop._handle

    def noting(self, signum, frame):
        SIGNALLED.set()
        return handle(self, signum, frame)

    training.GracefulStop._handle = noting


def _with_callback(point: str, step: int) -> None:
    from musclebob_helpers import training

    if point == "wait-for-signal":
        _noting_signals()

    real_run_training = training.run_training

    def run_training(run, log=print, callbacks=(), **kwargs):
        return real_run_training(run, log=log, callbacks=[fault_callback(point, step), *callbacks], **kwargs)

    training.run_training = run_training


FORCE_COLLAPSE = "MUSCLEBOB_FORCE_COLLAPSE"  # "3,6": the mid-training checks at these steps see a collapse


def collapsing_check(steps, kept: float = 0.0):
    """``HealthMonitor.check_validation`` as a collapse makes it at ``steps``: the check's report with its control
    accuracy at ``kept`` times the baseline's (0: every control question answered wrong; ``evaluation.health``:
    general knowledge lost); the other steps' reports as they are."""
    from musclebob_helpers.monitoring import HealthMonitor

    real = HealthMonitor.check_validation

    def check_validation(self, state, report, control=None):
        if state.global_step in steps:
            report = {**report, "control_accuracy": kept * self.baseline["control_accuracy"] if kept else 0.0}
        return real(self, state, report, control)

    return check_validation


def install(point: str, step: int) -> None:
    steps = {int(s) for s in os.environ.get(FORCE_COLLAPSE, "").split(",") if s.strip()}
    if steps:
        from musclebob_helpers.monitoring import HealthMonitor

        HealthMonitor.check_validation = collapsing_check(steps)
    if point in ("history", "nospace-history"):
        _half_written_history(step, full_disk=point.startswith("nospace"))
    elif point in ("checkpoint", "nospace-checkpoint"):
        _half_written_optimizer(step, full_disk=point.startswith("nospace"))
    elif point in ("nospace-final", "final"):
        _half_written_final_model(full_disk=point == "nospace-final")
    else:
        _with_callback(point, step)


def main(argv: list[str]) -> int:
    try:
        fault, why = parse(argv[0] if argv else None), "no POINT:STEP given"
    except ValueError as err:
        fault, why = None, str(err)
    if fault is None:
        print(f"usage: python tests/{Path(__file__).name} POINT:STEP <training flags> ({why})", file=sys.stderr)
        return 2
    point, step = fault
    sys.path.insert(0, str(ROOT))  # this checkout's package and script, not an installed copy
    import train_musclebob_improved

    install(point, step)
    return train_musclebob_improved.main(argv[1:])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
