# Two commands on a fresh machine with Python 3.11 and pip:  make demo  and  make test.
# Both create .venv (if missing) and install the pinned dependencies into it first.

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DEMO_OUTPUT ?= runs/demo

MLCUBE_VENV ?= .venv-mlcube
MLCUBE_STAMP := $(MLCUBE_VENV)/.installed

.PHONY: demo test lab lock clean help mlcube-venv container-configs container-test

help:
	@echo "make demo   install (once) and run the compatibility test on the demo data"
	@echo "make test   install (once) and run the test suite"
	@echo "make lab    open the tutorial in JupyterLab"
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
