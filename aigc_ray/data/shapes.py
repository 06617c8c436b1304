"""The second embedded multimodal dataset: coloured shapes drawn in-project, captioned.

32x32 RGB images of six shapes (a different size, channel count and class count from the
digits, so every stage is exercised on data that is not 8x8 grey with 10 classes). Each shape
has a random colour, size, position and background; the captions name the shape (and often its
colour and place), with vague and wrong captions in the spec's fractions, as for the digits.
Everything is a pure function of the seed, with no network and no files.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pyarrow as pa

from .digits import assign_splits
from .images import encode_png
from .schema import MULTIMODAL_SCHEMA, record_batches

SOURCE = "aigc-shapes"
CLASSES = ("circle", "square", "triangle", "cross", "diamond", "ring")
IMAGE_SIDE = 32
PER_CLASS = 200  # 1,200 images
COLOURS = {
    "red": (220, 40, 40),
    "green": (40, 190, 60),
    "blue": (50, 90, 230),
    "yellow": (235, 215, 40),
    "orange": (240, 140, 30),
    "purple": (150, 60, 200),
    "white": (240, 240, 240),
}
EXACT_TEMPLATES = (
    "a {colour} {name}",
    "a {name}",
    "a {colour} {name} on a plain background",
    "a simple drawing of a {name}",
    "one {name}, painted {colour}",
    "a {name} near the {place}",
    "a small {colour} {name}",
    "a flat {name} shape",
)
VAGUE_TEMPLATES = (
    "a coloured shape",
    "a simple drawing",
    "something painted on a background",
    "a small flat figure",
    "an icon of some kind",
)


def _mask(name: str, yy: np.ndarray, xx: np.ndarray, cy: float, cx: float, r: float) -> np.ndarray:
    dy, dx = yy - cy, xx - cx
    if name == "circle":
        return dy**2 + dx**2 <= r**2
    if name == "ring":
        d = np.sqrt(dy**2 + dx**2)
        return (d <= r) & (d >= r * 0.55)
    if name == "square":
        return (np.abs(dy) <= r * 0.85) & (np.abs(dx) <= r * 0.85)
    if name == "diamond":
        return np.abs(dy) + np.abs(dx) <= r
    if name == "cross":
        arm = r * 0.3
        return ((np.abs(dy) <= arm) & (np.abs(dx) <= r)) | ((np.abs(dx) <= arm) & (np.abs(dy) <= r))
    if name == "triangle":  # apex up
        top, bottom = cy - r, cy + r * 0.8
        half_width = (yy - top) / (bottom - top) * r
        return (yy >= top) & (yy <= bottom) & (np.abs(dx) <= half_width)
    raise ValueError(f"unknown shape {name!r}")


def draw(name: str, colour: tuple[int, int, int], rng: np.random.Generator) -> tuple[np.ndarray, str]:
    """One (32, 32, 3) uint8 image of ``name`` in ``colour`` on a random dark or light
    background; returns it and where the shape sits ("top left" ... "centre")."""
    side = IMAGE_SIDE
    r = rng.uniform(6.0, 11.0)
    cy, cx = rng.uniform(r + 1, side - r - 1, size=2)
    yy, xx = np.mgrid[0:side, 0:side].astype(np.float32) + 0.5
    background = rng.integers(0, 60, size=3) if rng.random() < 0.7 else rng.integers(170, 230, size=3)
    image = np.empty((side, side, 3), np.float32)
    image[:] = background
    image[_mask(name, yy, xx, cy, cx, r)] = colour
    image += rng.normal(0, 6, size=image.shape)  # a little sensor noise
    vertical = "top" if cy < side / 3 else "bottom" if cy > 2 * side / 3 else ""
    horizontal = "left" if cx < side / 3 else "right" if cx > 2 * side / 3 else ""
    place = f"{vertical} {horizontal}".strip() or "centre"
    return np.clip(np.round(image), 0, 255).astype(np.uint8), place


def caption(label: int, kind: str, colour: str, place: str, rng: np.random.Generator) -> str:
    if kind == "vague":
        return VAGUE_TEMPLATES[rng.integers(len(VAGUE_TEMPLATES))]
    named = label
    if kind == "wrong":
        named = int((label + rng.integers(1, len(CLASSES))) % len(CLASSES))  # any shape but the true one
    template = EXACT_TEMPLATES[rng.integers(len(EXACT_TEMPLATES))]
    return template.format(name=CLASSES[named], colour=colour, place=place)


def shape_batches(
    seed: int, fractions: dict[str, float], vague: float, wrong: float, repeat: int = 1, batch_rows: int = 256
) -> Iterator[pa.RecordBatch]:
    """The captioned shapes as record batches in the multimodal/v1 schema, deterministic in
    ``seed``; with ``repeat`` > 1 fresh images and captions are drawn again (ids ``-rK``)."""
    return record_batches(_shape_rows(seed, fractions, vague, wrong, repeat), MULTIMODAL_SCHEMA, batch_rows)


def _shape_rows(seed: int, fractions: dict[str, float], vague: float, wrong: float, repeat: int) -> Iterator[dict]:
    n = PER_CLASS * len(CLASSES)
    labels = np.repeat(np.arange(len(CLASSES), dtype=np.int32), PER_CLASS)
    splits = assign_splits(n, fractions, np.random.default_rng([seed, 11]))
    colour_names = list(COLOURS)
    for r in range(repeat):
        rng = np.random.default_rng([seed, 12, r])
        kinds = rng.choice(["exact", "vague", "wrong"], size=n, p=[1 - vague - wrong, vague, wrong])
        for i in range(n):
            colour = colour_names[rng.integers(len(colour_names))]
            image, place = draw(CLASSES[labels[i]], COLOURS[colour], rng)
            yield {
                "id": f"shapes-{i:05d}-r{r}",
                "text": caption(int(labels[i]), str(kinds[i]), colour, place, rng),
                "image": encode_png(image),
                "image_shape": [IMAGE_SIDE, IMAGE_SIDE, 3],
                "label": int(labels[i]),
                "split": str(splits[i]),
                "source": SOURCE,
                "caption_kind": str(kinds[i]),
            }
