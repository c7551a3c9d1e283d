# `make` with no target lists the targets. Every target sets up .venv itself.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
INSTALLED := $(VENV)/.installed

.DEFAULT_GOAL := help
.PHONY: help install run migrate test stress lint bench bench-delivery clean

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-9s %s\n", $$1, $$2}'

$(INSTALLED): setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev,bench]'
	touch $(INSTALLED)

install: $(INSTALLED) ## create .venv and install the gateway with its dev tools

run: $(INSTALLED) ## serve on GATEWAY_HOST:GATEWAY_PORT (embedded Postgres unless DATABASE_URL is set)
	$(PY) -m gateway serve

migrate: $(INSTALLED) ## apply schema.sql to the database
	$(PY) -m gateway migrate

# The Layer SDKs' Node harness (tests/test_layer_sdks.py): npm ci once per
# package-lock.json. Without npm the SDK tests skip and say so.
SDK_HARNESS := tests/sdk/node_modules/.package-lock.json

$(SDK_HARNESS): tests/sdk/package-lock.json
	@if command -v npm >/dev/null 2>&1; then \
		cd tests/sdk && npm ci --no-audit --no-fund && touch node_modules/.package-lock.json; \
	else echo "npm not found: the Layer SDK tests (tests/test_layer_sdks.py) will be skipped"; fi

test: $(INSTALLED) $(SDK_HARNESS) ## run the test suite on a throwaway database
	@bash .ci/install-chromium || echo "no Chromium: the /docs browser test will skip"
	$(PY) -m pytest

# Also part of `make test` (25 s on a quiet machine, up to a minute under
# load): the database stopped, frozen and crashed, the gateway terminated and
# killed under load, a flood past its write queue; and the abuse that must not
# starve the writes (tests/test_abuse.py).
stress: $(INSTALLED) ## only the fault-tolerance tests with real processes; prints the figures
	$(PY) -m pytest -m stress tests/test_faults.py tests/test_abuse.py tests/test_delivery_crash.py

# bench's scripts import each other as top-level modules (they run with bench/ on the
# path), so mypy checks them in a run of their own; bench/delivery.py imports the
# gateway and tests packages instead, so the first run (setup.cfg's files) checks it.
lint: $(INSTALLED) ## ruff and mypy
	$(VENV)/bin/ruff check gateway tests bench
	$(VENV)/bin/mypy
	$(VENV)/bin/mypy bench --exclude bench/delivery.py

bench: $(INSTALLED) ## load-test the gateway against bare aiohttp with wrk (bench/README.md)
	$(PY) bench/run.py $(BENCH_ARGS)

bench-delivery: $(INSTALLED) ## one notification to 100,000 APNs targets and a mixed one, against the fakes (needs h2load)
	@command -v h2load >/dev/null || echo "h2load missing: apt-get install -y nghttp2-client (the ceiling run is skipped)"
	$(PY) bench/delivery.py --json bench/results/delivery.json $(BENCH_ARGS)

clean: ## remove .venv and the embedded database
	rm -rf $(VENV) .data
