"""Grouped advantages (DESIGN 3.2): GRPO, Dr.GRPO, RLOO and batch-std.

Kernels: csrc/include/fastrl/advantages.h (arithmetic), csrc/cpu/advantages.cpp,
csrc/cuda/advantages.cu (one launch, no host sync); reference in
fastrl/ops/reference.py. A group is the set of responses sharing an id in
``group_ids`` (int64, values in [0, B), any pattern and order, unequal sizes).
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from fastrl import _extension
from fastrl.ops import _checks, reference
from fastrl.ops._registry import backend_for, define, implementation

GROUP_METHODS = ("grpo", "dr_grpo", "rloo", "batch_std")
RISK_CREDITS = ("std", "sum_mean")

define(
    "group_advantages(Tensor scores, Tensor group_ids, str method, float eps) -> Tensor",
    reference.group_advantages,
    lambda scores, group_ids, method, eps: reference.empty_output(scores),
    differentiable=False,
)
define(
    "broadcast_to_tokens(Tensor advantages, Tensor mask) -> Tensor",
    reference.broadcast_to_tokens,
    lambda advantages, mask: reference.empty_output(advantages, mask.shape),
    differentiable=False,
)


def group_advantages(scores: torch.Tensor, group_ids: torch.Tensor, method: str = "grpo",
                     eps: float = 1e-6) -> torch.Tensor:
    """Per-response advantages from the scores of each response's group.

    - ``grpo``: (s - mean_g) / (std_g + eps); a singleton gets mean 0, std 1.
    - ``dr_grpo``: s - mean_g; a singleton gets s.
    - ``rloo``: s - mean of the other members of its group; a singleton gets s.
    - ``batch_std``: (s - mean_g) / (std of all scores + eps); a singleton gets mean 0.

    Stds are unbiased (as torch.std), as in verl's estimators. Returns [B].
    """
    _checks.floating("scores", scores, ndim=1)
    check_group_ids(group_ids, scores)
    _checks.choice("method", method, GROUP_METHODS)
    eps = _checks.number("eps", eps)
    if eps < 0 or (eps == 0 and method in ("grpo", "batch_std")):
        raise ValueError(f"eps must be > 0 for method {method!r} (it divides by std + eps, and a group of equal "
                         f"scores has std 0), got {eps}" if eps == 0 else f"eps must be >= 0, got {eps}")
    check_values("group_advantages", scores, group_ids)
    return implementation("group_advantages", scores.device)(scores, group_ids, method, eps)
define(
    "risk_advantages(Tensor scores, Tensor group_ids, int bundle_size, float alpha, float beta, float omega,"
    " bool natural_baseline, str credit) -> Tensor",
    reference.risk_advantages,
    lambda scores, group_ids, *args: reference.empty_output(scores),
    differentiable=False,
)


def risk_advantages(scores: torch.Tensor, group_ids: torch.Tensor, bundle_size: int = 5, alpha: float = 0.2,
                    beta: float = 0.8, omega: float = 1.5, natural_baseline: bool = True,
                    credit: str = "std") -> torch.Tensor:
    """RiskPO's mixed value-at-risk advantages with question bundling (DESIGN 3.2).

    Questions (groups) in order of first appearance are cut into bundles of
    ``bundle_size``; in a bundle, paper p is the p-th response (in batch order)
    of every question, and X_p the sum of its scores, for p below the smallest
    group size P of the bundle (later responses get 0). With a, b the alpha-
    and beta-quantiles of X (torch.quantile's linear interpolation):
    g = (X-a)+ - (X-b)+ (+ (a-b) with ``natural_baseline``), over beta - alpha;
    c = -(a-X)+ / alpha; A = (omega c + g) / (omega + 1), over the std of X
    (+1e-6; 1 when P = 1). Credit to a response: ``std``, A_p over its
    question's std (1 for a singleton or a std <= 1e-3); ``sum_mean``,
    A_p (r - mean_q) / sum over the paper of (r_j - mean_qj), or A_p over the
    number of questions of the bundle where that sum is within 1e-6 of 0.
    With ``natural_baseline`` every A_p is <= 0 (and so every response's
    advantage under ``std`` credit): that is the exact gradient of the risk
    measure, not a bug. ``bundle_size=1`` is the per-group form.
    """
    _checks.floating("scores", scores, ndim=1)
    check_group_ids(group_ids, scores)
    _checks.int64("bundle_size", bundle_size)
    if bundle_size < 1:
        raise ValueError(f"bundle_size must be >= 1, got {bundle_size}")
    alpha, beta = _checks.number("alpha", alpha), _checks.number("beta", beta)
    for name, value in (("alpha", alpha), ("beta", beta)):
        if not 0 < value < 1:
            raise ValueError(f"{name} must be in (0, 1), got {value}")
    if alpha >= beta:
        raise ValueError(f"alpha must be < beta, got alpha={alpha}, beta={beta}")
    omega = _checks.number("omega", omega)
    if omega < 0:
        raise ValueError(f"omega must be >= 0, got {omega}")
    if not isinstance(natural_baseline, bool):
        raise TypeError(f"natural_baseline must be a bool, got {type(natural_baseline).__name__}")
    _checks.choice("credit", credit, RISK_CREDITS)
    check_values("risk_advantages", scores, group_ids)
    return implementation("risk_advantages", scores.device)(
        scores, group_ids, bundle_size, alpha, beta, omega, natural_baseline, credit)


def check_group_ids(group_ids, scores: torch.Tensor):
    _checks.tensor("group_ids", group_ids, ndim=1)
    if group_ids.dtype != torch.int64:
        raise TypeError(f"group_ids must be int64, got {group_ids.dtype} (see group_ids_from_uids)")
    if group_ids.shape[0] != scores.shape[0]:
        raise ValueError(f"group_ids must have one id per row of scores ({scores.shape[0]}), "
                         f"got {group_ids.shape[0]}")
    _checks.same_device("group_ids", group_ids, "scores", scores)


def check_group_id_values(group_ids: torch.Tensor):
    """Ids in [0, B), read where values are checked (CPU, or FASTRL_CHECK=1)."""
    if _checks.values_checked(group_ids) and group_ids.numel():
        low, high = torch.aminmax(group_ids)
        _checks.require((low >= 0) & (high < group_ids.numel()), f"group_ids must be in [0, {group_ids.numel()})",
                        lambda: f", got values in [{int(low)}, {int(high)}]")


def check_values(op: str, scores: torch.Tensor, group_ids: torch.Tensor):
    """NaN/Inf scores and ids outside [0, B). The C++ CPU kernels make these
    checks in their first pass over the batch, so here they are skipped for them."""
    if backend_for(op, scores.device.type) == "cpp":
        return
    _checks.finite("scores", scores)
    check_group_id_values(group_ids)


def broadcast_to_tokens(advantages: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """[B] advantages to [B, T]: each response's value at its valid tokens, 0 elsewhere."""
    _checks.floating("advantages", advantages, ndim=1)
    _checks.tensor("mask", mask, ndim=2)
    if mask.shape[0] != advantages.shape[0]:
        raise ValueError(f"mask must have {advantages.shape[0]} rows (one per advantage), got {mask.shape[0]}")
    if mask.dtype.is_complex:
        raise TypeError(f"mask must be bool, integer or float, got {mask.dtype}")
    _checks.same_device("mask", mask, "advantages", advantages)
    _checks.finite("advantages", advantages)
    return implementation("broadcast_to_tokens", advantages.device)(advantages, mask)


def group_ids_from_uids(uids) -> torch.Tensor:
    """Group ids in [0, B) from any per-response ids, numbered in first-seen order.

    ``uids``: verl's numpy object array of string uids, a list of hashables,
    or an integer array/tensor. Object ids are hashed in C (fastrl._C) when
    the extension is built, so that mapping a batch costs little next to the op.
    Returns an int64 tensor on the CPU (or on the device of a tensor input).
    """
    if isinstance(uids, torch.Tensor):
        if uids.dim() != 1 or uids.dtype.is_floating_point or uids.dtype.is_complex:
            raise TypeError(f"uids must be a 1-D integer tensor, got {uids.dtype} of shape {tuple(uids.shape)}")
        return _first_seen_ranks(uids.to(torch.int64))
    if isinstance(uids, np.ndarray) and uids.dtype != object:
        if uids.ndim != 1:
            raise ValueError(f"uids must be 1-D, got shape {uids.shape}")
        if uids.dtype.kind in "iub":
            return _first_seen_ranks(torch.from_numpy(uids.astype(np.int64)))
    if isinstance(uids, np.ndarray):
        if uids.ndim != 1:
            raise ValueError(f"uids must be 1-D, got shape {uids.shape}")
        uids = uids.tolist()
    if not isinstance(uids, Sequence) or isinstance(uids, (str, bytes)):
        raise TypeError(f"uids must be a sequence of hashable ids, got {type(uids).__name__}")
    try:
        if _extension.module is not None and len(uids):
            return torch.frombuffer(bytearray(_extension.module.group_ids_from_uids(uids)), dtype=torch.int64)
        first_seen: dict = {}
        return torch.tensor([first_seen.setdefault(u, len(first_seen)) for u in uids], dtype=torch.int64)
    except TypeError:
        for i, u in enumerate(uids):
            try:
                hash(u)
            except TypeError:
                raise TypeError(f"uids[{i}] must be hashable, got {type(u).__name__}") from None
        raise


def _first_seen_ranks(ids: torch.Tensor) -> torch.Tensor:
    if ids.numel() == 0:
        return ids
    unique, inverse = torch.unique(ids, return_inverse=True)
    positions = torch.arange(ids.numel(), device=ids.device)
    first = torch.full((unique.numel(),), ids.numel(), dtype=torch.int64, device=ids.device)
    first = first.scatter_reduce(0, inverse, positions, reduce="amin")
    rank = torch.empty_like(first)
    rank[torch.argsort(first)] = torch.arange(unique.numel(), device=ids.device)
    return rank[inverse]
