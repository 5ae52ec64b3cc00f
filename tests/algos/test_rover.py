"""ROVER's targets and loss (DESIGN 3.4) against a per-token Python loop."""
import math

import pytest
import torch

from fastrl.algos import old_policy_stats, rover_advantages, rover_loss, rover_loss_hf, rover_targets
from fastrl.ops import group_advantages


def reference(logp, old_logp, mean, old_mean, adv, mask, rho=1.0, kappa=1.0):
    """Q, y and loss one token at a time, in float64."""
    B, T = logp.shape
    q = torch.zeros(B, T, dtype=torch.float64)
    y = torch.zeros(B, T, dtype=torch.float64)
    for b in range(B):
        valid = [t for t in range(T) if mask[b, t] != 0]
        for i, t in enumerate(valid):
            q[b, t] = rho * (float(logp[b, t]) - float(old_logp[b, t]))
            ahead = 0.0
            if i + 1 < len(valid):
                n = valid[i + 1]
                ahead = float(mean[b, n]) - float(old_mean[b, n])
            y[b, t] = float(adv[b]) + rho * kappa * ahead
    n = sum(int(m != 0) for m in mask.flatten())
    loss = sum(float(q[b, t] - y[b, t]) ** 2 for b in range(B) for t in range(T) if mask[b, t] != 0) / max(n, 1)
    return q, y, loss


def batch(rng, B=5, T=9, dtype=torch.float64):
    """Rows of different lengths (one empty, one full), a hole, a float mask."""
    logp = -torch.rand(B, T, generator=rng, dtype=dtype) * 3
    old_logp = logp.detach() - 0.3 * torch.randn(B, T, generator=rng, dtype=dtype)
    mean = -4 - torch.rand(B, T, generator=rng, dtype=dtype)
    old_mean = mean + 0.2 * torch.randn(B, T, generator=rng, dtype=dtype)
    adv = torch.randn(B, generator=rng, dtype=dtype)
    lengths = torch.randint(1, T + 1, (B,), generator=rng)
    lengths[0], lengths[1] = T, 0
    starts = (torch.rand(B, generator=rng) * (T - lengths + 1)).long()
    pos = torch.arange(T)
    mask = ((pos >= starts[:, None]) & (pos < (starts + lengths)[:, None])).float()
    mask[0, [2, 3, 6]] = 0  # holes: the look-ahead skips them
    return logp, old_logp, mean, old_mean, adv, mask


@pytest.mark.parametrize("rho,kappa", [(1.0, 1.0), (0.5, 2.0), (3.0, 0.0)])
def test_targets_and_loss_match_loop(rng, rho, kappa):
    args = batch(rng)
    q_ref, y_ref, loss_ref = reference(*args, rho, kappa)
    q, y = rover_targets(*args, rho=rho, kappa=kappa)
    torch.testing.assert_close(q, q_ref)
    torch.testing.assert_close(y, y_ref)
    assert math.isclose(float(rover_loss(*args, rho=rho, kappa=kappa)), loss_ref, rel_tol=1e-12, abs_tol=1e-12)


def test_look_ahead_is_zero_at_each_rows_last_token():
    logp = torch.zeros(2, 5, dtype=torch.float64)
    mean = torch.tensor([[1.0, 2.0, 3.0, 4.0, 5.0]] * 2, dtype=torch.float64)
    mask = torch.tensor([[1, 1, 0, 1, 0], [0, 1, 1, 1, 1]])
    adv = torch.tensor([10.0, 20.0], dtype=torch.float64)
    _, y = rover_targets(logp, logp, mean, torch.zeros_like(mean), adv, mask)
    expected = torch.tensor([[12.0, 14.0, 0.0, 10.0, 0.0], [0.0, 23.0, 24.0, 25.0, 20.0]], dtype=torch.float64)
    torch.testing.assert_close(y, expected)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_float32_output_for_low_precision(rng, dtype):
    args = [x.to(dtype) for x in batch(rng)[:5]] + [batch(rng)[5].bool()]
    q, y = rover_targets(*args)
    assert q.dtype == y.dtype == torch.float32
    q_ref, y_ref, _ = reference(*args)
    torch.testing.assert_close(q.double(), q_ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(y.double(), y_ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("centred", [False, True])
def test_advantages(rng, centred):
    scores = torch.randint(0, 2, (8,), generator=rng).double()
    groups = torch.tensor([0, 0, 0, 1, 1, 2, 2, 2])
    method = "dr_grpo" if centred else "grpo"
    torch.testing.assert_close(rover_advantages(scores, groups, centred=centred),
                               group_advantages(scores, groups, method))
    expected = torch.zeros(8, dtype=torch.float64)
    for g in range(3):
        s = scores[groups == g]
        expected[groups == g] = (s - s.mean()) if centred else (s - s.mean()) / (s.std() + 1e-6)
    torch.testing.assert_close(rover_advantages(scores, groups, centred=centred), expected)


def test_advantages_take_eps(rng):
    """eps reaches the GRPO normaliser: (s - mean_g) / (std_g + eps)."""
    scores = torch.rand(8, generator=rng, dtype=torch.float64)
    groups = torch.tensor([0, 0, 0, 1, 1, 2, 2, 2])
    expected = torch.zeros(8, dtype=torch.float64)
    for g in range(3):
        s = scores[groups == g]
        expected[groups == g] = (s - s.mean()) / (s.std() + 0.5)
    torch.testing.assert_close(rover_advantages(scores, groups, eps=0.5), expected)


def test_gradient_only_through_q(rng):
    logp, old_logp, mean, old_mean, adv, mask = batch(rng)
    logp.requires_grad_()
    mean.requires_grad_()  # in the target: must not receive a gradient
    loss = rover_loss(logp, old_logp, mean, old_mean, adv, mask, rho=0.7, kappa=1.3)
    loss.backward()
    assert mean.grad is None
    q, y, _ = reference(logp.detach(), old_logp, mean.detach(), old_mean, adv, mask, 0.7, 1.3)
    expected = 2 * 0.7 * (q - y) * (mask != 0) / (mask != 0).sum()
    torch.testing.assert_close(logp.grad, expected)


def test_old_logp_is_a_constant(rng):
    # as policy_loss: passing the current log-probs as old_logp (on-policy) still trains
    logp, _, mean, old_mean, adv, mask = batch(rng)
    on_policy = logp.clone().requires_grad_()
    rover_loss(on_policy, on_policy, mean, old_mean, adv, mask).backward()
    detached = logp.clone().requires_grad_()
    rover_loss(detached, detached.detach(), mean, old_mean, adv, mask).backward()
    torch.testing.assert_close(on_policy.grad, detached.grad)
    assert detached.grad.abs().max() > 0


def test_empty_mask_gives_zero_loss(rng):
    logp, old_logp, mean, old_mean, adv, mask = batch(rng)
    loss = rover_loss(logp.requires_grad_(), old_logp, mean, old_mean, adv, torch.zeros_like(mask))
    loss.backward()
    assert float(loss.detach()) == 0 and not logp.grad.any()


def test_masked_positions_may_hold_anything(rng):
    logp, old_logp, mean, old_mean, adv, mask = batch(rng)
    ref = rover_targets(logp, old_logp, mean, old_mean, adv, mask)
    junk = [x.masked_fill(mask == 0, float("-inf")) for x in (logp, old_logp, mean, old_mean)]
    for a, b in zip(rover_targets(*junk, adv, mask), ref):
        torch.testing.assert_close(a, b)


# --- the Hugging Face convenience ---------------------------------------------------------


def tiny_llama(seed, scale=0.5):
    transformers = pytest.importorskip("transformers")
    config = transformers.LlamaConfig(vocab_size=50, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                                      pad_token_id=0, bos_token_id=1, eos_token_id=2)
    model = transformers.LlamaForCausalLM(config).eval().double()
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(scale * torch.randn(p.shape, generator=gen, dtype=p.dtype))
    return model


def hf_batch(rng, B=3, L=10):
    input_ids = torch.randint(3, 50, (B, L), generator=rng)
    attention = torch.ones(B, L, dtype=torch.long)
    attention[1, :3] = 0  # left padding
    input_ids[1, :3] = 0
    response = torch.zeros(B, L, dtype=torch.long)
    response[0, 4:] = 1
    response[1, 6:9] = 1
    response[2, 2:] = 1
    response[2, 5] = 0  # a hole
    return input_ids, attention, response


def full_logits_stats(model, input_ids, attention, temperature):
    position_ids = (attention.cumsum(-1) - 1).clamp_min(0)
    logits = model(input_ids, attention_mask=attention, position_ids=position_ids).logits[:, :-1] / temperature
    logsm = torch.log_softmax(logits, -1)
    logp = torch.nn.functional.pad(logsm.gather(-1, input_ids[:, 1:, None]).squeeze(-1), (1, 0))
    mean = torch.nn.functional.pad(logsm.mean(-1), (1, 0))
    return logp, mean, position_ids


@pytest.mark.parametrize("old", ["model", "stats"])
def test_hf_loss_matches_full_logits(rng, old):
    seed = int(torch.randint(0, 2**31, (1,), generator=rng))
    model, old_model = tiny_llama(seed), tiny_llama(seed + 1)
    input_ids, attention, response = hf_batch(rng)
    adv = torch.randn(3, generator=rng, dtype=torch.float64)
    T = 0.8
    logp, mean, position_ids = full_logits_stats(model, input_ids, attention, T)
    with torch.no_grad():
        old_logp, old_mean, _ = full_logits_stats(old_model, input_ids, attention, T)
    expected = rover_loss(logp, old_logp, mean.detach(), old_mean, adv, response, rho=0.9, kappa=1.1)
    grads_expected = torch.autograd.grad(expected, list(model.parameters()))

    if old == "model":
        kw = dict(old_model=old_model)
    else:
        kw = dict(old_stats=old_policy_stats(old_model, input_ids, attention, response, T, position_ids))
    loss = rover_loss_hf(model, input_ids, attention, response, adv, temperature=T, rho=0.9, kappa=1.1,
                         position_ids=position_ids, **kw)
    torch.testing.assert_close(loss, expected)
    for g, e in zip(torch.autograd.grad(loss, list(model.parameters())), grads_expected):
        torch.testing.assert_close(g, e)
    assert all(p.grad is None for p in old_model.parameters())


def test_hf_needs_exactly_one_old_source(rng):
    model = tiny_llama(0)
    input_ids, attention, response = hf_batch(rng)
    adv = torch.zeros(3, dtype=torch.float64)
    with pytest.raises(ValueError, match="exactly one of old_model and old_stats"):
        rover_loss_hf(model, input_ids, attention, response, adv)
    stats = old_policy_stats(model, input_ids, attention, response)
    with pytest.raises(ValueError, match="exactly one of old_model and old_stats"):
        rover_loss_hf(model, input_ids, attention, response, adv, old_model=model, old_stats=stats)
    with pytest.raises(TypeError, match="old_stats"):
        rover_loss_hf(model, input_ids, attention, response, adv, old_stats=stats.logprob)


# --- bad inputs ---------------------------------------------------------------------------


def test_bad_inputs(rng):
    logp, old_logp, mean, old_mean, adv, mask = batch(rng)
    good = dict(logp=logp, old_logp=old_logp, mean_logp=mean, old_mean_logp=old_mean, advantages=adv,
                response_mask=mask)

    def raises(error, match, **changes):
        with pytest.raises(error, match=match):
            rover_targets(**{**good, **changes})

    raises(ValueError, "old_logp must have the shape of logp", old_logp=old_logp[:, 1:])
    raises(ValueError, "old_mean_logp must have the shape of logp", old_mean_logp=old_mean[:-1])
    raises(ValueError, "response_mask must have the shape of logp", response_mask=mask[:, :-1])
    raises(ValueError, "logp must have 2 dimensions", logp=logp[0])
    raises(ValueError, "advantages must have one value per row", advantages=adv[:-1])
    raises(ValueError, "advantages must have 1 dimensions", advantages=adv[:, None])
    raises(TypeError, "mean_logp must be float", mean_logp=mean.long())
    raises(TypeError, "advantages must be float", advantages=adv.long())
    raises(TypeError, "old_logp must be a torch.Tensor", old_logp=old_logp.tolist())
    raises(TypeError, "response_mask must be bool, integer or float", response_mask=mask.to(torch.complex64))
    raises(ValueError, "logp contains NaN", logp=logp.masked_fill(mask != 0, float("nan")))
    raises(ValueError, "old_mean_logp contains NaN or Inf", old_mean_logp=old_mean.masked_fill(mask != 0, math.inf))
    raises(ValueError, "advantages contains NaN", advantages=torch.full_like(adv, float("nan")))
    for name, value, error in (("rho", float("nan"), ValueError), ("rho", math.inf, ValueError),
                               ("rho", 0.0, ValueError), ("rho", -1.0, ValueError),
                               ("kappa", float("nan"), ValueError), ("kappa", -math.inf, ValueError),
                               ("rho", "1", TypeError), ("kappa", None, TypeError)):
        with pytest.raises(error, match=name):
            rover_targets(**good, **{name: value})
        with pytest.raises(error, match=name):
            rover_loss(**good, **{name: value})
    with pytest.raises(TypeError, match="centred must be a bool"):
        rover_advantages(adv, torch.zeros(5, dtype=torch.long), centred="yes")


@pytest.mark.parametrize("rho", [1.0, 0.5])
def test_at_the_rollout_policy_the_gradient_is_reinforce(rng, rho):
    """At theta = theta_old, Q = 0 and y = A, so d loss / d logp = -2 rho A / N: plain
    REINFORCE; ROVER differs from a policy gradient only once the policy moves."""
    B, T = 6, 9
    logp = (-torch.rand(B, T, generator=rng, dtype=torch.float64) * 3).requires_grad_(True)
    mean = -torch.rand(B, T, generator=rng, dtype=torch.float64) * 5
    mask = torch.rand(B, T, generator=rng) > 0.3
    adv = torch.randn(B, generator=rng, dtype=torch.float64)
    rover_loss(logp, logp.detach(), mean, mean, adv, mask, rho=rho, kappa=0.7).backward()
    expected = torch.where(mask, -2 * rho * adv[:, None] / mask.sum(), 0)
    torch.testing.assert_close(logp.grad, expected)
