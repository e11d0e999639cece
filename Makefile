# One entry point for developers and CI. `make test` works on a fresh machine with python3:
# it installs uv into .tools/, the locked dependencies into .venv/, then lints, type-checks and tests.
.DEFAULT_GOAL := help
SHELL := /bin/bash
UV_VERSION := 0.13.9
UV := .tools/bin/uv
export UV_PYTHON_DOWNLOADS := never
export UV_LINK_MODE := copy
PORT ?= 8000

help:  ## List the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-10s %s\n", $$1, $$2}'

$(UV):
	python3 -m venv .tools
	.tools/bin/pip install --quiet --disable-pip-version-check uv==$(UV_VERSION)

install: $(UV)  ## Install the locked dependencies into .venv
	$(UV) sync --locked --all-extras --quiet

lint: install  ## ruff and mypy --strict
	$(UV) run --locked ruff check .
	$(UV) run --locked ruff format --check .
	$(UV) run --locked mypy

# The unit tests (CPU-bound) run beside the rest, and the rest (integration, fault and API tests,
# which mostly wait on redis-server and worker processes) run on TEST_JOBS pytest-xdist processes,
# each with its own redis-server; both lanes must pass. Tests marked `timing` compare latencies, so
# they run alone afterwards. `make test TEST_JOBS=0` runs the rest serially.
TEST_JOBS ?= 2
test: lint browser  ## Everything CI runs: lint, types, tests, and the benchmarks on small inputs
	@$(UV) run --locked pytest -q -p no:cacheprovider -m "not timing" tests/unit > .pytest-unit.log 2>&1 & unit=$$!; \
	$(UV) run --locked pytest -q -p no:cacheprovider -m "not timing" -n $(TEST_JOBS) --dist load --durations=20 --ignore=tests/unit; rest=$$?; \
	wait $$unit; units=$$?; echo "--- tests/unit:"; cat .pytest-unit.log; rm -f .pytest-unit.log; \
	$(UV) run --locked pytest -q -p no:cacheprovider -m timing; timing=$$?; \
	exit $$(( rest != 0 || units != 0 || timing != 0 ))

# The report screenshot test and the web UI's Playwright tests (tests/ui) drive Debian's chromium at
# /usr/bin/chromium; Playwright's own browser download is never used. Installed once, quietly.
browser:  ## Debian's chromium at /usr/bin/chromium, installed with apt-get if missing
	@test -x /usr/bin/chromium || (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null)

chromium: browser

dev: install  ## Run everything on this machine: redis-server, a worker and the API on :PORT (8000)
	$(UV) run --locked tuneset dev --port $(PORT)

bench: install  ## The benchmarks at full size (prints figures; takes several minutes)
	$(UV) run --locked python -m bench.validate_throughput
	$(UV) run --locked python -m bench.ingest
	$(UV) run --locked python -m bench.build
	$(UV) run --locked python -m bench.pack

format: install  ## Format the code
	$(UV) run --locked ruff format .
	$(UV) run --locked ruff check --fix .

.PHONY: help install lint test dev bench format browser chromium
