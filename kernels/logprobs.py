"""Triton kernels for token log-probabilities over the vocabulary (DESIGN 3.3).

- ``linear_token_stats``: the lm_head matmul fused with an online log-sum-exp
  over vocabulary tiles. A program owns BLOCK_N tokens and sweeps the
  vocabulary; each [BLOCK_N, BLOCK_V] logit tile lives only in registers.
- ``logits_token_stats``: the same statistics from existing logits, one program
  per row, reading the row once.
- ``logits_grad``: d(logprob, entropy)/d(logits) for one row per program, in
  place if asked. The backward of ``linear_logprobs`` runs it on vocabulary
  slices of recomputed logits (fastrl/ops/logprobs.py) between cuBLAS matmuls.

Statistics are carried per row relative to the running max m (s = sum e^(z-m),
t = sum e^(z-m) (z-m)) so that entropy = log s - t/s needs no difference of
two large numbers.
"""
from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

from fastrl.ops.logprobs import empty_stats
from fastrl.ops.reference import output_dtype


def _interpreted() -> bool:
    return os.environ.get("TRITON_INTERPRET") == "1"


def _acc_dtype(x: torch.Tensor):
    return tl.float64 if x.dtype == torch.float64 else tl.float32


@triton.jit
def _online_update(z, cols, col_ok, labels, m, s, t, zrel, zlabel, seen):
    """Fold a [R, BLOCK_V] tile of scaled logits (-inf outside the vocabulary) into the row
    statistics; ``seen`` columns came before it."""
    m_new = tl.maximum(m, tl.max(z, 1))
    # exp relative to 0 while every z so far is -inf (leading tiles of a masked vocabulary), not -inf - -inf = NaN
    m_ref = tl.where(m_new == float("-inf"), 0.0, m_new)
    m_ref_old = tl.where(m == float("-inf"), 0.0, m)
    alpha = tl.exp(m - m_ref)
    shift = tl.where(s > 0, m - m_new, 0.0)  # s = 0 before the first finite z, where m = -inf
    d = z - m_ref[:, None]
    e = tl.exp(d)
    t = alpha * (t + shift * s) + tl.sum(e * tl.where(e > 0, d, 0.0), 1)  # 0, not 0 * -inf, off the vocabulary
    s = alpha * s + tl.sum(e, 1)
    # sum(z - m), not sum(z) - V m: a common offset of the logits would cost its float spacing
    zrel += seen * (m_ref_old - m_ref) + tl.sum(tl.where(col_ok[None, :], d, 0.0), 1)
    zlabel += tl.sum(tl.where(cols[None, :] == labels[:, None], z, 0.0), 1)
    return m_new, s, t, zrel, zlabel


@triton.jit
def _store_stats(rows, row_ok, labels, ignore_index, V, m, s, t, zrel, zlabel,
                 logprob_ptr, entropy_ptr, mean_ptr, lse_ptr, WANT_ENTROPY: tl.constexpr, WANT_MEAN: tl.constexpr):
    log_s = tl.log(s)
    valid = labels != ignore_index
    tl.store(lse_ptr + rows, m + log_s, mask=row_ok)
    # (z - m) - log_s, as torch.log_softmax: z - (m + log_s) rounds log_s to the float spacing at |m|
    tl.store(logprob_ptr + rows, tl.where(valid, (zlabel - m) - log_s, 0.0), mask=row_ok)
    if WANT_ENTROPY:
        tl.store(entropy_ptr + rows, tl.where(valid, log_s - t / s, 0.0), mask=row_ok)
    if WANT_MEAN:
        m_ref = tl.where(m == float("-inf"), 0.0, m)
        tl.store(mean_ptr + rows, tl.where(valid, (zrel / V - (m - m_ref)) - log_s, 0.0), mask=row_ok)


@triton.jit
def _linear_stats_kernel(
    hidden_ptr, weight_ptr, bias_ptr, labels_ptr,
    logprob_ptr, entropy_ptr, mean_ptr, lse_ptr,
    N, H, V, stride_hn, stride_hh, stride_wv, stride_wh,
    scale_ptr, ignore_index,
    HAS_BIAS: tl.constexpr, WANT_ENTROPY: tl.constexpr, WANT_MEAN: tl.constexpr,
    ACC: tl.constexpr, PRECISION: tl.constexpr,
    BLOCK_N: tl.constexpr, BLOCK_V: tl.constexpr, BLOCK_H: tl.constexpr,
):
    rows = tl.program_id(0).to(tl.int64) * BLOCK_N + tl.arange(0, BLOCK_N)
    row_ok = rows < N
    inv_temperature = tl.load(scale_ptr)
    labels = tl.load(labels_ptr + rows, mask=row_ok, other=ignore_index)
    m = tl.full([BLOCK_N], float("-inf"), ACC)
    s = tl.zeros([BLOCK_N], ACC)
    t = tl.zeros([BLOCK_N], ACC)
    zrel = tl.zeros([BLOCK_N], ACC)
    zlabel = tl.zeros([BLOCK_N], ACC)
    for v0 in range(0, V, BLOCK_V):
        cols = v0 + tl.arange(0, BLOCK_V).to(tl.int64)
        col_ok = cols < V
        acc = tl.zeros([BLOCK_N, BLOCK_V], ACC)
        for h0 in range(0, H, BLOCK_H):
            ks = h0 + tl.arange(0, BLOCK_H).to(tl.int64)  # ks * stride_hh: int32 overflows past 2^31
            a = tl.load(hidden_ptr + rows[:, None] * stride_hn + ks[None, :] * stride_hh,
                        mask=row_ok[:, None] & (ks[None, :] < H), other=0.0)
            b = tl.load(weight_ptr + cols[None, :] * stride_wv + ks[:, None] * stride_wh,
                        mask=col_ok[None, :] & (ks[:, None] < H), other=0.0)
            acc = tl.dot(a, b, acc, input_precision=PRECISION, out_dtype=ACC)
        if HAS_BIAS:
            acc += tl.load(bias_ptr + cols, mask=col_ok, other=0.0).to(ACC)[None, :]
        z = tl.where(col_ok[None, :], acc * inv_temperature, float("-inf"))
        m, s, t, zrel, zlabel = _online_update(z, cols, col_ok, labels, m, s, t, zrel, zlabel, v0)
    _store_stats(rows, row_ok, labels, ignore_index, V, m, s, t, zrel, zlabel,
                 logprob_ptr, entropy_ptr, mean_ptr, lse_ptr, WANT_ENTROPY, WANT_MEAN)


@triton.jit
def _logits_stats_kernel(
    logits_ptr, labels_ptr, logprob_ptr, entropy_ptr, mean_ptr, lse_ptr,
    V, stride_n, scale_ptr, ignore_index,
    WANT_ENTROPY: tl.constexpr, WANT_MEAN: tl.constexpr, ACC: tl.constexpr, BLOCK_V: tl.constexpr,
):
    rows = tl.program_id(0).to(tl.int64) + tl.arange(0, 1)
    inv_temperature = tl.load(scale_ptr)
    row_ok = rows >= 0
    labels = tl.load(labels_ptr + rows)
    m = tl.full([1], float("-inf"), ACC)
    s = tl.zeros([1], ACC)
    t = tl.zeros([1], ACC)
    zrel = tl.zeros([1], ACC)
    zlabel = tl.zeros([1], ACC)
    for v0 in range(0, V, BLOCK_V):
        cols = v0 + tl.arange(0, BLOCK_V)
        col_ok = cols < V
        x = tl.load(logits_ptr + rows[:, None] * stride_n + cols[None, :], mask=col_ok[None, :], other=0.0)
        z = tl.where(col_ok[None, :], x.to(ACC) * inv_temperature, float("-inf"))
        m, s, t, zrel, zlabel = _online_update(z, cols, col_ok, labels, m, s, t, zrel, zlabel, v0)
    _store_stats(rows, row_ok, labels, ignore_index, V, m, s, t, zrel, zlabel,
                 logprob_ptr, entropy_ptr, mean_ptr, lse_ptr, WANT_ENTROPY, WANT_MEAN)


@triton.jit
def _logits_grad_kernel(
    logits_ptr, grad_ptr, labels_ptr, lse_ptr, entropy_ptr, grad_logprob_ptr, grad_entropy_ptr,
    V, first_col, stride_n, stride_v, stride_grad_n, stride_grad_v, scale_ptr, ignore_index,
    HAS_ENTROPY: tl.constexpr, ACC: tl.constexpr, BLOCK_V: tl.constexpr,
):
    # dlogprob/dz_k = [k = label] - p_k;  dentropy/dz_k = -p_k (log p_k + entropy)
    row = tl.program_id(0).to(tl.int64)
    inv_temperature = tl.load(scale_ptr)
    label = tl.load(labels_ptr + row)
    valid = label != ignore_index
    lse = tl.load(lse_ptr + row).to(ACC)
    g_logprob = tl.where(valid, tl.load(grad_logprob_ptr + row).to(ACC), 0.0)
    if HAS_ENTROPY:
        g_entropy = tl.where(valid, tl.load(grad_entropy_ptr + row).to(ACC), 0.0)
        entropy = tl.load(entropy_ptr + row).to(ACC)
    for v0 in range(0, V, BLOCK_V):
        cols = v0 + tl.arange(0, BLOCK_V).to(tl.int64)  # cols * stride_v: int32 overflows past 2^31
        col_ok = cols < V
        z = tl.load(logits_ptr + row * stride_n + cols * stride_v, mask=col_ok, other=0.0).to(ACC) * inv_temperature
        logp = z - lse
        p = tl.exp(logp)
        if HAS_ENTROPY:
            g = tl.where(p > 0, -p * (g_logprob + g_entropy * (logp + entropy)), 0.0)  # not 0 * -inf at a -inf logit
        else:
            g = -p * g_logprob
        g = tl.where(cols + first_col == label, g + g_logprob, g) * inv_temperature
        tl.store(grad_ptr + row * stride_grad_n + cols * stride_grad_v, g.to(grad_ptr.dtype.element_ty), mask=col_ok)


def _linear_config(dtype: torch.dtype) -> dict:
    """Tile sizes and launch options for the fused kernel (tl.dot needs tiles of at least 16)."""
    if _interpreted():  # small tiles, so that small test shapes still span several of them
        return dict(BLOCK_N=16, BLOCK_V=32, BLOCK_H=16, num_warps=4, num_stages=1)
    if dtype in (torch.bfloat16, torch.float16):
        return dict(BLOCK_N=128, BLOCK_V=128, BLOCK_H=64, num_warps=8, num_stages=3)
    if dtype == torch.float32:
        return dict(BLOCK_N=64, BLOCK_V=64, BLOCK_H=32, num_warps=4, num_stages=3)
    return dict(BLOCK_N=32, BLOCK_V=32, BLOCK_H=16, num_warps=4, num_stages=2)


def _inverse_temperature(temperature: float, x: torch.Tensor) -> torch.Tensor:
    """1/temperature as a one-element tensor: a scalar argument would reach the kernel as float32."""
    return torch.full((1,), 1.0 / temperature, dtype=output_dtype(x), device=x.device)


def _row_block(V: int) -> int:
    return 32 if _interpreted() else min(4096, triton.next_power_of_2(V))


def linear_token_stats(hidden, weight, labels, bias, temperature, ignore_index, entropy, mean_logp):
    """(logprob, entropy, mean_logp, lse) per row of hidden[N, H] against weight[V, H]."""
    n, h = hidden.shape
    v = weight.shape[0]
    outputs = empty_stats(hidden, n, entropy, mean_logp)
    if n == 0:
        return outputs
    logprob, ent, mean, lse = outputs
    labels = labels.contiguous()  # read at labels_ptr + row
    config = _linear_config(hidden.dtype)
    grid = (triton.cdiv(n, config["BLOCK_N"]),)
    _linear_stats_kernel[grid](
        hidden, weight, bias.contiguous() if bias is not None else hidden, labels,  # read at bias_ptr + column
        logprob, ent if entropy else logprob, mean if mean_logp else logprob, lse,
        n, h, v, hidden.stride(0), hidden.stride(1), weight.stride(0), weight.stride(1),
        _inverse_temperature(temperature, hidden), ignore_index,
        HAS_BIAS=bias is not None, WANT_ENTROPY=entropy, WANT_MEAN=mean_logp,
        ACC=_acc_dtype(hidden), PRECISION="ieee" if hidden.dtype == torch.float32 else "tf32",
        **config,
    )
    return outputs


def _rows(x: torch.Tensor) -> torch.Tensor:
    """x as [N, V] with unit stride along V (the kernels address columns directly)."""
    return x if x.stride(-1) == 1 else x.contiguous()


def logits_token_stats(logits, labels, temperature, ignore_index, entropy, mean_logp, inplace_backward=False):
    """(logprob, entropy, mean_logp, lse) per row of logits[N, V]."""
    n, v = logits.shape
    outputs = empty_stats(logits, n, entropy, mean_logp)
    if n == 0:
        return outputs
    logprob, ent, mean, lse = outputs
    logits, labels = _rows(logits), labels.contiguous()  # labels read at labels_ptr + row
    _logits_stats_kernel[(n,)](
        logits, labels, logprob, ent if entropy else logprob, mean if mean_logp else logprob, lse,
        v, logits.stride(0), _inverse_temperature(temperature, logits), ignore_index,
        WANT_ENTROPY=entropy, WANT_MEAN=mean_logp, ACC=_acc_dtype(logits), BLOCK_V=_row_block(v),
        num_warps=1 if _interpreted() else 8,
    )
    return outputs


def logits_grad(grad_logprob, grad_entropy, logits, labels, lse, entropy, temperature, ignore_index, out,
                first_col=0):
    """Write d(logprob . grad_logprob + entropy . grad_entropy)/d(logits) into ``out``
    (which may be ``logits`` itself: each tile is read before it is overwritten).
    ``logits`` may be the columns [first_col, first_col + V) of the rows whose lse is given.
    ``logits`` and ``out`` may have any strides (the gradient of a transposed view, written
    in place or into empty_like); the per-row vectors are read at ptr + row."""
    n, v = logits.shape
    if n == 0:
        return out
    labels, lse, entropy, grad_logprob, grad_entropy = (
        x.contiguous() for x in (labels, lse, entropy, grad_logprob, grad_entropy))
    has_entropy = grad_entropy.numel() > 0
    _logits_grad_kernel[(n,)](
        logits, out, labels, lse, entropy if has_entropy else lse, grad_logprob,
        grad_entropy if has_entropy else grad_logprob,
        v, first_col, logits.stride(0), logits.stride(1), out.stride(0), out.stride(1),
        _inverse_temperature(temperature, logits), ignore_index,
        HAS_ENTROPY=has_entropy, ACC=_acc_dtype(logits), BLOCK_V=_row_block(v),
        num_warps=1 if _interpreted() else 8,
    )
    return out
