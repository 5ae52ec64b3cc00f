"""Plain-PyTorch references of every op: obviously correct, slow is fine.

Each takes the op schema's arguments in order and is also the fallback kernel
of its op on any device without a compiled one. Loops run over tokens, vectorised
over the batch, so each line reads like the formula in DESIGN.md.
"""
from __future__ import annotations

import torch


def output_dtype(x: torch.Tensor | torch.dtype) -> torch.dtype:
    """float32 for bf16/fp16/fp32 inputs (or dtypes), float64 for float64."""
    return torch.float64 if (x if isinstance(x, torch.dtype) else x.dtype) == torch.float64 else torch.float32


def empty_output(like: torch.Tensor, shape=None) -> torch.Tensor:
    """An uninitialised output for ``like`` (its shape unless given): what the fake kernels return."""
    return torch.empty(like.shape if shape is None else shape, dtype=output_dtype(like), device=like.device)


# ---- 3.1 token scans ----


def discounted_returns(rewards, mask, gamma):
    valid = mask != 0
    r = rewards.to(output_dtype(rewards))
    returns = torch.zeros_like(r)
    next_return = r.new_zeros(r.shape[0])  # at the next valid token (not r[:, 0]: T may be 0)
    for t in reversed(range(r.shape[1])):
        next_return = torch.where(valid[:, t], r[:, t] + gamma * next_return, next_return)
        returns[:, t] = torch.where(valid[:, t], next_return, 0.0)
    return returns


def gae(rewards, values, mask, gamma, lam):
    valid = mask != 0
    dtype = output_dtype(rewards)
    r, v = rewards.to(dtype), values.to(dtype)
    advantages = torch.zeros_like(r)
    next_value = r.new_zeros(r.shape[0])  # not r[:, 0]: T may be 0
    next_advantage = r.new_zeros(r.shape[0])
    for t in reversed(range(r.shape[1])):
        delta = r[:, t] + gamma * next_value - v[:, t]
        here = valid[:, t]
        next_advantage = torch.where(here, delta + gamma * lam * next_advantage, next_advantage)
        next_value = torch.where(here, v[:, t], next_value)
        advantages[:, t] = torch.where(here, next_advantage, 0.0)
    returns = torch.where(valid, advantages + v, 0.0)
    return advantages, returns


def masked_whiten(values, mask, eps: float = 1e-8):
    """verl's masked_whiten (unbiased variance, mean shifted) over the valid
    tokens of the whole batch; masked positions read 0. With one valid token
    the variance is taken as 0 (verl raises there)."""
    w = (mask != 0).to(values.dtype)
    n = w.sum()
    mean = (values * w).sum() / n.clamp(min=1)
    var = ((values - mean).square() * w).sum() / (n - 1).clamp(min=1)
    return (values - mean) * torch.rsqrt(var + eps) * w


def min_form_returns(scores, step_mask, mask, temperature, mode):
    valid = mask != 0
    step = valid & (step_mask != 0)
    s = torch.where(step, scores.to(output_dtype(scores)), 0.0)
    if mode == "soft":
        # the lowest score subtracted before dividing: -s / T itself may overflow (0.5 at T = 1e-39 in float32)
        lowest = torch.where(step, s, float("inf")).amin(-1, keepdim=True) if s.shape[-1] else 0.0
        # over a tensor: a CUDA tensor over a Python float is a product with its reciprocal, inf at T = 1e-39
        weights = torch.softmax(torch.where(step, -(s - lowest) / s.new_tensor(temperature), float("-inf")), dim=-1)
        token_rewards = torch.where(step, weights * s, 0.0)  # rows without a step: NaN -> 0
    elif mode in ("strict", "sum"):
        token_rewards = s
    else:
        raise ValueError(f"mode must be 'soft', 'strict' or 'sum', got {mode!r}")

    if mode == "strict":
        returns = torch.zeros_like(s)
        suffix_min = s.new_full((s.shape[0],), float("inf"))  # not s[:, 0]: T may be 0
        for t in reversed(range(s.shape[1])):
            suffix_min = torch.where(step[:, t], torch.minimum(suffix_min, s[:, t]), suffix_min)
            returns[:, t] = torch.where(valid[:, t] & (suffix_min < float("inf")), suffix_min, 0.0)
    else:
        suffix_sum = token_rewards.flip(-1).cumsum(-1).flip(-1)
        returns = torch.where(valid, suffix_sum, 0.0)
    return token_rewards, returns


# ---- 3.2 grouped advantages ----


def group_advantages(scores, group_ids, method, eps):
    # in float64, as the kernels accumulate: a float32 group of equal scores then gives exactly 0
    # (its float32 mean and std leave a rounding residue, divided by a std of ~1e-8 + eps)
    s = scores.to(torch.float64)
    out = torch.empty_like(s)
    batch_std = s.std() if s.numel() > 1 else 1.0
    for g in torch.unique(group_ids).tolist():
        members = (group_ids == g).nonzero().flatten()
        x, n = s[members], len(members)
        mean, std = (x.mean(), x.std()) if n > 1 else (0.0, 1.0)  # verl's singleton rule
        if method == "grpo":
            out[members] = (x - mean) / (std + eps)
        elif method == "dr_grpo":
            out[members] = x - mean
        elif method == "rloo":  # minus the mean of the other members
            out[members] = x - (x.sum() - x) / (n - 1) if n > 1 else x
        elif method == "batch_std":
            out[members] = (x - mean) / (batch_std + eps)
        else:
            raise ValueError(f"unknown method {method!r}")
    return out.to(output_dtype(scores))


def broadcast_to_tokens(advantages, mask):
    return torch.where(mask != 0, advantages.to(output_dtype(advantages))[:, None], 0.0)


def risk_advantages(scores, group_ids, bundle_size, alpha, beta, omega, natural_baseline, credit):
    """RiskPO (DESIGN 3.2): mixed value-at-risk advantages over bundles of questions."""
    s = scores.to(torch.float64)  # as the kernels accumulate: near ties amplify float32 rounding by 1/(std + 1e-6)
    out = torch.zeros_like(s)
    questions: dict = {}  # group id -> its rows in batch order; dicts keep first-appearance order
    for row, g in enumerate(group_ids.tolist()):
        questions.setdefault(g, []).append(row)
    questions = list(questions.values())
    for start in range(0, len(questions), bundle_size):
        bundle = questions[start:start + bundle_size]
        P = min(len(q) for q in bundle)
        X = torch.stack([sum(s[q[p]] for q in bundle) for p in range(P)])  # paper p's total
        a, b = torch.quantile(X, alpha), torch.quantile(X, beta)
        g = (X - a).clamp(min=0) - (X - b).clamp(min=0)
        if natural_baseline:
            g = g + (a - b)
        g = g / (beta - alpha)
        c = -(a - X).clamp(min=0) / alpha
        A = (omega * c + g) / (omega + 1)
        A = A / ((X.std() if P > 1 else 1.0) + 1e-6)
        means = [s[q].mean() for q in bundle]
        if credit == "std":
            for q, mean in zip(bundle, means):
                std = s[q].std() if len(q) > 1 else torch.ones(())
                std = torch.where(std <= 1e-3, 1.0, std)
                for p in range(P):
                    out[q[p]] = A[p] / std
        elif credit == "sum_mean":
            for p in range(P):
                total = sum(s[q[p]] - mean for q, mean in zip(bundle, means))
                for q, mean in zip(bundle, means):
                    out[q[p]] = A[p] / len(bundle) if abs(total) <= 1e-6 else A[p] * (s[q[p]] - mean) / total
        else:
            raise ValueError(f"unknown credit {credit!r}")
    return out.to(output_dtype(scores))


# ---- 3.3 vocabulary-wide ops ----


def _no_output(like):
    return like.new_empty(0, dtype=output_dtype(like))


def token_stats(logits, labels, temperature, ignore_index, entropy, mean_logp):
    """(logprob, entropy, mean_logp, lse) of each row of ``logits`` [N, V], from the
    materialised log-softmax in the output dtype. Unrequested outputs are empty;
    ignored rows read 0 (lse is kept for every row). mean_logp has no gradient."""
    z = logits.to(output_dtype(logits)) / temperature
    lse = torch.logsumexp(z, -1)
    logp = torch.log_softmax(z, -1)  # (z - max) - log(sum): z - lse rounds log(sum) to the float spacing at |lse|
    valid = labels != ignore_index
    picked = logp.gather(-1, torch.where(valid, labels, 0)[:, None]).squeeze(-1)
    logprob = torch.where(valid, picked, 0.0)
    if entropy:  # p log p is 0 at a -inf logit (a masked vocabulary), not 0 * -inf; so is its gradient
        ent = torch.where(valid, -(logp.exp() * torch.where(logp > float("-inf"), logp, 0.0)).sum(-1), 0.0)
    else:
        ent = _no_output(logits)
    mean = torch.where(valid, logp.mean(-1), 0.0).detach() if mean_logp else _no_output(logits)
    return logprob, ent, mean, lse.detach()


def linear_logprobs(hidden, weight, labels, bias, temperature, ignore_index, entropy, mean_logp):
    dtype = output_dtype(hidden)
    logits = hidden.to(dtype) @ weight.to(dtype).T
    if bias is not None:
        logits = logits + bias.to(dtype)
    return token_stats(logits, labels, temperature, ignore_index, entropy, mean_logp)


def logprobs_from_logits(logits, labels, temperature, ignore_index, entropy, mean_logp, inplace_backward):
    return token_stats(logits, labels, temperature, ignore_index, entropy, mean_logp)


def _grad_logits(logits, labels, temperature, ignore_index, grad_logprob, grad_entropy):
    """d(sum g_lp logprob + g_ent entropy)/d(logits), in the output dtype: per valid row
    (onehot(label) - p) g_lp - p (log p + entropy) g_ent, over the temperature. Written out,
    not autograd's: a kernel calling torch.autograd.grad records nothing under a dispatch
    mode (FlopCounterMode, opcheck's schema check); gradcheck tests it."""
    z = logits.to(output_dtype(logits)) / temperature
    logp = torch.log_softmax(z, -1)
    p = logp.exp()
    valid = labels != ignore_index
    g_lp = grad_logprob.to(z.dtype)[:, None]
    grad = (-p * g_lp).scatter_add(-1, torch.where(valid, labels, 0)[:, None], g_lp)
    if grad_entropy.numel():
        log_p = torch.where(logp > float("-inf"), logp, 0.0)  # p log p is 0 at a -inf logit, not 0 * -inf
        ent = -(p * log_p).sum(-1, keepdim=True)
        grad = grad - grad_entropy.to(z.dtype)[:, None] * p * (log_p + ent)
    return torch.where(valid[:, None], grad, 0.0) / temperature


def linear_logprobs_backward(
    grad_logprob, grad_entropy, hidden, weight, labels, bias, lse, entropy, temperature, ignore_index, weight_grad
):
    dtype = output_dtype(hidden)
    logits = hidden.to(dtype) @ weight.to(dtype).T
    if bias is not None:
        logits = logits + bias.to(dtype)
    grad = _grad_logits(logits, labels, temperature, ignore_index, grad_logprob, grad_entropy)
    grad_weight = (grad.T @ hidden.to(dtype)).to(weight.dtype) if weight_grad else weight.new_empty(0)
    grad_bias = hidden.new_empty(0) if bias is None else grad.sum(0).to(bias.dtype)
    return (grad @ weight.to(dtype)).to(hidden.dtype), grad_weight, grad_bias


def logprobs_from_logits_backward(grad_logprob, grad_entropy, logits, labels, lse, entropy, temperature, ignore_index):
    return _grad_logits(logits, labels, temperature, ignore_index, grad_logprob, grad_entropy).to(logits.dtype)


def counter_uniform(seeds, offset, n):
    """u[b, j] in (0, 1) from (seeds[b], offset, j) alone: a splitmix64 hash in int64
    arithmetic (wrapping), the reference's counter-based generator."""
    def mix(x):
        x = x ^ ((x >> 30) & ((1 << 34) - 1))  # logical shifts of int64
        x = x * -4658895280553007687  # 0xBF58476D1CE4E5B9
        x = x ^ ((x >> 27) & ((1 << 37) - 1))
        x = x * -7723592293110705685  # 0x94D049BB133111EB
        return x ^ ((x >> 31) & ((1 << 33) - 1))

    golden = -7046029254386353131  # 0x9E3779B97F4A7C15
    tokens = torch.arange(n, device=seeds.device, dtype=torch.int64)
    x = mix(mix(seeds * golden + offset)[:, None] + (tokens[None, :] + 1) * golden)
    return (((x >> 11) & ((1 << 53) - 1)).to(torch.float64) + 0.5) * 2.0**-53


def sample(logits, temperature, top_k, top_p, seeds, offset):
    """Sort-based top-k then top-p (ties at a cutoff kept), Gumbel-max over the kept tokens."""
    z = logits.to(output_dtype(logits)) / temperature
    policy = torch.log_softmax(z, -1)
    keep = torch.ones_like(z, dtype=torch.bool)
    if top_k > 0:
        keep &= z >= torch.topk(z, top_k, dim=-1).values[:, -1:]
    if top_p < 1.0:
        masked = torch.where(keep, z, float("-inf"))
        ordered = masked.sort(-1, descending=True).values
        mass = torch.softmax(ordered, -1).cumsum(-1)
        first = (mass < top_p).sum(-1, keepdim=True).clamp(max=z.shape[1] - 1)  # first position reaching top_p
        keep &= z >= ordered.gather(-1, first)
    filtered = torch.where(keep, z, float("-inf"))
    gumbel = -torch.log(-torch.log(counter_uniform(seeds, offset, z.shape[1])))
    # the noise on z less its max: z ~ 3.6e7 (a logit of 25 at temperature 1e-6) would round it away, and
    # tokens tied there would go to the first
    tokens = torch.argmax((filtered - filtered.amax(-1, keepdim=True)) + gumbel.to(z.dtype), -1)
    pick = tokens[:, None]
    logprob = torch.log_softmax(filtered, -1).gather(-1, pick).squeeze(-1)
    return tokens, logprob, policy.gather(-1, pick).squeeze(-1), policy.mean(-1)
