"""Token log-probabilities against the materialised float64 reference (DESIGN 3.3, 4)
on every backend present: torch (chunked), Triton under TRITON_INTERPRET=1 on CPU
in fp32/fp64, Triton and bf16/fp16 on a GPU."""
import math
import warnings

import pytest
import torch
import torch.nn.functional as F

import fastrl.ops as ops
from fastrl.ops import logprobs as logprobs_module
from fastrl.ops import reference

# (leading shape of hidden/labels, H, V): odd sizes, none a multiple of a tile
LINEAR_SHAPES = [((1,), 3, 5), ((37,), 45, 101), ((2, 3), 16, 32), ((5, 13), 70, 300), ((64,), 33, 1)]
LOGITS_SHAPES = [((1,), 1), ((37,), 101), ((3, 5), 300), ((2, 2, 2), 4097)]


def backends(op, device):
    found = [b for b in ops.available_backends(op, device.type) if b != "reference"]
    if not found:
        pytest.skip(f"no backend for {op} on {device.type} besides the reference")
    return found


def supports(backend, device, dtype):
    """The Triton interpreter has no bf16/fp16 arithmetic."""
    return not (backend == "triton" and device.type == "cpu" and dtype in (torch.bfloat16, torch.float16))


def linear_inputs(leading, H, V, dtype, rng, bias=True, ignore_index=-100):
    hidden = torch.randn(*leading, H, generator=rng, dtype=torch.float64)
    weight = torch.randn(V, H, generator=rng, dtype=torch.float64) * (2.0 / H**0.5)
    b = torch.randn(V, generator=rng, dtype=torch.float64) if bias else None
    labels = torch.randint(0, V, leading, generator=rng)
    labels.view(-1)[:: 4] = ignore_index
    return [hidden.to(dtype), weight.to(dtype), labels, None if b is None else b.to(dtype)]


def to(args, device, dtype=None):
    return [
        a.to(device=device, dtype=dtype if dtype is not None and a.is_floating_point() else a.dtype)
        if isinstance(a, torch.Tensor) else a
        for a in args
    ]


def stats_and_grads(fn, args, backend, grad_weights, **kw):
    """The op's outputs and the gradients of sum(gw_lp * logprob + gw_ent * entropy) to its float inputs."""
    leaves = [a.detach().requires_grad_() if isinstance(a, torch.Tensor) and a.is_floating_point() else a
              for a in args]
    with ops.use_backend(backend):
        out = fn(*leaves, **kw)
        loss = (out.logprob * grad_weights[0].to(out.logprob)).sum()
        if out.entropy is not None:
            loss = loss + (out.entropy * grad_weights[1].to(out.entropy)).sum()
        wrt = [a for a in leaves if isinstance(a, torch.Tensor) and a.requires_grad]
        grads = torch.autograd.grad(loss, wrt)
    return [x for x in out if x is not None], list(grads)


def assert_all_close(got, want, **tol):
    for g, w in zip(got, want, strict=True):
        torch.testing.assert_close(g.detach().cpu().to(w.dtype), w.detach().cpu(), **tol)


# ---- linear_logprobs ----


@pytest.mark.parametrize("leading,H,V", LINEAR_SHAPES)
@pytest.mark.parametrize("bias,temperature,ignore_index", [(True, 0.7, -100), (False, 1.0, -1), (True, 1.3, 7)])
def test_linear_matches_reference_float64(leading, H, V, bias, temperature, ignore_index, device, rng):
    args = linear_inputs(leading, H, V, torch.float64, rng, bias, ignore_index)
    weights = [torch.randn(leading, generator=rng, dtype=torch.float64) for _ in range(2)]
    kw = dict(temperature=temperature, ignore_index=ignore_index, entropy=True, mean_logp=True)
    want = stats_and_grads(ops.linear_logprobs, args, "reference", weights, **kw)
    for backend in backends("linear_logprobs", device):
        got = stats_and_grads(ops.linear_logprobs, to(args, device), backend, weights, **kw)
        assert got[0][0].dtype == torch.float64 and got[0][0].shape == leading
        assert_all_close(got[0] + got[1], want[0] + want[1], rtol=1e-9, atol=1e-10)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_linear_no_less_accurate_than_pytorch(dtype, device, rng):
    """Error against float64 no worse than eager PyTorch's in the same dtype (flash-attn style)."""
    args = linear_inputs((61,), 96, 1000, dtype, rng)
    weights = [torch.randn(61, generator=rng, dtype=torch.float64) for _ in range(2)]
    kw = dict(temperature=0.9, entropy=True, mean_logp=True)
    exact = stats_and_grads(ops.linear_logprobs, to(args, "cpu", torch.float64), "reference", weights, **kw)
    eager = stats_and_grads(eager_linear, to(args, device), None, weights, **kw)
    for backend in backends("linear_logprobs", device):
        if not supports(backend, device, dtype):
            continue
        got = stats_and_grads(ops.linear_logprobs, to(args, device), backend, weights, **kw)
        assert got[0][0].dtype == torch.float32
        for name, g, p, e in zip(["logprob", "entropy", "mean_logp", "d hidden", "d weight", "d bias"],
                                 got[0] + got[1], eager[0] + eager[1], exact[0] + exact[1], strict=True):
            err = (g.detach().cpu().double() - e).abs().max().item()
            eager_err = (p.detach().cpu().double() - e).abs().max().item()
            assert err <= 2 * eager_err + 1e-6 * max(1.0, e.abs().max().item()), (backend, name, err, eager_err)


def eager_linear(hidden, weight, labels, bias=None, temperature=1.0, ignore_index=-100, entropy=False,
                 mean_logp=False):
    """What verl and TRL run: logits in the input dtype, log-softmax in float32."""
    logits = torch.nn.functional.linear(hidden, weight, bias)
    return ops.TokenStats(*reference.token_stats(
        logits.reshape(-1, logits.shape[-1]), labels.reshape(-1), temperature, ignore_index, entropy, mean_logp
    )[:3])


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_linear_fused_triton_forward(dtype, monkeypatch, device, rng):
    """The Triton backend's other forward: matmul and online log-sum-exp in one kernel."""
    if "triton" not in ops.available_backends("linear_logprobs", device.type):
        pytest.skip(f"triton not available on {device.type}")
    args = linear_inputs((37,), 45, 101, dtype, rng)
    weights = [torch.randn(37, generator=rng, dtype=torch.float64) for _ in range(2)]
    kw = dict(temperature=0.7, entropy=True, mean_logp=True)
    want = stats_and_grads(ops.linear_logprobs, to(args, "cpu", torch.float64), "reference", weights, **kw)
    monkeypatch.setattr(logprobs_module, "TRITON_LINEAR_FORWARD", "fused")
    got = stats_and_grads(ops.linear_logprobs, to(args, device), "triton", weights, **kw)
    tol = dict(rtol=1e-9, atol=1e-10) if dtype == torch.float64 else dict(rtol=1e-4, atol=1e-4)
    assert_all_close(got[0] + got[1], want[0] + want[1], **tol)


def test_linear_fused_triton_forward_strided_bias(monkeypatch, device, rng):
    """The fused forward read the bias at bias_ptr + column, whatever its stride (a column
    of a [V, 3] tensor: log-probs off by 2)."""
    if "triton" not in ops.available_backends("linear_logprobs", device.type):
        pytest.skip(f"triton not available on {device.type}")
    hidden, weight, labels, bias = to(linear_inputs((9,), 16, 40, torch.float32, rng), device)
    strided = torch.stack([bias, bias + 1, bias - 1], 1)[:, 0]
    monkeypatch.setattr(logprobs_module, "TRITON_LINEAR_FORWARD", "fused")
    with ops.use_backend("triton"):
        got = ops.linear_logprobs(hidden, weight, labels, strided).logprob
    want = ops.linear_logprobs(hidden.cpu().double(), weight.cpu().double(), labels.cpu(), bias.cpu().double())
    torch.testing.assert_close(got.cpu().double(), want.logprob, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("offset", [300.0, 3000.0])
def test_mean_logp_of_logits_with_a_common_offset(offset, device, rng):
    """mean_logp = mean(z) - logsumexp(z): the Triton kernels summed z and subtracted V m, so
    an offset of 300 cost 8.6e-5 (3000: 6.4e-4) in float32, where the float32 reference is
    off by 1.5e-6 (2.7e-6); every backend is now within twice it, plus 1e-6 relative."""
    z = offset + torch.randn(8, 4097, generator=rng, dtype=torch.float64)
    labels = torch.randint(0, 4097, (8,), generator=rng)
    hidden = torch.randn(8, 16, generator=rng, dtype=torch.float64)
    weight = torch.randn(300, 16, generator=rng, dtype=torch.float64) * 0.25
    bias = offset + torch.randn(300, generator=rng, dtype=torch.float64)
    for name, args in (("logprobs_from_logits", [z, labels]),
                       ("linear_logprobs", [hidden, weight, labels % 300, bias])):
        op = getattr(ops, name)
        exact = op(*args, mean_logp=True).mean_logp
        with ops.use_backend("reference"):
            eager = (op(*to(args, "cpu", torch.float32), mean_logp=True).mean_logp.double() - exact).abs().max()
        for backend in backends(name, device):
            with ops.use_backend(backend):
                got = op(*to(args, device, torch.float32), mean_logp=True).mean_logp.cpu().double()
            assert (got - exact).abs().max() <= 2 * eager + 1e-6 * exact.abs().max(), (name, backend)


def far_apart(shape, stride, dtype, device):
    """A tensor of ``shape`` and ``stride`` whose elements lie more than 2^31 elements apart:
    the storage is reserved, not touched (gigabytes of address space, a few bytes written)."""
    span = sum((n - 1) * st for n, st in zip(shape, stride)) + 1
    try:
        base = torch.empty(span, dtype=dtype, device=device)
    except (RuntimeError, MemoryError) as e:
        pytest.skip(f"cannot reserve {span * dtype.itemsize / 2**30:.0f} GiB of address space: {e}")
    return base.as_strided(shape, stride)


def test_offsets_past_the_int32_range(monkeypatch, device, rng):
    """Column offsets times a stride of 2^30 pass 2^31: the Triton kernels multiplied them in
    int32 (the gradient of transposed logits, the fused forward's weight: a segmentation
    fault under the interpreter). Every backend gives the float64 reference's values."""
    logits = far_apart((2, 3), (1, 2**30), torch.float16, device)
    logits.copy_(torch.tensor([[1.0, 2.0, 3.0], [0.5, -1.0, 4.0]]))
    labels = torch.tensor([2, 0], device=device)
    exact = logits.detach().cpu().double().requires_grad_()
    (want,) = torch.autograd.grad(ops.logprobs_from_logits(exact, labels.cpu()).logprob.sum(), exact)
    for backend in backends("logprobs_from_logits", device):
        leaf = logits.detach().requires_grad_()
        with ops.use_backend(backend):
            (got,) = torch.autograd.grad(ops.logprobs_from_logits(leaf, labels).logprob.sum(), leaf)
        torch.testing.assert_close(got.cpu().double(), want, rtol=2e-3, atol=2e-3, msg=backend)

    weight = far_apart((4, 3), (1, 2**30), torch.float32, device)  # [V, H], H the far dimension
    weight.copy_(torch.randn(4, 3, generator=rng))
    hidden, labels = torch.randn(2, 3, generator=rng).to(device), torch.tensor([1, 3], device=device)
    want = ops.linear_logprobs(hidden.cpu().double(), weight.cpu().double(), labels.cpu()).logprob
    for forward in ("chunked", "fused"):
        monkeypatch.setattr(logprobs_module, "TRITON_LINEAR_FORWARD", forward)
        for backend in backends("linear_logprobs", device):
            with ops.use_backend(backend):
                got = ops.linear_logprobs(hidden, weight, labels).logprob
            torch.testing.assert_close(got.cpu().double(), want, rtol=1e-5, atol=1e-5, msg=f"{backend} {forward}")


def test_linear_chunks_cover_every_row(monkeypatch, rng):
    """With a budget of a few rows (forward) or columns (backward) per chunk, the torch
    backend gives what one chunk gives; the label may fall in any vocabulary slice."""
    args = linear_inputs((37,), 20, 50, torch.float64, rng)
    weights = [torch.randn(37, generator=rng, dtype=torch.float64) for _ in range(2)]
    kw = dict(entropy=True, mean_logp=True)
    whole = stats_and_grads(ops.linear_logprobs, args, "torch", weights, **kw)
    monkeypatch.setitem(logprobs_module.CHUNK_BYTES, "cpu", 37 * 8 * 7)  # 7 columns / 5 rows per chunk
    assert len(logprobs_module._chunks(50, 37, torch.float64, torch.device("cpu"))) == 8
    assert len(logprobs_module._chunks(37, 50, torch.float64, torch.device("cpu"))) == 8
    for backend in ["torch", "triton"] if "triton" in ops.available_backends("linear_logprobs", "cpu") else ["torch"]:
        chunked = stats_and_grads(ops.linear_logprobs, args, backend, weights, **kw)
        assert_all_close(chunked[0] + chunked[1], whole[0] + whole[1], rtol=1e-12, atol=1e-12)


def test_linear_ignored_rows_are_zero_with_zero_gradient(device, rng):
    hidden, weight, labels, bias = to(linear_inputs((9,), 20, 30, torch.float64, rng), device)
    labels[:] = -100
    labels[4] = 3
    for backend in backends("linear_logprobs", device):
        h = hidden.clone().requires_grad_()
        with ops.use_backend(backend):
            out = ops.linear_logprobs(h, weight, labels, bias, entropy=True, mean_logp=True)
            (out.logprob.sum() + out.entropy.sum()).backward()
        others = torch.arange(9, device=device) != 4
        for x in out:
            assert (x[others] == 0).all() and x[4] != 0
        assert (h.grad[others] == 0).all() and (h.grad[4] != 0).any()


def test_linear_extreme_logits_stay_finite(device, rng):
    """Logits of about 4e4 (hidden * 300 at temperature 0.05): every output finite and equal,
    to 1e-6 of the largest (float32 rounds the logits by about 0.004), to the float64
    reference on the same float32 inputs. The entropy of a near-one-hot row carries that
    rounding (up to 7e-4 in 2% of seeds, in eager float32 PyTorch as much): it must be no
    further from the reference than twice eager float32's entropy is."""
    hidden, weight, labels, bias = to(linear_inputs((16,), 32, 200, torch.float32, rng), device)
    hidden = hidden * 300
    kw = dict(temperature=0.05, entropy=True, mean_logp=True)
    with ops.use_backend("reference"):
        want = ops.linear_logprobs(*to([hidden, weight, labels, bias], "cpu", torch.float64), **kw)
    assert want.logprob.abs().max() > 1e4  # the case is extreme
    eager = (F.linear(hidden, weight, bias) / kw["temperature"]).log_softmax(-1)
    eager_entropy_error = (-(eager.exp() * eager).sum(-1).cpu().double() - want.entropy).abs().max().item()
    for backend in backends("linear_logprobs", device):
        with ops.use_backend(backend):
            out = ops.linear_logprobs(hidden, weight, labels, bias, **kw)
        for name, got, exact in zip(out._fields, out, want):
            assert torch.isfinite(got).all(), (backend, name)
            scale = exact.abs().max().item() + 1.0
            atol = 1e-6 * scale + (2 * eager_entropy_error if name == "entropy" else 0.0)
            torch.testing.assert_close(got.cpu().double(), exact, rtol=0, atol=atol,
                                       msg=lambda m: f"{backend} {name}: {m}")


def test_mean_logp_has_no_gradient(rng):
    hidden, weight, labels, _ = linear_inputs((4,), 8, 10, torch.float64, rng)
    out = ops.linear_logprobs(hidden.requires_grad_(), weight, labels, mean_logp=True)
    assert out.logprob.requires_grad and not out.mean_logp.requires_grad


def test_linear_under_autocast_computes_in_the_autocast_dtype(device, rng):
    """Under bf16 autocast float32 hidden, weight and bias go through the kernels in bf16, as
    F.linear's would (the trainer's forwards run under autocast on a GPU: the head ran in
    float32): outputs and gradients equal those of the bf16 call, gradients in float32."""
    args = to(linear_inputs((2, 9), 16, 40, torch.float32, rng), device)
    weights = [torch.randn(2, 9, generator=rng, dtype=torch.float64) for _ in range(2)]
    kw = dict(entropy=True, mean_logp=True)
    for backend in [b for b in backends("linear_logprobs", device) if supports(b, device, torch.bfloat16)]:
        want, want_grads = stats_and_grads(ops.linear_logprobs, to(args, device, torch.bfloat16), backend, weights,
                                           **kw)
        with torch.autocast(device.type, dtype=torch.bfloat16):
            got, grads = stats_and_grads(ops.linear_logprobs, args, backend, weights, **kw)
        for a, b in zip(got, want):
            assert a.dtype == torch.float32 and torch.equal(a, b), backend
        for g, w in zip(grads, want_grads):
            assert g.dtype == torch.float32 and torch.equal(g, w.float()), backend


def test_frozen_weight_gets_no_gradient(device, rng):
    hidden, weight, labels, bias = to(linear_inputs((7,), 20, 30, torch.float64, rng), device)
    hidden.requires_grad_()
    for backend in backends("linear_logprobs", device):
        with ops.use_backend(backend):
            ops.linear_logprobs(hidden, weight, labels, bias).logprob.sum().backward()
        assert weight.grad is None and hidden.grad is not None
        hidden.grad = None


@pytest.mark.parametrize("backend", ["torch", "triton", "reference"])
def test_linear_gradcheck_float64(backend, device, rng):
    if backend not in ops.available_backends("linear_logprobs", device.type):
        pytest.skip(f"{backend} not available on {device.type}")
    hidden, weight, labels, bias = to(linear_inputs((5,), 6, 19, torch.float64, rng), device)

    def fn(h, w, b):
        with ops.use_backend(backend):
            out = ops.linear_logprobs(h, w, labels, b, temperature=0.8, entropy=True)
        return out.logprob, out.entropy

    inputs = tuple(x.requires_grad_() for x in (hidden, weight, bias))
    assert torch.autograd.gradcheck(fn, inputs)


# ---- logprobs_from_logits ----


def logits_inputs(leading, V, dtype, rng):
    logits = (torch.randn(*leading, V, generator=rng, dtype=torch.float64) * 3).to(dtype)
    labels = torch.randint(0, V, leading, generator=rng)
    labels.view(-1)[1::3] = -100
    return [logits, labels]


@pytest.mark.parametrize("leading,V", LOGITS_SHAPES)
@pytest.mark.parametrize("temperature", [1.0, 0.6])
def test_logits_matches_reference_float64(leading, V, temperature, device, rng):
    args = logits_inputs(leading, V, torch.float64, rng)
    weights = [torch.randn(leading, generator=rng, dtype=torch.float64) for _ in range(2)]
    kw = dict(temperature=temperature, entropy=True, mean_logp=True)
    want = stats_and_grads(ops.logprobs_from_logits, args, "reference", weights, **kw)
    for backend in backends("logprobs_from_logits", device):
        got = stats_and_grads(ops.logprobs_from_logits, to(args, device), backend, weights, **kw)
        assert_all_close(got[0] + got[1], want[0] + want[1], rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_logits_no_less_accurate_than_pytorch(dtype, device, rng):
    args = logits_inputs((23,), 3001, dtype, rng)
    weights = [torch.randn(23, generator=rng, dtype=torch.float64) for _ in range(2)]
    kw = dict(entropy=True, mean_logp=True)
    exact = stats_and_grads(ops.logprobs_from_logits, to(args, "cpu", torch.float64), "reference", weights, **kw)
    eager = stats_and_grads(ops.logprobs_from_logits, to(args, device), "reference", weights, **kw)
    for backend in backends("logprobs_from_logits", device):
        if not supports(backend, device, dtype):
            continue
        got = stats_and_grads(ops.logprobs_from_logits, to(args, device), backend, weights, **kw)
        for g, p, e in zip(got[0] + got[1], eager[0] + eager[1], exact[0] + exact[1], strict=True):
            err = (g.detach().cpu().double() - e).abs().max().item()
            eager_err = (p.detach().cpu().double() - e).abs().max().item()
            assert err <= 2 * eager_err + 1e-6 * max(1.0, e.abs().max().item()), (backend, err, eager_err)


@pytest.mark.parametrize("temperature", [1e-2, 1e-4])
def test_logits_log_probabilities_at_low_temperatures(temperature, device, rng):
    """Three labels tied at the top: log-probability -log 3 and mean_logp as float64 gives
    them, at any temperature (the Triton kernels and the reference took z - (m + log s),
    which rounds log s to the float spacing at |m| = 25 / temperature: off by 5e-3 at 1e-4)."""
    logits = (torch.randn(4, 700, generator=rng) * 3).clamp(max=20)
    logits[:, [3, 300, 650]] = 25.0
    labels = torch.tensor([3, 300, 650, 3])
    mean = torch.log_softmax(logits.double() / temperature, -1).mean(-1)
    for backend in ["reference", *backends("logprobs_from_logits", device)]:
        with ops.use_backend(backend):
            out = ops.logprobs_from_logits(logits.to(device), labels.to(device), temperature=temperature,
                                           mean_logp=True)
        third = torch.full((4,), -math.log(3), dtype=torch.float64)
        torch.testing.assert_close(out.logprob.cpu().double(), third, rtol=0, atol=1e-6, msg=lambda m: f"{backend}: {m}")
        torch.testing.assert_close(out.mean_logp.cpu().double(), mean, rtol=1e-6, atol=0,
                                   msg=lambda m: f"{backend}: {m}")


def test_inplace_backward_overwrites_the_logits_with_their_gradient(device, rng):
    logits, labels = to(logits_inputs((6, 5), 77, torch.float32, rng), device)
    for backend in backends("logprobs_from_logits", device):
        expected_leaf = logits.cpu().double().requires_grad_()
        with ops.use_backend("reference"):
            ops.logprobs_from_logits(expected_leaf * 1.0, labels.cpu(), entropy=True).logprob.sum().backward()
        expected = expected_leaf.grad.to(device=device, dtype=logits.dtype)
        with ops.use_backend(backend):
            leaf = logits.clone().requires_grad_()
            scaled = leaf * 1.0  # a non-leaf: its memory is what the gradient overwrites
            out = ops.logprobs_from_logits(scaled, labels, entropy=True, inplace_backward=True)
            out.logprob.sum().backward()
        torch.testing.assert_close(leaf.grad, expected)
        torch.testing.assert_close(scaled.detach(), expected)


def test_inplace_backward_warns_when_the_logits_need_a_copy(device, rng):
    """The shifted logits[:, :-1] do not reshape to [N, V] without a copy: the gradient is
    still right, but it is written over the copy, so a UserWarning says no memory was reused.
    Logits that reshape as a view (a whole [B, T, V] tensor) give no warning."""
    full, labels = to(logits_inputs((2, 5), 11, torch.float32, rng), device)
    for backend in backends("logprobs_from_logits", device):
        leaf = full.clone().requires_grad_()
        with ops.use_backend(backend):
            (want,) = torch.autograd.grad(ops.logprobs_from_logits(leaf[:, :-1], labels[:, 1:]).logprob.sum(), leaf)
            shifted = (leaf * 1.0)[:, :-1]
            with pytest.warns(UserWarning, match=r"could not be reused in place because they do not reshape "
                                                 r"to \[N, V\] without a copy"):
                out = ops.logprobs_from_logits(shifted, labels[:, 1:], inplace_backward=True)
            (got,) = torch.autograd.grad(out.logprob.sum(), leaf)
            torch.testing.assert_close(got, want)
            with warnings.catch_warnings():
                warnings.simplefilter("error")
                ops.logprobs_from_logits(leaf * 1.0, labels, inplace_backward=True)


def test_inplace_backward_tells_autograd_the_logits_changed(device, rng):
    """After the in-place backward the logits hold the gradient: a second backward through
    them (retain_graph, or a z-loss on the same logits) must fail as PyTorch's own in-place
    ops make it fail, not use the overwritten values (Triton's raw stores gave a gradient off
    by 0.35 and 0.22)."""
    logits, labels = to(logits_inputs((4, 3), 50, torch.float32, rng), device)
    for backend in ["reference", *backends("logprobs_from_logits", device)]:
        with ops.use_backend(backend):
            scaled = logits.clone().requires_grad_() * 1.0
            out = ops.logprobs_from_logits(scaled, labels, inplace_backward=True)
            out.logprob.sum().backward(retain_graph=True)
            with pytest.raises(RuntimeError, match="modified by an inplace operation"):
                out.logprob.sum().backward()
            # a z-loss on the same logits: an error where the in-place backward runs first, else right
            leaf = logits.clone().requires_grad_()
            (want,) = torch.autograd.grad(ops.logprobs_from_logits(leaf * 1.0, labels).logprob.sum()
                                          + torch.logsumexp(leaf * 1.0, -1).square().sum(), leaf)
            scaled = leaf * 1.0
            loss = ops.logprobs_from_logits(scaled, labels, inplace_backward=True).logprob.sum()
            try:
                (got,) = torch.autograd.grad(loss + torch.logsumexp(scaled, -1).square().sum(), leaf)
            except RuntimeError as error:
                assert "modified by an inplace operation" in str(error)
            else:
                torch.testing.assert_close(got, want)


def test_inplace_backward_on_rows_sharing_memory(device, rng):
    """expand()ed logits reshape without a copy, but their rows share memory: one row's
    gradient would overwrite another's (Triton was off by 2.5): the gradient goes to a new
    tensor, with a warning."""
    base, _ = to(logits_inputs((1,), 40, torch.float32, rng), device)
    labels = torch.tensor([3, 17, 39], device=device)
    for backend in ["reference", *backends("logprobs_from_logits", device)]:
        leaf = base.clone().requires_grad_()
        with ops.use_backend(backend):
            (want,) = torch.autograd.grad(ops.logprobs_from_logits(leaf.expand(3, -1), labels).logprob.sum(), leaf)
            with pytest.warns(UserWarning, match="rows share memory"):
                out = ops.logprobs_from_logits((leaf * 1.0).expand(3, -1), labels, inplace_backward=True)
            (got,) = torch.autograd.grad(out.logprob.sum(), leaf)
        torch.testing.assert_close(got, want)


def test_inplace_backward_leaves_a_leaf_alone(device, rng):
    """On a leaf the gradient overwrote the leaf's own values and .grad aliased them (an
    optimizer step then computed x -= lr * x): a new tensor takes it, with a warning."""
    logits, labels = to(logits_inputs((4,), 9, torch.float32, rng), device)
    for backend in backends("logprobs_from_logits", device):
        leaf = logits.clone().requires_grad_()
        for view in (leaf, leaf.view(leaf.shape), leaf[:]):  # a view of a leaf writes over the leaf too
            leaf.grad = None
            with ops.use_backend(backend), pytest.warns(UserWarning, match="the logits are a leaf tensor"):
                ops.logprobs_from_logits(view, labels, inplace_backward=True).logprob.sum().backward()
            assert torch.equal(leaf.detach(), logits) and leaf.grad.data_ptr() != leaf.data_ptr(), backend


def test_the_raw_ops_check_what_they_index_by(device):
    """torch.ops.fastrl.* skip the wrappers' checks: a labels tensor shorter than the rows was
    read past its end by the Triton kernel (and gave fewer outputs than the fake on the others),
    an out-of-range label gave -inf or a plausible value, a temperature of 0 NaN."""
    logits, weight, hidden = torch.randn(3, 5, device=device), torch.randn(5, 4, device=device), \
        torch.randn(3, 4, device=device)
    raw = {"logprobs_from_logits": lambda labels, t=1.0: torch.ops.fastrl.logprobs_from_logits(
               logits, labels, t, -100, False, False, False),
           "linear_logprobs": lambda labels, t=1.0: torch.ops.fastrl.linear_logprobs(
               hidden, weight, labels, None, t, -100, False, False)}
    for op, call in raw.items():
        for backend in ["reference", *backends(op, device)]:
            with ops.use_backend(backend):
                with pytest.raises(ValueError, match=r"labels must be int64 of shape \[3\]"):
                    call(torch.zeros(2, dtype=torch.long, device=device))
                with pytest.raises(ValueError, match="temperature must be a finite number > 0"):
                    call(torch.zeros(3, dtype=torch.long, device=device), 0.0)
                with pytest.raises(ValueError, match="temperature must be >= .* for torch.float32 inputs"):
                    call(torch.zeros(3, dtype=torch.long, device=device), 1e-45)
                if device.type == "cpu":
                    for bad in (5, -5):
                        with pytest.raises(ValueError, match=rf"labels must be in \[0, 5\) or ignore_index \(-100\), "
                                                             rf"got {bad}"):
                            call(torch.tensor([0, bad, 1], device=device))
                ok = call(torch.tensor([0, -100, 4], device=device))[0]
                assert ok.shape == (3,) and ok[1] == 0, backend


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_a_temperature_whose_inverse_overflows_is_refused(dtype):
    temperature = 1e-45 if dtype == torch.float32 else 1e-320  # gave NaN log-probs
    logits, labels = torch.randn(3, 5, dtype=dtype), torch.tensor([0, 1, 2])
    with pytest.raises(ValueError, match=rf"temperature must be >= .* for {dtype} inputs"):
        ops.logprobs_from_logits(logits, labels, temperature=temperature)
    with pytest.raises(ValueError, match=rf"temperature must be >= .* for {dtype} inputs"):
        ops.linear_logprobs(torch.randn(3, 4, dtype=dtype), torch.randn(5, 4, dtype=dtype), labels,
                            temperature=temperature)
    assert torch.isfinite(ops.logprobs_from_logits(logits, labels, temperature=1e-30).logprob).all()


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_inplace_backward_in_float32_a_few_rows_at_a_time(dtype, monkeypatch, rng):
    """The torch backend's in-place backward of half-precision logits works on a few rows at
    a time in float32 (it made a float32 copy of all of them: twice the logits' memory); the
    gradient equals the one of a new tensor, with entropy and a temperature too."""
    logits, labels = logits_inputs((37,), 50, dtype, rng)
    monkeypatch.setitem(logprobs_module.CHUNK_BYTES, "cpu", 8 * 50 * 4 * 5)  # 5 rows per chunk here
    kw = dict(entropy=True, temperature=0.8)
    with ops.use_backend("torch"):
        leaf = logits.clone().requires_grad_()
        out = ops.logprobs_from_logits(leaf, labels, **kw)
        (want,) = torch.autograd.grad(out.logprob.sum() + out.entropy.sum(), leaf)
        scaled = logits.clone().requires_grad_() * 1.0
        out = ops.logprobs_from_logits(scaled, labels, inplace_backward=True, **kw)
        (out.logprob.sum() + out.entropy.sum()).backward()
    torch.testing.assert_close(scaled.detach(), want, rtol=0, atol=0)


@pytest.mark.parametrize("op", ["linear_logprobs", "logprobs_from_logits"])
def test_no_second_derivative(op, device, rng):
    """The backward kernels have no gradient: create_graph=True gave silently wrong second
    derivatives. Now its first-order gradient is right (a gradient penalty elsewhere in the
    graph still works) and backpropagating through it is an error (it was returned detached,
    so a penalty on it beside the log-probs silently read 0)."""
    args = op_args(op, device, rng)
    for backend in ["reference", *backends(op, device)]:
        leaves = [a.detach().requires_grad_() if isinstance(a, torch.Tensor) and a.is_floating_point() else a
                  for a in args]
        with ops.use_backend(backend):
            (want,) = torch.autograd.grad(getattr(ops, op)(*leaves).logprob.sum(), leaves[0])
            (got,) = torch.autograd.grad(getattr(ops, op)(*leaves).logprob.sum(), leaves[0], create_graph=True)
            torch.testing.assert_close(got, want)
            # (autograd.grad checks first that the gradient reaches leaves[0], and it does not: PyTorch's own error)
            with pytest.raises(RuntimeError, match="have no second derivative|not have been used in the graph"):
                torch.autograd.grad(got.square().sum(), leaves[0])
            logprob = getattr(ops, op)(*leaves).logprob
            (got,) = torch.autograd.grad(logprob.sum(), leaves[0], create_graph=True)
            with pytest.raises(RuntimeError, match="have no second derivative"):
                (logprob.sum() + got.square().sum()).backward()


@pytest.mark.parametrize("op", ["linear_logprobs", "logprobs_from_logits"])
def test_strided_labels(op, device, rng):
    """Labels that are a view with stride 2 (every other element of a longer tensor)."""
    if op == "linear_logprobs":
        args = linear_inputs((9,), 10, 37, torch.float64, rng)
        position = 2
    else:
        args = logits_inputs((9,), 37, torch.float64, rng)
        position = 1
    labels = args[position]
    strided = torch.stack([labels, torch.randint(0, 37, (9,), generator=rng)], 1).reshape(-1)[::2]
    assert strided.stride() == (2,) and torch.equal(strided, labels)
    weights = [torch.randn(9, generator=rng, dtype=torch.float64) for _ in range(2)]
    kw = dict(entropy=True, mean_logp=True)
    want = stats_and_grads(getattr(ops, op), args, "reference", weights, **kw)
    for backend in backends(op, device):
        args[position] = strided.to(device)
        got = stats_and_grads(getattr(ops, op), to(args, device), backend, weights, **kw)
        assert_all_close(got[0] + got[1], want[0] + want[1], rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("inplace", [False, True])
def test_logits_with_a_strided_vocabulary_dimension(inplace, device, rng):
    """The gradient of logits whose last dimension has stride != 1 (a transposed view of a
    [V, N] tensor), into a new tensor or over the logits."""
    logits, labels = logits_inputs((7,), 37, torch.float64, rng)
    weights = [torch.randn(7, generator=rng, dtype=torch.float64) for _ in range(2)]
    want = stats_and_grads(ops.logprobs_from_logits, [logits, labels], "reference", weights, entropy=True)
    for backend in backends("logprobs_from_logits", device):
        leaf = logits.T.contiguous().to(device).requires_grad_()  # [V, N]
        with ops.use_backend(backend):
            view = (leaf * 1.0).T if inplace else leaf.T  # [N, V], strides (1, N)
            assert view.stride(-1) != 1
            out = ops.logprobs_from_logits(view, labels.to(device), entropy=True, inplace_backward=inplace)
            loss = (out.logprob * weights[0].to(device)).sum() + (out.entropy * weights[1].to(device)).sum()
            (grad,) = torch.autograd.grad(loss, leaf)
        assert_all_close([out.logprob, out.entropy, grad.T], want[0] + want[1], rtol=1e-10, atol=1e-10)


def test_minus_inf_logits_are_a_masked_vocabulary(device, rng):
    """-inf logits (tokens that cannot come out, a masked vocabulary) are legal: entropy is
    torch.distributions.Categorical's, the gradient is 0 at those tokens and finite
    elsewhere, every backend as the reference; also where whole leading tiles are -inf."""
    by_hand = torch.tensor([[0.0, 1.0, float("-inf"), 2.0]], dtype=torch.float64)
    masked = torch.randn(3, 101, generator=rng, dtype=torch.float64) * 3
    masked[:, :70] = float("-inf")
    masked[1, 90] = float("-inf")
    for logits, labels in [(by_hand, torch.tensor([1])), (masked, torch.tensor([80, -100, 100]))]:
        weights = [torch.randn(labels.shape, generator=rng, dtype=torch.float64) for _ in range(2)]
        kw = dict(entropy=True, mean_logp=True)
        want = stats_and_grads(ops.logprobs_from_logits, [logits, labels], "reference", weights, **kw)
        valid = labels != -100
        categorical = torch.distributions.Categorical(logits=logits).entropy()
        torch.testing.assert_close(want[0][1][valid], categorical[valid], rtol=1e-12, atol=1e-12)  # [0.8324], ...
        grad = want[1][0]
        assert torch.isfinite(grad).all() and (grad[logits == float("-inf")] == 0).all()
        for backend in backends("logprobs_from_logits", device):
            got = stats_and_grads(ops.logprobs_from_logits, to([logits, labels], device), backend, weights, **kw)
            assert_all_close(got[0] + got[1], want[0] + want[1], rtol=1e-10, atol=1e-10)


def test_minus_inf_bias_in_linear_logprobs(device, rng):
    """A -inf bias masks tokens for every row (leading tiles of the vocabulary included)."""
    hidden, weight, labels, bias = linear_inputs((9,), 10, 101, torch.float64, rng)
    bias[:70] = float("-inf")
    labels[labels < 70] = 70
    weights = [torch.randn(9, generator=rng, dtype=torch.float64) for _ in range(2)]
    kw = dict(entropy=True, mean_logp=True)
    want = stats_and_grads(ops.linear_logprobs, [hidden, weight, labels, bias], "reference", weights, **kw)
    assert all(torch.isfinite(g).all() for g in want[1]) and torch.isfinite(want[0][1]).all()
    for backend in backends("linear_logprobs", device):
        got = stats_and_grads(ops.linear_logprobs, to([hidden, weight, labels, bias], device), backend, weights, **kw)
        assert_all_close(got[0] + got[1], want[0] + want[1], rtol=1e-10, atol=1e-10)


# ---- torch.library integration ----


def op_args(op, device, rng):
    if op == "linear_logprobs":
        hidden, weight, labels, bias = linear_inputs((9,), 20, 37, torch.float32, rng)
        return to([hidden, weight, labels, bias, 0.9, -100, True, True], device)
    logits, labels = logits_inputs((9,), 37, torch.float32, rng)
    return to([logits.reshape(9, 37), labels, 0.9, -100, True, True, False], device)


@pytest.mark.parametrize("op", ["linear_logprobs", "logprobs_from_logits"])
def test_opcheck(op, device, rng):
    """On every backend, the reference's too (its backward called torch.autograd.grad
    inside the kernel, which records nothing under opcheck's schema-check mode)."""
    for backend in ["reference", *backends(op, device)]:
        args = op_args(op, device, rng)
        for i in (0, 1) if op == "linear_logprobs" else (0,):
            args[i].requires_grad_()
        with ops.use_backend(backend):
            torch.library.opcheck(getattr(torch.ops.fastrl, op).default, tuple(args))


@pytest.mark.parametrize("op", ["linear_logprobs", "logprobs_from_logits"])
def test_backward_opcheck_with_and_without_the_backend(op, device, rng):
    """The backward ops with the forward's backend named, and without it (as in a graph compiled
    before the argument existed): linear_logprobs_backward's fake took no default, so opcheck
    and torch.compile failed there while the eager op ran."""
    args = op_args(op, device, rng)
    out = getattr(torch.ops.fastrl, op)(*args)
    grads = (torch.randn_like(out[0]), torch.randn_like(out[1]))
    if op == "linear_logprobs":
        hidden, weight, labels, bias, temperature, ignore_index = args[:6]
        inputs = (hidden, weight, labels, bias, out[3], out[1], temperature, ignore_index, True)
    else:
        logits, labels, temperature, ignore_index = args[:4]
        inputs = (logits, labels, out[3], out[1], temperature, ignore_index)
    backward = getattr(torch.ops.fastrl, f"{op}_backward").default
    for backend in ((), (None,), ("reference",)):
        torch.library.opcheck(backward, grads + inputs + backend)


def test_backward_under_a_dispatch_mode(device, rng):
    """The backward runs under a TorchDispatchMode (FlopCounterMode) on every backend."""
    from torch.utils.flop_counter import FlopCounterMode

    for op in ("linear_logprobs", "logprobs_from_logits"):
        for backend in ["reference", *backends(op, device)]:
            args = op_args(op, device, rng)
            args[0].requires_grad_()
            with ops.use_backend(backend), FlopCounterMode(display=False):
                out = torch.ops.fastrl.__getattr__(op)(*args)
                (grad,) = torch.autograd.grad(out[0].sum() + out[1].sum(), args[0])
            assert torch.isfinite(grad).all() and grad.abs().sum() > 0, (op, backend)


@pytest.mark.parametrize("op", ["linear_logprobs", "logprobs_from_logits"])
def test_compile_fullgraph_equals_eager(op, device, rng):
    args = op_args(op, device, rng)
    n_float = 2 if op == "linear_logprobs" else 1
    leaves = [a.requires_grad_() if i < n_float else a for i, a in enumerate(args)]
    public = getattr(ops, op)
    call = (lambda h, w, l, b: public(h, w, l, b, 0.9, entropy=True, mean_logp=True)) if n_float == 2 else (
        lambda z, l: public(z, l, 0.9, entropy=True, mean_logp=True))
    inputs = leaves[:4] if n_float == 2 else leaves[:2]

    def loss(*a):
        out = call(*a)
        return out.logprob.sum() + out.entropy.sum() + out.mean_logp.sum()

    eager = loss(*inputs)
    eager_grads = torch.autograd.grad(eager, leaves[:n_float])
    compiled = torch.compile(loss, fullgraph=True)(*inputs)
    compiled_grads = torch.autograd.grad(compiled, leaves[:n_float])
    torch.testing.assert_close(compiled, eager)
    assert_all_close(compiled_grads, eager_grads, rtol=1e-5, atol=1e-5)


# ---- bad inputs: one test each, the error names the argument ----


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_inputs_on_cpu(bad, rng):
    """NaN or +inf in the logits, hidden states, weight or bias is an error naming it, on
    every backend (a -inf logit or bias is not: see the masked-vocabulary tests)."""
    hidden, weight, labels, bias = linear_inputs((5,), 8, 10, torch.float32, rng)
    for backend in ops.available_backends("linear_logprobs", "cpu"):
        with ops.use_backend(backend):
            for name, index in [("hidden", 0), ("weight", 1), ("bias", 3)]:
                args = [hidden, weight, labels, bias]
                args[index] = args[index].clone()
                args[index].view(-1)[3] = bad
                with pytest.raises(ValueError, match=f"{name} contains NaN"):
                    ops.linear_logprobs(*args)
            logits = torch.zeros(5, 10)
            logits[2, 3] = bad
            with pytest.raises(ValueError, match=r"logits contains NaN or \+Inf"):
                ops.logprobs_from_logits(logits, labels)


def test_label_out_of_range_on_cpu(rng):
    hidden, weight, labels, _ = linear_inputs((5,), 8, 10, torch.float32, rng)
    labels[2] = 10
    with pytest.raises(ValueError, match=r"labels must be in \[0, 10\) or ignore_index=-100; found 10"):
        ops.linear_logprobs(hidden, weight, labels)
    labels[2] = -3
    with pytest.raises(ValueError, match="found -3"):
        ops.logprobs_from_logits(torch.zeros(5, 10), labels)


def test_narrow_integer_labels_are_checked_as_integers():
    """Compared in their own dtype, uint8 156 and int8 -100 read as ignore_index (-100, 156):
    the check passed them and the kernel failed on the index."""
    logits = torch.zeros(2, 11)
    with pytest.raises(ValueError, match="ignore_index=-100; found 156"):
        ops.logprobs_from_logits(logits, torch.tensor([156, 3], dtype=torch.uint8))
    with pytest.raises(ValueError, match="ignore_index=156; found -100"):
        ops.logprobs_from_logits(logits, torch.tensor([-100, 3], dtype=torch.int8), ignore_index=156)


def test_shape_mismatches(rng):
    hidden, weight, labels, bias = linear_inputs((5,), 8, 10, torch.float32, rng)
    with pytest.raises(ValueError, match=r"weight must be \[V, 8\]"):
        ops.linear_logprobs(hidden, weight[:, :7], labels)
    with pytest.raises(ValueError, match=r"labels must have the shape \(5,\) of hidden"):
        ops.linear_logprobs(hidden, weight, labels[:4])
    with pytest.raises(ValueError, match=r"bias must be \[10\]"):
        ops.linear_logprobs(hidden, weight, labels, bias[:9])
    with pytest.raises(ValueError, match="weight must have 2 dimensions"):
        ops.linear_logprobs(hidden, weight[0], labels)
    with pytest.raises(ValueError, match=r"weight must be \[V, 8\] with V > 0"):
        ops.linear_logprobs(hidden, weight[:0], torch.full_like(labels, -100))
    with pytest.raises(ValueError, match=r"labels must have the shape \(5,\) of logits"):
        ops.logprobs_from_logits(torch.zeros(5, 10), labels[None])
    with pytest.raises(ValueError, match=r"hidden must be \[\.\.\., H\] with a hidden size H > 0"):
        ops.linear_logprobs(hidden[:, :0], weight[:, :0], labels)  # was a reshape error


def test_dtype_mismatches(rng):
    hidden, weight, labels, bias = linear_inputs((5,), 8, 10, torch.float32, rng)
    with pytest.raises(TypeError, match="weight has dtype torch.float64 but hidden has torch.float32"):
        ops.linear_logprobs(hidden, weight.double(), labels)
    with pytest.raises(TypeError, match="bias has dtype torch.float16"):
        ops.linear_logprobs(hidden, weight, labels, bias.half())
    with pytest.raises(TypeError, match="labels must be an integer tensor"):
        ops.linear_logprobs(hidden, weight, labels.float())
    with pytest.raises(TypeError, match="hidden must be float16, bfloat16, float32 or float64"):
        ops.linear_logprobs(hidden.long(), weight, labels)
    with pytest.raises(TypeError, match="logits must be float16"):
        ops.logprobs_from_logits(labels, labels)


@pytest.mark.parametrize("temperature", [0.0, -1.0, float("nan")])
def test_temperature_must_be_positive(temperature, rng):
    hidden, weight, labels, _ = linear_inputs((5,), 8, 10, torch.float32, rng)
    with pytest.raises(ValueError, match="temperature must be"):
        ops.linear_logprobs(hidden, weight, labels, temperature=temperature)
    with pytest.raises(ValueError, match="temperature must be"):
        ops.logprobs_from_logits(torch.zeros(5, 10), labels, temperature=temperature)


def test_option_types(rng):
    hidden, weight, labels, _ = linear_inputs((5,), 8, 10, torch.float32, rng)
    with pytest.raises(TypeError, match="ignore_index must be an int"):
        ops.linear_logprobs(hidden, weight, labels, ignore_index=-100.0)
    with pytest.raises(TypeError, match="entropy must be a bool"):
        ops.linear_logprobs(hidden, weight, labels, entropy=1)
    with pytest.raises(TypeError, match="inplace_backward must be a bool"):
        ops.logprobs_from_logits(torch.zeros(5, 10), labels, inplace_backward="yes")
    for ignore_index in (2**63, -(2**63) - 1):  # past the schema's int64
        with pytest.raises(ValueError, match="ignore_index must fit in int64"):
            ops.logprobs_from_logits(torch.zeros(5, 10), labels, ignore_index=ignore_index)
        with pytest.raises(ValueError, match="ignore_index must fit in int64"):
            ops.linear_logprobs(hidden, weight, labels, ignore_index=ignore_index)


def test_device_mismatch_is_reported(rng):
    hidden, weight, labels, _ = linear_inputs((5,), 8, 10, torch.float32, rng)
    with pytest.raises(ValueError, match="weight is on meta but hidden is on cpu"):
        ops.linear_logprobs(hidden, weight.to("meta"), labels)


@pytest.mark.parametrize("temperature", [float("inf"), -float("inf")])
def test_an_infinite_temperature_is_refused(temperature, rng):
    """+inf passed every other check (1 / inf is finite): the logits became all 0 and each
    logprob -log V, silently."""
    hidden, weight, labels, _ = linear_inputs((5,), 8, 10, torch.float32, rng)
    with pytest.raises(ValueError, match="temperature must be finite"):
        ops.linear_logprobs(hidden, weight, labels, temperature=temperature)
    with pytest.raises(ValueError, match="temperature must be finite"):
        ops.logprobs_from_logits(torch.zeros(5, 10), labels, temperature=temperature)
