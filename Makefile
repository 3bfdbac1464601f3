# The two commands a newcomer needs are `make run` and `make test`; everything else is for operators.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-$(shell cat pyproject.toml requirements.lock | cksum | cut -d' ' -f1)

.PHONY: install run test test-unit test-integration bench bench-decisions chaos kafka-up kafka-down topics clean

$(STAMP): pyproject.toml requirements.lock
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@$(PY) -m pip install -q --disable-pip-version-check --upgrade pip
	@$(PY) -m pip install -q --disable-pip-version-check -c requirements.lock -e '.[test]'
	@rm -f $(VENV)/.installed-* && touch $(STAMP)

# the browser test drives Debian's chromium (the only thing the tests need beyond Python)
CHROMIUM := /usr/bin/chromium
SUDO     := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

$(CHROMIUM):
	@echo "installing Debian's chromium for the browser test ..."
	@$(SUDO) apt-get update -qq
	@DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq --no-install-recommends chromium >/dev/null

install: $(STAMP) $(CHROMIUM)

## run the whole loop: local Kafka (unless KAFKA_BOOTSTRAP_SERVERS), worker, simulator, console adapter
run: install
	@$(VENV)/bin/engage demo

## run every test, the broker-backed ones included
test: install
	@$(PY) -m pytest -q

test-unit: install
	@$(PY) -m pytest -q tests/unit

test-integration: install
	@$(PY) -m pytest -q tests/integration

## measure the pipeline; results go to bench/results/
bench: install
	@$(VENV)/bin/engage bench

## the fault suite (workers killed, the broker stopped and frozen, state deleted); results go to bench/results/
chaos: install
	@$(VENV)/bin/engage chaos

## the engine against naive, random and oracle policies on the four scenarios; results go to bench/results/
bench-decisions: install
	@$(VENV)/bin/engage bench-decisions

kafka-up: install
	@$(VENV)/bin/engage broker up

kafka-down: install
	@$(VENV)/bin/engage broker down

topics: install
	@$(VENV)/bin/engage topics create

clean: kafka-down
	rm -rf .engage
