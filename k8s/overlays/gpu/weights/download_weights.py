"""Downloads the gpu overlay's model weights into the shared model-weights volume.

Run by the download-weights Job (weights.yaml). Each model lands in /weights/<repository id>,
the path its Triton config names, and gets a marker file once complete; the Tritons' init
containers wait for that marker. A model whose marker exists is skipped, so re-running is cheap.
Gated models (Llama 3) need HF_TOKEN, from the Secret huggingface-token.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

WEIGHTS_DIR = Path(os.environ.get("WEIGHTS_DIR", "/weights"))
MARKER = ".hubmesh-complete"

# repository id -> the files the serving code loads (not every format each repository holds)
MODELS: dict[str, list[str]] = {
    # safetensors shards, config, tokenizer; not original/ (Meta's own checkpoint format)
    "meta-llama/Meta-Llama-3-8B-Instruct": ["*.json", "*.safetensors"],
    # whichever weight format the repository holds, plus config and tokenizer
    "intfloat/e5-large-v2": ["*.json", "*.txt", "model.safetensors", "pytorch_model.bin"],
    # the diffusers folders in full precision (loaded as float16 on the GPU); not the fp16
    # variants, the single-file checkpoint or the ONNX/OpenVINO exports
    "stabilityai/stable-diffusion-xl-base-1.0": [
        "*.json",
        "*.txt",
        "*/model.safetensors",
        "*/diffusion_pytorch_model.safetensors",
    ],
}


def model_dir(repo_id: str) -> Path:
    return WEIGHTS_DIR / repo_id


def main() -> int:
    from huggingface_hub import snapshot_download  # in the image, with transformers

    for repo_id, patterns in MODELS.items():
        target = model_dir(repo_id)
        if (target / MARKER).exists():
            print(f"{repo_id}: present in {target}", flush=True)
            continue
        print(f"{repo_id}: downloading into {target}", flush=True)
        snapshot_download(repo_id=repo_id, local_dir=target, allow_patterns=patterns)
        (target / MARKER).write_text("complete\n")
        print(f"{repo_id}: done", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
