"""``aigc sweep gan``: the DCGAN sweep. Beyond the shared results it writes the best generator
and discriminator (safetensors), ``samples.png`` (a grid from the best generator) and
``exploits.json`` (PBT: which trial took whose (G, D) pair, and whether the pair matched)."""

from __future__ import annotations

import json
import shutil
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch

from ..data.arrays import digit_arrays
from ..data.build import build_data
from ..manifest import read_manifest
from ..models.gan import from_gan_space, sample, to_gan_space
from ..spec import ExperimentSpec
from ..spec.sections import GAN_STRUCTURAL
from ..storage import Storage, join
from .classifier import classifier_uri, load_or_train_classifier
from .gan_trainable import STATE_FILE, gan_trainable, load_generator
from .sweep import SweepResult, publish_sweep, run_tuner, sweep_dir


def collapse_stopper(min_diversity: float, d_win_accuracy: float, patience: int, grace: int):
    """A Tune ``Stopper`` that ends GAN trials whose samples lose diversity or whose
    discriminator wins outright, for ``patience`` consecutive reports."""
    from ray.tune import Stopper

    class CollapseStopper(_CollapseRule, Stopper):
        pass

    return CollapseStopper(min_diversity, d_win_accuracy, patience, grace)


class _CollapseRule:
    """The stopping rule itself (plain Python, so it is testable without Tune)."""

    def __init__(self, min_diversity: float, d_win_accuracy: float, patience: int, grace: int):
        self.min_diversity, self.d_win_accuracy, self.patience = min_diversity, d_win_accuracy, patience
        self.grace = grace  # early on D always wins: judge only after this many iterations
        self.strikes: dict[str, int] = defaultdict(int)

    def __call__(self, trial_id: str, result: dict) -> bool:
        if result.get("training_iteration", 0) <= self.grace:
            return False
        collapsed = (
            result.get("diversity", 1.0) < self.min_diversity or result.get("d_accuracy", 0.0) >= self.d_win_accuracy
        )
        self.strikes[trial_id] = self.strikes[trial_id] + 1 if collapsed else 0
        return self.strikes[trial_id] >= self.patience

    def stop_all(self) -> bool:
        return False


def gan_defaults(spec: ExperimentSpec) -> dict:
    g, s = spec.gan, spec.gan.sweep
    return {
        "z_dim": g.z_dim,
        "width": g.width,
        "g_lr": g.g_lr,
        "d_lr": g.d_lr,
        "lr_ratio": g.lr_ratio,
        "beta1": g.beta1,
        "batch_size": g.batch_size,
        "eval_samples": g.eval_samples,
        "max_iterations": s.max_iterations,
        "steps_per_iteration": s.steps_per_iteration,
        "seed": s.seed,
    }


def run_gan_sweep(
    spec: ExperimentSpec, storage: Storage, resume: bool = False, progress: bool = True, log=print
) -> SweepResult:
    """Run (or, with ``resume``, finish) the GAN sweep and publish its results."""
    from ray import tune

    built = build_data(spec, storage, log=log)
    classifier = load_or_train_classifier(spec, storage)
    real = to_gan_space(torch.from_numpy(digit_arrays(spec, storage, "train")["image"]))
    with torch.no_grad():
        feats = classifier.features(real).numpy()
    events = join(sweep_dir(spec, "gan"), "events")
    trainable = tune.with_resources(
        tune.with_parameters(
            gan_trainable,
            real=real.numpy(),
            classifier_state=classifier.state_dict(),
            real_mu=feats.mean(0),
            real_sigma=np.cov(feats, rowvar=False),
            real_spread=float(np.linalg.norm(feats - feats.mean(0), axis=1).mean()),
            events_uri=events,
            s3=storage.s3,
        ),
        {"cpu": spec.gan.sweep.cpus_per_trial},
    )

    def forget_old_exploits() -> None:  # events of an earlier sweep in the same place
        for stale in storage.list_files(events):
            storage.delete(stale)

    s = spec.gan.sweep
    grid = run_tuner(
        s,
        trainable,
        gan_defaults(spec),
        sweep_dir(spec, "gan"),
        storage,
        structural=GAN_STRUCTURAL,
        stop=collapse_stopper(
            spec.gan.collapse_diversity, spec.gan.d_win_accuracy, spec.gan.collapse_patience, s.grace_period
        ),
        resume=resume,
        progress=progress,
        on_fresh_start=forget_old_exploits,
        log=log,
    )
    inputs = {
        join(built.root, "multimodal"): built.multimodal.fingerprint,
        classifier_uri(spec): read_manifest(storage, classifier_uri(spec)).fingerprint,
    }
    exploits = _exploits(storage, events)

    def write_best(out: Path, best: dict) -> dict:
        from safetensors.torch import save_file

        ckpt = best["checkpoint_ref"].to_directory(str(out / ".ckpt"))
        state = torch.load(Path(ckpt, STATE_FILE), weights_only=True)
        save_file(state["g"], out / "best" / "generator.safetensors")
        save_file(state["d"], out / "best" / "discriminator.safetensors")
        _samples_png(load_generator(ckpt, best["config"]), out / "samples.png")
        shutil.rmtree(out / ".ckpt")
        (out / "exploits.json").write_text(json.dumps(exploits, indent=2))
        return {}

    result = publish_sweep(spec, storage, "gan", s, grid, inputs, write_best, log)
    result.exploits = exploits
    return result


def _exploits(storage: Storage, events_uri: str) -> list[dict]:
    """PBT exploits, as the trials recorded them when they restored a donor's checkpoint."""
    events = [storage.read_json(f) for f in storage.list_files(events_uri, ".json")]
    return sorted(events, key=lambda e: (e["trial_id"], e["at_iteration"]))


def _samples_png(generator, path: Path, n: int = 64) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    images = from_gan_space(sample(generator, n, seed=0))[:, 0].numpy()
    side = int(np.ceil(np.sqrt(n)))
    grid = np.ones((side * 17, side * 17))
    for i, img in enumerate(images):
        r, c = divmod(i, side)
        grid[r * 17 : r * 17 + 16, c * 17 : c * 17 + 16] = img
    plt.imsave(path, grid, cmap="gray", vmin=0, vmax=1)
