"""Builds fastrl._C: the C++ CPU kernels always, the CUDA kernels when torch is
a CUDA build and nvcc is found (never decided by whether a GPU is present).

FASTRL_SKIP_EXT=1 installs without compiling (every op then runs its next backend:
on a GPU its Triton one where it has one, else its torch one, else its reference); FASTRL_NO_CUDA=1 builds the CPU kernels only.
"""
import glob
import os
import re
import subprocess
import sys

from setuptools import setup

ROOT = os.path.dirname(os.path.abspath(__file__))


def nvcc_version(cuda_home):
    """The CUDA release of CUDA_HOME's nvcc ("13.0"), or None where it cannot be run."""
    try:
        out = subprocess.run([os.path.join(cuda_home, "bin", "nvcc"), "--version"], capture_output=True,
                             text=True, timeout=60).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    found = re.search(r"release (\d+\.\d+)", out)
    return found and found.group(1)


def check_cuda_major(torch_cuda, cuda_home):
    """torch's build refuses an nvcc of another CUDA major version, without naming the way
    out; say both."""
    nvcc = nvcc_version(cuda_home)
    if nvcc is not None and nvcc.split(".")[0] != torch_cuda.split(".")[0]:
        sys.exit(f"fastrl: torch is built with CUDA {torch_cuda} but the nvcc in CUDA_HOME ({cuda_home}) is "
                 f"CUDA {nvcc}, which cannot build kernels for it. Point CUDA_HOME at a CUDA "
                 f"{torch_cuda.split('.')[0]}.x toolkit, or set FASTRL_NO_CUDA=1 to build the CPU kernels "
                 f"only (on a GPU the ops then run their Triton or PyTorch backends).")


def extensions():
    if os.environ.get("FASTRL_SKIP_EXT") == "1":
        return [], {}
    import torch
    from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CppExtension, CUDAExtension

    with_cuda = (
        torch.version.cuda is not None
        and CUDA_HOME is not None
        and os.environ.get("FASTRL_NO_CUDA") != "1"
    )
    sources = sorted(glob.glob("csrc/*.cpp") + glob.glob("csrc/cpu/*.cpp"))
    torch_version = torch.__version__.split("+")[0]
    macros = [("FASTRL_TORCH_VERSION", f'"{torch_version}"')]
    cxx = ["-O3", "-fvisibility=hidden"]
    link = []
    if sys.platform.startswith("linux"):
        # at::parallel_for is a header template over OpenMP: without -fopenmp it runs serially.
        cxx.append("-fopenmp")
        link.append("-fopenmp")
    extra = {"cxx": cxx}
    kind = CppExtension
    if with_cuda:
        check_cuda_major(torch.version.cuda, CUDA_HOME)
        sources += sorted(glob.glob("csrc/cuda/*.cu"))
        macros += [("FASTRL_WITH_CUDA", None), ("FASTRL_CUDA_VERSION", f'"{torch.version.cuda}"')]
        extra["nvcc"] = ["-O3", "-lineinfo"]
        kind = CUDAExtension
    ext = kind(
        "fastrl._C",
        sources,
        include_dirs=[os.path.join(ROOT, "csrc", "include")],
        define_macros=macros,
        extra_compile_args=extra,
        extra_link_args=link,
    )
    return [ext], {"build_ext": BuildExtension.with_options(use_ninja=True)}


ext_modules, cmdclass = extensions()
setup(ext_modules=ext_modules, cmdclass=cmdclass)
