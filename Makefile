# The two set-up commands of the README: `make demo` (run) and `make test` (tests).
# Both create their own virtual environment in .venv on first use.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.astreg-installed

.PHONY: demo test test-faults bench lint clean

$(STAMP): pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test,plot]'
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/astreg demo

test: $(STAMP)
	$(PY) -m pytest -m "not faults" $(PYTEST_ARGS)

test-faults: $(STAMP)
	$(PY) -m pytest -m faults $(PYTEST_ARGS)

bench: $(STAMP)
	$(VENV)/bin/astreg bench --quick

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy

clean:
	rm -rf $(VENV) test-artifacts .pytest_cache
