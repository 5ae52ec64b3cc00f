"""The op registry: schemas, fallbacks, fakes and backend choice, in one place.

Every op is defined here once, in Python, so ``torch.ops.fastrl.<name>`` exists
whether or not the extension was compiled. Its reference implementation is
registered as the CompositeExplicitAutograd kernel (the fallback for every
device); the extension then registers faster CPU/CUDA kernels from C++
(``TORCH_LIBRARY_IMPL``), which the dispatcher prefers. An op with a gradient
registers it (``torch.library.register_autograd``); one without
(``differentiable=False``) gets an Autograd kernel that runs it below autograd,
so that on every backend its outputs never require grad.

Backends (``use_backend`` or the ``FASTRL_BACKEND`` environment variable):
``reference`` (plain PyTorch, obviously correct), ``cpp`` (C++ CPU kernels),
``cuda`` (CUDA kernels), ``triton``, and ``torch`` (a PyTorch implementation
built for memory or speed, e.g. the chunked vocabulary ops). A forced backend
serves every op that implements it on the inputs' device; the other ops keep
their default (``fastrl info`` shows which backend serves what). Defaults: CPU
tensors ``cpp``, ``torch``, ``reference``; CUDA tensors ``cuda``, ``triton``,
``torch``, ``reference``.
"""
from __future__ import annotations

import contextlib
import dataclasses
import functools
import os
import threading
from typing import Callable, Optional

import torch

from fastrl import _extension

BACKENDS = ("reference", "cpp", "cuda", "triton", "torch")
_DEFAULT_ORDER = {"cpu": ("cpp", "torch", "reference"), "cuda": ("cuda", "triton", "torch", "reference")}

LIB = torch.library.Library("fastrl", "DEF")


@dataclasses.dataclass
class OpEntry:
    name: str
    reference: Callable
    triton: Optional[Callable] = None
    torch: Optional[Callable] = None
    differentiable: bool = True
    # Which compiled kernels the dispatcher holds, filled in once the extension loads.
    compiled: dict = dataclasses.field(default_factory=dict)


OPS: dict[str, OpEntry] = {}


# Checked when an op is dispatched (backend_for), not on import, so that `fastrl` can name a
# bad value in one line instead of a traceback from `import fastrl`. Per thread: use_backend
# in one thread leaves the others' ops alone (a threading.local, which torch.compile traces
# and guards on; it cannot trace a ContextVar).
class _Forced(threading.local):
    def __init__(self):
        self.name: Optional[str] = os.environ.get("FASTRL_BACKEND") or None


_FORCED = _Forced()


def forced() -> Optional[str]:
    """The backend forced in this thread (use_backend, else FASTRL_BACKEND), or None."""
    return _FORCED.name


def forced_backend_error() -> Optional[str]:
    """What is wrong with the forced backend (FASTRL_BACKEND), or None."""
    if forced() is not None and forced() not in BACKENDS:
        return f"FASTRL_BACKEND must be one of {', '.join(BACKENDS)} or unset, got {forced()!r}"
    return None


def define(
    schema: str,
    reference: Callable,
    fake: Callable,
    triton: Optional[Callable] = None,
    torch_impl: Optional[Callable] = None,
    tags=(),
    differentiable: bool = True,
):
    """Define ``fastrl::<name>``: its fake (meta) kernel and, for any device
    without a compiled kernel, a fallback that runs the backend ``backend_for``
    picks among the Python ones (reference, torch, triton).

    ``differentiable=False``: the op has no gradient, on every backend alike.
    Without an Autograd kernel, the compiled kernels' outputs would require grad
    and warn on backward (PyTorch's fallback for a custom op), while the Python
    backends would record a real graph through their PyTorch calls."""
    name = schema.split("(", 1)[0]
    # A backward op's last argument names its forward's backend: a torch.compile'd graph cannot carry
    # a use_backend block to where and when autograd runs its backward. None (the default, so that a
    # graph cached before the argument existed still runs) is the defaults, as use_backend(None).
    LIB.define(schema, tags=tags)
    op = getattr(torch.ops.fastrl, name).default
    arity, takes_backend = len(op._schema.arguments), op._schema.arguments[-1].name == "backend"
    if not differentiable:
        reference, triton, torch_impl = (_without_grad(f) for f in (reference, triton, torch_impl))
    OPS[name] = OpEntry(name, reference, triton, torch_impl, differentiable)

    def fallback(*args):
        device = next(a.device for a in args if isinstance(a, torch.Tensor))
        if not takes_backend:
            return _backend_callable(name, device)(*args)
        backend = args[arity - 1] if len(args) == arity else None  # (a call may leave the defaulted backend out)
        with use_backend(backend):
            return _backend_callable(name, device)(*args[:arity - 1])

    LIB.impl(name, fallback, "CompositeExplicitAutograd")
    if not differentiable:
        LIB.impl(name, _below_autograd(op), "Autograd")
    torch.library.register_fake(f"fastrl::{name}", fake, lib=LIB)
    return op


def _below_autograd(op):
    """The Autograd kernel of an op without a gradient: the op again, below autograd (what
    opcheck asks of a non-differentiable op), so no graph is recorded and no output requires grad."""
    def kernel(*args):
        with torch._C._AutoDispatchBelowAutograd():
            return op(*args)

    return kernel


def _without_grad(fn: Optional[Callable]) -> Optional[Callable]:
    """A Python backend of an op without a gradient, for the public functions that call it
    directly (past the op's Autograd kernel, to honour a forced backend): run under no_grad."""
    if fn is None:
        return None

    @functools.wraps(fn)
    def run(*args):
        with torch.no_grad():
            return fn(*args)

    return run


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
    if entry.torch is not None:
        found.append("torch")
    return tuple(found)


def backend_for(name: str, device_type: str) -> str:
    """The backend that serves op ``name`` for tensors on ``device_type`` now."""
    if error := forced_backend_error():
        raise ValueError(error)
    available = available_backends(name, device_type)
    if forced() in available:
        return forced()
    for backend in _DEFAULT_ORDER.get(device_type, ("reference",)):
        if backend in available:
            return backend
    return "reference"


def implementation(name: str, device: torch.device) -> Callable:
    """The callable that runs op ``name`` on ``device`` with the schema's arguments: the
    registered op wherever the dispatcher picks what ``backend_for`` does (a compiled kernel,
    or the fallback on a device without one), so ``torch.compile`` sees the op and its fake
    rather than tracing a Python backend's data-dependent code (group ids read back with
    .tolist() break a fullgraph compile); the Python backend itself where the dispatcher
    would not run it (a backend forced over a compiled kernel) or where the op has a
    gradient (its Python backends' own autograd stays in charge)."""
    entry = OPS[name]
    compiled_here = entry.compiled.get({"cpu": "CPU", "cuda": "CUDA"}.get(device.type, ""), False)
    if not entry.differentiable and not compiled_here:
        return getattr(torch.ops.fastrl, name).default
    return _backend_callable(name, device)


def _backend_callable(name: str, device: torch.device) -> Callable:
    """The Python callable of the backend ``backend_for`` picks (or the op, for a compiled one)."""
    backend = backend_for(name, device.type)
    entry = OPS[name]
    if backend == "reference":
        return entry.reference
    if backend == "triton":
        return entry.triton
    if backend == "torch":
        return entry.torch
    return getattr(torch.ops.fastrl, name).default


@contextlib.contextmanager
def use_backend(name: Optional[str]):
    """Force a backend (or ``None`` for the defaults) inside a ``with`` block, in this thread only."""
    if name is not None and name not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS} or None, got {name!r}")
    previous, _FORCED.name = _FORCED.name, name
    try:
        yield
    finally:
        _FORCED.name = previous


def load_extension():
    _extension.load()
    refresh_compiled()
