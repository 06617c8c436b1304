"""A split of the multimodal shards as in-memory arrays, without Ray (small data: metrics,
evaluation, the in-project classifier). Reads the shard files in manifest order."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from ..spec import ExperimentSpec
from ..storage import Storage, join
from .images import decode_png
from .shards import shard_files


def digit_arrays(spec: ExperimentSpec, storage: Storage, split: str) -> dict[str, np.ndarray]:
    """{"image": (N, C, H, W) float32 in [0, 1], "label": (N,) int64, "text": (N,) object}."""
    images, labels, texts = [], [], []
    for uri in shard_files(storage, join(spec.data_uri, "multimodal")):
        table = pq.read_table(pa.BufferReader(storage.read_bytes(uri)), columns=["image", "label", "text", "split"])
        for row in table.to_pylist():
            if row["split"] == split:
                images.append(decode_png(row["image"]).transpose(2, 0, 1))
                labels.append(row["label"])
                texts.append(row["text"])
    if not images:
        raise ValueError(f"split '{split}' of {spec.data_uri}/multimodal is empty")
    return {
        "image": np.stack(images).astype(np.float32) / 255.0,
        "label": np.array(labels, dtype=np.int64),
        "text": np.array(texts, dtype=object),
    }
