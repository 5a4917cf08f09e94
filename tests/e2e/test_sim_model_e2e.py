"""The engine simulator (services/text/model_repository/sim) served by the real tritonserver, streamed
through the text service's own Triton backend."""

import asyncio
import importlib.util
import json
import re
import sys
import time
import urllib.request

import numpy as np
import pytest
import tritonclient.grpc.aio as grpcclient
from tritonclient.utils import InferenceServerException

from tests.e2e.one_triton import REPOSITORY, one_triton
from services.common.errors import ContextLengthExceeded, InvalidArgument
from services.text.backend import TritonTextBackend

pytestmark = pytest.mark.e2e

SIM_DIR = REPOSITORY / "sim" / "1"
sys.path.insert(0, str(SIM_DIR))
_spec = importlib.util.spec_from_file_location("sim_engine_e2e", SIM_DIR / "engine.py")
sim = importlib.util.module_from_spec(_spec)
sys.modules[_spec.name] = sim
_spec.loader.exec_module(sim)
import simtext  # noqa: E402  (beside engine.py)

PROMPT = " ".join(f"The {i}th sentence of a long shared system prompt says something." for i in range(120))
METRIC = re.compile(r'^(vllm:\w+)\{model="sim",version="1"\} (\S+)$', re.M)


@pytest.fixture(scope="module")
def triton(tmp_path_factory):
    with one_triton(tmp_path_factory.mktemp("sim"), ["sim"], "sim", ready_s=120) as server:
        yield server


def vllm_metrics(server) -> dict[str, float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{server.metrics_port}/metrics", timeout=5) as reply:
        text = reply.read().decode()
    return {name: float(value) for name, value in METRIC.findall(text)}


def wait_for(predicate, timeout_s=10.0):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"not reached in {timeout_s} s")


async def stream(backend, prompt, sampling):
    chunks = [chunk async for chunk in backend.generate("sim", prompt, sampling, stream=True)]
    n = len(chunks[0].texts)
    texts = ["".join(c.texts[i] for c in chunks) for i in range(n)]
    return chunks, texts


async def test_streams_with_prefix_caching_and_vllm_metrics(triton):
    n_in = len(sim.pieces(PROMPT))
    expected_cached = (n_in - 1) // 16 * 16  # the full blocks within all but the last token
    backend = TritonTextBackend(f"127.0.0.1:{triton.grpc_port}", 60)
    try:
        assert await backend.is_ready("sim")
        sampling = {"max_tokens": 16, "temperature": 0.8, "seed": 11}
        started = time.monotonic()
        cold_chunks, cold_texts = await stream(backend, PROMPT, sampling)
        cold_s = time.monotonic() - started
        warm_chunks, warm_texts = await stream(backend, PROMPT, sampling)
    finally:
        await backend.close()

    assert cold_texts == warm_texts and len(sim.pieces(cold_texts[0])) == 16
    for chunks in (cold_chunks, warm_chunks):
        assert len(chunks) == 16  # one response per step, one token each
        assert all(c.num_input_tokens == n_in for c in chunks)
        assert sum(sum(c.num_output_tokens) for c in chunks) == 16
        assert chunks[-1].finish_reasons == ["length"] and all(c.finish_reasons == [None] for c in chunks[:-1])
    assert {c.num_cached_tokens for c in cold_chunks} == {0}
    assert {c.num_cached_tokens for c in warm_chunks} == {expected_cached}
    assert expected_cached > 0.98 * n_in

    # it sleeps what the GPU would take: a cold prefill and 15 decode steps at least
    cfg = sim.EngineConfig()
    simulated = cfg.step_duration(n_in, n_in) + sum(cfg.step_duration(1, n_in + k) for k in range(1, 16))
    assert 0.95 * simulated < cold_s < simulated + 5

    def settled():
        m = vllm_metrics(triton)
        return m if m.get("vllm:request_success_total") == 2 else None

    m = wait_for(settled)
    assert m["vllm:prompt_tokens_total"] == 2 * n_in
    assert m["vllm:generation_tokens_total"] == 32
    assert m["vllm:prefix_cache_queries_total"] == 2 * n_in
    assert m["vllm:prefix_cache_hits_total"] == expected_cached
    assert m["vllm:num_preemptions_total"] == 0
    assert m["vllm:num_requests_running"] == 0 and m["vllm:num_requests_waiting"] == 0
    assert m["vllm:kv_cache_usage_perc"] == 0.0


async def test_choices_errors_and_cancellation(triton):
    backend = TritonTextBackend(f"127.0.0.1:{triton.grpc_port}", 60)
    try:
        chunks, texts = await stream(backend, "Name three colours.", {"n": 2, "max_tokens": 8, "seed": 3})
        assert texts[0] != texts[1] and all(len(sim.pieces(t)) == 8 for t in texts)
        assert chunks[-1].finish_reasons == ["length", "length"]
        (only,) = [c async for c in backend.generate("sim", "Name three colours.", {"n": 2, "max_tokens": 8,
                                                                                   "seed": 3}, stream=False)]
        assert only.texts == texts

        stop = texts[0].split(" ")[3]
        _, cut = await stream(backend, "Name three colours.", {"max_tokens": 8, "seed": 3, "stop": [" " + stop]})
        assert cut == [texts[0][: texts[0].index(" " + stop)]]

        with pytest.raises(InvalidArgument, match="does not enforce structured output"):
            await stream(backend, "hi", {"structured_outputs": json.dumps({"json": {"type": "object"}})})
        with pytest.raises(ContextLengthExceeded, match="maximum model length of 8192 tokens"):
            await stream(backend, " abcd" * 9000, {})

        # a client that goes away mid-stream: the model stops the sequence and frees its blocks
        generation = backend.generate("sim", "Count forever.", {"max_tokens": 5000}, stream=True)
        await generation.__anext__()
        await generation.__anext__()
        await generation.aclose()
    finally:
        await backend.close()

    def freed():
        m = vllm_metrics(triton)
        return m if m["vllm:num_requests_running"] == 0 and m["vllm:kv_cache_usage_perc"] == 0 else None

    m = wait_for(freed)
    assert m["vllm:generation_tokens_total"] < 1000  # the cancelled one (max_tokens 5000) stopped early


# -- continuation: a choice resumed after the tokens it produced (what a migration sends) ------------

OUTPUTS = ("text_output", "finish_reason", "num_input_tokens", "num_output_tokens", "num_cached_tokens",
           "output_token_ids")


async def infer(client, prompt, sampling, stream, choice_index=None, continuation=None):
    """The responses (each a dict of the outputs' arrays) of one request, sent as tensors straight to
    Triton, the optional inputs only when given."""
    inputs = []

    def add(name, datatype, array):
        tensor = grpcclient.InferInput(name, list(array.shape), datatype)
        tensor.set_data_from_numpy(array)
        inputs.append(tensor)

    add("text_input", "BYTES", np.array([prompt.encode()], dtype=np.object_))
    add("sampling_parameters", "BYTES", np.array([json.dumps(sampling).encode()], dtype=np.object_))
    add("stream", "BOOL", np.array([stream]))
    if choice_index is not None:
        add("choice_index", "INT32", np.array([choice_index], dtype=np.int32))
    if continuation is not None:
        add("continuation_token_ids", "INT32", np.array(continuation, dtype=np.int32))
    done = asyncio.Event()

    async def requests():
        yield {"model_name": "sim", "inputs": inputs, "request_id": "c"}
        await done.wait()  # the stream stays open until the last response

    responses = []
    try:
        async for result, error in client.stream_infer(requests()):
            if error is not None:
                raise error
            responses.append({name: result.as_numpy(name) for name in OUTPUTS})
            if all(r != b"None" for r in responses[-1]["finish_reason"]):
                break
    finally:
        done.set()
    return responses


def choice_of(responses, i):
    """(text, ids, token count, finish reason) of choice i, joined over the responses."""
    text = "".join(r["text_output"][i].decode() for r in responses)
    ids = [int(t) for r in responses for t in r["output_token_ids"][i] if t >= 0]
    count = sum(int(r["num_output_tokens"][i]) for r in responses)
    return text, ids, count, responses[-1]["finish_reason"][i].decode()


def spelled(ids):
    return "".join(simtext.token_text(t) for t in ids)


def check_token_ids(responses, n):
    """output_token_ids: INT32 [n, k], -1 padded, a row per choice as long as its token count; before
    the last response the ids so far spell the text so far."""
    texts, ids = [""] * n, [[] for _ in range(n)]
    for r in responses:
        array, counts = r["output_token_ids"], r["num_output_tokens"]
        assert array.dtype == np.int32 and array.shape == (n, max(counts))
        for i in range(n):
            row = array[i].tolist()
            assert row == row[: counts[i]] + [-1] * (len(row) - counts[i]) and min(row[: counts[i]], default=0) >= 0
            texts[i] += r["text_output"][i].decode()
            ids[i] += row[: counts[i]]
        if any(f == b"None" for f in r["finish_reason"]):
            assert [spelled(x) for x in ids] == texts


async def test_a_choice_continued_from_a_cut_is_the_uninterrupted_one(triton):
    prompt = "Tell the story of a replica that went away."
    n_in = len(sim.pieces(prompt))
    # a stop that never matches but often starts to: text (and its ids) is held back now and then
    sampling = {"n": 2, "max_tokens": 40, "seed": 5, "temperature": 1.0, "stop": [" the zzzz", " of yy"]}
    client = grpcclient.InferenceServerClient(f"127.0.0.1:{triton.grpc_port}")
    try:
        whole = await infer(client, prompt, sampling, stream=True)
        check_token_ids(whole, 2)
        (unary,) = await infer(client, prompt, sampling, stream=False)
        check_token_ids([unary], 2)
        assert unary["output_token_ids"].shape == (2, 40)
        for choice in (0, 1):
            text, ids, count, finish = choice_of(whole, choice)
            assert choice_of([unary], choice) == (text, ids, count, finish)
            assert count == 40 and finish == "length" and spelled(ids) == text
            for cut in (1, 12, len(whole) - 1):  # after that many responses
                before_text, before_ids, before_count, _ = choice_of(whole[:cut], choice)
                rest = {**sampling, "n": 1, "max_tokens": 40 - before_count}
                for stream in (True, False):
                    after = await infer(client, prompt, rest, stream, choice_index=choice, continuation=before_ids)
                    check_token_ids(after, 1)
                    after_text, after_ids, after_count, after_finish = choice_of(after, 0)
                    assert before_text + after_text == text
                    assert before_ids + after_ids == ids
                    assert before_count + after_count == count and after_finish == finish
                    assert {int(r["num_input_tokens"][0]) for r in after} == {n_in}
                    # this server produced the tokens: the prompt's blocks and the continuation's are cached
                    cached = min(n_in, (n_in + len(before_ids) - 1) // 16 * 16)
                    assert {int(r["num_cached_tokens"][0]) for r in after} == {cached}

        # an empty continuation is none; choice_index alone gives that choice's text
        (plain,) = await infer(client, prompt, {**sampling, "n": 1}, False, continuation=[])
        assert choice_of([plain], 0) == choice_of([unary], 0)
        (second,) = await infer(client, prompt, {**sampling, "n": 1}, False, choice_index=1)
        assert choice_of([second], 0) == choice_of([unary], 1)

        with pytest.raises(InferenceServerException, match="invalid argument: continuation_token_ids needs n = 1"):
            await infer(client, prompt, sampling, True, continuation=[1, 2])
        with pytest.raises(InferenceServerException, match="64 is not a token id of the engine simulator"):
            await infer(client, prompt, {"max_tokens": 4}, True, continuation=[1, 64])
        with pytest.raises(InferenceServerException, match="does not enforce structured output"):
            await infer(client, prompt, {"structured_outputs": json.dumps({"json": {}})}, True, continuation=[1])
    finally:
        await client.close()


async def test_a_stop_sequence_across_the_cut_is_found(triton):
    prompt = "Where does it stop?"
    client = grpcclient.InferenceServerClient(f"127.0.0.1:{triton.grpc_port}")
    try:
        (free,) = await infer(client, prompt, {"max_tokens": 30, "seed": 8}, False)
        words = free["text_output"][0].decode().split(" ")[1:]
        stop = next(f" {a} {b}" for a, b in zip(words[8:], words[9:]))
        sampling = {"max_tokens": 30, "seed": 8, "stop": [stop]}
        whole = await infer(client, prompt, sampling, True)
        check_token_ids(whole, 1)
        text, ids, count, finish = choice_of(whole, 0)
        assert finish == "stop" and text == free["text_output"][0].decode().split(stop)[0]
        assert len(whole[-1]["output_token_ids"][0]) >= 2  # the held-back start of the stop, and its end
        for cut in range(1, len(whole)):
            before_text, before_ids, before_count, _ = choice_of(whole[:cut], 0)
            after = await infer(client, prompt, {**sampling, "max_tokens": 30 - before_count}, True,
                                continuation=before_ids)
            after_text, after_ids, after_count, after_finish = choice_of(after, 0)
            assert (before_text + after_text, before_ids + after_ids, before_count + after_count, after_finish) == (
                text, ids, count, finish)
    finally:
        await client.close()


async def test_parameters_are_overridden_per_load(triton):
    base = f"http://127.0.0.1:{triton.http_port}/v2"
    with urllib.request.urlopen(f"{base}/models/sim/config", timeout=5) as reply:
        config = json.loads(reply.read())
    config["parameters"]["max_model_len"] = {"string_value": "1024"}
    config["parameters"]["time_scale"] = {"string_value": "0.1"}
    body = json.dumps({"parameters": {"config": json.dumps(config)}}).encode()
    request = urllib.request.Request(f"{base}/repository/models/sim/load", data=body, method="POST")
    with urllib.request.urlopen(request, timeout=60) as reply:
        assert reply.status == 200
    with urllib.request.urlopen(f"{base}/models/sim/config", timeout=5) as reply:
        assert json.loads(reply.read())["parameters"]["max_model_len"]["string_value"] == "1024"

    backend = TritonTextBackend(f"127.0.0.1:{triton.grpc_port}", 60)
    try:
        with pytest.raises(ContextLengthExceeded, match="maximum model length of 1024 tokens"):
            await stream(backend, " abcd" * 2000, {})
        _, texts = await stream(backend, "still streaming", {"max_tokens": 4})
        assert len(sim.pieces(texts[0])) == 4
    finally:
        await backend.close()
