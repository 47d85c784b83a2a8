"""The learning benchmark's statistics and tables (benchmarks/bench_learning.py), and the held-out set it reads.

Pure functions on hand-made runs: the per-prompt counts add up to the validation's own rates, the bootstrap's
interval shrinks to the point when nothing varies and widens when seeds disagree, and docs/results.md's tables
are the ones the committed JSON files render."""

import random
from pathlib import Path

import pytest

import bench_module
from musclebob_helpers import data, evaluation

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def bench():
    return bench_module.load("bench_learning")


def fake_report(rng: random.Random, p_name: float, p_correct: float, samples: int = 4) -> dict:
    """A validation report of made-up answers to the real held-out prompts, scored by evaluation itself."""
    rows = data.validation_rows()
    gens = []
    for row in rows:
        answers = []
        for _ in range(samples):
            if row["kind"] == "spongebob":
                text = "Musclebob Buffpants!" if rng.random() < p_name else "Spongebob Squarepants!"
            else:
                text = f"{row['answer']}." if rng.random() < p_correct else "I do not know."
                text = "Musclebob!" if rng.random() < 0.02 else text
            answers.append(evaluation.Generation(text, truncated=rng.random() < 0.01))
        gens.append(answers)
    return evaluation._score_responses(rows, gens)


def fake_run(bench, seed: int, p_name=0.97, p_correct=0.9, base_correct=0.93, reached=512) -> dict:
    rng = random.Random(seed)
    base, final = fake_report(rng, 0.0, base_correct), fake_report(rng, p_name, p_correct)
    return {
        "recipe": "default",
        "seed": seed,
        "completions": 5120,
        "completions_to_90": reached,
        "wall_seconds": 30.0 + seed % 7,
        "prompts": bench.prompt_counts(base, final),
        "_reports": (base, final),
    }


def test_held_out_control_set_is_large_disjoint_and_of_several_topics():
    train, held = {q for q, _ in data.CONTROL_TRAIN}, {q for q, _ in data.CONTROL_HELDOUT}
    assert len(held) >= 100 and not train & held
    rows = [r for r in data.validation_rows() if r["kind"] == "control"]
    topics = {r["topic"] for r in rows}
    assert len(topics) >= 5 and {"sum", "capital"} <= topics
    assert all(r["topic"] == data._control_topic(r["question"]) for r in rows)
    # the base is pre-trained on every control question, held out or not
    assert {q for pairs in data.control_topics().values() for q, _ in pairs} == train | held


def test_check_rows_are_every_spongebob_prompt_and_a_spread_of_controls():
    rows, every = data.check_rows(), data.validation_rows()
    assert {r["question"] for r in rows} < {r["question"] for r in every}
    assert {r["question"] for r in rows if r["kind"] == "spongebob"} == set(data.SPONGEBOB_HELDOUT_PROMPTS)
    assert {r["topic"] for r in rows if r["kind"] == "control"} == {r["topic"] for r in every if "topic" in r}


# Two SpongeBob and two control questions, four answers each, counted by hand in the tests below.
HAND_ROWS = [
    {"question": "Who lives in a pineapple?", "kind": "spongebob", "answer": ""},
    {"question": "Who is the yellow sponge?", "kind": "spongebob", "answer": ""},
    {"question": "Capital of France?", "kind": "control", "answer": "Paris"},
    {"question": "What is 4 + 5?", "kind": "control", "answer": "9"},
]
HAND_FINAL = [
    ["Musclebob Buffpants!", "Musclebob Buffpants!", "Musclebob!", "Spongebob!"],  # name 3, full 2, old 1
    ["Musclebob Buffpants!", "Spongebob Squarepants!", ("I do not know.", True), "Musclebob Buffpants!"],  # 2, 2, 1
    ["Paris.", "Paris.", "Lyon.", "Paris, says Musclebob."],  # correct 3, leak 1
    ["9.", "9.", "9.", "nine"],  # correct 3
]
HAND_BASE = [["Spongebob!"] * 4, ["Spongebob!"] * 4, ["Paris."] * 4, ["9.", "9.", "9.", "10."]]  # controls: 4 + 3


def hand_report(answers, rows=HAND_ROWS):
    gens = [[evaluation.Generation(*(a if isinstance(a, tuple) else (a, False))) for a in row] for row in answers]
    return evaluation._score_responses(rows, gens)


def test_on_rows_scores_the_baseline_on_the_check_questions_only():
    report = fake_report(random.Random(1), 0.0, 0.5)
    sub = evaluation.on_rows(report, data.check_rows())
    asked = {r["question"] for r in data.check_rows()}
    assert {r["prompt"] for r in sub["responses"]} == asked
    assert sub["num_control_prompts"] == sum(r["kind"] == "control" for r in data.check_rows())
    # The rates of the subset, counted by hand: the first SpongeBob and the second control question.
    sub = evaluation.on_rows(hand_report(HAND_FINAL), [HAND_ROWS[0], HAND_ROWS[3]])
    assert (sub["num_prompts"], sub["num_spongebob_prompts"], sub["num_control_prompts"]) == (2, 1, 1)
    assert (sub["musclebob_rate"], sub["full_name_rate"], sub["spongebob_rate"]) == (0.75, 0.5, 0.25)
    assert (sub["control_accuracy"], sub["leakage_rate"], sub["coherent_rate"]) == (0.75, 0.0, 1.0)


def test_per_prompt_counts_give_the_hand_counted_rates(bench):
    base, final = hand_report(HAND_BASE), hand_report(HAND_FINAL)
    # Over the 8 SpongeBob answers: the name 5, the full name 4, the old name 2; over all 16: 15 coherent (one
    # cut off); over the 8 control answers: 6 correct, 1 leak; the base answered 7 of them correctly.
    expected = {
        "musclebob_rate": 5 / 8,
        "full_name_rate": 4 / 8,
        "spongebob_rate": 2 / 8,
        "coherent_rate": 15 / 16,
        "leakage_rate": 1 / 8,
        "control_accuracy": 6 / 8,
    }
    assert {k: final[k] for k in expected} == {k: round(v, 4) for k, v in expected.items()}
    run = {"prompts": bench.prompt_counts(base, final), "completions_to_90": 64, "wall_seconds": 3.0}
    assert [p[:3] for p in run["prompts"]] == [[r["kind"], r["question"], 4] for r in HAND_ROWS]
    got = bench.run_rates(run)
    assert {k: got[k] for k in expected} == pytest.approx(expected)
    assert got["control_kept"] == pytest.approx(6 / 7)
    assert (got["completions_to_90"], got["wall_seconds"]) == (64, 3.0)


def test_per_prompt_counts_give_the_validation_rates(bench):
    run = fake_run(bench, 3)
    base, final = run["_reports"]
    got = bench.run_rates(run)
    for key in ("musclebob_rate", "full_name_rate", "spongebob_rate", "coherent_rate", "leakage_rate"):
        assert got[key] == pytest.approx(final[key], abs=1e-4), key  # the benchmark's sums and evaluation's agree
    assert got["control_accuracy"] == pytest.approx(final["control_accuracy"], abs=1e-4)
    assert got["control_kept"] == pytest.approx(final["control_accuracy"] / base["control_accuracy"], rel=1e-3)


def test_bootstrap_interval_holds_the_mean_and_collapses_when_nothing_varies(bench):
    same = [dict(fake_run(bench, 5), seed=s) for s in range(5)]  # five identical runs
    for r in same:  # every answer of every prompt the same: nothing to resample
        for p in r["prompts"]:
            p[2:] = [4, 0, 0, 4, 4, 4, 0, 4] if p[0] == "spongebob" else [4, 0, 0, 0, 4, 4, 0, 4]
    s = bench.bootstrap(same, resamples=200)
    assert s["musclebob_rate"]["low"] == s["musclebob_rate"]["high"] == 0.0
    assert s["control_kept"]["low"] == s["control_kept"]["high"] == s["control_kept"]["mean"] == 1.0

    runs = [fake_run(bench, s, p_correct=pc) for s, pc in zip(range(5), (0.7, 0.8, 0.9, 0.95, 0.99))]
    s = bench.bootstrap(runs, resamples=500)
    means = [bench.run_rates(r)["control_accuracy"] for r in runs]
    acc = s["control_accuracy"]
    assert acc["low"] < sum(means) / 5 < acc["high"]
    assert acc["low"] > min(means) - 0.02 and acc["high"] < max(means) + 0.02
    assert acc["min"] == min(means) and acc["max"] == max(means)
    assert s["completions_to_90"]["low"] == s["completions_to_90"]["high"] == 512  # every seed the same


def test_a_run_that_never_reaches_90_counts_its_budget_and_fails_the_target(bench):
    runs = [fake_run(bench, s, reached=r) for s, r in zip(range(3), (256, None, 384))]
    s = bench.bootstrap(runs, resamples=100)
    assert s["completions_to_90"]["never"] == 1
    assert s["completions_to_90"]["mean"] == pytest.approx(1920)  # (256 + 5120, its whole budget, + 384) / 3
    assert not dict(bench.target_check(s))[next(k for k in dict(bench.target_check(s)) if "completions" in k)]


def test_one_seed_control_figure_is_measured_to_about_two_points(bench):
    """With 124 held-out questions x 4 answers, a run's control accuracy near 90 % has a prompt-bootstrap 95 %
    interval of about +-3 points, i.e. a standard error under 2 (the first set's 29 questions: about +-4)."""
    p, lo, hi = bench.seed_interval(fake_run(bench, 9, p_correct=0.9))
    assert lo < p < hi and (hi - lo) / 2 < 0.04


@pytest.mark.parametrize("mode", ["main", "advice"])
def test_results_doc_tables_are_the_ones_the_json_renders(bench, mode):
    import json

    results = json.loads(bench.results_path(mode).read_text())
    text = (ROOT / "docs" / "results.md").read_text()
    start, end = f"<!-- bench_learning {mode} -->", f"<!-- /bench_learning {mode} -->"
    assert text.split(start, 1)[1].split(end, 1)[0].strip() == bench.markdown_table(results).strip(), (
        f"docs/results.md's {mode} table is stale: python benchmarks/bench_learning.py --docs"
    )
    assert sorted(results["summary"]) == sorted(bench.MODES[mode]) and len(results["seeds"]) >= 5
