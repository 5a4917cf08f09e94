"""Triton requests and responses in plain protobuf (services.common.triton_tensors): byte for byte what
tritonclient builds, and the same values as its InferResult reads, for raw buffers and typed contents."""

import numpy as np
import pytest
import tritonclient.grpc.aio as triton
from tritonclient.grpc import service_pb2
from tritonclient.utils import np_to_triton_dtype, serialize_byte_tensor

from tritonclient.grpc._utils import _get_inference_request

from services.common import triton_tensors
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


def _tritonclient_request(inputs):
    tensors = []
    for name, array in inputs:
        tensor = triton.InferInput(name, list(array.shape), np_to_triton_dtype(array.dtype))
        tensor.set_data_from_numpy(array)
        tensors.append(tensor)
    return _get_inference_request(model_name="m", inputs=tensors, model_version="", request_id="", outputs=None,
                                  sequence_id=0, sequence_start=False, sequence_end=False, priority=0,
                                  timeout=None, parameters=None)


def test_requests_match_tritonclient_byte_for_byte():
    texts = ["hello", "wörld 中文", ""]
    ours = triton_tensors.new_request("m")
    triton_tensors.add_bytes(ours, "text", [t.encode() for t in texts], [3, 1])
    triton_tensors.add_array(ours, "stream", np.array([True]))
    triton_tensors.add_array(ours, "token_ids", np.array([[101, 7592, 102]], dtype=np.int32))
    reference = _tritonclient_request([
        ("text", np.array([[t.encode()] for t in texts], dtype=np.object_)),
        ("stream", np.array([True])),
        ("token_ids", np.array([[101, 7592, 102]], dtype=np.int32)),
    ])
    assert ours.id  # a fresh request id for Triton's logs and traces
    ours.ClearField("id")
    assert list(ours.raw_input_contents) == list(reference.raw_input_contents)
    assert [(i.name, i.datatype, list(i.shape)) for i in ours.inputs] == [
        (i.name, i.datatype, list(i.shape)) for i in reference.inputs
    ]


def test_float_matrices_come_back_in_shape():
    vectors = np.arange(6, dtype=np.float32).reshape(2, 3) / 7
    response = service_pb2.ModelInferResponse(model_name="m")
    response.outputs.add(name="embedding", datatype="FP32", shape=[2, 3])
    response.raw_output_contents.append(vectors.tobytes())
    response.outputs.add(name="num_tokens", datatype="UINT32", shape=[2, 1])
    response.raw_output_contents.append(np.array([[4], [9]], dtype=np.uint32).tobytes())
    values = triton_tensors.outputs(response)
    np.testing.assert_array_equal(values["embedding"], triton.InferResult(response).as_numpy("embedding"))
    assert values["embedding"].shape == (2, 3) and values["num_tokens"].reshape(-1).tolist() == [4, 9]


NUMERIC = {"BOOL": np.bool_, "INT8": np.int8, "INT16": np.int16, "INT32": np.int32, "INT64": np.int64,
           "UINT8": np.uint8, "UINT16": np.uint16, "UINT32": np.uint32, "UINT64": np.uint64, "FP16": np.float16,
           "FP32": np.float32, "FP64": np.float64}
TYPED = {"BOOL": "bool_contents", "INT8": "int_contents", "INT16": "int_contents", "INT32": "int_contents",
         "INT64": "int64_contents", "UINT8": "uint_contents", "UINT16": "uint_contents", "UINT32": "uint_contents",
         "UINT64": "uint64_contents", "FP32": "fp32_contents", "FP64": "fp64_contents"}


@pytest.mark.parametrize("datatype", list(NUMERIC))
@pytest.mark.parametrize("shape", [[1], [3], [2, 3], [0]])
def test_flat_outputs_are_outputs_flattened(datatype, shape):
    """The numpy-free reader of the per-token path gives exactly what outputs() gives, flattened."""
    rng = np.random.default_rng(len(shape) + shape[0])
    dtype = NUMERIC[datatype]
    if dtype is np.bool_:
        array = rng.integers(0, 2, shape).astype(np.bool_)
    elif np.issubdtype(dtype, np.integer):
        info = np.iinfo(dtype)
        array = rng.integers(info.min, info.max, shape, dtype=dtype, endpoint=True)
    else:
        array = (rng.standard_normal(shape) * 1e3).astype(dtype)
    raw = service_pb2.ModelInferResponse(model_name="m")
    raw.outputs.add(name="x", datatype=datatype, shape=shape)
    raw.raw_output_contents.append(array.astype(array.dtype.newbyteorder("<")).tobytes())
    raw.outputs.add(name="t", datatype="BYTES", shape=[2])
    raw.raw_output_contents.append(_bytes_raw(["é中", ""]))
    flat = triton_tensors.flat_outputs(raw)
    assert flat["x"] == triton_tensors.outputs(raw)["x"].reshape(-1).tolist() == array.reshape(-1).tolist()
    assert flat["t"] == ["é中", ""]
    if datatype in TYPED:
        typed = service_pb2.ModelInferResponse(model_name="m")
        getattr(typed.outputs.add(name="x", datatype=datatype, shape=shape).contents, TYPED[datatype]).extend(
            array.reshape(-1).tolist())
        typed.outputs.add(name="t", datatype="BYTES").contents.bytes_contents.extend(["é中".encode(), b""])
        assert triton_tensors.flat_outputs(typed) == flat


def test_token_ids_rows_and_logprobs_of_a_response():
    """output_token_ids [n, k], -1 padded, come back as each choice's ids; all-null logprobs as None."""
    response = _raw_response([" a", " bc"], ["None", "stop"], 12, [1, 2])
    response.outputs.add(name="output_token_ids", datatype="INT32", shape=[2, 2])
    response.raw_output_contents.append(np.array([[5, -1], [7, 8]], "<i4").tobytes())
    response.outputs.add(name="num_cached_tokens", datatype="UINT32", shape=[1])
    response.raw_output_contents.append(np.array([8], "<u4").tobytes())
    response.outputs.add(name="logprobs", datatype="BYTES", shape=[2])
    response.raw_output_contents.append(_bytes_raw(["null", "null"]))
    chunk = parse_response(response)
    assert chunk.token_ids == [[5], [7, 8]] and chunk.num_cached_tokens == 8 and chunk.logprobs is None
    assert (chunk.texts, chunk.finish_reasons, chunk.num_input_tokens, chunk.num_output_tokens) == (
        [" a", " bc"], [None, "stop"], 12, [1, 2])
