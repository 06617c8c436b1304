"""Benchmark: what the safety filter adds to a /v1/completions answer.

The same served ensemble (the quickstart's, from `make demo`) answers the same completions twice,
one after the other: with `safety.enabled: false`, then with the default policy (word list +
packaged classifier on the prompt and on the generated text, an audit record per decision).
One client, requests in sequence, so the figures are the latency a request sees, not queueing.
Prints p50 and p95 of each and the difference, and the ratio of the p95s.

    make demo            # once: the served artifacts
    python bench/safety_latency.py [--requests 300] [--max-tokens 16]
"""

import argparse
import logging
import os
import socket
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def latencies(url: str, token: str | None, requests: int, max_tokens: int) -> list[float]:
    import httpx

    headers = {"Authorization": f"Bearer {token}"} if token else {}
    prompts = [f"Caption for a {w}:" for w in ("zero one two three four five six seven eight nine".split())]
    out = []
    with httpx.Client(base_url=url, headers=headers, timeout=60) as client:
        for i in range(requests + 20):  # the first 20 warm up
            body = {"model": "aigc-lm", "prompt": prompts[i % 10], "max_tokens": max_tokens, "temperature": 0}
            t = time.perf_counter()
            res = client.post("/v1/completions", json=body)
            elapsed = time.perf_counter() - t
            if res.status_code != 200:
                raise RuntimeError(f"/v1/completions answered {res.status_code}: {res.text[:200]}")
            if i >= 20:
                out.append(elapsed * 1000)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-c", "--spec", default="examples/quickstart.yaml")
    parser.add_argument("--requests", type=int, default=300)
    parser.add_argument("--max-tokens", type=int, default=16)
    args = parser.parse_args()

    import ray
    from ray import serve

    from aigc_ray.layout import ensemble_dir
    from aigc_ray.manifest import read_manifest
    from aigc_ray.serve.deploy import base_url, start_local
    from aigc_ray.spec import load_spec
    from aigc_ray.storage import Storage

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    spec = load_spec(args.spec, [f"serve.port={port}", "serve.auth_token_env=AIGC_BENCH_NO_TOKEN"])
    storage = Storage.from_spec(spec.storage)
    if read_manifest(storage, ensemble_dir(spec)) is None:
        sys.exit(f"no ensemble at {ensemble_dir(spec)}: run `make demo` (or `aigc run -c {args.spec}`) first")
    ray.init(
        num_cpus=2,
        include_dashboard=False,
        log_to_driver=False,  # the replicas' request logs stay in Ray's log files
        logging_level=logging.WARNING,
        _temp_dir=tempfile.mkdtemp(dir="/tmp"),
    )
    try:
        figures = {}
        for name, enabled in (("off", False), ("on", True)):
            start_local(spec.model_copy(update={"safety": spec.safety.model_copy(update={"enabled": enabled})}))
            ms = latencies(base_url(spec), None, args.requests, args.max_tokens)
            q = statistics.quantiles(ms, n=100)
            figures[name] = (q[49], q[94])
            print(f"safety {name:<3}  p50 {q[49]:7.1f} ms  p95 {q[94]:7.1f} ms  ({args.requests} completions)")
        added50 = figures["on"][0] - figures["off"][0]
        added95 = figures["on"][1] - figures["off"][1]
        print(f"added by the filter  p50 {added50:+.1f} ms  p95 {added95:+.1f} ms")
        print(
            f"p95 latency  safety_on {figures['on'][1]:.1f} ms  safety_off {figures['off'][1]:.1f} ms  "
            f"ratio {figures['on'][1] / figures['off'][1]:.2f}"
        )
    finally:
        serve.shutdown()
        ray.shutdown()


if __name__ == "__main__":
    main()
