"""A sentence-embedding model (encoder.py) for Triton's python backend, dynamically batched.

Dynamic batching hands execute() several requests at once; all their items run as one padded
forward pass, and each request gets its own response (or its own error: one bad input never
fails the other clients' requests merged into the same batch).
"""

import json
import os
import sys

# OpenMP threads that spin while idle steal the cores other models' stubs on the node need (the text
# model slowed tenfold beside a busy embedder); passive waits cost nothing measurable here.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np
import torch
import triton_python_backend_utils as pb_utils

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from encoder import SentenceEncoder, packaged_model_path


class _BadInput(ValueError):
    pass


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        params = {k: v["string_value"] for k, v in config.get("parameters", {}).items()}
        torch.set_num_threads(int(params.get("n_threads", "0")) or os.cpu_count())
        gpu = args.get("model_instance_kind") == "GPU"
        self.encoder = SentenceEncoder(
            params.get("model_path") or packaged_model_path(),
            device=f"cuda:{args['model_instance_device_id']}" if gpu else "cpu",
            max_seq_length=int(params.get("max_seq_length", "0")),
        )

    def _rows_of(self, request) -> list[list[int]]:
        """Token ids (without special tokens) of every item of one request; checked against the limits."""
        text = pb_utils.get_input_tensor_by_name(request, "text")
        ids = pb_utils.get_input_tensor_by_name(request, "token_ids")
        if text is not None:
            texts = [v.decode("utf-8") if isinstance(v, bytes) else str(v) for v in text.as_numpy().reshape(-1)]
            rows = self.encoder.token_ids(texts)
        elif ids is not None:
            rows = [[int(t) for t in row] for row in ids.as_numpy()]
            vocab = self.encoder.vocab_size
            for i, row in enumerate(rows):
                bad = [t for t in row if not 0 <= t < vocab]
                if bad:
                    raise _BadInput(f"input {i} has token id {bad[0]} outside the vocabulary (0..{vocab - 1})")
        else:
            raise _BadInput("either text or token_ids is required")
        limit = self.encoder.max_input_tokens
        for i, row in enumerate(rows):
            if len(row) > limit:
                raise _BadInput(
                    f"input {i} has {len(row)} tokens; this model's maximum context length is {limit} tokens per input"
                )
        return rows

    def execute(self, requests):
        per_request: list[list[list[int]] | Exception] = []
        for request in requests:
            try:
                per_request.append(self._rows_of(request))
            except _BadInput as err:
                per_request.append(err)

        rows = [row for item in per_request if not isinstance(item, Exception) for row in item]
        vectors = self.encoder.embed(rows) if rows else np.zeros((0, 0), dtype=np.float32)

        responses, at = [], 0
        for item in per_request:
            if isinstance(item, Exception):
                error = pb_utils.TritonError(f"invalid argument: {item}", pb_utils.TritonError.INVALID_ARG)
                responses.append(pb_utils.InferenceResponse(error=error))
                continue
            n = len(item)
            responses.append(
                pb_utils.InferenceResponse(
                    output_tensors=[
                        pb_utils.Tensor("embedding", vectors[at : at + n]),
                        pb_utils.Tensor("num_tokens", np.array([[len(r)] for r in item], dtype=np.uint32)),
                    ]
                )
            )
            at += n
        return responses
