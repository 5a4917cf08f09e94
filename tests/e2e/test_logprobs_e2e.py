"""logprobs end to end: the official openai SDK against the real stack (Triton serving SmolLM2).

The values are the model's own: a greedy token is the most likely of its step and leads its
top list, the probabilities of a step's best tokens sum to at most 1, every generated token has
exactly one entry (streamed or not), and the tokens spell the answer.
"""

import math

import openai
import pytest

from tests.e2e.conftest import MODEL

pytestmark = pytest.mark.e2e
FRANCE = [{"role": "user", "content": "What is the capital of France?"}]
EPS = 1e-4


def check_step(token, logprob, top: list[tuple[str, float]], k: int, greedy: bool) -> None:
    """One position: its best k tokens, best first, with probabilities summing to at most 1."""
    assert len(top) == k  # a 49152-token vocabulary always has k candidates
    values = [lp for _, lp in top]
    assert values == sorted(values, reverse=True)
    assert all(-9999.0 <= v <= 0.0 for v in values) and logprob <= 0.0
    assert sum(math.exp(v) for v in values) <= 1 + EPS
    if greedy:
        assert top[0] == (token, pytest.approx(logprob, abs=EPS)), (token, logprob, top)
    elif k and logprob >= values[-1] + EPS:  # among the best k: in its own list
        assert (token, pytest.approx(logprob, abs=EPS)) in top


def check_chat_tokens(content, k: int, greedy: bool = True) -> None:
    for t in content:
        assert t.bytes == list(t.token.encode("utf-8"))
        assert all(e.bytes == list(e.token.encode("utf-8")) for e in t.top_logprobs)
        check_step(t.token, t.logprob, [(e.token, e.logprob) for e in t.top_logprobs], k, greedy)


def test_chat_greedy_logprobs_unary_and_stream(client):
    reply = client.chat.completions.create(
        model=MODEL, messages=FRANCE, temperature=0, max_tokens=24, logprobs=True, top_logprobs=3
    )
    choice = reply.choices[0]
    content = choice.logprobs.content
    assert choice.logprobs.refusal is None
    assert len(content) == reply.usage.completion_tokens  # every token, once
    assert "".join(t.token for t in content) == choice.message.content and "Paris" in choice.message.content
    check_chat_tokens(content, k=3)

    stream = client.chat.completions.create(
        model=MODEL, messages=FRANCE, temperature=0, max_tokens=24, logprobs=True, top_logprobs=3, stream=True,
        stream_options={"include_usage": True},
    )
    text, streamed, usage = "", [], None
    for chunk in stream:
        usage = chunk.usage or usage
        for c in chunk.choices:
            text += c.delta.content or ""
            if c.logprobs is not None:
                streamed.extend(c.logprobs.content or [])
    assert len(streamed) == usage.completion_tokens
    assert "".join(t.token for t in streamed) == text == choice.message.content
    assert [t.token for t in streamed] == [t.token for t in content]
    assert [t.logprob for t in streamed] == pytest.approx([t.logprob for t in content], abs=1e-3)
    check_chat_tokens(streamed, k=3)


def test_chat_sampled_choices_stream_their_own_tokens(client):
    stream = client.chat.completions.create(
        model=MODEL, messages=FRANCE, temperature=1.0, seed=7, n=2, max_tokens=12, logprobs=True, top_logprobs=5,
        stream=True,
    )
    texts, tokens = {0: "", 1: ""}, {0: [], 1: []}
    for chunk in stream:
        for c in chunk.choices:
            texts[c.index] += c.delta.content or ""
            if c.logprobs is not None:
                tokens[c.index].extend(c.logprobs.content or [])
    for i in (0, 1):
        assert tokens[i] and "".join(t.token for t in tokens[i]) == texts[i]
        check_chat_tokens(tokens[i], k=5, greedy=False)


def test_chat_logprobs_without_top_and_with_a_json_answer(client):
    reply = client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "Give me a JSON object with a name."}], temperature=0,
        max_tokens=20, logprobs=True, response_format={"type": "json_object"},
    )
    content = reply.choices[0].logprobs.content
    assert len(content) == reply.usage.completion_tokens
    assert "".join(t.token for t in content) == reply.choices[0].message.content
    assert all(t.top_logprobs == [] for t in content)  # logprobs without top_logprobs: none of the others


def test_chat_without_logprobs_has_none(client):
    reply = client.chat.completions.create(model=MODEL, messages=FRANCE, temperature=0, max_tokens=4)
    assert reply.choices[0].logprobs is None


def check_legacy(choice, k: int, completion_tokens: int) -> None:
    lp = choice.logprobs
    assert len(lp.tokens) == len(lp.token_logprobs) == len(lp.top_logprobs) == len(lp.text_offset) == completion_tokens
    assert "".join(lp.tokens) == choice.text
    offset = 0
    for token, logprob, top, at in zip(lp.tokens, lp.token_logprobs, lp.top_logprobs, lp.text_offset):
        assert at == offset and choice.text[at:at + len(token)] == token
        offset += len(token)
        assert top[token] == pytest.approx(logprob, abs=EPS)  # the sampled token, always
        assert k <= len(top) <= k + 1
        assert logprob == pytest.approx(max(top.values()), abs=EPS)  # greedy: the best of its step
        assert sum(math.exp(v) for v in top.values()) <= 1 + EPS


def test_completions_legacy_logprobs_unary_and_stream(client):
    prompt = "The capital of France is"
    reply = client.completions.create(model=MODEL, prompt=prompt, temperature=0, max_tokens=10, logprobs=2)
    choice = reply.choices[0]
    check_legacy(choice, k=2, completion_tokens=reply.usage.completion_tokens)

    tokens, offsets, text = [], [], ""
    for chunk in client.completions.create(model=MODEL, prompt=prompt, temperature=0, max_tokens=10, logprobs=2,
                                           stream=True):
        for c in chunk.choices:
            text += c.text
            tokens += c.logprobs.tokens
            offsets += c.logprobs.text_offset
    assert (text, tokens, offsets) == (choice.text, choice.logprobs.tokens, choice.logprobs.text_offset)


@pytest.mark.parametrize(
    "call, param",
    [
        (lambda c: c.chat.completions.create(model=MODEL, messages=FRANCE, logprobs=True, top_logprobs=21),
         "top_logprobs"),
        (lambda c: c.chat.completions.create(model=MODEL, messages=FRANCE, top_logprobs=2), "top_logprobs"),
        (lambda c: c.completions.create(model=MODEL, prompt="x", logprobs=6), "logprobs"),
        (lambda c: c.completions.create(model=MODEL, prompt="x", logprobs=1, echo=True), "echo"),
    ],
)
def test_logprobs_out_of_bounds_are_400(client, call, param):
    with pytest.raises(openai.BadRequestError) as err:
        call(client)
    assert err.value.body["param"] == param
