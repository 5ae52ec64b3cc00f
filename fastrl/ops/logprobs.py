"""Token log-probabilities over the vocabulary (DESIGN 3.3): ``linear_logprobs``
straight from the lm_head, ``logprobs_from_logits`` from existing logits.

Backends: ``triton`` (kernels/logprobs.py; the default on CUDA), ``torch``
(chunked PyTorch; the default on CPU), ``reference`` (materialised
log-softmax). Neither triton nor torch holds the [tokens x vocabulary] logits of
``linear_logprobs`` (the reference does: it is for tests): the forward sweeps the vocabulary with an online
log-sum-exp, the backward recomputes the logits a slice of the vocabulary at a time
(four matmuls where a plain lm_head costs three).

Each op returns (logprob, entropy, mean_logp, lse), the unrequested ones empty;
lse is what the backward needs. Gradients flow from logprob and entropy
(to hidden, weight, bias, or logits); mean_logp (ROVER's value of a state
under the uniform policy) has none.
"""
from __future__ import annotations

import functools
import math
import os
import warnings
from contextlib import nullcontext
from typing import NamedTuple, Optional

import torch
import torch.nn.functional as F
from torch.autograd.function import once_differentiable

from fastrl.ops import _checks, _registry, reference
from fastrl.ops._registry import define

INT_DTYPES = (torch.int64, torch.int32, torch.int16, torch.int8, torch.uint8)


class TokenStats(NamedTuple):
    """Per-token statistics shaped like the labels (float32; float64 for float64 inputs)."""

    logprob: torch.Tensor
    entropy: Optional[torch.Tensor] = None
    mean_logp: Optional[torch.Tensor] = None


# ---- torch backend: chunks of tokens, so at most one chunk of logits exists at a time ----

def empty_stats(x, n: int, entropy: bool, mean_logp: bool):
    """Outputs (logprob, entropy, mean_logp, lse) for n rows of ``x``; unrequested ones empty."""
    return tuple(reference.empty_output(x, (n if wanted else 0,)) for wanted in (True, entropy, mean_logp, True))


CHUNK_BYTES = {"cpu": 32 << 20, "cuda": 512 << 20}


def _chunks(n: int, other: int, dtype: torch.dtype, device: torch.device):
    """Slices of range(n) such that a [slice, other] block of logits in ``dtype`` fits
    the device's budget: chunks of tokens (other = V) or of the vocabulary (other = N)."""
    budget = CHUNK_BYTES.get(device.type, CHUNK_BYTES["cpu"])
    size = max(1, budget // max(1, other * dtype.itemsize))
    if size >= 256:
        size -= size % 128  # whole tiles for the matmuls
    return [slice(start, min(start + size, n)) for start in range(0, n, size)]


def _log_floor(dtype: torch.dtype) -> float:
    """A log-probability below which exp gives 0 in ``dtype``: clamping to it changes no
    probability, and turns 0 * -inf at a -inf logit (a masked vocabulary) into 0."""
    return 2 * math.log(torch.finfo(dtype).tiny)


def _token_stats_(z, labels, temperature, ignore_index, entropy, mean_logp):
    """reference.token_stats on ``z``, a fresh buffer of logits in the output dtype, which
    it overwrites: the torch backend's per-chunk reduction, with one temporary of z's size."""
    if temperature != 1.0:
        z.div_(temperature)
    m = z.amax(-1)
    shifted = z.sub_(m[:, None])  # <= 0: exp cannot overflow
    valid = labels != ignore_index
    picked = shifted.gather(-1, torch.where(valid, labels, 0)[:, None]).squeeze(-1)
    mean_shifted = shifted.mean(-1) if mean_logp else None
    p = shifted.exp()
    s = p.sum(-1)
    log_s = s.log()
    if entropy:
        shifted.clamp_(min=_log_floor(shifted.dtype))  # p * shifted: 0, not 0 * -inf, at a -inf logit
    ent = torch.where(valid, log_s - torch.linalg.vecdot(p, shifted) / s, 0.0) if entropy else None
    empty = z.new_empty(0)
    return (
        torch.where(valid, picked - log_s, 0.0),
        empty if ent is None else ent,
        empty if mean_shifted is None else torch.where(valid, mean_shifted - log_s, 0.0),
        m + log_s,
    )


def _chunked_token_stats(x, vocab, logits_of, labels, temperature, ignore_index, entropy, mean_logp,
                         stats=_token_stats_):
    """``stats`` over chunks of rows; ``logits_of(rows)`` gives a chunk's logits in a fresh
    buffer, which ``stats`` may overwrite."""
    n = labels.shape[0]
    outputs = empty_stats(x, n, entropy, mean_logp)
    for rows in _chunks(n, vocab, reference.output_dtype(x), x.device):
        chunk = stats(logits_of(rows), labels[rows], temperature, ignore_index, entropy, mean_logp)
        for out, part in zip(outputs, chunk):
            if out.numel():
                out[rows] = part
    return outputs


def _linear_token_stats_torch(hidden, weight, labels, bias, *options):
    dtype = reference.output_dtype(hidden)
    return _chunked_token_stats(
        hidden, weight.shape[0], lambda rows: F.linear(hidden[rows], weight, bias).to(dtype), labels, *options
    )


def _logits_token_stats_torch(logits, labels, temperature, ignore_index, entropy, mean_logp, inplace_backward):
    dtype = reference.output_dtype(logits)
    return _chunked_token_stats(
        logits, logits.shape[1], lambda rows: logits[rows].to(dtype, copy=True), labels,
        temperature, ignore_index, entropy, mean_logp,
    )


def _logits_grad_torch(grad_logprob, grad_entropy, logits, labels, lse, entropy, temperature, ignore_index, out,
                       first_col=0):
    """d(logprob . grad_logprob + entropy . grad_entropy)/d(logits), written into ``out``;
    ``logits`` may be the columns [first_col, first_col + V) of the rows whose lse is given."""
    dtype = reference.output_dtype(logits)
    # bf16/fp16 logits in place: a few rows at a time in float32 (chunks of an eighth of the budget), not a
    # float32 copy of them all, twice the logits' size
    if out is logits and out.dtype != dtype and len(chunks := _chunks(logits.shape[0], 8 * logits.shape[1], dtype,
                                                                      logits.device)) > 1:
        def rows_of(x, rows):
            return x[rows] if x.numel() else x

        for rows in chunks:
            part = logits[rows].to(dtype)
            _logits_grad_torch(grad_logprob[rows], rows_of(grad_entropy, rows), part, labels[rows], lse[rows],
                               rows_of(entropy, rows), temperature, ignore_index, part, first_col)
            logits[rows] = part
        return logits
    valid = labels != ignore_index
    g_logprob = torch.where(valid, grad_logprob, 0.0)[:, None]
    work = out if out is logits and out.dtype == dtype else logits.to(dtype, copy=True)
    logp = (work.div_(temperature) if temperature != 1.0 else work).sub_(lse[:, None])
    if grad_entropy.numel():
        logp.clamp_(min=_log_floor(dtype))  # exp(logp) unchanged; p * weight 0, not 0 * inf, at a -inf logit
        g_entropy = torch.where(valid, grad_entropy, 0.0)[:, None]
        weight = (logp + entropy[:, None]).mul_(g_entropy).add_(g_logprob)
        grad = logp.exp_().mul_(weight).neg_()
    else:
        grad = logp.exp_().mul_(-g_logprob)
    column = labels - first_col
    here = valid & (column >= 0) & (column < logits.shape[1])
    grad.scatter_add_(1, torch.where(here, column, 0)[:, None], torch.where(here[:, None], g_logprob, 0.0))
    if temperature != 1.0:
        grad.div_(temperature)
    return grad if grad is out else out.copy_(grad)


def _linear_backward_chunked(
    grad_logprob, grad_entropy, hidden, weight, labels, bias, lse, entropy, temperature, ignore_index,
    weight_grad, logits_grad,
):
    """Backward of linear_logprobs a slice of the vocabulary at a time: recompute the
    slice's logits for every token, turn them into their gradient in place
    (``logits_grad``, from the saved lse and entropy), then two matmuls.

    Slicing the vocabulary rather than the tokens writes each slice of the weight
    gradient once, complete (a matmul over all tokens), so only the [N, H] hidden
    gradient accumulates across slices: in float32 (float64 for float64 inputs),
    staged through the output, since cuBLAS has no bf16-in, float32-accumulate addmm.
    """
    acc_dtype = reference.output_dtype(hidden)
    grad_hidden = torch.empty_like(hidden)
    accumulator = grad_hidden.zero_() if hidden.dtype == acc_dtype else torch.zeros_like(hidden, dtype=acc_dtype)
    grad_weight = torch.empty_like(weight) if weight_grad else weight.new_empty(0)
    grad_bias = torch.empty_like(bias) if bias is not None else hidden.new_empty(0)
    for cols in _chunks(weight.shape[0], hidden.shape[0], weight.dtype, hidden.device):
        w = weight[cols]
        logits = F.linear(hidden, w, bias[cols] if bias is not None else None)
        dz = logits_grad(grad_logprob, grad_entropy, logits, labels, lse, entropy, temperature, ignore_index,
                         logits, cols.start)
        if accumulator is grad_hidden:
            accumulator.addmm_(dz, w)
        else:
            accumulator += torch.mm(dz, w, out=grad_hidden)
        if weight_grad:
            torch.mm(dz.T, hidden, out=grad_weight[cols])
        if bias is not None:
            grad_bias[cols] = dz.sum(0, dtype=acc_dtype)
        del logits, dz  # one slice of logits alive at a time, not two
    if accumulator is not grad_hidden:
        grad_hidden.copy_(accumulator)
    return grad_hidden, grad_weight, grad_bias


def _kernel(name):
    """kernels/logprobs.<name>, imported on first use so that fastrl works without Triton."""
    def run(*args):
        from fastrl.kernels import logprobs

        return getattr(logprobs, name)(*args)

    return run


_triton_logits_token_stats = _kernel("logits_token_stats")
_triton_logits_grad = _kernel("logits_grad")

# The Triton forward of linear_logprobs: "chunked" (cuBLAS matmul per chunk of tokens,
# then the one-pass row kernel) or "fused" (matmul and online log-sum-exp in one Triton
# kernel). On an H200 (bf16, N=32768, H=3584, V=151936) chunked took 58.9 ms and fused
# 105.0 ms (benchmarks/results/NVIDIA-H200/bench_logprobs.json): chunked is the default.
TRITON_LINEAR_FORWARD = os.environ.get("FASTRL_LINEAR_FORWARD", "chunked")


def _triton_linear_token_stats(hidden, weight, labels, bias, *options):
    if TRITON_LINEAR_FORWARD == "chunked":
        return _chunked_token_stats(
            hidden, weight.shape[0], lambda rows: F.linear(hidden[rows], weight, bias), labels, *options,
            stats=_triton_logits_token_stats,
        )
    return _kernel("linear_token_stats")(hidden, weight, labels, bias, *options)


def _reference_logits_grad(grad_logprob, grad_entropy, logits, labels, lse, entropy, temperature, ignore_index, out):
    grad = reference.logprobs_from_logits_backward(
        grad_logprob, grad_entropy, logits, labels, lse, entropy, temperature, ignore_index
    )
    return out.copy_(grad)


# ---- op definitions ----


def _fake_stats(x, entropy, mean_logp):
    return empty_stats(x, x.shape[0], entropy, mean_logp)


def _checked_rows(implementation, vocabulary_of):
    """The forward op's implementation behind the checks of what it indexes by: it can be
    called as torch.ops.fastrl.*, past the wrappers' checks, and the Triton kernel reads label
    r for row r (a short labels tensor was read past its end) and row r's logit at it."""

    def run(x, *args):
        weight_or_labels, *rest = args
        labels, temperature, ignore_index = (rest[0], rest[2], rest[3]) if vocabulary_of == "weight" \
            else (weight_or_labels, rest[0], rest[1])
        vocab = weight_or_labels.shape[0] if vocabulary_of == "weight" else x.shape[-1]
        if x.dim() != 2 or labels.dim() != 1 or labels.shape[0] != x.shape[0] or labels.dtype != torch.int64:
            raise ValueError(f"labels must be int64 of shape [{x.shape[0]}] (a label per row of the [N, .] input), "
                             f"got {labels.dtype} of shape {list(labels.shape)}")
        if not (temperature > 0 and math.isfinite(temperature)):
            raise ValueError(f"temperature must be a finite number > 0, got {temperature}")
        _check_inverse_temperature(temperature, x)
        if labels.device.type == "cpu" and labels.numel():  # (on a GPU, a check would wait for the device)
            bad = (labels != ignore_index) & ((labels < 0) | (labels >= vocab))
            if bad.any():
                raise ValueError(f"labels must be in [0, {vocab}) or ignore_index ({ignore_index}), "
                                 f"got {int(labels[bad][0])}")
        return implementation(x, *args)

    return run


define(
    "linear_logprobs(Tensor hidden, Tensor weight, Tensor labels, Tensor? bias, float temperature,"
    " int ignore_index, bool entropy, bool mean_logp) -> (Tensor, Tensor, Tensor, Tensor)",
    _checked_rows(reference.linear_logprobs, "weight"),
    lambda hidden, weight, labels, bias, temperature, ignore_index, entropy, mean_logp: _fake_stats(
        hidden, entropy, mean_logp
    ),
    triton=_checked_rows(_triton_linear_token_stats, "weight"),
    torch_impl=_checked_rows(_linear_token_stats_torch, "weight"),
)
define(
    "linear_logprobs_backward(Tensor grad_logprob, Tensor grad_entropy, Tensor hidden, Tensor weight,"
    " Tensor labels, Tensor? bias, Tensor lse, Tensor entropy, float temperature, int ignore_index,"
    " bool weight_grad, str? backend=None) -> (Tensor, Tensor, Tensor)",
    reference.linear_logprobs_backward,
    lambda grad_logprob, grad_entropy, hidden, weight, labels, bias, lse, entropy, temperature, ignore_index,
    weight_grad, backend=None: (
        torch.empty_like(hidden),
        weight.new_empty(weight.shape if weight_grad else (0,)),
        (bias if bias is not None else hidden).new_empty(bias.shape if bias is not None else (0,)),
    ),
    triton=functools.partial(_linear_backward_chunked, logits_grad=_triton_logits_grad),
    torch_impl=functools.partial(_linear_backward_chunked, logits_grad=_logits_grad_torch),
)
define(
    "logprobs_from_logits(Tensor logits, Tensor labels, float temperature, int ignore_index, bool entropy,"
    " bool mean_logp, bool inplace_backward) -> (Tensor, Tensor, Tensor, Tensor)",
    _checked_rows(reference.logprobs_from_logits, "logits"),
    lambda logits, labels, temperature, ignore_index, entropy, mean_logp, inplace_backward: _fake_stats(
        logits, entropy, mean_logp
    ),
    triton=_checked_rows(_triton_logits_token_stats, "logits"),
    torch_impl=_checked_rows(_logits_token_stats_torch, "logits"),
)


def _logits_grad_op(schema: str, into_logits: bool):
    """The backward of logprobs_from_logits, into a new tensor or over the logits."""

    def run(impl):
        def kernel(grad_logprob, grad_entropy, logits, labels, lse, entropy, temperature, ignore_index):
            out = logits if into_logits else torch.empty_like(logits)
            impl(grad_logprob, grad_entropy, logits, labels, lse, entropy, temperature, ignore_index, out)
            return None if into_logits else out

        return kernel

    define(
        schema,
        run(_reference_logits_grad),
        lambda grad_logprob, grad_entropy, logits, *rest: None if into_logits else torch.empty_like(logits),
        triton=run(_triton_logits_grad),
        torch_impl=run(_logits_grad_torch),
    )


_ARGS = "Tensor labels, Tensor lse, Tensor entropy, float temperature, int ignore_index, str? backend=None"
_logits_grad_op(
    f"logprobs_from_logits_backward(Tensor grad_logprob, Tensor grad_entropy, Tensor logits, {_ARGS}) -> Tensor",
    into_logits=False,
)
_logits_grad_op(
    f"logprobs_from_logits_backward_(Tensor grad_logprob, Tensor grad_entropy, Tensor(a!) logits, {_ARGS}) -> ()",
    into_logits=True,
)


# ---- autograd ----


def _output_grads(grad_logprob, grad_entropy, lse, entropy):
    grad_logprob = torch.zeros_like(lse) if grad_logprob is None else grad_logprob
    if grad_entropy is None or not entropy.numel():
        grad_entropy = lse.new_empty(0)
    return grad_logprob.contiguous(), grad_entropy.contiguous()


def _setup_linear(ctx, inputs, output):
    hidden, weight, labels, bias, ctx.temperature, ctx.ignore_index, _, _ = inputs
    # the backward runs where the forward did, wherever autograd runs it (a CUDA backward: another thread)
    ctx.backend = _registry.forced()
    ctx.save_for_backward(hidden, weight, labels, bias, output[3], output[1])


def _first_order(backward):
    """once_differentiable, and under create_graph=True gradients that raise when backpropagated
    through. The backward kernels have no gradient of their own: without once_differentiable a
    second derivative came out silently wrong (PyTorch only warned that no autograd kernel is
    registered); with it alone, the gradients of backward(create_graph=True) (whose incoming
    gradients need none) came back detached, so a gradient penalty on them read 0."""
    once = once_differentiable(backward)

    @functools.wraps(backward)
    def run(ctx, *grads):
        out = once(ctx, *grads)
        if not torch.is_grad_enabled() or torch.compiler.is_compiling():
            return out
        error = torch._C._functions.DelayedError(b"fastrl's log-prob ops have no second derivative: their "
                                                 b"gradients cannot be backpropagated through", len(out))
        return error(*(None if g is None else g.detach().requires_grad_() for g in out))

    return run


@_first_order
def _backward_linear(ctx, grad_logprob, grad_entropy, _grad_mean, _grad_lse):
    hidden, weight, labels, bias, lse, entropy = ctx.saved_tensors
    grad_logprob, grad_entropy = _output_grads(grad_logprob, grad_entropy, lse, entropy)
    grad_hidden, grad_weight, grad_bias = torch.ops.fastrl.linear_logprobs_backward(
        grad_logprob, grad_entropy, hidden, weight, labels, bias, lse, entropy,
        ctx.temperature, ctx.ignore_index, ctx.needs_input_grad[1], ctx.backend,
    )
    return (
        grad_hidden if ctx.needs_input_grad[0] else None,
        grad_weight if ctx.needs_input_grad[1] else None,
        None,
        grad_bias if bias is not None and ctx.needs_input_grad[3] else None,
        None, None, None, None,
    )


def _setup_logits(ctx, inputs, output):
    logits, labels, ctx.temperature, ctx.ignore_index, _, _, ctx.inplace = inputs
    ctx.backend = _registry.forced()
    ctx.save_for_backward(logits, labels, output[3], output[1])


@_first_order
def _backward_logits(ctx, grad_logprob, grad_entropy, _grad_mean, _grad_lse):
    logits, labels, lse, entropy = ctx.saved_tensors
    grad_logprob, grad_entropy = _output_grads(grad_logprob, grad_entropy, lse, entropy)
    args = (labels, lse, entropy, ctx.temperature, ctx.ignore_index, ctx.backend)
    if ctx.inplace:  # flash-attn's trick: the logits are not needed again, so their memory takes the gradient
        torch.ops.fastrl.logprobs_from_logits_backward_(grad_logprob, grad_entropy, logits, *args)
        if not torch.compiler.is_compiling():  # a kernel's raw stores do not tell autograd: another use of the
            torch.autograd.graph.increment_version(logits)  # logits (retain_graph, a z-loss) must then fail
        grad = logits
    else:
        grad = torch.ops.fastrl.logprobs_from_logits_backward(grad_logprob, grad_entropy, logits, *args)
    return grad, None, None, None, None, None, None


torch.library.register_autograd("fastrl::linear_logprobs", _backward_linear, setup_context=_setup_linear)
torch.library.register_autograd("fastrl::logprobs_from_logits", _backward_logits, setup_context=_setup_logits)


# ---- public functions ----


def _check_labels(labels, like_name: str, leading: torch.Size, vocab: int, ignore_index: int, device):
    _checks.tensor("labels", labels)
    if labels.dtype not in INT_DTYPES:
        raise TypeError(f"labels must be an integer tensor, got {labels.dtype}")
    if labels.shape != leading:
        raise ValueError(f"labels must have the shape {tuple(leading)} of {like_name} without its last dimension, "
                         f"got {tuple(labels.shape)}")
    if labels.device != device:
        raise ValueError(f"labels is on {labels.device} but {like_name} is on {device}")
    if _checks.values_checked(labels) and labels.numel():
        labels = labels.long()  # compared in their own dtype, uint8 156 or int8 -100 can equal ignore_index
        bad = (labels != ignore_index) & ((labels < 0) | (labels >= vocab))
        _checks.require(~bad.any(), f"labels must be in [0, {vocab}) or ignore_index={ignore_index}",
                        lambda: f"; found {int(labels[bad].flatten()[0])}")


def _check_inverse_temperature(temperature: float, like: torch.Tensor):
    # the kernels scale by 1 / temperature in float32 (float64 for float64 inputs): 1e-45 made it inf, and NaN
    accumulation = torch.finfo(reference.output_dtype(like))
    if not 1 / temperature < accumulation.max:
        raise ValueError(f"temperature must be >= {1 / accumulation.max:.4g} for {like.dtype} inputs "
                         f"(1 / temperature a finite {accumulation.dtype}), got {temperature}")


def _check_options(temperature, ignore_index, entropy, mean_logp, like: torch.Tensor):
    temperature = _checks.positive("temperature", temperature)
    _check_inverse_temperature(temperature, like)
    _checks.int64("ignore_index", ignore_index)
    for name, flag in (("entropy", entropy), ("mean_logp", mean_logp)):
        if not isinstance(flag, bool):
            raise TypeError(f"{name} must be a bool, got {type(flag).__name__}")
    return temperature


def _autocasting(device: torch.device) -> bool:
    # (not torch.amp.is_autocast_available: torch.compile(fullgraph=True) of torch 2.11 cannot trace it)
    return device.type in ("cpu", "cuda") and torch.is_autocast_enabled(device.type)


def _autocast(*tensors):
    """The tensors in the autocast dtype where autocast is on for their device (float64
    and non-tensors as they are), as autocast casts the inputs of a matmul."""
    if not _autocasting(tensors[0].device):
        return tensors
    dtype = torch.get_autocast_dtype(tensors[0].device.type)
    return tuple(t.to(dtype) if isinstance(t, torch.Tensor) and t.is_floating_point() and t.dtype != torch.float64
                 else t for t in tensors)


def _token_stats(outputs, shape, entropy, mean_logp) -> TokenStats:
    logprob, ent, mean, _ = outputs
    return TokenStats(
        logprob.view(shape), ent.view(shape) if entropy else None, mean.detach().view(shape) if mean_logp else None
    )


def linear_logprobs(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    labels: torch.Tensor,
    bias: Optional[torch.Tensor] = None,
    temperature: float = 1.0,
    ignore_index: int = -100,
    entropy: bool = False,
    mean_logp: bool = False,
) -> TokenStats:
    """log_softmax((hidden @ weight.T + bias) / temperature)[labels], never holding the logits.

    hidden: [..., H] (bf16, fp16, fp32 or fp64); weight: [V, H] and bias: [V], both of
    hidden's dtype; labels: integers shaped like hidden without its last dimension.
    Returns TokenStats(logprob, entropy, mean_logp) shaped like labels, float32 (float64
    for float64 inputs), the last two None unless asked for; ignored labels read 0.
    Differentiable in hidden, weight and bias through logprob and entropy.
    Under autocast it computes as ``F.linear`` would there: hidden, weight and bias (any
    dtype but float64) in the autocast dtype.
    """
    _checks.floating("hidden", hidden)
    hidden, weight, bias = _autocast(hidden, weight, bias)
    if hidden.dim() < 1 or hidden.shape[-1] == 0:
        raise ValueError(f"hidden must be [..., H] with a hidden size H > 0, got shape {tuple(hidden.shape)}")
    _checks.floating("weight", weight, ndim=2)
    _checks.same_dtype("weight", weight, "hidden", hidden)
    _checks.same_device("weight", weight, "hidden", hidden)
    if weight.shape[1] != hidden.shape[-1] or weight.shape[0] == 0:
        raise ValueError(f"weight must be [V, {hidden.shape[-1]}] with V > 0 to match hidden's last dimension, "
                         f"got {tuple(weight.shape)}")
    if bias is not None:
        _checks.floating("bias", bias, ndim=1)
        _checks.same_dtype("bias", bias, "hidden", hidden)
        _checks.same_device("bias", bias, "hidden", hidden)
        if bias.shape[0] != weight.shape[0]:
            raise ValueError(f"bias must be [{weight.shape[0]}] to match weight, got {tuple(bias.shape)}")
    temperature = _check_options(temperature, ignore_index, entropy, mean_logp, hidden)  # _check_labels uses ignore_index
    _check_labels(labels, "hidden", hidden.shape[:-1], weight.shape[0], ignore_index, hidden.device)
    _checks.finite("hidden", hidden)
    _checks.finite("weight", weight)
    if bias is not None:
        _checks.finite_or_neg_inf("bias", bias)  # -inf: a token that can never come out
    # the kernels run on the cast inputs as they would outside autocast (no second cast inside)
    with torch.autocast(hidden.device.type, enabled=False) if _autocasting(hidden.device) else nullcontext():
        outputs = torch.ops.fastrl.linear_logprobs(
            hidden.reshape(-1, hidden.shape[-1]), weight, labels.reshape(-1).long(), bias,
            temperature, ignore_index, entropy, mean_logp,
        )
    return _token_stats(outputs, labels.shape, entropy, mean_logp)


def logprobs_from_logits(
    logits: torch.Tensor,
    labels: torch.Tensor,
    temperature: float = 1.0,
    ignore_index: int = -100,
    entropy: bool = False,
    mean_logp: bool = False,
    inplace_backward: bool = False,
) -> TokenStats:
    """log_softmax(logits / temperature)[labels], one pass over each row of logits[..., V].

    -inf logits are allowed (a masked vocabulary: those tokens get probability 0, and
    gradient 0); NaN, +inf and rows without a finite logit are errors.

    With ``inplace_backward`` the backward writes the gradient over ``logits`` (flash-attn's
    trick, saving a [..., V] buffer): only for logits nothing else needs afterwards. It
    needs logits that reshape to [N, V] without a copy: not a slice along a leading
    dimension such as the shifted ``logits[:, :-1]``, whose gradient then goes to a copy
    (correct, but no memory is saved; a UserWarning says so). Slice the hidden states
    before the lm_head instead, or pass the whole logits with ignore_index labels. Under
    torch.compile it is off (its checks on the logits do not trace).
    Returns TokenStats shaped like labels, as ``linear_logprobs``.
    """
    _checks.floating("logits", logits)
    if logits.dim() < 1 or logits.shape[-1] == 0:
        raise ValueError(f"logits must be [..., V] with V > 0, got shape {tuple(logits.shape)}")
    temperature = _check_options(temperature, ignore_index, entropy, mean_logp, logits)
    _check_labels(labels, "logits", logits.shape[:-1], logits.shape[-1], ignore_index, logits.device)
    if not isinstance(inplace_backward, bool):
        raise TypeError(f"inplace_backward must be a bool, got {type(inplace_backward).__name__}")
    _checks.finite_or_neg_inf("logits", logits)
    rows = logits.reshape(-1, logits.shape[-1])
    if inplace_backward and torch.compiler.is_compiling():
        # the checks below (shared rows, a leaf) do not trace: compiled, a leaf was overwritten and
        # expand()ed rows got a wrong gradient; the compiled graph plans its own memory anyway
        inplace_backward = False
    if inplace_backward and logits.requires_grad:
        if torch._debug_has_internal_overlap(rows) != 0:  # e.g. expand()ed rows: one gradient would overwrite another
            inplace_backward = False
            warnings.warn(
                "logprobs_from_logits: inplace_backward=True, but the logits' rows share memory (e.g. an expand()): "
                "the gradient goes to a new tensor instead", UserWarning, stacklevel=2,
            )
        elif (logits if logits._base is None else logits._base).grad_fn is None:
            # a leaf, or a view of one: the gradient would overwrite the leaf's own values, and .grad alias them
            inplace_backward = False
            warnings.warn(
                "logprobs_from_logits: inplace_backward=True, but the logits are a leaf tensor (or a view of one): the "
                "gradient goes to a new tensor instead; inplace_backward is for logits computed by the model",
                UserWarning, stacklevel=2,
            )
        elif rows._base is None:
            warnings.warn(
                "logprobs_from_logits: inplace_backward=True, but the logits could not be reused in place because "
                f"they do not reshape to [N, V] without a copy (shape {tuple(logits.shape)}, strides "
                f"{logits.stride()}, e.g. logits[:, :-1]): the gradient is written over the copy, which saves no "
                "memory", UserWarning, stacklevel=2,
            )
    outputs = torch.ops.fastrl.logprobs_from_logits(
        rows, labels.reshape(-1).long(), temperature, ignore_index, entropy, mean_logp, inplace_backward,
    )
    return _token_stats(outputs, labels.shape, entropy, mean_logp)
