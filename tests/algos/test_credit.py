"""The credit registry composes the ops: each entry against the op it stands for."""
import pytest
import torch

from fastrl.algos.credit import CREDIT, CreditInputs, assign
from fastrl.algos.pure import pure_advantages
from fastrl.ops import broadcast_to_tokens, gae, group_advantages, risk_advantages
from fastrl.trainer.config import AlgoConfig


def inputs(rng, B=12, T=6):
    mask = torch.rand(B, T, generator=rng) > 0.2
    mask[:, 0] = True
    return CreditInputs(scores=torch.randint(0, 2, (B,), generator=rng).float(),
                        group_ids=torch.arange(B) // 4, mask=mask,
                        values=torch.randn(B, T, generator=rng))


@pytest.mark.parametrize("name", ["grpo", "dr_grpo", "rloo"])
@pytest.mark.parametrize("eps", [1e-6, 0.5])
def test_outcome_methods(rng, name, eps):
    x = inputs(rng)
    adv, returns = assign(name, x, AlgoConfig(eps=eps))
    assert returns is None
    torch.testing.assert_close(adv, broadcast_to_tokens(group_advantages(x.scores, x.group_ids, name, eps), x.mask))


def test_rover_advantage_is_grpo_or_centred(rng):
    x = inputs(rng)
    torch.testing.assert_close(assign("rover", x, AlgoConfig()).advantages, assign("grpo", x, AlgoConfig()).advantages)
    centred = AlgoConfig(rover_centred=True)
    torch.testing.assert_close(assign("rover", x, centred).advantages, assign("dr_grpo", x, AlgoConfig()).advantages)


@pytest.mark.parametrize("params", [
    dict(bundle_size=2),
    dict(bundle_size=3, alpha=0.3, beta=0.6, omega=0.5, natural_baseline=False, credit="sum_mean"),
])
def test_riskpo(rng, params):
    """Every riskpo_* setting reaches the op (not the op's defaults)."""
    x = inputs(rng, B=24)
    x.scores = torch.rand(24, generator=rng)
    cfg = AlgoConfig(**{f"riskpo_{k}": v for k, v in params.items()})
    expected = risk_advantages(x.scores, x.group_ids, **params)
    torch.testing.assert_close(assign("riskpo", x, cfg).advantages, broadcast_to_tokens(expected, x.mask))


def test_gae_rewards_the_last_token_and_whitens(rng):
    x = inputs(rng)
    cfg = AlgoConfig(gamma=0.9, lam=0.8)
    last = torch.zeros_like(x.values)
    for b in range(x.mask.shape[0]):
        last[b, x.mask[b].nonzero().max()] = x.scores[b]
    adv, ret = gae(last, x.values, x.mask, 0.9, 0.8, whiten=True)
    got = assign("gae", x, cfg)
    torch.testing.assert_close(got.advantages, adv)
    torch.testing.assert_close(got.returns, ret)


def test_gae_adds_the_token_rewards(rng):
    """token_rewards (the KL penalty in the reward, -kl_coef * k3) are added to the
    outcome at the last token, not subtracted (a sign slip makes the KL a bonus)."""
    x = inputs(rng)
    x.token_rewards = -torch.rand(x.values.shape, generator=rng) * x.mask
    cfg = AlgoConfig(gamma=0.9, lam=0.8)
    rewards = x.token_rewards.clone()
    for b in range(x.mask.shape[0]):
        rewards[b, x.mask[b].nonzero().max()] += x.scores[b]
    adv, ret = gae(rewards, x.values, x.mask, 0.9, 0.8, whiten=True)
    got = assign("gae", x, cfg)
    torch.testing.assert_close(got.returns, ret)
    torch.testing.assert_close(got.advantages, adv)


def test_gae_in_float32_whatever_the_value_head(rng):
    """A bf16 value head must not round the scores (1/3 -> 0.33398 in bf16), nor refuse
    float32 token rewards (it raised, naming a 'rewards' argument the caller never passed)."""
    x = inputs(rng)
    x.scores[:] = torch.tensor([1 / 3, 0.7, 0.1] * 4)
    cfg = AlgoConfig(gamma=1.0, lam=1.0)
    want = assign("gae", x, cfg)
    half = CreditInputs(x.scores, x.group_ids, x.mask, values=x.values.bfloat16(),
                        token_rewards=torch.full_like(x.values, 0.01))
    got = assign("gae", half, cfg)
    assert got.returns.dtype == torch.float32
    with_token_rewards = CreditInputs(x.scores, x.group_ids, x.mask, values=x.values.bfloat16().float(),
                                      token_rewards=torch.full_like(x.values, 0.01))
    torch.testing.assert_close(got.returns, assign("gae", with_token_rewards, cfg).returns)
    first = x.mask.float().argmax(-1)
    torch.testing.assert_close(want.returns[torch.arange(12), first], x.scores)  # gamma = lam = 1, values 0 at the end


@pytest.mark.parametrize("params", [
    dict(),
    dict(min_form="strict", baseline="step", verifiable_coef=0.3, zero_reward_tokens=False),
    dict(min_form="soft", temperature=0.7, baseline="none", verifiable_coef=0.0),
    dict(min_form="sum", baseline="token", verifiable_coef=2.0),
])
def test_pure(rng, params):
    """Every pure_* setting reaches pure_advantages; group ids need not start at 0."""
    x = inputs(rng)
    x.group_ids = x.group_ids + 7
    x.step_mask = x.mask & (torch.rand(x.mask.shape, generator=rng) > 0.5)
    x.step_scores = torch.randn(x.mask.shape, generator=rng)
    x.solved = x.scores
    got = assign("pure", x, AlgoConfig(**{f"pure_{k}": v for k, v in params.items()}))
    want = pure_advantages(x.step_scores, x.step_mask, x.mask, x.group_ids - 7, x.solved, **params)
    torch.testing.assert_close(got.advantages, want.advantages)
    torch.testing.assert_close(got.returns, want.returns)


def test_unknown_name():
    assert set(CREDIT) == {"grpo", "dr_grpo", "rloo", "gae", "pure", "riskpo", "rover"}
    with pytest.raises(ValueError, match="unknown credit assignment 'ppo'"):
        assign("ppo", None, AlgoConfig())


@pytest.mark.parametrize("correct", range(9))
def test_riskpo_per_group_advantage_is_never_positive_with_binary_rewards(correct):
    """Groups of 8 with 0/1 rewards (bundle_size 1, credit std): every advantage is <= 0;
    0 everywhere when 0, 1 or 8 answers are right; -24 for the one failure among 7
    successes. What RiskPO's natural baseline does, not a bug (DESIGN 3.2)."""
    x = CreditInputs(scores=torch.tensor([1.0] * correct + [0.0] * (8 - correct)),
                     group_ids=torch.zeros(8, dtype=torch.long), mask=torch.ones(8, 1))
    adv = assign("riskpo", x, AlgoConfig(riskpo_bundle_size=1)).advantages[:, 0]
    assert (adv <= 0).all()
    if correct in (0, 1, 8):
        assert (adv == 0).all()
    if correct == 7:
        torch.testing.assert_close(adv, torch.tensor([0.0] * 7 + [-24.0]), atol=1e-3, rtol=0)


def test_next_valid_skips_holes_and_keeps_the_shape():
    from fastrl.algos._tokens import last_valid, next_valid

    x = torch.tensor([[1.0, 2.0, 3.0, 4.0], [5.0, 6.0, 7.0, 8.0]])
    valid = torch.tensor([[True, False, True, True], [False, True, False, False]])
    assert next_valid(x, valid).tolist() == [[3.0, 3.0, 4.0, 0.0], [6.0, 0.0, 0.0, 0.0]]
    assert last_valid(valid).tolist() == [[False, False, False, True], [False, True, False, False]]
    empty = torch.zeros(2, 0)
    assert next_valid(empty, empty.bool()).shape == last_valid(empty.bool()).shape == (2, 0)  # was [2, 1]
