"""``aigc feedback ingest``: the feedback the Serve app captured, as training shards.

Corrected classifications (``correct_label`` set) become ``multimodal/v1`` rows — the image
the user sent (normalised to the experiment's image shape: side and channels of its multimodal
shards), their caption, the corrected label, ``split=train``, ``source=feedback`` — committed as a
shard set at ``layout.feedback_shards_uri``. When one answer was corrected more than once, the
latest correction wins. Ratings without a correction are counted, not turned into examples; so
are corrections whose inputs the server no longer held (``serve.feedback_memory_mb``).
"""

from __future__ import annotations

import hashlib

import pyarrow as pa

from ..layout import feedback_shards_uri, feedback_uri
from ..manifest import Manifest
from ..spec import ExperimentSpec, spec_hash
from ..storage import Storage
from .feedback import read_feedback
from .images import decode_client_image, encode_png
from .info import DatasetInfo, dataset_info
from .schema import MULTIMODAL_V1, SCHEMAS
from .shards import write_shards


def ingest_feedback(spec: ExperimentSpec, storage: Storage, log=print) -> Manifest:
    """Write the corrected classifications as a ``multimodal/v1`` shard set; returns its manifest.
    Raises FileNotFoundError when there is no correction to learn from."""
    source = feedback_uri(spec)
    table = read_feedback(storage, source)
    rows = sorted(table.to_pylist(), key=lambda r: r["created_at"])
    corrected = {r["response_id"]: r for r in rows if r["kind"] == "classify" and r["correct_label"] is not None}
    latest = {rid: r for rid, r in corrected.items() if r["input_image"] is not None}
    if not latest:
        raise FileNotFoundError(f"no corrected classification with its image in the feedback at {source}")
    info = dataset_info(spec, storage)
    examples = [_example(r, info) for r in latest.values()]
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
        meta={
            "feedback_rows": len(rows),
            "ratings_only": sum(r["correct_label"] is None for r in rows),
            "inputs_evicted": len(corrected) - len(latest),
        },
    )
    evicted = (
        f" ({len(corrected) - len(latest)} without their inputs, left out)" if len(corrected) > len(latest) else ""
    )
    log(
        f"[feedback] {len(examples)} corrected examples from {len(rows)} feedback rows{evicted} "
        f"-> {feedback_shards_uri(spec)}"
    )
    return manifest


def _example(row: dict, info: DatasetInfo) -> dict:
    side, channels = info.side, info.channels
    chw = decode_client_image(row["input_image"], side, channels)
    pixels = (chw.transpose(1, 2, 0) * 255).round().astype("uint8")
    return {
        "id": f"feedback-{row['id']}",
        "text": row["input_text"],
        "image": encode_png(pixels),
        "image_shape": [side, side, channels],
        "label": int(row["correct_label"]),
        "split": "train",
        "source": "feedback",
        "caption_kind": "exact",  # the user's caption, taken as given
    }
