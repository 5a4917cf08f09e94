"""Services accept calls only from the façade (shared secret); health checks stay open."""

import grpc
import pytest
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from hubmesh.common.v1 import common_pb2 as common_pb
from services.common.errors import reason_and_field
from hubmesh.text.v1 import text_generation_pb2 as pb
from hubmesh.text.v1 import text_generation_pb2_grpc as pb_grpc
from facade.clients import service_metadata
from facade.text_streams import TextStreams
from services.common.internal_auth import RequireSecret
from services.text.servicer import TextGenerationServicer
from tests.fakes import FakeTextBackend, chunk
from tests.unit.text_service_fixture import CATALOG, MODEL


@pytest.fixture
async def target():
    server = grpc.aio.server(interceptors=[RequireSecret("internal-s3cret")])
    backend = FakeTextBackend([chunk(["ok"], ["stop"])])
    pb_grpc.add_TextGenerationServicer_to_server(TextGenerationServicer(backend, CATALOG), server)
    health_pb2_grpc.add_HealthServicer_to_server(health.aio.HealthServicer(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    yield f"127.0.0.1:{port}"
    await server.stop(None)


REQUEST = pb.GenerateRequest(model=MODEL, prompt="hi")


async def test_calls_without_the_secret_are_unauthenticated(target):
    async with grpc.aio.insecure_channel(target) as channel:
        stub = pb_grpc.TextGenerationStub(channel)
        for call in (lambda: stub.Generate(REQUEST), lambda: stub.ListModels(common_pb.ListModelsRequest())):
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await call()
            assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
        with pytest.raises(grpc.aio.AioRpcError) as err:
            async for _ in stub.GenerateStream(REQUEST):
                pass
        assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
        with pytest.raises(grpc.aio.AioRpcError) as err:  # the multiplexing call too: none of its streams start
            async for _ in stub.GenerateMany(iter([pb.GenerateManyRequest(open=[pb.StreamOpen(id=1, request=REQUEST)])])):
                pass
        assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
        streams = TextStreams(stub, ())
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await streams.open(REQUEST, 5.0).read()
        assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
        await streams.close()
        # the kubelet's probes need no secret
        reply = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=""))
        assert reply.status == health_pb2.HealthCheckResponse.SERVING


def _facade_metadata(secret: str) -> tuple[tuple[str, str], ...]:
    """What the façade sends with every call (its Clients carry the configured secret)."""
    return service_metadata(secret)


async def test_wrong_secret_rejected_and_right_secret_accepted(target):
    async with grpc.aio.insecure_channel(target) as channel:
        stub = pb_grpc.TextGenerationStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.Generate(REQUEST, metadata=_facade_metadata("guess"))
        assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
        assert reason_and_field(err.value) == ("NOT_FROM_FACADE", None)
        metadata = _facade_metadata("internal-s3cret")
        assert metadata == (("hubmesh-internal-secret", "internal-s3cret"),)  # who the call is for: in the message
        assert (await stub.Generate(REQUEST, metadata=metadata)).choices[0].text == "ok"
        assert [m async for m in stub.GenerateStream(REQUEST, metadata=metadata)][-1].HasField("usage")
        streams = TextStreams(stub, metadata)
        stream, messages = streams.open(REQUEST, 5.0), []
        while (message := await stream.read()) is not grpc.aio.EOF:
            messages.append(message)
        assert messages[-1].HasField("usage") and messages[0].deltas[0].text == "ok"
        await streams.close()
        assert (await stub.ListModels(common_pb.ListModelsRequest(), metadata=metadata)).models
