"""Model aliases with fallback chains (facade/aliases.py) through the façade, in front of real servicers
whose scripted backends answer per model: the chain's order, fallback before the first token only,
the serving model in the body and the x-hubmesh-model header, limits and the ledger counting the
serving model, /v1/models listing the aliases, the credential's allow-list, and the settings' checks."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from pathlib import Path

import jwt
import pytest

from facade.aliases import MODEL_HEADER, OWNED_BY, Aliases, aliases_from
from facade.app import create_app
from facade.limits.middleware import METERING
from facade.limits.policy import Limits, token_specs
from facade.settings import Settings
from services.common.errors import AtCapacity, BackendUnavailable, InvalidArgument
from services.common.settings import SettingsError
from services.images.storage import LocalDirectoryStore
from services.text.catalog import load_catalog
from services.text.servicer import TextGenerationServicer
from tests.fakes import FakeEmbeddingsBackend, FakeImagesBackend, FakeTextBackend, chunk
from tests.unit import test_embeddings, test_images
from tests.unit.text_service_fixture import serving

SECRET = "s3cret-for-alias-tests-0123456789abcdef"
LARGE = "hubmesh/sim-llama-3-8b"  # the catalogue's triton model "sim"
SMALL = "HuggingFaceTB/SmolLM2-135M-Instruct"  # "smollm2"
MISSING = "nobody/not-in-any-catalogue"
ALIASES = {
    "chat-default": [LARGE, SMALL],
    "chat-missing-first": [MISSING, SMALL],
    "embed-default": [MISSING, test_embeddings.MODEL],
    "draw-default": [MISSING, test_images.MODEL],
}
CATALOG = load_catalog(Path(__file__).resolve().parents[2] / "services" / "text" / "catalog.bench.toml")


def bearer(sub: str = "erin", scope: str = "chat completions responses embeddings images models", **claims) -> dict:
    now = int(time.time())
    body = {"sub": sub, "scope": scope, "iat": now, "exp": now + 24 * 3600, **claims}  # AUTH is made at import
    return {"Authorization": "Bearer " + jwt.encode(body, SECRET, algorithm="HS256")}


AUTH = bearer()


class ByModel:
    """A text backend with one scripted FakeTextBackend per Triton model."""

    def __init__(self, **backends: FakeTextBackend) -> None:
        self.backends = backends

    async def is_ready(self, model: str) -> bool:
        return True

    def generate(self, model, prompt, sampling, stream, resume=None):
        return self.backends[model].generate(model, prompt, sampling, stream)

    async def close(self) -> None:
        pass


class FailsAfter(FakeTextBackend):
    """Writes its chunks, then fails: a model lost after the stream started."""

    async def generate(self, model, prompt, sampling, stream, resume=None):
        self.calls.append({"model": model})
        for c in self.chunks:
            yield c
        raise BackendUnavailable("the replica went away")


def answer(text: str, n_in: int = 5) -> FakeTextBackend:
    return FakeTextBackend([chunk([text], n_in=n_in, n_out=[1]), chunk([""], ["stop"], n_in=n_in, n_out=[0])])


@pytest.fixture
async def app_for(aiohttp_client, tmp_path):
    """A façade with ALIASES in front of a text service whose `sim` and `smollm2` are the given backends
    (and real embeddings and images servicers with fakes); `settings` over the defaults."""
    async def start(large: FakeTextBackend, small: FakeTextBackend, **settings):
        backend = ByModel(sim=large, smollm2=small)
        servicer = TextGenerationServicer(backend, CATALOG)
        from hubmesh.text.v1 import text_generation_pb2_grpc as pb_grpc

        text = await stack.enter(serving(lambda server: pb_grpc.add_TextGenerationServicer_to_server(servicer, server)))
        emb = await stack.enter(test_embeddings.embeddings_service(FakeEmbeddingsBackend()))
        img = await stack.enter(test_images.images_service(FakeImagesBackend(), LocalDirectoryStore(tmp_path / "img")))
        config = {"jwt_secret": SECRET, "text_target": text, "embeddings_target": emb, "images_target": img,
                  "database_url": f"sqlite:///{tmp_path / 'hub.db'}", "model_aliases": ALIASES, **settings}
        return await aiohttp_client(create_app(Settings(**config)))

    class Contexts:
        def __init__(self) -> None:
            self.open: list = []

        async def enter(self, context):
            self.open.append(context)
            return await context.__aenter__()

    stack = Contexts()
    yield start
    for context in reversed(stack.open):
        await context.__aexit__(None, None, None)


def chat(model: str = "chat-default", **extra) -> dict:
    return {"model": model, "messages": [{"role": "user", "content": "Hi"}], **extra}


def events(raw: str) -> list[dict]:
    return [json.loads(line[6:]) for line in raw.splitlines() if line.startswith("data: {")]


# -- the chain's order, and the serving model in body and header ---------------------------------------


async def test_the_first_model_of_the_chain_serves_when_it_can(app_for):
    large, small = answer("big"), answer("small")
    client = await app_for(large, small)
    response = await client.post("/v1/chat/completions", json=chat(), headers=AUTH)
    body = await response.json()
    assert response.status == 200, body
    assert body["model"] == LARGE and response.headers[MODEL_HEADER] == LARGE
    assert body["choices"][0]["message"]["content"] == "big"
    assert len(large.calls) == 1 and small.calls == []


@pytest.mark.parametrize("error", [AtCapacity("busy"), BackendUnavailable("no replica has it ready")],
                         ids=["at_capacity", "backend_unavailable"])
async def test_a_refused_model_moves_the_request_to_the_next(app_for, error):
    large, small = FakeTextBackend(error=error), answer("small")
    client = await app_for(large, small, model_alias_cooldown_s=3600)
    response = await client.post("/v1/chat/completions", json=chat(), headers=AUTH)
    body = await response.json()
    assert response.status == 200, body
    assert body["model"] == SMALL and response.headers[MODEL_HEADER] == SMALL
    assert body["choices"][0]["message"]["content"] == "small"

    # streamed: the fallback happens before the first byte; every chunk names the serving model
    response = await client.post("/v1/chat/completions", json=chat(stream=True), headers=AUTH)
    assert response.status == 200 and response.headers[MODEL_HEADER] == SMALL
    chunks = events(await response.text())
    assert {c["model"] for c in chunks} == {SMALL}
    assert "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks) == "small"
    # refused once, the large model is skipped while it cools down: asked once, by the first request
    assert len(large.calls) == 1 and len(small.calls) == 2


async def test_a_model_missing_from_the_catalogues_is_passed_over(app_for):
    client = await app_for(answer("big"), answer("small"))
    response = await client.post("/v1/chat/completions", json=chat("chat-missing-first"), headers=AUTH)
    assert response.status == 200 and (await response.json())["model"] == SMALL


async def test_with_no_cooldown_the_first_model_is_asked_again(app_for):
    large, small = FakeTextBackend(error=AtCapacity("busy")), answer("small")
    client = await app_for(large, small, model_alias_cooldown_s=0)
    for _ in range(2):
        assert (await client.post("/v1/chat/completions", json=chat(), headers=AUTH)).status == 200
    assert len(large.calls) == 2 and len(small.calls) == 2


async def test_the_last_model_is_always_tried_and_its_error_is_the_answer(app_for):
    large, small = FakeTextBackend(error=AtCapacity("busy")), FakeTextBackend(error=AtCapacity("busy too"))
    client = await app_for(large, small, model_alias_cooldown_s=3600)
    for _ in range(2):
        response = await client.post("/v1/chat/completions", json=chat(), headers=AUTH)
        error = (await response.json())["error"]
        assert response.status == 429 and (error["type"], error["message"]) == ("rate_limit_error", "busy too")
        assert MODEL_HEADER not in response.headers
    assert len(large.calls) == 1 and len(small.calls) == 2  # the large one cools down; the last never does


async def test_no_fallback_once_the_stream_has_started(app_for):
    large, small = FailsAfter([chunk(["big"], n_out=[1])]), answer("small")
    client = await app_for(large, small)
    response = await client.post("/v1/chat/completions", json=chat(stream=True), headers=AUTH)
    assert response.status == 200 and response.headers[MODEL_HEADER] == LARGE
    raw = await response.text()
    chunks = events(raw)
    assert [c["choices"][0]["delta"].get("content") for c in chunks if c.get("choices")] == ["", "big"]
    assert any("error" in c for c in chunks)  # the failure in band: the status line is gone
    assert small.calls == []


async def test_errors_of_the_request_itself_never_move_it(app_for):
    large, small = FakeTextBackend(error=InvalidArgument("Prompt too long", "messages")), answer("small")
    client = await app_for(large, small)
    response = await client.post("/v1/chat/completions", json=chat(), headers=AUTH)
    assert response.status == 400 and small.calls == []


# -- every endpoint ----------------------------------------------------------------------------------


async def test_completions_and_responses_fall_back_too(app_for):
    large, small = FakeTextBackend(error=BackendUnavailable("down")), answer("small")
    client = await app_for(large, small, model_alias_cooldown_s=0)
    response = await client.post("/v1/completions", json={"model": "chat-default", "prompt": ["a", "b"]},
                                 headers=AUTH)
    body = await response.json()
    assert response.status == 200 and body["model"] == SMALL and response.headers[MODEL_HEADER] == SMALL
    assert [c["text"] for c in body["choices"]] == ["small", "small"]
    response = await client.post("/v1/completions", json={"model": "chat-default", "prompt": ["a", "b"],
                                                           "stream": True}, headers=AUTH)
    assert response.status == 200 and {c["model"] for c in events(await response.text())} == {SMALL}

    response = await client.post("/v1/responses", json={"model": "chat-default", "input": "Hi"}, headers=AUTH)
    body = await response.json()
    assert response.status == 200 and (body["model"], body["status"]) == (SMALL, "completed")
    stored = await (await client.get(f"/v1/responses/{body['id']}", headers=AUTH)).json()
    assert stored["model"] == SMALL
    response = await client.post("/v1/responses", json={"model": "chat-default", "input": "Hi", "stream": True},
                                 headers=AUTH)
    streamed = events(await response.text())
    assert response.status == 200 and response.headers[MODEL_HEADER] == SMALL
    assert {e["response"]["model"] for e in streamed if "response" in e} == {SMALL}


async def test_embeddings_and_images_fall_back_too(app_for):
    client = await app_for(answer("big"), answer("small"))
    response = await client.post("/v1/embeddings", json={"model": "embed-default", "input": "x"}, headers=AUTH)
    body = await response.json()
    assert response.status == 200, body
    assert body["model"] == test_embeddings.MODEL and response.headers[MODEL_HEADER] == test_embeddings.MODEL
    response = await client.post("/v1/images/generations", json={"model": "draw-default", "prompt": "p",
                                                                  "size": "256x256"}, headers=AUTH)
    assert response.status == 200, await response.text()
    assert response.headers[MODEL_HEADER] == test_images.MODEL


# -- limits and the ledger count the serving model ---------------------------------------------------


async def test_limits_and_the_ledger_count_the_model_that_served(app_for):
    large, small = FakeTextBackend(error=AtCapacity("busy")), answer("small", n_in=7)
    client = await app_for(large, small, usage_flush_interval_s=3600.0)
    per_model = {"tokens_per_day": 1000}
    headers = bearer("frank", tokens_per_day=5000, model_limits={LARGE: per_model, SMALL: per_model})
    response = await client.post("/v1/chat/completions", json=chat(max_tokens=50), headers=headers)
    assert response.status == 200 and response.headers[MODEL_HEADER] == SMALL
    assert int(response.headers["x-ratelimit-remaining-tokens"]) <= 1000

    local = client.app[METERING].limiter.local
    subject, limits = "jwt:frank", Limits(tokens_per_day=1000)

    async def remaining(model: str | None, limits: Limits = limits) -> int:
        (level,) = await local.levels(token_specs(subject, limits, model))
        return level.remaining

    deadline = time.monotonic() + 10
    while await remaining(SMALL) != 1000 - 8:  # settled when the request has ended: 7 prompt + 1 completion
        assert time.monotonic() < deadline, "the serving model was not charged"
        await asyncio.sleep(0.02)
    assert await remaining(LARGE) == 1000  # what the refused attempt reserved went back, all of it
    assert await remaining(None, Limits(tokens_per_day=5000)) == 5000 - 8

    usage = await client.get("/v1/usage?group_by=model&subject=jwt:frank", headers=bearer("ops", "admin"))
    rows = (await usage.json())["data"]
    assert [(r["model"], r["requests"], r["total_tokens"]) for r in rows] == [(SMALL, 1, 8)]


async def test_the_callers_own_limits_never_move_a_request(app_for):
    large, small = answer("big"), answer("small")
    client = await app_for(large, small)
    headers = bearer("gina", model_limits={LARGE: {"rpm": 1}})
    assert (await client.post("/v1/chat/completions", json=chat(), headers=headers)).status == 200
    response = await client.post("/v1/chat/completions", json=chat(), headers=headers)
    error = (await response.json())["error"]
    assert response.status == 429 and error["code"] == "rate_limit_exceeded" and LARGE in error["message"]
    assert len(large.calls) == 1 and small.calls == []  # the caller's limit for the large model is the answer


# -- /v1/models and the credential's allow-list ------------------------------------------------------


async def test_models_lists_the_aliases_with_their_chains(app_for):
    client = await app_for(answer("big"), answer("small"))
    listing = (await (await client.get("/v1/models", headers=AUTH)).json())["data"]
    by_id = {m["id"]: m for m in listing}
    assert {LARGE, SMALL, *ALIASES} <= set(by_id)
    alias = by_id["chat-default"]
    assert alias["owned_by"] == OWNED_BY and alias["object"] == "model"
    assert alias["created"] == by_id[LARGE]["created"]
    assert LARGE in alias["description"] and SMALL in alias["description"]
    assert alias["description"].index(LARGE) < alias["description"].index(SMALL)
    one = await client.get("/v1/models/chat-default", headers=AUTH)
    assert one.status == 200 and await one.json() == alias


async def test_an_allowed_alias_allows_its_chain_through_it_only(app_for):
    large, small = answer("big"), answer("small")
    client = await app_for(large, small)
    only_alias = bearer("hal", models=["chat-default"])
    response = await client.post("/v1/chat/completions", json=chat(), headers=only_alias)
    assert response.status == 200 and (await response.json())["model"] == LARGE
    direct = await client.post("/v1/chat/completions", json=chat(LARGE), headers=only_alias)
    assert direct.status == 403
    listing = (await (await client.get("/v1/models", headers=only_alias)).json())["data"]
    assert [m["id"] for m in listing] == ["chat-default"]

    only_models = bearer("ida", models=[LARGE, SMALL])
    response = await client.post("/v1/chat/completions", json=chat(), headers=only_models)
    assert response.status == 403 and (await response.json())["error"]["code"] == "model_not_allowed"
    assert (await client.get("/v1/models/chat-default", headers=only_models)).status == 403


async def test_an_alias_shadowing_a_model_is_dropped_and_logged(app_for, caplog):
    caplog.set_level(logging.ERROR, "facade.aliases")
    large, small = answer("big"), answer("small")
    client = await app_for(large, small, model_aliases={SMALL: [LARGE]})
    listing = (await (await client.get("/v1/models", headers=AUTH)).json())["data"]
    assert [m["owned_by"] for m in listing if m["id"] == SMALL] == ["HuggingFaceTB"]
    assert any(SMALL in r.getMessage() and "rename the alias" in r.getMessage() for r in caplog.records)
    response = await client.post("/v1/chat/completions", json=chat(SMALL), headers=AUTH)
    assert (await response.json())["model"] == SMALL and large.calls == []


# -- configuration -------------------------------------------------------------------------------------


@pytest.mark.parametrize("value, says", [
    ('{"a": []}', "non-empty list"),
    ('{"a": ["m", "m"]}', "names a model twice"),
    ('{"a": ["b"], "b": ["m"]}', "aliases do not nest"),
    ('{"a": ["a"]}', "aliases do not nest"),
    ('["m"]', "must map alias names"),
    ('{"a": "m"}', "non-empty list"),
    ("{not json", "is not JSON"),
])
def test_bad_alias_settings_are_refused_naming_the_variable(value, says):
    with pytest.raises(SettingsError, match="HUBMESH_MODEL_ALIASES") as refused:
        Settings.from_env({"HUBMESH_MODEL_ALIASES": value})
    assert says in str(refused.value)


def test_alias_settings_parse():
    settings = Settings.from_env({"HUBMESH_MODEL_ALIASES": json.dumps({"chat-default": [LARGE, SMALL]}),
                                  "HUBMESH_MODEL_ALIAS_COOLDOWN_S": "2.5"})
    assert settings.model_aliases == {"chat-default": (LARGE, SMALL)} and settings.model_alias_cooldown_s == 2.5
    assert Settings.from_env({}).model_aliases == {} == aliases_from("")


def test_candidates_skip_models_cooling_down_but_never_the_last():
    now = [0.0]
    aliases = Aliases({"a": ["x", "y", "z"]}, cooldown_s=5, clock=lambda: now[0])
    assert aliases.candidates(("x", "y", "z")) == ["x", "y", "z"]
    aliases.refused("x")
    aliases.refused("z")
    assert aliases.candidates(("x", "y", "z")) == ["y", "z"] and aliases.first("a") == "y"
    now[0] = 5.0
    assert aliases.candidates(("x", "y", "z")) == ["x", "y", "z"]
    aliases.refused("y")
    aliases.served("y")
    assert aliases.first("a") == "x" and aliases.first("not-an-alias") == "not-an-alias"
