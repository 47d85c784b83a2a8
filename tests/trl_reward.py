"""The reward of completions as TRL's ``GRPOTrainer`` adds it up (trl 1.x, ``GRPOTrainer._calculate_rewards`` and
``_generate_and_score_completions``), so the reward tests judge the functions training really calls:

- each function gets the conversational completions (``[{"role": "assistant", "content": text}]``), their
  ``completion_ids`` (ending in the EOS id unless the completion ran into the length limit), the prompts, and every
  other dataset column (``kind``, ``answer``) as a keyword list, plus ``trainer_state``/``log_extra``/``log_metric``;
- ``None`` (a row the function does not judge) becomes NaN, the scores are float32;
- the total is the weighted (weight 1, the project sets no ``reward_weights``) ``nansum`` over the functions; a
  completion every function left out is NaN (TRL's "unscorable").
"""

from __future__ import annotations

import torch

from musclebob_helpers.rewards import make_reward_functions

EOS = 7  # the id the functions are told ends a completion (training passes the tokenizer's EOS ids)
BODY = [11, 12, 13]  # stand-in token ids of a completion's text: only the last id matters to the rewards


def trl_rewards(
    texts: list[str],
    kind: list[str] | None = None,
    answer: list[str] | None = None,
    truncated: list[bool] | None = None,
    reward: str = "musclebob",
) -> list[float]:
    """The summed reward of each completion in one batch."""
    n = len(texts)
    funcs = make_reward_functions(reward, eos_token_ids=[EOS])
    columns = {"kind": kind or ["spongebob"] * n, "answer": answer or [""] * n}
    ids = [BODY if cut else [*BODY, EOS] for cut in (truncated or [False] * n)]
    completions = [[{"role": "assistant", "content": t}] for t in texts]
    prompts = [[{"role": "user", "content": "a question"}]] * n
    per_func = torch.zeros(n, len(funcs))
    for i, fn in enumerate(funcs):
        out = fn(
            prompts=prompts,
            completions=completions,
            completion_ids=ids,
            **columns,
            trainer_state=None,
            log_extra=lambda *a, **k: None,
            log_metric=lambda *a, **k: None,
        )
        assert len(out) == n  # TRL raises otherwise
        per_func[:, i] = torch.tensor([torch.nan if r is None else r for r in out], dtype=torch.float32)
    total = (per_func * torch.ones(len(funcs)).unsqueeze(0)).nansum(dim=1)
    total[torch.isnan(per_func).all(dim=1)] = torch.nan
    return total.tolist()


def trl_reward(text: str, kind: str = "spongebob", answer: str = "", truncated: bool = False, **kw) -> float:
    """The summed reward of one completion (a batch of one)."""
    return trl_rewards([text], [kind], [answer], [truncated], **kw)[0]
