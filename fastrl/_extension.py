"""Loading of the compiled kernels (fastrl._C).

Loading registers the C++/CUDA kernels with the dispatcher. A missing
extension (installed with FASTRL_SKIP_EXT=1) is silent, a broken one is a
warning: either way every op still runs, on its next backend (on a GPU its Triton one
where it has one, else its torch one, else its reference).
"""
import importlib
import importlib.util
import warnings

import torch

module = None  # fastrl._C once loaded
status = "not built"  # what `fastrl info` reports


def _running_torch():
    return torch.__version__.split("+")[0]


# a built wheel's kernels work with the torch they were compiled against only
REBUILD = ("Rebuild fastrl against the torch installed: from its source (a checkout or the sdist), "
           "`pip install --no-build-isolation .` (`-e .` for a checkout)")


def load():
    global module, status
    if importlib.util.find_spec("fastrl._C") is None:
        return None
    try:
        module = importlib.import_module("fastrl._C")
    except Exception as exc:  # an ABI mismatch after a torch upgrade lands here
        status = f"failed to load ({type(exc).__name__}: {exc})"
        warnings.warn(
            f"fastrl: the compiled kernels failed to load ({exc}); each op runs its next backend "
            f"(Triton or plain PyTorch). {REBUILD}.",
            RuntimeWarning,
            stacklevel=3,
        )
        return None
    status = "loaded"
    return module


def build_mismatch():
    """A sentence if the extension was built against another torch than the running one."""
    if module is None:
        return None
    built, running = module.built_with_torch, _running_torch()
    cuda_built, cuda_running = module.built_with_cuda or None, torch.version.cuda
    if built != running or (module.with_cuda and cuda_built != cuda_running):
        return (
            f"the extension was built with torch {built} (CUDA {cuda_built}) but torch {running} "
            f"(CUDA {cuda_running}) is running: {REBUILD[0].lower() + REBUILD[1:]}"
        )
    return None
