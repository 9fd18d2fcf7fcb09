# Two commands: `make demo` and `make test`.  Both create .venv if it is missing.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
# torch is pinned: an unpinned torch pulls a multi-GB CUDA build.
TORCH  := torch==2.13.0
export BITNET_EDU_FAST ?= 1

.PHONY: demo test test-unit exercises bench clean lab screenshots

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip

$(VENV)/.demo-installed: pyproject.toml | $(PY)
	$(PY) -m pip install -q -e '.[torch]' '$(TORCH)'
	touch $@

$(VENV)/.test-installed: pyproject.toml | $(PY)
	$(PY) -m pip install -q -e '.[test,torch,train,notebook]' '$(TORCH)'
	touch $@ $(VENV)/.demo-installed

demo: $(VENV)/.demo-installed
	$(PY) -m bitnet_edu.demo

test: $(VENV)/.test-installed
	$(PY) -m bitnet_edu.make_exercises --check
	$(PY) -m pytest -q tests
	$(PY) -m pytest -q -p bitnet_edu.nbval_plugin --nbval-lax --nbval-current-env \
		--nbval-cell-timeout=600 --nbval-sanitize-with tests/nbval_sanitize.cfg \
		notebooks solutions exercises

test-unit: $(VENV)/.test-installed
	$(PY) -m pytest -q tests

exercises: $(VENV)/.test-installed
	$(PY) -m bitnet_edu.make_exercises

bench: $(VENV)/.demo-installed
	$(PY) -m bitnet_edu.bench kernels

lab: $(VENV)/.test-installed
	$(VENV)/bin/jupyter lab notebooks

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis

# README screenshots of every widget, rendered by Chromium in JupyterLab
screenshots: $(VENV)/.test-installed
	BITNET_EDU_SCREENSHOTS=notebooks/img $(PY) -m pytest -q tests/test_browser.py
