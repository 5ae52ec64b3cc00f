"""Builds fastrl._C: the C++ CPU kernels always, the CUDA kernels when torch is
a CUDA build and nvcc is found (never decided by whether a GPU is present).

FASTRL_SKIP_EXT=1 installs without compiling (every op then runs its next backend:
on a GPU its Triton one where it has one, else its torch one, else its reference); FASTRL_NO_CUDA=1 builds the CPU kernels only.
"""
import glob
import os
import sys

from setuptools import setup

ROOT = os.path.dirname(os.path.abspath(__file__))


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
