"""Build-time step of docker/triton.Dockerfile: writes what a model would write on first load.

    python prepare.py MODALITY MODEL_REPOSITORY

text:       the f16 copy of SmolLM2's GGUF (model_repository/smollm2/1/weights.py), into
            $XDG_CACHE_HOME/hubmesh/weights
images:     the tiny test pipeline (model_repository/tiny_sd/1/pipeline.py), into
            $XDG_CACHE_HOME/hubmesh/pipelines
embeddings: nothing to write; checks that the packaged MiniLM folder is there.
Each step calls the model's own code, so the image holds exactly what the model looks for.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path


def parameter(config: Path, key: str) -> str:
    """A string parameter of a config.pbtxt (`{ key: "K", value: { string_value: "V" } }`)."""
    match = re.search(r'key:\s*"%s"\s*,\s*value:\s*\{\s*string_value:\s*"([^"]*)"' % re.escape(key), config.read_text())
    if match is None:
        raise SystemExit(f"{config}: no parameter {key!r}")
    return match.group(1)


def main(modality: str, repository: Path) -> None:
    if modality == "text":
        model = repository / "smollm2"
        sys.path.insert(0, str(model / "1"))
        from weights import packaged_gguf, widened

        print(widened(packaged_gguf(), parameter(model / "config.pbtxt", "dtype")))
    elif modality == "images":
        sys.path.insert(0, str(repository / "tiny_sd" / "1"))
        from pipeline import ensure_tiny_pipeline

        print(ensure_tiny_pipeline())
    elif modality == "embeddings":
        sys.path.insert(0, str(repository / "minilm" / "1"))
        from encoder import packaged_model_path

        path = Path(packaged_model_path())
        if not (path / "config.json").is_file():
            raise SystemExit(f"no model folder at {path}")
        print(path)
    else:
        raise SystemExit(f"unknown modality {modality!r} (text, embeddings, images)")


if __name__ == "__main__":
    if len(sys.argv) != 3:
        raise SystemExit(__doc__)
    main(sys.argv[1], Path(sys.argv[2]))
