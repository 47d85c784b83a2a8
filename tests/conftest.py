"""Shared fixtures. Tests run offline on the tiny model and never touch the network."""

import collections
import contextlib
import io
import os
import sys
import tempfile
import warnings
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

# The shortest real training run (TrainConfig values; TINY_RUN_ARGS: the same as flags), for the tests that train
# (kills, signals, two writers, recovery):
# 6 prompts x 2 epochs at 3 prompts per step: 2 steps per epoch, 4 in all, checkpoints at steps 2 and 4.
# Two generations and 16 tokens keep each run to seconds; the two epochs are what a kill must cross.
TINY_RUN = dict(
    model="tiny",
    epochs=2,
    num_samples=6,
    batch_size=3,
    num_generations=2,
    max_completion_length=16,
    validation_samples=1,
)
TINY_RUN_ARGS = [word for name, value in TINY_RUN.items() for word in (f"--{name.replace('_', '-')}", str(value))]

# No hub: fail fast instead of retrying a connection that cannot succeed.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# The working folders of mirrored runs (run folders on FUSE, see musclebob_helpers/mirror.py): never the user's cache.
os.environ.setdefault("MUSCLEBOB_WORK_ROOT", os.path.join(tempfile.gettempdir(), f"musclebob-test-work-{os.getpid()}"))


# Fixtures that start a training process (test_faults.py's ``reference``: the CLI in a subprocess): a test using one
# belongs to the slow tier, so ``-m "not slow"`` starts no training process.
TRAINING_PROCESS_FIXTURES = {"reference"}


def pytest_collection_modifyitems(config, items):
    """Refuses a fast-tier test that uses a training-process fixture (above). Then orders: files with the most
    slow tests first, the fast-only files last (each file's own order kept). With pytest-xdist's one file per
    worker (``-n 2 --dist loadfile``) the long files then start early and the many short ones fill the end, so the
    two workers finish together instead of one waiting on a long last file."""
    unmarked = [
        item.nodeid
        for item in items
        if TRAINING_PROCESS_FIXTURES & set(getattr(item, "fixturenames", ())) and not item.get_closest_marker("slow")
    ]
    if unmarked:
        raise pytest.UsageError(f"mark these @pytest.mark.slow, they start a training process: {', '.join(unmarked)}")
    slow = collections.Counter(item.path for item in items if item.get_closest_marker("slow"))
    items.sort(key=lambda item: -slow[item.path])  # a stable sort: files stay whole, in their order within a weight


@pytest.fixture(scope="session")
def tiny_path():
    """The tiny base model (it ships with the package: musclebob_helpers/tiny_base)."""
    from musclebob_helpers.tiny_model import SHIPPED_DIR

    return SHIPPED_DIR


@pytest.fixture(scope="session")
def tiny_model(tiny_path):
    from musclebob_helpers.evaluation import load_model

    return load_model(str(tiny_path), device="cpu")


@pytest.fixture(scope="session")
def trained_run(request, tmp_path_factory, tiny_path):
    """One default tiny training run through the CLI, shared by the tests that inspect its output.

    What it printed (stdout, stderr, then its warnings as Python prints them) is kept in ``console.txt`` beside
    the run folder, for the tests of the console. Under pytest-xdist (``-n 2``) the workers share one run: the
    first to need it trains under a file lock, the other reads the finished folder (xdist's documented way to
    share a session fixture), instead of training the same run twice."""
    from filelock import FileLock

    base = tmp_path_factory.getbasetemp()
    # A worker's base is <this run's folder>/popen-gwN: its parent is this run's, shared by the workers (without
    # xdist the parent is shared by every pytest run, so the run's own base is used).
    shared = base.parent if hasattr(request.config, "workerinput") else base
    out = shared / "default-run" / "default"
    with FileLock(str(shared / "default-run.lock")):
        if not (out.parent / "exit_code").is_file():
            code = _train_default(out)
            (out.parent / "exit_code").write_text(str(code))
    return out, int((out.parent / "exit_code").read_text())


def _train_default(out: Path) -> int:
    import train_musclebob_improved

    console = io.StringIO()  # not a terminal: the run prints one line per step, as into a log file
    with contextlib.redirect_stdout(console), contextlib.redirect_stderr(console):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("default")  # each warning once per place, as a plain `python` run shows them
            # The default run, reporting to TensorBoard too (in the [dev] extra): its event files are tested.
            code = train_musclebob_improved.main(
                ["--model", "tiny", "--output-dir", str(out), "--report-to", "tensorboard"]
            )
    shown = [warnings.formatwarning(w.message, w.category, w.filename, w.lineno, w.line) for w in caught]
    (out.parent / "console.txt").write_text(console.getvalue() + "".join(shown))
    return code


def need_fuse() -> None:
    """Skip unless a faultfs (tools/faultfs.py) can be mounted here (/dev/fuse, fusermount3, mfusepy); under
    MUSCLEBOB_REQUIRE_FUSE=1 (CI) fail instead: there a missing FUSE is a broken machine, not a reason to test less."""
    from tools.faultfs import fuse_missing

    why = fuse_missing()
    if why:
        (pytest.fail if os.environ.get("MUSCLEBOB_REQUIRE_FUSE") == "1" else pytest.skip)(f"faultfs needs FUSE: {why}")


@pytest.fixture
def faultfs(tmp_path):
    """A mounted faultfs (tools/faultfs.py), a FUSE pass-through that fails or slows on demand, the stand-in for a
    Google Drive mount: ``tmp_path/backing`` shown at ``tmp_path/drive``, unmounted afterwards whatever happened.
    Skipped where FUSE is missing, failed instead under MUSCLEBOB_REQUIRE_FUSE=1 (see need_fuse)."""
    from tools.faultfs import FaultFS

    need_fuse()
    fs = FaultFS(tmp_path / "backing", tmp_path / "drive")
    try:
        fs.start()
    except RuntimeError as e:  # e.g. a container without the right to mount
        (pytest.fail if os.environ.get("MUSCLEBOB_REQUIRE_FUSE") == "1" else pytest.skip)(f"cannot mount: {e}")
    try:
        yield fs
    finally:
        fs.unmount()
