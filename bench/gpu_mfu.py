"""Benchmark: tokens/s and model FLOPs utilisation of the training engine, per ZeRO stage.

Runs the same model builder and DeepSpeed config as ``aigc pretrain`` without Ray (plain
``torchrun``), on random tokens (MFU does not depend on the data):

    torchrun --nproc-per-node 1 bench/gpu_mfu.py --preset gpt2-xl --zero 1 2 3

MFU = tokens/s × (6N + 12·L·H·Q·T) / (peak FLOP/s × GPUs), with the H200's dense bf16 peak
(989 TFLOP/s) by default. One line per stage with ``ratio`` (the MFU) and, on rank 0, a JSON
summary in --out for BENCHMARKS.md. ``--device cpu --preset tiny`` smoke-tests it anywhere.

The ways past the step's fixed cost (BENCHMARKS.md: DeepSpeed's per-tensor bookkeeping, CPU-bound,
0.10 s of a 0.48 s step on an H200) are measured one flag at a time, each against the same
stages without it: ``--accum N`` (N micro-batches per optimizer step: the bookkeeping is paid
once per N), ``--no-overflow-check`` (bf16 has float32's range, so DeepSpeed's per-tensor
inf/NaN scan guards against far less than under fp16 — but without it a NaN gradient is applied
instead of skipped, so it is measured here, not made a default), ``--compile``
(``engine.compile()``: torch.compile of the model under DeepSpeed's hooks).
``bench/gpu_session.sh`` runs the prepared set on one GPU within the device machine's limits.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def run_stage(stage: int, args, world: int, device) -> dict:
    import deepspeed
    import torch
    from transformers.integrations import HfDeepSpeedConfig

    from aigc_ray.models.lm import build_lm, count_params, flops_per_token, lm_config
    from aigc_ray.spec.sections import ModelSize, PretrainSpec
    from aigc_ray.train.ds_config import deepspeed_config

    spec = PretrainSpec(
        model=ModelSize(preset=args.preset),
        seq_len=args.seq,
        num_workers=world,
        zero_stage=stage,
        precision=args.precision,
        micro_batch_size=args.micro,
        global_batch_size=args.micro * world * args.accum,
        use_gpu=device.type == "cuda",
        max_steps=args.steps + args.warmup,
        warmup_steps=1,
    )
    ds_config = deepspeed_config(spec, world)
    if not args.overflow_check:  # DeepSpeed reads it for bf16 only
        ds_config["bf16"]["check_grad_overflow"] = False
    config = lm_config(spec, 50304, {"bos": 0, "eos": 0, "pad": 0})
    if args.activation:  # to measure an alternative against the project's default
        config.activation_function = args.activation
    keep_alive = HfDeepSpeedConfig(ds_config) if stage == 3 else None
    # Below ZeRO-3 the weights are built where they train: a 1.5 B model's float32 init on the
    # host takes longer than the measurement (ZeRO-3 partitions them as they are built instead).
    with torch.device(device) if stage < 3 else contextlib.nullcontext():
        model = build_lm(config)
    n_params = count_params(model)
    engine, *_ = deepspeed.initialize(model=model, model_parameters=model.parameters(), config=ds_config)
    del keep_alive
    compile_s = None
    if args.compile:
        started = time.perf_counter()
        engine.compile()
    gen = torch.Generator().manual_seed(0)
    x = torch.randint(0, 50304, (args.micro, args.seq), generator=gen).to(engine.device)

    def step():  # one optimizer step: --accum micro-batches, DeepSpeed steps on the last
        for _ in range(args.accum):
            loss = engine(input_ids=x, labels=x).loss
            engine.backward(loss)
            engine.step()

    for i in range(args.warmup):
        step()
        if i == 0 and args.compile:  # the first step traces and compiles
            compile_s = time.perf_counter() - started
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(args.steps):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    optimizer_steps = engine.global_steps
    phases = breakdown(engine, x, device) if args.breakdown else {}
    if args.profile and device.type == "cuda":
        print_profile(step, args.profile)
    if args.profile_step and device.type == "cuda":  # the optimizer step alone (after a backward)
        engine.backward(engine(input_ids=x, labels=x).loss)
        print_profile(engine.step, 1)
    layers, _, width = spec.model.dims
    tokens_per_s = args.steps * args.accum * args.micro * args.seq * world / seconds
    mfu = tokens_per_s * flops_per_token(n_params, layers, width, args.seq) / (args.peak_tflops * 1e12 * world)
    memory = torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else float("nan")
    checked = getattr(engine.optimizer, "check_grad_overflow", None)  # what DeepSpeed took from the config
    engine.destroy()
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    result = {"zero": stage, "params": n_params, "tokens_per_s": tokens_per_s, "mfu": mfu, "max_mem_gib": memory}
    return result | {
        "phases_s": phases,
        "activation": config.activation_function,
        "accum": args.accum,
        "compile_s": compile_s,
        "overflow_check": checked,
        "optimizer_steps": optimizer_steps,
    }


def breakdown(engine, x, device, steps: int = 3) -> dict:
    """Mean seconds of forward, backward and optimizer step, each synchronised (where a step's
    time goes; the overlap this forbids is small on one GPU)."""
    import torch

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize()

    totals = {"forward": 0.0, "backward": 0.0, "step": 0.0}
    for _ in range(steps):
        sync()
        t0 = time.perf_counter()
        loss = engine(input_ids=x, labels=x).loss
        sync()
        t1 = time.perf_counter()
        engine.backward(loss)
        sync()
        t2 = time.perf_counter()
        engine.step()
        sync()
        t3 = time.perf_counter()
        for name, seconds in zip(totals, (t1 - t0, t2 - t1, t3 - t2), strict=True):
            totals[name] += seconds / steps
    return totals


def print_profile(step, steps: int) -> None:
    """torch.profiler over ``steps`` training steps: the GPU kernels that take the time."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        for _ in range(steps):
            step()
        torch.cuda.synchronize()
    print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=25, max_name_column_width=70), flush=True)


def variant(args) -> str:
    """The flags that set this run apart from the defaults, for its line."""
    parts = [f"accum {args.accum}"] if args.accum > 1 else []
    parts += ["no overflow check"] if not args.overflow_check else []
    parts += ["compiled"] if args.compile else []
    return "".join(f", {p}" for p in parts)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="gpt2-xl")
    parser.add_argument("--zero", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--precision", default="bf16", choices=["bf16", "fp32"])
    parser.add_argument("--micro", type=int, default=8)
    parser.add_argument("--seq", type=int, default=1024)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--peak-tflops", type=float, default=989.0, help="dense bf16 peak per device (H200: 989)")
    parser.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    parser.add_argument("--activation", default=None, help="override the model's activation_function")
    parser.add_argument("--accum", type=int, default=1, help="micro-batches per optimizer step (default 1)")
    parser.add_argument("--compile", action="store_true", help="engine.compile() (torch.compile) before the steps")
    parser.add_argument(
        "--no-overflow-check",
        dest="overflow_check",
        action="store_false",
        help="bf16 without DeepSpeed's per-tensor inf/NaN scan (bf16.check_grad_overflow: false)",
    )
    parser.add_argument("--breakdown", action="store_true", help="also time forward, backward and step apart")
    parser.add_argument("--profile", type=int, default=0, help="print a torch.profiler table over N steps")
    parser.add_argument("--profile-step", action="store_true", help="print one for the optimizer step alone")
    parser.add_argument("--out", default=os.environ.get("OUT", "."), help="folder for gpu_mfu.json")
    args = parser.parse_args()
    if args.accum > 1 and (args.breakdown or args.profile_step):
        parser.error("--breakdown and --profile-step time one micro-batch per optimizer step: use --accum 1")

    import deepspeed
    import torch

    if "RANK" not in os.environ:  # plain `python bench/gpu_mfu.py`: a world of one
        os.environ.update(RANK="0", LOCAL_RANK="0", WORLD_SIZE="1", MASTER_ADDR="127.0.0.1", MASTER_PORT="29511")
    if args.device == "cuda":
        torch.cuda.set_device(int(os.environ["LOCAL_RANK"]))
    deepspeed.init_distributed(dist_backend="nccl" if args.device == "cuda" else "gloo")
    world, rank = torch.distributed.get_world_size(), torch.distributed.get_rank()
    device = torch.device(args.device)
    results = []
    for stage in args.zero:
        r = run_stage(stage, args, world, device)
        results.append(r)
        if rank == 0:
            print(
                f"zero-{stage} {args.preset} ({r['params'] / 1e9:.2f} B params) {args.precision} "
                f"micro {args.micro}x{args.seq} x{world}{variant(args)}: {r['tokens_per_s']:,.0f} tok/s, "
                f"peak mem {r['max_mem_gib']:.1f} GiB, {r['activation']}, mfu ratio {r['mfu']:.3f}",
                flush=True,
            )
            if r["compile_s"] is not None:
                print(f"  compile and first step: {r['compile_s']:.1f} s", flush=True)
            if r["phases_s"]:
                print("  seconds per step: " + ", ".join(f"{k} {v:.3f}" for k, v in r["phases_s"].items()), flush=True)
    if rank == 0:
        meta = {
            "device": torch.cuda.get_device_name() if args.device == "cuda" else "cpu",
            "torch": torch.__version__,
            "deepspeed": deepspeed.__version__,
            "world": world,
            **vars(args),
        }
        Path(args.out, "gpu_mfu.json").write_text(json.dumps({"meta": meta, "results": results}, indent=2))
    torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main()
