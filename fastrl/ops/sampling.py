"""Q-softmax sampling (DESIGN 3.3): one draw per row from softmax(logits / temperature),
restricted first by top-k, then by top-p (Hugging Face's order), every token tied at a
cutoff kept.

Gumbel-max with counter-based noise: token = argmax over the kept tokens of
z + Gumbel(u), u = f(seed, offset, token), so a decoding loop passes its step as
``offset`` and equal (seed, offset) give equal tokens. Backends: ``triton``
(kernels/sampling.py: one launch, plain sampling reads each row once, the cutoffs
are found by a 4-ary search on the float bits, no sort; Gumbel-max in two levels,
over groups of tokens then within the drawn group), ``torch`` (the CPU path:
candidates from torch.topk, with a growing k for top-p alone, inverse-CDF draw) and ``reference``
(sort-based cutoffs, Gumbel-max). Each uses its own counter-based generator: their
tokens differ for a seed, their distributions do not. Triton hands float64 logits
to the torch path.
"""
from __future__ import annotations

import math
from typing import NamedTuple, Optional

import torch

from fastrl.ops import _checks, reference
from fastrl.ops._registry import define


class Sampled(NamedTuple):
    """Per row: the token, its log-probability under the filtered sampling distribution,
    under the unfiltered temperature-scaled policy, and the mean log-softmax of that policy."""

    tokens: torch.Tensor
    logprob: torch.Tensor
    policy_logprob: torch.Tensor
    mean_logp: torch.Tensor


LOG2E = 1.4426950408889634


def _checked_op(implementation):
    """An implementation of the op that checks what it indexes by (it can be called as
    torch.ops.fastrl.sample, past sample()'s checks: the Triton kernel reads seed b for row
    b) and keeps every token for top_k >= V, as sample() does."""

    def run(logits, temperature, top_k, top_p, seeds, offset):
        if seeds.dim() != 1 or seeds.shape[0] != logits.shape[0] or seeds.dtype != torch.int64:
            raise ValueError(f"seeds must be int64 of shape [{logits.shape[0]}] (a seed per row of logits), "
                             f"got {seeds.dtype} of shape {list(seeds.shape)}")
        # the op's own conventions: top_k 0 and top_p 1 keep every token
        if not (temperature > 0 and math.isfinite(temperature)) or top_k < 0 or not 0 < top_p <= 1 or offset < 0:
            raise ValueError(f"the op needs temperature > 0 and finite, top_k >= 0 (0: all), top_p in (0, 1] and "
                             f"offset >= 0, got {temperature}, {top_k}, {top_p} and {offset}")
        check_temperature_scale(temperature, logits.dtype)
        return implementation(logits, temperature, 0 if top_k >= logits.shape[1] else top_k, top_p, seeds, offset)

    return run


def check_temperature_scale(temperature: float, dtype: torch.dtype) -> torch.finfo:
    """The kernels work on logits * log2(e) / temperature in float32 (float64 logits: in
    float64): that scale must be a normal number there. Returns that dtype's finfo."""
    accumulation = torch.finfo(reference.output_dtype(dtype))
    if not accumulation.tiny <= LOG2E / temperature < accumulation.max:
        raise ValueError(f"temperature must be in [{LOG2E / accumulation.max:.4g}, {LOG2E / accumulation.tiny:.4g}] "
                         f"for {dtype} logits (log2(e) / temperature a normal {accumulation.dtype}), "
                         f"got {temperature}")
    return accumulation


def _triton_sample(logits, *args):
    if logits.dtype == torch.float64:
        return _sample_torch(logits, *args)
    from fastrl.kernels import sampling

    return sampling.sample(logits, *args)


def _with_ties(z, cutoff, values, index):
    """The top-k (values, index) widened to every token >= cutoff (ties at a cutoff are kept)."""
    need = int((z >= cutoff).sum(-1).max())
    return z.topk(need, -1) if need > values.shape[1] else (values, index)


def _sample_torch(logits, temperature, top_k, top_p, seeds, offset):
    """The CPU path: with a filter, only the top tokens are candidates (torch.topk, for
    top-p alone with a growing k: no full sort); the draw is by inverse CDF over the
    candidates in token order with one counter-based uniform per row, an exact draw from
    the same distribution as Gumbel-max, whatever the other rows of the batch."""
    z = logits.to(reference.output_dtype(logits))
    if temperature != 1.0:
        z = z / temperature
    if z.shape[0] == 0:
        return torch.empty(0, dtype=torch.int64, device=z.device), z[:, 0], z[:, 0], z[:, 0]
    v = z.shape[1]
    m = z.amax(-1, keepdim=True)
    # log-probabilities as (z - m) - log(sum): m + log(sum) first would round log(sum) away where |z| is large
    masses = torch.exp(z - m)
    total = _row_sums(masses)
    log_sum = total.log()
    values, index, cutoff = z, None, torch.full_like(m, float("-inf"))
    if top_k > 0:
        values, index = z.topk(top_k, -1)  # descending
        cutoff = values[:, -1:]
        values, index = _with_ties(z, cutoff, values, index)
    if top_p < 1.0:
        # over the whole row: the top-k values' width is the batch's most ties at a cutoff
        pool = _row_sums(torch.where(z >= cutoff, masses, 0.0))
        target = top_p * (pool if top_k > 0 else total)
        if top_k == 0:
            k = min(v, 256)
            while True:
                values, index = z.topk(k, -1)
                if k == v or bool((torch.exp(values - m).sum(-1, keepdim=True) >= target).all()):
                    break
                k = min(v, k * 8)
        mass = torch.where(values >= cutoff, torch.exp(values - m), 0.0).cumsum(-1)
        first = (mass < target).sum(-1, keepdim=True).clamp(max=values.shape[1] - 1)  # first reaching top_p
        cutoff = torch.maximum(cutoff, values.gather(-1, first))
        values, index = _with_ties(z, cutoff, values, index)
    if index is not None:
        # in token order: topk's order among tied values depends on k, which depends on the other rows
        # (the most ties at a cutoff, the top-p loop's k), and the inverse CDF must not
        order = index.argsort(-1)
        values, index = values.gather(-1, order), index.gather(-1, order)
    kept = torch.where(values >= cutoff, torch.exp(values - m), 0.0)
    cdf = kept.to(torch.float64).cumsum(-1)
    u = reference.counter_uniform(seeds, offset, 1)
    position = torch.searchsorted(cdf, u * cdf[:, -1:]).clamp(max=values.shape[1] - 1)
    tokens = position if index is None else index.gather(-1, position)
    shifted = (z.gather(-1, tokens) - m)[:, 0]
    return (
        tokens[:, 0],
        shifted - cdf[:, -1].log().to(z.dtype),
        shifted - log_sum[:, 0],
        (_row_sums(z - m) / v - log_sum)[:, 0],  # not z.mean() - m: a common offset would cost its float spacing
    )


def _row_sums(x: torch.Tensor) -> torch.Tensor:
    """[B, 1]: each row summed alone. torch's sum over a [B, V] tensor splits a row between
    threads by the batch's shape, so its last bits (and a top-p cutoff near them) would
    depend on the other rows."""
    return torch.cat([row.sum(-1, keepdim=True) for row in x.split(1)])


def _fake(logits, temperature, top_k, top_p, seeds, offset):
    b = logits.shape[0]
    floats = [reference.empty_output(logits, (b,)) for _ in range(3)]
    return (torch.empty(b, dtype=torch.int64, device=logits.device), *floats)


define(
    "sample(Tensor logits, float temperature, int top_k, float top_p, Tensor seeds, int offset)"
    " -> (Tensor, Tensor, Tensor, Tensor)",
    _checked_op(reference.sample),
    _fake,
    triton=_checked_op(_triton_sample),
    torch_impl=_checked_op(_sample_torch),
    differentiable=False,
)


def sample(
    logits: torch.Tensor,
    temperature: float = 1.0,
    top_k: Optional[int] = None,
    top_p: Optional[float] = None,
    seeds: Optional[torch.Tensor] = None,
    offset: int = 0,
) -> Sampled:
    """Draw one token per row of logits[B, V] (see the module docstring).

    top_k: None or an int >= 1 (k >= V keeps everything); top_p: None or a float in
    (0, 1]; seeds: LongTensor[B] (None: drawn from torch's default generator);
    offset: an int >= 0, the decoding step. Returns Sampled, float32 (float64 for
    float64 logits). No gradient. The kernels scale by log2(e) / temperature in float32
    (float64 for float64 logits): a temperature that takes that scale out of the normal
    range is an error, and (where values are checked: CPU, or FASTRL_CHECK=1) so is a row
    whose largest logit leaves the range once scaled (mask tokens with -inf, not the
    dtype's lowest value).
    """
    _checks.floating("logits", logits, ndim=2)
    if logits.shape[1] == 0:
        raise ValueError("logits must have at least one column (V > 0)")
    temperature = _checks.positive("temperature", temperature)
    accumulation = check_temperature_scale(temperature, logits.dtype)
    if top_k is not None:
        if isinstance(top_k, bool) or not isinstance(top_k, int):
            raise TypeError(f"top_k must be None or an int, got {type(top_k).__name__}")
        if top_k < 1:
            raise ValueError(f"top_k must be >= 1, got {top_k}")
    if top_p is not None:
        top_p = _checks.number("top_p", top_p)
        if not 0.0 < top_p <= 1.0:
            raise ValueError(f"top_p must be in (0, 1], got {top_p}")
    if isinstance(offset, bool) or not isinstance(offset, int):
        raise TypeError(f"offset must be an int, got {type(offset).__name__}")
    if offset < 0:
        raise ValueError(f"offset must be an int >= 0, got {offset!r}")
    _checks.int64("offset", offset)
    if seeds is not None:
        _checks.tensor("seeds", seeds, ndim=1)
        if seeds.dtype != torch.int64:
            raise TypeError(f"seeds must be int64, got {seeds.dtype}")
        if seeds.shape[0] != logits.shape[0]:
            raise ValueError(f"seeds must have one seed per row ({logits.shape[0]}), got {seeds.shape[0]}")
        _checks.same_device("seeds", seeds, "logits", logits)
    row_max = _checks.finite_or_neg_inf("logits", logits)
    if row_max is not None:
        largest = row_max.abs().max()
        _checks.require(largest * LOG2E / temperature < accumulation.max,
                        f"logits / temperature leave {accumulation.dtype}'s range at temperature {temperature} (mask "
                        "tokens with -inf, not the dtype's lowest value)",
                        lambda: f": a row's largest logit is {largest.item():.4g}")
    if seeds is None:  # after every check: a call that fails leaves the global generator as it was
        seeds = torch.randint(0, 2**62, (logits.shape[0],)).to(logits.device)
    k = 0 if top_k is None else top_k  # (k >= V: the op keeps every token)
    p = 1.0 if top_p is None else top_p
    # Through the op, not the implementation: under torch.compile its fake stands in for the
    # data-dependent cutoffs of the torch path; the op's fallback picks the backend when it runs.
    return Sampled(*torch.ops.fastrl.sample(logits, temperature, k, p, seeds, offset))
