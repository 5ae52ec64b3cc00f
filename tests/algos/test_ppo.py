"""PPO loss, aggregations, k3 KL and value loss against direct per-element loops."""
import math

import pytest
import torch

from fastrl.algos.ppo import aggregate, aggregation_units, kl_k3, policy_loss, value_loss


def batch(rng, B=5, T=7, dtype=torch.float64):
    logp = -torch.rand(B, T, generator=rng, dtype=dtype) * 3
    old = logp + 0.4 * torch.randn(B, T, generator=rng, dtype=dtype)
    adv = torch.randn(B, T, generator=rng, dtype=dtype)
    mask = torch.rand(B, T, generator=rng) > 0.3
    mask[0] = False  # a row without tokens
    mask[1, 3] = False  # a hole
    return logp, old, adv, mask


def loop_policy_loss(logp, old, adv, mask, lo, hi, dual):
    out = torch.zeros_like(logp)
    clipped = torch.zeros_like(mask)
    for b in range(logp.shape[0]):
        for t in range(logp.shape[1]):
            if not mask[b, t]:
                continue
            r = math.exp(logp[b, t] - old[b, t])
            a = float(adv[b, t])
            l1, l2 = -a * r, -a * min(max(r, 1 - lo), 1 + hi)
            loss = max(l1, l2)
            c = l2 > l1
            if dual is not None and a < 0 and loss > -dual * a:
                loss, c = -dual * a, True
            out[b, t], clipped[b, t] = loss, c
    return out, clipped


@pytest.mark.parametrize("dual", [None, 1.5])
@pytest.mark.parametrize("clip", [(0.2, 0.2), (0.2, 0.28), (0.0, 0.5)])
def test_policy_loss_matches_loop(rng, dual, clip):
    logp, old, adv, mask = batch(rng)
    expected, clipped = loop_policy_loss(logp, old, adv, mask, *clip, dual)
    got = policy_loss(logp, old, adv, mask, *clip, dual_clip=dual)
    torch.testing.assert_close(got.loss, expected)
    assert torch.equal(got.clipped, clipped)
    if dual is not None:
        assert bool(clipped.any())


def test_policy_loss_gradient_at_ratio_one_is_reinforce(rng):
    logp, _, adv, mask = batch(rng)
    logp.requires_grad_(True)
    policy_loss(logp, logp.detach(), adv, mask).loss.sum().backward()
    torch.testing.assert_close(logp.grad, torch.where(mask, -adv, 0))


def test_policy_loss_ignores_masked_infinities(rng):
    logp, old, adv, mask = batch(rng)
    logp = logp.masked_fill(~mask, -float("inf"))
    assert torch.isfinite(policy_loss(logp, old, adv, mask).loss).all()


@pytest.mark.parametrize("aggregation", ["token_mean", "seq_mean_token_mean", "seq_mean_token_sum_norm"])
def test_aggregate_matches_loop(rng, aggregation):
    values, _, _, mask = batch(rng)
    rows = [(values[b][mask[b]]) for b in range(values.shape[0]) if mask[b].any()]
    if aggregation == "token_mean":
        expected = torch.cat(rows).mean()
    elif aggregation == "seq_mean_token_mean":
        expected = torch.stack([r.mean() for r in rows]).mean()
    else:
        expected = torch.stack([r.sum() / 11 for r in rows]).mean()
    torch.testing.assert_close(aggregate(values, mask, aggregation, max_length=11), expected)


@pytest.mark.parametrize("aggregation", ["token_mean", "seq_mean_token_mean", "seq_mean_token_sum_norm"])
def test_aggregate_parts_sum_to_whole(rng, aggregation):
    values, _, _, mask = batch(rng, B=8)
    whole = aggregate(values, mask, aggregation, max_length=9)
    units = aggregation_units(mask, aggregation)
    parts = sum(aggregate(values[i], mask[i], aggregation, max_length=9, denominator=units)
                for i in torch.tensor_split(torch.arange(8), 3))
    torch.testing.assert_close(parts, whole)


def test_aggregate_empty_is_zero():
    assert float(aggregate(torch.ones(2, 3), torch.zeros(2, 3))) == 0.0


def test_kl_k3(rng):
    logp, ref, _, mask = batch(rng)
    d = ref - logp
    torch.testing.assert_close(kl_k3(logp, ref, mask), torch.where(mask, d.exp() - d - 1, 0))
    assert (kl_k3(logp, ref, mask) >= 0).all()
    assert float(kl_k3(logp, logp, mask).abs().max()) == 0.0


def test_value_loss(rng):
    v, old, ret, mask = batch(rng)
    expected = torch.zeros_like(v)
    for b in range(v.shape[0]):
        for t in range(v.shape[1]):
            if mask[b, t]:
                vc = old[b, t] + min(max(v[b, t] - old[b, t], -0.2), 0.2)
                expected[b, t] = 0.5 * max((v[b, t] - ret[b, t]) ** 2, (vc - ret[b, t]) ** 2)
    torch.testing.assert_close(value_loss(v, old, ret, mask, 0.2), expected)
    torch.testing.assert_close(value_loss(v, old, ret, mask, None), torch.where(mask, 0.5 * (v - ret) ** 2, 0))


@pytest.mark.parametrize("dual", [None, 3.0])
@pytest.mark.parametrize("gap", [89.0, -95.0, 30.0])
def test_a_far_off_ratio_gives_finite_loss_and_gradient(gap, dual):
    # exp(89) overflows float32: the branch max/where drops would give the gradient 0 * inf = NaN
    logp = torch.tensor([[-0.5, -1.0]], requires_grad=True)
    old = logp.detach() - torch.tensor([[gap, 0.0]])
    adv = torch.tensor([[1.0, -1.0]]) * (1 if gap > 0 else -1)
    out = policy_loss(logp, old, adv, torch.ones(1, 2), dual_clip=dual)
    aggregate(out.loss, torch.ones(1, 2)).backward()
    assert torch.isfinite(out.loss).all() and torch.isfinite(logp.grad).all()
    assert float(logp.grad[0, 0]) == 0.0  # clipped (or bounded), as verl's clamp of the log-ratio to [-20, 20]


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
def test_float32_outputs_for_low_precision(rng, dtype):
    logp, old, adv, mask = batch(rng)
    adv[2, 0] = 1234.567  # bf16 would keep 1232
    exact = policy_loss(logp, old, adv, mask).loss
    low = policy_loss(logp.to(dtype), old.to(dtype), adv.float(), mask).loss
    assert low.dtype == torch.float32
    for out in (kl_k3(logp.to(dtype), old.to(dtype), mask), value_loss(logp.to(dtype), old.to(dtype), adv.to(dtype), mask),
                aggregate(logp.to(dtype), mask)):
        assert out.dtype == torch.float32
    tolerance = {torch.bfloat16: 2 ** -7, torch.float16: 2 ** -10, torch.float32: 1e-6}[dtype]
    assert float(low[2, 0] - exact[2, 0]) == pytest.approx(0, abs=1234.6 * 3 * tolerance)
    # at a ratio of exactly 1 the loss is -advantage, to the float32 bit (the check above allows 29)
    lp, ol, on = logp.to(dtype), old.to(dtype), mask.clone()
    ol[2, 0], on[2, 0] = lp[2, 0], True
    assert float(policy_loss(lp, ol, adv.float(), on).loss[2, 0]) == -float(torch.tensor(1234.567))


def test_kl_is_bounded_per_token():
    logp, ref = torch.tensor([[0.0, 0.0]], requires_grad=True), torch.tensor([[5.0, 0.5]])
    kl = kl_k3(logp, ref, torch.ones(1, 2))
    assert float(kl[0, 0].detach()) == 10.0 and float(kl[0, 1].detach()) == pytest.approx(math.exp(0.5) - 1.5)  # as verl's low_var_kl
    kl.sum().backward()
    assert logp.grad[0, 0] == 0.0


def test_masked_positions_may_hold_anything_in_value_loss(rng):
    v, old, ret, mask = batch(rng)
    v.requires_grad_()
    junk = torch.where(mask, ret, torch.tensor(float("nan"), dtype=ret.dtype))
    aggregate(value_loss(v, old, junk, mask), mask).backward()
    assert torch.isfinite(v.grad).all() and (v.grad[~mask] == 0).all()


@pytest.mark.parametrize("call, match", [
    (lambda x, m: value_loss(x, x, x, m, clip=-0.2), "clip"),
    (lambda x, m: value_loss(x, x, x, m, clip=float("nan")), "clip"),
    (lambda x, m: aggregate(x, m, denominator=m.sum(-1)), "denominator"),
    (lambda x, m: aggregate(x, m, denominator=-5), "denominator"),
    (lambda x, m: aggregate(x, m, "seq_mean_token_sum_norm", max_length=float("inf")), "max_length"),
    (lambda x, m: policy_loss(x, torch.full_like(x, float("nan")), x, m), "old_logp"),
    (lambda x, m: kl_k3(x, torch.full_like(x, float("inf")), m), "ref_logp"),
    (lambda x, m: policy_loss(x, x, x, m, clip_low=1.0), "clip_low"),
    (lambda x, m: policy_loss(x, x, x, m, dual_clip=1.0), "dual_clip"),
    (lambda x, m: policy_loss(x, x[:, :2], x, m), "old_logp"),
    (lambda x, m: aggregate(x, m, "mean"), "aggregation"),
    (lambda x, m: aggregate(x, m[:1], "token_mean"), "mask"),
    (lambda x, m: kl_k3(x, x.long(), m), "ref_logp"),
    # a missing tensor or a wrong type is named (they were AttributeErrors in .detach() or bare comparisons)
    (lambda x, m: policy_loss(x, None, x, m), "old_logp must be a torch.Tensor"),
    (lambda x, m: policy_loss(x, x, None, m), "advantages must be a torch.Tensor"),
    (lambda x, m: kl_k3(x, None, m), "ref_logp must be a torch.Tensor"),
    (lambda x, m: value_loss(x, None, x, m), "old_values must be a torch.Tensor"),
    (lambda x, m: value_loss(x, x, None, m), "returns must be a torch.Tensor"),
    (lambda x, m: policy_loss(x, x, x, m, clip_low="0.2"), "clip_low must be a number"),
    (lambda x, m: policy_loss(x, x, x, m, clip_high=0.0), "clip_high must be > 0"),
    (lambda x, m: value_loss(x, x, x, m, clip=True), "clip must be a number"),
    (lambda x, m: aggregate(x, m, "seq_mean_token_sum_norm", max_length="8"), "max_length must be a number"),
    (lambda x, m: aggregate(x, m, denominator=0.5), "denominator must be a count"),  # was taken as 1
])
def test_bad_inputs(call, match):
    x = torch.zeros(2, 3)
    with pytest.raises((ValueError, TypeError), match=match):
        call(x, torch.ones(2, 3))


def test_no_gradient_reaches_the_constants(rng):
    """old_logp and advantages (policy_loss), ref_logp (kl_k3), old_values and returns
    (value_loss) are constants: a gradient reaching them would, e.g., train a value network
    through the policy loss of its own advantages."""
    logp, old, adv, mask = batch(rng)
    logp, old, adv = (x.clone().requires_grad_() for x in (logp, old, adv))
    pl = policy_loss(logp, old, adv, mask, 0.2, 0.28, 1.5)
    (pl.loss.sum() + kl_k3(logp, old, mask).sum()).backward()
    assert logp.grad is not None and logp.grad.abs().sum() > 0
    assert old.grad is None and adv.grad is None
    values, old_values, returns = (x.clone().requires_grad_() for x in batch(rng)[:3])
    value_loss(values, old_values, returns, mask, 0.1).sum().backward()
    assert values.grad is not None and values.grad.abs().sum() > 0
    assert old_values.grad is None and returns.grad is None
