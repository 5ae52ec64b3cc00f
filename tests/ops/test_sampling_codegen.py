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


@pytest.mark.parametrize("config", ["4096x8", "4096x8f"])
def test_sampler_loops_are_vectorised_and_stay_in_each_thread(config):
    """Plain sampling (4096x8) and top-p (4096x8f): every innermost loop (a pass over
    tiles) without shuffles or barriers, bf16 loaded 4 or 8 at a time."""
    if not (Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "cuobjdump").exists():
        pytest.skip("this triton carries no NVIDIA tools")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}  # compile, not interpret
    env["TRITON_DEFAULT_FP_FUSION"] = "1"
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "sampling_sass.py"), "--config", config],
                          capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    summary, *loop_lines = done.stdout.strip().splitlines()
    loads = ast.literal_eval(re.search(r"loads (\{.*?\})", summary).group(1))
    assert loads.get("ld.global.v2.b32", 0) >= 8, summary  # 4 bf16 a load
    assert loads.get("ld.global.b16", 0) <= 1, summary  # only the drawn token's logit
    assert int(re.search(r"(\d+) registers", summary).group(1)) <= 128, summary
    assert "0 spill stores" in summary, summary
    innermost = [line for line in loop_lines if "(innermost)" in line]
    assert innermost, done.stdout
    for line in innermost:
        assert "SHFL 0, BAR 0" in line, line  # no exchange between threads inside a pass
        assert float(re.search(r"([\d.]+) per token", line).group(1)) < 60, line
