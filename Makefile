# kvsched — `make demo` and `make test` work on a fresh machine: they create .venv and install what they need.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-stamp

.PHONY: demo test unit e2e e2e-tools bench lint clean clean-e2e

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

## demo: plan the bundled example cluster (no cluster needed)
demo: $(STAMP)
	$(VENV)/bin/kvsched plan examples/cluster.yaml --output placement.json --plot placement.svg

## test: the whole suite, unit and e2e (builds the test control plane into its cache first if needed)
test: $(STAMP) $(VENV)/.bench-stamp e2e-tools
	$(PY) -m pytest

unit: $(STAMP) $(VENV)/.bench-stamp
	$(PY) -m pytest --ignore=tests/e2e

## e2e: only the e2e tests (builds the control plane into its cache first if needed)
e2e: $(STAMP) e2e-tools
	$(PY) -m pytest tests/e2e

## e2e-tools: build kube-apiserver, etcd, kube-scheduler, kube-controller-manager, KWOK, helm into the cache
e2e-tools:
	@if [ -x tests/e2e/cluster/build.sh ]; then tests/e2e/cluster/build.sh; fi

## bench: figures, not tests (ADRS-50 against proven optima, scale against the fluid bound, churn vs CP-SAT)
bench: $(STAMP) $(VENV)/.bench-stamp
	$(PY) -m bench.run --churn

$(VENV)/.bench-stamp: pyproject.toml $(STAMP)
	$(PY) -m pip install --quiet -e '.[dev,bench]'
	touch $(VENV)/.bench-stamp

lint: $(STAMP)
	$(VENV)/bin/mypy kvsched
	$(VENV)/bin/lint-imports

clean:
	rm -rf $(VENV) placement.json placement.svg

## clean-e2e: drop the built control plane (the next `make test` rebuilds it, ~15 min on 2 cores)
clean-e2e:
	rm -rf $${KVSCHED_E2E_CACHE:-$$HOME/.cache/kvsched-e2e}
