# One task runner for people and CI. `make demo` and `make test` start from nothing.
PYTHON ?= python3.11
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
DEV_STAMP := $(VENV)/.installed-dev

.PHONY: demo serve test bench soak lint format typecheck pytest system-deps clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e .
	touch $@

$(DEV_STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $@ $(STAMP)

## demo: a staged rollout on a simulated fleet, on embedded Redis and MQTT (DEMO_ARGS=--fail-rate 0.5)
demo: $(STAMP)
	$(BIN)/ota demo $(DEMO_ARGS)

## serve: the service on embedded Redis and MQTT, for the README's quick start
serve: $(STAMP)
	$(BIN)/ota serve

## system-deps: redis-server, mosquitto, prometheus, openssl, nginx and node from the system packages, when missing
system-deps:
	@missing=""; \
	command -v redis-server >/dev/null 2>&1 || missing="$$missing redis-server"; \
	command -v mosquitto >/dev/null 2>&1 || [ -x /usr/sbin/mosquitto ] || missing="$$missing mosquitto"; \
	command -v prometheus >/dev/null 2>&1 || missing="$$missing prometheus"; \
	command -v openssl >/dev/null 2>&1 || missing="$$missing openssl"; \
	command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ] || missing="$$missing nginx"; \
	command -v node >/dev/null 2>&1 || missing="$$missing nodejs"; \
	if [ -n "$$missing" ]; then \
		echo "installing:$$missing"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	fi

lint: $(DEV_STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: $(DEV_STAMP)
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

typecheck: $(DEV_STAMP)
	$(BIN)/mypy

pytest: $(DEV_STAMP) system-deps
	$(BIN)/pytest -q

## test: lint, type check and the whole suite against real redis-server and mosquitto
test: system-deps lint typecheck pytest

## bench: a 10,000-device rollout on its own redis-server and mosquitto, next to the raw MQTT
## rates (bench/README.md); BENCH_ARGS=--quick for 1,000 devices; then the plan simulator's speed
bench: $(DEV_STAMP) system-deps
	$(BIN)/python -m bench $(BENCH_ARGS)
	$(BIN)/python -m bench.simulation

## soak: the fault suite FAULT_RUNS times with other seeds (engine kills, broker and Redis
## restarts, garbage results), then a 100,000-device rollout (Redis per device, service memory,
## time per wave) and 200 slow downloads of a 50 MB firmware from the service, the service with
## nginx offload, and nginx alone (bench/README.md); SOAK_ARGS=--devices 10000 for a smaller fleet
FAULT_RUNS ?= 20
soak: $(DEV_STAMP) system-deps
	OTA_FAULT_RUNS=$(FAULT_RUNS) $(BIN)/pytest -q -m faults tests/e2e/test_faults.py
	$(BIN)/python -m bench.soak $(SOAK_ARGS)

clean:
	rm -rf $(VENV) .ota .mypy_cache .ruff_cache .pytest_cache
