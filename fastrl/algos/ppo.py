"""PPO's clipped policy loss, its aggregations, the k3 KL penalty and the clipped value
loss (DESIGN 3.4).

Token values are [B, T] with a response mask (bool or numeric, nonzero valid); masked
positions may hold anything (they reach neither a value nor a gradient). Outputs are
float32 whatever the input dtype (float64 for float64 inputs), as every fastrl op. The
``denominator`` of ``aggregate`` lets a caller normalise by a count taken over more than
the rows at hand (a whole mini-batch split into micro-batches, or all processes), so
that the sum of the parts equals the loss of the whole.
"""
from __future__ import annotations

from typing import NamedTuple, Optional

import torch

from fastrl.ops import _checks

AGGREGATIONS = ("token_mean", "seq_mean_token_mean", "seq_mean_token_sum_norm")
LOG_RATIO_BOUND = 20.0  # |logp - old_logp| beyond it: exp overflows in float32 past 88, and 0 * inf is a NaN gradient
KL_BOUND = 10.0  # k3 per token at most (verl's low_var_kl): one far-off token cannot swamp a reward or loss


def _token_values(mask: torch.Tensor, constants=(), **tensors: torch.Tensor):
    """(valid, the tensors in the output dtype with 0 off the mask, before any arithmetic)
    after checking each is [B, T] like the first, floating and, where values are checked,
    finite on the mask; those named in ``constants`` detached (no gradient reaches them)."""
    (first, x0), *rest = tensors.items()
    _checks.floating(first, x0, ndim=2)
    for name, x in rest:
        _checks.floating(name, x, ndim=2)
        _checks.same_shape(name, x, first, x0)
    _checks.mask("mask", mask, first, x0)
    valid = mask != 0
    dtype = torch.float64 if any(x.dtype == torch.float64 for x in tensors.values()) else torch.float32
    zero = torch.zeros((), dtype=dtype, device=x0.device)
    for name, x in tensors.items():
        _checks.finite_where(name, x, valid)
    return valid, *(torch.where(valid, (x.detach() if name in constants else x).to(dtype), zero)
                    for name, x in tensors.items())


class PolicyLoss(NamedTuple):
    """Per token [B, T] (0 where the mask is 0): the loss and whether clipping bound it."""

    loss: torch.Tensor
    clipped: torch.Tensor


def policy_loss(logp: torch.Tensor, old_logp: torch.Tensor, advantages: torch.Tensor, mask: torch.Tensor,
                clip_low: float = 0.2, clip_high: float = 0.2, dual_clip: Optional[float] = None) -> PolicyLoss:
    """PPO-clip per token: max(-A r, -A clip(r, 1 - clip_low, 1 + clip_high)), r = exp(logp -
    old_logp); with ``dual_clip`` c, a negative advantage's loss is capped at -c A (the
    dual-clip PPO of Ye et al., as verl)."""
    if not 0 <= _checks.number("clip_low", clip_low) < 1:
        raise ValueError(f"clip_low must be in [0, 1), got {clip_low}")
    _checks.positive("clip_high", clip_high)
    if dual_clip is not None and not _checks.number("dual_clip", dual_clip) > 1:
        raise ValueError(f"dual_clip must be > 1 or None, got {dual_clip}")
    valid, logp, old_logp, adv = _token_values(mask, ("old_logp", "advantages"), logp=logp, old_logp=old_logp,
                                               advantages=advantages)
    ratio = (logp - old_logp).clamp(-LOG_RATIO_BOUND, LOG_RATIO_BOUND).exp()
    unclipped = -adv * ratio
    clipped = -adv * ratio.clamp(1 - clip_low, 1 + clip_high)
    loss = torch.maximum(unclipped, clipped)
    was_clipped = clipped > unclipped
    if dual_clip is not None:
        cap = -adv * dual_clip
        capped = (adv < 0) & (loss > cap)
        loss = torch.where(capped, cap, loss)
        was_clipped = was_clipped | capped
    return PolicyLoss(torch.where(valid, loss, 0.0), was_clipped & valid)


def kl_k3(logp: torch.Tensor, ref_logp: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Schulman's k3 estimator of KL(pi || ref) per token: exp(d) - d - 1 with d = ref_logp
    - logp, d clamped to [-20, 20] so that a far-off token cannot overflow, and the result
    to at most KL_BOUND = 10 (as verl's low_var_kl; TRL leaves it unbounded); 0 off the mask."""
    valid, logp, ref_logp = _token_values(mask, ("ref_logp",), logp=logp, ref_logp=ref_logp)
    d = (ref_logp - logp).clamp(-LOG_RATIO_BOUND, LOG_RATIO_BOUND)
    return torch.where(valid, (d.exp() - d - 1).clamp(max=KL_BOUND), 0.0)


def value_loss(values: torch.Tensor, old_values: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor,
               clip: Optional[float] = 0.2) -> torch.Tensor:
    """0.5 max((v - R)^2, (old_v + clip(v - old_v, -clip, clip) - R)^2) per token (PPO's
    clipped value loss; unclipped when clip is None), 0 off the mask."""
    if clip is not None:
        _checks.positive("clip", clip)
    valid, values, old_values, returns = _token_values(mask, ("old_values", "returns"), values=values,
                                                       old_values=old_values, returns=returns)
    loss = (values - returns) ** 2
    if clip is not None:
        v_clipped = old_values + (values - old_values).clamp(-clip, clip)
        loss = torch.maximum(loss, (v_clipped - returns) ** 2)
    return torch.where(valid, 0.5 * loss, 0.0)


def aggregation_units(mask: torch.Tensor, aggregation: str) -> torch.Tensor:
    """What ``aggregate`` divides by when no denominator is given: the number of valid
    tokens (token_mean) or of rows with a valid token (the sequence means). A 0-d tensor."""
    _checks.choice("aggregation", aggregation, AGGREGATIONS)
    valid = mask != 0
    return valid.sum() if aggregation == "token_mean" else valid.any(-1).sum()


def aggregate(values: torch.Tensor, mask: torch.Tensor, aggregation: str = "token_mean",
              max_length: Optional[int] = None, denominator: Optional[torch.Tensor] = None) -> torch.Tensor:
    """A scalar from token values [B, T] (DESIGN 3.4):

    - token_mean (DAPO): sum over valid tokens / their number;
    - seq_mean_token_mean (GRPO): mean over rows of each row's token mean;
    - seq_mean_token_sum_norm (Dr.GRPO): mean over rows of each row's token sum / max_length
      (a constant: the generation budget; default T).

    Rows without a valid token do not count. ``denominator`` replaces the count of tokens
    (or rows) — see ``aggregation_units``: a count, so a number must be a whole number >= 0
    (a tensor is not read back to check: below 1 it counts as 1); an empty batch gives 0,
    never NaN.
    """
    _checks.choice("aggregation", aggregation, AGGREGATIONS)
    if denominator is not None:
        if isinstance(denominator, torch.Tensor):
            if denominator.ndim != 0:
                raise ValueError(f"denominator must be a scalar (0-d), got shape {tuple(denominator.shape)}")
        elif not (_checks.number("denominator", denominator) >= 0 and float(denominator).is_integer()):
            raise ValueError(f"denominator must be a count (a whole number >= 0), got {denominator}")
    valid, values = _token_values(mask, values=values)
    if aggregation == "token_mean":
        total = values.sum()
    elif aggregation == "seq_mean_token_mean":
        total = (values.sum(-1) / valid.sum(-1).clamp_min(1)).sum()
    else:
        if max_length is None:
            max_length = values.shape[1]
        _checks.positive("max_length", max_length)
        total = values.sum() / max_length
    if denominator is None:
        denominator = aggregation_units(mask, aggregation)
    return total / torch.as_tensor(denominator, device=total.device).clamp_min(1).to(total.dtype)
