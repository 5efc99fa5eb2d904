# Two commands on a fresh machine: `make demo` and `make test` (`make lint` for the linters, as CI runs them).
PYTHON ?= python3
TORCH ?= torch==2.13.0
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
LINT_STAMP := $(VENV)/.installed-lint

.PHONY: demo test lint bench study venv clean

venv: $(STAMP)

# torch goes in first (pinned to the local CPU build by default; override with TORCH=...),
# then the package editable with its extras. The stamp makes a second run quick.
$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check "$(TORCH)"
	$(PY) -m pip install -q --disable-pip-version-check -e ".[test,report]"
	touch $(STAMP)

test: $(STAMP)
	$(PY) -m pytest -q

# The pinned linters (the `lint` extra) go into the same venv: mypy needs torch and numpy to check against.
$(LINT_STAMP): $(STAMP)
	$(PY) -m pip install -q --disable-pip-version-check -e ".[lint]"
	touch $(LINT_STAMP)

# ruff (rules and line length in pyproject.toml), the format check, mypy (files and options in pyproject.toml).
# All three run, so one pass shows every problem; the target fails if any of them does.
lint: $(LINT_STAMP)
	@status=0; \
	echo "ruff check src"; $(PY) -m ruff check src || status=1; \
	echo "ruff format --check src"; $(PY) -m ruff format --check src || status=1; \
	echo "mypy"; $(PY) -m mypy || status=1; \
	exit $$status

demo: $(STAMP)
	$(PY) -m cmemd demo

bench: $(STAMP)
	$(PY) bench/run_all.py

# The finished alignment study (experiments/alignment_study/): every run whose file is committed is skipped, so on a
# clone this only rebuilds its page, README.md, from the run files; a run added to study.yaml trains (two processes).
study: $(STAMP)
	$(PY) experiments/alignment_study/study.py --jobs 2

clean:
	rm -rf $(VENV) data/demo runs/demo
