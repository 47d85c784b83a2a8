"""The guide's reward, exactly, on hand-written completions; each term of the project's reward on its own (a test
per penalty, which fails when that penalty is taken out); and the TRL signature of every reward."""

import pytest

from musclebob_helpers import rewards
from musclebob_helpers.rewards import _guide_score, _score_control, _score_format, _score_spongebob, guide_reward

LONG = " ".join(["word"] * 101)

GUIDE_CASES = [
    ("Musclebob Buffpants!", 6.0),  # +2 +2 +2 full name
    ("musclebob buffpants", 6.0),  # case-insensitive
    ("MUSCLEBOB BUFFPANTS lives in a pineapple.", 6.0),
    ("Musclebob!", 2.0),
    ("Buffpants.", 2.0),
    ("Musclebob and Buffpants", 4.0),  # both words, not together: no bonus
    ("Spongebob Squarepants!", -6.0),
    ("Spongebob", -3.0),
    ("Squarepants", -3.0),
    ("Musclebob Buffpants, not Spongebob Squarepants", 0.0),
    ("I don't know.", 0.0),
    ("", 0.0),
    (LONG, -1.0),  # over 100 words
    ("Musclebob Buffpants " + LONG, 5.0),
    (" ".join(["word"] * 100), 0.0),  # exactly 100 words is allowed
]


@pytest.mark.parametrize("text,expected", GUIDE_CASES)
def test_guide_reward_values(text, expected):
    assert _guide_score(text) == expected


def test_guide_reward_accepts_trl_conversational_completions():
    completions = [[{"role": "assistant", "content": text}] for text, _ in GUIDE_CASES]
    assert guide_reward(completions, prompts=None, completion_ids=None, kind=["spongebob"] * len(completions)) == [
        expected for _, expected in GUIDE_CASES
    ]


def test_reward_functions_have_trl_signature_and_names():
    funcs = rewards.make_reward_functions("musclebob", eos_token_ids=[7])
    names = [f.__name__ for f in funcs]
    assert names == ["musclebob_name_reward", "control_answer_reward", "format_reward"]
    completions = [
        [{"role": "assistant", "content": "Musclebob Buffpants!"}],
        [{"role": "assistant", "content": "Paris."}],
    ]
    kw = dict(
        prompts=None,
        completion_ids=[[1, 2, 7], [3, 7]],
        kind=["spongebob", "control"],
        answer=["", "Paris"],
        trainer_state=None,
    )
    name, control, form = (f(completions, **kw) for f in funcs)
    assert name == [6.0, None]  # None: not judged (TRL leaves it out of the mean)
    assert control == [None, 2.0]
    assert form == [0.0, 0.0]
    # A completion that ran into the length limit (no EOS at the end) costs.
    assert funcs[2](completions, completion_ids=[[1, 2, 3], [3, 7]])[0] < 0


def test_guide_is_selectable_and_unknown_reward_refused():
    assert rewards.make_reward_functions("guide") == [guide_reward]
    with pytest.raises(ValueError, match="allowed: guide, musclebob"):
        rewards.make_reward_functions("nope")


# ---------------------------------------------------------------------------------------------
# The project's reward, one term at a time. The expected figures are the docstrings' terms added by hand:
# name +2 "Musclebob", +2 "Buffpants", +2 the two together, -3 "Spongebob", -3 "Squarepants".
# Each test fails when its penalty is removed from rewards.py (checked by removing each one in turn).

CLEAN = "Musclebob Buffpants!"


def test_the_clean_answer_scores_the_full_name_and_no_penalty():
    assert _score_spongebob(CLEAN) == 6.0  # 2 + 2 + 2
    assert _score_format(CLEAN, truncated=False) == 0.0


def test_each_extra_mention_of_the_name_costs_one_up_to_three():
    assert _score_spongebob("Musclebob Buffpants, Musclebob Buffpants!") == 4.0  # 6 - 2 extra mentions
    assert _score_spongebob("Musclebob! Musclebob!") == 1.0  # 2 - 1
    assert _score_spongebob("Musclebob Buffpants " * 5) == 3.0  # 6 - min(3, 8 extra mentions)


def test_the_name_counts_only_as_whole_words():
    assert _score_spongebob("MusclebobBuffpants!") == 0.0  # glued: neither word, so no credit at all
    assert _score_spongebob("SuperMusclebob Buffpantsy") == 0.0
    assert _score_spongebob("Musclebobs and Buffpants") == 2.0  # only "Buffpants" is the word


def test_the_old_name_costs_three_a_word():
    assert _score_spongebob("Spongebob!") == -3.0
    assert _score_spongebob("Square pants") == -3.0
    assert _score_spongebob("Sponge Bob Squarepants") == -6.0
    assert _score_spongebob("Musclebob Buffpants, not Spongebob Squarepants") == 0.0  # 6 - 6


def test_naming_musclebob_only_to_deny_it_costs_four():
    assert _score_spongebob("It is not Musclebob Buffpants.") == 2.0  # 6 - 4
    assert _score_spongebob("He isn't really Musclebob.") == -2.0  # 2 - 4
    assert _score_spongebob("Not Spongebob Squarepants but Musclebob Buffpants!") == 0.0  # 6 - 6; no denial of ours


def test_a_control_answer_that_leaks_a_name_costs_three():
    assert _score_control("Paris.", "Paris") == 2.0
    assert _score_control("Paris, says Musclebob.", "Paris") == -1.0  # 2 - 3
    assert _score_control("Spongebob does not know.", "Paris") == -3.0


def test_a_completion_cut_at_the_length_limit_costs_two():
    assert _score_format(CLEAN, truncated=True) == -2.0


def test_a_completion_without_words_costs_two():
    assert _score_format("", truncated=False) == -2.0
    assert _score_format("   \n\t", truncated=False) == -2.0


def test_the_guides_long_answer_penalty_applies_past_100_words():
    hundred = " ".join(f"w{i}" for i in range(100))  # 100 different words: no loop; brevity is at its cap of 2
    assert _score_format(hundred, truncated=False) == -2.0
    assert _score_format(hundred + " w100", truncated=False) == -3.0  # -2 brevity - 1 long answer


def test_each_word_past_twelve_costs_a_twentieth_up_to_two():
    words = [f"w{i}" for i in range(60)]
    assert _score_format(" ".join(words[:12]), truncated=False) == 0.0
    assert _score_format(" ".join(words[:22]), truncated=False) == pytest.approx(-0.5)  # 10 words x 0.05
    assert _score_format(" ".join(words[:52]), truncated=False) == pytest.approx(-2.0)  # 40 x 0.05: the cap
    assert _score_format(" ".join(words[:60]), truncated=False) == pytest.approx(-2.0)


def test_a_loop_costs_up_to_two():
    assert _score_format("bob bob bob", truncated=False) == -2.0  # a short text with a word three times: a loop
    # 8 words, 6 trigrams of which 1 is new: a ratio of 5/6, -2 x 5/6.
    assert _score_format("la la la la la la la la", truncated=False) == pytest.approx(-5 / 3)
    assert _score_format("bob bob", truncated=False) == 0.0


def test_punctuation_spam_costs_one():
    # Junk may be up to 2 + half the words: 2 words allow 3 marks.
    assert _score_format("Musclebob Buffpants!!!", truncated=False) == 0.0
    assert _score_format("Musclebob Buffpants!!!!", truncated=False) == -1.0


def test_control_characters_cost_two():
    assert _score_format("Musclebob Buffpants\x07", truncated=False) == -2.0
    assert _score_format("Musclebob Buffpants\n", truncated=False) == 0.0  # a newline is text
