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
test: venv
	$(PY) -m pytest tests -q -p no:cacheprovider
	CI=1 $(PY) -m pytest --nbval --nbval-sanitize-with tests/nbval_sanitize.cfg notebooks -q -p no:cacheprovider

clean-venv:
	rm -rf $(VENV)
