import os

import pytest
import torch


def pytest_report_header(config):
    """Triton's interpreter before 3.9 takes int() of one-element arrays, which NumPy 2.4 refuses:
    every Triton test on the CPU then fails with "only 0-dimensional arrays can be converted"
    (seen with triton 3.2 and 3.6 beside numpy 2.4.6; triton 3.9 passes; numpy 2.3.5 only warns)."""
    if os.environ.get("TRITON_INTERPRET") != "1":
        return None
    try:
        import numpy
        import triton
    except ImportError:
        return None
    version = lambda v: tuple(int(x) for x in v.split(".")[:2])  # noqa: E731
    if version(triton.__version__) < (3, 9) and version(numpy.__version__) >= (2, 4):
        return (f"WARNING: triton {triton.__version__}'s interpreter fails under numpy {numpy.__version__}: "
                f"run the Triton tests with triton >= 3.9 (under numpy < 2.4 one fails, on its warning)")
    return None


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
