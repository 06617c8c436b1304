"""Benchmark: Ray Data streaming shards from an S3 server vs plain pyarrow reading the same shards.

Starts moto's S3 server on loopback, builds the embedded dataset there (``--repeat`` copies, for
enough rows to time), starts a local Ray, and times, side by side in this process tree:

  read       : projected columns (id, text, image, label) of every shard, iterated as Arrow
               batches on both sides (the same work: no conversion)
  read_numpy : the same delivered as numpy batches on both sides (what a torch loop reads: the
               image and text columns become object arrays, one Python object per row)
  pipeline   : the same plus PNG decode + caption tokenization (Ray Data: map_batches over the
               cluster's CPUs; baseline: the same function called in this process)
  fixed      : what a Ray Data read pass costs however little it reads (one shard): the floor
               under any pass; marginal: the rate of each further shard once that is paid

Ray Data reads with the spec's ``data.parquet_reader`` (``--reader v2`` for Ray 2.60's default).
Ray's start-up and one warm-up pass are excluded; each figure is the median of ``--runs`` runs.
Prints one line per comparison with the word ``ratio`` (Ray Data rows/s ÷ pyarrow rows/s).
"""

from __future__ import annotations

import argparse
import logging
import os
import statistics
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from aigc_ray.layout import data_root

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

COLUMNS = ["id", "text", "image", "label"]


def start_s3() -> tuple[subprocess.Popen, str]:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    endpoint = f"http://127.0.0.1:{port}"
    for _ in range(300):
        try:
            urllib.request.urlopen(f"{endpoint}/moto-api/", timeout=1)
            return proc, endpoint
        except OSError:
            time.sleep(0.1)
    proc.kill()
    raise RuntimeError("moto server did not start")


def bench_env() -> None:
    """Credentials for the loopback S3 server (nothing real) and one thread per process."""
    os.environ.update(
        AWS_ACCESS_KEY_ID="bench",
        AWS_SECRET_ACCESS_KEY="bench",
        AWS_DEFAULT_REGION="us-east-1",
        AWS_EC2_METADATA_DISABLED="true",
        OMP_NUM_THREADS="1",
        TOKENIZERS_PARALLELISM="false",
    )


def pyarrow_pass(storage, files, batch_size, preprocess=None, numpy=False) -> int:
    import pyarrow.parquet as pq

    rows = 0
    for uri in files:
        fs, path = storage.filesystem(uri)
        with fs.open_input_file(path) as f:
            for batch in pq.ParquetFile(f).iter_batches(batch_size=batch_size, columns=COLUMNS):
                if preprocess or numpy:
                    arrays = {name: batch.column(name).to_numpy(zero_copy_only=False) for name in batch.schema.names}
                    if preprocess:
                        preprocess(arrays)
                rows += batch.num_rows
    return rows


def ray_pass(ds, batch_size, batch_format="numpy") -> int:
    return sum(len(b["label"]) for b in ds.iter_batches(batch_size=batch_size, batch_format=batch_format))


def timed(fn, runs: int) -> tuple[float, int]:
    fn()  # warm-up: caches, lazy imports, worker start
    times, rows = [], 0
    for _ in range(runs):
        start = time.perf_counter()
        rows = fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--repeat", type=int, default=100, help="copies of the 1,797 digits (default 100: 179,700 rows)"
    )
    parser.add_argument("--rows-per-shard", type=int, default=8192)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--reader", choices=["v1", "v2"], help="data.parquet_reader (default: the spec's)")
    args = parser.parse_args()

    bench_env()
    import ray

    from aigc_ray.data.build import build_data
    from aigc_ray.data.shards import shard_files
    from aigc_ray.data.stream import parquet_dataset, preprocess_multimodal
    from aigc_ray.spec import load_spec
    from aigc_ray.storage import Storage, join

    proc, endpoint = start_s3()
    try:
        import boto3

        boto3.client("s3", endpoint_url=endpoint).create_bucket(Bucket="bench")
        spec = load_spec(
            None,
            [
                "storage.root=s3://bench/run",
                f"storage.endpoint_url={endpoint}",
                f"data.repeat={args.repeat}",
                f"data.rows_per_shard={args.rows_per_shard}",
                "data.corpus_max_chars=20000",
                "data.shuffle=none",
                *([f"data.parquet_reader={args.reader}"] if args.reader else []),
            ],
        )
        storage = Storage.from_spec(spec.storage)
        build_data(spec, storage, log=lambda *_: None)
        files = shard_files(storage, join(data_root(spec), "multimodal"))
        tok_kwargs = {
            "s3": storage.s3,
            "tokenizer_uri": join(data_root(spec), "tokenizer"),
            "max_len": spec.data.max_seq_len,
        }

        ray.init(
            num_cpus=os.cpu_count(),
            include_dashboard=False,
            logging_level="ERROR",
            runtime_env={"env_vars": {"OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}},
        )
        from ray.data import DataContext

        DataContext.get_current().enable_progress_bars = False
        logging.getLogger("ray.data").setLevel(logging.WARNING)  # its per-pass INFO lines: noise here

        shard_set = join(data_root(spec), "multimodal")

        def ray_read():  # the project's reader (data.parquet_reader), as read_split uses it
            return parquet_dataset(storage, shard_set, files, spec.data).select_columns(COLUMNS)

        def ray_pipeline():
            return ray_read().map_batches(
                preprocess_multimodal, batch_format="numpy", batch_size=args.batch_size, fn_kwargs=tok_kwargs
            )

        def baseline_pre(batch):
            batch["split"] = None
            return preprocess_multimodal(batch, **tok_kwargs)

        comparisons = [
            (
                "read",
                lambda: ray_pass(ray_read(), args.batch_size, "pyarrow"),
                lambda: pyarrow_pass(storage, files, args.batch_size),
            ),
            (
                "read_numpy",
                lambda: ray_pass(ray_read(), args.batch_size),
                lambda: pyarrow_pass(storage, files, args.batch_size, numpy=True),
            ),
            (
                "pipeline",
                lambda: ray_pass(ray_pipeline(), args.batch_size),
                lambda: pyarrow_pass(storage, files, args.batch_size, baseline_pre),
            ),
        ]
        print(
            f"{len(files)} shards, {args.repeat * 1797} rows on S3 at {endpoint}; {os.cpu_count()} CPUs; "
            f"Ray Data's {spec.data.parquet_reader} Parquet reader; "
            f"median of {args.runs} runs after a warm-up"
        )
        seconds = {}
        for name, ray_fn, base_fn in comparisons:
            t_ray, n_ray = timed(ray_fn, args.runs)
            t_base, n_base = timed(base_fn, args.runs)
            assert n_ray == n_base, f"{name}: Ray Data read {n_ray} rows, pyarrow {n_base}"
            seconds[name] = (t_ray, t_base, n_ray)
            r_ray, r_base = n_ray / t_ray, n_base / t_base
            print(
                f"{name:<10} ray_data {r_ray:>10,.0f} rows/s  pyarrow {r_base:>10,.0f} rows/s  ratio {r_ray / r_base:.2f}"
            )

        # The floor under every read pass: Ray Data's plan for read_parquet (list files, then read
        # tasks, each in a worker) run over a single shard. Then the marginal rate: each further
        # shard once that fixed cost is paid, against pyarrow's whole-read rate.
        def ray_read_one():
            return parquet_dataset(storage, shard_set, files[:1], spec.data).select_columns(COLUMNS)

        t_one, n_one = timed(lambda: ray_pass(ray_read_one(), args.batch_size, "pyarrow"), args.runs)
        t_ray, t_base, rows = seconds["read"]
        print(
            f"fixed      ray_data {t_one:.2f} s for a one-shard read pass ({n_one:,} rows); the whole read "
            f"{t_ray:.2f} s, pyarrow's {t_base:.2f} s"
        )
        if t_ray > t_one and rows > n_one:
            marginal = (rows - n_one) / (t_ray - t_one)
            print(
                f"marginal   ray_data {marginal:>10,.0f} rows/s  pyarrow {rows / t_base:>10,.0f} rows/s  "
                f"ratio {marginal * t_base / rows:.2f} (each shard after the first)"
            )
        ray.shutdown()
    finally:
        proc.terminate()
        proc.wait()


if __name__ == "__main__":
    main()
