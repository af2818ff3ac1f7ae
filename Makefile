# braintumor: everything runs from a project-local virtualenv (.venv), made on first use.
PYTHON ?= $(shell command -v python3.11 2>/dev/null || command -v python3)
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
STAMP := $(VENV)/.installed
# tensorflow-cpu where there is no NVIDIA GPU, the full tensorflow package where there is one
TF_PACKAGE := $(shell command -v nvidia-smi >/dev/null 2>&1 && echo "tensorflow>=2.16" || echo "tensorflow-cpu>=2.16")

.PHONY: venv test test-fast app data-check train-quick bench clean-venv

venv: $(STAMP)

$(STAMP): requirements.txt requirements-dev.txt pyproject.toml
	@command -v $(PYTHON) >/dev/null 2>&1 || { echo "error: $(PYTHON) not found (set PYTHON=...)"; exit 1; }
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	grep -v '^tensorflow' requirements.txt > $(VENV)/requirements-notf.txt
	$(PIP) install -q "$(TF_PACKAGE)" -r $(VENV)/requirements-notf.txt -r requirements-dev.txt
	$(PIP) install -q --no-deps -e .
	touch $(STAMP)

## the tests (what CI runs)
test: venv
	$(PY) -m pytest -q

## the tests without the slow ones (training, notebook, browser)
test-fast: venv
	$(PY) -m pytest -q -m "not slow"

## the decision-support app in the browser, with the released model in models/ (no dataset, no training)
app: venv
	$(VENV)/bin/braintumor app --ensure-weights

data-check: venv
	$(VENV)/bin/braintumor data check

train-quick: venv
	$(VENV)/bin/braintumor train --config mrcnn_config/quick.toml

bench: venv
	$(PY) benchmarks/bench_model.py

clean-venv:
	rm -rf $(VENV)
