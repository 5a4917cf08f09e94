"""TextGenerationServicer against a fake backend, over a real in-process gRPC server."""

import asyncio

import grpc
import pytest

from hubmesh.text.v1 import text_generation_pb2 as pb
from hubmesh.text.v1 import text_generation_pb2_grpc as pb_grpc
from services.common.errors import InvalidArgument
from tests.fakes import FakeTextBackend, chunk
from tests.unit.text_service_fixture import CATALOG, MODEL, running_text_service


def chat_request(**sampling):
    return pb.GenerateRequest(
        model=MODEL,
        chat=pb.ChatInput(messages=[pb.ChatMessage(role="user", content="Hi")]),
        sampling=pb.SamplingParameters(**sampling),
    )


async def test_generate_renders_template_and_maps_contract():
    backend = FakeTextBackend([chunk(["Hello", "Hey"], ["stop", "length"], n_in=12, n_out=[3, 4])])
    async with running_text_service(backend) as target, grpc.aio.insecure_channel(target) as channel:
        reply = await pb_grpc.TextGenerationStub(channel).Generate(
            chat_request(n=2, temperature=0.0, stop=["\n"], logit_bias={5: -100.0}, seed=3)
        )
    call = backend.calls[0]
    assert call["model"] == "smollm2" and call["stream"] is False
    assert call["prompt"].endswith("<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n")
    assert call["sampling"] == {
        "n": 2, "temperature": 0.0, "stop": ["\n"], "max_tokens": CATALOG[MODEL].context_length,
        "logit_bias": {"5": -100.0}, "seed": 3,
    }
    assert [(c.index, c.text, c.finish_reason) for c in reply.choices] == [
        (0, "Hello", pb.FINISH_REASON_STOP), (1, "Hey", pb.FINISH_REASON_LENGTH)
    ]
    assert (reply.usage.prompt_tokens, reply.usage.completion_tokens) == (12, 7)


async def test_stream_sends_each_finish_once_and_usage_last():
    backend = FakeTextBackend([
        chunk(["A", ""]),
        chunk(["", ""], ["stop", None], n_out=[0, 0]),
        chunk(["", "B"], ["stop", None]),
        chunk(["", ""], ["stop", "length"], n_out=[0, 0]),
    ])
    async with running_text_service(backend) as target, grpc.aio.insecure_channel(target) as channel:
        messages = [m async for m in pb_grpc.TextGenerationStub(channel).GenerateStream(chat_request(n=2))]
    deltas = [(d.index, d.text, d.finish_reason) for m in messages for d in m.deltas]
    assert deltas == [(0, "A", 0), (0, "", pb.FINISH_REASON_STOP), (1, "B", 0), (1, "", pb.FINISH_REASON_LENGTH)]
    assert messages[-1].HasField("usage") and messages[-1].usage.completion_tokens == 2
    assert backend.calls[0]["stream"] is True


@pytest.mark.parametrize(
    "sampling, message",
    [
        ({"temperature": 2.5}, "temperature must be between 0 and 2"),
        ({"top_p": 0.0}, "top_p must be greater than 0"),
        ({"n": 129}, "n must be between 1 and 128"),
        ({"stop": ["a", "b", "c", "d", "e"]}, "at most 4"),
        ({"presence_penalty": -3.0}, "presence_penalty must be between -2 and 2"),
        ({"logit_bias": {7: 101.0}}, "logit_bias[7] must be between -100 and 100"),
        ({"max_tokens": 9000}, "maximum context length is 8192"),
    ],
)
async def test_invalid_sampling_is_invalid_argument(sampling, message):
    async with running_text_service(FakeTextBackend()) as target, grpc.aio.insecure_channel(target) as channel:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await pb_grpc.TextGenerationStub(channel).Generate(chat_request(**sampling))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert message in err.value.details()


async def test_unknown_model_is_not_found_and_empty_input_invalid():
    async with running_text_service(FakeTextBackend()) as target, grpc.aio.insecure_channel(target) as channel:
        stub = pb_grpc.TextGenerationStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.Generate(pb.GenerateRequest(model="nope", prompt="x"))
        assert err.value.code() == grpc.StatusCode.NOT_FOUND
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.Generate(pb.GenerateRequest(model=MODEL))
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_backend_errors_keep_their_status_in_streams():
    backend = FakeTextBackend(error=InvalidArgument("Prompt length of 9999 tokens is longer than the maximum"))
    async with running_text_service(backend) as target, grpc.aio.insecure_channel(target) as channel:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            async for _ in pb_grpc.TextGenerationStub(channel).GenerateStream(chat_request()):
                pass
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "Prompt length" in err.value.details()


async def test_cancelling_the_call_closes_the_backend_generation():
    backend = FakeTextBackend([chunk(["a"]), chunk(["b"])], hang_after=1)
    async with running_text_service(backend) as target, grpc.aio.insecure_channel(target) as channel:
        call = pb_grpc.TextGenerationStub(channel).GenerateStream(chat_request())
        first = await call.read()
        assert first.deltas[0].text == "a"
        call.cancel()
        await asyncio.wait_for(backend.closed_early.wait(), timeout=10)


async def test_list_models_comes_from_the_catalogue():
    async with running_text_service(FakeTextBackend()) as target, grpc.aio.insecure_channel(target) as channel:
        reply = await pb_grpc.TextGenerationStub(channel).ListModels(pb.ListModelsRequest())
    assert [(m.id, m.context_length) for m in reply.models] == [(MODEL, 8192)]
