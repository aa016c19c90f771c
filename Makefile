# Two commands on a fresh machine with Python 3.11 and pip:  make demo  and  make test.
# Both create .venv (if missing) and install the pinned dependencies into it first.

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DEMO_OUTPUT ?= runs/demo
BENCHMARK_OUTPUT ?= runs/benchmark

MLCUBE_VENV ?= .venv-mlcube
MLCUBE_STAMP := $(MLCUBE_VENV)/.installed

.PHONY: demo test lab lock clean help mlcube-venv container-configs container-test
.PHONY: benchmark bench

help:
	@echo "make demo   install (once) and run the compatibility test on the demo data"
	@echo "make test   install (once) and run the test suite"
	@echo "make lab    open the tutorial in JupyterLab"
	@echo "make docs   run every chapter and render it to HTML in docs/_build/"
	@echo "make browser-test  run every chapter in JupyterLab in headless chromium"
	@echo "make record-outputs  store the outputs of cells marked nbval-check-output"
	@echo "make clean-notebooks strip outputs and execution counts from the chapters"
	@echo "make benchmark  federated evaluation: both models at three simulated sites"
	@echo "make bench  time the runner against a plain-Python floor (bench/bench_runner.py)"
	@echo "make lock   regenerate requirements.lock from pyproject.toml"
	@echo "make clean  remove .venv, runs/ and tutorial_outputs/"
	@echo "make mlcube-venv        the real mlcube tool in $(MLCUBE_VENV) (make test uses it)"
	@echo "make container-configs  rewrite mlcubes/*/container_config.yaml from mlcube.yaml"
	@echo "make container-test     build one cube's image with podman and run a task in it"

$(STAMP): requirements.lock pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info[:2] == (3, 11) else \
		"cxr-tutorial needs Python 3.11; set PYTHON=/path/to/python3.11")'
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -r requirements.lock
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --no-deps -e .
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/cxr-tutorial test --output $(DEMO_OUTPUT)

test: $(STAMP) $(MLCUBE_STAMP)
	$(BIN)/python -m pytest

benchmark: $(STAMP)
	$(BIN)/cxr-tutorial benchmark --output $(BENCHMARK_OUTPUT) --jobs 2

bench: $(STAMP)
	$(BIN)/python bench/bench_runner.py

lab: $(STAMP)
	$(BIN)/jupyter lab $(LAB_FLAGS) notebooks/

# The tutorial as readers meet it: static HTML, JupyterLab in a browser, clean notebooks.
.PHONY: docs browser-test record-outputs clean-notebooks

# JupyterLab refuses to run as root (containers) unless told to.
LAB_FLAGS := $(if $(filter 0,$(shell id -u)),--allow-root)
CHROMIUM ?= /usr/bin/chromium
BROWSER_STAMP := $(VENV)/.browser-installed

docs: $(STAMP)
	$(BIN)/python -m cxr_tutorial.docs --output docs/_build

# Debian's chromium (installed with apt-get when missing and run as root) driven by the
# pinned Playwright of tests/browser/requirements.txt; no browser is downloaded.
$(BROWSER_STAMP): $(STAMP) tests/browser/requirements.txt
	@test -x $(CHROMIUM) || { test "$$(id -u)" = 0 && apt-get update && \
		DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends chromium; } \
		|| { echo "install chromium (sudo apt-get install chromium) or set CHROMIUM=..."; exit 1; }
	$(BIN)/python -m pip install --quiet --disable-pip-version-check \
		-r tests/browser/requirements.txt
	touch $(BROWSER_STAMP)

browser-test: $(BROWSER_STAMP)
	CXR_BROWSER_TEST=1 CXR_CHROMIUM=$(CHROMIUM) $(BIN)/python -m pytest tests/browser -v
	@echo "Screenshots: runs/browser/*.png (summary.json beside them)"

record-outputs: $(STAMP)
	$(BIN)/python -m cxr_tutorial.chapters record

clean-notebooks: $(STAMP)
	$(BIN)/python -m cxr_tutorial.chapters clean

lock:
	rm -rf .lock-venv && $(PYTHON) -m venv .lock-venv
	.lock-venv/bin/python -m pip install --quiet -e '.[test]'
	{ head -n 2 requirements.lock; .lock-venv/bin/python -m pip freeze --exclude-editable; } \
		> requirements.lock.new && mv requirements.lock.new requirements.lock
	rm -rf .lock-venv

clean:
	rm -rf $(VENV) runs tutorial_outputs

# mlcube 0.0.9 pins omegaconf 2.1.0, whose metadata pip 24.1 and newer refuse: it gets its own
# venv with pip 24.0, and --no-deps because requirements-mlcube.lock is its whole tree.
$(MLCUBE_STAMP): requirements-mlcube.lock
	test -x $(MLCUBE_VENV)/bin/python || $(PYTHON) -m venv $(MLCUBE_VENV)
	$(MLCUBE_VENV)/bin/python -m pip install --quiet --disable-pip-version-check pip==24.0
	$(MLCUBE_VENV)/bin/python -m pip install --quiet --disable-pip-version-check --no-deps \
		-r requirements-mlcube.lock
	$(MLCUBE_VENV)/bin/python -m pip check --disable-pip-version-check
	touch $(MLCUBE_STAMP)

mlcube-venv: $(MLCUBE_STAMP)

container-configs: $(STAMP)
	$(BIN)/python -m cxr_tutorial.containers write

# Needs root, podman, runc and debootstrap (Debian: apt-get install podman runc debootstrap).
container-test: $(STAMP)
	$(BIN)/python -m cxr_tutorial.containers check
	bash containers/container-test.sh
