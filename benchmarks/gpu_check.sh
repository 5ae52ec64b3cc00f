#!/usr/bin/env bash
# The GPU check, for a lent GPU machine (torch with CUDA, nvcc, Triton, ninja;
# nothing can be downloaded there): build the CUDA extension, run every test
# (the CUDA and bf16 Triton ones run only here), run the benchmarks and print a
# table. Results: benchmarks/results/<gpu>/*.json, also copied to $OUT if set.
# Sized to finish in about 7 minutes on an H100/H200.
set -uo pipefail
cd "$(dirname "$0")/.."
export TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0} MAX_JOBS=${MAX_JOBS:-16} PYTHONUNBUFFERED=1
PY=${PYTHON:-python3}
status=0
t0=$(date +%s)
stamp() { echo "== $1 ($(( $(date +%s) - t0 )) s)"; }

stamp "build"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
if ! $PY -m pip install --no-build-isolation --no-deps -e . > /tmp/fastrl_build.log 2>&1; then
  tail -n 60 /tmp/fastrl_build.log; echo "BUILD FAILED"; exit 1
fi
$PY -m fastrl.cli info

stamp "tests"
# The tests that need a GPU (CUDA kernels, Triton natively, bf16/fp16); the CPU ones run in CI.
# No -x: one GPU run should show every failure.
xdist=$($PY -c "import xdist" 2>/dev/null && echo "-n 8")
log=${OUT:-/tmp}/gpu_tests.log  # the whole log, tracebacks included, comes back with $OUT
timeout ${TEST_TIMEOUT:-200} $PY -m pytest -q -p no:cacheprovider --tb=short $xdist -k "cuda" tests > "$log" 2>&1 || status=1
grep -E "^(FAILED|ERROR)|passed|failed" "$log" | tail -n 60

stamp "benchmarks"
# fused lm_head + log-softmax: prints fastrl/cublas_lm_head and the memory beyond the gradients (issue 4)
$PY benchmarks/bench_logprobs.py --device cuda --repeat 5 || status=1
$PY benchmarks/bench_sampling.py --device cuda --repeat 5 || status=1
$PY benchmarks/bench_scans.py --device cuda --repeat 5 || status=1
$PY benchmarks/bench_advantages.py --device cuda --repeat 5 || status=1

results=$($PY -c "import sys; sys.path.insert(0, 'benchmarks'); import harness, torch; print(harness.RESULTS / harness.device_slug(torch.device('cuda')))")
if [ -n "${OUT:-}" ] && [ -d "$results" ]; then cp "$results"/*.json "$OUT"/ 2>/dev/null || true; fi
stamp "done (status $status); results in $results"
exit $status
