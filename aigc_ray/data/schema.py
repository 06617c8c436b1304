"""The Parquet schemas of aigc-ray's shards (documented in docs/shards.md).

These kinds of shard set share the storage layout:

``multimodal/v1`` — one row per image–caption pair:
    id           string   stable row id, unique across the set ("digits-00042-r0")
    text         string   the caption (may be vague or even wrong on purpose)
    image        binary   the image, encoded as PNG
    image_shape  list<int32>  [height, width, channels] of the decoded image
    label        int32    class label (the digit)
    split        string   "train" | "val" | "test"
    source       string   where the row came from ("sklearn-digits", "feedback", ...)
    caption_kind string   "exact" | "vague" | "wrong": how the caption relates to the label

``text/v1`` — one row per document of the language-model corpus:
    id, text, split, source   as above

``video/v1`` — one row per short clip of a moving digit (built by ``video.py``):
    id, split, label     as above ("video-00042")
    frames, height, width  int32   the clip's shape
    clip         binary   uint8 frames, C-order (frames, height, width)
    source_id    string   the multimodal/v1 row whose image moves
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import pyarrow as pa

MULTIMODAL_V1 = "multimodal/v1"
TEXT_V1 = "text/v1"
VIDEO_V1 = "video/v1"
SCHEMA_METADATA_KEY = b"aigc.schema"

SPLITS = ("train", "val", "test")
CAPTION_KINDS = ("exact", "vague", "wrong")


def _with_kind(schema: pa.Schema, kind: str) -> pa.Schema:
    return schema.with_metadata({SCHEMA_METADATA_KEY: kind.encode()})


MULTIMODAL_SCHEMA = _with_kind(
    pa.schema(
        [
            pa.field("id", pa.string(), nullable=False),
            pa.field("text", pa.string(), nullable=False),
            pa.field("image", pa.binary(), nullable=False),
            pa.field("image_shape", pa.list_(pa.int32()), nullable=False),
            pa.field("label", pa.int32(), nullable=False),
            pa.field("split", pa.string(), nullable=False),
            pa.field("source", pa.string(), nullable=False),
            pa.field("caption_kind", pa.string(), nullable=False),
        ]
    ),
    MULTIMODAL_V1,
)

TEXT_SCHEMA = _with_kind(
    pa.schema(
        [
            pa.field("id", pa.string(), nullable=False),
            pa.field("text", pa.string(), nullable=False),
            pa.field("split", pa.string(), nullable=False),
            pa.field("source", pa.string(), nullable=False),
        ]
    ),
    TEXT_V1,
)

VIDEO_SCHEMA = _with_kind(
    pa.schema(
        [
            pa.field("id", pa.string(), nullable=False),
            pa.field("split", pa.string(), nullable=False),
            pa.field("label", pa.int32(), nullable=False),
            pa.field("frames", pa.int32(), nullable=False),
            pa.field("height", pa.int32(), nullable=False),
            pa.field("width", pa.int32(), nullable=False),
            pa.field("clip", pa.binary(), nullable=False),
            pa.field("source_id", pa.string(), nullable=False),
        ]
    ),
    VIDEO_V1,
)

SCHEMAS = {MULTIMODAL_V1: MULTIMODAL_SCHEMA, TEXT_V1: TEXT_SCHEMA, VIDEO_V1: VIDEO_SCHEMA}


def record_batches(rows: Iterable[dict], schema: pa.Schema, batch_rows: int = 256) -> Iterator[pa.RecordBatch]:
    """Row dicts (one key per column of ``schema``) as record batches of ``batch_rows`` rows:
    what the builders yield and ``write_shards`` regroups into shards."""
    pending: list[dict] = []
    for row in rows:
        pending.append(row)
        if len(pending) == batch_rows:
            yield pa.RecordBatch.from_pylist(pending, schema=schema)
            pending = []
    if pending:
        yield pa.RecordBatch.from_pylist(pending, schema=schema)


def schema_problems(actual: pa.Schema, kind: str) -> list[str]:
    """Differences between a file's schema and the expected one: missing columns and wrong types.

    Extra columns are allowed (forward compatible); missing or re-typed ones are not.
    """
    expected = SCHEMAS[kind]
    problems = []
    for field in expected:
        idx = actual.get_field_index(field.name)
        if idx < 0:
            problems.append(f"missing column '{field.name}' ({field.type})")
        elif not actual.field(idx).type.equals(field.type):
            problems.append(f"column '{field.name}' has type {actual.field(idx).type}, expected {field.type}")
    return problems


def detect_kind(schema: pa.Schema) -> str:
    """The shard kind recorded in a file's schema metadata, else guessed from its columns."""
    meta = schema.metadata or {}
    if SCHEMA_METADATA_KEY in meta:
        return meta[SCHEMA_METADATA_KEY].decode()
    return MULTIMODAL_V1 if "image" in schema.names else TEXT_V1
