"""A text service lost mid-stream (facade/resumable.py): the façade in
front of two real text servicers, the one carrying the stream stopped after a few tokens; the
stream goes on through the other from what was relayed (GenerateRequest.resume), with the whole
text and usage, and no error. A stream whose deltas are not the model's own text (tool calls) is not
resumed: it ends with the error event, as before."""

from __future__ import annotations

import asyncio
import json
import time

import grpc
import jwt
import pytest

from facade.app import create_app
from facade.resumable import Relayed
from facade.settings import Settings
from hubmesh.text.v1 import text_generation_pb2 as pb
from hubmesh.text.v1 import text_generation_pb2_grpc as pb_grpc
from services.images.storage import LocalDirectoryStore
from services.text.contract import GenerationChunk
from services.text.servicer import TextGenerationServicer
from tests.fakes import FakeEmbeddingsBackend, FakeImagesBackend
from tests.unit import test_embeddings, test_images
from tests.unit.text_service_fixture import CATALOG, MODEL, serving

SECRET = "s3cret-for-resume-tests-0123456789abcdef"
TOKENS = 8
PROMPT_TOKENS = 5


def bearer() -> dict:
    now = int(time.time())
    body = {"sub": "rita", "scope": "chat completions", "iat": now, "exp": now + 24 * 3600}
    return {"Authorization": "Bearer " + jwt.encode(body, SECRET, algorithm="HS256")}


class Counting:
    """Tokens " w0" … " w7", a chunk each with its id; a fresh generation stops after 3 tokens until
    released (`hold`), one with `resume` goes on from the tokens it was given."""

    def __init__(self, name: str, hold: asyncio.Event) -> None:
        self.name = name
        self.hold = hold
        self.started = asyncio.Event()
        self.resumes: list = []

    async def is_ready(self, model: str) -> bool:
        return True

    async def generate(self, model, prompt, sampling, stream, resume=None):
        first = 0
        if resume is not None:
            self.resumes.append(resume)
            first = resume.choices[0].tokens
        for k in range(first, TOKENS):
            if k == 3 and resume is None:
                self.started.set()
                await self.hold.wait()
            yield GenerationChunk(texts=[f" w{k}"], finish_reasons=["length" if k == TOKENS - 1 else None],
                                  num_input_tokens=PROMPT_TOKENS, num_output_tokens=[1], token_ids=[[k]])

    async def close(self) -> None:
        pass


class Service:
    """One in-process text service whose server can be stopped (the service lost)."""

    def __init__(self, backend: Counting) -> None:
        self.backend = backend
        servicer = TextGenerationServicer(backend, CATALOG)
        self._serving = serving(lambda server: pb_grpc.add_TextGenerationServicer_to_server(servicer, server))
        self.target = ""
        self.stopped = False

    async def start(self) -> str:
        self.target = await self._serving.__aenter__()
        return self.target

    async def stop(self) -> None:
        if not self.stopped:
            self.stopped = True
            await self._serving.__aexit__(None, None, None)


@pytest.fixture
async def two_services(aiohttp_client, tmp_path):
    hold = asyncio.Event()
    services = [Service(Counting(name, hold)) for name in ("a", "b")]
    targets = [(await s.start()) for s in services]
    async with test_embeddings.embeddings_service(FakeEmbeddingsBackend()) as emb, \
            test_images.images_service(FakeImagesBackend(), LocalDirectoryStore(tmp_path / "img")) as img:
        settings = Settings(jwt_secret=SECRET, text_target="ipv4:" + ",".join(targets), embeddings_target=emb,
                            images_target=img, database_url=f"sqlite:///{tmp_path / 'hub.db'}")
        client = await aiohttp_client(create_app(settings))
        try:
            yield client, services
        finally:
            hold.set()
            for service in services:
                await service.stop()


async def carrying(services: list[Service]) -> Service:
    """The service whose backend started the generation."""
    started = [asyncio.ensure_future(s.backend.started.wait()) for s in services]
    done, pending = await asyncio.wait(started, timeout=10, return_when=asyncio.FIRST_COMPLETED)
    for task in pending:
        task.cancel()
    assert done, "no service started the generation"
    return next(s for s, task in zip(services, started, strict=True) if task in done)


def data(raw: str) -> list:
    return [line[6:] if line == "data: [DONE]" else json.loads(line[6:])
            for line in raw.splitlines() if line.startswith("data: ")]


async def test_a_stream_goes_on_through_the_other_service_when_its_own_is_lost(two_services):
    client, services = two_services
    body = {"model": MODEL, "messages": [{"role": "user", "content": "count"}], "max_tokens": TOKENS,
            "stream": True, "stream_options": {"include_usage": True}}
    response = await client.post("/v1/chat/completions", json=body, headers=bearer())
    assert response.status == 200
    carrier = await carrying(services)
    other = next(s for s in services if s is not carrier)
    await carrier.stop()  # the service is lost with the stream open on it
    events = data(await response.text())
    assert events[-1] == "[DONE]"
    chunks = events[:-1]
    assert not [e for e in chunks if "error" in e], chunks
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c.get("choices"))
    assert text == "".join(f" w{k}" for k in range(TOKENS))
    finish = [c["choices"][0]["finish_reason"] for c in chunks if c.get("choices") and c["choices"][0]["finish_reason"]]
    assert finish == ["length"]
    assert chunks[-1]["usage"] == {"prompt_tokens": PROMPT_TOKENS, "completion_tokens": TOKENS,
                                   "total_tokens": PROMPT_TOKENS + TOKENS}
    resumed, = other.backend.resumes
    choice, = resumed.choices
    assert (choice.tokens, choice.ids, "".join(choice.texts), choice.finished) == (3, [0, 1, 2], " w0 w1 w2", False)
    assert resumed.with_ids
    metrics = await (await client.get("/metrics")).text()
    assert f'hubmesh_text_stream_resumes_total{{model="{MODEL}",outcome="resumed"}} 1.0' in metrics


def test_what_was_relayed_is_what_the_next_service_resumes_from():
    relayed = Relayed(2)
    relayed.see(pb.GenerateStreamResponse(prompt_tokens=7, deltas=[pb.ChoiceDelta(index=0, text="Hel"),
                                                                   pb.ChoiceDelta(index=1, text="Bon")],
                                          progress=[pb.ChoiceProgress(index=0, tokens=1, token_ids=[11]),
                                                    pb.ChoiceProgress(index=1, tokens=1, token_ids=[21])]))
    relayed.see(pb.GenerateStreamResponse(progress=[pb.ChoiceProgress(index=0, tokens=1, token_ids=[12])]))  # no text yet
    relayed.see(pb.GenerateStreamResponse(deltas=[pb.ChoiceDelta(index=0, text="lo"),
                                                  pb.ChoiceDelta(index=1, finish_reason=pb.FINISH_REASON_STOP)],
                                          progress=[pb.ChoiceProgress(index=0, tokens=1, token_ids=[13])]))
    assert relayed.resumable and relayed.tokens == 4
    assert relayed.resume() == pb.Resume(prompt_tokens=7, choices=[
        pb.ResumedChoice(text="Hello", token_ids=[11, 12, 13], tokens=3),
        pb.ResumedChoice(text="Bon", token_ids=[21], tokens=1, finished=True)])


@pytest.mark.parametrize("message", [
    pb.GenerateStreamResponse(deltas=[pb.ChoiceDelta(index=0, text="no progress came with me")]),
    pb.GenerateStreamResponse(deltas=[pb.ChoiceDelta(index=0, tool_calls=[pb.ToolCallDelta(index=0, name="f")])]),
    pb.GenerateStreamResponse(progress=[pb.ChoiceProgress(index=3, tokens=1)]),
], ids=["text-without-progress", "tool-call", "unknown-choice"])
def test_a_stream_whose_deltas_are_not_the_models_text_is_not_resumable(message):
    relayed = Relayed(1)
    relayed.see(message)
    assert not relayed.resumable


async def test_the_service_reports_progress_and_goes_on_from_a_resume():
    hold = asyncio.Event()
    hold.set()
    backend = Counting("a", hold)
    servicer = TextGenerationServicer(backend, CATALOG)
    async with serving(lambda server: pb_grpc.add_TextGenerationServicer_to_server(servicer, server)) as target, \
            grpc.aio.insecure_channel(target) as channel:
        stub = pb_grpc.TextGenerationStub(channel)
        fresh = pb.GenerateRequest(model=MODEL, prompt="count", sampling=pb.SamplingParameters(max_tokens=TOKENS))
        messages = [m async for m in stub.GenerateStream(fresh)]
        progress = [p for m in messages for p in m.progress]
        assert [(p.index, p.tokens, list(p.token_ids)) for p in progress] == [(0, 1, [k]) for k in range(TOKENS)]

        resumed = pb.GenerateRequest()
        resumed.CopyFrom(fresh)
        resumed.resume.CopyFrom(pb.Resume(prompt_tokens=PROMPT_TOKENS, choices=[
            pb.ResumedChoice(text=" w0 w1 w2 w3 w4", token_ids=[0, 1, 2, 3, 4], tokens=5)]))
        messages = [m async for m in stub.GenerateStream(resumed)]
        assert "".join(d.text for m in messages for d in m.deltas) == " w5 w6 w7"
        assert messages[-1].usage == pb.Usage(prompt_tokens=PROMPT_TOKENS, completion_tokens=TOKENS)
        progress, = backend.resumes
        assert (progress.tokens, progress.with_ids) == (5, True)

        with_tools = pb.GenerateRequest()
        with_tools.CopyFrom(resumed)
        with_tools.ClearField("prompt")
        with_tools.chat.messages.add(role="user", content="call f")
        with_tools.tools.add(name="f", parameters='{"type": "object"}')
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            async for _ in stub.GenerateStream(with_tools):
                pass
        assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "free-text" in refused.value.details()


async def test_a_unary_generation_whose_service_is_lost_is_asked_of_the_other(two_services):
    client, services = two_services
    body = {"model": MODEL, "messages": [{"role": "user", "content": "count"}], "max_tokens": TOKENS}
    answer = asyncio.ensure_future(client.post("/v1/chat/completions", json=body, headers=bearer()))
    carrier = await carrying(services)
    await carrier.stop()
    carrier.backend.hold.set()  # the other service's generation (a fresh one: nothing was seen) runs through
    response = await answer
    body = await response.json()
    assert response.status == 200, body
    assert body["choices"][0]["message"]["content"] == "".join(f" w{k}" for k in range(TOKENS))
    assert body["usage"]["completion_tokens"] == TOKENS
    metrics = await (await client.get("/metrics")).text()
    assert f'hubmesh_text_stream_resumes_total{{model="{MODEL}",outcome="restarted"}}' in metrics
