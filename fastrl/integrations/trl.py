"""TRL's ``selective_log_softmax`` on fastrl's ``logprobs_from_logits``.

Same signature and results as ``trl.trainer.utils.selective_log_softmax`` (TRL 1.16),
for code that calls it: your own, or the ``trl.experimental`` trainers that import it.
TRL 1.16's GRPOTrainer does not call it (its log-probs come from the model's fused
head), so patching it there changes nothing; trl itself is never imported.
"""
from __future__ import annotations

import torch

from fastrl.ops import _checks
from fastrl.ops.logprobs import INT_DTYPES, logprobs_from_logits

_IGNORED = -100


def _trl_dtype(logits: torch.Tensor, index: torch.Tensor, row_mask) -> torch.dtype:
    """The dtype TRL returns: float32 where its fused Triton kernel serves the call
    (``_supports_trl_loss_kernel``), else its eager path's, the logits' own."""
    fused = (
        logits.device.type in ("cuda", "xpu")
        and logits.dtype in (torch.float16, torch.bfloat16, torch.float32)
        and 1 <= logits.dim() <= 3
        and logits.stride(-1) == 1
        and index.shape == logits.shape[:-1]
        and index.dtype in (torch.int32, torch.int64)
        and (row_mask is None or row_mask.dtype in (torch.bool, torch.int32, torch.int64))
    )
    return torch.float32 if fused else logits.dtype


def selective_log_softmax(
    logits: torch.Tensor,
    index: torch.Tensor,
    temperature: float = 1.0,
    row_mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """``log_softmax(logits / temperature, -1)`` gathered at ``index``, one pass per row.

    logits: [..., V]. index: [...] (one log-probability per row) or [..., K] (K per row,
    e.g. top-K). row_mask, shaped like index: positions where it is 0 read 0 and get no
    gradient. Returns a tensor shaped like index in TRL's dtype: the logits' dtype, but
    float32 for fp16/bf16 logits on CUDA/XPU where TRL's own fused kernel would run (index
    shaped [...], at most 3 dimensions). Computed in float32 (float64 for float64 logits).
    One gradient differs from TRL's: where all K logits selected in a row are -inf, each
    gets the one-hot alone, without TRL's -softmax term (its row log-sum-exp would take
    another pass over the row).
    """
    _checks.floating("logits", logits)
    if logits.dim() < 1 or logits.shape[-1] == 0:
        raise ValueError(f"logits must be [..., V] with V > 0, got shape {tuple(logits.shape)}")
    _checks.tensor("index", index)
    if index.dtype not in INT_DTYPES:
        raise TypeError(f"index must be an integer tensor, got {index.dtype}")
    leading = logits.shape[:-1]
    top_k = index.dim() == logits.dim()
    if index.shape[: len(leading)] != leading or index.dim() not in (logits.dim() - 1, logits.dim()):
        raise ValueError(f"index must be [{', '.join(map(str, leading))}] or [{', '.join(map(str, leading))}, K] "
                         f"to match logits {tuple(logits.shape)}, got {tuple(index.shape)}")
    _checks.same_device("index", index, "logits", logits)
    if row_mask is not None:
        _checks.mask("row_mask", row_mask, "index", index)
    if _checks.values_checked(index) and index.numel() and bool(((index < 0) | (index >= logits.shape[-1])).any()):
        raise ValueError(f"index must be in [0, {logits.shape[-1]}), found "
                         f"{int(index[(index < 0) | (index >= logits.shape[-1])][0])}")
    temperature = _checks.positive("temperature", temperature)
    dtype = _trl_dtype(logits, index, row_mask)

    if not top_k:
        labels = index if row_mask is None else index.long().masked_fill(row_mask == 0, _IGNORED)  # (uint8 wraps)
        return logprobs_from_logits(logits, labels, temperature, ignore_index=_IGNORED).logprob.to(dtype)
    if index.shape[-1] == 0:
        return logits[..., :0].to(dtype)  # empty, but in the graph: backward works, as TRL's does
    # K per row: one of them gives the row's log-sum-exp, lse = z[i] - logp[i], from one pass;
    # the first with a finite logit (a -inf one, a masked token, would make lse NaN)
    raw = logits.gather(-1, index.long())
    pivot = torch.isfinite(raw).to(torch.uint8).argmax(-1, keepdim=True)  # 0 where none is finite
    first = logprobs_from_logits(logits, index.gather(-1, pivot)[..., 0], temperature).logprob
    selected = raw.to(first.dtype) / temperature
    lse = selected.gather(-1, pivot) - first[..., None]
    # a -inf logit has log-probability -inf, and TRL's gradient, one-hot minus softmax, through lse;
    # a row with no finite logit selected has no lse here (NaN): -inf with the one-hot alone
    logps = torch.where((selected == float("-inf")) & lse.isnan(), selected, selected - lse)
    if row_mask is not None:
        logps = logps.masked_fill(row_mask == 0, 0.0)
    return logps.to(dtype)
