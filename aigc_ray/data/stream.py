"""Ray Data pipelines over shard sets: read (projected, from S3 or disk), decode, tokenize, shuffle.

The same Dataset feeds the driver (``aigc data stream``) or Ray Train workers, through
``TorchTrainer(datasets=...)`` and ``ray.train.get_dataset_shard`` inside the loop.
"""

from __future__ import annotations

import collections
import contextlib
import math
import os
import time
from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np

from ..layout import data_root, tokenizer_uri
from ..spec import ExperimentSpec
from ..spec.data import DataSpec
from ..storage import S3Settings, Storage, join
from .images import decode_png
from .shards import shard_files
from .tokenizer import load_fast_tokenizer

MULTIMODAL_COLUMNS = ["id", "text", "image", "label", "split"]


def v1_read_tasks(file_bytes: list[int], read_unit_mb: float, cpus: int) -> int:
    """How many read tasks Ray Data's v1 Parquet reader gets for a shard set: one per
    ``read_unit_mb`` of files, at least one per CPU (so every CPU reads), never more than one per
    file (its smallest unit). Its own default, one task per file, cost ~90 ms a task here: 22
    small shards read at 140,000 rows/s, in 4 tasks at 330,000."""
    by_size = math.ceil(sum(file_bytes) / (read_unit_mb * 2**20))
    return max(1, min(len(file_bytes), max(by_size, cpus)))


def parquet_dataset(storage: Storage, uri: str, files: list[str], data: DataSpec, shuffle=None):
    """A Ray Dataset over ``files`` (a shard set under ``uri``) with the reader ``data`` names
    (``data.parquet_reader``, see the spec). Ray Data 2.60's v2 reader starts ``footer_readers``
    actors afresh for every pass, to read the files' footers before any read task: ~1.4 s
    before the first row on 2 cores however little is read (an epoch over the demo's 8 shards of
    160 KB in all, a one-shard pass from S3 alike). The v1 reader reads the footers inside its
    read tasks: the same one-shard pass in 0.13-0.18 s."""
    import ray
    import ray.data
    from ray.data import DataContext

    fs, _ = storage.filesystem(uri)
    paths = [storage.filesystem(f)[1] for f in files]
    context = DataContext.get_current()
    if data.parquet_reader == "v2":
        with parquet_read_knobs(data.read_unit_mb, data.footer_readers), _datasource_v2(context, True):
            return ray.data.read_parquet(paths, filesystem=fs, shuffle=shuffle)
    sizes = {u: size for u, size, _ in storage.file_stats(uri)}
    cpus = int(ray.cluster_resources().get("CPU", 1)) if ray.is_initialized() else os.cpu_count() or 1
    tasks = v1_read_tasks([sizes.get(f, 0) for f in files], data.read_unit_mb, cpus)
    with _datasource_v2(context, False):
        return ray.data.read_parquet(paths, filesystem=fs, shuffle=shuffle, override_num_blocks=tasks)


@contextlib.contextmanager
def _datasource_v2(context, on: bool):
    """Ray Data picks its Parquet reader from the context when ``read_parquet`` is called."""
    saved = context.use_datasource_v2
    context.use_datasource_v2 = on
    try:
        yield
    finally:
        context.use_datasource_v2 = saved


@contextlib.contextmanager
def parquet_read_knobs(read_unit_mb: float, footer_readers: int):
    """Ray Data 2.60 reads these two Parquet knobs from the environment when ``read_parquet`` is
    called (in the driver, at plan time), so set them for exactly that call."""
    knobs = {
        "RAY_DATA_PARQUET_BIN_PACKING_BYTES": str(int(read_unit_mb * 2**20)),
        "RAY_DATA_PARQUET_FOOTER_NUM_ACTORS": str(footer_readers),
    }
    saved = {k: os.environ.get(k) for k in knobs}
    os.environ.update(knobs)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def read_split(
    spec: ExperimentSpec,
    storage: Storage,
    split: str = "train",
    part: str = "multimodal",
    columns: list[str] | None = None,
    epoch: int = 0,
):
    """A Ray Dataset of one split of a shard set, rows shuffled as the spec says (seed + epoch).

    Only ``columns`` (plus ``split``) are read from Parquet; the split filter is pushed down to Arrow.
    """
    from ray.data.datasource import FileShuffleConfig
    from ray.data.expressions import col

    uri = join(data_root(spec), part)
    files = shard_files(storage, uri)
    seed = spec.data.seed + epoch
    wanted = list(dict.fromkeys([*(columns or MULTIMODAL_COLUMNS), "split"]))
    file_shuffle = FileShuffleConfig(seed=seed) if spec.data.shuffle == "files" else None
    ds = parquet_dataset(storage, uri, files, spec.data, shuffle=file_shuffle).select_columns(wanted)
    # Parallel read tasks finish in any order; without this the "seeded" shuffle would permute a
    # differently ordered input each run, and the same seed would not give the same epoch.
    ds.context.execution_options.preserve_order = True
    ds = ds.filter(expr=col("split") == split)
    if spec.data.shuffle == "global":
        # As many output blocks as shard files: one block would go to a single worker whole.
        ds = ds.random_shuffle(seed=seed).repartition(max(2, len(files)))
    return ds


def preprocess_multimodal(batch: dict, s3: S3Settings, tokenizer_uri: str, max_len: int) -> dict:
    """Decode PNGs to float images (N, C, H, W) in [0, 1] and tokenize captions to fixed length.

    Ray Data runs this in ``map_batches``: ``iter_torch_batches`` cannot convert bytes or strings.
    """
    tok = load_fast_tokenizer(s3, tokenizer_uri)
    pad_id = tok.token_to_id("<pad>")
    images = np.stack([decode_png(b) for b in batch["image"]]).astype(np.float32) / 255.0
    encodings = tok.encode_batch([str(t) for t in batch["text"]])
    ids = np.full((len(encodings), max_len), pad_id, dtype=np.int64)
    mask = np.zeros((len(encodings), max_len), dtype=np.int64)
    for i, enc in enumerate(encodings):
        n = min(len(enc.ids), max_len)
        ids[i, :n] = enc.ids[:n]
        mask[i, :n] = 1
    return {
        "id": np.asarray(batch["id"], dtype=object),
        "image": images.transpose(0, 3, 1, 2),  # (N, H, W, C) -> (N, C, H, W)
        "input_ids": ids,
        "attention_mask": mask,
        "label": np.asarray(batch["label"], dtype=np.int64),
    }


def multimodal_dataset(spec: ExperimentSpec, storage: Storage, split: str = "train", epoch: int = 0):
    """The ready-to-train multimodal split: read, shuffled, decoded and tokenized by Ray Data."""
    ds = read_split(spec, storage, split, epoch=epoch)
    return ds.map_batches(
        preprocess_multimodal,
        batch_format="numpy",
        batch_size=spec.data.batch_size,
        fn_kwargs={
            "s3": storage.s3,
            "tokenizer_uri": tokenizer_uri(spec),
            "max_len": spec.data.max_seq_len,
        },
    )


@dataclass
class EpochSummary:
    """What one pass over a stream saw: counts a person can check against the shard manifest."""

    rows: int = 0
    batches: int = 0
    labels: collections.Counter = field(default_factory=collections.Counter)
    tokens: int = 0
    pixel_sum: float = 0.0
    ids: list[str] = field(default_factory=list)
    seconds: float = 0.0
    threads: int | None = None  # torch intra-op threads of the consuming process (pinned: 1)

    def add(self, batch: dict) -> None:
        n = len(batch["label"])
        self.rows += n
        self.batches += 1
        self.labels.update(int(x) for x in batch["label"])
        self.tokens += int(np.asarray(batch["attention_mask"]).sum())
        self.pixel_sum += float(np.asarray(batch["image"]).mean()) * n
        self.ids.extend(str(i) for i in batch["id"])

    def lines(self) -> list[str]:
        rate = self.rows / self.seconds if self.seconds else float("nan")
        return [
            f"rows {self.rows} in {self.batches} batches, {self.seconds:.2f} s ({rate:,.0f} rows/s)",
            f"labels {dict(sorted(self.labels.items()))}",
            f"tokens/caption {self.tokens / max(self.rows, 1):.2f}, mean pixel {self.pixel_sum / max(self.rows, 1):.3f}",
            f"unique ids {len(set(self.ids))}",
        ]


def summarize(batches: Iterable[dict]) -> EpochSummary:
    """Consume an iterable of preprocessed batches into an EpochSummary (timed)."""
    summary = EpochSummary()
    start = time.perf_counter()
    for batch in batches:
        summary.add(batch)
    summary.seconds = time.perf_counter() - start
    return summary
