#!/usr/bin/env bash
# Builds the CUDA extension on a machine without a GPU and fails on any compile
# or link error: the build must load and register its CUDA kernels.
# Needs nvcc; makes (or reuses) a venv with a CUDA build of torch.
# Usage: .ci/cuda_build.sh   (FASTRL_CUDA_VENV overrides the venv path)
set -euo pipefail
cd "$(dirname "$0")/.."
CUDA_HOME=${CUDA_HOME:-/usr/local/cuda}
venv=$(realpath -m "${FASTRL_CUDA_VENV:-.venv-cuda}")
torch_spec=${FASTRL_CUDA_TORCH:-torch==2.14.1}

if [ ! -x "$venv/bin/python" ]; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q --upgrade pip
fi
"$venv/bin/pip" install -q "$torch_spec" ninja setuptools wheel numpy
py="$venv/bin/python"
site=$("$py" -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT

echo "building the CUDA extension with $("$py" -c 'import torch; print(torch.__version__)') and $("$CUDA_HOME/bin/nvcc" --version | tail -1)"
CUDA_HOME="$CUDA_HOME" CPATH="$site/nvidia/cu13/include${CPATH:+:$CPATH}" \
  TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0} MAX_JOBS=${MAX_JOBS:-2} \
  "$py" setup.py -q build_ext --build-lib "$out/lib" --build-temp "$out/tmp"

# Load the result beside a copy of the Python sources: catches unresolved symbols.
(cd fastrl && find . -name '*.py' -exec cp --parents {} "$out/lib/fastrl/" \;)
mkdir -p "$out/lib/fastrl/kernels" && cp kernels/*.py "$out/lib/fastrl/kernels/"
(cd "$out" && PYTHONPATH="$out/lib" "$py" - <<'PY'
import torch, fastrl
from fastrl import _extension
from fastrl.ops import _registry
assert _extension.status == "loaded", _extension.status
assert _extension.module.with_cuda == 1, "the extension was built without CUDA"
# ops served by Triton on CUDA have no CUDA C++ kernel; every other op needs one
native = [name for name, e in _registry.OPS.items() if e.triton is None]
missing = [name for name in native if not _registry.OPS[name].compiled.get("CUDA")]
assert not missing, f"no CUDA kernel registered for {missing}"
print(f"CUDA build OK: {len(native)} ops with CUDA kernels "
      f"(torch {torch.__version__}, CUDA {torch.version.cuda}, {_extension.module.__file__})")
PY
)
