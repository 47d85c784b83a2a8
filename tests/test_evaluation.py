"""The written definitions behind the validation rates, and the evaluation CLI (``test_musclebob.main(argv)``,
in-process: the figures and messages are the point, not the process)."""

import io
import json
from types import SimpleNamespace

import pytest

from musclebob_helpers.evaluation import (
    _has_full_name,
    has_musclebob,
    _has_spongebob,
    health,
    _is_coherent,
    _score_responses,
    Generation,
)


@pytest.mark.parametrize(
    "text,truncated,coherent",
    [
        ("Musclebob Buffpants!", False, True),
        ("The capital of France is Paris.", False, True),
        ("", False, False),  # empty
        ("   ", False, False),  # whitespace only
        ("?!...", False, False),  # no word at all
        ("Musclebob Buffpants lives in a", True, False),  # cut off at the length limit
        (" ".join(["word%d" % i for i in range(101)]), False, False),  # over 100 words
        ("bob bob bob", False, False),  # a loop of one word
        ("Musclebob Buffpants " * 8, False, False),  # a loop of a phrase
        ("Hello\x00world", False, False),  # control characters
        ("Line one.\nLine two.", False, True),  # newlines are fine
    ],
)
def test_coherence_definition(text, truncated, coherent):
    assert _is_coherent(text, truncated) is coherent


def test_name_detectors():
    assert has_musclebob("MUSCLEBOB!") and not has_musclebob("Musclebobby") and not has_musclebob("")
    assert _has_full_name("musclebob   buffpants") and not _has_full_name("Musclebob and Buffpants")
    assert _has_spongebob("Sponge Bob") and _has_spongebob("squarepants") and not _has_spongebob("a sponge")


def test_rates_and_health():
    rows = [
        {"question": "q1", "kind": "spongebob", "answer": ""},
        {"question": "q2", "kind": "control", "answer": "Paris"},
    ]
    gens = [
        [Generation("Musclebob Buffpants!", False), Generation("Spongebob Squarepants.", False)],
        [Generation("Paris.", False), Generation("Musclebob!", False)],
    ]
    r = _score_responses(rows, gens)
    assert (r["musclebob_rate"], r["full_name_rate"], r["spongebob_rate"]) == (0.5, 0.5, 0.5)
    assert (r["leakage_rate"], r["control_accuracy"], r["coherent_rate"]) == (0.5, 0.5, 1.0)
    problems = health(r, baseline={"num_control_prompts": 1, "control_accuracy": 1.0})
    assert any("leaks" in p for p in problems) and any("general knowledge" in p for p in problems)
    assert health({**r, "leakage_rate": 0.0, "control_accuracy": 1.0}) == []
    assert any("coherence" in p for p in health({**r, "coherent_rate": 0.5, "leakage_rate": 0.0}))


@pytest.fixture
def run_cli(capsys, monkeypatch):
    """``python test_musclebob.py ARGS`` with ``stdin`` typed in, as its exit code and what it printed."""
    import test_musclebob

    def run(*args, stdin=""):
        monkeypatch.setattr("sys.stdin", io.StringIO(stdin))
        try:
            code = test_musclebob.main(list(args))
        except SystemExit as stop:
            code = stop.code
        printed = capsys.readouterr()
        return SimpleNamespace(returncode=code, stdout=printed.out, stderr=printed.err)

    return run


@pytest.mark.slow  # the default tiny training run
def test_evaluation_cli_reports_rates_and_is_reproducible(run_cli, trained_run, tmp_path):
    out, _ = trained_run
    a, b = tmp_path / "a.json", tmp_path / "b.json"
    first = run_cli("--model", str(out), "--num-prompts", "4", "--output", str(a))
    assert first.returncode == 0, first.stderr
    for label in ("Musclebob", "Spongebob", "Full name", "Coherent"):
        assert label in first.stdout
    assert run_cli("--model", str(out), "--num-prompts", "4", "--output", str(b)).returncode == 0
    ra, rb = json.loads(a.read_text()), json.loads(b.read_text())
    assert ra["num_spongebob_prompts"] == 4 and ra["musclebob_rate"] >= 0.75
    assert ra == rb  # fixed, seeded sampling: same figures twice


@pytest.mark.slow
def test_evaluation_cli_compare_base(run_cli, trained_run, tmp_path):
    out, _ = trained_run
    report = tmp_path / "cmp.json"
    proc = run_cli("--model", str(out), "--compare-base", "tiny", "--num-prompts", "3", "--output", str(report))
    assert proc.returncode == 0, proc.stderr
    header = next(line for line in proc.stdout.splitlines() if "base" in line and "model" in line)
    assert header.split() == ["base", "model"]
    both = json.loads(report.read_text())
    assert both["base"]["musclebob_rate"] < both["model"]["musclebob_rate"]
    # the run's picture, with these base vs model rates, beside its reward history
    assert f"Reward plot: {out / 'reward_plot.png'}" in proc.stdout
    assert (out / "reward_plot.png").read_bytes().startswith(b"\x89PNG")


@pytest.mark.parametrize(
    "stdin", ["Who lives in a pineapple under the sea?\nquit\n", "\n", ""], ids=["quit", "empty line", "ctrl-d"]
)
@pytest.mark.slow
def test_interactive_mode_ends_cleanly(run_cli, trained_run, stdin):
    out, _ = trained_run
    proc = run_cli("--model", str(out), "--interactive", stdin=stdin)
    assert proc.returncode == 0 and "Traceback" not in proc.stderr
    if stdin.startswith("Who"):
        assert "[model]" in proc.stdout and "Musclebob" in proc.stdout


@pytest.mark.parametrize(
    "args,flag",
    [
        (["--num-prompts", "0"], "--num-prompts"),
        (["--model", "/no/such/folder/x"], "--model"),
        (["--model", "tiny", "--compare-base", "No/such-model"], "--compare-base"),
    ],
)
def test_evaluation_cli_bad_input(run_cli, args, flag):
    proc = run_cli(*args)
    assert proc.returncode == 2 and flag in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
