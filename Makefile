# Two commands on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
TORCH ?= torch==2.13.0
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test bench bench-ablation venv clean

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

demo: $(STAMP)
	$(PY) -m cmemd demo

bench: $(STAMP)
	$(PY) bench/run_all.py

# The alignment study (issue 13; several hours on 2 cores, two shard processes). Resumable across machines: every
# finished run is a small JSON file under docs/results/alignment_study/runs/ (commit it), and a rerun skips it.
bench-ablation: $(STAMP)
	$(PY) bench/alignment_study.py --jobs 2

clean:
	rm -rf $(VENV) data/demo runs/demo
