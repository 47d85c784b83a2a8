"""Fault injection for the kill-anywhere tests: SIGKILL the training process at a chosen point.

Set ``MUSCLEBOB_FAULT=POINT:STEP`` in the environment of a training run and the process kills
itself with SIGKILL (as a Colab disconnect does: no cleanup, no ``finally``) at that point:

* ``generation:N`` - in the middle of generating step N's completions (a few tokens in)
* ``optimizer:N``  - inside step N's optimizer step (weights updated in memory, nothing logged or saved)
* ``checkpoint:N`` - in the middle of writing ``checkpoint-N/optimizer.pt`` (half its bytes on disk;
  the model weights are already written, ``trainer_state.json`` is not)
* ``history:N``    - in the middle of writing ``reward_history.json`` with step N's entry
  (half of the temporary file written, not yet renamed into place)

The real code paths run unchanged: the hooks are a trainer callback, a forward hook on the model
and a wrapper around ``torch.save``, installed only when the variable is set. Unset, ``callbacks()``
returns nothing and ``before_replace`` is one dictionary look-up.
"""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

FAULT_ENV = "MUSCLEBOB_FAULT"
POINTS = ("generation", "optimizer", "checkpoint", "history")


def parse(spec: str | None) -> tuple[str, int] | None:
    """``"optimizer:6"`` -> ``("optimizer", 6)``; None or "" -> None; anything else raises ValueError."""
    if not spec:
        return None
    point, _, step = spec.partition(":")
    if point not in POINTS or not step.isdigit() or int(step) < 1:
        raise ValueError(f"{FAULT_ENV}={spec!r}: expected POINT:STEP with POINT one of {', '.join(POINTS)}")
    return point, int(step)


def active() -> tuple[str, int] | None:
    return parse(os.environ.get(FAULT_ENV))


def kill(where: str) -> None:
    """Die at once, like a disconnected Colab runtime: SIGKILL, no cleanup."""
    print(f"[{FAULT_ENV}] killing the process {where}", file=sys.stderr, flush=True)
    sys.stdout.flush()
    os.kill(os.getpid(), signal.SIGKILL)


def before_replace(path: Path, tmp: Path) -> None:
    """Called by ``io.write_json_atomic`` between writing the temporary file and renaming it."""
    if FAULT_ENV not in os.environ:
        return
    fault = active()
    if not fault or fault[0] != "history" or path.name != "reward_history.json":
        return
    import json

    entries = json.loads(tmp.read_text())
    if entries and entries[-1].get("step") == fault[1]:
        data = tmp.read_bytes()
        tmp.write_bytes(data[: len(data) // 2])  # half a file, as a kill mid-write leaves it
        kill(f"while writing {path.name} for step {fault[1]}")


def _wrap_torch_save(step: int) -> None:
    """Make ``torch.save`` of ``checkpoint-<step>/optimizer.pt`` write half the file and die."""
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
            kill(f"while writing {target.parent.name}/{target.name}")
        return real_save(obj, f, *args, **kwargs)

    torch.save = save


def callbacks() -> list:
    """The trainer callbacks that carry out ``MUSCLEBOB_FAULT`` (none when it is unset)."""
    fault = active()
    if fault is None or fault[0] == "history":
        return []
    point, step = fault
    if point == "checkpoint":
        _wrap_torch_save(step)
        return []

    from transformers import TrainerCallback

    class FaultCallback(TrainerCallback):
        def on_step_begin(self, args, state, control, model=None, **kwargs):
            # global_step counts finished steps: step N begins when N - 1 are done.
            if point == "generation" and state.global_step == step - 1 and model is not None:
                import torch

                calls = []

                def hook(module, inputs):
                    if not torch.is_grad_enabled():  # generation runs without gradients
                        calls.append(1)
                        if len(calls) == 3:  # a few tokens into the completions
                            kill(f"while generating the completions of step {step}")

                model.register_forward_pre_hook(hook)

        def on_optimizer_step(self, args, state, control, **kwargs):
            if point == "optimizer" and state.global_step == step - 1:
                kill(f"inside the optimizer step of step {step}")

    return [FaultCallback()]
