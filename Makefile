# lbtkit developer entry points. Every target creates .venv first when it is missing.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin

.PHONY: install test test-fast demo study remedies-demo docs docs-site bench bench-quick lint format clean image sif image-test

# Where make demo / remedies-demo / bench write: build/ (ignored by git), so trying them leaves
# the checkout clean. `make docs` refreshes the committed copies in docs/; record benchmark
# figures with `make bench BENCH_RESULTS=bench/results`.
DEMO_DIR      ?= build/demo
REMEDIES_DIR  ?= build/remedies
BENCH_RESULTS ?= build/bench
BENCH_QUICK_RESULTS ?= build/bench-quick
# make bench: the ratio benchmarks at full size (bench/fashion_epochs.py, a planning measurement
# of several minutes, runs on its own). make bench-quick: every bench/*.py.
BENCH_SCRIPTS       = data_pipeline train_step interpolation normalize lbfgsb_box contention optimizer_step study_jobs
BENCH_QUICK_SCRIPTS = $(filter-out bench/common.py,$(wildcard bench/*.py))

# Container images: the Docker image lbtkit:TAG (tag = the package version) and its SIF.
IMAGE_NAME ?= lbtkit
IMAGE_TAG ?= 0.1.0
DOCKER     ?= docker
APPTAINER  ?= apptainer
BAKE_WEIGHTS ?= 0
SIF        ?= $(IMAGE_NAME)-$(IMAGE_TAG).sif
# BASE_IMAGE=... overrides the Dockerfile's pinned pytorch/pytorch base.
DOCKER_BUILD_ARGS = --build-arg BAKE_WEIGHTS=$(BAKE_WEIGHTS) \
	$(if $(BASE_IMAGE),--build-arg BASE_IMAGE=$(BASE_IMAGE))

$(BIN)/lbtkit: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	@touch $@

install: $(BIN)/lbtkit  ## create .venv and install lbtkit with its dev extras

# pytest-xdist workers; --dist loadfile keeps a file's tests (and its module fixtures, and the
# one real SLURM of test_slurm.py) in one worker. TEST_WORKERS=0 runs in this process.
TEST_WORKERS ?= 2
TEST_DIST = $(if $(filter 0,$(TEST_WORKERS)),,-n $(TEST_WORKERS) --dist loadfile)

test: $(BIN)/lbtkit  ## the whole suite (CPU; 8-14 minutes on 2 cores)
	$(BIN)/pytest -q $(TEST_DIST)

test-fast: $(BIN)/lbtkit  ## skip the multi-process and kill/resume integration tests
	$(BIN)/pytest -q -m "not slow" $(TEST_DIST)

demo: $(BIN)/lbtkit  ## the whole study offline on the bundled digits (~2 min on 2 CPU cores) -> $(DEMO_DIR)/index.md
	$(BIN)/lbtkit demo --output $(DEMO_DIR)

study: $(BIN)/lbtkit  ## Keskar's F1 protocol and the batch-size sweep, then the critical batch size, on Fashion-MNIST (apt-get install dataset-fashion-mnist), 2 jobs -> docs/fashion/index.md, docs/critical-batch/index.md
	$(BIN)/lbtkit study fashion --output docs/fashion --jobs 2
	$(BIN)/lbtkit study critical-batch --output docs/critical-batch --jobs 2

docs: $(BIN)/lbtkit  ## refresh the committed demo outputs: docs/demo and docs/remedies
	$(MAKE) demo DEMO_DIR=docs/demo
	$(MAKE) remedies-demo REMEDIES_DIR=docs/remedies

# The documentation site (mkdocs, Material theme) -> build/site; --strict: a broken link or a
# missing page fails. The CLI reference page is generated from the CLI at every build.
$(BIN)/mkdocs: $(BIN)/lbtkit
	$(BIN)/pip install --quiet -e '.[docs]'
	@touch $@

docs-site: $(BIN)/mkdocs  ## the documentation site (pip install -e '.[docs]') -> build/site
	$(BIN)/mkdocs build --strict --quiet

remedies-demo: $(BIN)/lbtkit  ## each large-batch remedy at batch 1024 on the bundled digits, 3 seeds, and the plane through the batch-32 and batch-1024 solutions (~1.5 min on 2 CPU cores) -> $(REMEDIES_DIR)/
	$(BIN)/lbtkit sweep plan --preset remedies-digits --output $(REMEDIES_DIR)/work
	$(BIN)/lbtkit sweep run $(REMEDIES_DIR)/work --no-progress
	$(BIN)/lbtkit noise-scale $(REMEDIES_DIR)/work/runs/b1024-s0-baseline --batches 32,1024
	$(BIN)/lbtkit report $(REMEDIES_DIR)/work --output $(REMEDIES_DIR)
	$(BIN)/lbtkit landscape $(REMEDIES_DIR)/work/runs/b32-s0-reference-b32 \
		--other $(REMEDIES_DIR)/work/runs/b1024-s0-baseline --directions between \
		--grid -0.5:1.5:11,-1:1:11 --output $(REMEDIES_DIR)/landscape

bench: $(BIN)/lbtkit  ## benchmarks (not tests): figures and JSON (with the machine and its load average) in $(BENCH_RESULTS)/
	set -e; for name in $(BENCH_SCRIPTS); do \
		$(BIN)/python bench/$$name.py --results-dir $(BENCH_RESULTS); done

# Each script's output goes to NAME.log; a failure or a missing last line "ratio: X" prints
# the log and stops. Whether the ratio meets its target is not checked: CI machines are noisy.
bench-quick: $(BIN)/lbtkit  ## every bench/*.py with --quick (tiny sizes, ~2 min on 2 cores): they run and print their ratio
	@mkdir -p $(BENCH_QUICK_RESULTS)
	@for script in $(BENCH_QUICK_SCRIPTS); do \
		log=$(BENCH_QUICK_RESULTS)/$$(basename $$script .py).log; start=$$(date +%s); \
		if ! $(BIN)/python $$script --quick --results-dir $(BENCH_QUICK_RESULTS) >$$log 2>&1; \
		then cat $$log; echo "bench-quick: $$script failed"; exit 1; fi; \
		last=$$(tail -n 1 $$log); \
		if ! echo "$$last" | grep -Eq '^ratio: [0-9.]+$$'; \
		then cat $$log; echo "bench-quick: $$script did not end with 'ratio: X'"; exit 1; fi; \
		echo "$$script --quick: $$last ($$(( $$(date +%s) - start )) s)"; \
	done

lint: $(BIN)/lbtkit  ## ruff, the import contract (layers, no cycles: pyproject.toml), shellcheck (jobs/, docker/), hadolint (Dockerfiles)
	$(BIN)/ruff check .
	$(BIN)/lint-imports
	$(BIN)/shellcheck $(wildcard jobs/*.sh jobs/*.sbatch docker/*.sh)
	$(BIN)/hadolint --failure-threshold warning Dockerfile $(wildcard docker/*.Dockerfile)

format: $(BIN)/lbtkit
	$(BIN)/ruff format lbtkit tests

image:  ## the Docker image $(IMAGE_NAME):$(IMAGE_TAG) (BAKE_WEIGHTS=1 bakes the ImageNet weights)
	$(DOCKER) build $(DOCKER_BUILD_ARGS) -t $(IMAGE_NAME):$(IMAGE_TAG) .

sif:  ## the Apptainer image $(SIF) from the local Docker image (make image first)
	$(APPTAINER) build $(SIF) apptainer.def

image-test: $(BIN)/lbtkit  ## build on a locally made CPU base, run doctor and tiny runs inside
	PYTHON=$(BIN)/python DOCKER=$(DOCKER) bash docker/image-test.sh

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .ruff_cache .import_linter_cache
