"""ROVER: random-policy valuation (DESIGN 3.4).

The policy's own log-probabilities, scaled by rho, are the Q-values of the uniformly
random policy (relative to the rollout policy):

    Q_t = rho * (logp_theta(a_t | s_t) - logp_old(a_t | s_t))
    y_t = A + rho * kappa * (m_theta(s_{t+1}) - m_old(s_{t+1}))
    loss = masked token mean of (Q_t - y_t)^2, y detached

m(s) is the mean over the vocabulary of the temperature-scaled log-softmax at state s
(``mean_logp`` of the fastrl ops: the state's value under the uniform policy, up to the
policy's own normaliser), s_{t+1} the state after a_t, i.e. the next valid token of the
row (no look-ahead at a row's last valid token), A the GRPO-normalised group advantage
of the outcome reward (``centred=True``: minus the group mean only). logp_old and m_old
come from a forward pass of the rollout policy on the training side, as the authors do;
the sampler's own values only where rollout and training weights are identical.

Layout as every fastrl op: padded [B, T] tensors with a response mask (bool or any
numeric dtype, nonzero valid); [B, T] outputs are float32 (float64 for float64 input)
and 0 where the mask is 0.
"""
from __future__ import annotations

from typing import NamedTuple, Optional

import torch

from fastrl.algos._tokens import next_valid
from fastrl.ops import _checks, group_advantages
from fastrl.ops.logprobs import TokenStats


class RoverTargets(NamedTuple):
    """Per token [B, T]: the Q-value (differentiable in logp) and its detached target."""

    q: torch.Tensor
    target: torch.Tensor


def rover_advantages(scores: torch.Tensor, group_ids: torch.Tensor, centred: bool = False,
                     eps: float = 1e-6) -> torch.Tensor:
    """A[B] from outcome rewards (DESIGN 3.4): GRPO's (s - mean_g) / (std_g + eps), or
    with ``centred`` s - mean_g (Dr.GRPO), via ``fastrl.ops.group_advantages``."""
    if not isinstance(centred, bool):
        raise TypeError(f"centred must be a bool, got {type(centred).__name__}")
    return group_advantages(scores, group_ids, "dr_grpo" if centred else "grpo", eps)


def rover_targets(logp: torch.Tensor, old_logp: torch.Tensor, mean_logp: torch.Tensor,
                  old_mean_logp: torch.Tensor, advantages: torch.Tensor, response_mask: torch.Tensor,
                  rho: float = 1.0, kappa: float = 1.0) -> RoverTargets:
    """Q_t and y_t of DESIGN 3.4 from per-token statistics.

    logp, old_logp: [B, T] log-probabilities of the response tokens under the policy
    being trained and under the rollout policy, at the rollout temperature; mean_logp,
    old_mean_logp: [B, T] mean log-softmax of the state each token was drawn from (as
    ``linear_logprobs(..., mean_logp=True)`` or ``response_logprobs`` give them);
    advantages: [B] (see ``rover_advantages``); response_mask: [B, T]. The look-ahead
    m(s_{t+1}) at token t is mean_logp at the row's next valid token, 0 at its last.
    Only q carries a gradient (through logp).
    """
    valid, dtype = _check(logp, old_logp, mean_logp, old_mean_logp, advantages, response_mask)
    rho, kappa = _checks.positive("rho", rho), _checks.number("kappa", kappa)
    zero = torch.zeros((), dtype=dtype, device=logp.device)

    def masked(x):
        return torch.where(valid, x.to(dtype), zero)

    q = rho * (masked(logp) - masked(old_logp.detach()))  # the rollout policy's: a constant, as in policy_loss
    with torch.no_grad():
        look_ahead = next_valid(masked(mean_logp) - masked(old_mean_logp), valid)
        target = masked(advantages.to(dtype)[:, None] + rho * kappa * look_ahead)
    return RoverTargets(q, target)


def rover_loss(logp: torch.Tensor, old_logp: torch.Tensor, mean_logp: torch.Tensor, old_mean_logp: torch.Tensor,
               advantages: torch.Tensor, response_mask: torch.Tensor, rho: float = 1.0,
               kappa: float = 1.0) -> torch.Tensor:
    """Masked token mean of (Q_t - y_t)^2 over the batch (DESIGN 3.4; arguments as
    ``rover_targets``). A scalar, 0 for an empty mask; gradient through logp only."""
    q, target = rover_targets(logp, old_logp, mean_logp, old_mean_logp, advantages, response_mask, rho, kappa)
    valid = response_mask != 0
    # clamp rather than a branch on the count: no host sync on CUDA
    return ((q - target) ** 2).sum() / valid.sum().clamp_min(1).to(q.dtype)


def old_policy_stats(model, input_ids: torch.Tensor, attention_mask: torch.Tensor, response_mask: torch.Tensor,
                     temperature: float = 1.0, position_ids: Optional[torch.Tensor] = None) -> TokenStats:
    """logp_old and m_old as the authors compute them: a no-grad training-side forward of
    the rollout policy (a Hugging Face causal LM) through ``response_logprobs``. [B, L]."""
    from fastrl.integrations.hf import response_logprobs

    with torch.no_grad():
        return response_logprobs(model, input_ids, attention_mask, response_mask, temperature,
                                 mean_logp=True, position_ids=position_ids)


def rover_loss_hf(model, input_ids: torch.Tensor, attention_mask: torch.Tensor, response_mask: torch.Tensor,
                  advantages: torch.Tensor, old_model=None, old_stats=None, temperature: float = 1.0,
                  rho: float = 1.0, kappa: float = 1.0,
                  position_ids: Optional[torch.Tensor] = None) -> torch.Tensor:
    """ROVER's loss for a Hugging Face causal LM on full sequences input_ids [B, L].

    logp_theta and m_theta come from ``response_logprobs(model, ..., mean_logp=True)``
    (no [B, L, V] logits). The rollout policy's values come from exactly one of:
    ``old_model``, run here under no_grad (``old_policy_stats``), or ``old_stats``, a
    pair (logprob, mean_logp) of [B, L] tensors computed beforehand, e.g. once before
    several update epochs by ``old_policy_stats``, or from the sampler by
    ``Rollout.sampler_stats(weights_identical=True)`` where rollout and training weights
    are the same. temperature: the rollout temperature.
    """
    from fastrl.integrations.hf import response_logprobs

    if (old_model is None) == (old_stats is None):
        raise ValueError("pass exactly one of old_model and old_stats (the rollout policy's logprob, mean_logp)")
    if old_model is not None:
        old_stats = old_policy_stats(old_model, input_ids, attention_mask, response_mask, temperature, position_ids)
    if isinstance(old_stats, TokenStats):
        old_stats = (old_stats.logprob, old_stats.mean_logp)
    if not isinstance(old_stats, tuple) or len(old_stats) != 2:
        raise TypeError(f"old_stats must be a (logprob, mean_logp) pair or TokenStats, got {type(old_stats).__name__}")
    old_logp, old_mean = old_stats
    stats = response_logprobs(model, input_ids, attention_mask, response_mask, temperature, mean_logp=True,
                              position_ids=position_ids)
    return rover_loss(stats.logprob, old_logp, stats.mean_logp, old_mean, advantages, response_mask, rho, kappa)


def _check(logp, old_logp, mean_logp, old_mean_logp, advantages, response_mask):
    _checks.floating("logp", logp, ndim=2)
    for name, x in (("old_logp", old_logp), ("mean_logp", mean_logp), ("old_mean_logp", old_mean_logp)):
        _checks.floating(name, x, ndim=2)
        _checks.same_shape(name, x, "logp", logp)
    _checks.mask("response_mask", response_mask, "logp", logp)
    _checks.floating("advantages", advantages, ndim=1)
    if advantages.shape[0] != logp.shape[0]:
        raise ValueError(f"advantages must have one value per row of logp ({logp.shape[0]}), "
                         f"got {advantages.shape[0]}")
    _checks.same_device("advantages", advantages, "logp", logp)
    valid = response_mask != 0
    for name, x in (("logp", logp), ("old_logp", old_logp), ("mean_logp", mean_logp),
                    ("old_mean_logp", old_mean_logp)):
        _checks.finite_where(name, x, valid)
    _checks.finite("advantages", advantages)
    float64 = any(x.dtype == torch.float64 for x in (logp, old_logp, mean_logp, old_mean_logp, advantages))
    return valid, torch.float64 if float64 else torch.float32
