"""Credit assignment by name (``fastrl train --algo``): each entry turns a batch's rewards
into per-token advantages (and returns, where the method has them), composing the ops.

A distributed run computes with ``Reduce`` over all processes: its ``rows`` gathers [B]
tensors of every process (group statistics, batch std and RiskPO bundles may span
processes) and ``whiten`` normalises over every process's tokens. The default, ``Reduce()``,
is one process.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

import torch

from fastrl.algos._tokens import last_valid
from fastrl.algos.pure import Credit, masked_whiten, pure_advantages
from fastrl.ops import broadcast_to_tokens, gae, group_advantages, risk_advantages
from fastrl.ops.reference import output_dtype


class Reduce:
    """One process: the identity. ``fastrl.trainer.distributed`` subclasses it."""

    def rows(self, x: torch.Tensor) -> torch.Tensor:
        """The [B] tensors of all processes, concatenated in rank order."""
        return x

    def local(self, x: torch.Tensor) -> torch.Tensor:
        """This process's rows of a tensor built by ``rows``."""
        return x

    def whiten(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return masked_whiten(x, mask)


@dataclass
class CreditInputs:
    """What credit assignment reads, per process. [B] and [B, T] tensors on one device.

    scores: outcome rewards (with the KL penalty folded in when it goes in the reward);
    group_ids: int64 ids of the prompt each row answers, global over processes; mask: the
    response tokens; token_rewards: per-token rewards besides the outcome (the KL penalty
    in the reward; None: none) for gae; values, old values at each response token (gae);
    step_scores, step_mask: PURE's step scores at step ends; solved: verifiable reward
    in [0, 1] (PURE).
    """

    scores: torch.Tensor
    group_ids: torch.Tensor
    mask: torch.Tensor
    token_rewards: Optional[torch.Tensor] = None
    values: Optional[torch.Tensor] = None
    step_scores: Optional[torch.Tensor] = None
    step_mask: Optional[torch.Tensor] = None
    solved: Optional[torch.Tensor] = None


def _outcome(method: str) -> Callable:
    def credit(x: CreditInputs, cfg, reduce: Reduce) -> Credit:
        adv = reduce.local(group_advantages(reduce.rows(x.scores), reduce.rows(x.group_ids), method, cfg.eps))
        return Credit(broadcast_to_tokens(adv, x.mask), None)
    return credit


def _riskpo(x: CreditInputs, cfg, reduce: Reduce) -> Credit:
    adv = risk_advantages(reduce.rows(x.scores), reduce.rows(x.group_ids), cfg.riskpo_bundle_size, cfg.riskpo_alpha,
                          cfg.riskpo_beta, cfg.riskpo_omega, cfg.riskpo_natural_baseline, cfg.riskpo_credit)
    return Credit(broadcast_to_tokens(reduce.local(adv), x.mask), None)


def _rover(x: CreditInputs, cfg, reduce: Reduce) -> Credit:
    # A of ROVER's target (DESIGN 3.4); the loss is ROVER's own, not PPO's
    method = "dr_grpo" if cfg.rover_centred else "grpo"
    return _outcome(method)(x, cfg, reduce)


def _gae(x: CreditInputs, cfg, reduce: Reduce) -> Credit:
    valid = x.mask != 0
    # float32 (float64 if an input is): a bf16 value head must not round the scores
    dtype = torch.promote_types(output_dtype(x.values), output_dtype(x.scores))
    rewards = torch.where(last_valid(valid), x.scores[:, None].to(dtype), 0)
    if x.token_rewards is not None:
        rewards = rewards + x.token_rewards.to(dtype)
    adv, returns = gae(rewards, x.values.to(dtype), valid, cfg.gamma, cfg.lam)
    return Credit(reduce.whiten(adv, valid), returns)


def _pure(x: CreditInputs, cfg, reduce: Reduce) -> Credit:
    # groups never span processes (a prompt's samples are drawn on one), so the
    # leave-one-out baselines are local; whitening is over the whole batch
    return pure_advantages(x.step_scores, x.step_mask, x.mask, x.group_ids - x.group_ids.min(), x.solved,
                           cfg.pure_min_form, cfg.pure_temperature, cfg.pure_baseline, cfg.pure_verifiable_coef,
                           cfg.pure_zero_reward_tokens, reduce.whiten)


CREDIT: dict[str, Callable[[CreditInputs, object, Reduce], Credit]] = {
    "grpo": _outcome("grpo"),
    "dr_grpo": _outcome("dr_grpo"),
    "rloo": _outcome("rloo"),
    "gae": _gae,
    "pure": _pure,
    "riskpo": _riskpo,
    "rover": _rover,
}


def assign(name: str, inputs: CreditInputs, cfg, reduce: Optional[Reduce] = None) -> Credit:
    """Advantages (and returns) by method name; cfg holds the methods' parameters
    (``fastrl.trainer.config.AlgoConfig``)."""
    if name not in CREDIT:
        raise ValueError(f"unknown credit assignment {name!r}; known: {', '.join(CREDIT)}")
    return CREDIT[name](inputs, cfg, reduce or Reduce())
