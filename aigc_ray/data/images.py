"""Images as bytes, one place for every PNG the project writes or reads: shard images, served
samples and clips, report plots of pixels, and the base64 PNGs clients send."""

from __future__ import annotations

import base64
import binascii
import contextlib
import io
from collections.abc import Iterator

import numpy as np
from PIL import Image


def to_uint8(pixels) -> np.ndarray:
    """uint8 pixels from uint8 (as they are) or floats in [0, 1] (clipped, rounded)."""
    x = np.asarray(pixels)
    if x.dtype == np.uint8:
        return x
    if not np.issubdtype(x.dtype, np.floating):
        raise ValueError(f"expected uint8 pixels or floats in [0, 1], got {x.dtype}")
    return np.round(np.clip(x.astype(np.float64), 0.0, 1.0) * 255.0).astype(np.uint8)


def encode_png(pixels, scale: int = 1) -> bytes:
    """PNG bytes of an image (H, W) or (H, W, C) with C in {1, 3, 4}, uint8 or float in [0, 1];
    with ``scale`` > 1 each pixel becomes a ``scale`` x ``scale`` block (crisp, nearest-neighbour)."""
    x = to_uint8(pixels)
    if x.ndim == 3 and x.shape[2] == 1:
        x = x[:, :, 0]
    if int(scale) < 1:
        raise ValueError(f"scale must be a positive integer, got {scale}")
    if scale > 1:
        x = x.repeat(scale, axis=0).repeat(scale, axis=1)
    buf = io.BytesIO()
    Image.fromarray(x).save(buf, format="PNG", optimize=False)
    return buf.getvalue()


def png_b64(pixels, scale: int = 1) -> str:
    """``encode_png`` as base64 text: what ``/v1/classify`` takes and ``/v1/images`` answers."""
    return base64.b64encode(encode_png(pixels, scale)).decode()


def decode_png(data: bytes) -> np.ndarray:
    """Decode PNG bytes to a uint8 array of shape (H, W, C); raises ValueError if undecodable."""
    try:
        with Image.open(io.BytesIO(data)) as img:
            img.load()
            arr = np.asarray(img)
    except Exception as exc:  # PIL raises several unrelated types for bad data
        raise ValueError(f"not a decodable PNG: {exc}") from None
    return arr[:, :, None] if arr.ndim == 2 else arr


CLIENT_FORMATS = ("PNG", "JPEG", "WEBP")  # what the import reads too (a client's photo is a JPEG)
# The most pixels a client's image may have: a phone's 12 MP photo fits; a small file claiming
# more (a decompression bomb) is refused from its header, before anything is decoded. Bytes are
# bounded by serve.max_request_bytes.
MAX_CLIENT_PIXELS = 4096 * 4096


def client_image_bytes(b64: str) -> bytes:
    """The bytes of a client's base64 image, bare or as a ``data:image/...;base64,`` URL as
    browsers and OpenAI-style clients send it; ValueError names what is wrong. Every reader of a
    client's image (decoding, the feedback record) starts here."""
    if b64.startswith("data:"):
        header, _, b64 = b64.partition(",")
        if not header.endswith(";base64"):
            raise ValueError("image: a data URL must be base64, e.g. data:image/png;base64,...")
    try:
        return base64.b64decode(b64, validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("image is not valid base64") from None


@contextlib.contextmanager
def _client_image(raw: bytes, max_pixels: int) -> Iterator[Image.Image]:
    """The client's image opened, its header checked (a PNG, JPEG or WebP of at most
    ``max_pixels``); nothing is decoded until the caller reads pixels. ValueError names what is
    wrong, also for a file that breaks while the caller decodes it."""
    from PIL import UnidentifiedImageError

    names = ", ".join(CLIENT_FORMATS[:-1]) + f" or {CLIENT_FORMATS[-1]}"
    try:
        with Image.open(io.BytesIO(raw)) as img:
            if img.format not in CLIENT_FORMATS:
                raise ValueError(f"image must be a {names}, got {img.format}")
            if img.width * img.height > max_pixels:
                raise ValueError(f"image is {img.width}x{img.height}; at most {max_pixels:,} pixels")
            yield img
    except (UnidentifiedImageError, OSError):
        raise ValueError(f"image is not a decodable {names}") from None


def check_client_image(b64: str, max_pixels: int = MAX_CLIENT_PIXELS) -> None:
    """What a request's schema checks of a client's image: base64, format and size, from the
    header alone (the handler decodes the pixels once; a photo is not decoded twice)."""
    with _client_image(client_image_bytes(b64), max_pixels):
        pass


def decode_client_image(raw: bytes, side: int, channels: int = 1, max_pixels: int = MAX_CLIENT_PIXELS) -> np.ndarray:
    """A client's PNG, JPEG or WebP bytes (grey or colour, any shape up to ``max_pixels``) as
    (channels, side, side) float32 in [0, 1] (1 channel: grey, 3: RGB), its centred square
    area-resized (a JPEG decoded at the smallest scale that covers ``side``, as the import
    does); ValueError names what is wrong."""
    with _client_image(raw, max_pixels) as img:
        return _model_pixels(img, side, channels)


def decode_image_b64(b64: str, side: int, channels: int = 1, max_pixels: int = MAX_CLIENT_PIXELS) -> np.ndarray:
    """``decode_client_image`` of a client's base64 image, bare or a data: URL."""
    return decode_client_image(client_image_bytes(b64), side, channels, max_pixels)


def decode_image_file(raw: bytes, side: int, channels: int = 1) -> np.ndarray:
    """An image file's bytes (any format Pillow reads: PNG, JPEG, WebP, ...) as (channels, side,
    side) float32 in [0, 1], its centred square area-resized; ValueError if it is not an image."""
    from PIL import UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(raw)) as img:
            return _model_pixels(img, side, channels)
    except (UnidentifiedImageError, OSError):
        raise ValueError("not a decodable image (PNG, JPEG, WebP, ...)") from None


WIDE_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I", "F")  # more than 8 bits a sample
WHITE = (255, 255, 255, 255)


def as_displayed(img: Image.Image, channels: int) -> Image.Image:
    """``img`` as a person sees it, in 8-bit grey (``channels`` 1) or RGB (3): turned upright by
    its EXIF orientation (phone photos are stored sideways), 16-bit and float samples scaled to
    0–255 by their range (Pillow's own convert clips them at 255: a 16-bit scan turned white),
    and transparency laid over white (dropping alpha leaves what transparent pixels happen to
    hold, often black under black strokes). Import and serving both read images through this."""
    from PIL import ImageOps

    img = ImageOps.exif_transpose(img)
    if img.mode in WIDE_MODES:
        img = Image.fromarray(_scaled_to_8bit(np.asarray(img, dtype=np.float64), img.mode))
    if "A" in img.getbands() or "transparency" in img.info:
        img = Image.alpha_composite(Image.new("RGBA", img.size, WHITE), img.convert("RGBA"))
    return img.convert("L" if channels == 1 else "RGB")


def _scaled_to_8bit(x: np.ndarray, mode: str) -> np.ndarray:
    """Samples of a wide mode as uint8: 16-bit by 65535 -> 255; 32-bit integers that fit 16
    bits likewise; floats in [0, 1] by 255; anything else by its own minimum and maximum."""
    lo, hi = float(x.min()), float(x.max())
    if mode.startswith("I;16") or (mode == "I" and lo >= 0 and hi <= 65535):
        lo, hi = 0.0, 65535.0
    elif mode == "F" and lo >= 0 and hi <= 1:
        lo, hi = 0.0, 1.0
    if hi <= lo:
        return np.zeros(x.shape, dtype=np.uint8)
    return np.round((x - lo) / (hi - lo) * 255.0).clip(0, 255).astype(np.uint8)


def centre_square(img: Image.Image) -> Image.Image:
    """The centred square of ``img``'s shorter side: a wide or tall client image keeps its
    proportions as the import keeps them (it crops a square too, never squashes), so a photo
    is not stretched into a shape the members never saw in training."""
    w, h = img.size
    if w == h:
        return img
    s = min(w, h)
    x, y = (w - s) // 2, (h - s) // 2
    return img.crop((x, y, x + s, y + s))


def _model_pixels(img: Image.Image, side: int, channels: int) -> np.ndarray:
    if img.format == "JPEG":  # libjpeg's DCT scaling: a 12 MP photo decodes at 1/8 of its size
        img.draft(None, (side, side))
    converted = centre_square(as_displayed(img, channels))
    if converted.size != (side, side):
        converted = converted.resize((side, side), Image.Resampling.BOX)
    pixels = np.asarray(converted, dtype=np.float32) / 255.0
    return pixels[None] if pixels.ndim == 2 else pixels.transpose(2, 0, 1)
