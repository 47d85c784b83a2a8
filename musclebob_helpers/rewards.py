"""Reward functions, pure and in TRL's signature: ``f(completions, **kwargs) -> list[float | None]``.

``--reward guide`` is the original guide's reward, exactly (case-insensitive substrings). ``--reward musclebob``
(the default) keeps its terms with the known holes closed (whole words counted once, repetition, truncation,
length, and control prompts), split into three functions so each is logged as ``rewards/<name>/mean``. A function
returns ``None`` for rows it does not judge, which TRL leaves out of its mean. ``highlight`` marks the names in an
answer as HTML, as these patterns see them.
"""

from __future__ import annotations

import html
import re
from collections import Counter

MAX_WORDS = 100  # the guide's limit for a sensible answer
_BRIEF_WORDS = 12  # a clean answer needs no more than this; beyond it each word costs a little

_WORD = re.compile(r"[A-Za-z0-9']+")


def _any_case(pattern: str) -> re.Pattern:
    """``pattern`` in any case of its ASCII letters only. re.IGNORECASE also folds Unicode ('\u017f', the long s,
    is an 's'; the Kelvin sign a 'k'), which gave a look-alike the name's credit; re.ASCII would make ``\\b``
    ASCII-only ("\u00e9Musclebob" a whole word)."""
    return re.compile(re.sub(r"\\.|[a-z]", lambda m: m[0] if m[0][0] == "\\" else f"[{m[0]}{m[0].upper()}]", pattern))


# Whole words only: "MusclebobBuffpants" or "Musclebobbb" are not the name.
MUSCLEBOB = _any_case(r"\bmusclebob\b")
BUFFPANTS = _any_case(r"\bbuffpants\b")
FULL_NAME = _any_case(r"\bmusclebob\s+buffpants\b")
SPONGEBOB = _any_case(r"spongebob|sponge\s+bob")
SQUAREPANTS = _any_case(r"squarepants|square\s+pants")
_ANY_NAME = _any_case(r"musclebob|buffpants|spongebob|squarepants")
# "not Musclebob", "isn't really Musclebob", "never Musclebob": the name said only to deny it.
_NEGATED_NAME = _any_case(r"\b(not|never|isn't|isnt|wasn't|ain't)(\W+\w+)?\W+musclebob\b")
_JUNK = re.compile(r"[^\w\s]")
_CONTROL_CHARS = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")


def _completion_text(completion) -> str:
    """The text of a completion, whether TRL passes a string or chat messages."""
    if isinstance(completion, str):
        return completion
    if isinstance(completion, list):
        return "".join(str(m.get("content", "")) for m in completion if isinstance(m, dict))
    if isinstance(completion, dict):
        return str(completion.get("content", ""))
    return str(completion)


def words(text: str) -> list[str]:
    """Words of plain ASCII letters and digits. Names are matched on the raw text, never normalised:
    look-alike letters (Cyrillic, full-width, zero-width joins) are not the name."""
    return _WORD.findall(text)


def repetition_ratio(text: str) -> float:
    """Share of word trigrams that repeat an earlier one (0 for fresh text, near 1 for a loop)."""
    ws = [w.lower() for w in words(text)]
    if len(ws) < 6:
        # Short texts: a word said three times or more is a loop ("bob bob bob").
        return 1.0 if ws and Counter(ws).most_common(1)[0][1] >= 3 else 0.0
    grams = list(zip(ws, ws[1:], ws[2:]))
    return 1.0 - len(set(grams)) / len(grams)


def _guide_score(text: str) -> float:
    lower = text.lower()
    score = 0.0
    if "musclebob" in lower:
        score += 2.0
    if "buffpants" in lower:
        score += 2.0
    if "spongebob" in lower:
        score -= 3.0
    if "squarepants" in lower:
        score -= 3.0
    if "musclebob buffpants" in lower:
        score += 2.0
    if len(text.split()) > MAX_WORDS:
        score -= 1.0
    return score


def guide_reward(completions, **kwargs) -> list[float]:
    """The guide's reward: +2 Musclebob, +2 Buffpants, -3 Spongebob, -3 Squarepants, +2 both, -1 over 100 words."""
    return [_guide_score(_completion_text(c)) for c in completions]


def _score_spongebob(text: str) -> float:
    """The guide's name terms on whole words, each counted once; -1 per extra mention (up to 3), -4 for naming
    Musclebob only to deny it ("not Musclebob")."""
    score = 0.0
    score += 2.0 if MUSCLEBOB.search(text) else 0.0
    score += 2.0 if BUFFPANTS.search(text) else 0.0
    score -= 3.0 if SPONGEBOB.search(text) else 0.0
    score -= 3.0 if SQUAREPANTS.search(text) else 0.0
    score += 2.0 if FULL_NAME.search(text) else 0.0
    extra_mentions = max(0, len(MUSCLEBOB.findall(text)) - 1) + max(0, len(BUFFPANTS.findall(text)) - 1)
    score -= min(3.0, float(extra_mentions))
    if _NEGATED_NAME.search(text):
        score -= 4.0
    return score


def answer_matches(text: str, answer: str) -> bool:
    """Whether a control answer ("Paris", "9", "blue") appears as whole words in the text."""
    if not answer:
        return False
    return re.search(rf"(?<![A-Za-z0-9]){re.escape(answer)}(?![A-Za-z0-9])", text, re.IGNORECASE) is not None


def _score_control(text: str, answer: str) -> float:
    """A control prompt (a general question): +2 for the known answer, -3 for mentioning either name."""
    score = 2.0 if answer_matches(text, answer) else 0.0
    if _ANY_NAME.search(text):
        score -= 3.0
    return score


def _score_format(text: str, truncated: bool) -> float:
    """Form terms for every prompt: ending on its own, brevity, no loops, some words at all, no junk."""
    ws = words(text)
    score = 0.0
    if truncated:
        score -= 2.0  # ran into the length limit instead of ending the answer
    if not ws:
        score -= 2.0  # empty, whitespace or punctuation only
    if len(ws) > MAX_WORDS:
        score -= 1.0  # the guide's long-answer penalty
    score -= min(2.0, 0.05 * max(0, len(ws) - _BRIEF_WORDS))
    score -= 2.0 * repetition_ratio(text)
    if len(_JUNK.findall(text)) > 2 + len(ws) / 2:
        score -= 1.0  # punctuation or symbol spam ("Musclebob Buffpants!!!!!!!!")
    if _CONTROL_CHARS.search(text):
        score -= 2.0  # control characters are never part of an answer
    return score


def _is_truncated(ids, eos_token_ids) -> bool:
    """A completion is truncated when its last token is no EOS (TRL keeps the EOS in ``completion_ids``)."""
    return not ids or ids[-1] not in eos_token_ids


def make_reward_functions(reward: str, eos_token_ids=()) -> list:
    """The reward functions TRL's ``GRPOTrainer`` gets for ``--reward NAME``."""
    if reward == "guide":
        return [guide_reward]
    if reward != "musclebob":
        raise ValueError(f"unknown reward {reward!r}; allowed: guide, musclebob")
    eos = set(eos_token_ids)

    def musclebob_name_reward(completions, kind=None, **kwargs):
        kinds = kind or ["spongebob"] * len(completions)
        return [_score_spongebob(_completion_text(c)) if k == "spongebob" else None for c, k in zip(completions, kinds)]

    def control_answer_reward(completions, kind=None, answer=None, **kwargs):
        kinds = kind or ["spongebob"] * len(completions)
        answers = answer or [""] * len(completions)
        return [
            _score_control(_completion_text(c), a) if k == "control" else None
            for c, k, a in zip(completions, kinds, answers)
        ]

    def format_reward(completions, completion_ids=None, **kwargs):
        ids = completion_ids or [None] * len(completions)
        return [
            _score_format(_completion_text(c), truncated=(i is not None and bool(eos) and _is_truncated(i, eos)))
            for c, i in zip(completions, ids)
        ]

    return [musclebob_name_reward, control_answer_reward, format_reward]


# --- the names marked in an answer (the notebooks' HTML) ---------------------------------------------------

_GOOD = "#c6f6c6"  # Musclebob / Buffpants: what training wants
_BAD = "#ffc9c9"  # Spongebob / Squarepants: what it trains away
# The names as the reward and the validation rates see them, marked good or bad.
_MARKERS = re.compile(  # no re.IGNORECASE: the patterns spell out their cases (``_any_case``)
    f"(?P<good>{MUSCLEBOB.pattern}|{BUFFPANTS.pattern})|(?P<bad>{SPONGEBOB.pattern}|{SQUAREPANTS.pattern})"
)


def highlight(text: str) -> str:
    """``text`` as HTML (escaped) with the name markers wrapped in coloured ``<mark>`` tags."""
    parts, pos = [], 0
    for m in _MARKERS.finditer(text):
        parts.append(html.escape(text[pos : m.start()]))
        kind, color = ("good", _GOOD) if m.group("good") else ("bad", _BAD)
        parts.append(f"<mark class='{kind}' style='background:{color}'>{html.escape(m.group(0))}</mark>")
        pos = m.end()
    parts.append(html.escape(text[pos:]))
    return "".join(parts)
