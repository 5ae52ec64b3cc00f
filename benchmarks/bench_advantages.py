"""Grouped advantages: fastrl against verl's estimators and eager PyTorch (issue 3).

Providers:
- fastrl_verl_grpo / fastrl_verl_rloo: end to end through the verl adapter, as
  verl calls it: token-level rewards [B, T], a response mask and the numpy
  object array of string uids (mapping the uids is part of the cost);
- verl_grpo, verl_rloo: verl's loop estimators; verl_grpo_vectorized,
  verl_rloo_vectorized: its vectorised ones (same inputs);
- fastrl_op: group_advantages alone on int64 group ids ([B] in, [B] out);
- eager_index_add: the same GRPO in eager PyTorch with index_add (int64 ids).
Rewards: 0/1 at the last valid token plus noise; groups are consecutive, as verl
lays them out.

    python benchmarks/bench_advantages.py [--quick] [--device cuda] [--shape B,GROUP,T]
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import harness  # noqa: E402

import fastrl.ops as ops  # noqa: E402
from fastrl.integrations import verl as fastrl_verl  # noqa: E402

try:
    from verl.trainer.ppo import core_algos
except ImportError:  # the verl rows are left out
    core_algos = None

BATCHES = [512, 4096, 16384]
GROUP_SIZES = [8, 16, 64]
LENGTHS = [8, 1024]
QUICK = [(512, 8, 8), (4096, 16, 8)]
GPU = [(4096, 16, 8), (16384, 16, 8), (16384, 16, 1024)]  # verl's loops take seconds a call there


def make_inputs(B, group_size, T, device, seed=0):
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(1, T + 1, (B,), generator=g)
    mask = (torch.arange(T)[None, :] < lengths[:, None]).float()
    rewards = torch.zeros(B, T)
    rewards[torch.arange(B), lengths - 1] = (torch.rand(B, generator=g) > 0.5).float() + 0.01 * torch.randn(B, generator=g)
    prompt = torch.arange(B) // group_size
    uids = np.array([f"{int(p):08x}-uid" for p in prompt], dtype=object)
    return dict(rewards=rewards.to(device), mask=mask.to(device), uids=uids,
                scores=rewards.sum(-1).to(device), group_ids=prompt.to(device))


def grpo_index_add(scores, group_ids, eps=1e-6):
    """Eager GRPO with index_add: group means and unbiased stds, verl's singleton rule."""
    B = scores.numel()
    count = torch.zeros(B, dtype=scores.dtype, device=scores.device).index_add_(0, group_ids, torch.ones_like(scores))
    total = torch.zeros_like(count).index_add_(0, group_ids, scores)
    mean = total / count.clamp(min=1)
    dev = scores - mean[group_ids]
    m2 = torch.zeros_like(count).index_add_(0, group_ids, dev * dev)
    std = (m2 / (count - 1).clamp(min=1)).sqrt()
    single = count[group_ids] < 2
    return torch.where(single, scores / (1 + eps), dev / (std[group_ids] + eps))


def cases(shapes, device):
    found = []

    def case(B, G, T, provider, fn, note="", compare_to=None, uids=False):
        def setup():
            if device.type == "cpu":  # lazy initialisation before a memory probe's baseline
                fn(make_inputs(2 * G, G, min(T, 16), device, seed=1))
            x = make_inputs(B, G, T, device)
            call = lambda: fn(x)  # noqa: E731
            # verl's estimators return (advantages, returns) over [B, T]: the advantages at valid tokens
            call.comparable = lambda out: out[0] * x["mask"] if isinstance(out, tuple) else out
            return call
        # from string uids every provider maps them on the host first: timed on the host
        found.append(harness.Case("group_advantages", {"B": B, "group": G, "T": T}, provider, setup, note,
                                  compare_to=compare_to, wall_clock=uids))

    for B, G, T in shapes:
        for name, ours in (("grpo", fastrl_verl.fastrl_grpo), ("rloo", fastrl_verl.fastrl_rloo)):
            case(B, G, T, f"fastrl_verl_{name}", lambda x, f=ours: f(x["rewards"], x["mask"], x["uids"]),
                 "string uids, [B, T] out", uids=True)
            if core_algos is None:
                continue
            loop = getattr(core_algos, f"compute_{name}_outcome_advantage")
            vectorized = getattr(core_algos, f"compute_{name}_vectorized_outcome_advantage")
            case(B, G, T, f"verl_{name}", lambda x, f=loop: f(x["rewards"].clone(), x["mask"], x["uids"]),
                 compare_to=f"fastrl_verl_{name}", uids=True)
            case(B, G, T, f"verl_{name}_vectorized", lambda x, f=vectorized: f(x["rewards"], x["mask"], x["uids"]),
                 compare_to=f"fastrl_verl_{name}", uids=True)
        if T == LENGTHS[0] or device.type == "cuda":
            case(B, G, T, "fastrl_op", lambda x: ops.group_advantages(x["scores"], x["group_ids"]),
                 "int64 ids, [B] out")
            case(B, G, T, "eager_index_add", lambda x: grpo_index_add(x["scores"], x["group_ids"]),
                 "int64 ids, [B] out", compare_to="fastrl_op")
    return found


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    args = harness.parse_args(__doc__.splitlines()[0], "B,GROUP,T", argv)
    shapes = harness.shapes(args, QUICK, [(B, G, T) for B in BATCHES for G in GROUP_SIZES for T in LENGTHS], GPU)
    if core_algos is None:
        print("verl is not importable: its rows are left out (pip install verl==0.9.1)")
    return harness.run("advantages", cases(shapes, args.device), args, __file__, argv)


if __name__ == "__main__":
    harness.command_line(main)
