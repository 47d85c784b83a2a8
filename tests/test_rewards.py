"""The guide's reward, exactly, on hand-written completions, and the TRL signature of every reward."""

import pytest

from musclebob_helpers import rewards
from musclebob_helpers.rewards import guide_reward, _guide_score

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
