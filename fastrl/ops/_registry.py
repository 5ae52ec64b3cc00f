"""The op registry: schemas, fallbacks, fakes and backend choice, in one place.

Every op is defined here once, in Python, so ``torch.ops.fastrl.<name>`` exists
whether or not the extension was compiled. Its reference implementation is
registered as the CompositeExplicitAutograd kernel (the fallback for every
device); the extension then registers faster CPU/CUDA kernels from C++
(``TORCH_LIBRARY_IMPL``), which the dispatcher prefers.

Backends (``use_backend`` or the ``FASTRL_BACKEND`` environment variable):
``reference`` (plain PyTorch), ``cpp`` (C++ CPU kernels), ``cuda`` (CUDA
kernels) and ``triton``. A forced backend serves every op that implements it
on the inputs' device; the other ops keep their default (``fastrl info`` shows
which backend serves what). Defaults: CPU tensors ``cpp``, then ``reference``;
CUDA tensors ``cuda``, then ``triton``, then ``reference``.
"""
from __future__ import annotations

import contextlib
import dataclasses
import os
from typing import Callable, Optional

import torch

from fastrl import _extension

BACKENDS = ("reference", "cpp", "cuda", "triton")
_DEFAULT_ORDER = {"cpu": ("cpp", "reference"), "cuda": ("cuda", "triton", "reference")}

LIB = torch.library.Library("fastrl", "DEF")


@dataclasses.dataclass
class OpEntry:
    name: str
    reference: Callable
    triton: Optional[Callable] = None
    # Which compiled kernels the dispatcher holds, filled in once the extension loads.
    compiled: dict = dataclasses.field(default_factory=dict)


OPS: dict[str, OpEntry] = {}


def _env_backend():
    name = os.environ.get("FASTRL_BACKEND") or None
    if name is not None and name not in BACKENDS:
        raise ValueError(f"FASTRL_BACKEND must be one of {BACKENDS}, got {name!r}")
    return name


_forced: Optional[str] = _env_backend()


def define(schema: str, reference: Callable, fake: Callable, triton: Optional[Callable] = None):
    """Define ``fastrl::<name>`` with its reference fallback and fake (meta) kernel."""
    name = schema.split("(", 1)[0]
    LIB.define(schema)
    LIB.impl(name, reference, "CompositeExplicitAutograd")
    torch.library.register_fake(f"fastrl::{name}", fake, lib=LIB)
    OPS[name] = OpEntry(name, reference, triton)
    return getattr(torch.ops.fastrl, name).default


def refresh_compiled():
    """Record which ops the loaded extension registered kernels for."""
    for entry in OPS.values():
        for key in ("CPU", "CUDA"):
            entry.compiled[key] = torch._C._dispatch_has_kernel_for_dispatch_key(
                f"fastrl::{entry.name}", key
            )


def _triton_usable(device_type: str) -> bool:
    if device_type == "cpu" and os.environ.get("TRITON_INTERPRET") != "1":
        return False
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True


def available_backends(name: str, device_type: str) -> tuple[str, ...]:
    """Backends that can run op ``name`` on tensors of ``device_type`` here."""
    entry = OPS[name]
    found = ["reference"]
    if device_type == "cpu" and entry.compiled.get("CPU"):
        found.append("cpp")
    if device_type == "cuda" and entry.compiled.get("CUDA"):
        found.append("cuda")
    if entry.triton is not None and _triton_usable(device_type):
        found.append("triton")
    return tuple(found)


def backend_for(name: str, device_type: str) -> str:
    """The backend that serves op ``name`` for tensors on ``device_type`` now."""
    available = available_backends(name, device_type)
    if _forced in available:
        return _forced
    for backend in _DEFAULT_ORDER.get(device_type, ("reference",)):
        if backend in available:
            return backend
    return "reference"


def implementation(name: str, device: torch.device) -> Callable:
    """The callable that runs op ``name`` on ``device`` with the schema's arguments."""
    backend = backend_for(name, device.type)
    entry = OPS[name]
    if backend == "reference":
        return entry.reference
    if backend == "triton":
        return entry.triton
    return getattr(torch.ops.fastrl, name).default


@contextlib.contextmanager
def use_backend(name: Optional[str]):
    """Force a backend (or ``None`` for the defaults) inside a ``with`` block."""
    global _forced
    if name is not None and name not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS} or None, got {name!r}")
    previous, _forced = _forced, name
    try:
        yield
    finally:
        _forced = previous


def load_extension():
    _extension.load()
    refresh_compiled()
