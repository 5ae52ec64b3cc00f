"""Token scans: fastrl against what RL frameworks run today (issue 2, DESIGN 5).

Baselines, written here from the published formulas:
- loop_verl: verl's per-token GAE loop over T, vectorised over the batch,
  skipping masked tokens; loop_openrlhf: OpenRLHF's loop (masks multiplied in);
- eager_cumsum: the vectorised GAE that exists at gamma = lam = 1 (reverse
  cumsum of the TD errors), and the reverse cumsum of the rewards for returns;
- pure_eager: PURE's formulation (masked softmax over the step scores, then
  flip/cumsum; flip/cummin for the strict form); pure_loop: the same weights
  with the reverse accumulation written as a per-token loop;
- compiled_*: torch.compile of the eager versions (dynamic shapes).
Inputs: fp32 rewards/values/scores, a bool response mask with right padding
(lengths uniform in [T/2, T]), one step token every 64 tokens plus the last.

    python benchmarks/bench_scans.py [--quick] [--device cuda] [--memory] [--shape B,T]
"""
from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import harness  # noqa: E402

import fastrl.ops as ops  # noqa: E402

SHAPES = [(64, 1024), (64, 4096), (256, 1024), (256, 4096), (1024, 1024), (1024, 4096)]
QUICK_SHAPES = [(64, 512), (256, 1024)]
GPU_SHAPES = [(256, 4096), (512, 8192), (1024, 4096)]


def make_inputs(B, T, device, seed=0):
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(T // 2, T + 1, (B,), generator=g)
    mask = torch.arange(T)[None, :] < lengths[:, None]
    rewards = torch.randn(B, T, generator=g)
    values = torch.randn(B, T, generator=g)
    steps = (torch.arange(T)[None, :] % 64 == 63) | (torch.arange(T)[None, :] == lengths[:, None] - 1)
    steps &= mask
    scores = torch.rand(B, T, generator=g) * 2 - 1
    return {k: v.to(device) for k, v in dict(rewards=rewards, values=values, mask=mask,
                                              steps=steps, scores=scores).items()}


# Least traffic per token with fp32 data and bool masks: inputs read once, outputs written once.
BYTES_PER_TOKEN = {
    "discounted_returns": 4 + 1 + 4,  # rewards, mask -> returns
    "gae": 4 + 4 + 1 + 4 + 4,  # rewards, values, mask -> advantages, returns
    "min_form_returns": 4 + 1 + 1 + 4 + 4,  # scores, step mask, mask -> token rewards, returns
}

# ---- baselines ----


def gae_loop_verl(rewards, values, mask, gamma, lam):
    m = mask.to(rewards.dtype)
    next_value = torch.zeros_like(rewards[:, 0])
    last = torch.zeros_like(rewards[:, 0])
    out = []
    for t in reversed(range(rewards.shape[1])):
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        candidate = delta + gamma * lam * last
        next_value = values[:, t] * m[:, t] + (1 - m[:, t]) * next_value
        last = candidate * m[:, t] + (1 - m[:, t]) * last
        out.append(last)
    adv = torch.stack(out[::-1], dim=1)
    return adv, adv + values


def gae_loop_openrlhf(rewards, values, mask, gamma, lam):
    m = mask.to(rewards.dtype)
    values, rewards = values * m, rewards * m
    last = 0.0
    out = []
    T = rewards.shape[1]
    for t in reversed(range(T)):
        next_value = values[:, t + 1] if t < T - 1 else 0.0
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        last = delta + gamma * lam * last
        out.append(last)
    adv = torch.stack(out[::-1], dim=1)
    return adv, adv + values


def returns_loop(rewards, mask, gamma):
    m = mask.to(rewards.dtype)
    running = torch.zeros_like(rewards[:, 0])
    out = []
    for t in reversed(range(rewards.shape[1])):
        running = (rewards[:, t] + gamma * running) * m[:, t] + (1 - m[:, t]) * running
        out.append(running * m[:, t])
    return torch.stack(out[::-1], dim=1)


def reverse_cumsum(x):
    return x.flip(-1).cumsum(-1).flip(-1)


def gae_eager_cumsum(rewards, values, mask):
    """gamma = lam = 1 with right-padded masks: A_t = sum_{k>=t} delta_k."""
    m = mask.to(rewards.dtype)
    v = values * m
    next_v = torch.nn.functional.pad(v[:, 1:], (0, 1))
    adv = reverse_cumsum((rewards + next_v - v) * m)
    return adv * m, (adv + values) * m


def returns_eager_cumsum(rewards, mask):
    m = mask.to(rewards.dtype)
    return reverse_cumsum(rewards * m) * m


def pure_soft_eager(scores, steps, mask, temperature):
    weights = torch.softmax((-scores / temperature).masked_fill(~steps, float("-inf")), dim=-1)
    token_rewards = (weights * scores).masked_fill(~steps, 0.0)
    return token_rewards, reverse_cumsum(token_rewards) * mask


def pure_strict_eager(scores, steps, mask):
    suffix_min = scores.masked_fill(~steps, float("inf")).flip(-1).cummin(-1).values.flip(-1)
    return scores * steps, torch.where(mask & suffix_min.isfinite(), suffix_min, 0.0)


def pure_soft_loop(scores, steps, mask, temperature):
    weights = torch.softmax((-scores / temperature).masked_fill(~steps, float("-inf")), dim=-1)
    token_rewards = (weights * scores).masked_fill(~steps, 0.0)
    running = torch.zeros_like(scores[:, 0])
    out = []
    for t in reversed(range(scores.shape[1])):
        running = running + token_rewards[:, t]
        out.append(running)
    return token_rewards, torch.stack(out[::-1], dim=1) * mask


def compiled(fn):
    return torch.compile(fn, dynamic=True)


# ---- cases ----


def cases(shapes, device) -> list[harness.Case]:
    found = []
    comp = {f.__name__: compiled(f) for f in (gae_eager_cumsum, returns_eager_cumsum,
                                             pure_soft_eager, pure_strict_eager)}

    def case(op, B, T, provider, fn, note="", **params):
        def setup():
            if device.type == "cpu":  # compilation and lazy initialisation before a memory probe's baseline
                fn(make_inputs(min(B, 4), min(T, 16), device, seed=1))  # (dynamic: the full shape reuses the graph)
            x = make_inputs(B, T, device)
            call = lambda: fn(x)  # noqa: E731
            # gae: the advantages, min-form: the returns, at valid tokens (masked ones hold anything)
            call.comparable = lambda out: torch.where(x["mask"], out[op == "min_form_returns"] if isinstance(out, tuple)
                                                      else out, 0.0)
            return call
        shape = {"B": B, "T": T, **params}
        moved = B * T * BYTES_PER_TOKEN[op] if provider.startswith("fastrl") else None
        found.append(harness.Case(op, shape, provider, setup, note, moved))

    for B, T in shapes:
        for gamma, lam in ((1.0, 1.0), (0.99, 0.95)):
            fastrl_name = f"fastrl_{ops.backend_for('gae', device.type)}"
            case("gae", B, T, fastrl_name,
                 lambda x, g=gamma, l=lam: ops.gae(x["rewards"], x["values"], x["mask"], g, l), gamma=gamma, lam=lam)
            case("gae", B, T, "loop_verl",
                 lambda x, g=gamma, l=lam: gae_loop_verl(x["rewards"], x["values"], x["mask"], g, l), gamma=gamma, lam=lam)
            case("gae", B, T, "loop_openrlhf",
                 lambda x, g=gamma, l=lam: gae_loop_openrlhf(x["rewards"], x["values"], x["mask"], g, l),
                 "no masked-token skipping", gamma=gamma, lam=lam)
            if gamma == 1.0 and lam == 1.0:
                case("gae", B, T, "eager_cumsum",
                     lambda x: gae_eager_cumsum(x["rewards"], x["values"], x["mask"]),
                     "gamma = lam = 1 only", gamma=gamma, lam=lam)
                case("gae", B, T, "compiled_cumsum",
                     lambda x: comp["gae_eager_cumsum"](x["rewards"], x["values"], x["mask"]),
                     "gamma = lam = 1 only", gamma=gamma, lam=lam)

            case("discounted_returns", B, T, f"fastrl_{ops.backend_for('discounted_returns', device.type)}",
                 lambda x, g=gamma: ops.discounted_returns(x["rewards"], x["mask"], g), gamma=gamma)
            case("discounted_returns", B, T, "loop",
                 lambda x, g=gamma: returns_loop(x["rewards"], x["mask"], g), gamma=gamma)
            if gamma == 1.0:
                case("discounted_returns", B, T, "eager_cumsum",
                     lambda x: returns_eager_cumsum(x["rewards"], x["mask"]), "gamma = 1 only", gamma=gamma)
                case("discounted_returns", B, T, "compiled_cumsum",
                     lambda x: comp["returns_eager_cumsum"](x["rewards"], x["mask"]), "gamma = 1 only", gamma=gamma)

        for mode in ("soft", "strict"):
            name = f"fastrl_{ops.backend_for('min_form_returns', device.type)}"
            case("min_form_returns", B, T, name,
                 lambda x, m=mode: ops.min_form_returns(x["scores"], x["steps"], x["mask"], 0.1, m), mode=mode)
            if mode == "soft":
                case("min_form_returns", B, T, "pure_eager",
                     lambda x: pure_soft_eager(x["scores"], x["steps"], x["mask"], 0.1), mode=mode)
                case("min_form_returns", B, T, "pure_loop",
                     lambda x: pure_soft_loop(x["scores"], x["steps"], x["mask"], 0.1), mode=mode)
                case("min_form_returns", B, T, "compiled_pure",
                     lambda x: comp["pure_soft_eager"](x["scores"], x["steps"], x["mask"], 0.1), mode=mode)
            else:
                case("min_form_returns", B, T, "pure_eager",
                     lambda x: pure_strict_eager(x["scores"], x["steps"], x["mask"]), mode=mode)
                case("min_form_returns", B, T, "compiled_pure",
                     lambda x: comp["pure_strict_eager"](x["scores"], x["steps"], x["mask"]), mode=mode)
    return found


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    args = harness.parse_args(__doc__.splitlines()[0], "B,T", argv)
    shapes = harness.shapes(args, QUICK_SHAPES, SHAPES, GPU_SHAPES)
    return harness.run("scans", cases(shapes, args.device), args, __file__, argv)


if __name__ == "__main__":
    harness.command_line(main)
