# Two commands: `make demo` and `make test`.  Both create .venv if it is missing.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
# torch is pinned: an unpinned torch pulls a multi-GB CUDA build.
TORCH  := torch==2.13.0
export BITNET_EDU_FAST ?= 1

.PHONY: demo test test-unit test-avx2 test-arm64 exercises bench clean lab screenshots

# An AVX2-only laptop CPU (no AVX-512, no VNNI), through Numba's own target switch: the code
# LLVM emits for it runs on this machine too, so the portable kernel paths are tested here.
AVX2_FEATURES := +64bit,+avx,+avx2,+fma,+f16c,+bmi,+bmi2,+popcnt,+sse4.2,+sse4.1,+ssse3,+sse3,+sse2,+sse,+cx16,+movbe,+lzcnt
AVX2_ENV := NUMBA_CPU_NAME=haswell NUMBA_CPU_FEATURES=$(AVX2_FEATURES) BITNET_EDU_CACHE_DIR=$(CURDIR)/.numba-avx2
KERNEL_TESTS := tests/test_kernels.py tests/test_kernels_vnni.py tests/test_head_kernel.py \
	tests/test_kernel_interface.py tests/test_selfcheck.py tests/test_model.py \
	tests/test_family_embedding.py

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
	$(AVX2_ENV) $(PY) -m pytest -q -p no:cacheprovider $(KERNEL_TESTS)
	$(PY) -m pytest -q -p bitnet_edu.nbval_plugin --nbval-lax --nbval-current-env \
		--nbval-cell-timeout=600 --nbval-sanitize-with tests/nbval_sanitize.cfg \
		notebooks solutions exercises

test-unit: $(VENV)/.test-installed
	$(PY) -m pytest -q tests

# the kernel, head and model tests compiled for an AVX2-only CPU (part of `make test`)
test-avx2: $(VENV)/.test-installed
	$(AVX2_ENV) $(PY) -m pytest -q -p no:cacheprovider $(KERNEL_TESTS)

# the kernel, head and self-check tests and a greedy run of the default model (compared with
# this machine's) on an emulated aarch64 CPU: qemu user mode, with a Python from Debian's arm64
# packages and PyPI's aarch64 wheels that scripts/arm64_env.sh sets up in .arm64/ (needs root
# once, for dpkg --add-architecture arm64).  Not part of `make test`: 20-25 min on 2 cores.
ARM64_ENV := BITNET_EDU_CACHE_DIR=$(CURDIR)/.arm64/numba-cache
test-arm64: $(VENV)/.test-installed
	HOST_PY=$(PY) scripts/arm64_env.sh
	$(ARM64_ENV) .arm64/python -m bitnet_edu.kernels
	$(ARM64_ENV) .arm64/python -m pytest -q -p no:cacheprovider tests/test_kernels.py \
		tests/test_head_kernel.py tests/test_kernel_interface.py tests/test_selfcheck.py
	BITNET_EDU_ARM64_PYTHON=$(CURDIR)/.arm64/python \
		BITNET_EDU_ARM64_CACHE=$(CURDIR)/.arm64/numba-cache \
		$(PY) -m pytest -q -p no:cacheprovider tests/test_arm64_greedy.py

exercises: $(VENV)/.test-installed
	$(PY) -m bitnet_edu.make_exercises

bench: $(VENV)/.demo-installed
	$(PY) -m bitnet_edu.bench kernels

lab: $(VENV)/.test-installed
	$(VENV)/bin/jupyter lab notebooks

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis .numba-avx2

# README screenshots of every widget, rendered by Chromium in JupyterLab
screenshots: $(VENV)/.test-installed
	BITNET_EDU_SCREENSHOTS=notebooks/img $(PY) -m pytest -q tests/test_browser.py
