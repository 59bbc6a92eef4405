# Set-up is two commands: `make demo` and `make test`. Both create .venv themselves.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
LINTED := ifa_jax tests experiments tools

.PHONY: demo test test-fast test-min lint format docs clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e ".[dev]"
	touch $(STAMP)

demo: $(STAMP)
	$(PY) -m experiments.demo

test: $(STAMP)
	$(PY) -m pytest -q tests README.md docs

# The suite without the slow end-to-end runs (CI runs everything, once).
test-fast: $(STAMP)
	$(PY) -m pytest -q -m "not slow" tests README.md docs

# The core tests on the lowest versions pyproject.toml promises, in their own venv, and
# against the built wheel, not the source tree: ifa_jax is built into a wheel from a copy
# of what the sdist holds (a build/ folder in the tree would leak old modules into it),
# installed (not editable), and the tests run from a copy of tests/ in $(MIN_BUILD)/suite,
# so `import ifa_jax` finds only the wheel; IFA_JAX_TEST_INSTALLED makes tests/conftest.py
# stop when it does not. The wheel is built again on every run (seconds).
MIN_VENV := .venv-min
MIN_BUILD := $(MIN_VENV)/build
# Those that lean most on jax's and flax's APIs: every entry point under a user's jit,
# Flax's method interception, the guided backward pass (a jaxpr interpreter), the
# analysis pass (sharded on 8 host devices too), its inputs and their prefetching, the
# runner's fast tests, and the library with only its own dependencies (test_packaging).
MIN_TESTS := tests/test_user_jit.py tests/test_probe.py tests/test_guided.py \
	tests/test_analysis.py tests/test_analyze_inputs.py tests/test_runner.py \
	tests/test_packaging.py tests/test_prefetch.py
$(MIN_VENV)/.installed: pyproject.toml .ci/min-versions.txt
	$(PYTHON) -m venv $(MIN_VENV)
	$(MIN_VENV)/bin/python -m pip install -q --upgrade pip
	touch $@

test-min: $(MIN_VENV)/.installed
	rm -rf $(MIN_BUILD)
	mkdir -p $(MIN_BUILD)/project $(MIN_BUILD)/suite/.ci
	cp -R pyproject.toml README.md LICENSE ifa_jax $(MIN_BUILD)/project/
	$(MIN_VENV)/bin/python -m pip wheel -q --no-deps -w $(MIN_BUILD)/dist $(MIN_BUILD)/project
	$(MIN_VENV)/bin/python -m pip install -q -c .ci/min-versions.txt \
		"$$(ls $(MIN_BUILD)/dist/ifa_jax-*.whl)[runner,equinox,haiku]" pytest
	$(MIN_VENV)/bin/python -m pip install -q --no-deps --force-reinstall $(MIN_BUILD)/dist/ifa_jax-*.whl
	cp -R pyproject.toml tests experiments $(MIN_BUILD)/suite/
	cp .ci/min-versions.txt $(MIN_BUILD)/suite/.ci/
	cd $(MIN_BUILD)/suite && IFA_JAX_TEST_INSTALLED=1 ../../bin/python -m pytest -q \
		-p no:cacheprovider -m "not slow" $(MIN_TESTS)

lint: $(STAMP)
	$(PY) -m ruff format --check $(LINTED)
	$(PY) -m ruff check $(LINTED)
	$(VENV)/bin/pyright ifa_jax
	$(PY) tools/import_graph.py

# The methods gallery is drawn again when the package or the script changes (a minute).
GALLERY := docs/generated/gallery.png
$(GALLERY): $(STAMP) tools/gallery.py $(shell find ifa_jax -name '*.py')
	$(PY) tools/gallery.py --out $@

# The documentation site, in site/: the method table is written from the registry, every
# public name must be documented, and a broken link or reference fails the build (no -q:
# mkdocs -q drops the warnings before --strict counts them, and the build passes).
docs: $(STAMP) $(GALLERY)
	$(PY) tools/method_table.py
	$(PY) tools/api_coverage.py
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict

format: $(STAMP)
	$(PY) -m ruff format $(LINTED)
	$(PY) -m ruff check --fix $(LINTED)

clean:
	rm -rf $(VENV) $(MIN_VENV) runs site
