"""TextGenerationServicer against a fake backend, over a real in-process gRPC server."""

import asyncio
import json

import grpc
import pytest

from services.common.errors import reason_and_field
from hubmesh.common.v1 import common_pb2 as common_pb
from hubmesh.text.v1 import text_generation_pb2 as pb
from hubmesh.text.v1 import text_generation_pb2_grpc as pb_grpc
from services.common.errors import InvalidArgument
from tests.fakes import FakeTextBackend, chunk, token
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
        reply = await pb_grpc.TextGenerationStub(channel).ListModels(common_pb.ListModelsRequest())
    assert [(m.id, m.text.context_length) for m in reply.models] == [(MODEL, 8192)]


WEATHER = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}
CALL = '{"name": "get_weather", "arguments": {"city": "Paris"}}'


def tools_request(choice=None, messages=None, **fields):
    request = pb.GenerateRequest(
        model=MODEL,
        chat=pb.ChatInput(messages=messages or [pb.ChatMessage(role="user", content="Weather in Paris?")]),
        sampling=pb.SamplingParameters(stop=["\n"], max_tokens=64),
        tools=[pb.FunctionTool(name="get_weather", description="Weather now", parameters=json.dumps(WEATHER))],
        **fields,
    )
    if isinstance(choice, str):
        request.tool_choice.function_name = choice
    elif choice is not None:
        request.tool_choice.mode = choice
    return request


async def test_tools_reach_the_prompt_and_the_constraint():
    backend = FakeTextBackend([chunk([CALL], ["stop"])])
    history = [
        pb.ChatMessage(role="user", content="Weather in Paris?"),
        pb.ChatMessage(role="assistant",
                       tool_calls=[pb.ToolCall(id="call_1", name="get_weather", arguments='{"city": "Paris"}')]),
        pb.ChatMessage(role="tool", content='{"t": 21}', tool_call_id="call_1"),
        pb.ChatMessage(role="user", content="And in Rome?"),
    ]
    async with running_text_service(backend) as target, grpc.aio.insecure_channel(target) as channel:
        reply = await pb_grpc.TextGenerationStub(channel).Generate(
            tools_request(pb.TOOL_CHOICE_MODE_REQUIRED, history, parallel_tool_calls=False)
        )
    prompt, sampling = backend.calls[0]["prompt"], backend.calls[0]["sampling"]
    assert '<tools>\n{"type": "function", "function": {"name": "get_weather", "description": "Weather now"' in prompt
    assert '<|im_start|>assistant\n{"name": "get_weather", "arguments": {"city": "Paris"}}<|im_end|>' in prompt
    assert '<|im_start|>tool\n<tool_response>\n{"t": 21}\n</tool_response><|im_end|>' in prompt
    assert "stop" not in sampling  # the grammar ends the JSON; a stop sequence could cut it
    constraint = json.loads(sampling["structured_outputs"])
    assert constraint["json"]["properties"]["name"] == {"const": "get_weather"}
    assert constraint["json"]["properties"]["arguments"] == {**WEATHER, "additionalProperties": False}
    choice = reply.choices[0]
    assert choice.text == "" and choice.finish_reason == pb.FINISH_REASON_TOOL_CALLS
    assert [(c.name, c.arguments) for c in choice.tool_calls] == [("get_weather", '{"city": "Paris"}')]
    assert choice.tool_calls[0].id.startswith("call_") and len(choice.tool_calls[0].id) == 29


async def test_auto_keeps_stop_and_reads_text_or_calls():
    backend = FakeTextBackend([chunk(["Let me look. " + CALL, "Sunny."], ["stop", "stop"])])
    async with running_text_service(backend) as target, grpc.aio.insecure_channel(target) as channel:
        request = tools_request(pb.TOOL_CHOICE_MODE_AUTO)
        request.sampling.n = 2
        reply = await pb_grpc.TextGenerationStub(channel).Generate(request)
    sampling = backend.calls[0]["sampling"]
    assert sampling["stop"] == ["\n"] and "structural_tag" in json.loads(sampling["structured_outputs"])
    first, second = reply.choices
    assert first.text == "Let me look." and first.finish_reason == pb.FINISH_REASON_TOOL_CALLS
    assert [c.arguments for c in first.tool_calls] == ['{"city": "Paris"}']
    assert second.text == "Sunny." and not second.tool_calls and second.finish_reason == pb.FINISH_REASON_STOP


async def test_none_and_plain_requests_stay_plain():
    backend = FakeTextBackend([chunk([CALL], ["stop"])])
    async with running_text_service(backend) as target, grpc.aio.insecure_channel(target) as channel:
        reply = await pb_grpc.TextGenerationStub(channel).Generate(tools_request(pb.TOOL_CHOICE_MODE_NONE))
    assert "<tools>" not in backend.calls[0]["prompt"] and "structured_outputs" not in backend.calls[0]["sampling"]
    assert reply.choices[0].text == CALL and not reply.choices[0].tool_calls


async def test_response_format_json_schema_becomes_the_constraint():
    backend = FakeTextBackend([chunk(['{"a": 1}'], ["stop"])])
    fmt = pb.ResponseFormat(type=pb.RESPONSE_FORMAT_TYPE_JSON_SCHEMA, name="a",
                            json_schema=json.dumps({"type": "object", "properties": {"a": {"type": "integer"}}}))
    async with running_text_service(backend) as target, grpc.aio.insecure_channel(target) as channel:
        reply = await pb_grpc.TextGenerationStub(channel).Generate(
            pb.GenerateRequest(model=MODEL, prompt="x", response_format=fmt, sampling=pb.SamplingParameters(stop=["}"]))
        )
    sampling = backend.calls[0]["sampling"]
    assert json.loads(sampling["structured_outputs"]) == {
        "json": {"type": "object", "properties": {"a": {"type": "integer"}}, "additionalProperties": False}
    }
    assert "stop" not in sampling and reply.choices[0].text == '{"a": 1}'


async def test_streamed_call_is_name_first_then_fragments_then_finish():
    pieces = ['{"name": "get_', 'weather", "arguments": {"ci', 'ty": "Par', 'is"}}']
    backend = FakeTextBackend([chunk([p]) for p in pieces] + [chunk([""], ["stop"], n_out=[0])])
    async with running_text_service(backend) as target, grpc.aio.insecure_channel(target) as channel:
        messages = [m async for m in pb_grpc.TextGenerationStub(channel).GenerateStream(
            tools_request(pb.TOOL_CHOICE_MODE_REQUIRED))]
    deltas = [d for m in messages for d in m.deltas]
    assert all(len(m.deltas) <= 1 for m in messages)  # one step of one choice per message
    start = deltas[0].tool_calls[0]
    assert (start.index, start.name, start.arguments) == (0, "get_weather", "") and start.id.startswith("call_")
    fragments = [d.tool_calls[0] for d in deltas[1:-1]]
    assert all(not f.HasField("id") and not f.HasField("name") for f in fragments)
    assert [f.arguments for f in fragments] == ['{"ci', 'ty": "Par', 'is"}']
    assert deltas[-1].finish_reason == pb.FINISH_REASON_TOOL_CALLS and not deltas[-1].tool_calls
    assert all(not d.text for d in deltas)
    assert messages[-1].HasField("usage")


async def test_unknown_named_function_is_invalid_argument_with_param():
    async with running_text_service(FakeTextBackend()) as target, grpc.aio.insecure_channel(target) as channel:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await pb_grpc.TextGenerationStub(channel).Generate(tools_request("get_time"))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert reason_and_field(err.value) == ("INVALID_REQUEST", "tool_choice")


# -- logprobs -------------------------------------------------------------------------------------


def _response_with_logprobs(texts, logprobs, ids=None):
    """A ModelInferResponse of the contract with a `logprobs` output (and output_token_ids)."""
    import numpy as np
    from tritonclient.grpc import service_pb2

    from services.common import triton_tensors

    response = service_pb2.ModelInferResponse(model_name="m")
    for name, values in (("text_output", texts), ("finish_reason", ["None"] * len(texts)), ("logprobs", logprobs)):
        response.outputs.add(name=name, datatype="BYTES", shape=[len(values)])
        response.raw_output_contents.append(triton_tensors.encode_bytes([v.encode() for v in values]))
    if ids is not None:
        width = max((len(row) for row in ids), default=0)
        array = np.array([row + [-1] * (width - len(row)) for row in ids], dtype=np.int32).reshape(len(ids), width)
        response.outputs.add(name="output_token_ids", datatype="INT32", shape=list(array.shape))
        response.raw_output_contents.append(array.tobytes())
    return response


def _entry(logprob, rank, text):
    return {"logprob": logprob, "rank": rank, "decoded_token": text}


def test_contract_reads_vllm_logprobs_sampled_first_without_token_ids():
    """Triton's vLLM backend: no output_token_ids; each position's object has the sampled token first,
    then the k best (k + 1 entries when the sampled one is not among them)."""
    from services.text.contract import parse_response

    k2 = [
        {"11": _entry(-0.5, 1, " Paris"), "12": _entry(-1.5, 2, " Lyon")},  # sampled is the best
        {"40": _entry(-3.0, 5, " ville"), "41": _entry(-0.2, 1, "."), "42": _entry(-2.0, 2, "!")},  # not among k
    ]
    chunk_ = parse_response(_response_with_logprobs([" Paris ville", ""], [json.dumps(k2), "null"]))
    first, second = chunk_.logprobs[0]
    assert (first.token, first.logprob, [e.token for e in first.top]) == (" Paris", -0.5, [" Paris", " Lyon"])
    assert (second.token, second.logprob) == (" ville", -3.0)
    assert [(e.token, e.rank) for e in second.top] == [(".", 1), ("!", 2), (" ville", 5)]  # by rank
    assert chunk_.logprobs[1] is None  # the model's JSON null


def test_contract_picks_the_sampled_token_by_its_reported_id():
    from services.text.contract import UNLIKELY, parse_response

    position = {"7": _entry(-0.1, 1, "a"), "8": _entry(float("-inf"), 2, "b")}
    text = json.dumps([position, position])  # -Infinity, as Python's json writes a masked token's
    chunk_ = parse_response(_response_with_logprobs(["ab"], [text], ids=[[7, 8]]))
    assert [(t.token, t.logprob) for t in chunk_.logprobs[0]] == [("a", -0.1), ("b", UNLIKELY)]
    assert chunk_.token_ids == [[7, 8]]


def test_contract_tolerates_odd_entries():
    from services.text.contract import UNLIKELY, parse_response

    odd = [{"1": _entry(-0.1, 1, "\ud800x")}, {}, {"2": {"logprob": "high", "decoded_token": None}}]
    chunk_ = parse_response(_response_with_logprobs(["x", "y"], [json.dumps(odd), "not json"]))
    tokens = chunk_.logprobs[0]
    assert tokens[0].token == "?x" and tokens[0].token.encode()  # a lone surrogate cannot be sent
    assert [(t.token, t.logprob) for t in tokens[1:]] == [("", UNLIKELY), ("", UNLIKELY)]
    assert chunk_.logprobs[1] is None


def test_contract_without_logprobs_output_parses_none_and_asks_only_when_asked():
    from services.text.contract import generation_request, parse_response

    assert parse_response(_response_with_logprobs(["x"], ["[]"])).logprobs == [[]]
    assert parse_response(_response_with_logprobs(["x", "y"], ["null", "null"])).logprobs is None  # not asked
    names = lambda request: [t.name for t in request.inputs]  # noqa: E731
    assert "return_logprobs" not in names(generation_request("m", "p", {"n": 1}, stream=True))
    asked = generation_request("m", "p", {"n": 1, "logprobs": 0}, stream=True)
    assert "return_logprobs" in names(asked)
    assert json.loads(asked.raw_input_contents[names(asked).index("sampling_parameters")][4:])["logprobs"] == 0


def test_a_continuation_carries_its_logprobs_to_its_choice():
    from services.text.migration import Segment

    tokens = [token("x", -0.3)]
    moved = Segment(request=None, choice=2, n=3).renumber(chunk(["x"], logprobs=[tokens]))
    assert moved.logprobs == [None, None, tokens] and moved.texts == ["", "", "x"]
    assert Segment(request=None, choice=1, n=2).renumber(chunk(["y"])).logprobs is None


async def test_generate_returns_each_choices_tokens_with_the_best_k():
    first = [token("Hel", -0.1, ("Hel", -0.1), ("Hi", -2.5), ("Yo", -3.0)), token("lo", -0.7, ("lo", -0.7), ("p", -1.0))]
    outside = token("Hey", -4.0, ("Bon", -0.2), ("Hi", -0.9), ("Yo", -1.1))  # sampled, not among the best 2
    backend = FakeTextBackend([
        chunk(["Hel", "Hey"], logprobs=[first[:1], [outside]]),
        chunk(["lo", ""], ["stop", "length"], logprobs=[first[1:], None]),
    ])
    async with running_text_service(backend) as target, grpc.aio.insecure_channel(target) as channel:
        reply = await pb_grpc.TextGenerationStub(channel).Generate(chat_request(n=2, logprobs=2))
    assert backend.calls[0]["sampling"]["logprobs"] == 2
    a, b = reply.choices
    assert [(t.token, t.logprob, t.bytes) for t in a.logprobs] == [("Hel", -0.1, b"Hel"), ("lo", -0.7, b"lo")]
    assert [[(e.token, e.logprob) for e in t.top_logprobs] for t in a.logprobs] == [
        [("Hel", -0.1), ("Hi", -2.5)], [("lo", -0.7), ("p", -1.0)]
    ]
    assert [(t.token, [e.token for e in t.top_logprobs]) for t in b.logprobs] == [("Hey", ["Bon", "Hi"])]


async def test_without_logprobs_nothing_changes():
    backend = FakeTextBackend([chunk(["Hi"], ["stop"], logprobs=[[token("Hi", -0.1)]])])
    async with running_text_service(backend) as target, grpc.aio.insecure_channel(target) as channel:
        stub = pb_grpc.TextGenerationStub(channel)
        reply = await stub.Generate(chat_request())
        messages = [m async for m in stub.GenerateStream(chat_request())]
    assert "logprobs" not in backend.calls[0]["sampling"] and not reply.choices[0].logprobs
    assert not any(d.logprobs for m in messages for d in m.deltas)


async def test_stream_puts_each_token_on_one_delta_once():
    """Text deltas carry their tokens; a token whose text is held back (or cut) rides on the next
    delta of its choice, the finish included; top_logprobs=0 keeps no alternatives."""
    backend = FakeTextBackend([
        chunk(["A", "B"], logprobs=[[token("A", -0.1, ("A", -0.1))], [token("B", -0.2)]]),
        chunk(["", ""], n_out=[1, 0], logprobs=[[token("\ufffd", -0.3)], None]),  # text held back
        chunk(["é", ""], ["stop", None], logprobs=[[token("\ufffd", -0.4)], []]),
        chunk(["", ""], ["stop", "length"], n_out=[0, 1], logprobs=[None, [token("!", -0.5)]]),  # cut by a stop
    ])
    async with running_text_service(backend) as target, grpc.aio.insecure_channel(target) as channel:
        messages = [m async for m in pb_grpc.TextGenerationStub(channel).GenerateStream(chat_request(n=2, logprobs=0))]
    deltas = [(d.index, d.text, d.finish_reason, [t.token for t in d.logprobs]) for m in messages for d in m.deltas]
    assert deltas == [
        (0, "A", 0, ["A"]), (1, "B", 0, ["B"]),
        (0, "é", 0, ["\ufffd", "\ufffd"]), (0, "", pb.FINISH_REASON_STOP, []),
        (1, "", pb.FINISH_REASON_LENGTH, ["!"]),
    ]
    assert all(not t.top_logprobs for m in messages for d in m.deltas for t in d.logprobs)


async def test_streamed_tool_call_tokens_cover_every_token_once():
    pieces = ['{"name": "get_', 'weather", "arguments": {"ci', 'ty": "Par', 'is"}}']
    backend = FakeTextBackend(
        [chunk([p], logprobs=[[token(p, -0.1 * i)]]) for i, p in enumerate(pieces)]
        + [chunk([""], ["stop"], n_out=[0], logprobs=[[]])]
    )
    request = tools_request(pb.TOOL_CHOICE_MODE_REQUIRED)
    request.sampling.logprobs = 1
    async with running_text_service(backend) as target, grpc.aio.insecure_channel(target) as channel:
        stub = pb_grpc.TextGenerationStub(channel)
        messages = [m async for m in stub.GenerateStream(request)]
        reply = await stub.Generate(request)
    assert [t.token for m in messages for d in m.deltas for t in d.logprobs] == pieces
    assert reply.choices[0].tool_calls and [t.token for t in reply.choices[0].logprobs] == pieces


@pytest.mark.parametrize(
    "request_, param",
    [
        (chat_request(logprobs=21), "top_logprobs"),
        (pb.GenerateRequest(model=MODEL, prompt="x", sampling=pb.SamplingParameters(logprobs=6)), "logprobs"),
    ],
)
async def test_too_many_logprobs_is_invalid_argument_naming_the_field(request_, param):
    async with running_text_service(FakeTextBackend()) as target, grpc.aio.insecure_channel(target) as channel:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await pb_grpc.TextGenerationStub(channel).Generate(request_)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert reason_and_field(err.value) == ("INVALID_REQUEST", param)
