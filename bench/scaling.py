"""Benchmark: how cost grows with the work.

Data, at 1x, 10x and 50x the embedded digits' 1,797 rows (``data.repeat``), on an S3 server on
loopback (moto):

  stream : the training split streamed as the trainers get it (``multimodal_dataset``: read,
           shuffled as the spec says, PNG-decoded and tokenized by Ray Data), rows/s
  import : the same rows as a user's Parquet source (``data.source.format: parquet``: PNG bytes,
           caption, class name) imported into shards through Ray Data, rows/s

and for each, the peak resident memory of the driver (this process) and of Ray's worker
processes together, sampled every 50 ms while it runs (the object store's shared memory shows in
the workers that map it).

Sweeps, at 4, 16 and 64 trials of the fusion sweep (random learning rates, 2 iterations of 5 steps
each, FIFO, one CPU per trial): wall seconds per trial-iteration, and the marginal seconds per
trial-iteration between consecutive sizes (the slope once each sweep's fixed start is paid).

One line per size; then, per measurement, the largest size's figure ÷ the smallest's with the word
``ratio`` (wanted: rows/s within 20 % across sizes, i.e. ratio ≥ 0.8; memory flat; sweep cost per
trial-iteration flat).

    python bench/scaling.py [--sizes 1 10 50] [--trials 4 16 64] [--shuffle global]
"""

from __future__ import annotations

import argparse
import io
import json
import os
import sys
import tempfile
import threading
import time
from contextlib import contextmanager
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

MiB = 1024 * 1024


class PeakMemory:
    """Peak RSS of this process and of its Ray worker processes (its descendants with ``ray::``
    titles) together: another Ray cluster on the machine does not count."""

    def __init__(self, interval: float = 0.05):
        import psutil

        self.me = psutil.Process()
        self.interval = interval
        self.driver = self.workers = 0
        self._stop = threading.Event()

    def _workers_rss(self) -> int:
        import psutil

        total = 0
        for proc in self.me.children(recursive=True):  # raylet is our child, its workers its children
            try:
                cmd = proc.cmdline()
                if cmd and cmd[0].startswith("ray::"):
                    total += proc.memory_info().rss
            except psutil.Error:  # ended between the listing and the read
                continue
        return total

    def _sample(self) -> None:
        while not self._stop.is_set():
            self.driver = max(self.driver, self.me.memory_info().rss)
            self.workers = max(self.workers, self._workers_rss())
            self._stop.wait(self.interval)

    @contextmanager
    def watching(self):
        thread = threading.Thread(target=self._sample, daemon=True)
        thread.start()
        try:
            yield self
        finally:
            self._stop.set()
            thread.join()


def parquet_source(folder: Path, repeat: int) -> None:
    """The digits as a user's Parquet dataset: PNG bytes, a caption and the class name, ``repeat`` times."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq
    from PIL import Image
    from sklearn.datasets import load_digits

    digits = load_digits()
    pngs = []
    for img in digits.images:
        buf = io.BytesIO()
        Image.fromarray((img * 255 / 16).astype(np.uint8), mode="L").save(buf, format="PNG")
        pngs.append(buf.getvalue())
    names = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
    folder.mkdir(parents=True)
    for copy in range(repeat):  # one file per copy: many files, as a real source has
        table = pa.table(
            {
                "image": pngs,
                "text": [f"a handwritten {names[y]}" for y in digits.target],
                "label": [names[y] for y in digits.target],
            }
        )
        pq.write_table(table, folder / f"part-{copy:05d}.parquet")


def measure(fn) -> tuple[int, float, PeakMemory]:
    peak = PeakMemory()
    with peak.watching():
        start = time.perf_counter()
        rows = fn()
        seconds = time.perf_counter() - start
    return rows, seconds, peak


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[1, 10, 50], help="copies of the digits")
    parser.add_argument("--trials", type=int, nargs="+", default=[4, 16, 64], help="sweep sizes")
    parser.add_argument("--shuffle", default=None, help="data.shuffle for the stream (default: the spec's)")
    args = parser.parse_args()

    from data_stream import bench_env, start_s3

    bench_env()
    import boto3

    from aigc_ray.data.build import build_data
    from aigc_ray.data.image_import import import_images
    from aigc_ray.data.stream import multimodal_dataset
    from aigc_ray.layout import data_root
    from aigc_ray.runtime import ray_session
    from aigc_ray.spec import load_spec
    from aigc_ray.storage import Storage, join
    from aigc_ray.tune.fusion_sweep import run_fusion_sweep

    cpus = os.cpu_count() or 2
    started = time.time()
    proc, endpoint = start_s3()
    work = tempfile.TemporaryDirectory(prefix="aigc-bench-scaling-")
    try:
        boto3.client("s3", endpoint_url=endpoint).create_bucket(Bucket="bench")

        def spec_for(name: str, *extra: str):
            return load_spec(
                None,
                [
                    f"storage.root=s3://bench/{name}",
                    f"storage.endpoint_url={endpoint}",
                    f"name={name}",
                    f"ray.num_cpus={cpus}",
                    "data.corpus_max_chars=20000",
                    "data.rows_per_shard=2048",
                    *([f"data.shuffle={args.shuffle}"] if args.shuffle else []),
                    *extra,
                ],
            )

        quiet = {"log": lambda *_: None}
        measured: dict[str, dict[int, tuple[int, float, PeakMemory]]] = {"stream": {}, "import": {}}
        print(f"{cpus} CPUs; S3 at {endpoint}; sizes {args.sizes} x 1,797 rows; sweeps of {args.trials} trials")
        for n in args.sizes:
            spec = spec_for(f"x{n}", f"data.repeat={n}")
            storage = Storage.from_spec(spec.storage)
            build_data(spec, storage, **quiet)
            source = Path(work.name, f"source-x{n}")
            parquet_source(source, n)
            imported = spec_for(f"import-x{n}", f"data.source={json.dumps({'format': 'parquet', 'uri': str(source)})}")
            with ray_session(spec):
                multimodal_dataset(spec, storage, "train").materialize()  # warm-up: workers, imports

                def stream(spec=spec, storage=storage) -> int:
                    ds = multimodal_dataset(spec, storage, "train")
                    return sum(len(b["label"]) for b in ds.iter_batches(batch_size=256, batch_format="numpy"))

                def import_(imported=imported) -> int:
                    shards = join(data_root(imported), "multimodal")
                    manifest = import_images(
                        imported, Storage.from_spec(imported.storage), shards, "bench", {}, **quiet
                    )
                    return manifest.meta["rows"]

                for name, fn in (("stream", stream), ("import", import_)):
                    rows, seconds, peak = measure(fn)
                    measured[name][n] = (rows, seconds, peak)
                    print(
                        f"{name:<7} x{n:<3} {rows:>7,d} rows  {rows / seconds:>8,.0f} rows/s  "
                        f"peak driver {peak.driver / MiB:6.0f} MiB  workers {peak.workers / MiB:6.0f} MiB",
                        flush=True,
                    )
        small, large = min(args.sizes), max(args.sizes)
        for name, by_size in measured.items():
            (n0, t0, m0), (n1, t1, m1) = by_size[small], by_size[large]
            print(f"{name:<7} rows/s x{large} / x{small} ratio {(n1 / t1) / (n0 / t0):.2f}")
            # seconds = fixed + rows / marginal rate, through the two ends: what a bigger run pays per row
            if t1 > t0:
                marginal = (n1 - n0) / (t1 - t0)
                print(f"{name:<7} marginal {marginal:,.0f} rows/s, fixed start {t0 - n0 / marginal:.1f} s per pass")
            else:  # the fixed cost (and noise) swamps the rows: no rate to fit
                print(f"{name:<7} marginal rate not measurable: x{large} took no longer than x{small}")
            print(f"{name:<7} peak driver memory x{large} / x{small} ratio {m1.driver / m0.driver:.2f}")
            print(f"{name:<7} peak worker memory x{large} / x{small} ratio {m1.workers / m0.workers:.2f}")

        walls: dict[int, tuple[int, float]] = {}  # trials -> (trial-iterations, wall seconds)
        sweep_space = json.dumps({"image_lr": {"type": "loguniform", "low": 1e-3, "high": 3e-2}})
        for trials in args.trials:
            spec = spec_for(
                "x1",
                "data.repeat=1",
                f"fusion.sweep.search_space={sweep_space}",
                "fusion.sweep.scheduler=fifo",
                "fusion.sweep.search_alg=random",
                f"fusion.sweep.num_samples={trials}",
                "fusion.sweep.max_iterations=2",
                "fusion.sweep.steps_per_iteration=5",
                f"fusion.sweep.max_concurrent_trials={cpus}",
                "fusion.sweep.cpus_per_trial=1",
                f"name=sweep{trials}",
            )
            storage = Storage.from_spec(spec.storage)
            with ray_session(spec):
                start = time.perf_counter()
                result = run_fusion_sweep(spec, storage, progress=False, **quiet)
                wall = time.perf_counter() - start
            iterations = result.total_steps // 5
            walls[trials] = (iterations, wall)
            print(
                f"sweep   {trials:>3} trials  {iterations:>4} trial-iterations  {wall:7.1f} s  "
                f"{wall / iterations:.2f} s per trial-iteration",
                flush=True,
            )
        few, many = min(args.trials), max(args.trials)
        (i0, w0), (i1, w1) = walls[few], walls[many]
        print(f"sweep   s per trial-iteration {many} / {few} trials ratio {(w1 / i1) / (w0 / i0):.2f}")
        # What each further trial-iteration costs once the sweep's fixed start is paid (the slope
        # between consecutive sizes): linear cost means this stays flat as the sweep grows.
        sizes = sorted(walls)
        slopes = [
            (walls[b][1] - walls[a][1]) / (walls[b][0] - walls[a][0])
            for a, b in zip(sizes, sizes[1:], strict=False)
            if walls[b][0] > walls[a][0]
        ]
        if len(slopes) >= 2:
            steps = " / ".join(f"{x:.2f}" for x in slopes)
            print(
                f"sweep   marginal s per trial-iteration {steps} (between sizes {sizes}) ratio {slopes[-1] / slopes[0]:.2f}"
            )
        print(f"total {time.time() - started:.0f} s")
    finally:
        proc.terminate()
        proc.wait()
        work.cleanup()


if __name__ == "__main__":
    main()
