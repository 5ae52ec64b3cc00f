# `make test` and `make bench` set up .venv from nothing (CPU torch) and run.
PYTHON ?= python3
VENV ?= .venv
TORCH ?= torch==2.13.0
BIN := $(VENV)/bin
# without a GPU the Triton kernels are tested in Triton's interpreter, on CPU tensors
INTERPRET := $(shell command -v nvidia-smi >/dev/null 2>&1 || echo TRITON_INTERPRET=1)

$(BIN)/fastrl: pyproject.toml setup.py $(wildcard csrc/*.cpp csrc/*/*.cpp csrc/*/*.cu csrc/include/fastrl/*.h)
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q setuptools wheel ninja
	$(BIN)/pip install -q "$(TORCH)"
	$(BIN)/pip install -q --no-build-isolation -e ".[train,test,anchors]"
	touch $@

.PHONY: install train test bench cuda-build
install: $(BIN)/fastrl

# the README's main command: GRPO on the built-in task with a tiny model, on the CPU
train: $(BIN)/fastrl
	$(BIN)/fastrl train --plot --overwrite --output-dir runs/default

test: $(BIN)/fastrl
	FASTRL_REQUIRE_ANCHORS=1 $(INTERPRET) $(BIN)/python -m pytest -q

bench: $(BIN)/fastrl
	$(BIN)/fastrl info
	$(BIN)/fastrl bench scans
	$(BIN)/fastrl bench advantages
	$(BIN)/fastrl bench logprobs --memory
	$(BIN)/fastrl bench sampling
	$(BIN)/fastrl bench rollout
	$(BIN)/fastrl bench update

cuda-build:
	bash .ci/cuda_build.sh
