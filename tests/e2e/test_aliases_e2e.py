"""A model alias whose first model is taken away keeps answering from the second, with no error the
client sees (real servers): the text service in front of two Tritons, one serving the engine simulator
(`hubmesh/sim-llama-3-8b`, Llama-3-8B's timing: the large model) and one serving SmolLM2 (the small
one); the alias `chat-default` names them in that order. The large model's only Triton is killed: the
next requests, unary and streamed, are served by SmolLM2 (the response's model and x-hubmesh-model
say so); once that Triton is back, the alias goes to the large model again."""

from __future__ import annotations

import json

import pytest
from openai import OpenAI

from local.prometheus import metric_sum
from local.stack import MODALITIES, ROOT, LocalStack, StackConfig
from tests.e2e.conftest import wait_for

pytestmark = pytest.mark.e2e

KEY = "aliases-e2e-key"
ALIAS = "chat-default"
LARGE = "hubmesh/sim-llama-3-8b"
SMALL = "HuggingFaceTB/SmolLM2-135M-Instruct"
TEMPLATES = ROOT / "services" / "text" / "templates"
CATALOG = f"""
[[models]]
id = "{LARGE}"
triton_model = "sim"
chat_template = "{TEMPLATES / 'plain.jinja'}"
context_length = 8192
owned_by = "hubmesh"
created = 1796083200

[[models]]
id = "{SMALL}"
triton_model = "smollm2"
chat_template = "{TEMPLATES / 'smollm2-chatml.jinja'}"
tool_chat_template = "{TEMPLATES / 'smollm2-chatml-tools.jinja'}"
context_length = 8192
owned_by = "HuggingFaceTB"
created = 1730419200
"""
MESSAGES = [{"role": "user", "content": "What is the capital of France?"}]


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("aliases")
    catalog = run_dir / "catalog.toml"
    catalog.write_text(CATALOG)
    config = StackConfig.with_free_ports(api_key=KEY, run_dir=run_dir, replicas={"text": 2},
                                         models={"text": ("sim", "smollm2")})
    config.extra_env.update({
        "HUBMESH_TEXT_CATALOG": str(catalog),
        "HUBMESH_TEXT_TRITON_PROBE_INTERVAL_S": "0.5",
        "HUBMESH_MODEL_ALIASES": json.dumps({ALIAS: [LARGE, SMALL]}),
        "HUBMESH_MODEL_ALIAS_COOLDOWN_S": "1",
    })
    stack = LocalStack(config, modalities=tuple(m for m in MODALITIES if m.name == "text"))
    # replica 0 holds the large model only, replica 1 the small one: killing replica 0 takes the large away
    stack.replicas["text"][0].models = ["sim"]
    stack.replicas["text"][1].models = ["smollm2"]
    stack.start()
    try:
        yield stack
    finally:
        stack.stop()


def served(client: OpenAI) -> str:
    """The model that served one unary chat request to the alias (the body and the header agree)."""
    raw = client.chat.completions.with_raw_response.create(model=ALIAS, messages=MESSAGES, max_tokens=8,
                                                           temperature=0)
    reply = raw.parse()
    assert raw.headers["x-hubmesh-model"] == reply.model
    assert reply.choices[0].message.content
    return reply.model


def fallbacks(stack: LocalStack) -> float:
    return metric_sum(f"{stack.config.base_url.removesuffix('/v1')}/metrics", "hubmesh_alias_fallbacks_total",
                          alias=ALIAS, model=LARGE)


def test_an_alias_keeps_answering_when_its_first_model_is_taken_away(stack):
    client = OpenAI(base_url=stack.config.base_url, api_key=KEY, max_retries=0, timeout=120)
    listed = {m.id: m for m in client.models.list()}
    assert {ALIAS, LARGE, SMALL} <= set(listed) and listed[ALIAS].owned_by == "hubmesh-alias"
    assert served(client) == LARGE
    assert fallbacks(stack) == 0

    stack.crash_triton("text", 0)  # the large model's only replica: no waiting for anyone to notice

    assert [served(client) for _ in range(3)] == [SMALL] * 3
    chunks = list(client.chat.completions.create(model=ALIAS, messages=MESSAGES, max_tokens=8, temperature=0,
                                                 stream=True))
    assert {c.model for c in chunks} == {SMALL}
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    completion = client.completions.create(model=ALIAS, prompt="Say this is a test", max_tokens=8)
    assert completion.model == SMALL and completion.choices[0].text
    response = client.responses.create(model=ALIAS, input="Hi", max_output_tokens=16)
    assert response.model == SMALL and response.output_text
    assert fallbacks(stack) >= 1

    stack.restart_triton("text", 0)  # back (ready when this returns): the alias goes to the large model again
    wait_for(lambda: served(client) == LARGE, timeout_s=60, what="the alias served by its first model again")
