# The two commands a new user needs: `make demo` and `make test`. Each sets up .venv once.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.aigc-installed

.PHONY: setup demo test test-fast nginx-check lint bench clean

setup: $(STAMP)

$(STAMP): pyproject.toml scripts/setup-venv.sh
	PYTHON=$(PYTHON) bash scripts/setup-venv.sh $(VENV)
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/aigc run -c examples/quickstart.yaml

test: $(STAMP) lint nginx-check
	$(BIN)/python -m pytest

# The quick subset: no Ray cluster, no sweeps (a few minutes on 2 cores).
test-fast: $(STAMP) lint
	$(BIN)/python -m pytest -m "not slow"

# The load-balancer test runs a real nginx in front of Serve: say how to get it rather than skip in silence.
nginx-check:
	@command -v nginx >/dev/null || [ -x /usr/sbin/nginx ] || echo "note: nginx is not installed, so the load-balancer test will be skipped; install it with 'sudo apt-get install nginx' (Debian/Ubuntu) or 'brew install nginx' to run it"

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

bench: $(STAMP)
	$(BIN)/python bench/data_stream.py
	$(BIN)/python bench/train_overhead.py
	$(BIN)/python bench/sweep_efficiency.py
	$(BIN)/python bench/augmentation.py
	$(BIN)/python bench/scaling.py
	$(BIN)/python bench/import_photos.py
	$(BIN)/python bench/lm_decode.py
	$(BIN)/python bench/precision.py

clean:
	rm -rf runs .pytest_cache .ruff_cache
