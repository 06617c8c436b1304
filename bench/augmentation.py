"""Benchmark: GAN data augmentation for the fusion classifier when real training data is scarce.

A caption-conditioned (text-to-image) DCGAN is trained once with direct ``train_step`` calls (no
Tune) on the training split's images and captions ('wrong' captions left out, as the GAN sweep
does), and kept under the work dir for later runs. Then, for each real fraction (a seeded,
label-stratified subset of the training split, ``models.augment.real_subset``), the fusion
classifier is trained twice per seed with the same seeds, batches and number of steps:

  real      : real rows only (augment_ratio 0, exactly the sweep's plain training)
  augmented : batches that also hold generated samples, ratio/(1 + ratio) of their rows, from a
              pool of ceil(ratio × real rows / 10) samples per digit, each drawn by the GAN from
              an exact caption for its digit. Two pools, one run each: "data" captions (as noisy
              as the data's, data.caption_noise: 15 % swapped for a vague caption, 10 % for a
              wrong one; the pool the fusion sweep makes) and "exact" captions (every caption
              names the sample's digit)

and all are scored on the held-out test split (real images with their real captions, some
vague or wrong). Printed per fraction and pool: mean test accuracy over the seeds, real and
augmented, their ratio (augmented ÷ real) and on how many seeds augmentation won. The "vague
captions" lines score the same models with every test caption replaced by "a handwritten
digit": the image signal alone.

Caveat, by default: the GAN saw the images and captions of the *whole* training split, so at
10 % the augmented classifier draws on more images than the real-only one (labelled-data scarce,
captioned images plentiful). ``--gan-data subset`` trains one GAN per fraction on that
fraction's rows only: the strict comparison, no extra data anywhere.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import time
from pathlib import Path

from aigc_ray.layout import data_root

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def gan_config(args) -> dict:
    return {
        "generator": "dcgan",
        "condition": "caption",
        "cond_dim": 32,
        "mismatch_weight": 1.0,
        "z_dim": 32,
        "width": args.gan_width,
        "g_lr": 1e-3,
        "d_lr": 1e-3,
        "lr_ratio": 1.0,
        "beta1": 0.5,
        "batch_size": 64,
        "seed": 0,
    }


def ensure_gan(spec, storage, args, fraction: float, log) -> str:
    """The ``best/`` folder of a conditional GAN trained on ``fraction`` of the training split:
    reused from the work dir when one with the same settings is there, else trained and committed."""
    import tempfile

    import numpy as np
    import torch
    from safetensors.torch import save_file

    from aigc_ray.manifest import publish_directory, read_manifest
    from aigc_ray.models.augment import real_subset
    from aigc_ray.models.gan_training import TrainData, build_gan, train_step
    from aigc_ray.storage import join
    from aigc_ray.tune.gan_sweep import caption_training_rows

    config = gan_config(args)
    key = {"config": config, "steps": args.gan_steps, "fraction": fraction, "subset_seed": args.subset_seed}
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:12]
    uri = join(str(args.work_dir), "gans", digest)
    if read_manifest(storage, uri) is not None:
        log(f"reusing the GAN at {uri}")
        return join(uri, "best")
    images, captions = caption_training_rows(spec, storage)
    if fraction < 1:  # only the rows the classifier gets at this fraction ('wrong' captions still left out)
        from aigc_ray.data.arrays import digit_arrays
        from aigc_ray.data.shards import split_table

        labels = digit_arrays(spec, storage, "train")["label"]
        kinds = split_table(storage, join(data_root(spec), "multimodal"), "train", ["caption_kind"])["caption_kind"]
        chosen = real_subset({"row": np.arange(len(labels)), "label": labels}, fraction, args.subset_seed)["row"]
        keep = np.isin(np.flatnonzero(np.array(kinds) != "wrong"), chosen)  # caption_training_rows' rows, in order
        images, captions = images[keep], {k: v[keep] for k, v in captions.items()}
    t = time.time()
    g, d, opt_g, opt_d = build_gan(config)
    data, gen = TrainData.make(images, captions), torch.Generator().manual_seed(0)
    for _ in range(args.gan_steps):
        train_step(g, d, opt_g, opt_d, data, config, gen)
    log(f"trained the GAN on {len(images)} rows, {args.gan_steps} steps in {time.time() - t:.0f} s -> {uri}")
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "best").mkdir()
        save_file({k: v.contiguous() for k, v in g.state_dict().items()}, Path(tmp) / "best" / "generator.safetensors")
        (Path(tmp) / "best" / "config.json").write_text(json.dumps(config, indent=2))
        publish_directory(storage, Path(tmp), uri, kind="bench/gan", spec_hash=digest, inputs={}, meta=key)
    return join(uri, "best")


def train_and_score(config: dict, vocab: int, train, pool, tests: dict) -> dict[str, float]:
    from aigc_ray.models.fusion_training import (
        as_tensors,
        build_model,
        build_optimizer,
        classification_metrics,
        predict,
        train_iteration,
    )

    model = build_model(config, vocab)
    optimizer = build_optimizer(model, config)
    x, p = as_tensors(train), (as_tensors(pool) if pool is not None else None)
    for iteration in range(config["max_iterations"]):
        train_iteration(model, optimizer, x, config, iteration, p)
    return {name: classification_metrics(predict(model, t), t["label"])["accuracy"] for name, t in tests.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work-dir", type=Path, default=Path("runs/bench-augmentation"), help="data and GANs, reused")
    parser.add_argument("--fractions", default="0.1,0.25,1.0", help="real fractions of the training split")
    parser.add_argument("--ratio", type=float, default=1.0, help="augment_ratio of the augmented runs")
    parser.add_argument("--seeds", type=int, default=5, help="fusion seeds per fraction (init and batches)")
    parser.add_argument("--iterations", type=int, default=10)
    parser.add_argument("--steps-per-iteration", type=int, default=100)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--operator", default="weighted_sum")
    parser.add_argument("--gan-steps", type=int, default=1500)
    parser.add_argument("--gan-width", type=int, default=16)
    parser.add_argument("--gan-data", choices=("full", "subset"), default="full", help="what the GAN trains on")
    parser.add_argument(
        "--captions",
        choices=("data", "exact", "both"),
        default="both",
        help="the generated samples' captions: exact for their digit, or as noisy as the data's (the sweep's)",
    )
    parser.add_argument("--subset-seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2, help="torch threads (the machine's 2 cores)")
    parser.add_argument("--verbose", action="store_true")
    args = parser.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import numpy as np
    import torch

    torch.set_num_threads(args.threads)
    from digit_splits import digit_splits

    from aigc_ray.models.augment import load_augmenter, pool_per_class, real_subset, synthetic_pool
    from aigc_ray.models.classifier import load_or_train_classifier
    from aigc_ray.models.gan_training import cond_accuracy
    from aigc_ray.models.text_condition import digit_prompts, embed_texts
    from aigc_ray.spec import load_spec

    def log(msg: str) -> None:
        if args.verbose:
            print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)

    started = time.time()
    fractions = [float(f) for f in args.fractions.split(",")]
    root = str(args.work_dir.resolve())
    overrides = [f"storage.root={root}", "name=bench-augmentation", f"fusion.operator={args.operator}"]
    digits = digit_splits(root, "", *overrides[1:])
    spec, storage, train, test = digits.spec, digits.storage, digits.train, digits.test
    vocab = digits.config["vocab_size"]
    tests = {"captions": test, "vague": digits.vague(test)}
    base = {**digits.config, "batch_size": args.batch_size}
    base |= {"max_iterations": args.iterations, "steps_per_iteration": args.steps_per_iteration}
    classifier = load_or_train_classifier(spec, storage)
    prompts = embed_texts(digit_prompts())

    gans: dict[float, object] = {}
    for fraction in fractions if args.gan_data == "subset" else [1.0]:
        where = ensure_gan(spec, storage, args, fraction, log)
        gans[fraction] = load_augmenter(load_spec(None, [*overrides, f"fusion.augment_generator={where}"]), storage)
    for fraction, aug in gans.items():
        acc = cond_accuracy(aug.generator, classifier, prompts, 500)
        label = "whole training split" if fraction >= 1 else f"{fraction:.0%} of the training split"
        print(f"GAN ({label}): {args.gan_steps} steps, width {args.gan_width}; cond_accuracy {acc:.3f}")
    print(
        f"fusion {args.operator}, {args.iterations} x {args.steps_per_iteration} steps of {args.batch_size}, "
        f"{args.seeds} seeds; augment_ratio {args.ratio:g}; test split {len(test['label'])} rows; "
        f"{torch.get_num_threads()} threads"
    )
    noise = spec.data.caption_noise.model_dump()
    variants = {"data": noise, "exact": {"vague": 0.0, "wrong": 0.0}}
    variants = {k: v for k, v in variants.items() if args.captions in (k, "both")}
    for fraction in fractions:
        sub = real_subset(train, fraction, args.subset_seed)
        aug = gans[fraction if args.gan_data == "subset" else 1.0]
        per_class = pool_per_class(args.ratio, len(sub["label"]))
        pools = {}
        for name, shares in variants.items():
            rows = synthetic_pool(aug.generator, aug.config, per_class, 0, 0, **shares)
            pids, pmask = digits.encode(list(rows["text"]))
            pools[name] = {"image": rows["image"], "input_ids": pids, "attention_mask": pmask, "label": rows["label"]}
        scores: dict[str, list] = {"real": [], **{name: [] for name in pools}}
        for seed in range(args.seeds):
            t = time.time()
            scores["real"].append(
                train_and_score({**base, "seed": seed, "augment_ratio": 0.0}, vocab, sub, None, tests)
            )
            for name, pool in pools.items():
                config = {**base, "seed": seed, "augment_ratio": args.ratio}
                scores[name].append(train_and_score(config, vocab, sub, pool, tests))
            log(
                f"fraction {fraction:g} seed {seed}: "
                + ", ".join(f"{k} {v[-1]}" for k, v in scores.items())
                + f" ({time.time() - t:.0f} s)"
            )
        for test_name, what in (("captions", "test"), ("vague", "test, vague captions")):
            real = float(np.mean([s[test_name] for s in scores["real"]]))
            for name in pools:
                augmented = float(np.mean([s[test_name] for s in scores[name]]))
                wins = sum(a[test_name] > r[test_name] for a, r in zip(scores[name], scores["real"], strict=True))
                print(
                    f"fraction {fraction:>4.0%} ({len(sub['label']):>4} real, {10 * per_class:>4} generated, "
                    f"{name:>5} captions)  {what:<21} real {real:.3f}   augmented {augmented:.3f}   "
                    f"ratio {augmented / real:.3f}   (better on {wins}/{args.seeds} seeds)"
                )
    print(f"total {time.time() - started:.0f} s")


if __name__ == "__main__":
    main()
