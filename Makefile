# The two set-up commands of the README: `make demo` (run) and `make test` (tests).
# Both create their own virtual environment in .venv on first use.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.astreg-installed

.PHONY: demo test test-faults bench lint clean services kafka-jars

$(STAMP): pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test,plot,embedded]'
	touch $(STAMP)

# Debian packages the tests need (PostgreSQL, MariaDB, Redis, Chromium, a JDK, Maven) and the
# private database servers: deploy/dev/services.sh (idempotent, quick when all is there).
services:
	bash deploy/dev/services.sh

# Apache Kafka's jars from Maven Central into the cache, once.
kafka-jars: $(STAMP)
	$(VENV)/bin/astreg kafka --fetch-only

demo: $(STAMP)
	$(VENV)/bin/astreg demo

# The suite on Apache Kafka (one broker per session), then the demo path again on the embedded
# broker, which stays the demo's default.
test: services kafka-jars
	$(PY) -m pytest -m "not faults" $(PYTEST_ARGS)
	$(PY) -m pytest -m "demo_path and not faults" --kafka=embedded $(PYTEST_ARGS)

test-faults: services kafka-jars
	$(PY) -m pytest -m faults $(PYTEST_ARGS)

bench: kafka-jars
	$(VENV)/bin/astreg bench --quick

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy

clean:
	rm -rf $(VENV) test-artifacts .pytest_cache
