# Two commands set everything up on a fresh machine: `make demo` and `make test`.
# Both bootstrap .venv idempotently: the stamp is rebuilt only when pyproject.toml changes.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: demo test lint protos bench clean chromium image deploy-test

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	# torch first and pinned: the CPU wheel; an unpinned resolve pulls several GB of CUDA.
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/cipherfed demo $(ARGS)

# --dist loadscope keeps each test module, and the processes its fixtures start, on one worker.
# (pytest 9 with pytest-xdist 3.8 ignores xdist_group marks, so --dist loadgroup would split modules.)
test: $(STAMP) chromium
	$(BIN)/pytest -n 2 --dist loadscope -q

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/mypy crypto protocol aggregator silo_node policies audit cipherfed benchmarks

protos: $(STAMP)
	$(BIN)/python -m protocol.codegen

bench: $(STAMP)
	$(BIN)/python -m benchmarks.crypto_throughput --params 1000000 --silos 8 --json benchmarks/results/crypto_throughput.json

# The console test drives a real headless Chromium (Debian's package); install it when missing.
chromium:
	@command -v chromium >/dev/null 2>&1 && echo "chromium: $$(command -v chromium)" || \
		{ apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium; }

# The container image, and the compose consortium run for real (aggregator + 3 silos + a one-shot job,
# audit verified, torn down): needs a running Docker engine; see scripts/deploy-test.sh.
image: $(STAMP)
	CIPHERFED_PYTHON=$(abspath $(BIN))/python scripts/deploy-test.sh --build

deploy-test: $(STAMP)
	CIPHERFED_PYTHON=$(abspath $(BIN))/python scripts/deploy-test.sh

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .mypy_cache .ruff_cache
