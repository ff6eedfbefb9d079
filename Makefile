# Two entry points; both set up a fresh machine first (Python 3.11 venv in .venv).
PY := .venv/bin/python
SPACE ?= spaces/flood.yaml

.PHONY: setup run test
setup: .venv/.installed

.venv/.installed: pyproject.toml
	python3.11 -m venv .venv
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test]'
	touch $@

run: setup
	$(PY) -m search run $(SPACE) $(ARGS)

test: setup
	$(PY) -m pytest -q --durations=15 $(ARGS)
