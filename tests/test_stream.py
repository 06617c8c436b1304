"""Ray Data streaming from the real S3 server, into the driver and into Ray Train workers."""

from __future__ import annotations

import pytest

from aigc_ray.data.stream import multimodal_dataset, read_split, summarize, v1_read_tasks
from aigc_ray.layout import data_root
from aigc_ray.runtime import cpus_per_train_worker
from aigc_ray.storage import S3Settings, Storage, StorageError
from aigc_ray.train.feed import stream_to_workers

pytestmark = pytest.mark.timeout(300)


def split_ids(storage, spec, split):
    import pyarrow.parquet as pq

    from aigc_ray.data.shards import shard_files

    ids = []
    for uri in shard_files(storage, data_root(spec) + "/multimodal"):
        fs, path = storage.filesystem(uri)
        t = pq.read_table(path, filesystem=fs, columns=["id", "split"])
        ids += [i for i, s in zip(t["id"].to_pylist(), t["split"].to_pylist(), strict=True) if s == split]
    return ids


def test_driver_stream_from_s3_reads_the_split_decoded_and_tokenized(ray_local, s3_data):
    spec, storage = s3_data
    batches = list(multimodal_dataset(spec, storage, "val").iter_batches(batch_size=64, batch_format="numpy"))
    first = batches[0]
    assert first["image"].shape[1:] == (1, 8, 8) and first["image"].dtype.name == "float32"
    assert 0.0 <= first["image"].min() and first["image"].max() <= 1.0 and first["image"].max() > 0.5
    assert first["input_ids"].shape[1] == spec.data.max_seq_len and first["attention_mask"][:, 0].all()
    summary = summarize(iter(batches))
    assert sorted(summary.ids) == sorted(split_ids(storage, spec, "val"))
    assert summary.rows == 180 and set(summary.labels) == set(range(10))


def test_only_projected_columns_are_read_and_shuffle_is_seeded(ray_local, s3_data):
    spec, storage = s3_data
    ds = read_split(spec, storage, "test", columns=["id", "label"])
    assert set(ds.schema().names) == {"id", "label", "split"}
    order = [r["id"] for r in ds.take_all()]
    again = [r["id"] for r in read_split(spec, storage, "test", columns=["id", "label"]).take_all()]
    other_epoch = [r["id"] for r in read_split(spec, storage, "test", columns=["id", "label"], epoch=1).take_all()]
    assert order == again  # same seed, same order
    assert order != other_epoch and sorted(order) == sorted(other_epoch)  # a new order each epoch
    assert order != sorted(order)


def _with_data(spec, **fields):
    return spec.model_copy(update={"data": spec.data.model_copy(update=fields)})


@pytest.mark.parametrize("shuffle", ["none", "files"])
def test_both_parquet_readers_give_the_same_rows_in_the_same_seeded_order(ray_local, s3_data, shuffle):
    """Ray Data's v1 reader (the default: no footer actors per pass) and its v2 reader read the
    same split of the same shards in the same order, unshuffled or in the seeded file order."""
    spec, storage = s3_data
    orders = {}
    for reader in ("v1", "v2"):
        chosen = _with_data(spec, parquet_reader=reader, shuffle=shuffle)
        orders[reader] = [r["id"] for r in read_split(chosen, storage, "train", columns=["id", "label"]).take_all()]
    assert orders["v1"] == orders["v2"]
    assert sorted(orders["v1"]) == sorted(split_ids(storage, spec, "train"))


def test_v1_read_tasks_one_per_read_unit_at_least_one_per_cpu_at_most_one_per_file():
    mib = 2**20
    assert v1_read_tasks([mib] * 40, read_unit_mb=4, cpus=2) == 10  # 40 MiB in 4 MiB units
    assert v1_read_tasks([mib // 10] * 22, read_unit_mb=4, cpus=4) == 4  # small: every CPU reads
    assert v1_read_tasks([mib // 10] * 3, read_unit_mb=4, cpus=8) == 3  # never more than the files
    assert v1_read_tasks([100 * mib], read_unit_mb=4, cpus=2) == 1  # one file is one task
    assert v1_read_tasks([], read_unit_mb=4, cpus=2) == 1


@pytest.mark.slow
def test_two_train_workers_see_disjoint_rows_covering_the_split(ray_local, s3_data):
    spec, storage = s3_data
    expected = split_ids(storage, spec, "train")
    everything = stream_to_workers(spec, storage, num_workers=2, split="train", equal=False)
    a, b = (set(s.ids) for s in everything)
    assert a and b and not a & b
    assert sorted(a | b) == sorted(expected) and sum(s.rows for s in everything) == len(expected) == 1437

    equal = stream_to_workers(spec, storage, num_workers=2, split="train", equal=True)
    a, b = (set(s.ids) for s in equal)
    assert not a & b and len(a) == len(b) and len(expected) - len(a | b) < 2


def test_a_missing_bucket_fails_before_any_ray_work(ray_local, s3_server):
    from aigc_ray.spec import load_spec

    spec = load_spec(
        None, ["storage.root=s3://bucket-that-is-not-there/x", f"storage.endpoint_url={s3_server.endpoint}"]
    )
    with pytest.raises(StorageError, match="bucket-that-is-not-there: bucket does not exist"):
        multimodal_dataset(spec, Storage(S3Settings(s3_server.endpoint)), "train")


def test_train_workers_leave_cpus_for_data():
    assert cpus_per_train_worker(2, 2, 1.0) == 0.5
    assert cpus_per_train_worker(1, 2, 1.0) == 1.0
    assert cpus_per_train_worker(4, 64, 2.0) == 1.0
    assert cpus_per_train_worker(8, 2, 1.0) == 0.125
    with pytest.raises(ValueError):
        cpus_per_train_worker(0, 2, 1.0)
