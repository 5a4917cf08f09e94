"""Triton inference requests and responses in plain protobuf, for the per-request paths of the services.

tritonclient's InferInput/InferResult wrap every tensor in numpy objects and helper classes; on a
path that runs for every request (and, when streaming, every token) the services build
`ModelInferRequest`s and read `ModelInferResponse`s directly. Raw buffers follow Triton's gRPC
protocol: numbers little-endian in row-major order, BOOL one byte each, BYTES elements each
preceded by a 4-byte little-endian length.
"""

from __future__ import annotations

import math
import struct
import uuid
from collections.abc import Sequence

import numpy as np
from tritonclient.grpc import service_pb2
from tritonclient.utils import np_to_triton_dtype, triton_to_np_dtype

# each numeric datatype: its little-endian numpy dtype, and where its elements sit when a response
# carries typed contents instead of raw buffers (worked out once: this runs for every streamed token)
_NUMERIC = {
    datatype: (np.dtype(triton_to_np_dtype(datatype)).newbyteorder("<"), field)
    for datatype, field in (
        ("BOOL", "bool_contents"), ("INT8", "int_contents"), ("INT16", "int_contents"), ("INT32", "int_contents"),
        ("INT64", "int64_contents"), ("UINT8", "uint_contents"), ("UINT16", "uint_contents"),
        ("UINT32", "uint_contents"), ("UINT64", "uint64_contents"), ("FP16", None), ("FP32", "fp32_contents"),
        ("FP64", "fp64_contents"),
    )
}


def new_request(model: str) -> service_pb2.ModelInferRequest:
    return service_pb2.ModelInferRequest(model_name=model, id=uuid.uuid4().hex)


def encode_bytes(values: Sequence[bytes]) -> bytes:
    """The raw buffer of a BYTES tensor: each element preceded by its 4-byte little-endian length."""
    return b"".join(struct.pack("<I", len(v)) + v for v in values)


def add_bytes(request: service_pb2.ModelInferRequest, name: str, values: Sequence[bytes], shape: Sequence[int]) -> None:
    """A BYTES input of `values` (row-major) with `shape`."""
    request.inputs.add(name=name, datatype="BYTES", shape=shape)
    request.raw_input_contents.append(encode_bytes(values))


def add_array(request: service_pb2.ModelInferRequest, name: str, array: np.ndarray) -> None:
    """A numeric or BOOL input from a numpy array (its dtype and shape)."""
    request.inputs.add(name=name, datatype=np_to_triton_dtype(array.dtype), shape=array.shape)
    request.raw_input_contents.append(array.astype(array.dtype.newbyteorder("<"), copy=False).tobytes())


def add_flag(request: service_pb2.ModelInferRequest, name: str, value: bool) -> None:
    """A one-element BOOL input (one byte)."""
    request.inputs.add(name=name, datatype="BOOL", shape=[1])
    request.raw_input_contents.append(b"\x01" if value else b"\x00")


_LENGTH = struct.Struct("<I")
# each numeric datatype's struct code (little-endian, standard sizes), for flat_outputs
_CODES = {
    "BOOL": "?", "INT8": "b", "INT16": "h", "INT32": "i", "INT64": "q", "UINT8": "B", "UINT16": "H",
    "UINT32": "I", "UINT64": "Q", "FP16": "e", "FP32": "f", "FP64": "d",
}
_STRUCTS: dict[tuple[str, int], struct.Struct] = {}  # (datatype, element count) -> its Struct


def _bytes_elements(raw: bytes) -> list[str]:
    values, offset, end = [], 0, len(raw)
    unpack = _LENGTH.unpack_from
    while offset < end:
        (size,) = unpack(raw, offset)
        offset += 4
        values.append(raw[offset:offset + size].decode("utf-8", errors="replace"))
        offset += size
    return values


def _unpack(datatype: str, raw: bytes) -> list:
    """A raw buffer of a numeric datatype as a flat list of Python numbers."""
    code = _CODES[datatype]
    count = len(raw) // struct.calcsize(code)
    packer = _STRUCTS.get((datatype, count))
    if packer is None:
        if len(_STRUCTS) > 4096:  # counts vary with n and with tokens per response: stay small
            _STRUCTS.clear()
        packer = _STRUCTS[(datatype, count)] = struct.Struct(f"<{count}{code}")
    return list(packer.unpack_from(raw))


def flat_outputs(response: service_pb2.ModelInferResponse) -> dict[str, list]:
    """Every output of a response by name as a flat Python list (row-major): BYTES as text, numbers
    as ints, floats or bools. The same values as outputs(), without numpy: on the text path a
    response carries a handful of elements, once per streamed token, and numpy's per-array cost is
    most of its parsing. Shapes are the caller's to know (the tensor contract fixes them)."""
    raws = response.raw_output_contents
    result: dict[str, list] = {}
    for i, output in enumerate(response.outputs):
        datatype = output.datatype
        if i < len(raws):
            raw = raws[i]
            result[output.name] = _bytes_elements(raw) if datatype == "BYTES" else _unpack(datatype, raw)
        elif datatype == "BYTES":
            result[output.name] = [v.decode("utf-8", errors="replace") for v in output.contents.bytes_contents]
        else:
            field = _NUMERIC[datatype][1]
            result[output.name] = list(getattr(output.contents, field)) if field else []
    return result


def outputs(response: service_pb2.ModelInferResponse) -> dict[str, np.ndarray | list[str]]:
    """Every output of a response by name: BYTES as a flat list of text, numbers as numpy arrays of
    the output's shape (from raw buffers, as Triton's gRPC frontend sends them, or typed contents)."""
    raws = response.raw_output_contents
    result: dict[str, np.ndarray | list[str]] = {}
    for i, output in enumerate(response.outputs):
        raw = raws[i] if i < len(raws) else None
        if output.datatype == "BYTES":
            if raw is not None:
                result[output.name] = _bytes_elements(raw)
            else:
                result[output.name] = [v.decode("utf-8", errors="replace") for v in output.contents.bytes_contents]
            continue
        dtype, field = _NUMERIC[output.datatype]
        if raw is not None:
            array = np.frombuffer(raw, dtype=dtype)
        elif field is None:  # FP16 has no typed contents: Triton always sends it raw
            raise ValueError(f"output {output.name!r}: {output.datatype} without raw contents")
        else:
            array = np.array(list(getattr(output.contents, field)), dtype=dtype)
        shape = list(output.shape)
        result[output.name] = array.reshape(shape) if math.prod(shape) == array.size else array
    return result


def numeric(values: dict[str, np.ndarray | list[str]], name: str) -> np.ndarray:
    """A numeric output of outputs() by name (a BYTES output there is a list of text)."""
    value = values[name]
    if not isinstance(value, np.ndarray):
        raise TypeError(f"output {name!r} is BYTES, not a numeric tensor")
    return value
