"""fastrl's advantage estimators in verl's registry.

Importing this module registers ``fastrl_grpo``, ``fastrl_dr_grpo``,
``fastrl_rloo`` and ``fastrl_riskpo`` with
``verl.trainer.ppo.core_algos.register_adv_est`` when verl is importable
(without verl the functions still work on their own). Switch a verl run over
with one line of config::

    algorithm.adv_estimator=fastrl_grpo

``fastrl_riskpo`` reads its parameters (bundle_size, alpha, beta, omega,
natural_baseline, credit; defaults as ``fastrl.ops.risk_advantages``) from a
``riskpo`` section of the algorithm config (``+algorithm.riskpo.bundle_size=5``)
or from keyword arguments (which win); an unknown key in that section is an error.

Each takes verl's call (token_level_rewards [B, T], response_mask [B, T],
index: the numpy object array of uids, config, ...) and returns
(advantages, returns), both [B, T], as verl's own estimators do.

GAE is not in that registry: verl's trainer calls
``core_algos.compute_gae_advantage_return`` by name, with the critic's values.
``fastrl_gae`` has its signature and results (advantages whitened over the
batch, as verl does); ``use_fastrl_gae()`` puts it in that place.
"""
from __future__ import annotations

import importlib.util
import numbers
import warnings

import torch

from fastrl.ops import _checks
from fastrl.ops.advantages import broadcast_to_tokens, group_advantages, group_ids_from_uids, risk_advantages
from fastrl.ops.scans import gae

RISKPO_DEFAULTS = dict(bundle_size=5, alpha=0.2, beta=0.8, omega=1.5, natural_baseline=True, credit="std")


def _outcome_advantages(token_level_rewards, response_mask, index, advantage_fn):
    """Sequence scores and group ids from verl's call, advantage_fn(scores, ids), broadcast to tokens."""
    _checks.floating("token_level_rewards", token_level_rewards, ndim=2)
    _checks.mask("response_mask", response_mask, "token_level_rewards", token_level_rewards)
    if index is None:  # verl passes index only for a batch with a "uid" field
        raise ValueError("index (the responses' uids) is required: grouped advantages need the prompt of each "
                         "response, and verl passes them only when the batch has a 'uid' field")
    if len(index) != token_level_rewards.shape[0]:
        raise ValueError(f"index must have one uid per response ({token_level_rewards.shape[0]}), got {len(index)}")
    with torch.no_grad():
        scores = token_level_rewards.sum(dim=-1)
        group_ids = group_ids_from_uids(index).to(scores.device, non_blocking=True)
        advantages = broadcast_to_tokens(advantage_fn(scores, group_ids), response_mask)
    return advantages, advantages


def _config_value(config, key, default):
    """config[key] from verl's AlgoConfig, an OmegaConf DictConfig or a plain dict (default where absent)."""
    if config is None:
        return default
    return config.get(key, default) if hasattr(config, "get") else getattr(config, key, default)


def _grouped(token_level_rewards, response_mask, index, method, epsilon):
    return _outcome_advantages(token_level_rewards, response_mask, index,
                               lambda scores, ids: group_advantages(scores, ids, method, epsilon))


def fastrl_grpo(token_level_rewards, response_mask, index=None, epsilon: float = 1e-6,
                norm_adv_by_std_in_grpo: bool | None = None, config=None, **kwargs):
    """verl's ``grpo`` (``norm_adv_by_std_in_grpo=False``: Dr.GRPO), one fused op. verl's
    trainer passes a registered estimator only ``config``, so the flag is read there; a
    keyword passed here wins, as it does in verl's own function."""
    if norm_adv_by_std_in_grpo is None:
        norm_adv_by_std_in_grpo = _config_value(config, "norm_adv_by_std_in_grpo", True)
    method = "grpo" if norm_adv_by_std_in_grpo else "dr_grpo"
    return _grouped(token_level_rewards, response_mask, index, method, epsilon)


def fastrl_dr_grpo(token_level_rewards, response_mask, index=None, epsilon: float = 1e-6, config=None, **kwargs):
    """Dr.GRPO: the group mean subtracted, no std scaling."""
    return _grouped(token_level_rewards, response_mask, index, "dr_grpo", epsilon)


def fastrl_rloo(token_level_rewards, response_mask, index=None, epsilon: float = 1e-6, config=None, **kwargs):
    """verl's ``rloo``: each score minus the mean of the other responses to its prompt."""
    return _grouped(token_level_rewards, response_mask, index, "rloo", epsilon)


def fastrl_riskpo(token_level_rewards, response_mask, index=None, config=None, **kwargs):
    """RiskPO's risk-quantile advantages with question bundling (``fastrl.ops.risk_advantages``)."""
    params = dict(RISKPO_DEFAULTS)
    section = _config_value(config, "riskpo", None) or {}
    if unknown := sorted(set(section) - set(RISKPO_DEFAULTS)):  # (keywords may hold verl's other inputs)
        raise ValueError(f"config.riskpo: unknown key(s) {', '.join(map(repr, unknown))}; "
                         f"the keys are {', '.join(RISKPO_DEFAULTS)}")
    for source in (section, kwargs):
        params.update({key: source[key] for key in RISKPO_DEFAULTS if key in source})
    return _outcome_advantages(token_level_rewards, response_mask, index,
                               lambda scores, ids: risk_advantages(scores, ids, **params))


def fastrl_gae(token_level_rewards, values, response_mask, gamma=1.0, lam=1.0):
    """verl's ``compute_gae_advantage_return``: one scan, advantages whitened over the valid tokens."""
    for name, value in (("gamma", gamma), ("lam", lam)):
        if isinstance(value, bool) or not isinstance(value, (numbers.Real, torch.Tensor)):  # (numpy's too)
            raise TypeError(f"{name} must be a number, got {type(value).__name__}: {value!r}")
    # verl's critic may hand over bf16 values with float32 rewards, and verl's loop computes in
    # the promoted dtype; fastrl's op, like every op, wants one dtype
    dtype = torch.promote_types(token_level_rewards.dtype, values.dtype)
    with torch.no_grad():
        return gae(token_level_rewards.to(dtype), values.to(dtype), response_mask, float(gamma), float(lam),
                   whiten=True)


def use_fastrl_gae() -> None:
    """Make verl's GAE branch (``algorithm.adv_estimator=gae``) run ``fastrl_gae``: its
    trainer calls ``core_algos.compute_gae_advantage_return`` through the module."""
    from verl.trainer.ppo import core_algos

    core_algos.compute_gae_advantage_return = fastrl_gae


ESTIMATORS = {"fastrl_grpo": fastrl_grpo, "fastrl_dr_grpo": fastrl_dr_grpo, "fastrl_rloo": fastrl_rloo,
              "fastrl_riskpo": fastrl_riskpo}


def register() -> bool:
    """Register the estimators with verl; False when verl is not importable (a warning where
    verl is installed: an estimator named in a run's config would be unknown, with no hint why)."""
    try:
        from verl.trainer.ppo.core_algos import register_adv_est
    except ImportError as e:
        if importlib.util.find_spec("verl") is not None:
            warnings.warn(f"fastrl.integrations.verl: verl is installed but does not import ({e}); fastrl's "
                          "estimators are not registered", RuntimeWarning, stacklevel=2)
        return False
    for name, fn in ESTIMATORS.items():
        register_adv_est(name)(fn)
    return True


registered = register()
