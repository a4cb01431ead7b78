# Two commands on a fresh machine: `make demo` and `make test`. Each creates .venv on first use.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: install test test-fast demo bench bench-full bench-gpu clean

install: $(STAMP)

# Re-install only when the project's metadata changed, so `make test` is quick once installed.
$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev,plots]'
	touch $(STAMP)

test: install
	$(PY) -m pytest $(PYTEST_ARGS)

test-fast: install
	$(PY) -m pytest -m "not slow" $(PYTEST_ARGS)

demo: install
	$(PY) recipes/demo.py
	$(PY) recipes/segmentation_tour.py

# The quick set (a few minutes on 2 cores: one case per ratio, fewer repetitions); bench-full: every case.
bench: install
	$(PY) bench/run.py

bench-full: install
	$(PY) bench/run.py --full

bench-gpu: install
	$(PY) bench/run.py --gpu

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache demo-output segmentation-output bench/results
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
