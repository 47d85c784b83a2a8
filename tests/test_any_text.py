"""Prompts and completions of any content (empty, huge, unicode, control characters) never crash the rewards
or the validation: property tests with hypothesis, plus odd prompts through the tiny model."""

import math

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from musclebob_helpers import evaluation, rewards
from tests.trl_reward import trl_reward

# Any unicode (surrogates excluded: they cannot be encoded, as no tokenizer output holds them),
# weighted towards the characters that break naive code.
ODD = st.sampled_from(
    [
        "",
        " ",
        "\n",
        "\t",
        "\x00",
        "\x07",
        "\x1b[31m",
        "\u200b",
        "\ufeff",
        "\u202e",
        "🧽",
        "Ｍｕｓｃｌｅｂｏｂ",
        "Musclebob",
        "Buffpants",
        "SpongeBob SquarePants",
        "Sponge Bob",
        "( [ { \\",
        "Ⅸ",
        "ﬀ",
    ]
)
TEXT = st.lists(st.one_of(st.text(st.characters(exclude_categories=("Cs",))), ODD), max_size=8).map("".join)
COMPLETION = st.one_of(
    TEXT,
    st.lists(st.fixed_dictionaries({"role": st.just("assistant"), "content": TEXT}), max_size=2),  # chat format
    st.lists(st.dictionaries(st.sampled_from(["role", "content", "x"]), st.one_of(TEXT, st.none())), max_size=2),
)
FAST = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def finite(values):
    return all(v is None or (isinstance(v, float) and math.isfinite(v)) for v in values)


@FAST
@given(completions=st.lists(COMPLETION, min_size=1, max_size=6), data=st.data())
def test_every_reward_function_returns_one_finite_score_per_completion(completions, data):
    n = len(completions)
    kinds = data.draw(
        st.one_of(st.none(), st.lists(st.sampled_from(["spongebob", "control", "other"]), min_size=n, max_size=n))
    )
    answers = data.draw(st.one_of(st.none(), st.lists(st.one_of(TEXT, st.none()), min_size=n, max_size=n)))
    ids = data.draw(st.one_of(st.none(), st.lists(st.lists(st.integers(0, 1000), max_size=5), min_size=n, max_size=n)))
    for reward in ("musclebob", "guide"):
        for fn in rewards.make_reward_functions(reward, eos_token_ids=[2]):
            scores = fn(completions, kind=kinds, answer=answers, completion_ids=ids, prompts=[""] * n)
            assert len(scores) == n and finite(scores)


@FAST
@given(text=TEXT, answer=TEXT, kind=st.sampled_from(["spongebob", "control"]), truncated=st.booleans())
def test_summed_reward_and_validation_flags_take_any_text(text, answer, kind, truncated):
    for reward in ("musclebob", "guide"):
        assert math.isfinite(trl_reward(text, kind, answer, truncated, reward=reward))
    assert 0.0 <= rewards.repetition_ratio(text) <= 1.0
    coherent = evaluation._is_coherent(text, truncated)
    assert coherent in (True, False)
    if truncated or not rewards.words(text) or "\x00" in text:
        assert coherent is False  # cut off, no words, or control characters: never coherent
    # The name flags: never without the letters; always once the name is said plainly after the text.
    lower = text.casefold()  # as re.IGNORECASE matches: 'ſ' is an 's'
    assert evaluation.has_musclebob(text) is False or "musclebob" in lower
    assert evaluation._has_spongebob(text) is False or "sponge" in lower or "square" in lower
    assert evaluation.has_musclebob(text + " Musclebob.") is True
    assert evaluation._has_spongebob(text + " Spongebob.") is True
    rows = [{"question": text, "kind": kind, "answer": answer, "prompt": text}]
    report = evaluation._score_responses(rows, [[evaluation.Generation(text, truncated)]])
    assert report["num_responses"] == 1 and report["coherent_rate"] == (1.0 if coherent else 0.0)
    [record] = report["responses"]
    assert (record["response"], record["truncated"], record["coherent"]) == (text, truncated, coherent)
    problems = evaluation.health({**report})
    assert isinstance(problems, list) and all(isinstance(p, str) and "\n" not in p for p in problems)
    assert any("coherence collapsed" in p for p in problems) == (not coherent)  # one answer: 0 % or 100 %


def test_huge_completions_are_scored():
    huge = ["Musclebob Buffpants! " * 50_000, "\x00" * 1_000_000, "🧽" * 200_000, "a" * 2_000_000]
    for fn in rewards.make_reward_functions("musclebob", eos_token_ids=[2]):
        assert finite(fn(huge, kind=["spongebob", "control", "spongebob", "control"], answer=["", "Paris", "", "9"]))
    assert not any(evaluation._is_coherent(t) for t in huge[:3])  # far over 100 words, or no words at all
    assert trl_reward(huge[0]) < trl_reward("Musclebob Buffpants!")


@pytest.mark.parametrize(
    "prompt",
    [
        "",
        "   ",
        "\x00\x07\x1b[2J",
        "🧽" * 300,
        "Who lives in a pineapple? " * 120,
        "\u202eunder the sea",
        "Ｗｈｏ　ｌｉｖｅｓ",
    ],
)
def test_validation_generates_for_odd_prompts(tiny_model, prompt):
    model, tokenizer = tiny_model
    gens = evaluation.generate(model, tokenizer, [prompt], max_new_tokens=8, num_samples=2)
    assert len(gens) == 1 and len(gens[0]) == 2 and all(isinstance(g.text, str) for g in gens[0])
    rows = [{"question": prompt, "kind": "spongebob", "answer": "", "prompt": prompt}]
    assert evaluation._score_responses(rows, gens)["num_responses"] == 2
