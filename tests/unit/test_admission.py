"""Admission control: a bounded number in flight, then immediate rejections (never a queue or a hang)."""

import asyncio
import json

import grpc
import pytest

from facade.app import create_app
from facade.settings import Settings
from hubmesh.text.v1 import text_generation_pb2 as pb
from hubmesh.text.v1 import text_generation_pb2_grpc as pb_grpc
from services.common.interceptors import AdmissionInterceptor, MetricsInterceptor
from services.text.servicer import TextGenerationServicer
from tests.fakes import FakeTextBackend, chunk
from tests.unit.text_service_fixture import CATALOG, MODEL, running_text_service

REQUEST = pb.GenerateRequest(model=MODEL, prompt="hi")


@pytest.fixture
async def limited_service():
    backend = FakeTextBackend([chunk(["a"]), chunk(["b"])], hang_after=1)  # every stream hangs after "a"
    server = grpc.aio.server(interceptors=[MetricsInterceptor(), AdmissionInterceptor(2)])
    pb_grpc.add_TextGenerationServicer_to_server(TextGenerationServicer(backend, CATALOG), server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    yield f"127.0.0.1:{port}", backend
    await server.stop(None)


async def _admitted_stream(stub, timeout_s: float = 10.0):
    """A GenerateStream that got past admission (retried while it answers RESOURCE_EXHAUSTED)."""
    deadline = asyncio.get_running_loop().time() + timeout_s
    while True:
        call = stub.GenerateStream(REQUEST)
        await asyncio.wait_for(call.initial_metadata(), timeout=timeout_s)  # headers, or the rejection
        if not call.done() or await call.code() != grpc.StatusCode.RESOURCE_EXHAUSTED:
            return call
        assert asyncio.get_running_loop().time() < deadline, "no admission slot came free"
        await asyncio.sleep(0.05)


async def test_service_rejects_beyond_its_limit_and_recovers(limited_service):
    target, _ = limited_service
    async with grpc.aio.insecure_channel(target) as channel:
        stub = pb_grpc.TextGenerationStub(channel)
        held = [stub.GenerateStream(REQUEST) for _ in range(2)]
        for call in held:
            assert (await call.read()).deltas[0].text == "a"
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await asyncio.wait_for(stub.Generate(REQUEST), timeout=10)
        assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        held[0].cancel()
        third = await _admitted_stream(stub)  # a slot is free again once the server has seen the cancel
        assert (await asyncio.wait_for(third.read(), timeout=10)).deltas[0].text == "a"
        third.cancel()
        held[1].cancel()


async def test_service_at_capacity_is_429_with_retry_after(aiohttp_client, limited_service):
    target, _ = limited_service
    client = await aiohttp_client(create_app(Settings(api_keys=("k",), text_target=target)))
    auth = {"Authorization": "Bearer k"}
    body = {"model": MODEL, "messages": [{"role": "user", "content": "x"}], "stream": True}
    held = [await client.post("/v1/chat/completions", json=body, headers=auth) for _ in range(2)]
    for response in held:
        await response.content.readuntil(b'"a"')
    response = await asyncio.wait_for(client.post("/v1/chat/completions", json=body, headers=auth), timeout=10)
    assert response.status == 429 and response.headers["Retry-After"] == "1"
    assert (await response.json())["error"]["code"] == "rate_limit_exceeded"
    for r in held:
        r.close()


async def test_facade_worker_limit_is_immediate_429(aiohttp_client):
    backend = FakeTextBackend([chunk(["a"]), chunk(["b"])], hang_after=1)
    async with running_text_service(backend) as target:
        client = await aiohttp_client(create_app(Settings(api_keys=("k",), text_target=target, max_in_flight=1)))
        auth = {"Authorization": "Bearer k"}
        body = {"model": MODEL, "messages": [{"role": "user", "content": "x"}], "stream": True}
        first = await client.post("/v1/chat/completions", json=body, headers=auth)
        await first.content.readuntil(b'"a"')
        second = await asyncio.wait_for(client.post("/v1/chat/completions", json=body, headers=auth), timeout=10)
        assert second.status == 429 and second.headers["Retry-After"] == "1"
        assert (await second.json())["error"]["code"] == "server_overloaded"
        assert (await client.get("/health")).status == 200  # outside /v1/: never limited
        first.close()


class FlakyServicer(TextGenerationServicer):
    """Answers UNAVAILABLE to the first call of each method, as a restarting replica would."""

    def __init__(self):
        super().__init__(FakeTextBackend([chunk(["ok"], ["stop"])]), CATALOG)
        self.calls = {"ListModels": 0, "Generate": 0}

    async def ListModels(self, request, context):
        self.calls["ListModels"] += 1
        if self.calls["ListModels"] == 1:
            await context.abort(grpc.StatusCode.UNAVAILABLE, "restarting")
        return await super().ListModels(request, context)

    async def Generate(self, request, context):
        self.calls["Generate"] += 1
        await context.abort(grpc.StatusCode.UNAVAILABLE, "restarting")


async def test_idempotent_calls_retry_once_and_generation_never(aiohttp_client):
    servicer = FlakyServicer()
    server = grpc.aio.server()
    pb_grpc.add_TextGenerationServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        target = f"127.0.0.1:{port}"
        client = await aiohttp_client(create_app(Settings(
            api_keys=("k",), text_target=target, embeddings_target=target, images_target=target)))
        auth = {"Authorization": "Bearer k"}
        listing = await client.get("/v1/models", headers=auth)
        assert listing.status == 200 and servicer.calls["ListModels"] == 2
        body = {"model": MODEL, "messages": [{"role": "user", "content": "x"}]}
        response = await client.post("/v1/chat/completions", json=body, headers=auth)
        assert response.status == 503 and servicer.calls["Generate"] == 1
    finally:
        await server.stop(None)


async def test_the_grace_period_over_ends_what_is_still_running(aiohttp_client, services):
    """Past a graceful stop's grace period (facade/__main__.py drain): a request not answered yet
    gets a 503, an open stream a final error event and [DONE]; the generations stop upstream."""
    from facade.capacity import IN_FLIGHT

    backend = FakeTextBackend([chunk(["a"]), chunk(["b"], ["stop"])], hang_after=1)  # both hang after "a"
    app = create_app(Settings(api_keys=("k",), text_target=await services(backend)))
    client = await aiohttp_client(app)
    body = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}]}
    headers = {"Authorization": "Bearer k"}
    unary = asyncio.create_task(client.post("/v1/chat/completions", json=body, headers=headers))
    stream = await client.post("/v1/chat/completions", json={**body, "stream": True}, headers=headers)
    assert stream.status == 200
    assert b'"content":"a"' in await stream.content.readuntil(b"\n\n") + await stream.content.readuntil(b"\n\n")
    while len(backend.calls) < 2:  # the unary request reached the model too
        await asyncio.sleep(0.01)

    assert app[IN_FLIGHT].interrupt() == 2
    refused = await unary
    assert refused.status == 503 and (await refused.json())["error"]["code"] == "server_shutdown"
    events = (await stream.read()).decode().split("\n\n")
    assert events[-2:] == ["data: [DONE]", ""]
    assert json.loads(events[-3].removeprefix("data: "))["error"]["code"] == "server_shutdown"
    assert app[IN_FLIGHT].count == 0
    await asyncio.wait_for(backend.closed_early.wait(), 5)  # the generations were stopped


async def test_a_client_going_away_is_not_taken_for_the_grace_period(aiohttp_client, services):
    """A request cancelled by anything but interrupt() stays cancelled (no 503 written for it)."""
    from facade.capacity import IN_FLIGHT

    backend = FakeTextBackend([chunk(["a"])], hang_after=0)
    app = create_app(Settings(api_keys=("k",), text_target=await services(backend)))
    client = await aiohttp_client(app, server_kwargs={"handler_cancellation": True})  # as facade/__main__.py
    body = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}]}
    request = asyncio.create_task(client.post("/v1/chat/completions", json=body, headers={"Authorization": "Bearer k"}))
    while not backend.calls:
        await asyncio.sleep(0.01)
    request.cancel()  # the client goes away
    with pytest.raises(asyncio.CancelledError):
        await request
    await asyncio.wait_for(backend.closed_early.wait(), 5)
    while app[IN_FLIGHT].count:
        await asyncio.sleep(0.01)
