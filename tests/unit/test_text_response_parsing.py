"""The text backend reads Triton's streamed responses straight from the protobuf: the same values as
tritonclient's own InferResult, for raw buffers and typed contents alike."""

import numpy as np
import pytest
import tritonclient.grpc.aio as triton
from tritonclient.grpc import service_pb2
from tritonclient.utils import serialize_byte_tensor

from services.text.backend import parse_response


def _bytes_raw(values: list[str]) -> bytes:
    return serialize_byte_tensor(np.array([v.encode() for v in values], dtype=np.object_)).item()


def _raw_response(texts, reasons, num_in, num_out, count_type=np.uint32):
    response = service_pb2.ModelInferResponse(model_name="m")
    count_name = "UINT32" if count_type == np.uint32 else "INT64"
    tensors = [
        ("text_output", "BYTES", len(texts), _bytes_raw(texts)),
        ("finish_reason", "BYTES", len(reasons), _bytes_raw(reasons)),
        ("num_input_tokens", count_name, 1, np.array([num_in], count_type).tobytes()),
        ("num_output_tokens", count_name, len(num_out), np.array(num_out, count_type).tobytes()),
    ]
    for name, datatype, count, raw in tensors:
        response.outputs.add(name=name, datatype=datatype, shape=[count])
        response.raw_output_contents.append(raw)
    return response


def _reference(response):
    """What tritonclient's InferResult.as_numpy makes of the same response."""
    result = triton.InferResult(response)
    texts = [v.decode() for v in result.as_numpy("text_output").reshape(-1)]
    reasons = [v.decode() for v in result.as_numpy("finish_reason").reshape(-1)]
    return texts, reasons, int(result.as_numpy("num_input_tokens")[0]), result.as_numpy("num_output_tokens").tolist()


@pytest.mark.parametrize("count_type", [np.uint32, np.int64])
def test_raw_buffers_parse_like_tritonclient(count_type):
    response = _raw_response(["Paris", " é\n中文", ""], ["None", "stop", ""], 17, [1, 2, 0], count_type)
    chunk = parse_response(response)
    texts, reasons, num_in, num_out = _reference(response)
    assert chunk.texts == texts == ["Paris", " é\n中文", ""]
    assert chunk.finish_reasons == [None, "stop", None]
    assert reasons == ["None", "stop", ""]
    assert chunk.num_input_tokens == num_in == 17
    assert chunk.num_output_tokens == num_out == [1, 2, 0]


def test_typed_contents_parse_too():
    response = service_pb2.ModelInferResponse(model_name="m")
    response.outputs.add(name="text_output", datatype="BYTES").contents.bytes_contents.extend([b"hi", b"yo"])
    response.outputs.add(name="finish_reason", datatype="BYTES").contents.bytes_contents.extend([b"length", b"None"])
    response.outputs.add(name="num_input_tokens", datatype="UINT32").contents.uint_contents.append(3)
    response.outputs.add(name="num_output_tokens", datatype="UINT32").contents.uint_contents.extend([4, 5])
    chunk = parse_response(response)
    assert (chunk.texts, chunk.finish_reasons) == (["hi", "yo"], ["length", None])
    assert (chunk.num_input_tokens, chunk.num_output_tokens) == (3, [4, 5])


def test_a_response_without_counts_or_reasons():
    response = service_pb2.ModelInferResponse(model_name="m")
    response.outputs.add(name="text_output", datatype="BYTES", shape=[1])
    response.raw_output_contents.append(_bytes_raw(["tok"]))
    chunk = parse_response(response)
    assert chunk.texts == ["tok"] and chunk.finish_reasons == [None]
    assert chunk.num_input_tokens is None and chunk.num_output_tokens == []
