# The two commands a new user needs: `make serve` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
HOST ?= 127.0.0.1
PORT ?= 8080

.PHONY: serve cluster test lint typecheck pytest browser nginx bench bench-cluster bench-client install dev clean openapi reliability soak dist

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

# Re-install when the project's metadata changes.
$(VENV)/.installed-server: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -q -e '.[server]'
	touch $@

$(VENV)/.installed-dev: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -q -e '.[server,dev]'
	touch $@ $(VENV)/.installed-server

install: $(VENV)/.installed-server
dev: $(VENV)/.installed-dev

serve: $(VENV)/.installed-server
	$(BIN)/qlevents serve --demo --host $(HOST) --port $(PORT)

# Three JetStream nodes and two ingest nodes on loopback (docs/cluster.md); Ctrl-C stops all.
cluster: $(VENV)/.installed-server
	$(BIN)/python -m qlevents.cluster_demo --dir qlevents-cluster

lint: dev
	$(BIN)/ruff check src tests bench reliability
	$(BIN)/ruff format --check src tests bench reliability

typecheck: dev
	$(BIN)/mypy

# Test processes (pytest-xdist): most tests wait on the servers, browsers and NATS nodes
# they start, so more processes than cores pay (docs/architecture.md, "The test suite"); a
# file's tests stay in one process, so its module fixtures (a NATS cluster, a browser's
# site) start once; files are taken in collection order, where tests/conftest.py puts the
# longest first (LONGEST_FIRST), so that the processes finish together.
# TEST_PROCESSES=0 runs in this process (for a debugger, or -x).
TEST_PROCESSES ?= 4
# With PYTHONDONTWRITEBYTECODE set (some images set it) every server a test starts would
# compile qlevents from source again (~0.1 s of CPU each, ~240 starts), and every test
# process would rewrite every test module: here the bytecode is written once.
pytest: dev browser nginx
	env -u PYTHONDONTWRITEBYTECODE $(BIN)/pytest -q -n $(TEST_PROCESSES) --dist loadfile --no-loadscope-reorder

# The dashboard's browser tests drive Debian's Chromium (Playwright cannot download its own
# browsers here). As root, install it if it is missing; otherwise those tests skip, except
# under CI=true, where they fail.
CHROMIUM ?= /usr/lib/chromium/chromium
browser:
	@if [ -x "$(CHROMIUM)" ]; then \
		echo "browser: $(CHROMIUM) is installed"; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		echo "browser: installing Debian's chromium: apt-get update && apt-get install -y chromium"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null \
			&& echo "browser: installed $$($(CHROMIUM) --version 2>/dev/null)"; \
	else \
		echo "browser: $(CHROMIUM) is missing and this is not root: the browser tests will skip (under CI=true they fail)"; \
	fi

# tests/deploy/test_nginx_tls.py runs Debian's nginx in front of the server (and makes its
# certificates with openssl). As root, install them if missing (apt-get update only if the
# package lists are too old to install from); otherwise that test skips, except under
# CI=true, where it fails.
nginx:
	@if command -v nginx >/dev/null && command -v openssl >/dev/null; then \
		echo "nginx: $$(nginx -v 2>&1) is installed"; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		echo "nginx: installing Debian's nginx and openssl: apt-get install -y nginx openssl"; \
		{ DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nginx openssl >/dev/null 2>&1 \
			|| { echo "nginx: apt-get update, then install again"; apt-get update -qq \
				&& DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nginx openssl >/dev/null; }; } \
			&& echo "nginx: installed $$(nginx -v 2>&1)"; \
	else \
		echo "nginx: nginx or openssl is missing and this is not root: the nginx test will skip (under CI=true it fails)"; \
	fi

test: lint typecheck pytest

$(VENV)/.installed-bench: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -q -e '.[server,dev,bench]'
	touch $@ $(VENV)/.installed-dev $(VENV)/.installed-server

# Benchmarks (not part of `make test`): see bench/README.md.
bench: $(VENV)/.installed-bench
	$(BIN)/python bench/server_bench.py

# Embedded SQLite vs one ingest node on a 3-node JetStream cluster (docs/cluster.md, "Speed").
bench-cluster: $(VENV)/.installed-bench
	$(BIN)/python bench/cluster_bench.py

bench-client: $(VENV)/.installed-bench
	$(BIN)/python bench/client_bench.py

# The SDK's distributions: an sdist and a wheel in dist/ (python -m build, in an isolated
# environment with the build backend from PyPI), their metadata checked by twine. Install the
# wheel with `pip install dist/qlevents-*.whl` (docs/sdk.md). `make test` builds and installs
# a wheel too, offline (tests/test_distribution.py).
dist: dev
	rm -rf dist
	$(BIN)/python -m build --outdir dist .
	$(BIN)/twine check --strict dist/*

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache qlevents-data qlevents-cluster dist

# Long-running proofs (not part of `make test`): see reliability/README.md.
reliability: dev
	QLEVENTS_PROPERTY_SCALE=10 $(BIN)/pytest -q tests/server/test_properties.py tests/server/test_accept.py
	$(BIN)/python -m reliability.crash_cycles
	$(BIN)/python -m reliability.soak --quick
	$(BIN)/python -m reliability.schemathesis_run
	$(BIN)/python -m reliability.slowloris

soak: dev
	$(BIN)/python -m reliability.soak

# Regenerate the OpenAPI document from the wire types (a test checks it is current).
openapi: dev
	$(BIN)/python -m qlevents.server.openapi > src/qlevents/server/openapi.json
