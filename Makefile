# Two commands on a fresh machine: `make demo` and `make test`. Each builds .venv first if needed.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# Portable CPU flags: a -march=native build can die with SIGILL (AMX tile code) on some CPUs.
# Override for a GPU build, e.g.  make LLAMA_CMAKE_ARGS="-DGGML_CUDA=on" venv
LLAMA_CMAKE_ARGS ?= -DGGML_NATIVE=OFF -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON
LLAMA_DEFAULT_ARGS := -DGGML_NATIVE=OFF -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON
# pip caches the built wheel by version only: a non-default build must bypass that cache.
LLAMA_PIP_FLAGS := $(if $(filter-out $(LLAMA_DEFAULT_ARGS),$(LLAMA_CMAKE_ARGS)),--no-cache-dir --force-reinstall --no-deps,)

.PHONY: venv demo test test-fast bench gpu-check clean

venv: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	CMAKE_ARGS="$(LLAMA_CMAKE_ARGS)" $(PY) -m pip install $(LLAMA_PIP_FLAGS) -c constraints.txt llama-cpp-python
	$(PY) -m pip install -c constraints.txt -e '.[test]'
	touch $@

# Every stage on embedded defaults and the built-in digits: recipes/quickstart.yaml, then its report.
# The built-in render model draws noise: import a real one (augur models import NAME DIR) and the
# quickstart takes it instead.
demo: venv
	$(VENV)/bin/augur models list
	$(VENV)/bin/augur run recipes/quickstart.yaml --out runs/quickstart
	@echo "report: runs/quickstart/report-*/report.html"

# Every test (what CI runs); test-fast leaves out the ones marked slow (whole recipes, kill-and-resume).
test: venv
	$(PY) -m pytest -q tests

test-fast: venv
	$(PY) -m pytest -q -m "not slow" tests

bench: venv
	$(PY) benchmarks/bench_extrapolate.py
	$(PY) benchmarks/bench_train.py
	$(PY) benchmarks/bench_render.py
	$(PY) benchmarks/bench_curate.py

# The GPU checks in one call (at most ~8 minutes on one GPU): every stage on CUDA, the GPU-visible tests, the
# render and training benchmarks on CUDA, out-of-memory and shard cases. Logs and figures: gpu-check-out/.
gpu-check: venv
	bash benchmarks/gpu_check.sh

clean:
	rm -rf $(VENV) runs .pytest_cache
