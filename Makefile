# `make test` is the whole suite: lint, types, tests. It builds its own venv.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: test lint typecheck pytest bench venv clean real-clis

test: venv lint typecheck pytest

venv: $(BIN)/.installed

# A directory's time changes when a file is added to it or removed.
PACKAGES := llmd client/llmc $(filter-out %/__pycache__/,$(wildcard llmd/*/ client/llmc/*/))

# A strict editable install links the sources without an import hook, which would cost
# every Python start in the venv ~15 ms; it is redone when a package gains or loses a file.
$(BIN)/.installed: pyproject.toml $(PACKAGES)
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q --config-settings editable_mode=strict -e '.[test]'
	touch $@

lint: venv
	$(BIN)/ruff check llmd client tests bench

typecheck: venv
	$(BIN)/mypy

# The whole suite includes the real CLIs (installed pinned, cached outside the tree).
pytest: venv
	LLMD_REAL_CLIS="$${LLMD_REAL_CLIS:-$$(scripts/install-real-clis)}" $(BIN)/python -m pytest -q

# The real LLM CLIs at pinned versions, cached outside the work tree, for
# tests/test_real_clis.py; it prints their directory:
#   LLMD_REAL_CLIS="$$(scripts/install-real-clis)" make pytest
real-clis:
	bash scripts/install-real-clis

bench: venv
	$(BIN)/python bench/run.py
	$(BIN)/python bench/streaming.py
	$(BIN)/python bench/store.py
	$(BIN)/python bench/jobs_list.py --jobs 1000
	$(BIN)/python bench/jobs_list.py
	$(BIN)/python bench/usage.py
	$(BIN)/python bench/health.py
	$(BIN)/python bench/mcp.py
	$(BIN)/python bench/editors.py
	$(BIN)/python bench/worktree.py
	$(BIN)/python bench/watch.py
	$(BIN)/python -m bench.bench_parsers

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache
