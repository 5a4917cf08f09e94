"""Generation streams over GenerateMany (facade/text_streams.py ↔ services/text/multiplex.py): each
carried stream behaves as its own GenerateStream call — messages, status, deadline, cancellation,
admission, access log — and links come and go with the service."""

import asyncio
import logging

import grpc
import pytest

from facade.text_streams import TextStreams
from hubmesh.text.v1 import text_generation_pb2 as pb
from hubmesh.text.v1 import text_generation_pb2_grpc as pb_grpc
from services.common.errors import reason_and_field
from services.common.interceptors import AdmissionInterceptor, MetricsInterceptor
from services.text.servicer import TextGenerationServicer
from tests.fakes import chunk
from tests.unit.text_service_fixture import CATALOG, MODEL, serving


class ScriptedBackend:
    """Prompt "words:a b c" streams one chunk per word; "hang" never finishes (and notes being closed)."""

    def __init__(self) -> None:
        self.closed = asyncio.Event()

    async def is_ready(self, model: str) -> bool:
        return True

    async def generate(self, model, prompt, sampling, stream, resume=None):
        if prompt == "hang":
            try:
                yield chunk(["first"])
                await asyncio.Event().wait()
            finally:
                self.closed.set()
        words = prompt.removeprefix("words:").split()
        for i, word in enumerate(words):
            await asyncio.sleep(0)  # let the other streams interleave
            yield chunk([word], ["stop" if i == len(words) - 1 else None])

    async def close(self) -> None:
        pass


def request(prompt: str, model: str = MODEL) -> pb.GenerateRequest:
    return pb.GenerateRequest(model=model, prompt=prompt)


async def read_all(stream) -> list[pb.GenerateStreamResponse]:
    messages = []
    while (message := await stream.read()) is not grpc.aio.EOF:
        messages.append(message)
    return messages


@pytest.fixture
async def service():
    """(stub, servicer) of a text service with the production interceptors (admission at 4)."""
    servicer = TextGenerationServicer(ScriptedBackend(), CATALOG)
    interceptors = [MetricsInterceptor(), AdmissionInterceptor(4)]
    async with serving(lambda server: pb_grpc.add_TextGenerationServicer_to_server(servicer, server),
                       interceptors) as target:
        async with grpc.aio.insecure_channel(target) as channel:
            yield pb_grpc.TextGenerationStub(channel), servicer


async def test_each_stream_gets_exactly_what_its_own_call_would(service):
    stub, _ = service
    prompts = [f"words:{' '.join(f's{i}w{k}' for k in range(i + 2))}" for i in range(12)]
    direct = [[m async for m in stub.GenerateStream(request(p))] for p in prompts]
    streams = TextStreams(stub, (), links=2)
    try:
        carried = await asyncio.gather(*(read_all(streams.open(request(p), 5.0)) for p in prompts[:4]))
        carried += await asyncio.gather(*(read_all(streams.open(request(p), 5.0)) for p in prompts[4:8]))
        carried += await asyncio.gather(*(read_all(streams.open(request(p), 5.0)) for p in prompts[8:]))
    finally:
        await streams.close()
    assert carried == direct
    assert all(messages[-1].HasField("usage") for messages in carried)


async def test_a_failed_stream_raises_what_its_call_would(service):
    stub, _ = service
    with pytest.raises(grpc.aio.AioRpcError) as direct:
        async for _ in stub.GenerateStream(request("words:a", model="no/such-model")):
            pass
    streams = TextStreams(stub, ())
    try:
        with pytest.raises(grpc.aio.AioRpcError) as carried:
            await read_all(streams.open(request("words:a", model="no/such-model"), 5.0))
        assert (carried.value.code(), carried.value.details()) == (direct.value.code(), direct.value.details())
        assert reason_and_field(carried.value) == reason_and_field(direct.value) == ("MODEL_NOT_FOUND", "model")
        # the link carries on
        assert (await read_all(streams.open(request("words:ok"), 5.0)))[0].deltas[0].text == "ok"
    finally:
        await streams.close()


async def test_cancel_stops_the_generation_and_the_deadline_ends_it(service):
    stub, servicer = service
    backend: ScriptedBackend = servicer._backend
    streams = TextStreams(stub, (), links=1)
    try:
        stream = streams.open(request("hang"), 5.0)
        assert (await stream.read()).deltas[0].text == "first"
        stream.cancel()
        await asyncio.wait_for(backend.closed.wait(), 5)
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stream.read()
        assert err.value.code() == grpc.StatusCode.CANCELLED
        backend.closed.clear()
        late = streams.open(request("hang"), 0.3)
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await read_all(late)
        assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        assert reason_and_field(err.value) == (None, None)  # as gRPC's own deadline says it
        await asyncio.wait_for(backend.closed.wait(), 5)
        assert (await read_all(streams.open(request("words:still here"), 5.0)))[1].deltas[0].text == "here"
    finally:
        await streams.close()


async def test_admission_and_access_log_count_each_stream(service, caplog):
    stub, _ = service
    streams = TextStreams(stub, (), links=2)
    caplog.set_level(logging.INFO, logger="hubmesh.access")
    try:
        held = [streams.open(request("hang"), 10.0) for _ in range(4)]
        for stream in held:
            await stream.read()
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await read_all(streams.open(request("words:x"), 5.0))
        assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert reason_and_field(err.value)[0] == "AT_CAPACITY"
        for stream in held:
            stream.cancel()
        await asyncio.sleep(0.1)
        assert (await read_all(streams.open(request("words:y"), 5.0)))[0].deltas[0].text == "y"
    finally:
        await streams.close()
    lines = [(r.endpoint, r.status) for r in caplog.records if getattr(r, "endpoint", None)]
    assert ("GenerateStream", "RESOURCE_EXHAUSTED") in lines and ("GenerateStream", "OK") in lines
    assert lines.count(("GenerateStream", "CANCELLED")) == 4
    assert not any(endpoint == "GenerateMany" for endpoint, _ in lines)


async def test_a_draining_service_gets_no_new_streams_on_its_link(service):
    stub, servicer = service
    streams = TextStreams(stub, (), links=1)
    try:
        running = streams.open(request("hang"), 10.0)
        await running.read()
        first = streams._links[0]
        servicer.drain()
        for _ in range(100):
            if first.retiring:
                break
            await asyncio.sleep(0.01)
        assert first.retiring
        assert (await read_all(streams.open(request("words:new"), 5.0)))[0].deltas[0].text == "new"
        assert streams._links[-1] is not first and first.streams  # the old link still carries its stream
        running.cancel()
    finally:
        await streams.close()


async def test_streams_of_a_link_whose_service_goes_away_fail_unavailable():
    servicer = TextGenerationServicer(ScriptedBackend(), CATALOG)
    server = grpc.aio.server()
    pb_grpc.add_TextGenerationServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        streams = TextStreams(pb_grpc.TextGenerationStub(channel), ())
        stream = streams.open(request("hang"), 10.0)
        await stream.read()
        await server.stop(None)
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await read_all(stream)
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE
        with pytest.raises(grpc.aio.AioRpcError) as err:  # nothing listens: a new stream fails, as a call would
            await read_all(streams.open(request("words:a"), 5.0))
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE
        await streams.close()


async def test_a_flush_interval_changes_no_message(service):
    stub, _ = service
    servicer = TextGenerationServicer(ScriptedBackend(), CATALOG, flush_interval_s=0.02)
    async with serving(lambda server: pb_grpc.add_TextGenerationServicer_to_server(servicer, server)) as target:
        async with grpc.aio.insecure_channel(target) as channel:
            streams = TextStreams(pb_grpc.TextGenerationStub(channel), ())
            prompts = [f"words:{i} a b c" for i in range(6)]
            carried = await asyncio.gather(*(read_all(streams.open(request(p), 5.0)) for p in prompts))
            await streams.close()
    assert carried == [[m async for m in stub.GenerateStream(request(p))] for p in prompts]


async def test_generate_answers_and_fails_as_its_own_call_would(service, caplog):
    stub, servicer = service
    backend: ScriptedBackend = servicer._backend
    streams = TextStreams(stub, (), links=1)
    caplog.set_level(logging.INFO, logger="hubmesh.access")
    try:
        prompts = [f"words:{i} one two" for i in range(4)]  # admission admits 4
        answers = await asyncio.gather(*(streams.generate(request(p), 5.0) for p in prompts))
        assert answers == [await stub.Generate(request(p)) for p in prompts]
        with pytest.raises(grpc.aio.AioRpcError) as direct:
            await stub.Generate(request("words:a", model="no/such-model"))
        with pytest.raises(grpc.aio.AioRpcError) as carried:
            await streams.generate(request("words:a", model="no/such-model"), 5.0)
        assert (carried.value.code(), carried.value.details()) == (direct.value.code(), direct.value.details())
        assert reason_and_field(carried.value) == reason_and_field(direct.value)
        # a caller that goes away stops the generation
        waiting = asyncio.create_task(streams.generate(request("hang"), 5.0))
        await asyncio.sleep(0.1)
        waiting.cancel()
        await asyncio.wait_for(backend.closed.wait(), 5)
        assert not streams._links[0].streams
    finally:
        await streams.close()
    carried_lines = [r for r in caplog.records if getattr(r, "endpoint", None) == "Generate"]
    assert [r.status for r in carried_lines].count("OK") == 8  # 4 carried, 4 direct
