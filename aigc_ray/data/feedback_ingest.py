"""``aigc feedback ingest``: the feedback the Serve app captured, as training shards.

Corrected classifications (``correct_label`` set) become ``multimodal/v1`` rows — the image
the user sent (normalised to the shards' 8x8 grey PNG), their caption, the corrected label,
``split=train``, ``source=feedback`` — committed as a shard set at
``layout.feedback_shards_uri``. When one answer was corrected more than once, the latest
correction wins. Ratings without a correction are counted, not turned into examples.
"""

from __future__ import annotations

import base64
import hashlib

import pyarrow as pa

from ..layout import feedback_shards_uri, feedback_uri
from ..manifest import Manifest
from ..spec import ExperimentSpec, spec_hash
from ..storage import Storage
from .digits import IMAGE_SIDE
from .feedback import read_feedback
from .images import decode_image_b64, encode_png
from .schema import MULTIMODAL_V1, SCHEMAS
from .shards import write_shards


def ingest_feedback(spec: ExperimentSpec, storage: Storage, log=print) -> Manifest:
    """Write the corrected classifications as a ``multimodal/v1`` shard set; returns its manifest.
    Raises FileNotFoundError when there is no correction to learn from."""
    source = feedback_uri(spec)
    table = read_feedback(storage, source)
    rows = sorted(table.to_pylist(), key=lambda r: r["created_at"])
    latest = {r["response_id"]: r for r in rows if r["kind"] == "classify" and r["correct_label"] is not None}
    if not latest:
        raise FileNotFoundError(f"no corrected classification in the feedback at {source}: nothing to ingest")
    examples = [_example(r) for r in latest.values()]
    batch = pa.RecordBatch.from_pylist(examples, schema=SCHEMAS[MULTIMODAL_V1])
    files = sorted(f.rsplit("/", 1)[1] for f in storage.list_files(source, ".parquet"))
    listing = hashlib.sha256("\n".join(files).encode()).hexdigest()  # the feedback files this was made from
    manifest = write_shards(
        storage,
        feedback_shards_uri(spec),
        [batch],
        MULTIMODAL_V1,
        rows_per_shard=max(1, spec.data.rows_per_shard),
        spec_hash=spec_hash(spec, "serve"),
        inputs={source: listing},
        meta={"feedback_rows": len(rows), "ratings_only": sum(r["correct_label"] is None for r in rows)},
    )
    log(f"[feedback] {len(examples)} corrected examples from {len(rows)} feedback rows -> {feedback_shards_uri(spec)}")
    return manifest


def _example(row: dict) -> dict:
    pixels = (
        (decode_image_b64(base64.b64encode(row["input_image"]).decode(), IMAGE_SIDE)[0] * 255).round().astype("uint8")
    )
    return {
        "id": f"feedback-{row['id']}",
        "text": row["input_text"],
        "image": encode_png(pixels),
        "image_shape": [8, 8, 1],
        "label": int(row["correct_label"]),
        "split": "train",
        "source": "feedback",
        "caption_kind": "exact",  # the user's caption, taken as given
    }
