"""The embedded multimodal dataset: scikit-learn's bundled handwritten digits, captioned.

1,797 real 8x8 scans (no network needed). Each image gets a caption in varied wording. Some
captions are deliberately vague (they name no digit) or wrong (they name another digit), in
fractions set by the spec, so a classifier must look at the image as well as the text.
Everything is a pure function of the seed.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pyarrow as pa

from .images import encode_png
from .schema import MULTIMODAL_SCHEMA, SPLITS

SOURCE = "sklearn-digits"
WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
NUM_CLASSES = len(WORDS)
IMAGE_SIDE = 8  # the digits are 8x8 grey images
# The fine-tuned language model writes a caption after this prompt (training and serving alike).
CAPTION_PROMPT = "Caption for a {word}:"

EXACT_TEMPLATES = (
    "a handwritten {word}",
    "the digit {d}",
    "a scanned image of the number {word}",
    "{word}, written by hand",
    "someone wrote a {d} here",
    "a small grayscale {word}",
    "number {d} in a tiny pixel grid",
    "a pixelated handwritten digit {d}",
    "this looks like a {word}",
    "an old scan of a {word} from a form",
    "the numeral {word}",
    "a messy {d}",
)
VAGUE_TEMPLATES = (
    "a handwritten digit",
    "some number scribbled by hand",
    "a small grayscale scan",
    "hard to read, maybe a digit",
    "a tiny blurry image",
    "a character from a handwriting form",
)


def baseline_caption(classes) -> str:
    """The caption that names no class: the digits' first vague caption, "a picture" for other
    classes (what their vague captions say). What explanations and attacks hold the caption at
    when only the image may count."""
    return VAGUE_TEMPLATES[0] if tuple(classes) == WORDS else "a picture"


def caption(label: int, kind: str, rng: np.random.Generator) -> tuple[str, int]:
    """A caption for ``label`` of the given kind; returns (text, digit the text names or -1)."""
    if kind == "vague":
        return VAGUE_TEMPLATES[rng.integers(len(VAGUE_TEMPLATES))], -1
    named = label
    if kind == "wrong":
        named = int((label + rng.integers(1, 10)) % 10)  # any digit but the true one
    template = EXACT_TEMPLATES[rng.integers(len(EXACT_TEMPLATES))]
    return template.format(word=WORDS[named], d=named), named


def assign_splits(n: int, fractions: dict[str, float], rng: np.random.Generator) -> np.ndarray:
    """A seeded split label per row, with counts as close as possible to the fractions."""
    return shuffled_splits(n, {s: int(round(fractions[s] * n)) for s in SPLITS[1:]}, rng)


def shuffled_splits(n: int, held_out: dict[str, int], rng: np.random.Generator) -> np.ndarray:
    """``n`` split labels, ``held_out[s]`` of each held-out split and train the rest, in a
    seeded order."""
    labels = np.array(["train"] * (n - sum(held_out.values())) + [s for s in SPLITS[1:] for _ in range(held_out[s])])
    return labels[rng.permutation(n)]


def load_pixels() -> tuple[np.ndarray, np.ndarray]:
    """The digits as uint8 images (N, 8, 8), scaled from 0..16 to 0..255, and their labels."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    pixels = np.round(bunch.images * (255.0 / 16.0)).astype(np.uint8)
    return pixels, bunch.target.astype(np.int32)


def digit_batches(
    seed: int, fractions: dict[str, float], vague: float, wrong: float, repeat: int = 1, batch_rows: int = 512
) -> Iterator[pa.RecordBatch]:
    """The captioned digits as record batches in the multimodal/v1 schema, deterministic in ``seed``.

    With ``repeat`` > 1 the images are written again with fresh captions (ids suffixed ``-rK``).
    """
    pixels, labels = load_pixels()
    n = len(labels)
    pngs = [encode_png(p) for p in pixels]
    splits = assign_splits(n, fractions, np.random.default_rng([seed, 1]))
    shape = [8, 8, 1]
    for r in range(repeat):
        rng = np.random.default_rng([seed, 2, r])
        kinds = rng.choice(["exact", "vague", "wrong"], size=n, p=[1 - vague - wrong, vague, wrong])
        rows: dict[str, list] = {name: [] for name in MULTIMODAL_SCHEMA.names}
        for i in range(n):
            text, _ = caption(int(labels[i]), str(kinds[i]), rng)
            rows["id"].append(f"digits-{i:05d}-r{r}")
            rows["text"].append(text)
            rows["image"].append(pngs[i])
            rows["image_shape"].append(shape)
            rows["label"].append(int(labels[i]))
            rows["split"].append(str(splits[i]))
            rows["source"].append(SOURCE)
            rows["caption_kind"].append(str(kinds[i]))
        table = pa.Table.from_pydict(rows, schema=MULTIMODAL_SCHEMA)
        yield from table.to_batches(max_chunksize=batch_rows)
