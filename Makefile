# kinema: `make demo` sets up and runs the main job, `make test` runs the tests (what CI runs).
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PROMPT ?= a red circle moving right on a blue background
SOURCES := pyproject.toml $(wildcard kinema/*.py kinema/world/*.py models/*.py pipelines/*.py)

.PHONY: setup demo test test-all bench clean

# A virtual environment with kinema installed (editable) and the test tools. PyTorch's CPU
# build is installed first where no torch is present: a bare `torch` requirement pulls a
# multi-GB CUDA build.
$(BIN)/.installed: $(SOURCES)
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/python -m pip install -q torch==2.13.0 \
		|| $(BIN)/python -m pip install -q torch --index-url https://download.pytorch.org/whl/cpu
	$(BIN)/python -m pip install -q -e ".[test]"
	touch $@

setup: $(BIN)/.installed

# the default model's 4-step student (`--fast`: it meets the held-out targets, docs/finetune.md); drop it for 25 steps
demo: setup
	$(BIN)/kinema generate "$(PROMPT)" --fast -o clip.mp4 --overwrite

test: setup
	OMP_NUM_THREADS=$${OMP_NUM_THREADS:-2} $(BIN)/pytest -q -p no:cacheprovider --durations=15

test-all: setup
	$(BIN)/pytest -q -p no:cacheprovider -m "slow or not slow"

# Every benchmark at full size -> docs/bench/results.md, results.json, scaling.png (MODEL=DIR: not the shipped one)
bench: setup
	$(BIN)/python scripts/bench_all.py --size full $(if $(MODEL),--model $(MODEL))

clean:
	rm -rf $(VENV) build *.egg-info
