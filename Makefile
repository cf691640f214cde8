# Two entry points do all set-up on a fresh machine: `make demo` (the main job) and `make test`.
# The virtual environment is rebuilt only when requirements.txt, pyproject.toml or setup.py change.
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test install clean

$(STAMP): requirements.txt pyproject.toml setup.py
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q -r requirements.txt
	$(PY) -m pip install -q --no-deps --no-build-isolation -e .
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(PY) -m megatron_omni.cli.demo $(ARGS)

test: $(STAMP)
	$(PY) -m ruff check .
	$(PY) -m pytest -q tests $(ARGS)

clean:
	rm -rf $(VENV) runs outputs
