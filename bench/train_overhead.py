"""Benchmark: Ray Train + DeepSpeed (2 workers, ZeRO-2) against a plain single-process torch loop.

Same model (the spec's preset), same global batch (as the same micro-batches, accumulated),
same data (the embedded corpus). Prints, side by side:

  steady   : median tokens/s after the first 10 steps (Ray+DeepSpeed ÷ plain = ratio, target ≥ 0.95)
  startup  : seconds from the command (before Ray starts) to the first optimizer step done, its
             phases (ray.init, Train to our loop, data read, engine, first step), and the floor:
             a fresh Ray plus a TorchTrainer whose loop only reports
  data_wait: the share of each Ray step spent getting its batches ready (median after the first 10
             steps, from the run's history; target < 5 %), and the read of the worker's blocks
             from Ray Data before the first step
  log_steps: the median time of the steps right after a log_every boundary (where the loop prints,
             writes its buffered steps to MLflow and, before 2026-12-05, reported to Ray Train)
             against the other steps' (ratio, target ≈ 1: logging costs the loop nothing)

The plain loop uses as many threads as the 2 workers together (one each), so both use the same
cores. Use --preset/--steps for bigger runs on bigger machines.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
T0 = time.time()  # "the command": as early as this process can see
LOG_EVERY = 5


def plain_loop(spec, storage, steps: int, threads: int) -> tuple[list[float], float]:
    """A single-process torch AdamW loop on the same global batches; (tokens/s per step, first-step time)."""
    import numpy as np
    import torch
    from transformers import AutoConfig

    from aigc_ray.data.lm_blocks import local_blocks
    from aigc_ray.models.lm import build_lm
    from aigc_ray.train.pretrain import loop_config
    from aigc_ray.train.sampler import GlobalBatchOrder

    start = time.time()
    torch.set_num_threads(threads)
    p = spec.pretrain
    cfg = loop_config(spec)
    blocks = local_blocks(spec, storage, "train", p.seq_len)
    torch.manual_seed(cfg.seed)
    model = build_lm(AutoConfig.for_model(**cfg.hf_config)).train()
    opt = torch.optim.AdamW(model.parameters(), lr=p.lr, betas=(0.9, 0.95), weight_decay=p.weight_decay)
    order = GlobalBatchOrder(len(blocks), p.global_batch_size, cfg.seed)
    micro_batches = p.global_batch_size // p.micro_batch_size
    rates, first = [], None
    for step in range(steps):
        t = time.perf_counter()
        for m in range(micro_batches):
            rows = order.micro_indices(step, m, 0, 1, p.micro_batch_size)
            x = torch.from_numpy(blocks[rows].astype(np.int64))
            (model(input_ids=x, labels=x).loss / micro_batches).backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), p.grad_clip)
        opt.step()
        opt.zero_grad(set_to_none=True)
        rates.append(p.global_batch_size * p.seq_len / (time.perf_counter() - t))
        first = first or time.time() - start
    return rates, first


def empty_loop(config: dict) -> None:
    """A Train loop that only writes the wall clock (rank 0) and reports: Ray Train's own floor."""
    import ray.train

    if ray.train.get_context().get_world_rank() == 0:
        Path(config["out"]).write_text(str(time.time()))
    ray.train.report({})


def ray_train_floor(spec, workers: int) -> tuple[float, float]:
    """(ray.init seconds, seconds from fit() to an empty loop's report) on a fresh embedded Ray,
    with the workers asking for what the pretraining workers ask for."""
    import ray
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    from aigc_ray.runtime import cpus_per_train_worker, ray_session

    t = time.time()
    with ray_session(spec), tempfile.TemporaryDirectory() as runs:
        t_ray = time.time()
        cpus = cpus_per_train_worker(workers, ray.cluster_resources()["CPU"], spec.ray.data_cpus)
        trainer = TorchTrainer(
            empty_loop,
            train_loop_config={"out": f"{runs}/started"},
            scaling_config=ScalingConfig(num_workers=workers, resources_per_worker={"CPU": cpus}),
            torch_config=TorchConfig(backend="gloo"),
            run_config=RunConfig(name="floor", storage_path=runs),
        )
        trainer.fit()
        reported = float(Path(runs, "started").read_text())
    return t_ray - t, reported - t_ray


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="small")
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    os.environ.setdefault("DS_ACCELERATOR", "cpu")
    from aigc_ray.data.build import build_data
    from aigc_ray.runtime import ray_session
    from aigc_ray.spec import load_spec
    from aigc_ray.storage import Storage, join
    from aigc_ray.tracking import open_store_early
    from aigc_ray.train.pretrain import pretrain

    with tempfile.TemporaryDirectory() as root:
        spec = load_spec(
            None,
            [
                f"storage.root={root}",
                "name=bench",
                f"pretrain.model.preset={args.preset}",
                f"pretrain.num_workers={args.workers}",
                "pretrain.zero_stage=2",
                "pretrain.micro_batch_size=8",
                f"pretrain.global_batch_size={8 * args.workers * 2}",
                f"pretrain.max_steps={args.steps}",
                f"pretrain.checkpoint_every={args.steps}",
                f"pretrain.log_every={LOG_EVERY}",
                f"ray.num_cpus={os.cpu_count()}",
            ],
        )
        storage = Storage.from_spec(spec.storage)
        build_data(spec, storage, log=lambda *_: None)
        t_cmd = time.time()
        open_store_early(spec)  # as `aigc pretrain` does: MLflow opens while Ray starts
        with ray_session(spec):
            t_ray = time.time()
            result = pretrain(spec, storage, log=lambda *_: None)
            history = [
                json.loads(x)
                for x in storage.read_bytes(join(result.export_uri, "history.jsonl")).decode().splitlines()
            ]
        ray_rates = [h["tokens_per_s"] for h in history[10:]]
        ray_first = history[0]["time"] - t_cmd
        marks = history[0]["startup_marks"]
        phases = {
            "ray_start": t_ray - t_cmd,
            "train_to_loop": marks["loop_start"] - t_ray,
            "data_read": marks["data_loaded"] - marks["loop_start"],
            "engine": marks["engine_built"] - marks["data_loaded"],
            "first_step": history[0]["time"] - marks["engine_built"],
        }
        wait_share = statistics.median(h["data_wait_share"] for h in history[10:])
        logged, other = log_step_times(history[10:])
        plain_rates, plain_first = plain_loop(spec, storage, args.steps, threads=args.workers)
        floor_init, floor_fit = ray_train_floor(spec, args.workers)
    ray_steady, plain_steady = statistics.median(ray_rates), statistics.median(plain_rates[10:])
    layers, _, width = spec.pretrain.model.dims
    print(
        f"model {args.preset} ({layers} layers, {width} wide), global batch {spec.pretrain.global_batch_size} x {spec.pretrain.seq_len} "
        f"tokens, {args.steps} steps, {os.cpu_count()} CPUs; Ray: {args.workers} workers ZeRO-2 gloo"
    )
    print(
        f"steady    ray_deepspeed {ray_steady:>9,.0f} tok/s  plain_torch {plain_steady:>9,.0f} tok/s  ratio {ray_steady / plain_steady:.2f}"
    )
    print(
        f"startup   ray_deepspeed {ray_first:>8.1f} s      plain_torch {plain_first:>8.1f} s      ratio {ray_first / plain_first:.2f}"
    )
    print("startup   phases: " + ", ".join(f"{name} {s:.1f} s" for name, s in phases.items()))
    print(
        f"startup   floor: an empty Ray Train loop ({args.workers} workers, gloo) reports {floor_fit:.1f} s after fit(), "
        f"ray.init {floor_init:.1f} s: {floor_init + floor_fit:.1f} s of Ray before any work of ours"
    )
    print(
        f"data_wait ray_deepspeed share {100 * wait_share:.2f} % of each step; "
        f"blocks in the worker (from the object store) before step 1 in {history[0]['data_load_s']:.2f} s"
    )
    print(
        f"log_steps ray_deepspeed after each log_every ({LOG_EVERY}) {1000 * logged:.0f} ms  "
        f"other steps {1000 * other:.0f} ms  ratio {logged / other:.2f}"
    )


def log_step_times(history: list[dict]) -> tuple[float, float]:
    """(median seconds of the steps that follow a log_every boundary, median of the others): what
    the loop does after step k (print, MLflow write) lands in the interval up to step k + 1."""
    logged, other = [], []
    for before, after in itertools.pairwise(history):
        (logged if before["step"] % LOG_EVERY == 0 else other).append(after["time"] - before["time"])
    return statistics.median(logged), statistics.median(other)


if __name__ == "__main__":
    main()
