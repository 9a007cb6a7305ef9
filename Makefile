# `make test` and `make demo` work from a fresh clone: both create .venv and install first.
VENV ?= .venv
PYTHON ?= python3
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: test demo lint clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[cpu,dev]'
	touch $(STAMP)

# lint-imports through this venv's python, so the checked package is this checkout's.
LINT_IMPORTS := $(BIN)/python -c "import sys; from importlinter.cli import lint_imports_command; sys.exit(lint_imports_command())"

test: $(STAMP)
	$(BIN)/ruff check .
	$(LINT_IMPORTS) --no-cache
	$(BIN)/python -m pytest -q

# Distills the shipped demo teacher on the shipped demo images, then prints bicubic / teacher /
# student PSNR; a few minutes on two CPU cores, nothing downloaded.
demo: $(STAMP)
	$(BIN)/python examples/demo.py

lint: $(STAMP)
	$(BIN)/ruff check .
	$(LINT_IMPORTS) --no-cache

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info
