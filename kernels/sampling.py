"""Triton Q-softmax sampler (DESIGN 3.3): one program per row, one launch.

Plain sampling reads the row once: the online log-sum-exp, the mean and the
Gumbel-max draw share the pass. With top-k or top-p each cutoff is the largest
row value v with count(z >= v) >= k, resp. mass(z >= v) >= top_p of the top-k
mass, found by a SPLIT-ary search on the order-preserving integer image of the
float32 bits (SPLIT thresholds per pass over the row, about 14 passes for
SPLIT=4; no sort); every token tied at a cutoff is kept.

Arithmetic is in base 2 (z = logit * log2(e) / temperature), so each token costs
one exp2 for the log-sum-exp and two log2 for its Gumbel noise. Noise: Philox
(4x32, 10 rounds, keyed by seed and offset); token t takes output t % 4 of the
counter t // 4, so one Philox call serves four tokens and the noise of a token
does not depend on the tile size. Full tiles load without a mask.
"""
from __future__ import annotations

import functools
import os

import torch
import triton
import triton.language as tl

GOLDEN = 0x9E3779B97F4A7C15  # spreads offsets over the Philox key
LN2: tl.constexpr = tl.constexpr(0.6931471805599453)
LOG2E = 1.4426950408889634
INT_MAX: tl.constexpr = tl.constexpr(2147483647)


@triton.jit
def _key(bits):
    """float32 bits -> int32 in the floats' order (and back: the map is its own inverse)."""
    return tl.where(bits >= 0, bits, bits ^ 0x7FFFFFFF)


@triton.jit
def _to_key(x):
    return _key(x.to(tl.int32, bitcast=True)).to(tl.int64)


@triton.jit
def _to_float(key):
    return _key(key.to(tl.int32)).to(tl.float32, bitcast=True)


@triton.jit
def _reference(m):
    """A running max as the exp2 reference: 0 while everything so far is -inf."""
    return tl.where(m == float("-inf"), 0.0, m)


@triton.jit
def _best_token(best, best_tok):
    """The largest Gumbel value of the accumulators and its token (ties: the lowest)."""
    top = tl.max(best, 0)
    return top, tl.min(tl.where(best == top, best_tok, INT_MAX), 0)


@triton.jit
def _tile(logits_ptr, row, v0, V, scale, Q: tl.constexpr, MASKED: tl.constexpr):
    """Tokens v0 + 4 i + j as a [Q, 4] tile, z = logit * scale (padding: -inf), and the padding mask.
    v0 is a multiple of the tile: said, so that the loads are vectorised."""
    cols = tl.multiple_of(v0, 4 * Q) + 4 * tl.arange(0, Q)[:, None] + tl.arange(0, 4)[None, :]
    if MASKED:
        ok = cols < V
        x = tl.load(logits_ptr + row + cols, mask=ok, other=float("-inf"))
    else:
        ok = cols >= 0
        x = tl.load(logits_ptr + row + cols)
    return cols, ok, x.to(tl.float32) * scale


@triton.jit
def _flat_tile(logits_ptr, row, v0, V, scale, BLOCK_V: tl.constexpr):
    """Tokens v0 .. v0 + BLOCK_V - 1 as [1, BLOCK_V] (to broadcast over thresholds in place), z = logit * scale."""
    cols = v0 + tl.arange(0, BLOCK_V)[None, :]
    return tl.load(logits_ptr + row + cols, mask=cols < V, other=float("-inf")).to(tl.float32) * scale


@triton.jit
def _log2(x, FAST: tl.constexpr):
    """log2 by the SFU (lg2.approx, relative error ~2^-22) where compiled: tl.log2 is a
    precise software log2, over ten instructions each."""
    if FAST:
        return tl.inline_asm_elementwise("lg2.approx.f32 $0, $1;", "=f,f", [x], dtype=tl.float32, is_pure=True,
                                         pack=1)
    else:
        return tl.log2(x)


@triton.jit
def _exponential(bits, FAST: tl.constexpr):
    """E = -ln U, U = (bits + 1/2) / 2^32, also precise where U is near 1 (E small: the
    Gumbel noise -ln E large): there it works from 1 - U, exact in the integers."""
    r = bits.to(tl.int32, bitcast=True)
    upper = r < 0  # U >= 1/2
    h = (tl.where(upper, ~r, r).to(tl.float32) + 0.5) * 2.3283064365386963e-10  # U, or 1 - U where upper
    e = -_log2(tl.where(upper, 1.0 - h, h), FAST) * LN2
    series = h * (1.0 + h * (0.5 + h * (0.3333333333333333 + h * 0.25)))  # -ln(1 - h), error < h^5 / 5
    return tl.where(upper & (h < 0.03125), series, e)


@triton.jit
def _gumbel(key, v0, Q: tl.constexpr, FAST: tl.constexpr):
    """Gumbel noise / ln 2 of tokens v0 + 4 i + j, v0 a multiple of 4."""
    r0, r1, r2, r3 = tl.randint4x(key, v0 // 4 + tl.arange(0, Q))
    lane = tl.arange(0, 4)[None, :]
    bits = tl.where(lane == 0, r0[:, None],
                    tl.where(lane == 1, r1[:, None], tl.where(lane == 2, r2[:, None], r3[:, None])))
    return -_log2(_exponential(bits, FAST), FAST)


@triton.jit
def _pick(g, cols, best, best_tok):
    """The running Gumbel-max of each row of four tokens: replaced on a strictly larger value
    (ties: the lowest token)."""
    four_best = tl.max(g, 1)
    four_tok = tl.min(tl.where(g == four_best[:, None], cols, INT_MAX), 1)
    better = four_best > best
    return tl.where(better, four_best, best), tl.where(better, four_tok, best_tok)


@triton.jit
def _tile_pick(w, ref, key, v0, best, best_tok, Q: tl.constexpr, FAST: tl.constexpr):
    """TILE_DRAW: the tile's Gumbel-max score from its mass (w = exp2(z - ref); one noise per
    tile, keyed by its first token); a tile that takes the lead draws its token by inverse
    CDF over w. The lead is held in every element of best / best_tok."""
    r0, r1, _, _ = tl.randint4x(key ^ 0x5DEECE66D, v0 + tl.zeros([], tl.int32))
    mass = tl.sum(tl.sum(w, 1), 0)
    score = ref + _log2(mass, FAST) - _log2(_exponential(r0, FAST), FAST)
    if score > tl.max(best, 0):
        flat = tl.reshape(w, [4 * Q])  # token order v0 + 4 i + j
        index = tl.arange(0, 4 * Q)
        below = tl.sum((tl.cumsum(flat, 0) <= tl.uint_to_uniform_float(r1) * mass).to(tl.int32), 0)
        last = tl.max(tl.where(flat > 0, index, 0), 0)  # rounding may leave the target past the end
        best = tl.zeros_like(best) + score
        best_tok = tl.zeros_like(best_tok) + v0 + tl.minimum(below, last)
    return best, best_tok


@triton.jit
def _first_pass(logits_ptr, row, v0, V, scale, key, m, s, zsum, zmin, best, best_tok, Q: tl.constexpr,
                MASKED: tl.constexpr, FILTER: tl.constexpr, TILE_DRAW: tl.constexpr, FAST: tl.constexpr):
    """Per row of four tokens of the tile (in one thread's registers: no exchange between
    threads until the end): max, sum of exp2, sum and (FILTER) min of z; without a
    filter, the Gumbel-max draw too."""
    cols, ok, z = _tile(logits_ptr, row, v0, V, scale, Q, MASKED)
    m_new = tl.maximum(m, tl.max(z, 1))
    m_ref = _reference(m_new)
    s = s * tl.exp2(m - m_ref) + tl.sum(tl.exp2(z - m_ref[:, None]), 1)
    if MASKED:
        zsum += tl.sum(tl.where(ok, z, 0.0), 1)
    else:
        zsum += tl.sum(z, 1)
    if FILTER:
        zmin = tl.minimum(zmin, tl.min(tl.where(ok, z, float("inf")) if MASKED else z, 1))
    elif TILE_DRAW:
        ref = _reference(tl.max(m_new, 0))
        best, best_tok = _tile_pick(tl.exp2(z - ref), ref, key, v0, best, best_tok, Q, FAST)
    else:
        best, best_tok = _pick(z + _gumbel(key, v0, Q, FAST), cols, best, best_tok)
    return m_new, s, zsum, zmin, best, best_tok


@triton.jit
def _row_stats(m, s, zsum, zmin, best, best_tok):
    """The per-four accumulators (or the chunks' partials) reduced to the row's (chunk's) scalars."""
    m_row = tl.max(m, 0)
    top, token = _best_token(best, best_tok)
    return m_row, tl.sum(s * tl.exp2(m - _reference(m_row)), 0), tl.sum(zsum, 0), tl.min(zmin, 0), top, token


@triton.jit
def _draw_pass(logits_ptr, row, v0, V, scale, key, m, cutoff, s_kept, best, best_tok,
               Q: tl.constexpr, MASKED: tl.constexpr, TILE_DRAW: tl.constexpr, FAST: tl.constexpr):
    """Gumbel-max over the kept tokens (z >= cutoff), and their mass (per row of four)."""
    cols, ok, z = _tile(logits_ptr, row, v0, V, scale, Q, MASKED)
    inside = z >= cutoff
    w = tl.where(inside, tl.exp2(z - m), 0.0)
    s_kept += tl.sum(w, 1)
    if TILE_DRAW:
        best, best_tok = _tile_pick(w, m, key, v0, best, best_tok, Q, FAST)
    else:
        best, best_tok = _pick(tl.where(inside, z + _gumbel(key, v0, Q, FAST), float("-inf")), cols, best,
                               best_tok)
    return s_kept, best, best_tok


@triton.jit
def _search(logits_ptr, row, V, scale, lo, hi, floor, target, m, COUNT: tl.constexpr,
            BLOCK_V: tl.constexpr, SPLIT: tl.constexpr):
    """The largest key in [lo, hi) whose float t has count (COUNT) or exp2-mass of
    {z >= max(t, floor)} >= target; lo must qualify. Each pass over the row tries SPLIT
    thresholds and keeps the sub-interval between the last that qualifies and the next."""
    j = tl.arange(0, SPLIT)
    while hi - lo > 1:
        keys = lo + ((hi - lo) * (j + 1)) // (SPLIT + 1)  # increasing, in (lo, hi) once hi - lo > SPLIT
        t = _to_float(keys)
        totals = tl.zeros([SPLIT, BLOCK_V], tl.float32)  # per thread: summed across threads once a pass
        for v0 in range(0, V, BLOCK_V):
            z = _flat_tile(logits_ptr, row, v0, V, scale, BLOCK_V)
            z = tl.where(z >= floor, z, float("-inf"))
            inside = z >= t[:, None]
            if COUNT:
                totals += inside.to(tl.float32)
            else:
                totals += tl.where(inside, tl.exp2(z - m), 0.0)
        qualifying = tl.sum((tl.sum(totals, 1) >= target).to(tl.int32), 0)  # a prefix of the thresholds
        lo = tl.where(qualifying > 0, tl.sum(tl.where(j == qualifying - 1, keys, 0), 0), lo)
        hi = tl.where(qualifying < SPLIT, tl.sum(tl.where(j == qualifying, keys, 0), 0), hi)
    return _to_float(lo)


@triton.jit
def _combine(partial_ptr, count_ptr, b, chunks, MAX_CHUNKS: tl.constexpr):
    """The row's max, sum of exp2, sum and Gumbel-max token from its chunks' partials;
    the row's counter goes back to 0 for the next call."""
    index = tl.arange(0, MAX_CHUNKS)
    valid = index < chunks
    slots = partial_ptr + (b * chunks + index) * 5
    ms = tl.load(slots, mask=valid, other=float("-inf"), cache_modifier=".cg")
    ss = tl.load(slots + 1, mask=valid, other=0.0, cache_modifier=".cg")
    zsums = tl.load(slots + 2, mask=valid, other=0.0, cache_modifier=".cg")
    bests = tl.load(slots + 3, mask=valid, other=float("-inf"), cache_modifier=".cg")
    toks = tl.load(slots + 4, mask=valid, other=0.0, cache_modifier=".cg").to(tl.int32, bitcast=True)
    tl.store(count_ptr + b, 0)
    m, s, zsum, _, _, token = _row_stats(ms, ss, zsums, ms, bests, toks)  # no min of z for plain sampling
    return m, s, zsum, token


@triton.jit
def _finish(logits_ptr, row, b, scale, lse, lse_kept, zsum, best_tok, V, tokens_ptr, logprob_ptr, policy_ptr,
            mean_ptr):
    z_tok = tl.load(logits_ptr + row + best_tok).to(tl.float32) * scale
    tl.store(tokens_ptr + b, best_tok.to(tl.int64))
    tl.store(logprob_ptr + b, (z_tok - lse_kept) * LN2)
    tl.store(policy_ptr + b, (z_tok - lse) * LN2)
    tl.store(mean_ptr + b, (zsum / V - lse) * LN2)


@triton.jit(do_not_specialize=["shift", "chunk_tiles", "chunks"])
def _sample_kernel(
    logits_ptr, stride_b, seeds_ptr, shift, scale, top_k, top_p,
    tokens_ptr, logprob_ptr, policy_ptr, mean_ptr, partial_ptr, count_ptr, V, chunk_tiles, chunks,
    FILTER: tl.constexpr, TOP_K: tl.constexpr, TOP_P: tl.constexpr, BLOCK_V: tl.constexpr,
    SPLIT: tl.constexpr, TILE_DRAW: tl.constexpr, SPLIT_ROW: tl.constexpr, MAX_CHUNKS: tl.constexpr,
    FAST: tl.constexpr,
):
    """Program (b, c) reads tiles [c * chunk_tiles, (c + 1) * chunk_tiles) of row b (SPLIT_ROW:
    plain sampling only; the last of a row's programs to finish combines their partials)."""
    Q: tl.constexpr = BLOCK_V // 4
    b = tl.program_id(0)
    row = b.to(tl.int64) * stride_b
    key = tl.load(seeds_ptr + b) + shift
    start = tl.program_id(1) * chunk_tiles * BLOCK_V  # a multiple of BLOCK_V, as the compiler sees
    stop = tl.minimum(start + chunk_tiles * BLOCK_V, V)
    full = stop - (stop - start) % BLOCK_V  # only the row's end is ragged
    m = tl.full([Q], float("-inf"), tl.float32)
    s = tl.zeros([Q], tl.float32)
    zsum = tl.zeros([Q], tl.float32)
    zmin = tl.full([Q], float("inf"), tl.float32)
    best = tl.full([Q], float("-inf"), tl.float32)
    best_tok = tl.zeros([Q], tl.int32)
    for v0 in range(start, full, BLOCK_V):
        m, s, zsum, zmin, best, best_tok = _first_pass(logits_ptr, row, v0, V, scale, key, m, s, zsum, zmin, best,
                                                       best_tok, Q, False, FILTER, TILE_DRAW, FAST)
    if full < stop:
        m, s, zsum, zmin, best, best_tok = _first_pass(logits_ptr, row, full, V, scale, key, m, s, zsum, zmin, best,
                                                       best_tok, Q, True, FILTER, TILE_DRAW, FAST)
    m, s, zsum, zmin, best, best_tok = _row_stats(m, s, zsum, zmin, best, best_tok)
    if SPLIT_ROW:
        slot = partial_ptr + (b * chunks + tl.program_id(1)) * 5
        tl.store(slot, m)
        tl.store(slot + 1, s)
        tl.store(slot + 2, zsum)
        tl.store(slot + 3, best)
        tl.store(slot + 4, best_tok.to(tl.float32, bitcast=True))
        tl.debug_barrier()  # the partials are written before the count (a release, at GPU scope)
        if tl.atomic_add(count_ptr + b, 1) == chunks - 1:  # acq_rel: every partial of the row is visible
            tl.debug_barrier()
            m, s, zsum, best_tok = _combine(partial_ptr, count_ptr, b, chunks, MAX_CHUNKS)
            lse = m + tl.log2(s)
            _finish(logits_ptr, row, b, scale, lse, lse, zsum, best_tok, V, tokens_ptr, logprob_ptr, policy_ptr,
                    mean_ptr)
    else:
        lse = m + tl.log2(s)
        if FILTER:
            lo = _to_key(zmin)
            hi = _to_key(m) + 1
            cutoff = zmin
            kept = s
            if TOP_K:
                cutoff = _search(logits_ptr, row, V, scale, lo, hi, zmin, top_k * 1.0, m, True, BLOCK_V, SPLIT)
            if TOP_P:
                if TOP_K:
                    kept_per_thread = tl.zeros([1, BLOCK_V], tl.float32)
                    for v0 in range(0, V, BLOCK_V):
                        z = _flat_tile(logits_ptr, row, v0, V, scale, BLOCK_V)
                        kept_per_thread += tl.where(z >= cutoff, tl.exp2(z - m), 0.0)
                    kept = tl.sum(tl.sum(kept_per_thread, 1), 0)
                lo = _to_key(cutoff)
                cutoff = _search(logits_ptr, row, V, scale, lo, hi, cutoff, top_p * kept, m, False, BLOCK_V, SPLIT)
            s_kept = tl.zeros([Q], tl.float32)
            best = tl.full([Q], float("-inf"), tl.float32)
            best_tok = tl.zeros([Q], tl.int32)
            for v0 in range(0, full, BLOCK_V):
                s_kept, best, best_tok = _draw_pass(logits_ptr, row, v0, V, scale, key, m, cutoff, s_kept, best,
                                                    best_tok, Q, False, TILE_DRAW, FAST)
            if full < V:
                s_kept, best, best_tok = _draw_pass(logits_ptr, row, full, V, scale, key, m, cutoff, s_kept, best,
                                                    best_tok, Q, True, TILE_DRAW, FAST)
            _, best_tok = _best_token(best, best_tok)
            lse_kept = m + tl.log2(tl.sum(s_kept, 0))
        else:
            lse_kept = lse
        _finish(logits_ptr, row, b, scale, lse, lse_kept, zsum, best_tok, V, tokens_ptr, logprob_ptr, policy_ptr,
                mean_ptr)


MAX_CHUNKS = 64
PROGRAMS_PER_SM = 4  # plain sampling splits rows until about this many programs per SM
_COUNTERS: dict = {}  # (device, stream) -> int32 per row, left at 0 by every call


def _counters(device, rows):
    stream = torch.cuda.current_stream(device).cuda_stream if device.type == "cuda" else 0
    counters = _COUNTERS.get((device, stream))
    if counters is None or counters.numel() < rows:
        counters = _COUNTERS[(device, stream)] = torch.zeros(max(rows, 1024), dtype=torch.int32, device=device)
    return counters


@functools.lru_cache(maxsize=None)
def _multiprocessors(device):
    return torch.cuda.get_device_properties(device).multi_processor_count


def sample(logits, temperature, top_k, top_p, seeds, offset, block_v=None, num_warps=None, split=4,
           chunks=None, tile_draw=False):
    """(tokens, logprob, policy_logprob, mean_logp) for logits[B, V] (bf16/fp16/fp32).

    Tuning knobs (the tokens drawn do not depend on them): block_v (tokens per tile, a
    power of 2 >= 4), num_warps, split (thresholds per search pass, a power of 2) and
    chunks (programs per row for plain sampling, at most 64; default: enough for about
    PROGRAMS_PER_SM programs per SM). tile_draw (benchmark only): the same distribution
    from one noise per tile (a Gumbel-max over the tiles' masses, then inverse CDF inside
    the winning tile) instead of one per token; its tokens depend on block_v, and DESIGN
    3.3 asks for per-token noise, so the op does not use it."""
    b, v = logits.shape
    device = logits.device
    logits = logits if logits.stride(1) == 1 else logits.contiguous()
    tokens = torch.empty(b, dtype=torch.int64, device=device)
    logprob, policy, mean = (torch.empty(b, dtype=torch.float32, device=device) for _ in range(3))
    if b == 0:
        return tokens, logprob, policy, mean
    interpreted = os.environ.get("TRITON_INTERPRET") == "1"
    if block_v is None:
        block_v = 64 if interpreted else min(4096, max(16, triton.next_power_of_2(v)))
    filtered = top_k > 0 or top_p < 1.0
    tiles = triton.cdiv(v, block_v)
    if filtered:
        chunks = 1
    elif chunks is None:
        chunks = 1 if interpreted else triton.cdiv(PROGRAMS_PER_SM * _multiprocessors(device), b)
    chunk_tiles = triton.cdiv(tiles, max(1, min(chunks, tiles, MAX_CHUNKS)))
    chunks = triton.cdiv(tiles, chunk_tiles)  # no empty chunk
    partials = torch.empty(b * chunks * 5 if chunks > 1 else 1, dtype=torch.float32, device=device)
    shift = (offset * GOLDEN + 2**63) % 2**64 - 2**63  # wrapped to int64, as the kernel's addition wraps
    _sample_kernel[(b, chunks)](
        logits, logits.stride(0), seeds, shift, LOG2E / temperature, top_k, top_p,
        tokens, logprob, policy, mean, partials, _counters(device, b), v, chunk_tiles, chunks,
        FILTER=filtered, TOP_K=top_k > 0, TOP_P=top_p < 1.0, BLOCK_V=block_v, SPLIT=split,
        TILE_DRAW=tile_draw, SPLIT_ROW=chunks > 1, MAX_CHUNKS=MAX_CHUNKS, FAST=not interpreted,
        num_warps=num_warps or (1 if interpreted else 8),
    )
    return tokens, logprob, policy, mean
