"""The Triton log-prob kernels compile for sm_90 without a GPU: CI has none, and a kernel
edited and tested only in the interpreter could otherwise first fail on a GPU machine.
Compiled in a subprocess: under TRITON_INTERPRET=1 (as CI runs) @triton.jit makes
interpreted functions, which cannot be compiled."""
import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

triton = pytest.importorskip("triton")
KERNELS = Path(__file__).resolve().parents[2] / "kernels" / "logprobs.py"


def compile_all():
    """Print one line per kernel and config compiled to PTX for sm_90."""
    import torch
    import triton.compiler as tc
    import triton.language as tl
    from triton.backends.compiler import GPUTarget

    spec = importlib.util.spec_from_file_location("logprobs_kernels", KERNELS)
    kernels = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(kernels)

    def arg_type(name, dtype):
        if name in ("logits_ptr", "hidden_ptr", "weight_ptr", "bias_ptr", "grad_ptr"):
            return "*" + dtype
        if name.endswith("_ptr"):
            return "*i64" if name == "labels_ptr" else "*fp32"
        return "i64" if name == "ignore_index" else "i32"

    def ptx(fn, dtype, constants, num_warps):
        names = fn.arg_names
        source = tc.ASTSource(fn=fn, signature={n: "constexpr" if n in constants else arg_type(n, dtype) for n in names},
                              constexprs={(names.index(k),): v for k, v in constants.items()})
        return triton.compile(source, target=GPUTarget("cuda", 90, 32), options={"num_warps": num_warps}).asm["ptx"]

    for dtype, torch_dtype in (("bf16", torch.bfloat16), ("fp32", torch.float32)):
        for entropy in (False, True):
            for fn, constants in ((kernels._logits_stats_kernel, dict(WANT_ENTROPY=entropy, WANT_MEAN=True)),
                                  (kernels._logits_grad_kernel, dict(HAS_ENTROPY=entropy))):
                code = ptx(fn, dtype, dict(constants, ACC=tl.float32, BLOCK_V=4096), 8)
                print(fn.__name__, dtype, entropy, ".entry" in code)
        config = kernels._linear_config(torch_dtype)
        code = ptx(kernels._linear_stats_kernel, dtype,
                   dict(HAS_BIAS=True, WANT_ENTROPY=True, WANT_MEAN=True, ACC=tl.float32,
                        PRECISION="ieee" if dtype == "fp32" else "tf32",
                        **{k: v for k, v in config.items() if k.startswith("BLOCK")}), config["num_warps"])
        print("_linear_stats_kernel", dtype, True, ".entry" in code)


def test_log_prob_kernels_compile_for_sm90():
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["TRITON_DEFAULT_FP_FUSION"] = "1"
    done = subprocess.run([sys.executable, __file__], capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    lines = done.stdout.split("\n")
    compiled = [line for line in lines if line.endswith(" True") and line.split()[0].startswith("_")]
    assert len(compiled) == 10, done.stdout  # 2 dtypes x (2 entropy x 2 row kernels + the fused kernel)


if __name__ == "__main__":
    compile_all()
