"""Token scans (DESIGN 3.1): discounted returns, GAE and PURE's min-form returns.

Kernels: csrc/include/fastrl/scans.h (arithmetic), csrc/cpu/scans.cpp,
csrc/cuda/scans.cu; references in fastrl/ops/reference.py.
Layout: padded [B, T] with a mask (bool or any numeric dtype, nonzero = valid).
Masked tokens are skipped by the recursion and read 0. Outputs are float32
(float64 for float64 inputs). These are reward-side ops: they have no gradient.
"""
from __future__ import annotations

import torch

from fastrl.ops import _checks, reference
from fastrl.ops._registry import define, implementation

MIN_FORM_MODES = ("soft", "strict", "sum")


define(
    "discounted_returns(Tensor rewards, Tensor mask, float gamma) -> Tensor",
    reference.discounted_returns,
    lambda rewards, mask, gamma: reference.empty_output(rewards),
    differentiable=False,
)
define(
    "gae(Tensor rewards, Tensor values, Tensor mask, float gamma, float lam) -> (Tensor, Tensor)",
    reference.gae,
    lambda rewards, values, mask, gamma, lam: (reference.empty_output(rewards), reference.empty_output(rewards)),
    differentiable=False,
)
define(
    "min_form_returns(Tensor scores, Tensor step_mask, Tensor mask, float temperature, str mode)"
    " -> (Tensor, Tensor)",
    reference.min_form_returns,
    lambda scores, step_mask, mask, temperature, mode: (reference.empty_output(scores), reference.empty_output(scores)),
    differentiable=False,
)


def discounted_returns(rewards: torch.Tensor, mask: torch.Tensor, gamma: float = 1.0) -> torch.Tensor:
    """G_t = r_t + gamma * G_next, G_next the return at the next valid token.

    rewards: [B, T] float; mask: [B, T]. Returns [B, T], 0 at masked tokens.
    """
    _checks.floating("rewards", rewards, ndim=2)
    _checks.mask("mask", mask, "rewards", rewards)
    gamma = _checks.in_range("gamma", gamma, 0.0, 1.0)
    if _checks.values_checked(rewards):  # (not building the mask where values go unchecked, as on a GPU)
        _checks.finite_where("rewards", rewards, mask != 0)  # masked tokens are skipped: they may hold anything
    return implementation("discounted_returns", rewards.device)(rewards, mask, gamma)


def gae(
    rewards: torch.Tensor,
    values: torch.Tensor,
    mask: torch.Tensor,
    gamma: float = 1.0,
    lam: float = 1.0,
    whiten: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalised advantage estimation over the valid tokens of each row.

    delta_t = r_t + gamma * V_next - V_t and A_t = delta_t + gamma * lam * A_next
    (next = next valid token, 0 after the last); returns = A + V. With
    ``whiten`` the advantages (not the returns) are whitened over the valid
    tokens of the batch, as verl's masked_whiten does.
    Returns (advantages [B, T], returns [B, T]), 0 at masked tokens.
    """
    _checks.floating("rewards", rewards, ndim=2)
    _checks.floating("values", values, ndim=2)
    _checks.same_shape("values", values, "rewards", rewards)
    _checks.same_dtype("values", values, "rewards", rewards)
    _checks.mask("mask", mask, "rewards", rewards)
    gamma = _checks.in_range("gamma", gamma, 0.0, 1.0)
    lam = _checks.in_range("lam", lam, 0.0, 1.0)
    if not isinstance(whiten, bool):
        raise TypeError(f"whiten must be a bool, got {type(whiten).__name__}")
    if _checks.values_checked(rewards):  # (not building the mask where values go unchecked, as on a GPU)
        valid = mask != 0  # masked tokens are skipped: they may hold anything, as in min_form_returns
        _checks.finite_where("rewards", rewards, valid)
        _checks.finite_where("values", values, valid)
    advantages, returns = implementation("gae", rewards.device)(rewards, values, mask, gamma, lam)
    if whiten:
        advantages = reference.masked_whiten(advantages, mask)
    return advantages, returns


def min_form_returns(
    scores: torch.Tensor,
    step_mask: torch.Tensor,
    mask: torch.Tensor,
    temperature: float = 0.1,
    mode: str = "soft",
) -> tuple[torch.Tensor, torch.Tensor]:
    """PURE's min-form credit assignment over the step tokens of each row.

    ``step_mask`` marks the tokens that carry a process reward (the last token
    of each step and the final token); ``scores`` holds their scores (other
    positions are ignored). Modes (DESIGN 3.1):

    - ``soft`` (PURE's released code): weights w = softmax(-s / temperature)
      over the row's steps, token reward w_k * s_k, returns the reverse
      cumulative sum. The row total approximates min_k s_k.
    - ``strict`` (the paper's definition): return at t = min of s_k over the
      step tokens at or after t, 0 after the last.
    - ``sum``: token reward s_k, returns the reverse cumulative sum.

    A row with no step token gets zeros. Returns (token_rewards, returns), [B, T].
    """
    _checks.floating("scores", scores, ndim=2)
    _checks.mask("step_mask", step_mask, "scores", scores)
    _checks.mask("mask", mask, "scores", scores)
    temperature = _checks.positive("temperature", temperature)
    _checks.choice("mode", mode, MIN_FORM_MODES)
    dtype = reference.output_dtype(scores)
    # temperatures up to half the smallest subnormal round to 0 (a Python comparison, not a tensor's .item(): that
    # is data-dependent to torch.compile once the temperature is dynamic)
    if mode == "soft" and temperature <= torch.finfo(dtype).smallest_normal * torch.finfo(dtype).eps / 2:
        raise ValueError(f"temperature {temperature} is 0 in {str(dtype).removeprefix('torch.')}, the dtype the "
                         "soft weights are computed in")
    if _checks.values_checked(scores):  # (not building the step mask where values go unchecked, as on a GPU)
        _checks.finite_where("scores", scores, (step_mask != 0) & (mask != 0))  # the step tokens': the rest is ignored
    return implementation("min_form_returns", scores.device)(scores, step_mask, mask, temperature, mode)
