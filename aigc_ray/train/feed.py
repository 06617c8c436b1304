"""Feeding Ray Data shards to Ray Train workers, and a loop that proves the feed is right.

``stream_to_workers`` runs a TorchTrainer whose workers each consume their shard of a split
(``ray.train.get_dataset_shard``) and write what they saw to storage; the driver gathers the
per-rank summaries; ``stream_epoch`` (``aigc data stream``) prints them, or streams into the driver.
The training stages use the same sharding config and resource policy.
"""

from __future__ import annotations

import collections
import json
import tempfile
import uuid

from ray.train import DataConfig

from .. import progress
from ..data.stream import EpochSummary, multimodal_dataset, summarize
from ..layout import stream_check_uri
from ..runtime import cpus_per_train_worker, set_train_driver_env
from ..spec import ExperimentSpec
from ..storage import Storage, join


def ordered_ingest_options():
    """Ray Train's ingest options with ``preserve_order`` on.

    DataConfig replaces a dataset's execution options with ones copied from the *driver's*
    current DataContext, dropping the dataset's own ``preserve_order``: without this, each
    worker would see the "same" stream in its own order.
    """
    options = DataConfig.default_ingest_options()
    options.preserve_order = True
    return options


class ShardingConfig(DataConfig):
    """Ray Train's DataConfig with the choice Ray hard-codes exposed: ``equal``.

    equal=True: every worker sees the same number of rows (fewer than world_size rows are dropped
    per epoch), which synchronous data-parallel training needs to avoid a collective hang.
    equal=False: every row is seen exactly once; workers may differ by a block.
    """

    def __init__(self, equal: bool = True, **kwargs):
        kwargs.setdefault("execution_options", ordered_ingest_options())
        super().__init__(**kwargs)
        self._equal = equal

    def configure(self, datasets, world_size, worker_handles, worker_node_ids, **kwargs):
        output = [{} for _ in range(world_size)]
        hints = worker_node_ids if self._enable_shard_locality else None
        for name, ds in datasets.items():
            ds = ds.copy(ds)
            ds.context.execution_options = self._resolve_execution_options(name)
            splits = ds.streaming_split(world_size, equal=self._equal, locality_hints=hints)
            for rank, split in enumerate(splits):
                output[rank][name] = split
        return output


def train_feed_loop(config: dict) -> None:
    """Worker loop: consume this rank's shard once and write a summary (with row ids) to storage."""
    import ray.train
    import torch

    ctx = ray.train.get_context()
    shard = ray.train.get_dataset_shard("train")
    summary = summarize(shard.iter_batches(batch_size=config["batch_size"], batch_format="numpy"))
    record = {
        "rank": ctx.get_world_rank(),
        "rows": summary.rows,
        "ids": summary.ids,
        "labels": dict(summary.labels),
        "seconds": summary.seconds,
        "threads": torch.get_num_threads(),
    }
    Storage(config["s3"]).write_json(join(config["out_uri"], f"rank-{record['rank']}.json"), record)
    ray.train.report({"rows": summary.rows})


def stream_to_workers(
    spec: ExperimentSpec, storage: Storage, num_workers: int = 2, split: str = "train", equal: bool | None = None
) -> list[EpochSummary]:
    """Stream one epoch of ``split`` into ``num_workers`` Train workers; one summary per rank."""
    import ray
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    out_uri = join(stream_check_uri(spec), uuid.uuid4().hex[:12])
    cpus = cpus_per_train_worker(num_workers, ray.cluster_resources().get("CPU", 1), spec.ray.data_cpus)
    with tempfile.TemporaryDirectory(prefix="aigc-train-") as run_dir:
        trainer = TorchTrainer(
            train_feed_loop,
            train_loop_config={"batch_size": spec.data.batch_size, "s3": storage.s3, "out_uri": out_uri},
            scaling_config=ScalingConfig(num_workers=num_workers, resources_per_worker={"CPU": cpus}),
            torch_config=TorchConfig(backend="gloo"),
            datasets={"train": multimodal_dataset(spec, storage, split)},
            dataset_config=ShardingConfig(equal=spec.data.equal_shards if equal is None else equal),
            run_config=RunConfig(name=f"stream-{uuid.uuid4().hex[:8]}", storage_path=run_dir),
        )
        set_train_driver_env()
        trainer.fit()
    summaries = []
    for rank in range(num_workers):
        uri = join(out_uri, f"rank-{rank}.json")
        record = json.loads(storage.read_bytes(uri))
        storage.delete(uri)
        labels = collections.Counter({int(k): v for k, v in record["labels"].items()})
        summaries.append(
            EpochSummary(
                rows=record["rows"],
                labels=labels,
                ids=record["ids"],
                seconds=record["seconds"],
                threads=record["threads"],
            )
        )
    return summaries


def stream_epoch(
    spec: ExperimentSpec, storage: Storage, split: str, workers: int = 0, log=print
) -> EpochSummary | None:
    """Stream one epoch of ``split`` through Ray Data (into ``workers`` Ray Train workers, or the
    driver) and print what was read: a smoke check that the shards flow. Returns the driver's
    summary (None when the workers read)."""
    if workers:
        summaries = stream_to_workers(spec, storage, workers, split)
        for rank, s in enumerate(summaries):
            log(f"  worker {rank}: {s.rows} rows, torch threads {s.threads}, labels {dict(sorted(s.labels.items()))}")
        log(f"  total {sum(s.rows for s in summaries)} rows across {workers} Ray Train workers")
        return None
    ds = multimodal_dataset(spec, storage, split)
    summary = summarize(_counted(ds.iter_batches(batch_size=spec.data.batch_size, batch_format="numpy"), split))
    for line in summary.lines():
        log(f"  {line}")
    return summary


def _counted(batches, split: str):
    """The batches, with the rows read so far on the live line."""
    rows = 0
    for batch in batches:
        rows += len(next(iter(batch.values()), ()))
        progress.emit(f"stream {split}: {rows:,} rows read")
        yield batch
