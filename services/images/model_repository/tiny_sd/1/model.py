"""Text-to-image as a Triton python-backend model (diffusers; see pipeline.py).

Inputs: prompt (STRING), width, height, num_images (INT32), and optional seed (INT64), quality
and style (STRING). Output: images, UINT8 [n, height, width, 3] (RGB).

Parameters: model_path (a diffusers pipeline folder; empty = the tiny random-weight test
pipeline, built into ~/.cache/hubmesh on first use), steps (denoising steps; quality "hd" runs
twice as many) and n_threads (torch CPU threads; 0 = one per core). A GPU instance runs float16
on its own device.
"""

import ctypes
import json
import os
import sys

import numpy as np

# Before torch loads OpenMP: idle OpenMP threads sleep instead of spinning. With the default
# (spin), one busy core elsewhere on the node (another model's stub) made a 1024x1024 picture
# take 8-24 s instead of about 2 s on two cores; uncontended, both take about 1.1-1.3 s.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch
import triton_python_backend_utils as pb_utils

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from pipeline import ensure_tiny_pipeline, generate, load_pipeline

MAX_IMAGES = 10
MAX_SIDE = 4096  # pixels; far beyond any size the service offers, but bounds memory


def _reuse_freed_memory() -> None:
    """Keeps large freed blocks in glibc's heap instead of returning them to the kernel.

    glibc serves blocks over 32 MiB with mmap and unmaps them on free, so every picture faulted
    its activations in afresh (~320k page faults for a 1024x1024 one): a third of the CPU time
    went to the kernel. Reusing the heap made a 1024x1024 picture ~25% faster and three
    1792x1024 ones ~45% faster; the resident size stays at its peak (1.75 GB after ten 1792x1024).
    """
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:  # not glibc: nothing to tune
        return
    m_trim_threshold, m_mmap_threshold = -1, -3  # from malloc.h
    libc.mallopt(m_mmap_threshold, 1 << 30)
    libc.mallopt(m_trim_threshold, 1 << 30)


class InvalidInput(ValueError):
    pass


def _scalar(request, name: str, required: bool = True):
    """The single element of input `name`, or None when an optional input is absent."""
    tensor = pb_utils.get_input_tensor_by_name(request, name)
    if tensor is None:
        if required:
            raise InvalidInput(f"input '{name}' is required")
        return None
    values = tensor.as_numpy().reshape(-1)
    if values.size != 1:
        raise InvalidInput(f"input '{name}' must hold exactly one value, got {values.size}")
    value = values[0]
    return value.decode("utf-8") if isinstance(value, bytes) else value


def _side(request, name: str) -> int:
    value = int(_scalar(request, name))
    if value <= 0 or value % 8 or value > MAX_SIDE:
        raise InvalidInput(f"{name} must be a positive multiple of 8 up to {MAX_SIDE}, got {value}")
    return value


class TritonPythonModel:
    def initialize(self, args):
        _reuse_freed_memory()
        config = json.loads(args["model_config"])
        params = {k: v["string_value"] for k, v in config.get("parameters", {}).items()}
        self.name = args["model_name"]
        self.steps = int(params.get("steps") or "4")
        torch.set_num_threads(int(params.get("n_threads") or "0") or os.cpu_count())
        if args["model_instance_kind"] == "GPU":
            device = f"cuda:{args['model_instance_device_id']}"
        else:
            device = "cpu"
        path = params.get("model_path") or ensure_tiny_pipeline()
        self.pipe = load_pipeline(path, device)
        pb_utils.Logger.log_info(f"[{self.name}] loaded {path} on {device}, {self.steps} steps")

    def execute(self, requests):
        # One response per request, in order; a bad or failing request answers with its own error.
        return [self._serve(request) for request in requests]

    def _serve(self, request):
        try:
            prompt = _scalar(request, "prompt")
            if not prompt.strip():
                raise InvalidInput("prompt must not be empty")
            width, height = _side(request, "width"), _side(request, "height")
            num_images = int(_scalar(request, "num_images"))
            if not 1 <= num_images <= MAX_IMAGES:
                raise InvalidInput(f"num_images must be between 1 and {MAX_IMAGES}, got {num_images}")
            seed = _scalar(request, "seed", required=False)
            images = generate(
                self.pipe,
                prompt,
                width,
                height,
                num_images,
                None if seed is None else int(seed),
                (_scalar(request, "quality", required=False) or "standard").lower(),
                (_scalar(request, "style", required=False) or "vivid").lower(),
                self.steps,
            )
        except InvalidInput as err:
            return pb_utils.InferenceResponse(
                error=pb_utils.TritonError(f"invalid argument: {err}", pb_utils.TritonError.INVALID_ARG)
            )
        except Exception as err:  # never raise out of execute(): the whole batch would fail
            pb_utils.Logger.log_error(f"[{self.name}] generation failed: {err!r}")
            return pb_utils.InferenceResponse(
                error=pb_utils.TritonError(f"image generation failed: {err}", pb_utils.TritonError.INTERNAL)
            )
        return pb_utils.InferenceResponse(output_tensors=[pb_utils.Tensor("images", np.ascontiguousarray(images))])
