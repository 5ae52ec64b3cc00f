"""Triton Q-softmax sampler (DESIGN 3.3): one launch, plain sampling reads each row once.

The draw is Gumbel-max in two levels, which is exact: the row is cut into groups of
tokens; a Gumbel-max over the groups' log-masses picks a group with probability
mass(group) / mass(row), then a Gumbel-max over that group's tokens picks one with
probability p / mass(group). A group is what one thread reads of a span (4 * ROWS * RUN
tokens): four runs of RUN consecutive tokens (16 bytes of logits, one load: 8 bf16 or
fp16, 4 fp32), ROWS * RUN tokens apart; group g holds tokens span(g // ROWS) +
RUN * (ROWS * l + g % ROWS) + j for l < 4, j < RUN. The pass over the row thus costs one
exp2 per token for the log-sum-exp, and the noise (two log2, and a quarter of a Philox
counter) once per group of 32 bf16 tokens, with no exchange between threads; only the
drawn group is read again. Noise: Philox (4x32, 10 rounds) keyed by seed and offset, one
stream for groups (group g of span q, g = q * ROWS + r: output q % 4 of counter
(q // 4) * ROWS + r, so the thread that holds group r of four spans runs Philox once for
them) and one for tokens (token t: output t % 4 of counter t // 4). The layout is fixed
in tokens, so no tuning knob (warps, programs per row, pipeline stages, search tile and
arity) and no other row changes a token.

With top-k or top-p each cutoff is the largest row value v with count(z >= v) >= k,
resp. mass(z >= v) >= top_p of the top-k mass, found by a SPLIT-ary search on the
order-preserving integer image of the float32 bits (SPLIT thresholds per pass over
the row, about 14 passes for SPLIT=4; no sort); every token tied at a cutoff is kept,
and the two-level draw runs over the kept tokens.

Arithmetic is in base 2 (z = logit * log2(e) / temperature). Full spans load without
a mask, STAGES - 1 of them in flight while one is reduced (Triton's pipelining), bf16
as 32-bit pairs where rows allow it (_span).
"""
from __future__ import annotations

import functools
import os

import torch
import triton
import triton.language as tl

GOLDEN = 0x9E3779B97F4A7C15  # spreads offsets over the Philox key
GROUP_STREAM: tl.constexpr = tl.constexpr(0x5DEECE66D)  # the groups' Philox key: key ^ GROUP_STREAM
LN2: tl.constexpr = tl.constexpr(0.6931471805599453)
LOG2E = 1.4426950408889634
ROWS: tl.constexpr = tl.constexpr(256)  # groups per span
INT_MAX: tl.constexpr = tl.constexpr(2147483647)
NEG_INF_PAIR: tl.constexpr = tl.constexpr(-8323200)  # 0xFF80FF80: two bf16 -inf as one int32


def _as_words(logits):
    """Whether the plain pass reads bf16 logits as 32-bit pairs (_span's WORDS)."""
    return (logits.dtype == torch.bfloat16 and logits.shape[1] % 2 == 0 and logits.stride(0) % 2 == 0
            and logits.data_ptr() % 4 == 0)


def run_size(dtype):
    """Tokens per run: 16 bytes, one load by one thread."""
    return 16 // dtype.itemsize


def span(dtype):
    """Tokens per span, the tile of the passes that draw: ROWS groups of four runs."""
    return 4 * ROWS.value * run_size(dtype)


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
def _wins(best, index, other_best, other_index):
    """Whether (other_best, other_index) wins an argmax: larger, ties to the lower index."""
    return (other_best > best) | ((other_best == best) & (other_index < index))


@triton.jit
def _argmax_combine(best, index, z, other_best, other_index, other_z):
    """tl.reduce's combine for an argmax carrying a value (z) along with its index."""
    wins = _wins(best, index, other_best, other_index)
    return tl.where(wins, other_best, best), tl.where(wins, other_index, index), tl.where(wins, other_z, z)


@triton.jit
def _best_token(best, best_tok, z, FUSED: tl.constexpr):
    """The largest Gumbel value over all axes, its token or group (ties: the lowest) and its z.
    FUSED: in one reduction (one exchange between warps, not three); else in three, which
    Triton's interpreter runs far faster (it runs a custom reduction element by element)."""
    if FUSED:
        top, index, z_top = tl.reduce((_flat(best), _flat(best_tok), _flat(z)), 0, _argmax_combine)
    else:
        top = tl.max(best, None)
        index = tl.min(tl.where(best == top, best_tok, INT_MAX), None)
        z_top = tl.max(tl.where(best_tok == index, z, float("-inf")), None)
    return top, index, z_top


@triton.jit
def _flat(x):
    """x as one axis, in any order (Triton's interpreter reduces several tensors over all
    axes wrongly: it flattens only the first)."""
    return tl.reshape(x, [x.numel], can_reorder=True)


@triton.jit
def _runs(v0, i, RUN: tl.constexpr):
    """Runs i of the span at v0 as [len(i), RUN] tokens: run i holds v0 + RUN * i + j, j < RUN;
    run ROWS * l + r is run l of group r."""
    return v0 + i[:, None] * RUN + tl.arange(0, RUN)[None, :]


@triton.jit
def _groups(x, RUN: tl.constexpr):
    """[4 * ROWS, RUN // 2] -> [4, ROWS, RUN // 2]: element (l, r, j) of run l of group r."""
    return tl.reshape(x, [4, ROWS, RUN // 2])


@triton.jit
def _span(logits_ptr, row, v0, V, RUN: tl.constexpr, MASKED: tl.constexpr, WORDS: tl.constexpr = False):
    """The logits of the span at v0 in float32 as two halves [4, ROWS, RUN // 2], each run's
    even and odd tokens (element (l, r, j): token 2j or 2j + 1 of run l of group r; MASKED:
    padding -inf), and where they are < V. Loaded as [4 * ROWS, RUN], whose only contiguous
    axis is the run's, so every Triton version gives each thread whole runs and one thread
    a group's four (a [4, ROWS, RUN] load leaves the order of the two strided axes to the
    version: Triton 3.6 spread each group over four threads). WORDS (bf16, V even, rows
    4-byte aligned): read as 32-bit pairs, a token's float32 is then one instruction (its
    half shifted up, or the word's top half) where converting the top half of a pair takes
    two; the halves keep the groups' sums in the same order either way."""
    cols = _runs(tl.multiple_of(v0, 4 * ROWS * RUN), tl.arange(0, 4 * ROWS), RUN)
    if WORDS:
        words = _runs(tl.multiple_of(v0 // 2, 2 * ROWS * RUN), tl.arange(0, 4 * ROWS), RUN // 2)
        pairs = (logits_ptr + row).to(tl.pointer_type(tl.int32)) + words
        if MASKED:
            w = tl.load(pairs, mask=2 * words < V, other=NEG_INF_PAIR)
        else:
            w = tl.load(pairs)
        even = (w << 16).to(tl.float32, bitcast=True)
        odd = (w & -65536).to(tl.float32, bitcast=True)
    else:
        if MASKED:
            x = tl.load(logits_ptr + row + cols, mask=cols < V, other=float("-inf"))
        else:
            x = tl.load(logits_ptr + row + cols)
        even, odd = tl.split(tl.reshape(x.to(tl.float32), [4 * ROWS, RUN // 2, 2]))
    ok_even, ok_odd = tl.split(tl.reshape(cols < V, [4 * ROWS, RUN // 2, 2]))
    return _groups(even, RUN), _groups(odd, RUN), _groups(ok_even, RUN), _groups(ok_odd, RUN)


@triton.jit
def _flat_tile(logits_ptr, row, v0, V, BLOCK_V: tl.constexpr):
    """The logits of tokens v0 .. v0 + BLOCK_V - 1 in float32 as [1, BLOCK_V] (to broadcast over
    thresholds in place)."""
    cols = v0 + tl.arange(0, BLOCK_V)[None, :]
    return tl.load(logits_ptr + row + cols, mask=cols < V, other=float("-inf")).to(tl.float32)


@triton.jit
def _over(x, scale, reference):
    """x * scale - reference rounded once (an FMA): the GPU's compiler contracts that
    expression into one wherever it is written, so it is written so everywhere, and the
    interpreter computes what the GPU does. Every exp2 argument and log-probability is taken
    this way: at a low temperature x * scale alone rounds by more than 1 (spacing 4 at
    3.6e7), which the contracted sums keep and a separately rounded z - m would not."""
    return tl.fma(x, scale, -reference)


@triton.jit
def _log2(x, FAST: tl.constexpr):
    """log2 by the SFU (lg2.approx.ftz: relative error ~2^-22, log2(0) = -inf, subnormals as 0) where compiled:
    tl.log2 is a precise software log2, over ten instructions each."""
    if FAST:
        return tl.inline_asm_elementwise("lg2.approx.ftz.f32 $0, $1;", "=f,f", [x], dtype=tl.float32, is_pure=True,
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
def _gumbel(bits, FAST: tl.constexpr):
    """Gumbel noise / ln 2 from 32 random bits."""
    return -_log2(_exponential(bits, FAST), FAST)


@triton.jit
def _group_sum(even, odd):
    """Two halves [4, ROWS, RUN // 2] (_span's) -> [ROWS]: over each group's tokens, inside a thread."""
    return tl.sum(tl.sum(even, 2), 0) + tl.sum(tl.sum(odd, 2), 0)


@triton.jit
def _group_max(even, odd):
    return tl.maximum(tl.max(tl.max(even, 2), 0), tl.max(tl.max(odd, 2), 0))


@triton.jit
def _group_min(even, odd):
    return tl.minimum(tl.min(tl.min(even, 2), 0), tl.min(tl.min(odd, 2), 0))


@triton.jit
def _group_noise(key, v0, RUN: tl.constexpr):
    """Noise bits for group r of the four spans 4 * (q // 4) + k, k < 4, q the span at v0:
    output k of Philox counter (q // 4) * ROWS + r. One thread holds group r of each, so it
    runs Philox once per four of its groups (_span_bits picks the span's output)."""
    return tl.randint4x(key ^ GROUP_STREAM, tl.arange(0, ROWS) + (v0 // (16 * ROWS * RUN)) * ROWS)


@triton.jit
def _span_bits(v0, n0, n1, n2, n3, RUN: tl.constexpr):
    """The span at v0's output of _group_noise."""
    k = (v0 // (4 * ROWS * RUN)) % 4
    return tl.where(k == 0, n0, tl.where(k == 1, n1, tl.where(k == 2, n2, n3)))


@triton.jit
def _group_pick(log_mass, shift, v0, bits, best, best_group, RUN: tl.constexpr, FAST: tl.constexpr):
    """The running Gumbel-max over the groups of the span at v0, log_mass[r] the log2 mass of
    group g = v0 / (4 RUN) + r over 2^(the slot's reference), bits its noise (_span_bits);
    replaced on a strictly larger value (ties, which need equal float keys: the first seen).
    Values are relative to the slot's reference (shift: its old one minus its new one, for
    best): z ~ 3.6e7 (logit 25 at temperature 1e-6) is 4 float32 spacings from the next
    float, so z + noise rounds the noise away and tokens tied there would go to the first."""
    g = log_mass + _gumbel(bits, FAST)
    best = best + shift
    better = g > best
    return tl.where(better, g, best), tl.where(better, tl.arange(0, ROWS) + v0 // (4 * RUN), best_group)


@triton.jit
def _first_pass(x, odd, ok, ok_odd, v0, scale, bits, m, s, zsum, zmin, best, best_group, MASKED: tl.constexpr,
                FILTER: tl.constexpr, RUN: tl.constexpr, FAST: tl.constexpr):
    """Per group (no exchange between threads until the end): max, sum of exp2, sum of the
    logits (scaled at the end) and (FILTER) min of z; without a filter, the groups'
    Gumbel-max too. Maxima and minima are taken before scaling (scale > 0: the same
    floats), so each token costs one FFMA, not a multiply and an add. x, odd: the span at v0
    in float32 (_span's halves); ok, ok_odd: where their tokens are < V (MASKED)."""
    m_new = tl.maximum(m, _group_max(x, odd) * scale)
    m_old, m_ref = _reference(m), _reference(m_new)
    r = m_ref[None, :, None]
    mass = _group_sum(tl.exp2(_over(x, scale, r)), tl.exp2(_over(odd, scale, r)))  # each group's, over 2^m_ref
    s = s * tl.exp2(m - m_ref) + mass
    if MASKED:
        zsum += _group_sum(tl.where(ok, x, 0.0), tl.where(ok_odd, odd, 0.0))
    else:
        zsum += _group_sum(x, odd)
    if FILTER:
        if MASKED:
            x, odd = tl.where(ok, x, float("inf")), tl.where(ok_odd, odd, float("inf"))
        zmin = tl.minimum(zmin, _group_min(x, odd) * scale)
    else:
        best, best_group = _group_pick(_log2(mass, FAST), m_old - m_ref, v0, bits, best, best_group, RUN, FAST)
    return m_new, s, zsum, zmin, best, best_group


@triton.jit
def _stats_combine(m, s, zsum, best, index, other_m, other_s, other_zsum, other_best, other_index):
    """tl.reduce's combine for the accumulators of two slots (or chunks): s and best are over
    (relative to) 2^_reference(m)."""
    m_new = tl.maximum(m, other_m)
    m_ref = _reference(m_new)
    best, other_best = best + (_reference(m) - m_ref), other_best + (_reference(other_m) - m_ref)
    wins = _wins(best, index, other_best, other_index)
    return (m_new, s * tl.exp2(m - m_ref) + other_s * tl.exp2(other_m - m_ref), zsum + other_zsum,
            tl.where(wins, other_best, best), tl.where(wins, other_index, index))


@triton.jit
def _row_stats(m, s, zsum, zmin, best, best_group, FILTER: tl.constexpr, FUSED: tl.constexpr):
    """The slots' accumulators (or the chunks' partials) reduced to the row's (chunk's) scalars:
    max, sum of exp2 over 2^_reference(max), sum, min (FILTER) and the Gumbel-max (relative
    to _reference(max), as each slot's to its own). FUSED: in
    one reduction, so the row's end waits on one exchange between warps, not six (else as
    _best_token's)."""
    if FUSED:
        m, s, zsum, top, group = tl.reduce((m, s, zsum, best, best_group), 0, _stats_combine)
    else:
        m_row = tl.max(m, None)
        ref = _reference(m_row)
        s = tl.sum(s * tl.exp2(m - ref), None)
        best = best + (_reference(m) - ref)
        m, zsum = m_row, tl.sum(zsum, None)
        top, group, _ = _best_token(best, best_group, best, False)
    return m, s, zsum, tl.min(zmin, None) if FILTER else zmin, top, group


@triton.jit
def _draw_pass(logits_ptr, row, v0, V, scale, bits, m, cutoff, s_kept, best, best_group,
               RUN: tl.constexpr, FAST: tl.constexpr):
    """The groups' Gumbel-max over their kept mass (z >= cutoff; relative to the row's max m), and
    that mass (per group)."""
    x, odd, _, _ = _span(logits_ptr, row, v0, V, RUN, True)
    z, z_odd = x * scale, odd * scale  # as the search passes compute it: the cutoff compares the same floats
    mass = _group_sum(tl.where(z >= cutoff, tl.exp2(_over(x, scale, m)), 0.0),
                      tl.where(z_odd >= cutoff, tl.exp2(_over(odd, scale, m)), 0.0))
    best, best_group = _group_pick(_log2(mass, FAST), 0.0, v0, bits, best, best_group, RUN, FAST)
    return s_kept + mass, best, best_group


@triton.jit
def _resolve(logits_ptr, row, group, V, scale, key, cutoff, RUN: tl.constexpr, FAST: tl.constexpr,
             FUSED: tl.constexpr):
    """The token of the drawn group (Gumbel-max over its kept tokens, with the tokens' noise:
    token t takes output t % 4 of counter t // 4, added to z less the group's max, as in
    _group_pick) and its logit (float32)."""
    cols = _runs((group // ROWS) * (4 * ROWS * RUN), tl.arange(0, 4) * ROWS + group % ROWS, RUN)
    x = tl.load(logits_ptr + row + cols, mask=cols < V, other=float("-inf")).to(tl.float32)
    z = x * scale
    r0, r1, r2, r3 = tl.randint4x(key, cols // 4)
    lane = cols % 4
    bits = tl.where(lane == 0, r0, tl.where(lane == 1, r1, tl.where(lane == 2, r2, r3)))
    g = tl.where(z >= cutoff, _over(x, scale, _reference(tl.max(z, None))) + _gumbel(bits, FAST), float("-inf"))
    _, token, x_token = _best_token(g, cols, x, FUSED)
    return token, x_token


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
            x = _flat_tile(logits_ptr, row, v0, V, BLOCK_V)
            z = x * scale
            inside = (z >= floor) & (z >= t[:, None])
            if COUNT:
                totals += inside.to(tl.float32)
            else:
                totals += tl.where(inside, tl.exp2(_over(x, scale, m)), 0.0)
        qualifying = tl.sum((tl.sum(totals, 1) >= target).to(tl.int32), 0)  # a prefix of the thresholds
        lo = tl.where(qualifying > 0, tl.sum(tl.where(j == qualifying - 1, keys, 0), 0), lo)
        hi = tl.where(qualifying < SPLIT, tl.sum(tl.where(j == qualifying, keys, 0), 0), hi)
    return _to_float(lo)


# per chunk: max, sum of exp2, its logits' sum / V, its draw's Gumbel value, token, logit
PARTIALS: tl.constexpr = tl.constexpr(6)


@triton.jit
def _combine(partial_ptr, count_ptr, b, chunks, MAX_CHUNKS: tl.constexpr, FUSED: tl.constexpr):
    """The row's max, sum of exp2 and mean logit, and the token drawn with its logit (the draw of the chunk whose
    group won, each chunk's resolved before it counted itself done, so none of it waits
    on a load here), from its chunks' partials; the row's counter goes back to 0 for the next call."""
    index = tl.arange(0, MAX_CHUNKS)
    valid = index < chunks
    slots = partial_ptr + (b * chunks + index) * PARTIALS
    ms = tl.load(slots, mask=valid, other=float("-inf"), cache_modifier=".cg")
    ss = tl.load(slots + 1, mask=valid, other=0.0, cache_modifier=".cg")
    zsums = tl.load(slots + 2, mask=valid, other=0.0, cache_modifier=".cg")
    bests = tl.load(slots + 3, mask=valid, other=float("-inf"), cache_modifier=".cg")
    tokens = tl.load(slots + 4, mask=valid, other=0.0, cache_modifier=".cg").to(tl.int32, bitcast=True)
    x_toks = tl.load(slots + 5, mask=valid, other=0.0, cache_modifier=".cg")
    tl.store(count_ptr + b, 0)
    m, s, zsum, _, _, winner = _row_stats(ms, ss, zsums, ms, bests, index, False, FUSED)
    won = index == winner  # chunks hold increasing groups: ties go to the lowest group, as within a chunk
    return m, s, zsum, tl.sum(tl.where(won, tokens, 0), 0), tl.sum(tl.where(won, x_toks, 0.0), 0)


@triton.jit
def _finish(b, m, log_s, log_kept, x_mean, token, x_tok, scale, tokens_ptr, logprob_ptr, policy_ptr, mean_ptr):
    """The outputs from the row's max z, the log2 of its sum of exp2 (over 2^m) and of the kept
    tokens' sum, taken as (z - m) - log_s (_over): the log-sum-exp m + log_s would round log_s
    away where |m| is large (a low temperature); x_mean, the row's mean logit, x_tok the token's."""
    tl.store(tokens_ptr + b, token.to(tl.int64))
    tl.store(logprob_ptr + b, (_over(x_tok, scale, m) - log_kept) * LN2)
    tl.store(policy_ptr + b, (_over(x_tok, scale, m) - log_s) * LN2)
    tl.store(mean_ptr + b, (_over(x_mean, scale, m) - log_s) * LN2)


@triton.jit
def _read_row(logits_ptr, row, key, start, full, stop, V, scale, FILTER: tl.constexpr, RUN: tl.constexpr,
              FAST: tl.constexpr, STAGES: tl.constexpr, WORDS: tl.constexpr, FUSED: tl.constexpr):
    """The first pass over tokens [start, stop) of a row (full: where its ragged span starts),
    reduced to its scalars (_row_stats; zsum unscaled)."""
    SPAN: tl.constexpr = 4 * ROWS * RUN
    m = tl.full([ROWS], float("-inf"), tl.float32)
    s = tl.zeros([ROWS], tl.float32)
    zsum = tl.zeros([ROWS], tl.float32)
    zmin = tl.full([ROWS], float("inf"), tl.float32)
    best = tl.full([ROWS], float("-inf"), tl.float32)
    best_group = tl.zeros([ROWS], tl.int32)
    # The ragged span first (all masked where there is none), unconditionally: the compiler then issues the
    # pipeline's first loads before this span's arrive (Triton 3.6 fails to compile an fp32 pass after the loop)
    x, odd, ok, ok_odd = _span(logits_ptr, row, full, stop, RUN, True, WORDS)
    n0, n1, n2, n3 = _group_noise(key, full, RUN)
    m, s, zsum, zmin, best, best_group = _first_pass(x, odd, ok, ok_odd, full, scale,
                                                     _span_bits(full, n0, n1, n2, n3, RUN), m, s, zsum, zmin, best,
                                                     best_group, True, FILTER, RUN, FAST)
    n0, n1, n2, n3 = _group_noise(key, start, RUN)
    for v0 in tl.range(start, full, SPAN, num_stages=STAGES):  # STAGES - 1 spans in flight while one is reduced
        x, odd, ok, ok_odd = _span(logits_ptr, row, v0, V, RUN, False, WORDS)
        if not FILTER:  # (the filtered first pass draws nothing)
            if (v0 // SPAN) % 4 == 0:  # the next four spans' noise (the chunk's first span's is drawn above)
                n0, n1, n2, n3 = _group_noise(key, v0, RUN)
        m, s, zsum, zmin, best, best_group = _first_pass(x, odd, ok, ok_odd, v0, scale,
                                                         _span_bits(v0, n0, n1, n2, n3, RUN), m, s, zsum, zmin, best,
                                                         best_group, False, FILTER, RUN, FAST)
    return _row_stats(m, s, zsum, zmin, best, best_group, FILTER, FUSED)


@triton.jit(do_not_specialize=["shift", "spans", "chunks"])
def _sample_kernel(
    logits_ptr, stride_b, seeds_ptr, shift, scale, top_k, top_p,
    tokens_ptr, logprob_ptr, policy_ptr, mean_ptr, partial_ptr, count_ptr, V, spans, chunks,
    FILTER: tl.constexpr, TOP_K: tl.constexpr, TOP_P: tl.constexpr, BLOCK_V: tl.constexpr,
    SPLIT: tl.constexpr, SPLIT_ROW: tl.constexpr, MAX_CHUNKS: tl.constexpr, RUN: tl.constexpr,
    FAST: tl.constexpr, STAGES: tl.constexpr, WORDS: tl.constexpr, FUSED: tl.constexpr,
):
    """Program (b, c) reads spans [c * spans // chunks, (c + 1) * spans // chunks) of row b's
    spans (SPLIT_ROW: plain sampling only; the last of a row's programs to finish combines
    their partials)."""
    SPAN: tl.constexpr = 4 * ROWS * RUN
    b = tl.program_id(0)
    row = b.to(tl.int64) * stride_b
    key = tl.load(seeds_ptr + b) + shift
    c = tl.program_id(1)
    start = (c * spans // chunks) * SPAN  # a multiple of the span, as the compiler sees
    stop = tl.minimum(((c + 1) * spans // chunks) * SPAN, V)
    full = stop - (stop - start) % SPAN  # only the row's end is ragged
    m, s, zsum, zmin, top, group = _read_row(logits_ptr, row, key, start, full, stop, V, scale, FILTER, RUN, FAST,
                                             STAGES, WORDS, FUSED)
    x_mean = zsum / V  # (this chunk's part)
    if SPLIT_ROW:
        # this chunk's draw, resolved now, while other programs still read: the last one only combines
        token, x_tok = _resolve(logits_ptr, row, group, V, scale, key, float("-inf"), RUN, FAST, FUSED)
        slot = partial_ptr + (b * chunks + c) * PARTIALS
        tl.store(slot, m)
        tl.store(slot + 1, s)
        tl.store(slot + 2, x_mean)
        tl.store(slot + 3, top)
        tl.store(slot + 4, token.to(tl.float32, bitcast=True))
        tl.store(slot + 5, x_tok)
        tl.debug_barrier()  # the partials are written before the count (a release, at GPU scope)
        if tl.atomic_add(count_ptr + b, 1) == chunks - 1:  # acq_rel: every partial of the row is visible
            tl.debug_barrier()
            m, s, x_mean, token, x_tok = _combine(partial_ptr, count_ptr, b, chunks, MAX_CHUNKS, FUSED)
            log_s = tl.log2(s)
            _finish(b, m, log_s, log_s, x_mean, token, x_tok, scale, tokens_ptr, logprob_ptr, policy_ptr, mean_ptr)
    else:
        log_s = tl.log2(s)
        log_kept = log_s
        cutoff = float("-inf")
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
                        x = _flat_tile(logits_ptr, row, v0, V, BLOCK_V)
                        kept_per_thread += tl.where(x * scale >= cutoff, tl.exp2(_over(x, scale, m)), 0.0)
                    kept = tl.sum(tl.sum(kept_per_thread, 1), 0)
                lo = _to_key(cutoff)
                cutoff = _search(logits_ptr, row, V, scale, lo, hi, cutoff, top_p * kept, m, False, BLOCK_V, SPLIT)
            s_kept = tl.zeros([ROWS], tl.float32)
            best = tl.full([ROWS], float("-inf"), tl.float32)
            best_group = tl.zeros([ROWS], tl.int32)
            n0, n1, n2, n3 = _group_noise(key, 0, RUN)
            for v0 in range(0, V, SPAN):
                if ((v0 // SPAN) % 4 == 0) & (v0 > 0):
                    n0, n1, n2, n3 = _group_noise(key, v0, RUN)
                s_kept, best, best_group = _draw_pass(logits_ptr, row, v0, V, scale,
                                                      _span_bits(v0, n0, n1, n2, n3, RUN), m, cutoff, s_kept, best,
                                                      best_group, RUN, FAST)
            _, group, _ = _best_token(best, best_group, best, FUSED)
            log_kept = tl.log2(tl.sum(s_kept, None))
        token, x_tok = _resolve(logits_ptr, row, group, V, scale, key, cutoff, RUN, FAST, FUSED)
        _finish(b, m, log_s, log_kept, x_mean, token, x_tok, scale, tokens_ptr, logprob_ptr, policy_ptr, mean_ptr)


MAX_CHUNKS = 64
PROGRAMS_PER_SM = 2  # plain sampling splits rows into about this many programs per SM (H200: 2 beat 4 at B=64 and 256)
RESIDENT_PER_SM = 4  # registers are capped so that this many fit on an SM (64 at 8 warps) where rows alone fill it
REGISTERS_PER_SM = 65536


def register_cap(num_warps, filtered):
    """Plain sampling: the registers per thread that keep RESIDENT_PER_SM programs resident (64 at 8
    warps; Triton 3.6 takes 78 unasked, a program per SM fewer, and ptxas then spills only outside
    the loop), for grids of one program per row with more rows than twice the SMs. None (the
    compiler's choice) where filtered (a program per row) or where the cap would be under 64
    or over 255."""
    cap = REGISTERS_PER_SM // (RESIDENT_PER_SM * num_warps * 32)
    return None if filtered or not 64 <= cap <= 255 else cap


def programs_per_row(device, rows, spans, chunks=None):
    """Programs per row for plain sampling: chunks, or by default as many as make PROGRAMS_PER_SM
    per SM; at most MAX_CHUNKS, and each gets a span or more."""
    if chunks is None:
        chunks = PROGRAMS_PER_SM * _multiprocessors(device) // rows
    return max(1, min(chunks, spans, MAX_CHUNKS))


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


def sample(logits, temperature, top_k, top_p, seeds, offset, block_v=None, num_warps=None, split=4, chunks=None,
           stages=3, fused=None):
    """(tokens, logprob, policy_logprob, mean_logp) for logits[B, V] (bf16/fp16/fp32).

    Tuning knobs (the tokens drawn do not depend on them): num_warps, chunks (programs
    per row for plain sampling, at most 64; default: as many as make PROGRAMS_PER_SM per
    SM), stages (Triton's software pipelining of the first pass: spans in flight + 1), and
    for the cutoff search block_v (tokens per tile, a power of 2 >= 4) and split
    (thresholds per pass, a power of 2); fused: the row's end reduces its accumulators
    in one exchange between warps (default where compiled; Triton's interpreter runs that
    element by element, several times slower, so it reduces them one by one)."""
    b, v = logits.shape
    device = logits.device
    logits = logits if logits.stride(1) == 1 else logits.contiguous()
    seeds = seeds.contiguous()  # the kernel reads seed b at seeds_ptr + b: not of an expand()ed or sliced tensor
    tokens = torch.empty(b, dtype=torch.int64, device=device)
    logprob, policy, mean = (torch.empty(b, dtype=torch.float32, device=device) for _ in range(3))
    if b == 0:
        return tokens, logprob, policy, mean
    interpreted = os.environ.get("TRITON_INTERPRET") == "1"
    if block_v is None:
        block_v = 64 if interpreted else min(4096, max(16, triton.next_power_of_2(v)))
    filtered = top_k > 0 or top_p < 1.0
    spans = triton.cdiv(v, span(logits.dtype))
    if filtered or (chunks is None and interpreted):
        chunks = 1
    chunks = programs_per_row(device, b, spans, chunks)
    partials = torch.empty(b * chunks * PARTIALS.value if chunks > 1 else 1, dtype=torch.float32, device=device)
    shift = (offset * GOLDEN + 2**63) % 2**64 - 2**63  # wrapped to int64, as the kernel's addition wraps
    num_warps = num_warps or (1 if interpreted else 8)
    _sample_kernel[(b, chunks)](
        logits, logits.stride(0), seeds, shift, LOG2E / temperature, top_k, top_p,
        tokens, logprob, policy, mean, partials, _counters(device, b), v, spans, chunks,
        FILTER=filtered, TOP_K=top_k > 0, TOP_P=top_p < 1.0, BLOCK_V=block_v, SPLIT=split,
        SPLIT_ROW=chunks > 1, MAX_CHUNKS=MAX_CHUNKS, RUN=run_size(logits.dtype), FAST=not interpreted,
        STAGES=stages, WORDS=_as_words(logits), FUSED=not interpreted if fused is None else fused,
        num_warps=num_warps, maxnreg=register_cap(num_warps, filtered),
    )
    return tokens, logprob, policy, mean
