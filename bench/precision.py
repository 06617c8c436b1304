"""Benchmark: a training step in bf16 against float32, for each model family the quickstart trains.

The quickstart's own settings (``examples/quickstart.yaml``), random inputs of its shapes, one
thread per process as the demo's workers and trials use, in this process, side by side
(alternating rounds, median of each):

  lm     : the pretraining GPT-2 through a DeepSpeed engine (world size 1, gloo), ``precision``
           fp32 against bf16 (DeepSpeed's bf16: float32 master weights), one micro-batch a step
  gan    : a text-to-image GAN step (D then G), each of the sweep's generators, under
           ``torch.autocast`` bf16 against none
  video  : the video GAN's step, the same way
  fusion : a fusion classifier step (image + caption), the same way

Prints one line per family with ``ratio`` = float32 time ÷ bf16 time (above 1: bf16 is faster),
and what ``precision: auto`` resolves to here. bf16 only pays where the hardware computes it
natively (AVX512-BF16 or AMX on a CPU, Ampere or later on a GPU); elsewhere expect ratios
below 1, which is why ``auto`` keeps float32 there.
"""

from __future__ import annotations

import argparse
import itertools
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
QUICKSTART = Path(__file__).resolve().parent.parent / "examples" / "quickstart.yaml"


def timed_steps(step, steps: int) -> float:
    """Median seconds per call of ``step`` over ``steps`` calls, after two warm-up calls."""
    for _ in range(2):
        step()
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def side_by_side(make_step, steps: int, rounds: int) -> tuple[float, float]:
    """(float32, bf16) median seconds per step; ``make_step(precision)`` builds a fresh model."""
    found: dict[str, list[float]] = {"fp32": [], "bf16": []}
    for _ in range(rounds):
        for precision in found:
            found[precision].append(timed_steps(make_step(precision), steps))
    return statistics.median(found["fp32"]), statistics.median(found["bf16"])


def lm_step(spec):
    """A DeepSpeed engine step of the quickstart's pretraining model, in this one process."""
    import torch

    from aigc_ray.models.lm import lm_config
    from aigc_ray.train.loop import LoopConfig, build_engine

    p = spec.pretrain
    special = {"bos": 0, "eos": 1, "pad": 2, "unk": 3, "mask": 4}
    hf_config = lm_config(p, spec.data.vocab_size, special).to_dict()

    def make(precision: str):
        one_micro_batch = {"precision": precision, "num_workers": 1, "global_batch_size": p.micro_batch_size}
        training = p.model_copy(update=one_micro_batch)
        engine = build_engine(LoopConfig(training=training, hf_config=hf_config, seed=0, special_ids=special), 1)
        gen = torch.Generator().manual_seed(0)

        def step():
            x = torch.randint(5, spec.data.vocab_size, (p.micro_batch_size, p.seq_len), generator=gen)
            out = engine(input_ids=x, labels=x)
            engine.backward(out.loss)
            engine.step()

        return step

    return make


def gan_step(spec, generator: str):
    import numpy as np
    import torch

    from aigc_ray.models.gan_training import TrainData, build_gan, train_step
    from aigc_ray.models.precision import autocast

    config = {**spec.gan.trial_config(), "generator": generator}
    rng = np.random.default_rng(0)
    real = rng.uniform(-1, 1, (512, 1, 16, 16)).astype(np.float32)
    captions = {
        "embedding": rng.standard_normal((512, 384)).astype(np.float32),
        "label": rng.integers(0, 10, 512),
        "named": rng.integers(-1, 10, 512),
    }
    data = TrainData.make(real, captions if config["condition"] == "caption" else None)

    def make(precision: str):
        g, d, opt_g, opt_d = build_gan(config)
        gen = torch.Generator().manual_seed(0)

        def step():
            with autocast(precision, torch.device("cpu")):
                train_step(g, d, opt_g, opt_d, data, config, gen)

        return step

    return make


def video_step(spec):
    import torch

    from aigc_ray.models.precision import autocast
    from aigc_ray.models.video_gan import build_video_gan, video_train_step

    config = spec.video.trial_config()
    v = spec.video
    real = torch.rand(512, 1, v.frames, v.frame_size, v.frame_size) * 2 - 1

    def make(precision: str):
        g, d, opt_g, opt_d = build_video_gan(config)
        gen = torch.Generator().manual_seed(0)

        def step():
            with autocast(precision, torch.device("cpu")):
                video_train_step(g, d, opt_g, opt_d, real, int(config["batch_size"]), gen)

        return step

    return make


def fusion_step(spec):
    import numpy as np
    import torch

    from aigc_ray.models.fusion_training import as_tensors, build_model, build_optimizer, train_iteration
    from aigc_ray.models.precision import autocast

    config = {**spec.fusion.trial_config(), "steps_per_iteration": 1, "num_classes": 10}
    vocab = spec.data.vocab_size
    rng = np.random.default_rng(0)
    rows = as_tensors(
        {
            "image": rng.random((512, 1, 8, 8), dtype=np.float32),
            "input_ids": rng.integers(5, vocab, (512, spec.fusion.max_text_tokens)),
            "attention_mask": np.ones((512, spec.fusion.max_text_tokens), dtype=np.int64),
            "label": rng.integers(0, 10, 512),
        }
    )

    def make(precision: str):
        model = build_model(config, vocab)
        optimizer = build_optimizer(model, config)
        counter = itertools.count()

        def step():
            with autocast(precision, torch.device("cpu")):
                train_iteration(model, optimizer, rows, config, next(counter))

        return step

    return make


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=15, help="timed steps per model and round")
    parser.add_argument("--rounds", type=int, default=2, help="alternating fp32/bf16 rounds")
    args = parser.parse_args()

    os.environ.setdefault("OMP_NUM_THREADS", "1")
    import logging

    import torch

    torch.set_num_threads(1)
    logging.getLogger("DeepSpeed").setLevel(logging.WARNING)
    from serve_load import free_port

    os.environ.update(RANK="0", LOCAL_RANK="0", WORLD_SIZE="1", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(free_port()))

    from aigc_ray.models.precision import native_bf16, resolve_precision
    from aigc_ray.spec import load_spec

    spec = load_spec(str(QUICKSTART), [])
    cpu = torch.device("cpu")
    print(
        f"{os.cpu_count()} CPUs ({torch.backends.cpu.get_cpu_capability()}); bf16 native here: {native_bf16(cpu)}; "
        f"precision auto -> {resolve_precision('auto', cpu)}; one thread, median of {args.steps} steps x "
        f"{args.rounds} rounds"
    )
    families = [
        ("lm", lm_step(spec), "DeepSpeed, one micro-batch"),
        *[(f"gan_{g}", gan_step(spec, g), "D + G step") for g in ("dcgan", "style")],
        ("video", video_step(spec), "D + G step"),
        ("fusion", fusion_step(spec), "one step"),
    ]
    for name, make, what in families:
        fp32, bf16 = side_by_side(make, args.steps, args.rounds)
        print(
            f"{name:<10} fp32 {fp32 * 1000:7.1f} ms  bf16 {bf16 * 1000:7.1f} ms  ratio {fp32 / bf16:.2f} ({what})",
            flush=True,
        )


if __name__ == "__main__":
    main()
