# Two commands on a fresh machine: `make demo` and `make test`. Both create .venv on first use.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# The PyTorch build to install, first and on its own: which wheel a plain `pip install torch==X` gets
# depends on the machine (on Linux the public index serves the multi-GB CUDA build). Choose with
#   make demo TORCH_SPEC=torch==2.13.0 TORCH_INDEX=https://download.pytorch.org/whl/cpu   # CPU-only
#   make demo TORCH_INDEX=https://download.pytorch.org/whl/cu126                          # a CUDA build
# or the same names as environment variables. Empty TORCH_INDEX: pip's configured index.
TORCH_SPEC ?= torch==2.13.0
TORCH_INDEX ?=
TORCH_INDEX_FLAG := $(if $(strip $(TORCH_INDEX)),--index-url $(TORCH_INDEX),)
# One stamp per torch choice, so that another TORCH_SPEC / TORCH_INDEX reinstalls torch.
TORCH_STAMP := $(VENV)/.torch-$(shell printf '%s' '$(TORCH_SPEC) $(TORCH_INDEX)' | cksum | cut -d' ' -f1)
# The stamp depends on pyproject.toml, so a changed dependency list reinstalls; otherwise this is instant.
STAMP := $(VENV)/.installed

.PHONY: venv test test-fast demo clean

venv: $(STAMP)

$(TORCH_STAMP):
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q $(TORCH_INDEX_FLAG) "$(TORCH_SPEC)"
	rm -f $(VENV)/.torch-* && touch $@

$(STAMP): pyproject.toml $(TORCH_STAMP)
	$(BIN)/pip install -q -e ".[dev]"
	touch $(STAMP)

# One torch thread per test worker: two workers with a thread per core each would oversubscribe a
# 2-core machine (measured by `bash .ci/run`: 680 s for the suite against 250 s with one thread each).
test: $(STAMP)
	OMP_NUM_THREADS=1 $(BIN)/python -m pytest -q -n 2 --dist loadgroup

test-fast: $(STAMP)
	OMP_NUM_THREADS=1 $(BIN)/python -m pytest -q -n 2 -m "not integration and not slow"

demo: $(STAMP)
	$(BIN)/yoloprune demo --out runs/demo

clean:
	rm -rf $(VENV) runs .pytest_cache
