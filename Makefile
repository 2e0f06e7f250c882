# Two commands on a fresh machine: `make demo` and `make test`. Both create .venv when it is missing.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.ctpipe-installed

.PHONY: demo test venv schema-diff benchmark clean

$(STAMP): pyproject.toml constraints.txt
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --ignore-requires-python -c constraints.txt \
	    "tfx[kfp]==1.16.0" tensorflow-serving-api==2.16.1 pytest
	$(PY) -m pip install -q --ignore-requires-python --no-deps -e .
	@touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/ctpipe demo $(DEMO_ARGS)

test: $(STAMP)
	$(PY) -m pytest $(PYTEST_ARGS)

schema-diff: $(STAMP)
	$(VENV)/bin/ctpipe schema-diff --data-root data/sample

benchmark: $(STAMP)
	$(PY) -m pipeline.benchmark

clean:
	rm -rf ctpipe-home .pytest_cache
