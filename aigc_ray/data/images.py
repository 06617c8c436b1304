"""PNG encoding and decoding of shard images."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image


def encode_png(pixels: np.ndarray) -> bytes:
    """Encode a uint8 array of shape (H, W) or (H, W, C) with C in {1, 3, 4} as PNG bytes."""
    if pixels.dtype != np.uint8:
        raise ValueError(f"expected uint8 pixels, got {pixels.dtype}")
    if pixels.ndim == 3 and pixels.shape[2] == 1:
        pixels = pixels[:, :, 0]
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG", optimize=False)
    return buf.getvalue()


def decode_png(data: bytes) -> np.ndarray:
    """Decode PNG bytes to a uint8 array of shape (H, W, C); raises ValueError if undecodable."""
    try:
        with Image.open(io.BytesIO(data)) as img:
            img.load()
            arr = np.asarray(img)
    except Exception as exc:  # PIL raises several unrelated types for bad data
        raise ValueError(f"not a decodable PNG: {exc}") from None
    return arr[:, :, None] if arr.ndim == 2 else arr
