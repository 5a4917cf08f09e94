"""A generation whose Triton replica dies goes on elsewhere (services.text.migration, TritonTextBackend),
against in-process gRPC servers that speak the contract and die mid-stream on cue."""

from __future__ import annotations

import json
import random

import grpc
import numpy as np
import pytest
from tritonclient.grpc import service_pb2, service_pb2_grpc

from services.common import triton_tensors
from services.common.errors import BackendUnavailable
from services.common.metrics import MIGRATIONS
from services.common.pickers import RoundRobin
from services.text.backend import TritonTextBackend
from tests.unit.text_service_fixture import serving


def _inputs(request) -> dict:
    values = {}
    for i, tensor in enumerate(request.inputs):
        raw = request.raw_input_contents[i]
        if tensor.datatype == "BYTES":
            values[tensor.name] = raw[4:].decode()
        elif tensor.datatype == "INT32":
            values[tensor.name] = np.frombuffer(raw, dtype="<i4").tolist()
    return values


def _output(response, name: str, datatype: str, shape: list[int], raw: bytes) -> None:
    response.outputs.add(name=name, datatype=datatype, shape=shape)
    response.raw_output_contents.append(raw)


class ContractTriton(service_pb2_grpc.GRPCInferenceServiceServicer):
    """Streams token k of choice c as " c{c}t{k}" (id 1000 c + k), choices one after the other like the
    CPU model; dies (UNAVAILABLE) after `die_after` tokens of a request; `ids`: reports output_token_ids."""

    def __init__(self, die_after: int | None = None, ids: bool = True) -> None:
        self.die_after, self.ids = die_after, ids
        self.requests: list[dict] = []

    async def ModelReady(self, request, context):
        return service_pb2.ModelReadyResponse(ready=True)

    async def ModelStreamInfer(self, request_iterator, context):
        async for request in request_iterator:
            values = _inputs(request)
            self.requests.append(values)
            sampling = json.loads(values["sampling_parameters"])
            n, max_tokens = sampling["n"], sampling["max_tokens"]
            done = len(values.get("continuation_token_ids", []))
            choices = [values.get("choice_index", [0])[0]] if n == 1 else list(range(n))
            sent = 0
            for row, choice in enumerate(choices):
                for k in range(done, done + max_tokens):
                    if self.die_after is not None and sent == self.die_after:
                        await context.abort(grpc.StatusCode.UNAVAILABLE, "Socket closed")
                    sent += 1
                    yield self._response(n, row, f" c{choice}t{k}", 1000 * choice + k, k == done + max_tokens - 1)
            return

    def _response(self, n: int, row: int, text: str, token: int, last: bool):
        response = service_pb2.ModelInferResponse(model_name="m")
        texts, reasons, counts = [b""] * n, [b"None"] * n, [0] * n
        texts[row], counts[row] = text.encode(), 1
        if last:
            reasons[row] = b"length"
        _output(response, "text_output", "BYTES", [n], triton_tensors.encode_bytes(texts))
        _output(response, "finish_reason", "BYTES", [n], triton_tensors.encode_bytes(reasons))
        _output(response, "num_input_tokens", "UINT32", [1], np.array([7], "<u4").tobytes())
        _output(response, "num_output_tokens", "UINT32", [n], np.array(counts, "<u4").tobytes())
        if self.ids:
            ids = np.full((n, 1), -1, dtype="<i4")
            ids[row, 0] = token
            _output(response, "output_token_ids", "INT32", [n, 1], ids.tobytes())
        return service_pb2.ModelStreamInferResponse(infer_response=response)


def triton(servicer):
    return serving(lambda server: service_pb2_grpc.add_GRPCInferenceServiceServicer_to_server(servicer, server))


def backend_for(*addresses: str, **options) -> TritonTextBackend:
    backend = TritonTextBackend(",".join(addresses), 10.0, picker=RoundRobin(random.Random(0)), **options)
    backend.picker._turn = iter(range(100))  # the first replica first
    return backend


async def generate(backend, sampling, stream=True) -> tuple[list[str], list[int], list]:
    texts, counts, reasons = [""] * sampling["n"], [0] * sampling["n"], [None] * sampling["n"]
    async for chunk in backend.generate("m", "prompt", sampling, stream):
        for i, text in enumerate(chunk.texts):
            texts[i] += text
            counts[i] += chunk.num_output_tokens[i]
            reasons[i] = chunk.finish_reasons[i] or reasons[i]
    return texts, counts, reasons


def expected(choice: int, tokens: int) -> str:
    return "".join(f" c{choice}t{k}" for k in range(tokens))


def moved() -> float:
    return MIGRATIONS.labels("m", "moved")._value.get()


async def test_a_stream_goes_on_elsewhere_token_for_token():
    dying, healthy = ContractTriton(die_after=5), ContractTriton()
    async with triton(dying) as a, triton(healthy) as b:
        backend = backend_for(a, b)
        before = moved()
        try:
            texts, counts, reasons = await generate(backend, {"n": 1, "max_tokens": 12, "seed": 3})
        finally:
            await backend.close()
    assert texts == [expected(0, 12)] and counts == [12] and reasons == ["length"]
    continued = healthy.requests[0]
    assert continued["continuation_token_ids"] == [0, 1, 2, 3, 4] and continued["choice_index"] == [0]
    assert json.loads(continued["sampling_parameters"]) == {"n": 1, "max_tokens": 7, "seed": 3}
    assert continued["text_input"] == "prompt"  # by ids: the prompt as it was
    assert moved() == before + 1
    assert [r.address for r in backend.replicas.candidates("m")] == [b]  # the dead one is ejected


async def test_every_unfinished_choice_is_continued_once():
    dying, healthy = ContractTriton(die_after=8), ContractTriton()  # choice 0 done (5), choice 1 at 3
    async with triton(dying) as a, triton(healthy) as b:
        backend = backend_for(a, b)
        try:
            texts, counts, reasons = await generate(backend, {"n": 3, "max_tokens": 5})
        finally:
            await backend.close()
    assert texts == [expected(c, 5) for c in range(3)] and counts == [5, 5, 5] and reasons == ["length"] * 3
    assert [(r["choice_index"], r["continuation_token_ids"]) for r in healthy.requests] == [
        ([1], [1000, 1001, 1002]), ([2], []),
    ]


async def test_without_token_ids_the_text_so_far_is_the_continuation():
    dying, healthy = ContractTriton(die_after=4, ids=False), ContractTriton(ids=False)
    async with triton(dying) as a, triton(healthy) as b:
        backend = backend_for(a, b)
        try:
            texts, counts, _ = await generate(backend, {"n": 1, "max_tokens": 10})
        finally:
            await backend.close()
    continued = healthy.requests[0]
    assert continued["text_input"] == "prompt" + expected(0, 4)  # Triton's vLLM backend takes no ids
    assert "continuation_token_ids" not in continued and "choice_index" not in continued
    assert counts == [10] and texts[0].startswith(expected(0, 4))


async def test_a_grammar_without_token_ids_is_not_continued():
    dying, healthy = ContractTriton(die_after=4, ids=False), ContractTriton(ids=False)
    async with triton(dying) as a, triton(healthy) as b:
        backend = backend_for(a, b)
        try:
            with pytest.raises(BackendUnavailable):
                await generate(backend, {"n": 1, "max_tokens": 10, "structured_outputs": {"json": {}}})
        finally:
            await backend.close()
    assert healthy.requests == []


@pytest.mark.parametrize("limit", [0, 1])
async def test_migrations_are_bounded(limit):
    first, second, third = ContractTriton(die_after=3), ContractTriton(die_after=2), ContractTriton(die_after=2)
    async with triton(first) as a, triton(second) as b, triton(third) as c:
        backend = backend_for(a, b, c, max_migrations=limit)
        try:
            with pytest.raises(BackendUnavailable):
                await generate(backend, {"n": 1, "max_tokens": 10})
        finally:
            await backend.close()
    assert len(second.requests) + len(third.requests) == limit


async def test_with_one_replica_the_error_stands():
    async with triton(ContractTriton(die_after=3)) as a:
        backend = backend_for(a)
        try:
            chunks = []
            with pytest.raises(BackendUnavailable):
                async for chunk in backend.generate("m", "prompt", {"n": 1, "max_tokens": 10}, True):
                    chunks.append(chunk)
        finally:
            await backend.close()
    assert len(chunks) == 3  # what was produced had gone out


async def test_a_failure_before_any_token_is_a_plain_retry():
    dying, healthy = ContractTriton(die_after=0), ContractTriton()
    async with triton(dying) as a, triton(healthy) as b:
        backend = backend_for(a, b)
        before = moved()
        try:
            texts, _, _ = await generate(backend, {"n": 2, "max_tokens": 3}, stream=False)
        finally:
            await backend.close()
    assert texts == [expected(0, 3), expected(1, 3)] and moved() == before
    assert "continuation_token_ids" not in healthy.requests[0]
