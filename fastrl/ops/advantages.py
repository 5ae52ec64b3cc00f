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
from fastrl.ops._registry import define, implementation

GROUP_METHODS = ("grpo", "dr_grpo", "rloo", "batch_std")

define(
    "group_advantages(Tensor scores, Tensor group_ids, str method, float eps) -> Tensor",
    reference.group_advantages,
    lambda scores, group_ids, method, eps: torch.empty(
        scores.shape, dtype=reference.output_dtype(scores), device=scores.device),
)
define(
    "broadcast_to_tokens(Tensor advantages, Tensor mask) -> Tensor",
    reference.broadcast_to_tokens,
    lambda advantages, mask: torch.empty(
        mask.shape, dtype=reference.output_dtype(advantages), device=advantages.device),
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
    if eps < 0:
        raise ValueError(f"eps must be >= 0, got {eps}")
    _checks.finite("scores", scores)
    return implementation("group_advantages", scores.device)(scores, group_ids, method, eps)


def check_group_ids(group_ids, scores: torch.Tensor):
    _checks.tensor("group_ids", group_ids, ndim=1)
    if group_ids.dtype != torch.int64:
        raise TypeError(f"group_ids must be int64, got {group_ids.dtype} (see group_ids_from_uids)")
    if group_ids.shape != scores.shape:
        raise ValueError(f"group_ids must have the length of scores ({scores.shape[0]}), "
                         f"got {group_ids.shape[0]}")
    _checks.same_device("group_ids", group_ids, "scores", scores)
    if _checks.values_checked(group_ids) and group_ids.numel():
        low, high = torch.aminmax(group_ids)
        if low < 0 or high >= group_ids.numel():
            raise ValueError(f"group_ids must be in [0, {group_ids.numel()}), "
                             f"got values in [{int(low)}, {int(high)}]")


def broadcast_to_tokens(advantages: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """[B] advantages to [B, T]: each response's value at its valid tokens, 0 elsewhere."""
    _checks.floating("advantages", advantages, ndim=1)
    _checks.tensor("mask", mask, ndim=2)
    if mask.shape[0] != advantages.shape[0]:
        raise ValueError(f"mask must have {advantages.shape[0]} rows (one per advantage), got {mask.shape[0]}")
    if mask.dtype.is_complex:
        raise TypeError(f"mask must be bool, integer or float, got {mask.dtype}")
    _checks.same_device("mask", mask, "advantages", advantages)
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
    if _extension.module is not None and len(uids):
        return torch.frombuffer(bytearray(_extension.module.group_ids_from_uids(uids)), dtype=torch.int64)
    first_seen: dict = {}
    return torch.tensor([first_seen.setdefault(u, len(first_seen)) for u in uids], dtype=torch.int64)


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
