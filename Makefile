# Two commands on a fresh machine: `make demo` and `make test`. Both create .venv on first use.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# The stamp depends on pyproject.toml, so a changed dependency list reinstalls; otherwise this is instant.
STAMP := $(VENV)/.installed

.PHONY: venv test test-fast demo clean

venv: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	# torch first and pinned: the CPU wheel; an unpinned torch would pull a multi-GB CUDA build.
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e ".[dev]"
	touch $(STAMP)

test: $(STAMP)
	$(BIN)/python -m pytest -q -n 2 --dist loadgroup

test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -n 2 -m "not slow"

demo: $(STAMP)
	$(BIN)/yoloprune demo --out runs/demo

clean:
	rm -rf $(VENV) runs .pytest_cache
