"""Profile: where a batched Serve ensemble spends the CPU under 16 clients (the why behind
``serve_load.py``'s batching ratio).

Builds the same 3-member ensemble as ``serve_load.py`` (MiniLM text encoder), starts it with
``--batch`` as max_batch_size, puts 16 clients on /v1/classify and, for 12 s of that load,
records the CPU seconds of every Ray process and samples each Serve process with py-spy. Prints
throughput, CPU seconds per process, CPU milliseconds per request, the sizes of the batches each
member ran, and per process the frames that hold the most samples (self and inclusive). Needs
py-spy (``pip install py-spy``).

    python bench/serve_profile.py [--batch 16] [--seconds 12]
"""

from __future__ import annotations

import argparse
import collections
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))


def summarise(raw: Path, name: str, top: int = 8) -> None:
    """py-spy's raw (collapsed) stacks: the most-sampled leaf frames and our/Serve's frames."""
    own, inclusive, total = collections.Counter(), collections.Counter(), 0
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        frames, n = stack.split(";"), int(count)
        total += n
        own[frames[-1][:110]] += n
        for frame in set(frames):
            if "aigc_ray" in frame or "serve/" in frame:
                inclusive[frame[:110]] += n
    print(f"\n== {name}: {total} samples")
    for frame, n in own.most_common(top):
        print(f"  self {n / total:5.1%}  {frame}")
    for frame, n in inclusive.most_common(top):
        print(f"  incl {n / total:5.1%}  {frame}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=16, help="serve.max_batch_size of the members")
    parser.add_argument("--seconds", type=float, default=12)
    args = parser.parse_args()
    spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    if not Path(spy).exists():
        sys.exit("py-spy is not installed: pip install py-spy")
    os.environ.setdefault("OMP_NUM_THREADS", "1")

    import psutil
    from ray import serve
    from serve_load import bench_overrides, mean_batch, measure, member_batch_sizes, wait_up

    from aigc_ray.data.arrays import digit_arrays
    from aigc_ray.data.images import png_b64
    from aigc_ray.ensemble.build import build_ensemble
    from aigc_ray.runtime import ray_session
    from aigc_ray.serve.deploy import base_url, start_local
    from aigc_ray.spec import load_spec
    from aigc_ray.storage import Storage

    cpus = os.cpu_count() or 2
    with tempfile.TemporaryDirectory() as root:
        spec = load_spec(None, [*bench_overrides(root, cpus), f"serve.max_batch_size={args.batch}"])
        storage = Storage.from_spec(spec.storage)
        with ray_session(spec):
            build_ensemble(spec, storage, log=lambda *_: None)
            test = digit_arrays(spec, storage, "test")
            body = {"image": png_b64((test["image"][0, 0] * 255).round().astype("uint8")), "text": str(test["text"][0])}
            start_local(spec)
            wait_up(base_url(spec))
            ray_procs = {}
            for p in psutil.Process().children(recursive=True):
                title = " ".join(p.cmdline() or [])
                if title.startswith("ray::") or "raylet" in title or "gcs_server" in title:
                    ray_procs[p.pid] = title.split(" ")[0].rsplit("/", 1)[-1][:60]
            result: dict = {}
            load = threading.Thread(
                target=lambda: result.update(m=measure(base_url(spec), body, 16, args.seconds + 4, warmup=3))
            )
            load.start()
            time.sleep(4)
            before = {pid: sum(psutil.Process(pid).cpu_times()[:2]) for pid in ray_procs}
            with tempfile.TemporaryDirectory() as out:
                spies = []
                for pid, name in ray_procs.items():
                    if name.startswith(("ray::Serve", "ray::Proxy")):
                        raw = Path(out, f"{pid}.txt")
                        cmd = [spy, "record", "--pid", str(pid), "--duration", f"{args.seconds:g}", "--rate", "40"]
                        cmd += ["--format", "raw", "--nonblocking", "-o", str(raw)]
                        spies.append(
                            (name, raw, subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
                        )
                time.sleep(args.seconds + 1)
                after = {pid: sum(psutil.Process(pid).cpu_times()[:2]) for pid in ray_procs}
                load.join()
                for *_, proc in spies:
                    proc.wait()
                rps, p50, p99 = result["m"]
                requests = rps * (args.seconds + 1)
                print(f"max_batch_size {args.batch}: {rps:.1f} req/s, p50 {p50:.0f} ms, p99 {p99:.0f} ms, {cpus} CPUs")
                print(f"CPU seconds per process over {args.seconds + 1:g} s ({cpus * (args.seconds + 1):g} available):")
                used = sorted(((after[p] - before[p], ray_procs[p]) for p in ray_procs), reverse=True)
                for seconds, name in used:
                    if seconds >= 0.05:
                        print(f"  {seconds:6.2f} s  {1000 * seconds / requests:6.1f} ms per request  {name}")
                for member, sizes in member_batch_sizes(base_url(spec)).items():
                    print(
                        f"  {member}: {sum(sizes.values())} calls, mean batch {mean_batch(sizes):.1f}, "
                        f"sizes {dict(sorted(sizes.items()))}"
                    )
                for name, raw, _ in spies:
                    if raw.exists():
                        summarise(raw, name)
            serve.shutdown()


if __name__ == "__main__":
    main()
