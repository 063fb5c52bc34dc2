# Two commands for a fresh machine: `make demo` and `make test`. Each creates .venv when it is missing, with the
# versions locked in constraints.txt (the ones the suite passed with). `make test-latest` runs the same tests in
# .venv-latest with the newest versions pyproject.toml allows.
PYTHON ?= python3.11
VENV ?= .venv
PY := $(VENV)/bin/python
# LATEST=1: install without the lock (make test-latest sets it)
BOOTSTRAP_FLAGS := $(if $(LATEST),--latest)
LOCK_FILE := $(if $(LATEST),,constraints.txt)

# WikiText-2: the folder in $VPTQ_LAB_DATA if you set one; else this project's data folder beside the checkout,
# only where it exists. With neither, the library tries the Hugging Face hub, then a labelled stand-in corpus.
PROJECT_DATA := $(abspath ../shared/data/wikitext-2-raw)
ifeq ($(VPTQ_LAB_DATA),)
ifneq ($(wildcard $(PROJECT_DATA)/wiki.test.raw),)
export VPTQ_LAB_DATA := $(PROJECT_DATA)
endif
endif

.PHONY: demo test test-fast test-latest lock lint lab venv clean-venv

# .installed: everything (the tests, notebooks and kernels too); .installed-core: what `vptq-lab` needs to run, all
# that `make demo` waits for. A full install is also a core one.
$(VENV)/.installed: pyproject.toml scripts/bootstrap.py $(LOCK_FILE)
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) scripts/bootstrap.py $(BOOTSTRAP_FLAGS)
	touch $@ $(VENV)/.installed-core

$(VENV)/.installed-core: pyproject.toml scripts/bootstrap.py $(LOCK_FILE)
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) scripts/bootstrap.py --core $(BOOTSTRAP_FLAGS)
	touch $@

venv: $(VENV)/.installed

demo: $(VENV)/.installed-core
	$(PY) -m vptq_lab.cli demo

# The whole suite on the newest versions pyproject.toml allows (a fresh .venv-latest each time, so a release since
# the last run is picked up); `make lock` then records them in constraints.txt.
test-latest:
	rm -rf .venv-latest
	$(MAKE) test VENV=.venv-latest LATEST=1

lock:
	test -x .venv-latest/bin/python || { echo "run make test-latest first: the lock records what it passed with"; exit 1; }
	.venv-latest/bin/python scripts/bootstrap.py --freeze constraints.txt

# Tests never reach the network: the hub is switched off for them (make demo and make lab may use it).
test test-fast: export HF_HUB_OFFLINE ?= 1
test test-fast: export HF_DATASETS_OFFLINE ?= 1

# Lint, the unit tests, then the tutorials under nbval, on the default model.
# Pinning torch and MKL to AVX2 kernels (a no-op on AVX2-only CPUs) keeps the notebooks' digits equal on
# AVX-512 CPUs. Cells whose digits vary by CPU or thread count are tagged nbval-ignore-output and checked by
# asserts (docs/troubleshooting.md, Determinism). The committed outputs were computed on WikiText-2: without a
# WikiText-2 folder the tutorials run on the stand-in corpus, so nbval runs them and their asserts but does not
# compare their outputs (--nbval-lax).
NBVAL_MODE := $(if $(VPTQ_LAB_DATA),--nbval,--nbval-lax)
test: venv lint
	$(PY) -m pytest tests -q -p no:cacheprovider
	$(if $(VPTQ_LAB_DATA),,@echo "no WikiText-2 folder (set VPTQ_LAB_DATA): the tutorials run on the stand-in corpus; outputs not compared")
	CI=1 ATEN_CPU_CAPABILITY=avx2 MKL_ENABLE_INSTRUCTIONS=AVX2 \
		$(PY) -m pytest $(NBVAL_MODE) --nbval-sanitize-with tests/nbval_sanitize.cfg notebooks -q -p no:cacheprovider

# The quick loop while editing: lint and the unit tests without the default model, the browser or slow tests.
test-fast: venv lint
	$(PY) -m pytest tests -q -p no:cacheprovider -m "not real_model and not browser and not slow" -n 2

lint: venv
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .

# JupyterLab on the tutorials, with the same data resolution as `make demo` (--allow-root only where make runs as
# root, as in containers).
lab: venv
	$(PY) -m jupyter lab notebooks $(if $(filter 0,$(shell id -u)),--allow-root)

clean-venv:
	rm -rf .venv .venv-latest
