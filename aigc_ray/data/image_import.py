"""Importing the user's multimodal data (``data.source``) into multimodal/v1 shards, on Ray Data.

Two passes over the source, each a Ray Data job over its units (batches of image files, tar
shards, Parquet files), so many files are read in parallel and only a block at a time is in
memory:

1. **scan** — per example: its label as given, whether it has a caption, the image's colour
   mode (read from the header) or why it cannot be read. The driver then knows every class
   (sorted names), the channel count (RGB if any image is colour), each row's split and every
   bad row, before anything is written.
2. **convert** — decode, convert to the chosen channels, resize the shorter side and crop a
   seeded square, encode as PNG; the driver streams these rows into ``write_shards``, which
   commits the shard set with its manifest last.

Bad rows (undecodable image, unknown label, missing caption) stop the import with the file
named, or with ``data.on_bad_row: skip`` are left out, counted in the manifest and printed.
"""

from __future__ import annotations

import collections
import hashlib
import io
import logging
from collections.abc import Callable, Iterator
from dataclasses import asdict

import numpy as np
import pyarrow as pa

from ..manifest import Manifest
from ..spec import ExperimentSpec
from ..storage import Storage
from .digits import baseline_caption, shuffled_splits
from .image_sources import LISTERS, READERS, Example, Listing, SourceError, Unit
from .images import as_displayed, encode_png
from .schema import MULTIMODAL_SCHEMA, MULTIMODAL_V1, SPLITS, record_batches
from .shards import write_shards

DEFAULT_IMAGE_SIZE = 32
COLOUR_MODES = {"RGB", "RGBA", "P", "CMYK", "YCbCr", "LAB", "HSV", "PA"}  # P: palette, may be colour


def image_size(spec: ExperimentSpec) -> int:
    return spec.data.image_size or DEFAULT_IMAGE_SIZE


def source_fingerprint(storage: Storage, uri: str) -> str:
    """Every file's path, size and modification time: changes when the source does (cheap: one
    listing, no reads)."""
    fingerprint = storage.listing_fingerprint([uri], root=uri)
    if fingerprint is None:
        raise SourceError(f"{uri}: nothing here to import (no such folder, or it is empty)")
    return fingerprint


# --------------------------------------------------------------------------- per example


def _image_problem(ex: Example) -> tuple[str | None, str | None]:
    """(colour mode, problem): the mode from the image header, or why there is no usable image."""
    from PIL import Image

    if ex.problem:
        return None, ex.problem
    if not ex.image:
        return None, "no image"
    try:
        with Image.open(io.BytesIO(ex.image)) as img:
            mode = img.mode
            img.verify()
    except Exception as exc:  # PIL raises several unrelated types for bad data
        return None, f"undecodable image ({type(exc).__name__}: {exc})"
    return mode, None


def scan_example(ex: Example, needs_caption: bool = True) -> dict:
    """What the decisions need of one example: its label, colour mode, split, and its problem if
    it has one (``needs_caption`` false: the data has none, the import writes them)."""
    mode, problem = _image_problem(ex)
    if problem is None and needs_caption and (ex.text is None or not str(ex.text).strip()):
        problem = "no caption (data.source.columns.text: null writes every row's from its class name)"
    label = ex.label
    if isinstance(label, float):  # pandas writes an int column with a missing value as floats
        label = None if label != label else int(label) if label.is_integer() else label  # NaN: missing
    if problem is None and label is None:
        problem = "no label"
    if problem is None and not isinstance(label, int | str):
        problem = f"label {label!r} is neither a class index nor a class name"
    label = label if isinstance(label, int | str) else None
    return {
        "key": ex.key,
        "origin": ex.origin,
        "label_int": label if isinstance(label, int) else -1,
        "label_name": label if isinstance(label, str) else "",
        "mode": mode or "",
        "split": ex.split or "",
        "problem": problem or "",
    }


def fit_square(data: bytes, size: int, channels: int, rng: np.random.Generator, jpeg_draft: bool = True) -> np.ndarray:
    """The image as (size, size, channels) uint8: as a viewer shows it in grey or RGB
    (``images.as_displayed``: upright, 8-bit, transparency over white), its shorter side resized
    to ``size`` and a square cropped at a seeded offset along the longer side.

    A JPEG is decoded at the smallest power-of-two scale that still covers ``size`` (libjpeg's
    DCT scaling, ``draft``): a 12 MP photo imported at 32 px decodes at 1/8 of its size, 5.6x
    faster, pixels within 0.2/255 on average (``bench/import_photos.py``)."""
    from PIL import Image

    with Image.open(io.BytesIO(data)) as img:
        if jpeg_draft and img.format == "JPEG":
            img.draft(None, (size, size))
        img = as_displayed(img, channels)
        w, h = img.size
        scale = size / min(w, h)
        nw, nh = max(size, round(w * scale)), max(size, round(h * scale))
        if (nw, nh) != (w, h):
            img = img.resize((nw, nh), Image.Resampling.LANCZOS if scale < 1 else Image.Resampling.BICUBIC)
        x = int(rng.integers(nw - size + 1))
        y = int(rng.integers(nh - size + 1))
        arr = np.asarray(img.crop((x, y, x + size, y + size)), dtype=np.uint8)
    return arr[:, :, None] if arr.ndim == 2 else arr


class CaptionWriter:
    """Captions for data that has none (``data.source.columns.text: null``): the prompt template
    with the row's class name; ``data.caption_noise``'s fractions of them vague (naming no class)
    or wrong (another class), as in the embedded sets, so a fusion model must read the image too.
    Seeded per row key: the same row gets the same caption in every import."""

    def __init__(self, spec: ExperimentSpec, classes: list[str]):
        from .info import DatasetInfo, prompt_template

        self.seed, self.classes = spec.data.seed, list(classes)
        self.template = prompt_template(spec, DatasetInfo(tuple(classes), (0, 0, 0)))
        noise = spec.data.caption_noise
        self.kinds = (["exact", "vague", "wrong"], [1 - noise.vague - noise.wrong, noise.vague, noise.wrong])
        self.vague = baseline_caption(classes)

    def write(self, label: int, key: str) -> tuple[str, str]:
        rng = _row_rng(self.seed, "caption:" + key)
        kind = str(rng.choice(self.kinds[0], p=self.kinds[1])) if len(self.classes) > 1 else "exact"
        if kind == "vague":
            return self.vague, kind
        named = label if kind == "exact" else (label + int(rng.integers(1, len(self.classes)))) % len(self.classes)
        return self.template.format(name=self.classes[named]), kind


def _row_rng(seed: int, key: str) -> np.random.Generator:
    return np.random.default_rng([seed, int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "big")])


# --------------------------------------------------------------------------- Ray Data passes


def _unit_item(unit: Unit) -> dict:
    return {"unit": asdict(unit)}


def _examples(storage_spec, fmt: str, item: dict) -> Iterator[Example]:
    storage = Storage.from_spec(storage_spec)
    yield from READERS[fmt](storage, Unit(**item["unit"]))


def _ray_rows(listing: Listing, fn: Callable[[dict], Iterator[dict]]) -> Iterator[dict]:
    """``fn`` over every unit on Ray Data (one read task per unit), rows in unit order."""
    import ray

    ctx = ray.data.DataContext.get_current()
    ctx.execution_options.preserve_order = True  # the shards' bytes must not depend on timing
    ctx.enable_progress_bars = False  # the terminal gets our one line per pass; Ray's chatter goes to its logs
    logging.getLogger("ray.data").setLevel(logging.WARNING)
    ds = ray.data.from_items([_unit_item(u) for u in listing.units], override_num_blocks=len(listing.units))
    for batch in ds.flat_map(fn, num_cpus=1).iter_batches(batch_size=256, batch_format="pyarrow"):
        yield from batch.to_pylist()


def writes_captions(spec: ExperimentSpec, listing: Listing) -> bool:
    """Whether the import writes the captions: the spec says the data has none
    (``columns.text: null``), or nothing in it could hold one (an ImageFolder without metadata)."""
    return spec.data.source.columns.text is None or not listing.captioned


def _scan(spec: ExperimentSpec, listing: Listing) -> list[dict]:
    storage_spec, fmt = spec.storage, spec.data.source.format
    needs_caption = not writes_captions(spec, listing)

    def scan_unit(item: dict) -> Iterator[dict]:
        try:
            for ex in _examples(storage_spec, fmt, item):
                yield scan_example(ex, needs_caption)
        except SourceError as exc:  # a whole unit unreadable (a corrupt tar): one bad row naming it
            uri = item["unit"]["uris"][0]
            problem = str(exc).removeprefix(f"{uri}: ")
            yield {
                "key": uri,
                "origin": uri,
                "label_int": -1,
                "label_name": "",
                "mode": "",
                "split": "",
                "problem": problem,
            }

    return list(_ray_rows(listing, scan_unit))


# --------------------------------------------------------------------------- decisions


def decide_classes(listing: Listing, scanned: list[dict]) -> list[str]:
    """Class names in index order: from the layout (folders, classes.txt, a ClassLabel), else the
    sorted label names, else the indices ``0..max`` as names."""
    if listing.class_names:
        return list(listing.class_names)
    good = [r for r in scanned if not r["problem"]]
    names = sorted({r["label_name"] for r in good if r["label_name"]})
    ints = {r["label_int"] for r in good if r["label_name"] == "" and r["label_int"] >= 0}
    if names and ints:
        raise SourceError("labels mix class names and class indices; use one or the other")
    if names:
        return names
    if ints:
        return [str(i) for i in range(max(ints) + 1)]
    raise SourceError("no labelled examples found")


def label_index(row: dict, classes: list[str] | dict[str, int]) -> int | None:
    """The row's class index, None for a label the classes do not know. ``classes``: the names,
    or their ``{name: index}`` (built once by the caller: a lookup per row, not a list search)."""
    index = classes if isinstance(classes, dict) else {name: k for k, name in enumerate(classes)}
    if row["label_name"]:
        return index.get(row["label_name"])
    return row["label_int"] if 0 <= row["label_int"] < len(index) else None


def split_counts(class_sizes: dict[int, int], fractions: dict[str, float]) -> dict[int, dict[str, int]]:
    """How many rows of each class go to each held-out split: each split gets round(fraction x
    all rows) in all, shared among the classes by their exact quotas (floors first, then the
    largest remainders). Rounding class by class would give a small dataset no validation or
    test rows at all (5 images a class x 0.1 rounds to 0 in every class)."""
    counts = {y: {s: 0 for s in SPLITS[1:]} for y in class_sizes}
    free = dict(class_sizes)  # rows of each class not yet held out
    for s in SPLITS[1:]:
        quotas = {y: fractions[s] * n for y, n in class_sizes.items()}
        for y, q in quotas.items():
            counts[y][s] = min(int(q), free[y])
            free[y] -= counts[y][s]
        missing = round(fractions[s] * sum(class_sizes.values())) - sum(counts[y][s] for y in counts)
        by_remainder = sorted(quotas, key=lambda y: (-(quotas[y] - int(quotas[y])), y))
        for y in by_remainder:
            if missing <= 0:
                break
            if free[y] > 1:  # every class keeps at least one training row
                counts[y][s] += 1
                free[y] -= 1
                missing -= 1
    return counts


def decide_splits(rows: list[dict], labels: list[int], seed: int, fractions: dict[str, float]) -> list[str]:
    """Each row's split: the data's own where it states one; a held-out split the data does not
    have (train/ and test/ folders, no validation/) is drawn from its training rows at the spec's
    fraction, and all three when it states none — seeded and stratified by class (rows of a
    class in key order, shuffled by a seed of the class; counts from ``split_counts``)."""
    out = [r["split"] for r in rows]
    stated = {s for s in out if s}
    drawn = {s: (0.0 if s in stated else fractions[s]) for s in SPLITS[1:]}
    by_class: dict[int, list[int]] = collections.defaultdict(list)
    for i, (split, y) in enumerate(zip(out, labels, strict=True)):
        if split in ("", "train"):
            by_class[y].append(i)
    counts = split_counts({y: len(m) for y, m in by_class.items()}, drawn)
    for y, members in sorted(by_class.items()):
        members.sort(key=lambda i: rows[i]["key"])
        shuffled = shuffled_splits(len(members), counts[y], np.random.default_rng([seed, 21, y]))
        for i, split in zip(members, shuffled, strict=True):
            out[i] = str(split)
    return out


# --------------------------------------------------------------------------- the import


def import_images(
    spec: ExperimentSpec, storage: Storage, uri: str, spec_hash: str, inputs: dict, log=print
) -> Manifest:
    """Import ``spec.data.source`` into a multimodal/v1 shard set at ``uri``; returns its manifest."""
    from ..runtime import ray_session

    d = spec.data
    src = d.source
    listing = LISTERS[src.format](storage, src.uri, src.columns.model_dump())
    size = image_size(spec)
    log(f"  importing {listing.files} {src.format} files from {src.uri} (images {size}x{size})")
    if src.columns.text is not None and not listing.captioned:
        log("  no metadata file holds captions: writing them from the class names (data.prompt_template)")
    with ray_session(spec):
        scanned = _scan(spec, listing)
        classes = decide_classes(listing, scanned)
        bad: collections.Counter[str] = collections.Counter()
        keep, labels = [], []
        index = {name: k for k, name in enumerate(classes)}
        for r in scanned:
            problem = r["problem"]
            y = label_index(r, index) if not problem else None
            if not problem and y is None:
                label = r["label_name"] or r["label_int"]
                problem = (
                    f"unknown label {label!r} (classes: {', '.join(classes[:20])}{' ...' if len(classes) > 20 else ''})"
                )
            if problem:
                if d.on_bad_row == "error":
                    raise SourceError(f"{r['origin']}: {problem} (set data.on_bad_row: skip to leave such rows out)")
                bad[problem.split(" (")[0]] += 1
                continue
            keep.append(r)
            labels.append(y)
        if not keep:
            raise SourceError(f"{src.uri}: no usable examples ({sum(bad.values())} bad rows: {dict(bad)})")
        channels = 3 if any(r["mode"] in COLOUR_MODES for r in keep) else 1
        converted = sum(1 for r in keep if (r["mode"] in COLOUR_MODES) != (channels == 3))
        splits = decide_splits(keep, labels, d.seed, d.splits.model_dump())
        for split in SPLITS:  # every later stage trains, selects and reports on its own split
            if split not in splits:
                raise SourceError(
                    f"{src.uri}: the {len(keep)} usable examples leave no {split} rows "
                    f"(data.splits.{split} = {getattr(d.splits, split)}): add examples or raise the fraction"
                )
        plan = {r["key"]: (y, s) for r, y, s in zip(keep, labels, splits, strict=True)}
        late_bad: collections.Counter[str] = collections.Counter()
        captions = CaptionWriter(spec, classes) if writes_captions(spec, listing) else None
        batches = _converted_batches(spec, listing, plan, size, channels, late_bad, captions)
        manifest = write_shards(
            storage,
            uri,
            batches,
            MULTIMODAL_V1,
            d.rows_per_shard,
            spec_hash,
            inputs=inputs,
            meta={
                "dataset": f"{src.format}:{src.uri}",
                "seed": d.seed,
                "classes": classes,
                "image_shape": [size, size, channels],
                "skipped": dict(bad + late_bad),
                "converted": converted,
            },
        )
    skipped = sum((bad + late_bad).values())
    log(
        f"  multimodal imported {manifest.meta['rows']} rows, {len(classes)} classes, {size}x{size}x{channels}: "
        f"{manifest.meta['splits']}"
        + (f"; skipped {skipped} bad rows {dict(bad + late_bad)}" if skipped else "")
        + (f"; converted {converted} images to {'RGB' if channels == 3 else 'grey'}" if converted else "")
    )
    return manifest


def _converted_batches(
    spec: ExperimentSpec,
    listing: Listing,
    plan: dict,
    size: int,
    channels: int,
    late_bad: collections.Counter,
    captions: CaptionWriter | None = None,
) -> Iterator[pa.RecordBatch]:
    storage_spec, fmt, seed = spec.storage, spec.data.source.format, spec.data.seed
    on_bad_row = spec.data.on_bad_row

    blank = {"text": "", "image": b"", "label": -1, "split": "", "caption_kind": ""}

    def convert_unit(item: dict) -> Iterator[dict]:
        try:
            for ex in _examples(storage_spec, fmt, item):
                if ex.key not in plan:
                    continue
                y, split = plan[ex.key]
                try:
                    pixels = fit_square(ex.image, size, channels, _row_rng(seed, ex.key))
                except Exception as exc:  # passed the header check, failed to decode in full
                    problem = f"{ex.origin}: undecodable image ({type(exc).__name__}: {exc})"
                    yield {"id": ex.key, "problem": problem, **blank}
                    continue
                text, kind = captions.write(y, ex.key) if captions else (str(ex.text).strip(), "exact")
                yield {
                    "id": ex.key,
                    "problem": "",
                    "text": text,
                    "image": encode_png(pixels),
                    "label": y,
                    "split": split,
                    "caption_kind": kind,
                }
        except SourceError:  # unreadable as a whole: the scan found it and it was skipped
            return

    def shard_rows() -> Iterator[dict]:
        for row in _ray_rows(listing, convert_unit):
            if row["problem"]:
                if on_bad_row == "error":
                    raise SourceError(f"{row['problem']} (set data.on_bad_row: skip to leave such rows out)")
                late_bad["undecodable image"] += 1
                continue
            yield {
                "id": row["id"],
                "text": row["text"],
                "image": row["image"],
                "image_shape": [size, size, channels],
                "label": int(row["label"]),
                "split": row["split"],
                "source": fmt,
                "caption_kind": row["caption_kind"],  # the data's own caption: exact, taken as given
            }

    yield from record_batches(shard_rows(), MULTIMODAL_SCHEMA)
