"""Short videos of moving digits: clips built offline from the digit shards, stored as ``video/v1``
shards, read back with Ray Data.

Each clip is one 8x8 digit drifting through a ``frame_size`` square frame and bouncing off its
edges (the "moving MNIST" recipe, on the embedded digits). Other data (the shapes, imported
images) moves the same way: each image is first made an 8x8 grey sprite (luminance, area
resized), so the clips and the video GAN keep their shape whatever the images are. Start and velocity are drawn from a
per-clip seeded generator, positions are sub-pixel and rendered by bilinear placement, so every
clip is a pure function of (video seed, clip index, source image).

Layout under the spec's data URI::

    video/  part-*.parquet + _manifest.json   (video/v1; input: multimodal/)

A set whose manifest records the same build hash (video settings, this module's code and the
source shards' fingerprint) is up to date and is not rebuilt.

"""

from __future__ import annotations

import hashlib
import json
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa

from ..layout import multimodal_uri, video_uri
from ..manifest import Manifest, read_manifest
from ..storage import Storage, StorageError, join
from .digits import assign_splits, load_pixels
from .images import decode_png
from .schema import VIDEO_SCHEMA, VIDEO_V1
from .shards import read_checked, split_table, write_shards

VIDEO_VERSION = "moving-digits-v1"  # unchanged: the digits' clips are byte for byte the same
DIGIT_SIZE = 8
VIDEO_COLUMNS = VIDEO_SCHEMA.names


# -------------------------------------------------------------------------- one clip


def _reflect(pos: np.ndarray, limit: float) -> np.ndarray:
    """Unbounded positions folded into [0, limit] as a ball bouncing between two walls."""
    period = 2.0 * limit
    p = np.mod(pos, period)
    return np.where(p > limit, period - p, p)


def _place(canvas: np.ndarray, digit: np.ndarray, y: float, x: float) -> None:
    """Add ``digit`` at sub-pixel offset (y, x), split over the 4 integer neighbours (bilinear)."""
    iy, ix = int(np.floor(y)), int(np.floor(x))
    fy, fx = y - iy, x - ix
    s = digit.shape[0]
    for dy, wy in ((0, 1.0 - fy), (1, fy)):
        for dx, wx in ((0, 1.0 - fx), (1, fx)):
            if wy * wx > 0:
                canvas[iy + dy : iy + dy + s, ix + dx : ix + dx + s] += wy * wx * digit


def moving_digit_clip(
    image8x8: np.ndarray, frames: int, frame_size: int, max_speed: float, rng: np.random.Generator
) -> np.ndarray:
    """One clip, (frames, frame_size, frame_size) float32 in [0, 1]: the digit starts at a random
    position with a random velocity (each axis between max_speed/4 and max_speed pixels per
    frame, random sign: never zero) and bounces off the frame's edges. Deterministic in ``rng``."""
    digit = np.asarray(image8x8)
    if digit.shape != (DIGIT_SIZE, DIGIT_SIZE):
        raise ValueError(f"expected an {DIGIT_SIZE}x{DIGIT_SIZE} digit image, got shape {digit.shape}")
    if frame_size <= DIGIT_SIZE:
        raise ValueError(
            f"frame_size must exceed the digit's {DIGIT_SIZE} pixels to leave room to move, got {frame_size}"
        )
    if frames < 1 or max_speed <= 0:
        raise ValueError(f"need frames >= 1 and max_speed > 0, got frames={frames}, max_speed={max_speed}")
    digit = digit.astype(np.float32) / 255.0 if digit.dtype == np.uint8 else digit.astype(np.float32)
    limit = float(frame_size - DIGIT_SIZE)  # top-left corner positions in [0, limit]
    start = rng.uniform(0.0, limit, size=2)
    velocity = rng.uniform(max_speed / 4, max_speed, size=2) * rng.choice([-1.0, 1.0], size=2)
    t = np.arange(frames, dtype=np.float64)[:, None]
    positions = _reflect(start[None, :] + t * velocity[None, :], limit)  # (frames, 2): y, x
    clip = np.zeros((frames, frame_size + 1, frame_size + 1), dtype=np.float32)  # +1: the bilinear spill
    for f, (y, x) in enumerate(positions):
        _place(clip[f], digit, float(y), float(x))
    # A corner at ``limit`` has zero weight on the spill row/column: cropping it loses nothing.
    return np.clip(clip[:, :frame_size, :frame_size], 0.0, 1.0)


def clip_rng(seed: int, index: int) -> np.random.Generator:
    """The generator of clip ``index``: independent of batching and of the other clips."""
    return np.random.default_rng([seed, 3, index])


# -------------------------------------------------------------------------- source digits


@dataclass
class SourceDigits:
    """The images the clips move: ids, (N, 8, 8) uint8 pixels, labels and splits."""

    ids: list[str]
    pixels: np.ndarray
    labels: np.ndarray
    splits: list[str]


def embedded_digits(spec) -> SourceDigits:
    """The embedded digits as ``aigc data build`` writes them (ids, labels and splits of the
    first ``multimodal/v1`` repeat), without storage."""

    pixels, labels = load_pixels()
    splits = assign_splits(len(labels), spec.data.splits.model_dump(), np.random.default_rng([spec.data.seed, 1]))
    return SourceDigits([f"digits-{i:05d}-r0" for i in range(len(labels))], pixels, labels, [str(s) for s in splits])


def read_source_digits(storage: Storage, uri: str) -> SourceDigits:
    """Every row of the ``multimodal/v1`` shard set at ``uri`` (in id order), decoded as sprites:
    a missing set or an undecodable image is a clear error naming the set or the row."""
    import pyarrow.parquet as pq

    manifest = read_manifest(storage, uri)
    if manifest is None:
        raise FileNotFoundError(
            f"{uri}: no committed multimodal shard set (no _manifest.json) to make clips from; run `aigc data build` first"
        )
    rows: dict[str, tuple[bytes, int, str]] = {}
    for name, entry in sorted(manifest.files.items()):
        file_uri = join(uri, name)
        data = read_checked(storage, file_uri, entry)  # checked against the manifest on this read
        try:
            table = pq.read_table(pa.BufferReader(data), columns=["id", "image", "label", "split"])
        except (pa.ArrowException, OSError, KeyError) as exc:
            raise ValueError(f"{file_uri}: not a readable multimodal/v1 shard: {exc}") from None
        columns = [table[c].to_pylist() for c in ("id", "image", "label", "split")]
        for row_id, image, label, split in zip(*columns, strict=True):
            rows[row_id] = (image, label, split)
    ids = sorted(rows)
    pixels = np.zeros((len(ids), DIGIT_SIZE, DIGIT_SIZE), dtype=np.uint8)
    for i, row_id in enumerate(ids):
        try:
            img = decode_png(rows[row_id][0])
        except ValueError as exc:
            raise ValueError(f"{uri}: row {row_id!r}: image: {exc}") from None
        pixels[i] = sprite(img)
    labels = np.array([rows[r][1] for r in ids], dtype=np.int32)
    return SourceDigits(ids, pixels, labels, [rows[r][2] for r in ids])


def sprite(image: np.ndarray) -> np.ndarray:
    """An (H, W, C) uint8 image as the (8, 8) uint8 grey sprite a clip moves: the digits as they
    are; anything else converted to luminance and area-resized."""
    if image.shape == (DIGIT_SIZE, DIGIT_SIZE, 1):
        return image[:, :, 0]
    from PIL import Image

    pil = Image.fromarray(image[:, :, 0] if image.shape[2] == 1 else image[:, :, :3]).convert("L")
    return np.asarray(pil.resize((DIGIT_SIZE, DIGIT_SIZE), Image.Resampling.BOX), dtype=np.uint8)


# -------------------------------------------------------------------------- shards


def video_batches(spec, source: SourceDigits | None = None, batch_rows: int = 256) -> Iterator[pa.RecordBatch]:
    """The clips as ``video/v1`` record batches, deterministic in ``spec.video.seed``. Clip ``i``
    moves source image ``order[i mod N]`` (default source: the embedded digits) and takes its
    split, where ``order`` is a seeded shuffle of the source: imported data comes in id order,
    which is its folders' (``test/`` before ``train/``, one class folder after another), so a
    prefix of it could leave the clips without a training split or with a few classes only."""
    v = spec.video
    src = source if source is not None else embedded_digits(spec)
    if not len(src.ids):
        raise ValueError("no source digits to make clips from")
    order = np.random.default_rng([v.seed, 2]).permutation(len(src.ids))
    rows: dict[str, list] = {name: [] for name in VIDEO_COLUMNS}
    for i in range(v.clips):
        j = int(order[i % len(src.ids)])
        clip = moving_digit_clip(src.pixels[j], v.frames, v.frame_size, v.max_speed, clip_rng(v.seed, i))
        rows["id"].append(f"video-{i:05d}")
        rows["split"].append(src.splits[j])
        rows["label"].append(int(src.labels[j]))
        rows["frames"].append(v.frames)
        rows["height"].append(v.frame_size)
        rows["width"].append(v.frame_size)
        rows["clip"].append(np.round(clip * 255.0).astype(np.uint8).tobytes(order="C"))
        rows["source_id"].append(src.ids[j])
        if len(rows["id"]) == batch_rows or i == v.clips - 1:
            yield pa.RecordBatch.from_pydict(rows, schema=VIDEO_SCHEMA)
            rows = {name: [] for name in VIDEO_COLUMNS}


def video_build_hash(spec, source_fingerprint: str) -> str:
    """Everything that determines the clips' bytes: the video settings, this module's code, the
    source shards' content."""
    fields = spec.video.model_dump(mode="json", include={"clips", "frames", "frame_size", "max_speed", "seed"})
    key = {
        "fields": fields,
        "rows_per_shard": spec.video.rows_per_shard,
        "version": VIDEO_VERSION,
        "code": hashlib.sha256(Path(__file__).read_bytes()).hexdigest(),
        "source": source_fingerprint,
        "python": sys.version_info[:2],
    }
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()


def build_video_shards(spec, storage: Storage, force: bool = False, log=print) -> Manifest:
    """Write (or confirm up to date) the clip shards at ``layout.video_uri`` from the committed
    multimodal shards; returns the manifest. All-or-nothing: the source is read and checked
    before anything is written, the manifest commits the set last, and a failure part-way
    removes the shard files it had written (the previous set, if any, stays intact)."""

    uri, source_uri = video_uri(spec), multimodal_uri(spec)
    source_manifest = read_manifest(storage, source_uri)
    if source_manifest is None:
        raise FileNotFoundError(
            f"{source_uri}: no committed multimodal shard set (no _manifest.json) to make clips from; "
            "run `aigc data build` first"
        )
    h = video_build_hash(spec, source_manifest.fingerprint)
    existing = read_manifest(storage, uri)
    if existing is not None and existing.spec_hash == h and not force:
        log(f"  video      up to date ({uri})")
        return existing
    source = read_source_digits(storage, source_uri)
    v = spec.video
    manifest = write_shards(  # all or nothing: a failure part-way removes what it wrote
        storage,
        uri,
        video_batches(spec, source),
        VIDEO_V1,
        v.rows_per_shard,
        h,
        inputs={source_uri: source_manifest.fingerprint},
        meta={"frames": v.frames, "height": v.frame_size, "width": v.frame_size, "seed": v.seed},
    )
    log(
        f"  video      wrote {manifest.meta['rows']} clips of {v.frames}x{v.frame_size}x{v.frame_size} "
        f"in {len(manifest.files)} shards: {manifest.meta['splits']}"
    )
    return manifest


# -------------------------------------------------------------------------- reading


def decode_clip(row: dict) -> np.ndarray:
    """A ``video/v1`` row's clip as (frames, height, width) float32 in [0, 1]; a byte string of
    the wrong length is an error naming the row."""
    t, h, w = int(row["frames"]), int(row["height"]), int(row["width"])
    data = row["clip"]
    if data is None or len(data) != t * h * w:
        got = "no bytes" if data is None else f"{len(data)} bytes"
        raise ValueError(
            f"clip of row {row.get('id')!r} has {got}, expected frames*height*width = {t}*{h}*{w} = {t * h * w}"
        )
    return np.frombuffer(data, dtype=np.uint8).reshape(t, h, w).astype(np.float32) / 255.0


def decode_video_batch(batch: dict) -> dict:
    """A numpy batch of ``video/v1`` rows -> {"id", "clip": (B, 1, T, H, W) float32, "label"}
    (Ray Data runs this in ``map_batches``)."""
    n = len(batch["id"])
    clips = [decode_clip({k: batch[k][i] for k in ("id", "frames", "height", "width", "clip")}) for i in range(n)]
    return {
        "id": np.asarray(batch["id"], dtype=object),
        "clip": np.stack(clips)[:, None] if clips else np.zeros((0, 1, 0, 0, 0), np.float32),
        "label": np.asarray(batch["label"], dtype=np.int64),
    }


def video_arrays(spec, storage: Storage, split: str) -> dict[str, np.ndarray]:
    """One split of the clip shards in-process (no Ray), in shard order:
    {"clip": (N, 1, T, H, W) float32 in [0, 1], "label": (N,) int64, "id": (N,) object}."""

    uri = video_uri(spec)
    if read_manifest(storage, uri) is None:
        raise StorageError(f"{uri}: no committed video shard set; run `aigc data video` first")
    table = split_table(storage, uri, split, ["id", "label", "frames", "height", "width", "clip"])
    if not table.num_rows:
        raise ValueError(f"split '{split}' of {uri} is empty")
    batch = {c: table[c].to_pylist() for c in table.column_names}
    return decode_video_batch(batch)
