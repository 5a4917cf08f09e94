"""What any input may be: Unicode everywhere, values at the edges of their types, each rule checked in
one place and each failure told apart by its reason, never by its text."""

import json
import logging
import time

import jwt
import pytest

from facade.app import create_app
from facade.settings import Settings
from hubmesh.text.v1 import text_generation_pb2_grpc as pb_grpc
from services.common.errors import ContextLengthExceeded
from services.common.interceptors import MetricsInterceptor
from services.text.servicer import TextGenerationServicer
from tests.fakes import FakeTextBackend, chunk
from tests.unit.text_service_fixture import CATALOG, MODEL, serving

KEY = "contract-key"
AUTH = {"Authorization": f"Bearer {KEY}"}
SECRET = "jwt-secret-for-tests-0123456789abcdef"
ODD_TEXTS = [
    "Zoë Müller", "用户-42", "🦜 parrot \U0001F600", "tab\tnew\nline\r\x00nul\x1b[31m", "e\u0301\u0308\u20dd combining",
    "\u202eright-to-left\u200b", "x" * 20_000,
]


def text_service(backend, interceptors=None):
    servicer = TextGenerationServicer(backend, CATALOG)
    return serving(lambda server: pb_grpc.add_TextGenerationServicer_to_server(servicer, server), interceptors)


def chat(**extra):
    return {"model": MODEL, "messages": [{"role": "user", "content": "Hi"}], **extra}


@pytest.mark.parametrize("user", ODD_TEXTS)
async def test_any_user_reaches_the_service_in_the_request(aiohttp_client, caplog, user):
    backend = FakeTextBackend([chunk(["ok"], ["stop"])])
    async with text_service(backend, [MetricsInterceptor()]) as target:
        client = await aiohttp_client(create_app(Settings(api_keys=(KEY,), text_target=target)))
        with caplog.at_level(logging.INFO, logger="hubmesh.access"):
            for path, body in (("/v1/chat/completions", chat(user=user)),
                               ("/v1/chat/completions", chat(user=user, stream=True)),
                               ("/v1/completions", {"model": MODEL, "prompt": user, "user": user})):
                response = await client.post(path, json=body, headers=AUTH)
                assert response.status == 200, await response.text()
                await response.read()
    served = [r for r in caplog.records if getattr(r, "endpoint", "") in ("Generate", "GenerateStream")]
    assert len(served) == 3
    assert all(r.user == user and r.subject.startswith("key:") for r in served)  # the service's access log


async def test_odd_strings_in_every_text_field_never_500(aiohttp_client):
    backend = FakeTextBackend([chunk(["ok"], ["stop"])])
    async with text_service(backend) as target:
        client = await aiohttp_client(create_app(Settings(api_keys=(KEY,), text_target=target)))
        for text in ODD_TEXTS:
            for body in (
                chat(messages=[{"role": "user", "content": text, "name": text}], stop=[text], user=text),
                chat(model=text), {"model": MODEL, "prompt": [text, text], "stop": text, "echo": True},
                chat(tools=[{"type": "function", "function": {"name": text, "description": text}}]),
                chat(response_format={"type": "json_schema", "json_schema": {"name": text, "schema": {"title": text}}}),
                chat(logit_bias={text: 1}),
            ):
                path = "/v1/completions" if "prompt" in body else "/v1/chat/completions"
                response = await client.post(path, json=body, headers=AUTH)
                payload = await response.json()
                assert response.status < 500, (body, payload)
                if response.status >= 400:
                    assert set(payload["error"]) == {"message", "type", "param", "code"}


@pytest.mark.parametrize(
    "extra, param",
    [
        ({"temperature": 5}, "temperature"),  # the service's rule, its field violation
        ({"temperature": 1e300}, "temperature"),
        ({"top_p": 0}, "top_p"),
        ({"n": 0}, "n"),
        ({"n": 129}, "n"),
        ({"n": 2**40}, "n"),  # does not fit the proto's uint32: the façade's type check
        ({"max_tokens": -1}, "max_tokens"),
        ({"max_tokens": 0}, "max_tokens"),
        ({"max_completion_tokens": 10**6}, "max_tokens"),
        ({"seed": 2**70}, "seed"),
        ({"stop": ["a", "b", "c", "d", "e"]}, "stop"),
        ({"stop": [""]}, "stop"),
        ({"logit_bias": {"42": 150}}, "logit_bias"),
        ({"logit_bias": {"99999999999": 1}}, "logit_bias"),
        ({"logit_bias": {"-1": 1}}, "logit_bias"),
        ({"messages": []}, "messages"),
        ({"logprobs": True, "top_logprobs": 21}, "top_logprobs"),  # the service's rule
        ({"logprobs": True, "top_logprobs": 2**32}, "top_logprobs"),  # the façade's type check
        ({"top_logprobs": 1}, "top_logprobs"),  # without logprobs: true
        ({"tools": [{"type": "function", "function": {"name": "bad name!"}}]}, "tools[0].function.name"),
    ],
)
async def test_limits_are_400_naming_the_param(aiohttp_client, extra, param):
    async with text_service(FakeTextBackend([chunk(["ok"], ["stop"])])) as target:
        client = await aiohttp_client(create_app(Settings(api_keys=(KEY,), text_target=target)))
        response = await client.post("/v1/chat/completions", json=chat(**extra), headers=AUTH)
        payload = await response.json()
        assert response.status == 400, payload
        assert payload["error"]["param"] == param and payload["error"]["type"] == "invalid_request_error"


async def test_failure_reason_decides_the_openai_error(aiohttp_client):
    backend = FakeTextBackend(error=ContextLengthExceeded("Prompt length of 9000 tokens is longer than 8192"))
    async with text_service(backend) as target:
        client = await aiohttp_client(create_app(Settings(api_keys=(KEY,), text_target=target)))
        for body, path, param in ((chat(), "/v1/chat/completions", "messages"),
                                  ({"model": MODEL, "prompt": "x"}, "/v1/completions", "prompt")):
            response = await client.post(path, json=body, headers=AUTH)
            assert response.status == 400
            assert (await response.json())["error"] == {
                "message": "Prompt length of 9000 tokens is longer than 8192", "type": "invalid_request_error",
                "param": param, "code": "context_length_exceeded",
            }


async def test_streamed_completions_echo_the_prompt(aiohttp_client):
    backend = FakeTextBackend([chunk([" a", " b"]), chunk(["!", ""], ["stop", "length"], n_out=[1, 0])])
    async with text_service(backend) as target:
        client = await aiohttp_client(create_app(Settings(api_keys=(KEY,), text_target=target)))
        body = {"model": MODEL, "prompt": ["One", "Two"], "n": 2, "echo": True}
        unary = await (await client.post("/v1/completions", json=body, headers=AUTH)).json()
        response = await client.post("/v1/completions", json={**body, "stream": True}, headers=AUTH)
        events = [e.removeprefix("data: ") for e in (await response.text()).split("\n\n") if e]
        assert events[-1] == "[DONE]"
        texts: dict[int, str] = {}
        for event in events[:-1]:
            for choice in json.loads(event)["choices"]:
                texts[choice["index"]] = texts.get(choice["index"], "") + choice["text"]
        assert texts == {c["index"]: c["text"] for c in unary["choices"]}
        assert texts == {0: "One a!", 1: "One b", 2: "Two a!", 3: "Two b"}


def _token(scope: str) -> str:
    return jwt.encode({"sub": "idp-user", "scope": scope, "exp": int(time.time()) + 600}, SECRET, algorithm="HS256")


async def test_identity_provider_tokens_get_the_configured_default_scopes(aiohttp_client):
    async with text_service(FakeTextBackend([chunk(["ok"], ["stop"])])) as target:
        strict = await aiohttp_client(create_app(Settings(jwt_secret=SECRET, text_target=target)))
        idp = {"Authorization": f"Bearer {_token('openid profile email')}"}
        refused = await strict.post("/v1/chat/completions", json=chat(), headers=idp)
        assert refused.status == 403
        assert "HUBMESH_JWT_DEFAULT_SCOPES" in (await refused.json())["error"]["message"]

        granting = await aiohttp_client(create_app(Settings(
            jwt_secret=SECRET, text_target=target, jwt_default_scopes=("chat", "models"),
        )))
        assert (await granting.post("/v1/chat/completions", json=chat(), headers=idp)).status == 200
        assert (await granting.post("/v1/embeddings", json={"model": "m", "input": "x"}, headers=idp)).status == 403
        # a token that names hubmesh's scopes keeps exactly those
        own = {"Authorization": f"Bearer {_token('openid hubmesh:embeddings')}"}
        assert (await granting.post("/v1/chat/completions", json=chat(), headers=own)).status == 403
