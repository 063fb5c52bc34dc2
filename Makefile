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
# The notebooks' committed outputs were computed on an AVX2 CPU. On an AVX-512 CPU pinning torch and MKL
# to AVX2 kernels (a no-op on AVX2-only CPUs) made notebook 02 match again, but 7 quantization cells of
# notebooks 05-07 still differed there (cause not isolated; docs/troubleshooting.md, Determinism).
test: venv
	$(PY) -m pytest tests -q -p no:cacheprovider
	CI=1 ATEN_CPU_CAPABILITY=avx2 MKL_ENABLE_INSTRUCTIONS=AVX2 \
		$(PY) -m pytest --nbval --nbval-sanitize-with tests/nbval_sanitize.cfg notebooks -q -p no:cacheprovider

clean-venv:
	rm -rf $(VENV)
