# Two commands do all the set-up on a fresh machine:  make demo  and  make test.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# Build llama.cpp for any x86-64 (same kernels, cacheable wheel); see ../shared/FINDINGS.md.
export CMAKE_ARGS ?= -DGGML_NATIVE=OFF
export HF_HUB_OFFLINE ?= 1

.PHONY: install demo test lint clean llamafactory llama-server

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

# torch first, pinned: anything that asks for a newer torch would pull a multi-GB CUDA build.
$(VENV)/.installed: $(BIN)/python pyproject.toml constraints.txt
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -c constraints.txt -e '.[dev]'
	PYTHON=$(BIN)/python bash scripts/setup-wordnet.sh || echo "WordNet not installed: METEOR will be reported as unavailable"
	# llama.cpp's converter from the installed llama-cpp-python's sdist, and the Qwen2 tokenizer the tiny models use
	$(BIN)/python -c "from mulcot.models.tiny import tokenizer_dir; tokenizer_dir()"
	touch $@

install: $(VENV)/.installed

demo: install
	$(BIN)/mulcot demo

test: install
	$(BIN)/python -m pytest -q

# LLaMA-Factory in its own venv, for tests/test_llamafactory.py (opt-in: ~2.3 GB, ~5 min, ~120 packages).
# 0.9.3: 0.9.4+ import torchaudio, which has no build for torch 2.13; 0.9.3 pins numpy<2, hence pyarrow<21.
LF_VENV ?= .venv-llamafactory
$(LF_VENV)/.installed: constraints.txt
	$(PYTHON) -m venv $(LF_VENV)
	$(LF_VENV)/bin/pip install -q --upgrade pip
	$(LF_VENV)/bin/pip install -q -c constraints.txt torch==2.13.0 llamafactory==0.9.3 'pyarrow<21'
	touch $@

llamafactory: $(LF_VENV)/.installed

# llama.cpp's llama-server in $(VENV)/bin, for bench/generation_throughput.py (opt-in: cmake, ~8 min on 2 cores).
llama-server: install
	PYTHON=$(BIN)/python bash scripts/build-llama-server.sh

lint: install
	$(BIN)/ruff check mulcot tests bench scripts

clean:
	rm -rf $(VENV) $(LF_VENV) .pytest_cache mulcot-demo.db mulcot-demo-runs
