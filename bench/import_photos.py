"""Benchmark: importing photos — JPEG decoded at a reduced scale (``draft``) against a full decode.

A user's ImageFolder is usually camera or phone JPEGs of several megapixels, imported at 32-128 px.
``fit_square`` (the import's per-image work: decode, upright, 8-bit, resize, crop) lets libjpeg
decode at the smallest power-of-two scale that still covers the target. Synthetic photos (smooth
gradients plus grain, JPEG quality 90) at each size; prints images/s with and without, and the
ratio, one line per size. Also checks the two give nearly the same pixels (mean absolute difference).
"""

import argparse
import io
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def photo(width: int, height: int, seed: int) -> bytes:
    from PIL import Image

    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    base = np.stack([x / width, y / height, (x + y) / (width + height)], axis=-1) * 200
    grain = rng.normal(0, 12, (height, width, 3))
    buf = io.BytesIO()
    Image.fromarray(np.clip(base + grain, 0, 255).astype(np.uint8)).save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def rate(images: list[bytes], size: int, draft: bool) -> tuple[float, list[np.ndarray]]:
    from aigc_ray.data.image_import import fit_square

    start = time.perf_counter()
    out = [fit_square(b, size, 3, np.random.default_rng(i), jpeg_draft=draft) for i, b in enumerate(images)]
    return len(images) / (time.perf_counter() - start), out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--images", type=int, default=12)
    parser.add_argument("--size", type=int, default=32, help="image_size the import resizes to")
    args = parser.parse_args()
    for width, height in ((1600, 1200), (4000, 3000)):
        images = [photo(width, height, seed) for seed in range(args.images)]
        full, a = rate(images, args.size, draft=False)
        fast, b = rate(images, args.size, draft=True)
        diff = float(np.mean([np.abs(x.astype(int) - y.astype(int)).mean() for x, y in zip(a, b, strict=True)]))
        print(
            f"import {width}x{height} JPEG -> {args.size}px: draft {fast:7.1f} img/s  full decode {full:7.1f} img/s"
            f"  ratio {fast / full:.2f}  (mean pixel difference {diff:.2f} of 255)"
        )


if __name__ == "__main__":
    main()
