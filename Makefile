# make demo   load the pretrained Transformer, translate, fine-tune a few steps, log to W&B
# make test   the test suite
# Both create .venv, install torch 2.13.0 (the CPU build) first, then zoo with its dev extras.
VENV   ?= .venv
PYTHON ?= python3
PY      = $(VENV)/bin/python
TCMALLOC := $(firstword $(wildcard /usr/lib/x86_64-linux-gnu/libtcmalloc_minimal.so.4 /usr/lib/libtcmalloc_minimal.so.4))

.PHONY: install demo test bench clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e ".[dev]"
	touch $@

demo: install
	LD_PRELOAD=$(TCMALLOC) $(PY) scripts/demo.py

test: install
	HF_HUB_OFFLINE=1 WANDB_MODE=offline $(PY) -m pytest -q

# the benchmark suite (benchmarks/__main__.py): peers (the bench extra), attention, MIDI, start-up; writes RESULTS.md
bench: install $(VENV)/.bench-installed
	LD_PRELOAD=$(TCMALLOC) $(PY) -m benchmarks

$(VENV)/.bench-installed: pyproject.toml
	$(PY) -m pip install -q -e ".[dev,bench]"  # transformers, x-transformers; torch already satisfies them
	touch $@

clean:
	rm -rf $(VENV) runs wandb lightning_logs .pytest_cache
