"""facade.sse.ChunkEncoder: every event byte for byte what `b"data: " + orjson.dumps(chunk) + b"\\n\\n"`
writes, for text choices (the templated path) and for any other choice (tool calls, logprobs, finish)."""

import json

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from facade.api.chat import handler as chat
from facade.api.completions import handler as completions
from facade.sse import _MARK, ChunkEncoder

TRICKY = [
    "", " Paris", 'say "hi"', "back\\slash", "tab\there", "new\nline\r\n", "\x00\x01\x1f\x7f", "\u2028\u2029",
    "é中文", "🦙 emoji", "</script>", "{\"name\": \"get\"", "\ud7ff\ue000\uffff", "a" * 5000, "\\u0041", "'single'",
]


def bases():
    base = {"id": "chatcmpl-0123", "object": "chat.completion.chunk", "created": 1_700_000_000,
            "model": "hubmesh/sim-llama-3-8b", "system_fingerprint": "fp_hubmesh_0_1"}
    yield base
    yield {**base, "usage": None}  # include_usage: null on every chunk but the last
    yield {**base, "model": 'odd "model" \\ 中文 \x00\n'}
    yield {"id": "cmpl-1", "object": "text_completion", "created": 1, "model": "m"}


def reference(base, choices) -> bytes:
    """What the façade wrote before: the whole chunk dumped."""
    return b"data: " + orjson.dumps({**base, "choices": choices}) + b"\n\n"


@pytest.mark.parametrize("text_choice", [chat._text_choice, completions._text_choice])
@pytest.mark.parametrize("base", list(bases()))
def test_text_choices_are_the_dumped_chunk(base, text_choice):
    encoder = ChunkEncoder(base, text_choice)
    for text in TRICKY:
        for index in (0, 1, 7, 127):
            assert encoder.texts([(index, text)]) == reference(base, [text_choice(index, text)])
    several = [(i, text) for i, text in enumerate(TRICKY)]
    event = encoder.texts(several)
    assert event == reference(base, [text_choice(i, t) for i, t in several])
    assert json.loads(event[6:])["choices"][3] == text_choice(3, TRICKY[3])


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 200), st.text()), min_size=1, max_size=4), st.text())
def test_any_text_and_model(items, model):
    base = {"id": "chatcmpl-x", "object": "chat.completion.chunk", "created": 2, "model": model,
            "system_fingerprint": "fp", "usage": None}
    items = [(i, t.encode("utf-8", "replace").decode("utf-8")) for i, t in items]  # protobuf strings are UTF-8
    expected = reference(base, [chat._text_choice(i, t) for i, t in items])
    assert (ChunkEncoder(base, chat._text_choice).texts(items) or ChunkEncoder(base).chunk(
        [chat._text_choice(i, t) for i, t in items])) == expected


def test_other_choices_are_dumped():
    base = next(bases())
    encoder = ChunkEncoder(base, chat._text_choice)
    calls = [{"index": 0, "delta": {"tool_calls": [{"index": 0, "id": "call_1", "type": "function",
                                                    "function": {"name": "get_weather", "arguments": ""}}]},
              "logprobs": None, "finish_reason": None}]
    logprobs = [{"index": 0, "delta": {"content": "Hi"}, "finish_reason": None, "logprobs": {
        "content": [{"token": "Hi", "logprob": -0.25, "bytes": [72, 105], "top_logprobs": []}], "refusal": None}}]
    finish = [{"index": 2, "delta": {}, "logprobs": None, "finish_reason": "length"}]
    for choices in (calls, logprobs, finish, []):
        assert encoder.chunk(choices) == reference(base, choices)


def test_a_model_id_holding_the_mark_falls_back_to_dumps():
    near = {**next(bases()), "model": "x" + _MARK}  # contains it, but its JSON is not the mark's: encoded
    assert ChunkEncoder(near, chat._text_choice).texts([(0, "hi")]) == reference(near, [chat._text_choice(0, "hi")])
    base = {**next(bases()), "model": _MARK}
    encoder = ChunkEncoder(base, chat._text_choice)
    assert encoder.texts([(0, "hi")]) is None  # the caller dumps the chunk instead
    assert encoder.chunk([chat._text_choice(0, "hi")]) == reference(base, [chat._text_choice(0, "hi")])
    assert ChunkEncoder(next(bases())).texts([(0, "hi")]) is None  # no template given: no encoded texts


async def test_streams_through_the_facade_are_the_dumped_chunks(aiohttp_client, services):
    """Chat (n=2) and completions streams of tricky texts: every event is exactly the compact dump of
    what it holds, and holds the chunk the old path built."""
    from tests.fakes import FakeTextBackend, chunk
    from tests.unit.test_facade_text import AUTH, chat_body, client_for

    pieces = [chunk([t, t[::-1]]) for t in TRICKY if t] + [chunk(["", ""], ["stop", "length"], n_out=[0, 0])]
    client = await client_for(aiohttp_client, services, FakeTextBackend(pieces))
    for path, body, text_choice in (
        ("/v1/chat/completions", chat_body(n=2, stream=True, stream_options={"include_usage": True}), chat._text_choice),
        ("/v1/completions", {"model": chat_body()["model"], "prompt": "x", "n": 2, "stream": True},
         completions._text_choice),
    ):
        raw = await (await client.post(path, json=body, headers=AUTH)).read()
        events = raw.split(b"\n\n")
        assert events[-2:] == [b"data: [DONE]", b""]
        chunks = []
        for event in events[:-2]:
            assert event.startswith(b"data: ")
            value = orjson.loads(event[6:])
            assert event[6:] == orjson.dumps(value)  # compact, and key order as built
            chunks.append(value)
        texts = [c["choices"] for c in chunks if c["choices"] and "role" not in c["choices"][0].get("delta", {})
                 and not c["choices"][0]["finish_reason"]]
        expected = [[text_choice(0, t), text_choice(1, t[::-1])] for t in TRICKY if t]
        assert orjson.dumps(texts) == orjson.dumps(expected)  # values, and the order of every key

    # completions with two prompts: the second stream's choices are numbered after the first's
    body = {"model": chat_body()["model"], "prompt": ["x", "y"], "n": 2, "stream": True}
    raw = await (await client.post("/v1/completions", json=body, headers=AUTH)).read()
    chunks = [orjson.loads(e[6:]) for e in raw.split(b"\n\n")[:-2]]
    texts = [c["choices"] for c in chunks if not c["choices"][0]["finish_reason"]]
    expected = [[completions._text_choice(offset, t), completions._text_choice(offset + 1, t[::-1])]
                for offset in (0, 2) for t in TRICKY if t]
    assert orjson.dumps(texts) == orjson.dumps(expected)
