"""Triton Q-softmax sampler (DESIGN 3.3): one program per row, one launch.

Plain sampling reads the row once: the online log-sum-exp, the mean and the
Gumbel-max draw share the pass. With top-k or top-p each cutoff is the largest
row value v with count(z >= v) >= k, resp. mass(z >= v) >= top_p of the top-k
mass, found by bisection on the order-preserving integer image of the float32
bits (32 passes over the row, no sort); every token tied at a cutoff is kept.
Noise: tl.rand (Philox) keyed by seed and offset, counter = token.
"""
from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

GOLDEN = 0x9E3779B97F4A7C15  # spreads offsets over the Philox key


@triton.jit
def _key(bits):
    """float32 bits -> int32 in the floats' order (and back: the map is its own inverse)."""
    return tl.where(bits >= 0, bits, bits ^ 0x7FFFFFFF)


@triton.jit
def _tile(logits_ptr, row, v0, V, inv_temperature, BLOCK_V: tl.constexpr):
    cols = v0 + tl.arange(0, BLOCK_V)
    ok = cols < V
    x = tl.load(logits_ptr + row + cols, mask=ok, other=float("-inf")).to(tl.float32)
    return cols, ok, tl.where(ok, x * inv_temperature, float("-inf"))


@triton.jit
def _bisect(logits_ptr, row, V, inv_temperature, lo, hi, floor, target, m, COUNT: tl.constexpr,
            BLOCK_V: tl.constexpr):
    """The largest key in [lo, hi) whose float t has count (COUNT) or exp-mass of
    {z >= max(t, floor)} >= target; lo must qualify."""
    for _ in range(33):
        mid = lo + (hi - lo) // 2
        t = _key(mid.to(tl.int32)).to(tl.float32, bitcast=True)
        total = tl.zeros([], tl.float32)
        for v0 in range(0, V, BLOCK_V):
            cols, ok, z = _tile(logits_ptr, row, v0, V, inv_temperature, BLOCK_V)
            inside = (z >= t) & (z >= floor)
            if COUNT:
                total += tl.sum(inside.to(tl.float32))
            else:
                total += tl.sum(tl.where(inside, tl.exp(z - m), 0.0))
        good = total >= target
        lo = tl.where(good, mid, lo)
        hi = tl.where(good, hi, mid)
    return _key(lo.to(tl.int32)).to(tl.float32, bitcast=True)


@triton.jit
def _sample_kernel(
    logits_ptr, stride_b, keys_ptr, scale_ptr, top_k, top_p,
    tokens_ptr, logprob_ptr, policy_ptr, mean_ptr, V,
    FILTER: tl.constexpr, TOP_K: tl.constexpr, TOP_P: tl.constexpr, BLOCK_V: tl.constexpr,
):
    b = tl.program_id(0)
    row = b.to(tl.int64) * stride_b
    key = tl.load(keys_ptr + b)
    inv_temperature = tl.load(scale_ptr)
    # pass 1: max, sum of exp, sum, min; and the draw itself when nothing is filtered
    m = tl.full([], float("-inf"), tl.float32)
    s = tl.zeros([], tl.float32)
    zsum = tl.zeros([], tl.float32)
    zmin = tl.full([], float("inf"), tl.float32)
    best = tl.full([], float("-inf"), tl.float32)
    best_tok = tl.zeros([], tl.int32)
    for v0 in range(0, V, BLOCK_V):
        cols, ok, z = _tile(logits_ptr, row, v0, V, inv_temperature, BLOCK_V)
        m_new = tl.maximum(m, tl.max(z, 0))
        s = s * tl.exp(m - m_new) + tl.sum(tl.exp(z - m_new), 0)
        m = m_new
        zsum += tl.sum(tl.where(ok, z, 0.0), 0)
        zmin = tl.minimum(zmin, tl.min(tl.where(ok, z, float("inf")), 0))
        if not FILTER:
            g = z - tl.log(-tl.log(tl.rand(key, cols)))
            tile_best = tl.max(g, 0)
            tile_tok = tl.argmax(g, 0) + v0
            best_tok = tl.where(tile_best > best, tile_tok, best_tok)
            best = tl.maximum(best, tile_best)
    lse = m + tl.log(s)
    if FILTER:
        lo = _key(zmin.to(tl.int32, bitcast=True)).to(tl.int64)
        hi = _key(m.to(tl.int32, bitcast=True)).to(tl.int64) + 1
        cutoff = zmin
        if TOP_K:
            cutoff = _bisect(logits_ptr, row, V, inv_temperature, lo, hi, zmin, top_k * 1.0, m,
                             True, BLOCK_V)
        if TOP_P:
            kept = tl.zeros([], tl.float32)
            for v0 in range(0, V, BLOCK_V):
                cols, ok, z = _tile(logits_ptr, row, v0, V, inv_temperature, BLOCK_V)
                kept += tl.sum(tl.where(z >= cutoff, tl.exp(z - m), 0.0))
            lo = _key(cutoff.to(tl.int32, bitcast=True)).to(tl.int64)
            cutoff = _bisect(logits_ptr, row, V, inv_temperature, lo, hi, cutoff, top_p * kept, m,
                             False, BLOCK_V)
        # the draw over the kept tokens, and their mass
        s_kept = tl.zeros([], tl.float32)
        for v0 in range(0, V, BLOCK_V):
            cols, ok, z = _tile(logits_ptr, row, v0, V, inv_temperature, BLOCK_V)
            inside = z >= cutoff
            s_kept += tl.sum(tl.where(inside, tl.exp(z - m), 0.0))
            g = tl.where(inside, z - tl.log(-tl.log(tl.rand(key, cols))), float("-inf"))
            tile_best = tl.max(g, 0)
            tile_tok = tl.argmax(g, 0) + v0
            best_tok = tl.where(tile_best > best, tile_tok, best_tok)
            best = tl.maximum(best, tile_best)
        lse_kept = m + tl.log(s_kept)
    else:
        lse_kept = lse
    z_tok = tl.load(logits_ptr + row + best_tok).to(tl.float32) * inv_temperature
    tl.store(tokens_ptr + b, best_tok.to(tl.int64))
    tl.store(logprob_ptr + b, z_tok - lse_kept)
    tl.store(policy_ptr + b, z_tok - lse)
    tl.store(mean_ptr + b, zsum / V - lse)


def sample(logits, temperature, top_k, top_p, seeds, offset):
    """(tokens, logprob, policy_logprob, mean_logp) for logits[B, V] (bf16/fp16/fp32)."""
    b, v = logits.shape
    logits = logits if logits.stride(1) == 1 else logits.contiguous()
    tokens = torch.empty(b, dtype=torch.int64, device=logits.device)
    logprob, policy, mean = (torch.empty(b, dtype=torch.float32, device=logits.device) for _ in range(3))
    if b == 0:
        return tokens, logprob, policy, mean
    interpreted = os.environ.get("TRITON_INTERPRET") == "1"
    shift = (offset * GOLDEN + 2**63) % 2**64 - 2**63  # wrapped to int64, as the addition below wraps
    _sample_kernel[(b,)](
        logits, logits.stride(0), seeds + shift,
        torch.full((1,), 1.0 / temperature, dtype=torch.float32, device=logits.device),
        top_k, top_p, tokens, logprob, policy, mean, v,
        FILTER=top_k > 0 or top_p < 1.0, TOP_K=top_k > 0, TOP_P=top_p < 1.0,
        BLOCK_V=64 if interpreted else min(4096, triton.next_power_of_2(v)),
        num_warps=1 if interpreted else 8,
    )
    return tokens, logprob, policy, mean
