"""Benchmark: the Serve ensemble against a plain FastAPI + uvicorn server, 16 concurrent clients.

The ensemble: 3 fusion classifiers (bagged members, MiniLM text encoder by default, so that a
forward pass costs what a real model's does). Three servers answer the same POST /v1/classify
requests (a real digit and its caption), one after the other:

  serve batched    Ray Serve: ingress + one deployment per member, the ingress batching requests
                   dynamically (one call per member per batch)
  serve unbatched  the same with max_batch_size 1
  plain            one uvicorn process holding the same 3 members, called in turn per request

Prints throughput and p50/p99 latency of each, then the ratios (targets: Serve batched ≥ 0.8×
plain; batched ≥ 3× unbatched). Every server gets the whole machine while it is measured.
"""

import argparse
import collections
import concurrent.futures
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def measure(url: str, body: dict, clients: int, seconds: float, warmup: float = 3.0) -> tuple[float, float, float]:
    """(requests/s, p50 ms, p99 ms) of ``clients`` threads posting without pause for ``seconds``."""
    import httpx

    latencies: list[float] = []
    errors = []
    stop = threading.Event()
    counting = threading.Event()

    def client():
        with httpx.Client(timeout=60) as c:
            while not stop.is_set():
                t = time.perf_counter()
                res = c.post(url + "/v1/classify", json=body)
                if res.status_code != 200:
                    errors.append(res.status_code)
                elif counting.is_set():
                    latencies.append(time.perf_counter() - t)

    with concurrent.futures.ThreadPoolExecutor(clients) as pool:
        for _ in range(clients):
            pool.submit(client)
        time.sleep(warmup)
        counting.set()
        start = time.perf_counter()
        time.sleep(seconds)
        stop.set()
        elapsed = time.perf_counter() - start
    if errors:
        raise RuntimeError(f"{len(errors)} failed requests at {url}: {sorted(set(errors))}")
    q = statistics.quantiles(latencies, n=100)
    return len(latencies) / elapsed, q[49] * 1000, q[98] * 1000


def wait_up(url: str, timeout: float = 120) -> None:
    import httpx

    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            if httpx.get(url + "/healthz", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.5)
    raise RuntimeError(f"{url} did not come up")


def member_batch_sizes(url: str) -> dict[str, dict[int, int]]:
    """Per member, how many batches of each size it ran since the server started (``/v1/members/stats``)."""
    import httpx

    stats = httpx.get(url + "/v1/members/stats", timeout=30).json()
    return {member: {int(size): n for size, n in s["batches"].items()} for member, s in stats.items()}


def mean_batch(sizes: dict[int, int]) -> float:
    """Requests per call of a {batch size: calls} count."""
    return sum(size * n for size, n in sizes.items()) / max(1, sum(sizes.values()))


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def bench_overrides(root: str, cpus: int, text_encoder: str = "minilm") -> list[str]:
    """The spec of the benchmarked ensemble: 3 bagged fusion members, mean of their probabilities."""
    return [
        f"storage.root={root}",
        "name=bench",
        f"ray.num_cpus={cpus}",
        f"fusion.text_encoder={text_encoder}",
        "fusion.sweep.steps_per_iteration=5",
        "ensemble.top_k=0",
        "ensemble.bagging=3",
        "ensemble.bagging_iterations=1",
        "ensemble.strategy=mean",
        "ensemble.language_models=[]",
        f"serve.port={free_port()}",
        f"serve.cpus_per_replica={cpus / 5:g}",  # 3 members + ingress fit, with room to spare
        "serve.max_ongoing_requests=32",
        "serve.max_queued_requests=1000",
        "serve.batch_wait_ms=10",
    ]


def plain_server(root: str, port: int) -> None:
    """The baseline: FastAPI + uvicorn, the same members and combiner, no Ray."""
    import numpy as np
    import torch
    import uvicorn
    from fastapi import FastAPI

    from aigc_ray.data.captions import encode_captions
    from aigc_ray.data.digits import IMAGE_SIDE
    from aigc_ray.data.images import decode_image_b64
    from aigc_ray.ensemble.build import load_ensemble
    from aigc_ray.layout import ensemble_dir
    from aigc_ray.models.fusion_training import predict
    from aigc_ray.serve.schema import ClassifyRequest
    from aigc_ray.spec import load_spec
    from aigc_ray.storage import Storage

    torch.set_num_threads(os.cpu_count() or 2)
    spec = load_spec(None, [f"storage.root={root}", "name=bench"])
    storage = Storage.from_spec(spec.storage)
    ens = load_ensemble(storage, ensemble_dir(spec))
    app = FastAPI()

    @app.get("/healthz")
    def healthz():
        return {"status": "ok"}

    @app.post("/v1/classify")
    def classify(req: ClassifyRequest):
        image = decode_image_b64(req.image, IMAGE_SIDE)[None]
        probs = []
        for model, config in zip(ens.models, ens.configs, strict=True):
            ids, mask, _ = encode_captions([req.text], config["tokenizer"], storage, int(config["max_text_tokens"]))
            arrays = {"image": image, "input_ids": ids, "attention_mask": mask, "label": np.zeros(1, dtype=np.int64)}
            probs.append(predict(model, arrays))
        combined = ens.combiner(np.stack(probs))[0]
        return {"label": int(combined.argmax()), "probabilities": combined.tolist()}

    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--text-encoder", choices=["tiny", "minilm"], default="minilm")
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=15)
    parser.add_argument("--plain-server", nargs=2, metavar=("ROOT", "PORT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    if args.plain_server:
        plain_server(args.plain_server[0], int(args.plain_server[1]))
        return

    from ray import serve

    from aigc_ray.data.arrays import digit_arrays
    from aigc_ray.data.images import png_b64
    from aigc_ray.ensemble.build import build_ensemble
    from aigc_ray.runtime import ray_session
    from aigc_ray.serve.deploy import base_url, start_local
    from aigc_ray.spec import load_spec
    from aigc_ray.storage import Storage

    cpus = os.cpu_count() or 2
    with tempfile.TemporaryDirectory() as root:
        overrides = bench_overrides(root, cpus, args.text_encoder)
        spec = load_spec(None, overrides)
        storage = Storage.from_spec(spec.storage)
        results, batch_means = {}, {}
        with ray_session(spec):
            build_ensemble(spec, storage, log=lambda *_: None)
            test = digit_arrays(spec, storage, "test")
            body = {"image": png_b64((test["image"][0, 0] * 255).round().astype("uint8")), "text": str(test["text"][0])}
            for name, batch in (("serve batched", 16), ("serve unbatched", 1)):
                variant = load_spec(None, [*overrides, f"serve.max_batch_size={batch}"])
                start_local(variant)
                wait_up(base_url(variant))
                results[name] = measure(base_url(variant), body, args.clients, args.seconds)
                everyone = collections.Counter()
                for sizes in member_batch_sizes(base_url(variant)).values():
                    everyone.update(sizes)
                batch_means[name] = mean_batch(everyone)
                serve.shutdown()
        port = free_port()
        server = subprocess.Popen([sys.executable, __file__, "--plain-server", root, str(port)])
        try:
            wait_up(f"http://127.0.0.1:{port}")
            results["plain uvicorn"] = measure(f"http://127.0.0.1:{port}", body, args.clients, args.seconds)
        finally:
            server.terminate()
            server.wait(timeout=30)
    print(
        f"3 members ({args.text_encoder} text encoder), {args.clients} concurrent clients, "
        f"{args.seconds:g} s per server, {cpus} CPUs"
    )
    for name, (rps, p50, p99) in results.items():
        batches = f"   members' mean batch {batch_means[name]:.1f}" if name in batch_means else ""
        print(f"{name:16} {rps:8.1f} req/s   p50 {p50:7.1f} ms   p99 {p99:7.1f} ms{batches}")
    b, u, p = results["serve batched"][0], results["serve unbatched"][0], results["plain uvicorn"][0]
    print(f"throughput  serve_batched {b:8.1f} req/s  plain     {p:8.1f} req/s  ratio {b / p:.2f}")
    print(f"batching    serve_batched {b:8.1f} req/s  unbatched {u:8.1f} req/s  ratio {b / u:.2f}")


if __name__ == "__main__":
    main()
