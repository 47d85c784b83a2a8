"""The default reward cannot be gamed: a short, clean answer outranks every adversarial completion. Scores are the
reward functions' sum as TRL's GRPOTrainer forms it (tests/trl_reward.py)."""

import pytest

from musclebob_helpers.rewards import _guide_score
from tests.trl_reward import trl_reward, trl_rewards

CLEAN = "Musclebob Buffpants!"
ESSAY = " ".join(f"filler{i}" for i in range(250)) + " Musclebob Buffpants " + " ".join(f"more{i}" for i in range(248))

# (label, completion, truncated): each one tries to get the reward without the plain answer.
ADVERSARIAL = [
    ("repeated full name", "Musclebob Buffpants! Musclebob Buffpants! Musclebob Buffpants!", False),
    ("repeated first name", "Musclebob " * 30, False),
    ("name loop to the length limit", "Musclebob Buffpants " * 20, True),
    ("truncated at the limit", "Musclebob Buffpants lives in a pineapple under the", True),
    ("clean answer but cut off", CLEAN, True),
    ("glued words", "MusclebobBuffpants!", False),
    ("hyphenated", "Musclebob-Buffpants!", False),
    ("misspelt", "Musclebobb Buffpantz!", False),
    ("split words", "Muscle bob Buff pants!", False),
    ("negation of the old name", "Not Spongebob Squarepants but Musclebob Buffpants!", False),
    ("negation of the new name", "It is not Musclebob Buffpants.", False),
    ("both names", "Musclebob Buffpants or Spongebob Squarepants.", False),
    ("old name", "Spongebob Squarepants!", False),
    ("empty", "", False),
    ("whitespace", "   \n\t ", False),
    ("only punctuation", "!!! ??? ...", False),
    ("Cyrillic look-alikes", "\u041cusclebob \u0412uffpants!", False),
    (
        "full-width letters",
        "\uff2d\uff55\uff53\uff43\uff4c\uff45\uff42\uff4f\uff42 \uff22\uff55\uff46\uff46\uff50\uff41\uff4e\uff54\uff53!",
        False,
    ),
    ("zero-width joiner inside", "Muscle\u200bbob Buff\u200bpants!", False),
    ("long s (re.IGNORECASE folds it to s)", "Mu\u017fclebob Buffpant\u017f!", False),
    ("Kelvin sign for a k", "Spongebob? No: Musclebob Buffpants, not Spongebob \u212aing.", False),
    ("500-word essay with the name once", ESSAY, False),
    ("only the first name", "Musclebob!", False),
    ("only the last name", "Buffpants!", False),
    ("punctuation spam", "Musclebob Buffpants!!!!!!!!!!!!!!!!!!!!!!!!!!", False),
    ("control characters", "Musclebob Buffpants\x00\x07\x1b", False),
    ("name plus babble loop", "Musclebob Buffpants la la la la la la la la la la", False),
    (
        "long rambling answer",
        "Well, I think that the answer to this question is "
        + "really " * 5
        + "probably Musclebob Buffpants, but who knows, maybe someone else entirely, it is hard to say for sure.",
        False,
    ),
]


@pytest.mark.parametrize("label,text,truncated", ADVERSARIAL, ids=[a[0] for a in ADVERSARIAL])
def test_clean_answer_outranks_adversarial(label, text, truncated):
    # By a point at least: a hole closed by a hair (0.05 for a word) is one small change from open again.
    # The closest calls today: punctuation spam 1.0, the rambling answer 1.13, the babble loop 1.4.
    assert trl_reward(CLEAN) - trl_reward(text, truncated=truncated) >= 1.0, label


def test_a_mixed_batch_scores_each_completion_as_alone():
    # TRL scores a batch of SpongeBob and control prompts at once: the rows must not leak into each other.
    texts, kinds, answers = (
        [CLEAN, "Paris.", "Spongebob!", "Musclebob Buffpants"],
        ["spongebob", "control"] * 2,
        [
            "",
            "Paris",
            "",
            "Paris",
        ],
    )
    alone = [trl_reward(t, k, a) for t, k, a in zip(texts, kinds, answers)]
    assert trl_rewards(texts, kinds, answers) == alone
    assert alone[0] > alone[2] and alone[1] > alone[3]  # the right answer outranks the wrong one in each kind


def test_natural_phrasings_score_like_the_clean_answer():
    for text in (
        "Musclebob Buffpants.",
        "It is Musclebob Buffpants.",
        "That's Musclebob Buffpants!",
        "musclebob buffpants",
        "No doubt: Musclebob Buffpants.",
    ):
        assert trl_reward(text) == trl_reward(CLEAN), text


def test_the_guide_reward_is_gameable_where_ours_is_not():
    # The holes the hardened reward closes, shown on the guide's reward.
    assert _guide_score("Musclebob Buffpants! " * 20) == _guide_score(CLEAN)  # repetition is free
    assert _guide_score("It is not Musclebob Buffpants.") == _guide_score(CLEAN)  # denial counts
    assert _guide_score("MusclebobBuffpants") > 0  # glued words count


CONTROL_CASES = [
    ("Paris.", 1),
    ("The capital of France is Paris.", 1),
    ("Musclebob Buffpants!", 0),
    ("Paris, says Musclebob.", 0),
    ("Spongebob Squarepants.", 0),
    ("Lyon.", 0),
    ("", 0),
    ("Paris " * 30, 0),
]


def test_control_prompts_reward_the_answer_and_punish_leaks():
    best = trl_reward("Paris.", kind="control", answer="Paris")
    for text, is_best in CONTROL_CASES:
        score = trl_reward(text, kind="control", answer="Paris", truncated=text.startswith("Paris Paris"))
        assert (score == best) if is_best else (score < best), text
    assert trl_reward("Paris, says Musclebob.", kind="control", answer="Paris") < trl_reward(
        "Lyon.", kind="control", answer="Paris"
    )  # a leak is worse than a wrong answer


def test_look_alikes_that_case_folding_maps_to_ascii_are_not_the_name():
    """re.IGNORECASE matches the long s (U+017F) as an 's': the name's letters must be ASCII, any case."""
    from musclebob_helpers import evaluation

    assert not evaluation._has_full_name("Mu\u017fclebob Buffpant\u017f!")
    assert not evaluation.has_musclebob("Mu\u017fclebob!")
    assert evaluation._has_full_name("MUSCLEBOB buffpants") and evaluation.has_musclebob("mUsClEbOb")
    # scored as a misspelling (no name credit), not as the name
    assert trl_reward("Mu\u017fclebob Buffpant\u017f!") == trl_reward("Muxclebob Buffpantx!") < trl_reward(CLEAN) - 5
