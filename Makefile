# The README's commands. `make demo` and `make test` each set up .venv on a fresh machine first.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# The CPU build of torch; on this project's machines it installs from local disk.
TORCH_SPEC ?= torch==2.13.0
EXTRAS ?= dev

.PHONY: demo test test-fast bench clean-venv

$(VENV)/.installed-$(EXTRAS): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check "$(TORCH_SPEC)"
	# visdom ships only a setup.py that imports pkg_resources (gone from setuptools 81)
	$(PY) -m pip install --quiet --disable-pip-version-check "setuptools<81" wheel
	$(PY) -m pip install --quiet --disable-pip-version-check --no-build-isolation "visdom>=0.2.4"
	$(PY) -m pip install --quiet --disable-pip-version-check -e ".[$(EXTRAS)]"
	touch $@

demo: $(VENV)/.installed-$(EXTRAS)
	$(VENV)/bin/facerec demo

test: $(VENV)/.installed-$(EXTRAS)
	$(PY) -m pytest -q

test-fast: $(VENV)/.installed-$(EXTRAS)
	$(PY) -m pytest -q -m "not slow"

bench: $(VENV)/.installed-$(EXTRAS)
	for b in benchmarks/*.py; do [ -e "$$b" ] || continue; $(PY) $$b || exit 1; done

clean-venv:
	rm -rf $(VENV)
