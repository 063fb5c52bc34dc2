# Two commands for a fresh machine: `make demo` and `make test`. Each creates .venv when it is missing.
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python

# WikiText-2: the folder in $VPTQ_LAB_DATA if you set one; else this project's data folder beside the checkout,
# only where it exists. With neither, the library tries the Hugging Face hub, then a labelled stand-in corpus.
PROJECT_DATA := $(abspath ../shared/data/wikitext-2-raw)
ifeq ($(VPTQ_LAB_DATA),)
ifneq ($(wildcard $(PROJECT_DATA)/wiki.test.raw),)
export VPTQ_LAB_DATA := $(PROJECT_DATA)
endif
endif

.PHONY: demo test test-fast lint lab venv clean-venv

$(VENV)/.installed: pyproject.toml scripts/bootstrap.py
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) scripts/bootstrap.py
	touch $@

venv: $(VENV)/.installed

demo: venv
	$(PY) -m vptq_lab.cli demo

# Tests never reach the network: the hub is switched off for them (make demo and make lab may use it).
test test-fast: export HF_HUB_OFFLINE ?= 1
test test-fast: export HF_DATASETS_OFFLINE ?= 1

# Lint, the unit tests, then the tutorials under nbval in their smoke configuration (CI=1).
# Pinning torch and MKL to AVX2 kernels (a no-op on AVX2-only CPUs) keeps notebook 02's digits equal on
# AVX-512 CPUs. Cells whose digits vary by CPU or thread count are tagged nbval-ignore-output and checked by
# asserts (docs/troubleshooting.md, Determinism).
test: venv lint
	$(PY) -m pytest tests -q -p no:cacheprovider
	CI=1 ATEN_CPU_CAPABILITY=avx2 MKL_ENABLE_INSTRUCTIONS=AVX2 \
		$(PY) -m pytest --nbval --nbval-sanitize-with tests/nbval_sanitize.cfg notebooks -q -p no:cacheprovider

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
	rm -rf $(VENV)
