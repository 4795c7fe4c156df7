# Two commands set everything up: `make demo` and `make test`.
VENV := .venv
PY := $(VENV)/bin/python
UV_VERSION := 0.13.8
export PATH := $(CURDIR)/$(VENV)/bin:$(PATH)
export DAGSTER_HOME ?= $(CURDIR)/.dagster_home

.PHONY: install demo test test-fast lint compile check serve dagster bench mutation clean

# --compile-bytecode: where PYTHONDONTWRITEBYTECODE is set (these machines set it) nothing would ever write the
# .pyc files, and every process (tests spawn dbt, Dagster and Feast) would compile its imports from source.
$(VENV)/.installed: pyproject.toml uv.lock
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q "uv==$(UV_VERSION)"
	$(VENV)/bin/uv sync --frozen --extra dev --compile-bytecode --python $(PY)
	touch $@

install: $(VENV)/.installed

demo: install
	mkdir -p $(DAGSTER_HOME)
	$(VENV)/bin/trellis validate
	$(VENV)/bin/trellis compile --check
	$(PY) -m assets.demo

# Two pytest-xdist workers, one per core: tests/conftest.py (distribute) keeps the session pipeline's modules on one
# worker and a module's shared fixtures on one worker, and starts the longest work first. TEST_WORKERS=0: one process.
TEST_WORKERS ?= 2
test: install
	mkdir -p $(DAGSTER_HOME)
	$(PY) -m pytest $(if $(filter-out 0,$(TEST_WORKERS)),-n $(TEST_WORKERS) --dist loadgroup)

# The quick loop (under a minute): everything but the tests marked slow (the pipeline, CatBoost training,
# property tests over DuckDB). `make test` and CI still run every test.
test-fast: install
	mkdir -p $(DAGSTER_HOME)
	$(PY) -m pytest -m "not slow"

lint: install
	$(VENV)/bin/ruff check .

check: install
	$(VENV)/bin/trellis compile --check

compile: install
	$(VENV)/bin/trellis compile

# The scoring service on the demo's online store and registry (run `make demo` first). PORT=8000 by default.
PORT ?= 8000
serve: install
	$(VENV)/bin/uvicorn serving.app:create_app --factory --host 127.0.0.1 --port $(PORT) \
		--no-access-log --loop uvloop --http httptools

dagster: install
	mkdir -p $(DAGSTER_HOME)
	$(VENV)/bin/dagster dev -w workspace.yaml

bench: install
	$(PY) bench/bench_simulate.py
	$(PY) bench/bench_features.py

# Mutation testing of the modules that carry the promises (bench/mutation.py, mutmut 3, fast tests only): writes
# bench/results/mutation.md. Not part of `make test` or CI: every module takes hours on two cores. MODULE=<name>
# runs one (timesem, offline, state, contracts, schemas, registry_gate, explain); results are kept in mutants/,
# so a second run tests only what changed.
MODULE ?=
mutation: install
	nice -n 19 $(PY) bench/mutation.py $(if $(MODULE),--module $(MODULE))

clean:
	rm -rf data dbt_project/target feature_repo/data/*.parquet feature_repo/data/*.db .dagster_home
