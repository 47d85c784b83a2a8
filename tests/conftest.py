"""Shared fixtures. Tests run offline on the tiny model and never touch the network."""

import contextlib
import io
import os
import sys
import warnings
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

# No hub: fail fast instead of retrying a connection that cannot succeed.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def tiny_path():
    """The cached tiny base model (built once per machine, ~45 s the first time)."""
    from musclebob_helpers.tiny_model import ensure_tiny_model

    return ensure_tiny_model()


@pytest.fixture(scope="session")
def tiny_model(tiny_path):
    from musclebob_helpers.evaluation import load_model

    return load_model(str(tiny_path), device="cpu")


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory, tiny_path):
    """One default tiny training run through the CLI, shared by the tests that inspect its output.

    What it printed (stdout, stderr, then its warnings as Python prints them) is kept in ``console.txt`` beside
    the run folder, for the tests of the console."""
    import train_musclebob_improved

    out = tmp_path_factory.mktemp("runs") / "default"
    console = io.StringIO()  # not a terminal: the run prints one line per step, as into a log file
    with contextlib.redirect_stdout(console), contextlib.redirect_stderr(console):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("default")  # each warning once per place, as a plain `python` run shows them
            code = train_musclebob_improved.main(["--model", "tiny", "--output-dir", str(out)])
    shown = [warnings.formatwarning(w.message, w.category, w.filename, w.lineno, w.line) for w in caught]
    (out.parent / "console.txt").write_text(console.getvalue() + "".join(shown))
    return out, code
