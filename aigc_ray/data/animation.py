"""Clips as animations: GIF (and APNG) encoding with Pillow, a grid of clips as one animation,
and decoding back to frames (for tests and clients).

Frames are (T, H, W) grayscale or (T, H, W, 3) RGB, float in [0, 1] or uint8; (T, 1, H, W) and
(T, H, W, 1) are taken as grayscale. Animations loop forever. Pillow merges consecutive
identical frames into one longer frame, so a clip with frozen stretches decodes to fewer frames
(same playback).
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image, ImageSequence

from .images import to_uint8

GIF_MAGIC = (b"GIF87a", b"GIF89a")


def to_uint8_frames(frames) -> np.ndarray:
    """(T, H, W) or (T, H, W, 3) uint8 from any accepted frame layout and range."""
    x = np.asarray(frames)
    if x.ndim == 4 and x.shape[1] == 1:
        x = x[:, 0]
    elif x.ndim == 4 and x.shape[3] == 1:
        x = x[..., 0]
    if not (x.ndim == 3 or (x.ndim == 4 and x.shape[3] == 3)) or len(x) == 0:
        raise ValueError(f"expected frames (T, H, W) or (T, H, W, 3) with T >= 1, got shape {x.shape}")
    return to_uint8(x if x.dtype == np.uint8 else x.astype(np.float64))


def _images(frames, scale: int) -> list[Image.Image]:
    if int(scale) < 1:
        raise ValueError(f"scale must be a positive integer, got {scale}")
    x = to_uint8_frames(frames)
    if scale > 1:
        x = x.repeat(scale, axis=1).repeat(scale, axis=2)  # nearest-neighbour: crisp pixels
    return [Image.fromarray(f) for f in x]


def _duration_ms(fps: int) -> int:
    if fps <= 0:
        raise ValueError(f"fps must be positive, got {fps}")
    return max(1, round(1000 / fps))


def encode_gif(frames, fps: int = 8, scale: int = 1) -> bytes:
    """An animated GIF of ``frames`` at ``fps``, each pixel ``scale`` x ``scale``, looping forever."""
    images = _images(frames, scale)
    buf = io.BytesIO()
    images[0].save(
        buf,
        format="GIF",
        save_all=True,
        append_images=images[1:],
        duration=_duration_ms(fps),
        loop=0,
        disposal=1,
        optimize=False,
    )
    return buf.getvalue()


def encode_apng(frames, fps: int = 8, scale: int = 1) -> bytes:
    """An animated PNG (lossless, full 8-bit gray or RGB) of ``frames``, looping forever."""
    images = _images(frames, scale)
    buf = io.BytesIO()
    images[0].save(
        buf, format="PNG", save_all=True, append_images=images[1:], duration=_duration_ms(fps), loop=0, optimize=False
    )
    return buf.getvalue()


def is_gif(data: bytes) -> bool:
    return bytes(data[:6]) in GIF_MAGIC


def decode_gif_frames(data: bytes) -> np.ndarray:
    """Every frame of an animated GIF (or APNG) as (T, H, W) uint8 grayscale; ValueError if the
    bytes are not an image Pillow can read."""
    try:
        with Image.open(io.BytesIO(data)) as img:
            return np.stack([np.asarray(frame.convert("L")) for frame in ImageSequence.Iterator(img)])
    except Exception as exc:  # Pillow raises several unrelated types for bad data
        raise ValueError(f"not a decodable animation: {exc}") from None


def _grey_clips(clips) -> np.ndarray:
    """(N, T, H, W) float32 from clips (N, T, H, W) or (N, 1, T, H, W); ValueError otherwise."""
    x = np.asarray(clips, dtype=np.float32)
    if x.ndim == 5 and x.shape[1] == 1:
        x = x[:, 0]
    if x.ndim != 4 or len(x) == 0:
        raise ValueError(f"expected clips (N, T, H, W) or (N, 1, T, H, W) with N >= 1, got shape {x.shape}")
    return x


def video_grid(clips, cols: int | None = None, pad: int = 1, pad_value: float = 0.5) -> np.ndarray:
    """Tile clips (N, T, H, W) or (N, 1, T, H, W) in [0, 1] into one clip (T, H', W'): ``cols``
    per row (default: about square), ``pad`` pixels of ``pad_value`` between them."""
    x = _grey_clips(clips)
    n, t, h, w = x.shape
    cols = cols or int(np.ceil(np.sqrt(n)))
    rows = int(np.ceil(n / cols))
    grid = np.full((t, rows * (h + pad) + pad, cols * (w + pad) + pad), pad_value, dtype=np.float32)
    for i in range(n):
        r, c = divmod(i, cols)
        y, xx = pad + r * (h + pad), pad + c * (w + pad)
        grid[:, y : y + h, xx : xx + w] = x[i]
    return grid


def clip_strip(clips, pad: int = 1, pad_value: float = 0.5) -> np.ndarray:
    """A still (N rows, T frames side by side) of clips (N, T, H, W) or (N, 1, T, H, W) in [0, 1]."""
    x = _grey_clips(clips)
    n, t, h, w = x.shape
    strip = np.full((n * (h + pad) + pad, t * (w + pad) + pad), pad_value, dtype=np.float32)
    for i in range(n):
        for f in range(t):
            y, xx = pad + i * (h + pad), pad + f * (w + pad)
            strip[y : y + h, xx : xx + w] = x[i, f]
    return strip
