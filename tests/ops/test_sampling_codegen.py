"""The Triton sampler as compiled for sm_90a, checked without a GPU: a GPU run once
found its bf16 loads scalar (a tile start whose alignment Triton could not see)."""
import ast
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

triton = pytest.importorskip("triton")
ROOT = Path(__file__).resolve().parents[2]


def test_plain_sampling_loop_is_vectorised_and_stays_in_each_thread():
    if not (Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "cuobjdump").exists():
        pytest.skip("this triton carries no NVIDIA tools")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}  # compile, not interpret
    env["TRITON_DEFAULT_FP_FUSION"] = "1"
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "sampling_sass.py"), "--config", "4096x8"],
                          capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    summary, opcodes = done.stdout.strip().splitlines()[-2:]
    loads = ast.literal_eval(re.search(r"loads (\{.*?\})", summary).group(1))
    assert loads.get("ld.global.v2.b32", 0) >= 8, summary  # 4 bf16 a load
    assert loads.get("ld.global.b16", 0) <= 1, summary  # only the drawn token's logit
    per_token = float(re.search(r"([\d.]+) per token", summary).group(1))
    assert per_token < 60, summary
    assert int(re.search(r"(\d+) registers", summary).group(1)) <= 128, summary
    assert not re.search(r"\b(SHFL|BAR) ", opcodes), opcodes  # no exchange between threads in the loop
