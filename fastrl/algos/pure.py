"""PURE: process rewards turned into advantages with min-form credit (DESIGN 3.4), in the
order of the authors' released code:

1. step scores (a PRM's p(label 1) - p(label 0), or a function) sit at each step's last
   token; ``min_form_returns`` turns them into token rewards (``soft``: the authors'
   softmax-weighted form; ``strict``: return = min of the scores ahead; ``sum`` for
   comparison);
2. a leave-one-out baseline over the group is subtracted from the step rewards
   (``token``: the others' total reward over their total length, times the step's token
   count less its last token, the separator or final token, as the authors' code counts;
   ``step``: the mean over the others of total reward / number of steps, at every
   step; ``none``);
3. the verifiable reward, if any, v = solved - 1, leave-one-out centred, times
   ``verifiable_coef``, is added at the final token;
4. returns = reverse cumulative sum (``discounted_returns``, gamma 1); advantage =
   return, 0 at the reward-carrying tokens when ``zero_reward_tokens``; whitened over
   the batch's advantage-carrying tokens (mean and unbiased variance over them; the
   authors' replay buffer also adds the zeroed tokens' squared mean to the variance, a
   batch-wide scale 1.0006 apart at 32 x 300 tokens, 1.046 on a 4 x 6 batch).

Steps end at a token whose text closes a blank line (``step_ends``), and at the final token.
"""
from __future__ import annotations

from typing import Callable, NamedTuple, Optional, Sequence

import torch

from fastrl.algos._tokens import last_valid, next_valid
from fastrl.ops import _checks, discounted_returns, min_form_returns
from fastrl.ops.advantages import check_group_id_values, check_group_ids


class Credit(NamedTuple):
    """Per token [B, T]: advantages, and returns where the method has them (else None)."""

    advantages: torch.Tensor
    returns: Optional[torch.Tensor]


def masked_whiten(x: torch.Tensor, mask: torch.Tensor, total=lambda t: t) -> torch.Tensor:
    """(x - mean) / sqrt(var + 1e-8) over the masked entries, unbiased variance (verl's
    masked_whiten); 0 off the mask; a single entry has variance 0. The moments are summed in
    float64, through ``total`` (the sum over every process, under torchrun), so that N
    processes whiten as one does."""
    valid = mask != 0
    n = total(valid.sum().to(torch.float64))
    wide = x.to(torch.float64)  # (summing x's own dtype, each process would round its part its own way)
    mean = total(torch.where(valid, wide, 0).sum()) / n.clamp_min(1)
    var = total(torch.where(valid, (wide - mean) ** 2, 0).sum()) / (n - 1).clamp_min(1)
    return torch.where(valid, ((x - mean) * torch.rsqrt(var + 1e-8)).to(x.dtype), 0)


def step_ends(ids: torch.Tensor, mask: torch.Tensor, token_texts: Sequence[str]) -> torch.Tensor:
    """[B, T] bool: the last token of each step of the masked tokens: where the text so far
    ends in a blank line ("\\n\\n") and the next token does not continue the run of
    newlines, plus each row's last valid token. A step of blank tokens only (whitespace, or
    special tokens, whose texts token_texts gives as "") is no step: it joins the next one,
    or the one before where it ends the row ("x=1\\n\\n" then EOS is one step, not two; a
    response opening with a blank line has no empty first step). token_texts[v] is the text
    of token v."""
    valid = mask != 0
    table = torch.tensor([[t.endswith("\n\n"), t.endswith("\n"), t == "\n", t.startswith("\n"), not t.strip()]
                          for t in token_texts], device=ids.device)
    ends2, ends1, newline, starts_nl, blank_token = table[ids.clamp(0, len(token_texts) - 1)].unbind(-1)
    prev_ends1 = torch.nn.functional.pad((ends1 & valid)[:, :-1], (1, 0))
    blank = ends2 | (newline & prev_ends1)
    next_continues = torch.nn.functional.pad((starts_nl & valid)[:, 1:], (0, 1))
    last = last_valid(valid)
    ends = valid & ((blank & ~next_continues) | last)
    words = (valid & ~blank_token).cumsum(1)  # the row's non-blank tokens up to each position

    def blank_steps(ends):
        """Ends of steps without a non-blank token: as many words up to them as up to the previous end."""
        before = torch.nn.functional.pad(torch.where(ends, words, 0).cummax(1).values[:, :-1], (1, 0))
        return ends & (words == before)

    ends = ends & ~(blank_steps(ends) & ~last)  # into the next step
    # a blank last step joins the one before: that step's end goes
    ended_blank = (blank_steps(ends) & last).any(1, keepdim=True)
    positions = torch.arange(ids.shape[1], device=ids.device).expand_as(ends)
    previous = torch.where(ends & ~last, positions, -1).amax(1, keepdim=True)
    return ends & ~(ended_blank & (positions == previous))


def loo_mean(values: torch.Tensor, group_ids: torch.Tensor, weights: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Per row, the others' sum of values over the others' sum of weights (default 1 each):
    the leave-one-out mean of its group; 0 for a singleton (or zero weight). group_ids in
    [0, B), as for every fastrl op."""
    if weights is None:
        weights = torch.ones_like(values)
    n = group_ids.numel()
    total = values.new_zeros(n).index_add_(0, group_ids, values)[group_ids] - values
    weight = weights.new_zeros(n).index_add_(0, group_ids, weights)[group_ids] - weights
    return torch.where(weight > 0, total / weight.clamp_min(1e-12), torch.zeros_like(values))


def pure_advantages(scores: torch.Tensor, step_mask: torch.Tensor, mask: torch.Tensor, group_ids: torch.Tensor,
                    solved: Optional[torch.Tensor] = None, min_form: str = "soft", temperature: float = 0.1,
                    baseline: str = "token", verifiable_coef: float = 1.0, zero_reward_tokens: bool = True,
                    whiten: Callable = masked_whiten) -> Credit:
    """PURE's advantages (module docstring). scores [B, T]: step scores at the step_mask
    positions (others ignored); mask [B, T]: the response; group_ids [B]; solved [B]: the
    verifiable reward in [0, 1], float or bool/integer verdicts (None: PRM only); whiten(x, mask): batch whitening (a
    distributed run passes one that reduces over all processes). Returns (advantages,
    returns), float32 (float64 for float64 scores)."""
    _checks.floating("scores", scores, ndim=2)
    _checks.mask("step_mask", step_mask, "scores", scores)
    _checks.mask("mask", mask, "scores", scores)
    _checks.choice("min_form", min_form, ("soft", "strict", "sum"))
    _checks.choice("baseline", baseline, ("token", "step", "none"))
    check_group_ids(group_ids, scores)
    check_group_id_values(group_ids)
    if solved is not None:
        _checks.tensor("solved", solved, ndim=1)
        if not (solved.dtype.is_floating_point or solved.dtype.is_complex):
            solved = solved.to(torch.float32)  # bool or integer verdicts: 1 solved, 0 not
        _checks.floating("solved", solved, ndim=1)
        if solved.shape[0] != scores.shape[0]:
            raise ValueError(f"solved must have one value per row of scores ({scores.shape[0]}), got {solved.shape[0]}")
        _checks.same_device("solved", solved, "scores", scores)
        _checks.finite("solved", solved)
    valid = mask != 0
    steps = (step_mask != 0) & valid
    _, ret = min_form_returns(scores, steps, valid, temperature, min_form)
    # per-step rewards whose reverse cumulative sum is ret (for strict too, whose returns
    # are not a sum of the raw scores)
    rewards = torch.where(valid, ret - next_valid(ret, valid), 0)
    total = rewards.sum(-1)
    if baseline == "token":
        count = valid.cumsum(-1)
        before = torch.where(steps, count, 0).cummax(-1).values
        # the step's tokens less its last (the separator or the final token), as the authors
        # count them (num_tokens_per_step in their experience maker); the rate's lengths are whole
        tokens_in_step = (count - torch.nn.functional.pad(before[:, :-1], (1, 0)) - 1).clamp_min(0)
        per_token = loo_mean(total, group_ids, valid.sum(-1).to(total.dtype))
        rewards = rewards - torch.where(steps, per_token[:, None] * tokens_in_step, 0)
    elif baseline == "step":
        per_step = total / steps.sum(-1).clamp_min(1)
        rewards = rewards - torch.where(steps, loo_mean(per_step, group_ids)[:, None], 0)
    final = last_valid(valid)
    if solved is not None and verifiable_coef:
        v = solved.to(rewards.dtype) - 1
        v = v - loo_mean(v, group_ids)
        rewards = rewards + torch.where(final, verifiable_coef * v[:, None], 0)
    returns = discounted_returns(rewards, valid, 1.0)
    carries = valid & ~(steps | final) if zero_reward_tokens else valid
    return Credit(whiten(returns, carries), returns)
