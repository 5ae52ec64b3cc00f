"""fastrl's selective_log_softmax against TRL's own.

`make test` installs trl (the [anchors] extra) and sets FASTRL_REQUIRE_ANCHORS=1, so
there the comparisons run rather than skip. trl is imported inside the tests: it is slow.
"""
import os

import pytest
import torch

from fastrl.integrations.trl import _trl_dtype, selective_log_softmax


@pytest.fixture(scope="module")
def trl_utils():
    if os.environ.get("FASTRL_REQUIRE_ANCHORS") == "1":
        import trl.trainer.utils as utils
    else:
        utils = pytest.importorskip("trl.trainer.utils")
    return utils


# bf16: TRL computes in bf16 (logits / temperature rounded first) and is off the exact value by a
# few bf16 ulps; fastrl computes in float32 and rounds once, so it is also checked against float64.
TOLERANCES = {torch.float64: dict(rtol=1e-12, atol=1e-12), torch.float32: dict(rtol=1e-5, atol=1e-5),
              torch.bfloat16: dict(rtol=2 ** -5, atol=0.1)}


def both(trl_utils, logits, index, temperature, row_mask, grad_weights):
    """Outputs and logits gradients of TRL's and fastrl's selective_log_softmax."""
    results = []
    for fn in (trl_utils.selective_log_softmax, selective_log_softmax):
        x = logits.detach().clone().requires_grad_()
        out = fn(x, index, temperature=temperature, row_mask=row_mask)
        (out.double() * grad_weights).sum().backward()
        results.append((out, x.grad))
    return results


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16])
@pytest.mark.parametrize("shape", [(1, 1, 7), (3, 17, 101), (2, 5, 3, 33), (13, 257)])
@pytest.mark.parametrize("top_k", [None, 1, 4])
@pytest.mark.parametrize("temperature", [1.0, 0.7])
@pytest.mark.parametrize("masked", [False, True])
def test_equals_trl(trl_utils, dtype, shape, top_k, temperature, masked, rng):
    *leading, vocab = shape
    logits = (3 * torch.randn(shape, generator=rng, dtype=torch.float64)).to(dtype)
    index_shape = tuple(leading) + ((top_k,) if top_k else ())
    index = torch.randint(0, vocab, index_shape, generator=rng)
    row_mask = (torch.rand(index_shape, generator=rng) > 0.3) if masked else None
    grad_weights = torch.randn(index_shape, generator=rng, dtype=torch.float64)
    (want, want_grad), (got, got_grad) = both(trl_utils, logits, index, temperature, row_mask, grad_weights)
    assert got.dtype == want.dtype == dtype and got.shape == want.shape == index.shape
    torch.testing.assert_close(got, want, **TOLERANCES[dtype])
    torch.testing.assert_close(got_grad, want_grad, **TOLERANCES[dtype])
    if masked:
        assert (got[~row_mask] == 0).all()
    if dtype == torch.bfloat16:
        x = logits.double().requires_grad_()
        exact = torch.log_softmax(x / temperature, -1).gather(-1, index.view(*leading, -1)).view(index.shape)
        if masked:
            exact = exact.masked_fill(~row_mask, 0.0)
        (exact * grad_weights).sum().backward()
        torch.testing.assert_close(got.double(), exact, rtol=2 ** -7, atol=1e-2)
        # a row's gradient sums terms as large as its weights / temperature, each rounded to bf16
        terms = (grad_weights.abs().sum(-1) if top_k else grad_weights.abs())[..., None] / temperature
        assert ((got_grad.double() - x.grad).abs() <= 2 ** -7 * (x.grad.abs() + terms)).all()


def test_narrow_index_dtypes_with_a_row_mask(trl_utils, rng):
    """A uint8 index with a row_mask: masked positions took -100, which wraps to 156 in uint8
    (log p of token 156 came out, with its gradient). (TRL's own gather takes int32 and
    int64 only: TRL runs on int64.)"""
    logits = torch.randn(2, 5, 200, generator=rng, dtype=torch.float64)
    index = torch.randint(0, 200, (2, 5), generator=rng)
    row_mask = torch.rand(2, 5, generator=rng) > 0.4
    weights = torch.randn(2, 5, generator=rng, dtype=torch.float64)
    (want, want_grad), _ = both(trl_utils, logits, index, 1.0, row_mask, weights)
    for dtype in (torch.uint8, torch.int16, torch.int32):
        x = logits.clone().requires_grad_()
        got = selective_log_softmax(x, index.to(dtype), row_mask=row_mask)
        (got_grad,) = torch.autograd.grad((got * weights).sum(), x)
        torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12, msg=str(dtype))
        torch.testing.assert_close(got_grad, want_grad, rtol=1e-12, atol=1e-12, msg=str(dtype))


def test_no_index_per_row_is_empty_and_differentiable(trl_utils):
    logits = torch.randn(2, 3, 11, requires_grad=True)
    index = torch.zeros(2, 3, 0, dtype=torch.long)
    want, got = trl_utils.selective_log_softmax(logits, index), selective_log_softmax(logits, index)
    assert got.shape == want.shape == (2, 3, 0)
    got.sum().backward()  # as TRL's does
    assert torch.equal(logits.grad, torch.zeros_like(logits))


class OnDevice:
    """A meta tensor that reports another device: enough for the dispatch predicates."""

    def __init__(self, shape, dtype, device):
        self.tensor, self.device = torch.empty(shape, dtype=dtype, device="meta"), torch.device(device)

    def __getattr__(self, name):
        return getattr(self.tensor, name)


@pytest.mark.parametrize("device", ["cpu", "cuda:0", "xpu:0"])
def test_dtype_follows_trls_dispatch(trl_utils, device):
    """float32 exactly where TRL's fused kernel would serve the call, judged by TRL's own predicate."""
    for dtype in (torch.float16, torch.bfloat16, torch.float32, torch.float64):
        for shape, index_shape in (((11,), ()), ((5, 11), (5,)), ((2, 5, 11), (2, 5)), ((2, 5, 11), (2, 5, 3)),
                                   ((2, 2, 5, 11), (2, 2, 5))):
            logits, index = OnDevice(shape, dtype, device), OnDevice(index_shape, torch.long, device)
            want = torch.float32 if trl_utils._supports_trl_loss_kernel(logits, index) else dtype
            assert _trl_dtype(logits, index, None) == want, (dtype, shape, index_shape)


def test_half_logits_on_gpu_give_float32(device):
    logits = torch.randn(3, 4, 19, device=device).to(torch.bfloat16)
    index = torch.randint(0, 19, (3, 4), device=device)
    out = selective_log_softmax(logits, index)
    assert out.dtype == (torch.float32 if device.type == "cuda" else torch.bfloat16)
    want = torch.log_softmax(logits.double(), -1).gather(-1, index[..., None])[..., 0]
    torch.testing.assert_close(out.double(), want, rtol=0, atol=0.07)


def test_bad_arguments():
    logits, index = torch.randn(2, 3, 5), torch.randint(0, 5, (2, 3))
    with pytest.raises(TypeError, match="logits"):
        selective_log_softmax(logits.long(), index)
    with pytest.raises(TypeError, match="index must be an integer tensor"):
        selective_log_softmax(logits, index.float())
    with pytest.raises(ValueError, match="index must be"):
        selective_log_softmax(logits, index[:1])
    with pytest.raises(ValueError, match="index must be"):
        selective_log_softmax(logits, index[..., None, None])
    with pytest.raises(ValueError, match=r"index must be in \[0, 5\)"):
        selective_log_softmax(logits, index.masked_fill(index == index[0, 0], -100))
    with pytest.raises(ValueError, match=r"index must be in \[0, 5\)"):
        selective_log_softmax(logits, index + 5)
    with pytest.raises(ValueError, match="temperature"):
        selective_log_softmax(logits, index, temperature=0.0)
    with pytest.raises(ValueError, match="row_mask"):
        selective_log_softmax(logits, index, row_mask=torch.ones(2, 4))


def test_top_k_with_a_masked_first_token():
    """The row's log-sum-exp came from the first index: a -inf logit there made the whole row
    NaN (TRL gives -inf for that entry and the others' log-probabilities)."""
    logits = torch.tensor([[float("-inf"), 1.0, 2.0, 0.5], [float("-inf"), float("-inf"), 1.0, 0.0]],
                          requires_grad=True)
    index = torch.tensor([[0, 1, 2], [1, 0, 3]])
    got = selective_log_softmax(logits, index)
    want = torch.log_softmax(logits.detach(), -1).gather(-1, index)
    torch.testing.assert_close(got, want)
    got[torch.isfinite(got)].sum().backward()
    assert torch.isfinite(logits.grad).all()


def test_top_k_gradient_through_a_masked_token_is_trls(trl_utils):
    """A selected -inf logit: -inf, with TRL's gradient (one-hot minus softmax), where another
    selected logit in the row is finite (before: the one-hot alone)."""
    logits = torch.randn(3, 7, dtype=torch.float64)
    logits[:, 2] = float("-inf")
    index = torch.tensor([[2, 0], [1, 2], [2, 2]])  # the last row selects no finite logit
    weights = torch.rand(3, 2, dtype=torch.float64)
    (theirs, their_grad), (ours, our_grad) = both(trl_utils, logits, index, 1.0, None, weights)
    torch.testing.assert_close(ours, theirs)
    torch.testing.assert_close(our_grad[:2], their_grad[:2])
    torch.testing.assert_close(our_grad[2], torch.zeros(7, dtype=torch.float64).index_put_(
        (torch.tensor([2]),), weights[2].sum()[None]))  # no lse for that row: the one-hot alone


@pytest.mark.parametrize("device", ["cpu", "cuda:0", "xpu:0"])
def test_dtype_with_a_row_mask_follows_trls_dispatch(trl_utils, device):
    """A row_mask of a dtype TRL's kernel does not take (float, uint8) sends TRL down its eager path:
    the logits' dtype, as TRL's own predicate says."""
    for dtype in (torch.float16, torch.bfloat16, torch.float32):
        logits, index = OnDevice((2, 5, 11), dtype, device), OnDevice((2, 5), torch.long, device)
        for mask_dtype in (torch.bool, torch.int32, torch.int64, torch.uint8, torch.float32, torch.bfloat16):
            row_mask = OnDevice((2, 5), mask_dtype, device)
            want = torch.float32 if trl_utils._supports_trl_loss_kernel(logits, index, row_mask) else dtype
            assert _trl_dtype(logits, index, row_mask) == want, (dtype, mask_dtype)


@pytest.mark.parametrize("top_k", [False, True])
def test_an_index_equal_to_the_vocabulary_size_is_refused(top_k):
    logits = torch.randn(2, 3, 5)
    index = torch.randint(0, 5, (2, 3, 2) if top_k else (2, 3))
    index[1, 2] = 5
    with pytest.raises(ValueError, match=r"index must be in \[0, 5\), found 5"):
        selective_log_softmax(logits, index)
    selective_log_softmax(logits, index.clamp(max=4))
