"""Argument validation shared by the public ops.

Shape, rank, dtype and device are always checked. Value checks (NaN/Inf, ids
or labels out of range) read the data: they always run on CPU, and on CUDA
only with ``FASTRL_CHECK=1``, since there they would sync with the host. Under
torch.compile a CPU value check is an assert op of the graph, which raises a
RuntimeError with the same message when it runs (on CUDA none is made there: a
failed device assert would end the process's use of the GPU).
"""
from __future__ import annotations

import os
from typing import Callable

import torch

FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def values_checked(x: torch.Tensor) -> bool:
    if torch.compiler.is_compiling():
        return x.device.type == "cpu"
    return x.device.type == "cpu" or os.environ.get("FASTRL_CHECK") == "1"


def require(ok: torch.Tensor, message: str, found: Callable[[], str] | None = None):
    """ValueError(message + found()) unless the bool tensor ``ok`` holds; under torch.compile an
    assert op of the graph (``found`` reads the data: eager only)."""
    if torch.compiler.is_compiling():
        torch._assert_async(ok, message)
    elif not bool(ok):
        raise ValueError(message if found is None else message + found())


def tensor(name: str, x, ndim: int | None = None) -> torch.Tensor:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if ndim is not None and x.dim() != ndim:
        raise ValueError(f"{name} must have {ndim} dimensions, got shape {tuple(x.shape)}")
    return x


def floating(name: str, x, ndim: int | None = None) -> torch.Tensor:
    tensor(name, x, ndim)
    if x.dtype not in FLOAT_DTYPES:
        raise TypeError(f"{name} must be float16, bfloat16, float32 or float64, got {x.dtype}")
    return x


def mask(name: str, m, like_name: str, like: torch.Tensor) -> torch.Tensor:
    """A mask shaped like ``like``: bool or any real dtype, nonzero means valid."""
    tensor(name, m, like.dim())
    if m.dtype.is_complex:
        raise TypeError(f"{name} must be bool, integer or float, got {m.dtype}")
    same_shape(name, m, like_name, like)
    return m


def same_shape(name: str, x: torch.Tensor, like_name: str, like: torch.Tensor):
    if x.shape != like.shape:
        raise ValueError(
            f"{name} must have the shape of {like_name} {tuple(like.shape)}, got {tuple(x.shape)}"
        )
    same_device(name, x, like_name, like)


def same_device(name: str, x: torch.Tensor, like_name: str, like: torch.Tensor):
    if x.device != like.device:
        raise ValueError(f"{name} is on {x.device} but {like_name} is on {like.device}")


def same_dtype(name: str, x: torch.Tensor, like_name: str, like: torch.Tensor):
    if x.dtype != like.dtype:
        raise TypeError(f"{name} has dtype {x.dtype} but {like_name} has {like.dtype}")


def finite(name: str, x: torch.Tensor):
    if not values_checked(x) or x.numel() == 0:
        return
    low, high = torch.aminmax(x)  # NaN propagates; one pass, no [B, T] temporary
    require(torch.isfinite(low) & torch.isfinite(high), f"{name} contains NaN or Inf")


def finite_where(name: str, x: torch.Tensor, valid: torch.Tensor):
    """NaN/Inf where ``valid`` (token values: masked positions may hold anything, e.g. -inf padding)."""
    if values_checked(x):
        finite(name, x.detach().masked_fill(~valid, 0))


def in_range(name: str, value, low: float, high: float):
    value = number(name, value)
    if not low <= value <= high:
        raise ValueError(f"{name} must be in [{low}, {high}], got {value}")
    return value


def positive(name: str, value):
    value = number(name, value)
    if not value > 0:
        raise ValueError(f"{name} must be > 0, got {value}")
    return value


def number(name: str, value) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a number, got {type(value).__name__}")
    value = float(value)
    if value != value or value in (float("inf"), float("-inf")):
        raise ValueError(f"{name} must be finite, got {value}")
    return value


INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1


def int64(name: str, value) -> int:
    """An int argument: the schemas' ``int`` is int64, so a larger one is an error here, not
    the dispatcher's RuntimeError, which names the op but not the value."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if not INT64_MIN <= value <= INT64_MAX:
        raise ValueError(f"{name} must fit in int64, [-2**63, 2**63), got {value}")
    return value


def choice(name: str, value, options):
    if value not in options:
        raise ValueError(f"{name} must be one of {tuple(options)}, got {value!r}")
    return value


def finite_or_neg_inf(name: str, x: torch.Tensor) -> torch.Tensor | None:
    """Logits: -inf marks a token that cannot be drawn; NaN, +inf and rows without a finite value
    are errors. Returns the rows' maxima where it read them (None where values are not checked)."""
    if not values_checked(x) or x.numel() == 0:
        return None
    row_max = x.amax(-1)  # NaN propagates
    require(torch.isfinite(row_max).all() & ~torch.isnan(x.amin()),
            f"{name} contains NaN or +Inf, or a row without a finite value")
    return row_max
