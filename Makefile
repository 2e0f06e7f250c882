# Two commands on a fresh machine: `make demo` and `make test`. Both create .venv when it is missing.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.ctpipe-installed

.PHONY: demo test venv lint wheel-check schema-diff bench kubeflow-compile kubeflow-image clean

$(STAMP): pyproject.toml constraints.txt
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --ignore-requires-python -c constraints.txt \
	    "tfx[kfp]==1.16.0" tensorflow-serving-api==2.16.1 kubernetes-validate==1.37.0 pytest \
	    ruff==0.17.6
	$(PY) -m pip install -q --ignore-requires-python --no-deps -e .
	@touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/ctpipe demo $(DEMO_ARGS)

test: $(STAMP)
	$(PY) -m pytest $(PYTEST_ARGS)

lint: $(STAMP)
	$(VENV)/bin/ruff check .

# Build the wheel, install it into a fresh venv that reuses .venv's pinned stack through a .pth
# file, and run the CLI from outside the checkout: what the Kubeflow image does.
wheel-check: $(STAMP)
	bash .ci/wheel-check $(PY)

schema-diff: $(STAMP)
	$(VENV)/bin/ctpipe schema-diff --data-root data/sample

# ctpipe vs stock TFX, scaling 1x/10x/100x, serving: tables on stdout, JSON in the work folder.
# BENCH_ARGS="--quick" skips 100x; "--flink" adds a per-runner table (local Flink cluster);
# "--skip-scaling", "--skip-serving", "--work DIR"; "--soak N": N cycles in one watch process.
bench: $(STAMP)
	$(PY) -m ctpipe.pipeline.bench $(BENCH_ARGS)

KFP_TARGET ?= kfp
KFP_SPEC ?= kubeflow/out/ctpipe.$(if $(filter vertex,$(KFP_TARGET)),json,yaml)
IMAGE ?= ghcr.io/example/ctpipe:0.1.0

kubeflow-compile: $(STAMP)
	$(VENV)/bin/ctpipe kubeflow compile --target $(KFP_TARGET) --output $(KFP_SPEC) $(if $(KFP_CONFIG),--config $(KFP_CONFIG))

# Builds only where a container engine runs; says so and fails otherwise.
kubeflow-image:
	@if command -v docker >/dev/null 2>&1 && docker info >/dev/null 2>&1; then \
	    docker build -f kubeflow/Dockerfile -t $(IMAGE) . ; \
	else \
	    echo "kubeflow-image: no running container engine here (docker info fails); build on a machine with one: docker build -f kubeflow/Dockerfile -t $(IMAGE) ." >&2; exit 2; \
	fi

clean:
	rm -rf ctpipe-home .pytest_cache

# A local Flink cluster for kubeflow/environments/flink-local.toml (pipeline/run/flink_local.py):
# fetched once into ~/.cache/ctpipe/flink (CTPIPE_FLINK_CACHE), state and logs in
# ~/.local/state/ctpipe/flink (CTPIPE_FLINK_STATE), ports from CTPIPE_FLINK_{REST,RPC,JOB,
# ARTIFACT,EXPANSION,WORKER_POOL}_PORT. flink-down stops exactly what flink-up started.
.PHONY: flink-up flink-down flink-status
flink-up: $(STAMP)
	$(VENV)/bin/ctpipe flink up

flink-down: $(STAMP)
	$(VENV)/bin/ctpipe flink down

flink-status: $(STAMP)
	$(VENV)/bin/ctpipe flink status
