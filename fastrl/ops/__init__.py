"""fastrl's ops: ``torch.ops.fastrl.*`` with validated public functions.

Each family lives in its own module (schema, public function, dispatch, fake);
see fastrl/ops/_registry.py for how a backend is chosen.
"""
from fastrl.ops._registry import available_backends, backend_for, use_backend
from fastrl.ops.advantages import (
    broadcast_to_tokens,
    group_advantages,
    group_ids_from_uids,
    risk_advantages,
)
from fastrl.ops.logprobs import TokenStats, linear_logprobs, logprobs_from_logits
from fastrl.ops.sampling import Sampled, sample
from fastrl.ops.scans import discounted_returns, gae, min_form_returns

from fastrl.ops import _registry

_registry.load_extension()  # after every schema is defined, so the kernels register against them

__all__ = [
    "TokenStats",
    "available_backends",
    "backend_for",
    "broadcast_to_tokens",
    "group_advantages",
    "group_ids_from_uids",
    "discounted_returns",
    "gae",
    "linear_logprobs",
    "logprobs_from_logits",
    "min_form_returns",
    "risk_advantages",
    "Sampled",
    "sample",
    "use_backend",
]
