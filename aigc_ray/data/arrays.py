"""A split of the multimodal shards as in-memory arrays, without Ray (small data: metrics,
evaluation, the in-project classifier). Reads the shard files in manifest order."""

from __future__ import annotations

import numpy as np

from ..layout import multimodal_uri
from ..spec import ExperimentSpec
from ..storage import Storage
from .images import decode_png
from .shards import split_table


def digit_arrays(spec: ExperimentSpec, storage: Storage, split: str) -> dict[str, np.ndarray]:
    """{"image": (N, C, H, W) float32 in [0, 1], "label": (N,) int64, "text": (N,) object}."""
    return shard_arrays(storage, multimodal_uri(spec), split)


def shard_arrays(storage: Storage, uri: str, split: str) -> dict[str, np.ndarray]:
    """One split of any ``multimodal/v1`` shard set at ``uri``, as arrays (see ``digit_arrays``)."""
    table = split_table(storage, uri, split, ["image", "label", "text"])
    if not table.num_rows:
        raise ValueError(f"split '{split}' of {uri} is empty")
    images = [decode_png(b).transpose(2, 0, 1) for b in table["image"].to_pylist()]
    labels, texts = table["label"].to_pylist(), table["text"].to_pylist()
    return {
        "image": np.stack(images).astype(np.float32) / 255.0,
        "label": np.array(labels, dtype=np.int64),
        "text": np.array(texts, dtype=object),
    }
