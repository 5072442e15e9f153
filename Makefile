# The two commands of the README:
#   make demo   set up (first time) and run the main job on the embedded default
#   make test   set up (first time) and run the whole test suite
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: demo test venv clean

venv: $(STAMP)

# torch is installed first and pinned: an unpinned torch would pull CUDA packages.
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e ".[test]"
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/modiff demo --kind lung --out demo-out --overwrite

test: $(STAMP)
	$(PY) -m pytest -q

clean:
	rm -rf $(VENV) demo-out
