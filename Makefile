# Quickstart:  make train   (creates .venv if needed, trains the default model on CPU)
#              make test    (the test suite)
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
WORKDIR ?= runs/default
CONFIG ?= experiments/configs/default.py

.PHONY: train test install clean

# The package in editable mode. `make train` installs what training needs (the package and
# its [tensorboard] extra: TRAIN_EXTRAS); `make test` and `make install` add the extras a
# checkout uses: [dev] for the tests, [tfds] for the TFDS sources, [experiments] for plots and
# the notebook (GPU: EXTRAS=dev,tfds,experiments,cuda12).
TRAIN_EXTRAS ?= tensorboard
EXTRAS ?= dev,tfds,experiments
TRAIN_STAMP := $(VENV)/.installed-train
$(TRAIN_STAMP): pyproject.toml requirements.txt
	@test -x $(PY) || $(PYTHON) -m venv $(VENV) || $(PYTHON) -m virtualenv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet --editable ".[$(TRAIN_EXTRAS)]"
	@touch $(TRAIN_STAMP)

$(STAMP): pyproject.toml requirements.txt
	@test -x $(PY) || $(PYTHON) -m venv $(VENV) || $(PYTHON) -m virtualenv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet --editable ".[$(EXTRAS),$(TRAIN_EXTRAS)]"
	@touch $(STAMP) $(TRAIN_STAMP)

install: $(STAMP)

train: $(TRAIN_STAMP)
	$(PY) -m megabyte_jax.train --config=$(CONFIG) --workdir=$(WORKDIR)

# Tests run in parallel processes (pytest-xdist: one per core, at most TEST_WORKERS), each
# test file in one process (its module fixtures and compiled models built once); the
# sharding tests need 8 emulated CPU devices, set before JAX starts: their own run, spread
# test by test.
TEST_WORKERS ?= 4
PYTEST := $(PY) -m pytest -q -n auto --maxprocesses=$(TEST_WORKERS) --durations=20
test: $(STAMP)
	$(PYTEST) --dist loadfile --ignore=tests/test_sharding.py
	XLA_FLAGS=--xla_force_host_platform_device_count=8 $(PYTEST) tests/test_sharding.py

clean:
	rm -rf $(VENV) runs .pytest_cache
