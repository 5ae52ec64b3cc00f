#!/usr/bin/env bash
# The GPU check, for a lent GPU machine (torch with CUDA, nvcc, Triton, ninja;
# nothing can be downloaded there): build, run the tests that need a GPU (the
# CUDA and bf16 Triton ones; the CPU ones run in CI), run the benchmarks and
# print their tables. Results: benchmarks/results/<gpu>/*.json, this run's also copied to
# $OUT if set.
#
#   benchmarks/gpu_check.sh [all|sampling|rest|sweep]
#
# sampling (about 3 minutes on an H200): install without the CUDA extension, the sampler /
# rollout tests, bench_sampling (SAMPLER_CONFIGS: its --configs, none by default), and
# sampling_ablation.py at B=256 (where plain sampling's time goes; SAMPLER_BASELINE: other
# sources of kernels/sampling.py, comma-separated, e.g. the previous commit's, timed beside
# it; SAMPLER_VARIANTS: the ablation's --variants);
# rest: build the CUDA extension (498 s on an H200 machine before masks became bytes before
# the kernels; 64 s on 2 cores here after), every other CUDA test, the other benchmarks
# (REST_BENCHMARKS: all, none, or some of logprobs,scans,advantages,rollout,update); all: both, in that order
# (7 minutes); sweep (about 2.5 minutes): bench_sampling over kernel configs, plain sampling
# and the read-only loop over the EXPLORE grid, to choose the defaults, and plain rows with
# the L2 flushed by writing (harness.py) and at B up to 2048. The test logs and the
# benchmarks' printed tables (benchmarks.log) go to $OUT too.
set -uo pipefail
cd "$(dirname "$0")/.."
export TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0} MAX_JOBS=${MAX_JOBS:-16} PYTHONUNBUFFERED=1
PY=${PYTHON:-python3}
STAGE=${1:-all}
case "$STAGE" in all|sampling|rest|sweep) ;; *) echo "gpu_check.sh: no stage '$STAGE' (all, sampling, rest or sweep)"; exit 2;; esac
REST_BENCHMARKS=${REST_BENCHMARKS:-all}
[ "$REST_BENCHMARKS" = all ] && REST_BENCHMARKS=logprobs,scans,advantages,rollout,update
[ "$REST_BENCHMARKS" = none ] && REST_BENCHMARKS=
for b in ${REST_BENCHMARKS//,/ }; do
  case "$b" in logprobs|scans|advantages|rollout|update) ;;
    *) echo "gpu_check.sh: REST_BENCHMARKS: no benchmark '$b' (all, none, or some of" \
         "logprobs,scans,advantages,rollout,update)"; exit 2;;
  esac
done
rest_bench() { [[ ",$REST_BENCHMARKS," == *",$1,"* ]]; }
LOGS=${OUT:-/tmp}  # whole logs, tracebacks included, come back with $OUT
SAMPLER_TESTS="tests/ops/test_sampling.py tests/trainer/test_rollout.py"
# 4096x8s4 against 4096x8s4p1: top-p with and without the first pass software-pipelined; c2 at B=256
# and c2, c8 at B=64: programs per row beside the defaults (1 and 4: two programs per SM)
SWEEP=8192x8c1,8192x8c2,8192x8c3,8192x8c2p4,8192x16c1,4096x8s4,4096x8s4p1,8192x8s4,8192x8c2@64,8192x8c4@64,\
8192x8c8@64,once8192x8c2
# grids for plain sampling at B=256 (and 64), the sampler and the read-only loop on the same grid:
# cCHUNKS programs per row, pSTAGES cp.async pipeline stages
EXPLORE=8192x8c1,8192x8c1p2,8192x8c1p4,8192x8c1p6,8192x8c2,8192x8c2p4,8192x4c1p4,\
8192x8c2@64,8192x8c4@64,8192x8c8@64,8192x8c4p4@64,\
once8192x8c1,once8192x8c1p4,once8192x8c1p6,once8192x8c2,once8192x8c2p4,once8192x8c4
status=0
t0=$(date +%s)
started=$(mktemp)  # results newer than this are this run's
stamp() { echo "== $1 ($(( $(date +%s) - t0 )) s)"; }
xdist=$($PY -c "import xdist" 2>/dev/null && echo "-n 8")

install() {  # $1: 1 to skip the CUDA extension
  if ! FASTRL_SKIP_EXT=$1 $PY -m pip install --no-build-isolation --no-deps -e . > /tmp/fastrl_build.log 2>&1; then
    tail -n 60 /tmp/fastrl_build.log; echo "BUILD FAILED"; exit 1
  fi
}

gpu_tests() {  # $1: log name, $2: timeout, the rest: pytest arguments (no -x: show every failure)
  local log="$LOGS/$1" limit=$2
  shift 2
  timeout "$limit" $PY -m pytest -q -p no:cacheprovider --tb=short $xdist -k cuda "$@" > "$log" 2>&1 || status=1
  grep -E "^(FAILED|ERROR)|passed|failed" "$log" | tail -n 40
}

bench() {  # $1: timeout, the rest: the benchmark script and its arguments
  local limit=$1
  shift
  timeout "$limit" $PY "$@" 2>&1 | tee -a "$LOGS/benchmarks.log" || status=1
}

stamp "stage $STAGE"
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv,noheader || true
# where the results go, each named with --out: with --repeat or --configs a benchmark counts as a partial
# run and writes bench_<family>.partial.json
RESULTS=$($PY -c "import sys; sys.path.insert(0, 'benchmarks'); import harness, torch
print(harness.RESULTS / harness.device_slug(torch.device('cuda')))")
if [ "$STAGE" = all ] || [ "$STAGE" = sampling ]; then
  stamp "install (no CUDA extension)"
  install 1
  stamp "sampler tests"
  gpu_tests gpu_tests_sampling.log 150 $SAMPLER_TESTS
  stamp "bench_sampling"
  bench 180 benchmarks/bench_sampling.py --device cuda ${SAMPLER_CONFIGS:+--configs "$SAMPLER_CONFIGS"} \
    --out "$RESULTS/bench_sampling.json"
  stamp "sampling_ablation: plain sampling at B=256, parts removed, against the read-only loop"
  bench 180 benchmarks/sampling_ablation.py \
    --variants "${SAMPLER_VARIANTS-,resolve,max,noise+resolve+zsum+max}" \
    --kernels "kernels/sampling.py${SAMPLER_BASELINE:+,$SAMPLER_BASELINE}"
fi
if [ "$STAGE" = sweep ]; then
  stamp "install (no CUDA extension)"
  install 1
  stamp "bench_sampling over kernel configs"
  bench 240 benchmarks/bench_sampling.py --device cuda --configs "$SWEEP" --out "$RESULTS/bench_sampling_configs.json"
  stamp "bench_sampling, plain, L2 flushed by writing (as before 2026-11-27)"
  bench 90 benchmarks/bench_sampling.py --device cuda --filters plain --providers fastrl,read_once_amax \
    --l2-flush dirty --out "$RESULTS/bench_sampling_l2_dirty.json"
  stamp "bench_sampling, plain, larger batches (the time per MB once a call's fixed cost is spread)"
  bench 60 benchmarks/bench_sampling.py --device cuda --filters plain --no-compile \
    --providers fastrl,read_once_amax,read_once_triton --shape 512,151936 --shape 1024,151936 --shape 2048,151936 \
    --out "$RESULTS/bench_sampling_large_batch.json"
  stamp "sampler tiling tests (programs per row, warps)"
  gpu_tests gpu_tests_tiling.log 120 tests/ops/test_sampling.py::test_triton_tokens_do_not_depend_on_the_tiling
  stamp "bench_sampling, plain: the EXPLORE grid"
  bench 300 benchmarks/bench_sampling.py --device cuda --filters plain --no-compile --repeat 30 \
    --providers fastrl,read_once_triton --shape 64,151936 --shape 256,151936 --configs "$EXPLORE" \
    --out "$RESULTS/bench_sampling_sweep.json"
fi
if [ "$STAGE" = all ] || [ "$STAGE" = rest ]; then
  stamp "build with the CUDA extension"
  install 0
  $PY -m fastrl.cli info
  stamp "other GPU tests"
  ignore=$(for t in $SAMPLER_TESTS; do printf -- "--ignore=%s " "$t"; done)
  gpu_tests gpu_tests.log 200 $ignore tests
  # a test that killed its worker (a segfault in a kernel launcher): again alone, with the native stack
  for test in $(grep -oE "crashed while running '[^']+'" "$LOGS/gpu_tests.log" | cut -d"'" -f2 | sort -u); do
    stamp "native stack of $test"
    { c++ --version | head -1; nvcc --version | tail -1
      $PY -c "import torch; print('torch', torch.__version__, 'cxx11 abi', torch._C._GLIBCXX_USE_CXX11_ABI)"; } 2>&1
    timeout 120 cuda-gdb -batch -ex run -ex bt --args $PY -m pytest -q -p no:cacheprovider -p no:xdist "$test" 2>&1 \
      | grep -E "^#|signal|Error" | head -40
  done
  # fused lm_head + log-softmax: prints fastrl/cublas_lm_head and the memory beyond the gradients (issue 4)
  rest_bench logprobs && stamp bench_logprobs && bench 150 benchmarks/bench_logprobs.py --device cuda --repeat 5 \
    --out "$RESULTS/bench_logprobs.json"
  # its loop baselines: 120 s was cut short
  rest_bench scans && stamp bench_scans && bench 240 benchmarks/bench_scans.py --device cuda --repeat 5 \
    --out "$RESULTS/bench_scans.json"
  rest_bench advantages && stamp bench_advantages && bench 60 benchmarks/bench_advantages.py --device cuda --repeat 5 \
    --out "$RESULTS/bench_advantages.json"
  rest_bench update && stamp bench_update && bench 90 benchmarks/bench_update.py --device cuda --repeat 5 \
    --out "$RESULTS/bench_update.json"
  rest_bench rollout && stamp bench_rollout && bench 180 benchmarks/bench_rollout.py --device cuda --repeat 5 \
    --out "$RESULTS/bench_rollout.json"
fi

# only this run's results: the device tool brings back a limited number of files, logs first
if [ -n "${OUT:-}" ] && [ -d "$RESULTS" ]; then find "$RESULTS" -name '*.json' -newer "$started" -exec cp {} "$OUT"/ \; ; fi
stamp "done (status $status); results in $RESULTS"
exit $status
