# Two commands on a fresh machine with Python 3.11 and pip:  make demo  and  make test.
# Both create .venv (if missing) and install the pinned dependencies into it first.

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DEMO_OUTPUT ?= runs/demo
BENCHMARK_OUTPUT ?= runs/benchmark

.PHONY: demo test lab lock clean help benchmark bench

help:
	@echo "make demo   install (once) and run the compatibility test on the demo data"
	@echo "make test   install (once) and run the test suite"
	@echo "make lab    open the tutorial in JupyterLab"
	@echo "make benchmark  federated evaluation: both models at three simulated sites"
	@echo "make bench  time the runner against a plain-Python floor (bench/bench_runner.py)"
	@echo "make lock   regenerate requirements.lock from pyproject.toml"
	@echo "make clean  remove .venv, runs/ and tutorial_outputs/"

$(STAMP): requirements.lock pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info[:2] == (3, 11) else \
		"cxr-tutorial needs Python 3.11; set PYTHON=/path/to/python3.11")'
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -r requirements.lock
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --no-deps -e .
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/cxr-tutorial test --output $(DEMO_OUTPUT)

test: $(STAMP)
	$(BIN)/python -m pytest

benchmark: $(STAMP)
	$(BIN)/cxr-tutorial benchmark --output $(BENCHMARK_OUTPUT) --jobs 2

bench: $(STAMP)
	$(BIN)/python bench/bench_runner.py

lab: $(STAMP)
	$(BIN)/jupyter lab notebooks/

lock:
	rm -rf .lock-venv && $(PYTHON) -m venv .lock-venv
	.lock-venv/bin/python -m pip install --quiet -e '.[test]'
	{ head -n 2 requirements.lock; .lock-venv/bin/python -m pip freeze --exclude-editable; } \
		> requirements.lock.new && mv requirements.lock.new requirements.lock
	rm -rf .lock-venv

clean:
	rm -rf $(VENV) runs tutorial_outputs
