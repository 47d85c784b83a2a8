"""The one small interface to Colab-only steps (setup, Drive, the run folder's place, keep-alive); everything else
in the notebooks runs anywhere. Tests drive the Colab branch with a stand-in ``google.colab`` module."""

from __future__ import annotations

import hashlib
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

from . import run_dir
from .config import ConfigError

ROOT = Path(__file__).resolve().parent.parent  # the repository root (this file is musclebob_helpers/colab.py)
LOCAL_RUNS = ROOT / "runs"  # off Colab (and on Colab with use_drive=False): runs go here (git-ignored)

_RUN_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


def is_colab() -> bool:
    try:
        import google.colab  # noqa: F401
    except ImportError:
        return False
    return True


def setup_project(root: str | Path = ROOT, log=print) -> Path:
    """On Colab: install what Colab lacks with ``colab_setup.sh`` (once per runtime) and show its report
    (what it installed, ``pip check``'s conflicts). Elsewhere: nothing."""
    root = Path(root)
    if not is_colab():
        log(
            f"Not on Colab: installing nothing (project at {root}; run `bash colab_setup.sh` once yourself "
            "if imports fail)."
        )
        return root
    marker, key = _setup_marker(root)
    if marker.is_file() and marker.read_text() == key:
        log("Colab: the project is already set up in this runtime.")
        return root
    log("Colab: installing what Colab lacks (a minute) ...")
    # the kernel's own interpreter: in a twin or a venv `python3` may be another
    env = {**os.environ, "PYTHON": sys.executable}
    done = subprocess.run(["bash", str(root / "colab_setup.sh")], capture_output=True, text=True, env=env)
    report = [line for line in (done.stdout or "").splitlines() if line.strip()]
    if done.returncode != 0:
        for line in report:
            log(line)
        why = (
            [line for line in report if "could not" in line]
            or report[-1:]
            or (done.stderr or "").strip().splitlines()[-1:]
            or ["no output"]
        )
        raise RuntimeError(f"colab_setup.sh failed (exit {done.returncode}): {why[0]}")
    for line in report[-6:] or ["Colab: setup done."]:
        log(line)
    marker.write_text(key)
    return root


def _setup_marker(root: Path) -> tuple[Path, str]:
    """Where a finished setup is recorded: the runtime's temporary folder (a project on Drive outlives the
    runtime's installs), keyed by the pins so new pins install again."""
    pins = root / "requirements-colab.txt"
    key = hashlib.sha256(f"{root.resolve()}\0{pins.read_text() if pins.is_file() else ''}".encode()).hexdigest()
    return Path(tempfile.gettempdir()) / f"musclebob-setup-{key[:12]}", key


def mount_drive(mountpoint: str | None = None, log=print) -> Path | None:
    """On Colab: mount Google Drive and return its ``MyDrive`` (a failure is one ``ConfigError``); else None."""
    if not is_colab():
        return None
    from google.colab import drive

    mountpoint = mountpoint or str(run_dir.DRIVE_MOUNT)  # tests (and the Colab twin) point it elsewhere
    my_drive = Path(mountpoint) / "MyDrive"
    if not my_drive.is_dir():
        try:
            drive.mount(mountpoint)
        except Exception as err:  # noqa: BLE001 - refused permission, timeout: all mean the same here
            raise ConfigError(
                "use_drive",
                True,
                f"Google Drive could not be mounted ({_first_line(err)}); "
                "rerun this cell and allow access, or set use_drive = False",
            ) from None
    if not my_drive.is_dir():
        raise ConfigError("use_drive", True, f"Google Drive is mounted but {my_drive} is missing; rerun this cell")
    log(f"Google Drive mounted: runs are kept in {my_drive}")
    return my_drive


def remount_drive(mountpoint: str | None = None) -> None:
    """Remount Google Drive (``force_remount``) for a mirror whose run folder stopped answering; Colab only."""
    if not is_colab():
        return
    from google.colab import drive

    drive.mount(mountpoint or str(run_dir.DRIVE_MOUNT), force_remount=True)


def resolve_run_dir(run_name: str, output_dir: str = "", drive_root: str | Path | None = None) -> Path:
    """``output_dir`` when given, else ``<drive_root>/<run_name>``, else ``runs/<run_name>``."""
    if not isinstance(run_name, str) or not _RUN_NAME.match(run_name):
        raise ConfigError("run_name", run_name, "a folder name of letters, digits, '.', '_' or '-' (no slashes)")
    if not isinstance(output_dir, str):
        raise ConfigError("output_dir", output_dir, "'' (the default location) or a folder path")
    if output_dir.strip():
        return run_dir.folder_path(output_dir)  # out/a/../b is out/b: check_writable makes no empty out/a
    return (Path(drive_root) if drive_root is not None else LOCAL_RUNS) / run_name


def runs_root(runs_root: str = "") -> Path:
    """The folder that holds runs: ``runs_root`` when given, else ``MyDrive`` on Colab, else ``runs/``."""
    if runs_root.strip():
        return Path(runs_root).expanduser()
    return mount_drive(log=lambda *_: None) or LOCAL_RUNS


def check_writable(path: str | Path) -> Path:
    """Prove ``path`` can hold a run (``run_dir.output_location_problem``), then create it; else one ``ConfigError``."""
    path = Path(path)
    problem = run_dir.output_location_problem(path)
    try:
        if problem is None:
            path.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        problem = f"{path} cannot be created ({err.strerror or err})"
    if problem:
        raise ConfigError("output_dir", str(path), f"the run folder cannot be written: {problem}")
    return path


_KEEP_ALIVE_CALLBACK = "musclebob.keep_alive"

# In the cell's output frame, every interval: a call into the kernel, a click on the connect button when the
# frame can reach it, mouse and key events. It lives as long as the cell's output.
_KEEP_ALIVE_JS = """
(() => {
  if (window.__musclebobKeepAlive) clearInterval(window.__musclebobKeepAlive);
  const ping = () => {
    try { google.colab.kernel.invokeFunction('%(callback)s', [], {}); } catch (e) {}
    for (const doc of [document, (() => { try { return window.top.document; } catch (e) { return null; } })()]) {
      if (!doc) continue;
      const button = doc.querySelector('colab-connect-button') || doc.querySelector('#connect');
      try { (button && button.shadowRoot ? button.shadowRoot.querySelector('#connect') || button : button)?.click(); }
      catch (e) {}
      doc.dispatchEvent(new MouseEvent('mousemove', {bubbles: true}));
      doc.dispatchEvent(new KeyboardEvent('keydown', {bubbles: true, key: 'Shift'}));
    }
  };
  window.__musclebobKeepAlive = setInterval(ping, %(interval_ms)d);
  ping();
  return 'keep-alive installed: every %(interval_s)d s';
})()
"""

# For the browser console (F12 -> Console), where it reaches the page itself: the most reliable variant.
_CONSOLE_SNIPPET = (
    "setInterval(() => document.querySelector('colab-connect-button')"
    "?.shadowRoot?.querySelector('#connect')?.click(), 60000)"
)

_pings = {"count": 0}


def _keep_alive_pings() -> int:
    """How many times the browser has pinged the kernel since ``keep_alive`` was installed."""
    return _pings["count"]


def keep_alive(enable: bool, interval_s: int = 60, log=print) -> str:
    """Opt-in: install the keep-alive JavaScript in this cell's output (Colab only). Returns what happened."""
    if not enable:
        status = "Keep-alive is off (set keep_alive = True in the parameters cell to turn it on)."
    elif not is_colab():
        status = "Not on Colab: no keep-alive needed."
    else:
        from google.colab import output

        def _ping():
            _pings["count"] += 1

        output.register_callback(_KEEP_ALIVE_CALLBACK, _ping)
        js = _KEEP_ALIVE_JS % {
            "callback": _KEEP_ALIVE_CALLBACK,
            "interval_ms": interval_s * 1000,
            "interval_s": interval_s,
        }
        status = str(output.eval_js(js))
        status += (
            ". Best effort: Colab may still end idle or long sessions (and free runtimes have a hard limit);"
            " the checkpoints on Drive are what make a disconnect harmless. Keep this cell's output;"
            f" for a stronger variant paste into the browser console (F12): {_CONSOLE_SNIPPET}"
        )
    log(status)
    return status


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0][:160] if text else type(err).__name__
