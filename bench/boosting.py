"""Benchmark: boosting against bagging and against one member, at equal total training steps.

Every model is the ensemble's fusion classifier, trained by the ensemble's own code
(``ensemble.members._train_boosted``/``_train_bagged``: what a boosted or bagged Ray task runs; ``ensemble.boosting.samme``;
``ensemble.combine.fit_combiner``), in this process one after another: the comparison is
accuracy for a training budget, not wall time. Per seed:

  boosted : N members by SAMME (weighted resampling), combined by their α (the committee)
  bagged  : N members on bootstrap resamples, combined by the mean
  single  : one member trained N times as long (the same total steps)

scored on the test split. Two settings:

  uninformative captions : every caption, train and test, is "a handwritten digit": the image
                           alone carries the answer
  weak members           : the data's own captions, but a small budget per member

Printed per setting: mean test accuracy over the seeds of each, and the ratios boosted/bagged
and boosted/single (one line each, with the word "ratio").

    python bench/boosting.py [--seeds 5] [--members 5]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def main() -> None:
    import numpy as np
    import torch
    from digit_splits import digit_splits

    from aigc_ray.ensemble.boosting import samme
    from aigc_ray.ensemble.members import _train_bagged, _train_boosted, _trained
    from aigc_ray.models.fusion_training import build_model, predict

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seeds", type=int, default=5)
    p.add_argument("--members", type=int, default=5)
    p.add_argument("--work", default=None, help="where the data is built (default: a temporary folder)")
    args = p.parse_args()
    torch.set_num_threads(1)

    digits = digit_splits(args.work, "aigc-bench-boosting-", "fusion.dim=16")
    train, test = digits.train, digits.test

    def loaded(config: dict, state: dict):
        model = build_model(config, int(config["vocab_size"]))
        model.load_state_dict({k: torch.from_numpy(v) for k, v in state.items()})
        return model.eval()

    base = digits.config
    settings = {
        "uninformative captions": (
            digits.vague(train),
            digits.vague(test),
            {"max_iterations": 4, "steps_per_iteration": 50},
        ),
        "weak members": (train, test, {"max_iterations": 2, "steps_per_iteration": 20}),
    }
    n = args.members
    print(
        f"fusion {base['operator']} dim {base['dim']}, batch {base['batch_size']}; {n} members; {args.seeds} seeds; "
        f"train {len(train['label'])} rows, test {len(test['label'])}"
    )
    started = time.time()
    for name, (tr, te, budget) in settings.items():
        config = {**base, **budget}
        steps = budget["max_iterations"] * budget["steps_per_iteration"]
        labels = np.asarray(tr["label"])
        scores: dict[str, list[float]] = {"boosted": [], "bagged": [], "single": []}
        for seed in range(args.seeds):

            def fit(weights, _round, s, config=config, tr=tr):
                state, answers = _train_boosted(config, tr, weights, "resample", s)
                return loaded(config, state), answers

            rounds = samme(fit, labels, int(config["num_classes"]), n, seed=1000 * seed)
            alphas = np.array([r.alpha for r in rounds])
            boosted = sum(a * predict(r.member, te) for a, r in zip(alphas / alphas.sum(), rounds, strict=True))
            bagged = [predict(loaded(config, _train_bagged(config, tr, 1000 * seed + 500 + i)), te) for i in range(n)]
            single = _trained({**config, "max_iterations": n * budget["max_iterations"]}, tr, 1000 * seed + 999)
            truth = np.asarray(te["label"])
            for key, probs in (
                ("boosted", boosted),
                ("bagged", np.mean(bagged, 0)),
                ("single", predict(single.eval(), te)),
            ):
                scores[key].append(float((probs.argmax(1) == truth).mean()))
            print(
                f"  {name}, seed {seed}: "
                + ", ".join(f"{k} {v[-1]:.3f}" for k, v in scores.items())
                + f" ({len(rounds)} boosting rounds)",
                flush=True,
            )
        mean = {k: float(np.mean(v)) for k, v in scores.items()}
        print(
            f"{name} ({steps} steps a member, {n * steps} in all): boosted {mean['boosted']:.3f}, "
            f"bagged {mean['bagged']:.3f}, single {mean['single']:.3f}"
        )
        print(f"{name}: accuracy boosted / bagged ratio {mean['boosted'] / mean['bagged']:.3f}")
        print(f"{name}: accuracy boosted / single ratio {mean['boosted'] / mean['single']:.3f}")
    print(f"total {time.time() - started:.0f} s")


if __name__ == "__main__":
    main()
