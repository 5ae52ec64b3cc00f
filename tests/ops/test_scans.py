"""Token scans against their references (DESIGN 3.1, 4) on every backend present."""
import math
import warnings

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import fastrl.ops as ops
from fastrl.ops import reference

SCANS = ("discounted_returns", "gae", "min_form_returns")
SHAPES = [(1, 1), (3, 1), (4, 7), (5, 255), (3, 256), (2, 257), (6, 1000), (2, 4097)]
MASK_DTYPES = [torch.bool, torch.float32, torch.int64, torch.bfloat16, torch.uint8]


def compiled_backends(op, device):
    """The non-reference backends of ``op`` on ``device``: what the tests hold to the reference."""
    found = [b for b in ops.available_backends(op, device.type) if b != "reference"]
    if not found:
        pytest.skip(f"no compiled backend for {op} on {device.type}")
    return found


def make_mask(shape, rng, dtype=torch.bool, p_valid=0.7):
    """Holes inside rows, one empty row, one full row, one left-aligned response."""
    B, T = shape
    valid = torch.rand(shape, generator=rng) < p_valid
    if B > 1:
        valid[0] = False
    if B > 2:
        valid[1] = True
    if B > 3:
        valid[2] = torch.arange(T) < max(1, T // 2)
    return valid.to(dtype)


def make_steps(shape, rng):
    """Random step tokens, a row without any, a row with one, a row with all."""
    B, T = shape
    steps = torch.rand(shape, generator=rng) < 0.2
    if B > 1:
        steps[1] = False
    if B > 2:
        steps[2] = False
        steps[2, T - 1] = True
    if B > 4:
        steps[4] = True
    return steps


def inputs(op, shape, dtype, rng, mask_dtype=torch.bool):
    x = torch.randn(shape, generator=rng, dtype=torch.float64).to(dtype)
    mask = make_mask(shape, rng, mask_dtype)
    if op == "discounted_returns":
        return (x, mask, 0.97)
    if op == "gae":
        values = torch.randn(shape, generator=rng, dtype=torch.float64).to(dtype)
        return (x, values, mask, 0.99, 0.95)
    return (x, make_steps(shape, rng), mask, 0.3)


def call(op, args, backend=None, **kw):
    with ops.use_backend(backend):
        out = getattr(ops, op)(*args, **kw)
    return out if isinstance(out, tuple) else (out,)


def float_args_to(args, op, dtype):
    """The scores (and values) in ``dtype``; masks and scalars unchanged."""
    n_float = 2 if op == "gae" else 1
    return tuple(a.to(dtype) if i < n_float else a for i, a in enumerate(args))


def to(args, device):
    return tuple(a.to(device) if isinstance(a, torch.Tensor) else a for a in args)


def modes(op):
    return ["soft", "strict", "sum"] if op == "min_form_returns" else [None]


def op_cases():
    return [(op, mode) for op in SCANS for mode in modes(op)]


def kwargs(mode):
    return {} if mode is None else {"mode": mode}


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("op,mode", op_cases())
def test_matches_reference_float64(op, mode, shape, device, rng):
    args = inputs(op, shape, torch.float64, rng)
    want = call(op, args, "reference", **kwargs(mode))
    for backend in compiled_backends(op, device):
        got = call(op, to(args, device), backend, **kwargs(mode))
        for g, w in zip(got, want):
            assert g.dtype == torch.float64
            torch.testing.assert_close(g.cpu(), w, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("op,mode", op_cases())
def test_no_less_accurate_than_pytorch(op, mode, dtype, device, rng):
    """In each input dtype, the kernel's error against the float64 reference is no
    worse than the reference's own error when it runs in float32 (flash-attn style)."""
    args = inputs(op, (6, 1000), dtype, rng)
    exact = call(op, float_args_to(args, op, torch.float64), "reference", **kwargs(mode))
    pytorch = call(op, args, "reference", **kwargs(mode))
    for backend in compiled_backends(op, device):
        got = call(op, to(args, device), backend, **kwargs(mode))
        for g, p, e in zip(got, pytorch, exact):
            assert g.dtype == torch.float32
            kernel_err = (g.cpu().double() - e).abs().max().item()
            pytorch_err = (p.double() - e).abs().max().item()
            assert kernel_err <= 2 * pytorch_err + 1e-5 * max(1.0, e.abs().max().item()), (
                backend, kernel_err, pytorch_err)


@pytest.mark.parametrize("mask_dtype", MASK_DTYPES)
@pytest.mark.parametrize("op,mode", op_cases())
def test_any_mask_dtype(op, mode, mask_dtype, device, rng):
    args = inputs(op, (5, 300), torch.float64, rng, mask_dtype)
    want = call(op, inputs_with_bool_masks(op, args), "reference", **kwargs(mode))
    for backend in ops.available_backends(op, device.type):
        got = call(op, to(args, device), backend, **kwargs(mode))
        for g, w in zip(got, want):
            torch.testing.assert_close(g.cpu(), w, rtol=1e-10, atol=1e-10)


def inputs_with_bool_masks(op, args):
    n_masks = 2 if op == "min_form_returns" else 1
    first = 1 if op != "gae" else 2
    return tuple(a != 0 if first <= i < first + n_masks else a for i, a in enumerate(args))


def test_negative_zero_in_a_float_mask_is_zero(device):
    rewards = torch.ones(1, 3, dtype=torch.float64, device=device)
    mask = torch.tensor([[1.0, -0.0, 1.0]], device=device)
    for backend in ops.available_backends("discounted_returns", device.type):
        with ops.use_backend(backend):
            out = ops.discounted_returns(rewards, mask, 1.0)
        assert out.cpu().tolist() == [[2.0, 0.0, 1.0]]


FLOAT8_DTYPES = [torch.float8_e4m3fn, torch.float8_e5m2, torch.float8_e4m3fnuz, torch.float8_e5m2fnuz]


@pytest.mark.parametrize("mask_dtype", [torch.float16, torch.bfloat16, *FLOAT8_DTYPES])
def test_negative_zero_in_any_float_mask_is_zero(mask_dtype, device):
    """A 1-byte float mask too: -0.0 (0x80 in e4m3fn and e5m2) is 0. In the fnuz float8s
    0x80 is NaN, which is nonzero, as the reference's mask != 0 says."""
    bits = torch.tensor([[0x38, 0x80, 0x38, 0x00]], dtype=torch.uint8)
    mask = bits.view(mask_dtype) if mask_dtype.itemsize == 1 else torch.tensor([[1.0, -0.0, 1.0, 0.0]]).to(mask_dtype)
    assert bool(mask[0, 1] != 0) == (mask_dtype in (torch.float8_e4m3fnuz, torch.float8_e5m2fnuz))
    for op, mode in op_cases():
        args = inputs(op, (1, 4), torch.float64, torch.Generator().manual_seed(0))
        args = tuple(mask if isinstance(a, torch.Tensor) and not a.is_floating_point() else a for a in args)
        want = call(op, args, "reference", **kwargs(mode))
        for backend in ops.available_backends(op, device.type):
            got = call(op, to(args, device), backend, **kwargs(mode))
            for g, w in zip(got, want):
                torch.testing.assert_close(g.cpu(), w, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("mask_dtype", [torch.uint8, torch.int8, torch.int64, torch.float32])
@pytest.mark.parametrize("op,mode", op_cases())
def test_any_nonzero_mask_value_is_valid(op, mode, mask_dtype, device, rng):
    """Masks holding 2 or 3, not only 1 (e.g. is_step_end + is_last as a step mask): a
    byte-wise AND of two such masks (2 & 1 = 0) must not drop a step."""
    args = inputs(op, (5, 300), torch.float64, rng)
    wide = tuple(a * torch.randint(1, 4, a.shape, generator=rng).to(mask_dtype)  # each mask its own values
                 if isinstance(a, torch.Tensor) and a.dtype == torch.bool else a for a in args)
    want = call(op, args, "reference", **kwargs(mode))
    for backend in ops.available_backends(op, device.type):
        got = call(op, to(wide, device), backend, **kwargs(mode))
        for g, w in zip(got, want):
            torch.testing.assert_close(g.cpu(), w, rtol=1e-10, atol=1e-10)


def test_min_form_step_mask_of_two_with_a_one_mask():
    """The audit's case: the final token is both a step end and the last token (step_mask 2)."""
    scores = torch.tensor([[0.0, 0.8, 0.0, 0.0, 0.3]])
    step_mask = torch.tensor([[0, 1, 0, 0, 2]], dtype=torch.uint8)
    for backend in ops.available_backends("min_form_returns", "cpu"):
        with ops.use_backend(backend):
            rewards, returns = ops.min_form_returns(scores, step_mask, torch.ones(1, 5, dtype=torch.int64),
                                                    mode="strict")
        torch.testing.assert_close(rewards, torch.tensor([[0.0, 0.8, 0.0, 0.0, 0.3]]))
        torch.testing.assert_close(returns, torch.full((1, 5), 0.3))


@pytest.mark.parametrize("op,mode", op_cases())
def test_empty_time_dimension(op, mode, device):
    """T = 0: [B, 0] outputs on every backend (and whitened GAE too)."""
    args = to(inputs(op, (2, 0), torch.float32, torch.Generator().manual_seed(0)), device)
    for backend in ops.available_backends(op, device.type):
        for kw in [kwargs(mode)] + ([{"whiten": True}] if op == "gae" else []):
            for out in call(op, args, backend, **kw):
                assert out.shape == (2, 0) and out.dtype == torch.float32, backend


@pytest.mark.parametrize("op,mode", op_cases())
def test_no_gradient_on_any_backend(op, mode, device, rng):
    """Reward-side ops have no gradient: on every backend, through the public function or
    the op, outputs never require grad (no graph through the reference's PyTorch calls, no
    output of a compiled kernel that warns on backward)."""
    args = to(inputs(op, (3, 20), torch.float32, rng), device)
    args = tuple(a.requires_grad_() if isinstance(a, torch.Tensor) and a.is_floating_point() else a for a in args)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for backend in ops.available_backends(op, device.type):
            for kw in [kwargs(mode)] + ([{"whiten": True}] if op == "gae" else []):
                for out in call(op, args, backend, **kw):
                    assert not out.requires_grad and out.grad_fn is None, backend
            with ops.use_backend(backend):
                for out in getattr(torch.ops.fastrl, op)(*args, *([mode] if mode else [])):
                    assert not out.requires_grad, backend
    torch.library.opcheck(getattr(torch.ops.fastrl, op).default, args + ((mode,) if mode else ()))


@pytest.mark.parametrize("op,mode", op_cases())
def test_masked_positions_read_zero(op, mode, device, rng):
    args = to(inputs(op, (4, 129), torch.float32, rng), device)
    mask = args[2] if op == "gae" else (args[1] if op == "discounted_returns" else args[2])
    for backend in ops.available_backends(op, device.type):
        for out in call(op, args, backend, **kwargs(mode)):
            assert (out[mask == 0] == 0).all()
            assert torch.isfinite(out).all()


# ---- the references against hand-computed values ----


def test_discounted_returns_by_hand():
    r = torch.tensor([[1.0, 2.0, 3.0, 4.0]], dtype=torch.float64)
    m = torch.tensor([[1, 0, 1, 0]])
    for backend in ops.available_backends("discounted_returns", "cpu"):
        with ops.use_backend(backend):
            assert ops.discounted_returns(r, m, 0.5).tolist() == [[2.5, 0.0, 3.0, 0.0]]


def test_gae_by_hand():
    r = torch.tensor([[0.0, 0.0, 7.0, 1.0]], dtype=torch.float64)
    v = torch.tensor([[0.5, 0.2, 9.0, 0.1]], dtype=torch.float64)
    m = torch.tensor([[1, 1, 0, 1]])
    for backend in ops.available_backends("gae", "cpu"):
        with ops.use_backend(backend):
            adv, ret = ops.gae(r, v, m, gamma=1.0, lam=1.0)
            torch.testing.assert_close(adv, torch.tensor([[0.5, 0.8, 0.0, 0.9]], dtype=torch.float64))
            torch.testing.assert_close(ret, torch.tensor([[1.0, 1.0, 0.0, 1.0]], dtype=torch.float64))
            # gamma = 0.5, lam = 0.5: delta = [0.5*0.2-0.5, 0.5*0.1-0.2, -, 1-0.1]
            adv, _ = ops.gae(r, v, m, gamma=0.5, lam=0.5)
            d = [-0.4, -0.15, 0.0, 0.9]
            a3 = d[3]
            a1 = d[1] + 0.25 * a3
            a0 = d[0] + 0.25 * a1
            torch.testing.assert_close(adv, torch.tensor([[a0, a1, 0.0, a3]], dtype=torch.float64))


def test_min_form_by_hand():
    s = torch.tensor([[0.5, 0.0, -0.2, 0.0, 0.8, 0.0]], dtype=torch.float64)
    steps = torch.tensor([[1, 0, 1, 0, 1, 0]])
    m = torch.ones(1, 6)
    w = torch.softmax(-torch.tensor([0.5, -0.2, 0.8], dtype=torch.float64) / 0.5, 0)
    tr = w * torch.tensor([0.5, -0.2, 0.8], dtype=torch.float64)
    for backend in ops.available_backends("min_form_returns", "cpu"):
        with ops.use_backend(backend):
            rew, ret = ops.min_form_returns(s, steps, m, mode="strict")
            assert ret.tolist() == [[-0.2, -0.2, -0.2, 0.8, 0.8, 0.0]]
            assert rew.tolist() == [[0.5, 0.0, -0.2, 0.0, 0.8, 0.0]]
            rew, ret = ops.min_form_returns(s, steps, m, temperature=0.5, mode="soft")
            want = [tr.sum(), tr[1:].sum(), tr[1:].sum(), tr[2], tr[2], 0.0]
            torch.testing.assert_close(ret[0], torch.tensor(want, dtype=torch.float64))
            _, ret = ops.min_form_returns(s, steps, m, mode="sum")
            torch.testing.assert_close(ret[0], torch.tensor([1.1, 0.6, 0.6, 0.8, 0.8, 0.0], dtype=torch.float64))


def test_gae_whiten_matches_verl_masked_whiten(rng):
    r, v, m, g, lam = inputs("gae", (6, 50), torch.float64, rng)
    adv, ret = ops.gae(r, v, m, g, lam)
    wadv, wret = ops.gae(r, v, m, g, lam, whiten=True)
    torch.testing.assert_close(wret, ret)
    sel = adv[m]
    # verl: (x - masked_mean) * rsqrt(unbiased masked_var + 1e-8), here 0 where masked
    want = (adv - sel.mean()) * torch.rsqrt(sel.var(unbiased=True) + 1e-8) * m
    torch.testing.assert_close(wadv, want)
    assert wadv[m].mean().abs() < 1e-10


def test_whiten_with_one_valid_token_is_zero_not_nan():
    m = torch.zeros(2, 3, dtype=torch.bool)
    m[1, 1] = True
    adv, _ = ops.gae(torch.ones(2, 3), torch.zeros(2, 3), m, whiten=True)
    assert adv.tolist() == [[0.0] * 3, [0.0] * 3]


# ---- properties ----

row = st.integers(min_value=1, max_value=40).flatmap(
    lambda T: st.tuples(
        st.lists(st.integers(-100, 100), min_size=T, max_size=T),
        st.lists(st.booleans(), min_size=T, max_size=T),
        st.lists(st.booleans(), min_size=T, max_size=T),
    )
)


@settings(max_examples=60, deadline=None)
@given(row)
def test_strict_returns_never_decrease_up_to_the_last_step(case):
    scores, steps, valid = case
    s = torch.tensor([scores], dtype=torch.float64) / 100
    st_, m = torch.tensor([steps]), torch.tensor([valid])
    for backend in ops.available_backends("min_form_returns", "cpu"):
        with ops.use_backend(backend):
            _, ret = ops.min_form_returns(s, st_, m, mode="strict")
        pos = (st_ & m)[0].nonzero().flatten()
        if len(pos) == 0:
            assert (ret == 0).all()
            continue
        upto = m[0, : pos[-1] + 1]
        vals = ret[0, : pos[-1] + 1][upto]
        assert (vals[1:] >= vals[:-1]).all()
        assert (ret[0, pos[-1] + 1 :] == 0).all()


@pytest.mark.parametrize("scores", [[0.9, 0.2, 0.7, 0.5], [0.2, 0.7, 0.5, 0.9], [0.5, 1.0, 0.7, 0.6],
                                    [-0.5, 1.0, 0.7, 0.6], [0.7, -0.3, -0.2, 0.1]])
def test_soft_weights_with_logits_past_float32(scores, device):
    """At a temperature of 1e-39 (float32 scores) -s/T overflows: the lowest step takes all
    the weight wherever it comes and whatever its sign (the C++ scan's online softmax
    summed exp(-inf - -inf) = NaN where the first logit was -inf; every logit -inf (scores
    of 0.5 and more) or one +inf (a negative score) made every backend NaN)."""
    s = torch.tensor([scores], device=device)
    ones = torch.ones(1, 4, dtype=torch.bool, device=device)
    lowest = torch.tensor(scores).argmin().item()
    want = torch.where(torch.arange(4) <= lowest, min(scores), 0.0)[None]
    for backend in ops.available_backends("min_form_returns", device.type):
        for temperature in (1e-39, 1e-45):
            with ops.use_backend(backend):
                _, ret = ops.min_form_returns(s, ones, ones, temperature, "soft")
            torch.testing.assert_close(ret.cpu(), want, msg=f"{backend} {temperature}")


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64])
def test_soft_weights_at_a_temperature_past_the_accumulator(dtype, device):
    """A temperature of 1e300 is inf in float32, what float32, bf16 and fp16 accumulate in:
    the weights are uniform, as the limit (the C++ scan's first step divided -inf by inf: NaN)."""
    s = torch.tensor([[0.5, -0.25, 1.0]], dtype=dtype, device=device)
    ones = torch.ones(1, 3, dtype=torch.bool, device=device)
    want = torch.tensor([[5 / 12, 1 / 4, 1 / 3]], dtype=reference.output_dtype(s))
    for backend in ops.available_backends("min_form_returns", device.type):
        with ops.use_backend(backend):
            _, ret = ops.min_form_returns(s, ones, ones, 1e300, "soft")
        torch.testing.assert_close(ret.cpu(), want, msg=backend)


def test_a_temperature_that_is_0_in_the_scores_dtype():
    s = torch.ones(1, 3)
    with pytest.raises(ValueError, match="temperature 1e-46 is 0 in float32"):
        ops.min_form_returns(s, s, s, 1e-46, "soft")
    ops.min_form_returns(s.double(), s, s, 1e-46, "soft")  # a float64 number
    ops.min_form_returns(s, s, s, 1e-46, "strict")  # no weights


@settings(max_examples=60, deadline=None)
@given(row)
def test_soft_tends_to_the_minimum_as_temperature_goes_to_zero(case):
    scores, steps, valid = case
    steps = [a and b for a, b in zip(steps, valid)]
    if not any(steps):
        return
    s = torch.tensor([scores], dtype=torch.float64) / 100
    step_scores = s[0][torch.tensor(steps)]
    lowest = step_scores.min()
    if (step_scores == lowest).sum() > 1:
        return  # the lowest step must be unique
    k = [i for i, on in enumerate(steps) if on and s[0, i] == lowest][0]
    for backend in ops.available_backends("min_form_returns", "cpu"):
        with ops.use_backend(backend):
            _, ret = ops.min_form_returns(s, torch.tensor([steps]), torch.tensor([valid]), 1e-4, "soft")
        m = torch.tensor(valid)
        before = ret[0, : k + 1][m[: k + 1]]
        after = ret[0, k + 1 :]
        torch.testing.assert_close(before, torch.full_like(before, lowest.item()), atol=1e-12, rtol=0)
        assert after.abs().max() < 1e-12 if after.numel() else True


@settings(max_examples=40, deadline=None)
@given(row)
def test_sum_mode_equals_discounted_returns_of_the_token_rewards(case):
    scores, steps, valid = case
    s = torch.tensor([scores], dtype=torch.float64) / 100
    st_, m = torch.tensor([steps]), torch.tensor([valid])
    for backend in ops.available_backends("min_form_returns", "cpu"):
        with ops.use_backend(backend):
            rewards, ret = ops.min_form_returns(s, st_, m, mode="sum")
            torch.testing.assert_close(ret, ops.discounted_returns(rewards, m, 1.0))


# ---- torch.library integration ----


@pytest.mark.parametrize("op,mode", op_cases())
def test_opcheck(op, mode, device, rng):
    args = to(inputs(op, (3, 70), torch.float32, rng), device)
    if mode is not None:
        args = args + (mode,)
    torch.library.opcheck(getattr(torch.ops.fastrl, op).default, args)


@pytest.mark.parametrize("op,mode", op_cases())
def test_compile_fullgraph_equals_eager(op, mode, device, rng):
    args = to(inputs(op, (3, 70), torch.float32, rng), device)
    fn = getattr(ops, op)
    eager = call(op, args, **kwargs(mode))
    compiled = torch.compile(lambda *a: fn(*a, **kwargs(mode)), fullgraph=True)
    got = compiled(*args)
    got = got if isinstance(got, tuple) else (got,)
    for g, e in zip(got, eager):
        torch.testing.assert_close(g, e)


def test_compile_with_a_temperature_made_dynamic(device, rng):
    """A second temperature makes torch.compile trace it as a symbolic float: the check that
    it is not 0 in float32 was a tensor's .item(), data-dependent there (torch 2.11 refused
    to compile it)."""
    args = to(inputs("min_form_returns", (3, 70), torch.float32, rng), device)[:3]
    compiled = torch.compile(lambda *a: ops.min_form_returns(*a), fullgraph=True)
    for temperature in (0.5, 0.3, 0.2):
        got = compiled(*args, temperature, "soft")
        for g, e in zip(got, ops.min_form_returns(*args, temperature, "soft")):
            torch.testing.assert_close(g, e)


def test_fake_kernels_give_output_dtypes():
    from torch._subclasses.fake_tensor import FakeTensorMode

    with FakeTensorMode():
        x = torch.empty(4, 9, dtype=torch.bfloat16)
        out = torch.ops.fastrl.discounted_returns(x, torch.ones(4, 9, dtype=torch.bool), 1.0)
        assert out.dtype == torch.float32 and out.shape == (4, 9)


# ---- bad inputs: one test each, the error names the argument ----


def test_wrong_rank():
    with pytest.raises(ValueError, match="rewards must have 2 dimensions"):
        ops.discounted_returns(torch.ones(3), torch.ones(3))
    with pytest.raises(ValueError, match="scores must have 2 dimensions"):
        ops.min_form_returns(torch.ones(2, 3, 4), torch.ones(2, 3, 4), torch.ones(2, 3, 4))


def test_shape_mismatch():
    with pytest.raises(ValueError, match="mask must have the shape of rewards"):
        ops.discounted_returns(torch.ones(2, 3), torch.ones(2, 4))
    with pytest.raises(ValueError, match="values must have the shape of rewards"):
        ops.gae(torch.ones(2, 3), torch.ones(3, 3), torch.ones(2, 3))
    with pytest.raises(ValueError, match="step_mask must have the shape of scores"):
        ops.min_form_returns(torch.ones(2, 3), torch.ones(2, 2), torch.ones(2, 3))


def test_dtype_errors():
    with pytest.raises(TypeError, match="rewards must be float16, bfloat16, float32 or float64"):
        ops.discounted_returns(torch.ones(2, 3, dtype=torch.int64), torch.ones(2, 3))
    with pytest.raises(TypeError, match="values has dtype torch.float64 but rewards has torch.float32"):
        ops.gae(torch.ones(2, 3), torch.ones(2, 3, dtype=torch.float64), torch.ones(2, 3))
    with pytest.raises(TypeError, match="mask must be a torch.Tensor"):
        ops.discounted_returns(torch.ones(2, 3), [[1, 1, 1]] * 2)


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_scores_on_cpu(bad):
    s = torch.zeros(2, 3)
    s[1, 2] = bad
    with pytest.raises(ValueError, match="scores contains NaN or Inf"):
        ops.min_form_returns(s, torch.ones(2, 3), torch.ones(2, 3))
    with pytest.raises(ValueError, match="values contains NaN or Inf"):
        ops.gae(torch.zeros(2, 3), s, torch.ones(2, 3))


def test_min_form_scores_off_the_step_tokens_are_ignored_on_cpu(device):
    """As documented (and as the kernels do, without the check on a GPU): only the step
    tokens' scores are read, so NaN elsewhere is neither an error nor in the result."""
    s = torch.tensor([[0.5, float("nan"), -0.2, float("inf")], [float("nan"), 0.1, 0.3, 0.9]], device=device)
    step = torch.tensor([[1, 0, 1, 0], [0, 1, 0, 1]], device=device)
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 1, 1]], device=device)
    clean = torch.where((step != 0) & (mask != 0), s, 0.0)
    for mode in ("soft", "strict", "sum"):
        for got, want in zip(ops.min_form_returns(s, step, mask, mode=mode), ops.min_form_returns(clean, step, mask,
                                                                                                   mode=mode)):
            assert torch.equal(got, want)
    s[0, 2] = float("nan")  # a step token's: an error
    if device.type == "cpu":
        with pytest.raises(ValueError, match="scores contains NaN or Inf"):
            ops.min_form_returns(s, step, mask)


def test_scan_values_at_masked_tokens_are_ignored(device):
    """Masked tokens are skipped (DESIGN 3.1), so NaN padding there is neither an error nor in
    the result, as in min_form_returns; discounted_returns and gae refused it, on the CPU only."""
    g = torch.Generator().manual_seed(3)
    rewards, values = torch.randn(3, 6, generator=g).to(device), torch.randn(3, 6, generator=g).to(device)
    mask = torch.tensor([[1, 1, 1, 0, 0, 0], [0, 1, 1, 1, 1, 1], [1, 0, 1, 0, 1, 0]], device=device)
    padded = [torch.where(mask != 0, x, float("nan")) for x in (rewards, values)]
    for backend in ops.available_backends("gae", device.type):
        with ops.use_backend(backend):
            assert torch.equal(ops.discounted_returns(padded[0], mask, 0.9), ops.discounted_returns(rewards, mask, 0.9))
            for got, want in zip(ops.gae(*padded, mask, 0.9, 0.8), ops.gae(rewards, values, mask, 0.9, 0.8)):
                assert torch.equal(got, want), backend
    padded[1][0, 1] = float("inf")  # a valid token's: an error
    if device.type == "cpu":
        with pytest.raises(ValueError, match="values contains NaN or Inf"):
            ops.gae(*padded, mask)


@pytest.mark.parametrize("temperature", [0.0, -1.0])
def test_temperature_must_be_positive(temperature):
    with pytest.raises(ValueError, match="temperature must be > 0"):
        ops.min_form_returns(torch.ones(2, 3), torch.ones(2, 3), torch.ones(2, 3), temperature)


def test_unknown_mode():
    with pytest.raises(ValueError, match="mode must be one of"):
        ops.min_form_returns(torch.ones(2, 3), torch.ones(2, 3), torch.ones(2, 3), mode="hard")


@pytest.mark.parametrize("name,kw", [("gamma", {"gamma": 1.5}), ("gamma", {"gamma": -0.1}),
                                     ("lam", {"lam": 2.0}), ("lam", {"lam": -1e-3})])
def test_gamma_and_lam_in_unit_interval(name, kw):
    with pytest.raises(ValueError, match=f"{name} must be in \\[0.0, 1.0\\]"):
        ops.gae(torch.ones(2, 3), torch.ones(2, 3), torch.ones(2, 3), **kw)
    if name == "gamma":
        with pytest.raises(ValueError, match="gamma must be in"):
            ops.discounted_returns(torch.ones(2, 3), torch.ones(2, 3), kw["gamma"])


def test_device_mismatch_is_reported():
    meta = torch.ones(2, 3, device="meta")
    with pytest.raises(ValueError, match="mask is on meta but rewards is on cpu"):
        ops.discounted_returns(torch.ones(2, 3), meta)


def test_unknown_backend():
    with pytest.raises(ValueError, match="backend must be one of"):
        with ops.use_backend("fortran"):
            pass


def test_value_checks_on_cuda_only_with_fastrl_check(monkeypatch):
    if not torch.cuda.is_available():
        pytest.skip("no GPU")
    s = torch.zeros(2, 3, device="cuda")
    s[0, 1] = float("nan")
    ones = torch.ones(2, 3, device="cuda")
    monkeypatch.delenv("FASTRL_CHECK", raising=False)
    ops.min_form_returns(s, ones, ones)  # no host sync, no check
    monkeypatch.setenv("FASTRL_CHECK", "1")
    with pytest.raises(ValueError, match="scores contains NaN or Inf"):
        ops.min_form_returns(s, ones, ones)


def test_value_checks_off_the_cpu_only_with_fastrl_check(monkeypatch):
    """The rule above, checked without a GPU: on any device but the CPU (meta here) values
    are checked only with FASTRL_CHECK=1; on the CPU always."""
    from fastrl.ops import _checks

    off_cpu = torch.empty(2, device="meta")
    monkeypatch.delenv("FASTRL_CHECK", raising=False)
    assert not _checks.values_checked(off_cpu)
    assert _checks.values_checked(torch.empty(2))
    monkeypatch.setenv("FASTRL_CHECK", "1")
    assert _checks.values_checked(off_cpu)


def test_gamma_and_lam_at_zero_are_accepted(rng):
    """The closed ends of [0, 1]: gamma = 0 gives the rewards themselves, lam = 0 the TD
    errors (TD(0)), against the reference on every backend."""
    shape = (4, 9)
    r, v = (torch.randn(shape, generator=rng, dtype=torch.float64) for _ in range(2))
    mask = make_mask(shape, rng)
    for backend in ops.available_backends("gae", "cpu"):
        with ops.use_backend(backend):
            returns = ops.discounted_returns(r, mask, 0.0)
            adv, _ = ops.gae(r, v, mask, gamma=0.9, lam=0.0)
            adv0, _ = ops.gae(r, v, mask, gamma=0.0, lam=0.7)
        torch.testing.assert_close(returns, torch.where(mask, r, 0.0), rtol=0, atol=0)
        torch.testing.assert_close(adv, reference.gae(r, v, mask, 0.9, 0.0)[0], rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(adv0, torch.where(mask, r - v, 0.0), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("bad", [float("inf"), -float("inf"), float("nan")])
def test_non_finite_temperature_is_refused(bad):
    """An infinite temperature made every soft weight equal instead of raising."""
    with pytest.raises(ValueError, match="temperature must be finite"):
        ops.min_form_returns(torch.ones(2, 3), torch.ones(2, 3), torch.ones(2, 3), bad)


def test_a_bool_is_not_a_number():
    """True passed as gamma or temperature is a TypeError, not 1.0."""
    ones = torch.ones(2, 3)
    with pytest.raises(TypeError, match="gamma must be a number, got bool"):
        ops.discounted_returns(ones, ones, True)
    with pytest.raises(TypeError, match="lam must be a number, got bool"):
        ops.gae(ones, ones, ones, lam=True)
    with pytest.raises(TypeError, match="temperature must be a number, got bool"):
        ops.min_form_returns(ones, ones, ones, temperature=True)
