# The two commands (see README):
#   make demo   set everything up, then run the built-in demo through the daemon
#   make test   set everything up, then run the whole test suite
# Other targets: make setup | proto | bench | report-check | clean

PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
# torch 2.13.0 is a CPU wheel on Linux machines of this kind; an unpinned torch pulls GBs of CUDA.
TORCH  ?= torch==2.13.0
UNAME  := $(shell uname -s)
# MLX's Linux wheel links a reference BLAS (~30x slower matmuls); preload OpenBLAS (DESIGN.md §2).
OPENBLAS := /usr/lib/$(shell uname -m)-linux-gnu/openblas-pthread/libblas.so.3
PRELOAD   = $(if $(wildcard $(OPENBLAS)),LD_PRELOAD=$(OPENBLAS),)

.PHONY: setup demo test proto bench report-check clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	@if [ "$(UNAME)" = "Linux" ] && [ ! -e "$(OPENBLAS)" ]; then \
	  if command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ]; then \
	    echo "installing OpenBLAS for MLX (libopenblas0-pthread)"; \
	    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq libopenblas0-pthread >/dev/null) \
	      || echo "warning: could not install libopenblas0-pthread; MLX will be slow on this CPU"; \
	  else echo "note: install libopenblas0-pthread (or another OpenBLAS) for fast MLX on this CPU"; fi; \
	fi
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH)"
	$(PY) -m pip install -q -e ".[all,dev]"
	@touch $@

demo: setup
	$(VENV)/bin/tunerctl demo

test: setup
	$(PRELOAD) $(PY) -m pytest -q -n 2 --dist loadfile   # two workers, one test file each at a time

proto: setup
	$(PY) proto/generate.py

bench: setup
	$(PRELOAD) $(PY) bench/bench_mlx.py
	$(PY) bench/bench_torch.py

# Not in CI: a real job's HTML report, screenshotted with headless Chromium into docs/report.png.
report-check: setup
	$(PRELOAD) PYTHONPATH=daemon:client $(PY) bench/report_check.py docs

clean:
	rm -rf $(VENV) build *.egg-info
