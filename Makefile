# Two commands: `make demo` and `make test`. Each sets itself up from the project's own files.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test lint install clean victoria-metrics

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $(STAMP)

# The strict ocpp-rpc charge point (npm) the OCPP tests talk to. Without npm the peer
# tests skip with a reason, except under CI=true, where a missing peer fails the run.
PEER := tests/peers/ocpp_rpc
PEER_STAMP := $(PEER)/node_modules/.installed

$(PEER_STAMP): $(PEER)/package-lock.json
	@if command -v npm >/dev/null 2>&1; then \
		npm ci --prefix $(PEER) --no-audit --no-fund && touch $(PEER_STAMP); \
	elif [ "$$CI" = "true" ]; then \
		echo "npm is missing: the ocpp-rpc peer cannot be installed (CI)"; exit 1; \
	else \
		echo "npm is missing: the ocpp-rpc peer tests will be skipped"; \
	fi

# VictoriaMetrics (Debian package) receives the telemetry tests' InfluxDB-protocol writes.
victoria-metrics:
	@if command -v victoria-metrics >/dev/null 2>&1; then :; \
	elif [ "$$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
			victoria-metrics >/dev/null; \
	elif [ "$$CI" = "true" ]; then \
		echo "victoria-metrics is missing and cannot be installed (CI)"; exit 1; \
	else \
		echo "victoria-metrics is missing: the telemetry tests will be skipped"; \
	fi

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/gridflex demo

test: $(STAMP) $(PEER_STAMP) victoria-metrics
	$(BIN)/python -m pytest -q
	$(BIN)/ruff check aggregator adapters optimizer tests
	$(BIN)/mypy

lint: $(STAMP)
	$(BIN)/ruff check aggregator adapters optimizer tests
	$(BIN)/mypy

clean:
	rm -rf $(VENV) build *.egg-info
