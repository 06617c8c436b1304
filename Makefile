# The two commands a new user needs: `make demo` and `make test`. Each sets up .venv once.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.aigc-installed

.PHONY: setup demo test lint bench clean

setup: $(STAMP)

$(STAMP): pyproject.toml scripts/setup-venv.sh
	PYTHON=$(PYTHON) bash scripts/setup-venv.sh $(VENV)
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/aigc run -c examples/quickstart.yaml

test: $(STAMP) lint
	$(BIN)/python -m pytest

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

bench: $(STAMP)
	$(BIN)/python bench/data_stream.py
	$(BIN)/python bench/train_overhead.py
	$(BIN)/python bench/sweep_efficiency.py
	$(BIN)/python bench/augmentation.py

clean:
	rm -rf runs .pytest_cache .ruff_cache
