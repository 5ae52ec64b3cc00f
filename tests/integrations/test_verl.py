"""fastrl's estimators inside verl: registration and equivalence with verl's own.

`make test` installs verl (the [anchors] extra) and sets FASTRL_REQUIRE_ANCHORS=1,
so there these tests run rather than skip.
"""
import os
from pathlib import Path

import numpy as np
import pytest
import torch

if os.environ.get("FASTRL_REQUIRE_ANCHORS") == "1":
    import verl.trainer.ppo.core_algos as core_algos
else:
    core_algos = pytest.importorskip("verl.trainer.ppo.core_algos")

import fastrl.integrations.verl as fastrl_verl  # noqa: E402  (registers the estimators)
import fastrl.ops as ops  # noqa: E402


def verl_batch(rng, n_prompts=40, singletons=5):
    """Ragged masks, unequal groups (some singletons), uids shuffled as verl's string array."""
    sizes = [int(n) for n in torch.randint(2, 9, (n_prompts,), generator=rng)] + [1] * singletons
    uids = np.array([f"uid-{p}" for p, n in enumerate(sizes) for _ in range(n)], dtype=object)
    order = torch.randperm(len(uids), generator=rng).numpy()
    uids = uids[order]
    B, T = len(uids), 37
    lengths = torch.randint(1, T + 1, (B,), generator=rng)
    mask = (torch.arange(T)[None, :] < lengths[:, None]).float()
    rewards = torch.zeros(B, T)
    rewards[torch.arange(B), lengths - 1] = (torch.rand(B, generator=rng) > 0.5).float() + 0.1 * torch.randn(B, generator=rng)
    return rewards, mask, uids


def test_estimators_are_registered():
    assert fastrl_verl.registered
    for name, fn in fastrl_verl.ESTIMATORS.items():
        assert core_algos.get_adv_estimator_fn(name) is fn


@pytest.mark.parametrize("norm_by_std", [True, False])
@pytest.mark.parametrize("epsilon", [1e-6, 0.1])
def test_grpo_equals_verl(norm_by_std, epsilon, rng):
    # against verl in float64: verl's float32 misses by up to 1e-3 where a group's scores
    # are 1e-4 apart (seed 1017483729); fastrl's float32 stays within about 1e-7 of it
    rewards, mask, uids = verl_batch(rng)
    want, want_ret = core_algos.compute_grpo_outcome_advantage(
        rewards.double(), mask.double(), uids, epsilon=epsilon, norm_adv_by_std_in_grpo=norm_by_std)
    got, got_ret = fastrl_verl.fastrl_grpo(rewards, mask, uids, epsilon=epsilon, norm_adv_by_std_in_grpo=norm_by_std)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, want.float(), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(got_ret, want_ret.float(), rtol=1e-5, atol=1e-5)
    if not norm_by_std:
        dr_grpo, _ = fastrl_verl.fastrl_dr_grpo(rewards, mask, uids)
        torch.testing.assert_close(dr_grpo, want.float(), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("config", [type("AlgoConfig", (), {"norm_adv_by_std_in_grpo": False})(),
                                    {"norm_adv_by_std_in_grpo": False}], ids=["attributes", "dict"])
def test_grpo_reads_verls_config(rng, config):
    rewards, mask, uids = verl_batch(rng)
    # verl in float64, as in test_grpo_equals_verl: its float32 std-normalised GRPO missed by 1.2e-4 (seed 311)
    want, _ = core_algos.compute_grpo_outcome_advantage(rewards.double(), mask.double(), uids,
                                                        norm_adv_by_std_in_grpo=False)
    got, _ = core_algos.get_adv_estimator_fn("fastrl_grpo")(
        token_level_rewards=rewards, response_mask=mask, index=uids, config=config)
    torch.testing.assert_close(got, want.float(), rtol=1e-5, atol=1e-5)
    # a keyword passed with the config wins, as in verl's own function
    want, _ = core_algos.compute_grpo_outcome_advantage(rewards.double(), mask.double(), uids,
                                                        norm_adv_by_std_in_grpo=True)
    got, _ = fastrl_verl.fastrl_grpo(rewards, mask, uids, norm_adv_by_std_in_grpo=True, config=config)
    torch.testing.assert_close(got, want.float(), rtol=1e-5, atol=1e-5)


def test_rloo_equals_verl(rng):
    rewards, mask, uids = verl_batch(rng)
    want, want_ret = core_algos.compute_rloo_outcome_advantage(rewards.clone(), mask, uids)
    got, got_ret = fastrl_verl.fastrl_rloo(rewards, mask, uids)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(got_ret, want_ret, rtol=1e-5, atol=1e-5)


def test_bad_arguments_are_named(rng):
    rewards, mask, uids = verl_batch(rng)
    with pytest.raises(ValueError, match="index must have one uid per response"):
        fastrl_verl.fastrl_grpo(rewards, mask, uids[:-1])
    with pytest.raises(ValueError, match="index .* is required.*'uid' field"):  # verl's call without uids
        core_algos.get_adv_estimator_fn("fastrl_rloo")(token_level_rewards=rewards, response_mask=mask, config={})
    with pytest.raises(ValueError, match=r"config.riskpo: unknown key\(s\) 'bundel_size'; the keys are bundle_size"):
        fastrl_verl.fastrl_riskpo(rewards, mask, uids, config={"riskpo": {"bundel_size": 3}})
    for gamma, lam in ((None, 1.0), (1.0, "0.9")):
        with pytest.raises(TypeError, match="gamma must be a number" if gamma is None else "lam must be a number"):
            fastrl_verl.fastrl_gae(rewards, rewards, mask, gamma, lam)


def test_riskpo_adapter(rng):
    rewards, mask, uids = verl_batch(rng)
    scores = rewards.sum(-1)
    ids = ops.group_ids_from_uids(uids)
    want = ops.broadcast_to_tokens(ops.risk_advantages(scores, ids, bundle_size=3, credit="sum_mean"), mask)
    config = {"riskpo": {"bundle_size": 3, "credit": "sum_mean"}}
    got, ret = core_algos.get_adv_estimator_fn("fastrl_riskpo")(
        token_level_rewards=rewards, response_mask=mask, index=uids, config=config)
    torch.testing.assert_close(got, want)
    assert got is ret
    default, _ = fastrl_verl.fastrl_riskpo(rewards, mask, uids, bundle_size=1)
    torch.testing.assert_close(default, ops.broadcast_to_tokens(ops.risk_advantages(scores, ids, bundle_size=1), mask))
    # every parameter reaches the op, from the config or (over it) as a keyword
    params = dict(bundle_size=2, alpha=0.3, beta=0.6, omega=0.5, natural_baseline=False, credit="sum_mean")
    want = ops.broadcast_to_tokens(ops.risk_advantages(scores, ids, **params), mask)
    config = {"riskpo": {**params, "alpha": 0.1, "omega": 2.0}}
    got, _ = core_algos.get_adv_estimator_fn("fastrl_riskpo")(
        token_level_rewards=rewards, response_mask=mask, index=uids, config=config, alpha=0.3, omega=0.5)
    torch.testing.assert_close(got, want)
    assert not torch.allclose(got, fastrl_verl.fastrl_riskpo(rewards, mask, uids, config=config)[0])


@pytest.mark.parametrize("gamma, lam", [(1.0, 1.0), (0.99, 0.95)])
def test_gae_equals_verl(gamma, lam, rng, monkeypatch):
    """fastrl_gae against verl's compute_gae_advantage_return (whitened advantages, returns),
    and use_fastrl_gae() puts it where verl's trainer calls GAE."""
    rewards, mask, _ = verl_batch(rng)
    rewards = rewards + 0.05 * torch.randn(rewards.shape, generator=rng) * mask  # process rewards too
    values = torch.randn(rewards.shape, generator=rng) * mask
    want = core_algos.compute_gae_advantage_return(rewards, values, mask, gamma, lam)
    got = fastrl_verl.fastrl_gae(rewards, values, mask, gamma, lam)
    for g, w in zip(got, want):
        torch.testing.assert_close(g * mask, w * mask, rtol=1e-5, atol=1e-5)
    # a bf16 critic's values with float32 rewards: verl computes in float32, and so does the adapter
    values = values.bfloat16()
    want = core_algos.compute_gae_advantage_return(rewards, values, mask, gamma, lam)
    got = fastrl_verl.fastrl_gae(rewards, values, mask, gamma, lam)
    for g, w in zip(got, want):
        assert g.dtype == w.dtype == torch.float32
        torch.testing.assert_close(g * mask, w * mask, rtol=1e-5, atol=1e-5)
    monkeypatch.setattr(core_algos, "compute_gae_advantage_return", core_algos.compute_gae_advantage_return)
    fastrl_verl.use_fastrl_gae()
    assert core_algos.compute_gae_advantage_return is fastrl_verl.fastrl_gae
    # verl's trainer (not imported: it needs ray) reaches GAE through the module attribute
    trainer = Path(core_algos.__file__).with_name("ray_trainer.py").read_text()
    assert "core_algos.compute_gae_advantage_return(" in trainer


@pytest.mark.parametrize("config", [None, {}, type("AlgoConfig", (), {})()], ids=["none", "dict", "attributes"])
def test_grpo_without_the_flag_is_verls_default_grpo(rng, config):
    """A config without norm_adv_by_std_in_grpo (or none): verl's default, the std-normalised GRPO."""
    rewards, mask, uids = verl_batch(rng)
    want, _ = core_algos.compute_grpo_outcome_advantage(rewards.double(), mask.double(), uids)
    got, _ = core_algos.get_adv_estimator_fn("fastrl_grpo")(
        token_level_rewards=rewards, response_mask=mask, index=uids, config=config)
    torch.testing.assert_close(got, want.float(), rtol=1e-5, atol=1e-5)
    dr_grpo, _ = fastrl_verl.fastrl_dr_grpo(rewards, mask, uids)
    assert not torch.allclose(got, dr_grpo)
