"""The scripts at first contact: a flag is matched whole, a typo gets one line naming the closest flag, ``--help``
is grouped with examples and the tiny model's defaults, and ``test_musclebob.py`` asks for the model it evaluates."""

import json
import re
from collections import Counter
from dataclasses import fields

import pytest

import merge_adapter
import test_musclebob
import train_musclebob_improved
from musclebob_helpers import training
from musclebob_helpers.cli import config_from_args
from musclebob_helpers.config import GROUPS, TrainConfig, flag_name

PROG = "train_musclebob_improved.py"


def run(main, argv, capsys):
    """``main(argv)`` as the shell would see it: (exit code, stdout, stderr's lines)."""
    try:
        code = main(argv)
    except SystemExit as stop:
        code = stop.code
    printed = capsys.readouterr()
    return code, printed.out, printed.err.strip().splitlines()


@pytest.fixture
def train(tmp_path, monkeypatch, capsys):
    """The training script on the tiny model, into a fresh folder; it must stop before training starts."""
    monkeypatch.setattr(training, "run_training", lambda *a, **k: pytest.fail("training started"))
    out = tmp_path / "out"
    return lambda *argv: run(
        train_musclebob_improved.main, ["--model", "tiny", "--output-dir", str(out), *argv], capsys
    )


@pytest.mark.parametrize(
    "typed,meant",
    [
        ("--learning_rate", "--learning-rate"),  # transformers' spelling
        ("--lr_scheduler", "--lr-scheduler"),
        ("--learning-rte=1e-3", "--learning-rate"),  # a typo, in the --flag=value form
        ("--epoch", "--epochs"),
        ("--lr-s", "--lr-scheduler"),  # argparse would have taken these prefixes for the flag
        ("--epo", "--epochs"),
    ],
)
def test_an_unknown_flag_is_one_line_naming_the_closest(train, tmp_path, typed, meant):
    code, out, err = train(typed, "cosine" if "sched" in meant or typed == "--lr-s" else "3")
    flag = typed.split("=")[0]
    assert code == 2 and err == [f"{PROG}: error: unrecognized argument {flag}; did you mean {meant}?"]
    assert out == "" and not (tmp_path / "out").exists()


def test_a_flag_like_no_other_gets_no_guess(train):
    code, _, err = train("--xyzzy")
    assert code == 2 and err == [f"{PROG}: error: unrecognized argument --xyzzy"]


def test_lr_is_the_learning_rate_and_no_longer_a_prefix_of_the_scheduler(tmp_path):
    out = ["--model", "tiny", "--output-dir", str(tmp_path / "out")]
    cfg, sources = config_from_args([*out, "--lr", "1e-4"], PROG, "test")
    assert cfg.learning_rate == 1e-4 and sources["learning_rate"] == "you" and cfg.lr_scheduler == "cosine"
    cfg, _ = config_from_args([*out, "--lr=2e-4"], PROG, "test")
    assert cfg.learning_rate == 2e-4


@pytest.fixture
def train_help(capsys):
    code, out, err = run(train_musclebob_improved.main, ["--help"], capsys)
    assert code == 0 and err == []
    return out


def sections(help_text: str) -> dict[str, str]:
    """--help's sections by title ("optimisation:" at the start of a line up to the next title)."""
    parts = re.split(r"^(\S[^\n]*):\n", help_text, flags=re.M)
    return dict(zip(parts[1::2], parts[2::2]))


def test_every_field_has_one_section():
    placed = Counter(name for names in GROUPS.values() for name in names)
    assert placed == Counter(f.name for f in fields(TrainConfig))  # each field once, none left out


def test_help_lists_each_flag_in_its_section_in_order(train_help):
    found = sections(train_help)
    titles = [t for t in found if t in GROUPS]
    assert titles == list(GROUPS)  # the sections, in the order config.GROUPS gives
    for title, names in GROUPS.items():
        for f in fields(TrainConfig):
            assert (re.search(rf"^  {re.escape(flag_name(f))}\b", found[title], re.M) is not None) == (f.name in names)
    assert train_help.startswith(f"usage: {PROG} [-h] [OPTIONS]\n")  # not 40 lines of flags before the first word


def test_help_shows_the_tiny_and_lora_defaults_and_two_examples(train_help):
    text = " ".join(train_help.split())  # argparse wraps at the terminal's width
    assert "passes over the training prompts (default: 5; 3 with --model tiny)" in text
    assert "--learning-rate LEARNING_RATE, --lr LEARNING_RATE" in text  # the alias, documented
    assert "(default: 5e-05; 0.0003 with --model tiny; 0.0005 with --lora; 0.002 with --lora --model tiny)" in text
    assert "(default: --gradient-checkpointing; --no-gradient-checkpointing with --model tiny)" in text
    assert "(default: 16)" in text and "(default: not set)" in text  # no tiny note where tiny changes nothing
    examples = sections(train_help)["examples"]
    assert f"    python {PROG} --model tiny --output-dir ./musclebob-tiny\n" in examples  # its line, unwrapped
    assert f"    python {PROG} --model Qwen/Qwen2.5-0.5B-Instruct --preset colab-t4\n" in examples


def test_training_docstring_says_no_build():
    assert "build" not in train_musclebob_improved.__doc__.split("\n\n")[1]  # the tiny model ships built


# --- test_musclebob.py ---------------------------------------------------------------------------------------


def evaluate(capsys, *argv):
    return run(test_musclebob.main, list(argv), capsys)


def test_evaluation_without_a_model_asks_for_one(capsys):
    code, out, err = evaluate(capsys)
    assert code == 2 and out == ""
    assert err == ["test_musclebob.py: error: no model to evaluate: pass --model RUN_FOLDER (or tiny, or a hub id)"]


def test_evaluation_takes_the_run_folder_as_its_argument(capsys, tmp_path):
    missing = str(tmp_path / "no-such-run")
    as_flag = evaluate(capsys, "--model", missing)
    assert as_flag[0] == 2 and len(as_flag[2]) == 1 and f"--model={missing!r} is not allowed" in as_flag[2][0]
    assert evaluate(capsys, missing) == as_flag  # RUN_FOLDER is --model
    assert evaluate(capsys, missing, "--model", missing) == as_flag  # both, the same: fine
    code, _, err = evaluate(capsys, missing, "--model", "tiny")
    assert code == 2 and err == [
        f"test_musclebob.py: error: RUN_FOLDER={missing!r} and --model='tiny' name two models: give one"
    ]


def test_evaluation_show_prints_that_many_answers_and_samples_still_works(capsys, tmp_path):
    """--show counts the answers printed (not --num-samples, the answers sampled); --samples is its old name."""
    report = tmp_path / "r.json"
    small = ["--num-prompts", "1", "--num-samples", "1", "--max-new-tokens", "4", "--output", str(report)]
    code, out, err = evaluate(capsys, "tiny", *small, "--show", "2")
    assert code == 0 and out.count("  Q: ") == 2 and json.loads(report.read_text())["model"] == "tiny"
    assert not [line for line in err if "error" in line or "--samples" in line]
    code, out, err = evaluate(capsys, "tiny", *small, "--samples", "1")
    assert code == 0 and out.count("  Q: ") == 1
    assert "test_musclebob.py: note: --samples is now --show (answers to print)" in err


def test_evaluation_help_shows_defaults_and_what_each_count_counts(capsys):
    code, out, _ = evaluate(capsys, "--help")
    text = " ".join(out.split())
    assert code == 0 and "RUN_FOLDER" in text and "python test_musclebob.py ./musclebob-tiny " in text
    assert (
        "--num-samples NUM_SAMPLES answers sampled per prompt, from which the rates are measured (default: 4)" in text
    )
    assert "--show N answers to print per model, as examples, out of all those sampled (default: 5)" in text
    assert "--max-new-tokens MAX_NEW_TOKENS longest answer in tokens (default: 64)" in text
    assert "--samples" not in text  # the old name works, unlisted


def test_evaluation_flags_are_matched_whole_with_a_guess(capsys):
    code, _, err = evaluate(capsys, "tiny", "--num-sample", "2")  # a prefix argparse would have accepted
    assert code == 2 and err == [
        "test_musclebob.py: error: unrecognized argument --num-sample; did you mean --num-samples?"
    ]


def test_merge_adapter_flags_are_matched_whole(capsys):
    code, out, err = run(merge_adapter.main, ["a", "b", "--he"], capsys)  # argparse took it for --help
    assert (
        code == 2 and out == "" and err == ["merge_adapter.py: error: unrecognized argument --he; did you mean --help?"]
    )
