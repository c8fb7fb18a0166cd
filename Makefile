# The two entry points of the README: `make demo` and `make test`.
# Each creates .venv/ in the repo root and installs everything itself.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
I2D_VENV := $(VENV)/img2dataset
STAMP := $(VENV)/.cerebro-installed
I2D_STAMP := $(I2D_VENV)/.installed
export PIP_DISABLE_PIP_VERSION_CHECK := 1
# pip's warnings about absent local mirror folders are noise; keep real errors
PIPQ := 2> >(grep -v "is ignored: it is neither a file nor a directory" >&2)

.PHONY: demo test install clean

# -qq for the editable install: pip >= 24 shows setuptools' notice about editable installs
# ("BuildBackendWarning: Editable installation") as a warning under -q; errors still show
$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade "pip>=24" $(PIPQ)
	$(PY) -m pip install -qq -e '.[test]' $(PIPQ)
	touch $@

$(I2D_STAMP): requirements-img2dataset.txt | $(STAMP)
	test -x $(I2D_VENV)/bin/python || $(PYTHON) -m venv $(I2D_VENV)
	$(I2D_VENV)/bin/python -m pip install -q --upgrade "pip>=24" $(PIPQ)
	$(I2D_VENV)/bin/python -m pip install -q -r requirements-img2dataset.txt $(PIPQ)
	touch $@

install: $(STAMP) $(I2D_STAMP)

demo: install
	$(VENV)/bin/cerebro demo --config configs/demo.yaml

test: install
	bash scripts/install-system-deps.sh
	PY=$(PY) bash scripts/run-tests.sh $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) .cerebro
