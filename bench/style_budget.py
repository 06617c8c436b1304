"""What training budget the style-based text-to-image generator needs to match the DCGAN.

Both generators are trained side by side with the quickstart's GAN settings (its trial config,
lr 1e-3, TTUR ratio 1, the auxiliary class loss at the spec's ``class_weight`` unless
``--class-weight`` says otherwise) on the same caption rows, with direct ``train_step`` calls (no Tune: the
sweep's budget is steps), and scored every few hundred steps by ``cond_accuracy`` — how often the
dataset's classifier reads the class the prompt asked for — on both embedded datasets. One line
per dataset and budget: ``style/dcgan cond_accuracy ratio``; the quickstart's sweep gives a trial
at most 300 steps.

    python bench/style_budget.py [--datasets digits,shapes] [--budgets 300,600] [--seeds 1]

The style generator at the quickstart's width costs about a second a step on one core: the
defaults (the digits, 300 and 600 steps, one seed) take about 10 minutes on 2 cores; each more
dataset, budget step or seed adds to that.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def curves(
    spec, storage, budgets: list[int], seed: int, kinds=("dcgan", "style"), class_weight: float | None = None
) -> dict[str, list[float]]:
    import torch

    from aigc_ray.data.info import dataset_info, prompt_template
    from aigc_ray.models.classifier import load_or_train_classifier
    from aigc_ray.models.gan_training import TrainData, build_gan, cond_accuracy, train_step
    from aigc_ray.models.text_condition import class_prompts, embed_texts
    from aigc_ray.tune.gan_sweep import caption_training_rows

    info = dataset_info(spec, storage)
    classifier = load_or_train_classifier(spec, storage)
    size = classifier.config["size"]
    images, captions = caption_training_rows(spec, storage, size)
    prompts = embed_texts(class_prompts(info.classes, prompt_template(spec, info)))
    data = TrainData.make(images, captions, info.num_classes)
    out = {}
    for kind in kinds:
        config = {**spec.gan.trial_config(), "generator": kind, "g_lr": 1e-3, "seed": seed}
        if class_weight is not None:
            config["class_weight"] = class_weight
        config |= {"image_size": size, "channels": info.channels, "num_classes": info.num_classes}
        torch.manual_seed(seed)
        g, d, opt_g, opt_d = build_gan(config)
        gen, done, scores = torch.Generator().manual_seed(seed), 0, []
        for budget in budgets:
            for _ in range(budget - done):
                train_step(g, d, opt_g, opt_d, data, config, gen)
            done = budget
            scores.append(cond_accuracy(g, classifier, prompts, 200))
        out[kind] = scores
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--datasets", default="digits", help="comma-separated: digits, shapes")
    parser.add_argument("--budgets", default="300,600")
    parser.add_argument("--seeds", type=int, default=1)
    parser.add_argument(
        "--kinds", default="dcgan,style", help="generators to train (one per process: run two to use two cores)"
    )
    parser.add_argument(
        "--class-weight",
        type=float,
        default=None,
        help="gan.class_weight (default: the spec's; 0 turns AC-GAN's loss off)",
    )
    args = parser.parse_args()
    budgets = sorted(int(b) for b in args.budgets.split(","))
    logging.disable(logging.WARNING)

    import numpy as np
    import torch

    from aigc_ray.data.build import build_data
    from aigc_ray.spec import load_spec
    from aigc_ray.storage import Storage

    torch.set_num_threads(1)
    quickstart = Path(__file__).resolve().parent.parent / "examples" / "quickstart.yaml"
    with tempfile.TemporaryDirectory(prefix="aigc-style-budget-") as root:
        for dataset in args.datasets.split(","):
            spec = load_spec(str(quickstart), [f"storage.root={root}/{dataset}", f"data.dataset={dataset}"])
            storage = Storage.from_spec(spec.storage)
            build_data(spec, storage, log=lambda *_: None)
            kinds = args.kinds.split(",")
            runs = [curves(spec, storage, budgets, seed, kinds, args.class_weight) for seed in range(args.seeds)]
            for i, budget in enumerate(budgets):
                score = {k: float(np.mean([r[k][i] for r in runs])) for k in kinds}
                line = f"{dataset:<7} {budget:>5} steps: cond_accuracy " + " ".join(
                    f"{k} {v:.3f}" for k, v in score.items()
                )
                if {"dcgan", "style"} <= set(score):
                    line += f"  style/dcgan cond_accuracy ratio {score['style'] / max(score['dcgan'], 1e-9):.3f}"
                print(line, flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
