"""PNG encoding of generated pixels."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image


def encode_png(pixels: np.ndarray) -> bytes:
    """uint8 [height, width, 3] -> PNG bytes. Compression level 1: noise-like pictures barely
    compress, and a faster encoder keeps a 1792×1024 image well under a second."""
    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(pixels, dtype=np.uint8), mode="RGB").save(buffer, format="PNG", compress_level=1)
    return buffer.getvalue()
