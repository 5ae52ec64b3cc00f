import os

import pytest
import torch


def _cuda_available():
    return torch.cuda.is_available()  # queried when a test runs, never at import


@pytest.fixture(params=["cpu", "cuda"])
def device(request):
    if request.param == "cuda" and not _cuda_available():
        pytest.skip("no GPU")
    return torch.device(request.param)


@pytest.fixture
def rng(request):
    """A generator with a fresh seed per test, printed so a failure can be replayed
    (FASTRL_TEST_SEED=<seed> pins it)."""
    seed = int(os.environ.get("FASTRL_TEST_SEED") or int.from_bytes(os.urandom(4), "little"))
    print(f"seed={seed}")
    return torch.Generator().manual_seed(seed)
