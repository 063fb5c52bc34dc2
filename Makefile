# Two commands for a fresh machine: `make demo` and `make test`. Both create .venv when it is missing.
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
export HF_HUB_OFFLINE ?= 1
export HF_DATASETS_OFFLINE ?= 1
export VPTQ_LAB_DATA ?= $(abspath ../shared/data/wikitext-2-raw)

.PHONY: demo test venv clean-venv

$(VENV)/.installed: pyproject.toml scripts/bootstrap.py
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) scripts/bootstrap.py
	touch $@

venv: $(VENV)/.installed

demo: venv
	$(PY) -m vptq_lab.cli demo

# The unit tests, then the tutorials under nbval in their smoke configuration (CI=1).
# Pinning torch and MKL to AVX2 kernels (a no-op on AVX2-only CPUs) keeps notebook 02's digits equal on
# AVX-512 CPUs. Cells whose digits vary by CPU or thread count are tagged nbval-ignore-output and checked by
# asserts (docs/troubleshooting.md, Determinism).
test: venv
	$(PY) -m pytest tests -q -p no:cacheprovider
	CI=1 ATEN_CPU_CAPABILITY=avx2 MKL_ENABLE_INSTRUCTIONS=AVX2 \
		$(PY) -m pytest --nbval --nbval-sanitize-with tests/nbval_sanitize.cfg notebooks -q -p no:cacheprovider

clean-venv:
	rm -rf $(VENV)
