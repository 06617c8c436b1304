"""Feedback captured by the Serve app, stored as Parquet shards ready to become training data.

Each feedback is one small shard ``<feedback_uri>/part-<time>-<id>.parquet`` written atomically
(temp file + rename on disk, one PUT on S3): a crash never leaves half a row, and readers list
the folder. Schema ``feedback/v1`` (docs/shards.md): the answer the user saw and what they said,
plus the inputs, so a corrected classification is a labelled multimodal example.
"""

from __future__ import annotations

import io
from datetime import datetime, timezone

import pyarrow as pa
import pyarrow.parquet as pq

from ..storage import Storage, join

FEEDBACK_SCHEMA = pa.schema(
    [
        ("id", pa.string()),
        ("response_id", pa.string()),
        ("kind", pa.string()),  # classify | completion | images
        ("model_version", pa.string()),  # the ensemble artifact's fingerprint that answered
        ("created_at", pa.string()),
        ("rating", pa.int8()),
        ("correct_label", pa.int32()),  # a class index: a user's data may have hundreds
        ("correct_text", pa.string()),
        ("comment", pa.string()),
        ("input_text", pa.string()),  # the caption or the prompt
        ("input_image", pa.binary()),  # PNG, for classifications
        ("answer", pa.string()),  # JSON of what was answered
    ]
)


def feedback_row(feedback_id: str, request, record: dict, model_version: str, *, correct_label: int | None) -> dict:
    """The stored row; ``correct_label``: the corrected class as an index (the request may name it)."""
    return {
        "id": feedback_id,
        "response_id": request.response_id,
        "kind": record["kind"],
        "model_version": model_version,
        # microseconds: two corrections of one answer within a second still have an order
        "created_at": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
        "rating": request.rating,
        "correct_label": correct_label,
        "correct_text": request.correct_text,
        "comment": request.comment,
        "input_text": record.get("input_text"),
        "input_image": record.get("input_image"),
        "answer": record["answer"],
    }


def write_feedback(storage: Storage, uri: str, row: dict) -> str:
    """Write one feedback row as its own shard; returns its URI."""
    table = pa.Table.from_pylist([row], schema=FEEDBACK_SCHEMA)
    buf = io.BytesIO()
    pq.write_table(table, buf)
    stamp = row["created_at"].replace("-", "").replace(":", "").replace(".", "")
    shard = join(uri, f"part-{stamp}-{row['id']}.parquet")
    storage.write_bytes(shard, buf.getvalue())
    return shard


def read_feedback(storage: Storage, uri: str) -> pa.Table:
    """Every feedback shard under ``uri`` as one table (empty with the schema if none)."""
    # shards written before correct_label widened from int8 read as the schema is now
    tables = [
        pq.read_table(io.BytesIO(storage.read_bytes(f))).cast(FEEDBACK_SCHEMA)
        for f in storage.list_files(uri, ".parquet")
    ]
    return pa.concat_tables(tables) if tables else FEEDBACK_SCHEMA.empty_table()
