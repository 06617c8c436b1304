"""``aigc sweep gan``: a Ray Tune sweep from the spec, and its results for people and the ensemble.

Writes under ``<root>/<name>/sweeps/gan/``: ``tune/`` (Tune's own experiment, restorable),
and a committed results folder: ``best/`` (generator and discriminator weights in
safetensors, config, metrics), ``topk.json`` (the k best checkpoints, for the ensemble),
``results.csv``, ``curves.png`` (every trial's metric per iteration) and ``samples.png``
(a grid from the best generator).
"""

from __future__ import annotations

import json
import re
import shutil
import tempfile
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..data.arrays import digit_arrays
from ..data.build import build_data
from ..manifest import publish_directory, read_manifest
from ..models.gan import from_gan_space, sample, to_gan_space
from ..spec import ExperimentSpec, spec_hash
from ..storage import Storage, join
from .classifier import classifier_uri, load_or_train_classifier
from .gan_trainable import gan_trainable, load_generator
from .space import param_space, scheduler, search_alg


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


@dataclass
class SweepResult:
    uri: str
    best: dict
    top_k: list[dict]
    trials: int
    exploits: list[dict]  # PBT: which trial took whose (G, D) pair, and whether the pair matched


def sweep_dir(spec: ExperimentSpec, kind: str) -> str:
    return join(spec.storage.root, spec.name, "sweeps", kind)


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


def run_gan_sweep(spec: ExperimentSpec, storage: Storage, resume: bool = False, log=print) -> SweepResult:
    """Run (or, with ``resume``, finish) the GAN sweep and publish its results."""
    from ray import tune

    built = build_data(spec, storage, log=log)
    classifier = load_or_train_classifier(spec, storage)
    real = to_gan_space(torch.from_numpy(digit_arrays(spec, storage, "train")["image"]))
    with torch.no_grad():
        feats = classifier.features(real).numpy()
    trainable = tune.with_resources(
        tune.with_parameters(
            gan_trainable,
            real=real.numpy(),
            classifier_state=classifier.state_dict(),
            real_mu=feats.mean(0),
            real_sigma=np.cov(feats, rowvar=False),
            real_spread=float(np.linalg.norm(feats - feats.mean(0), axis=1).mean()),
            events_uri=join(sweep_dir(spec, "gan"), "events"),
            s3=storage.s3,
        ),
        {"cpu": spec.gan.sweep.cpus_per_trial},
    )
    s = spec.gan.sweep
    path, fs = storage.ray_storage(join(sweep_dir(spec, "gan"), "tune"))
    experiment = f"{path.rstrip('/')}/sweep"
    if resume and tune.Tuner.can_restore(experiment, storage_filesystem=fs):
        log(f"[sweep] resuming {experiment}")
        tuner = tune.Tuner.restore(
            experiment, trainable, resume_unfinished=True, resume_errored=True, storage_filesystem=fs
        )
    else:
        for stale in storage.list_files(join(sweep_dir(spec, "gan"), "events")):  # from an earlier sweep
            storage.delete(stale)
        tuner = tune.Tuner(
            trainable,
            param_space=param_space(gan_defaults(spec), s),
            tune_config=tune.TuneConfig(
                metric=s.metric,
                mode=s.mode,
                scheduler=scheduler(s),
                search_alg=search_alg(s),
                num_samples=s.num_samples,
                max_concurrent_trials=s.max_concurrent_trials,
            ),
            run_config=tune.RunConfig(
                name="sweep",
                storage_path=path,
                storage_filesystem=fs,
                stop=collapse_stopper(
                    spec.gan.collapse_diversity, spec.gan.d_win_accuracy, spec.gan.collapse_patience, s.grace_period
                ),
                # PBT exploits need the donors' checkpoints: with num_to_keep they were pruned (seen here).
                checkpoint_config=tune.CheckpointConfig(
                    num_to_keep=None if s.scheduler == "pbt" else 2,
                    checkpoint_score_attribute=None if s.scheduler == "pbt" else s.metric,
                    checkpoint_score_order=s.mode,
                ),
            ),
        )
    grid = tuner.fit()
    inputs = {
        join(built.root, "multimodal"): built.multimodal.fingerprint,
        classifier_uri(spec): read_manifest(storage, classifier_uri(spec)).fingerprint,
    }
    return publish_gan_results(spec, storage, grid, inputs, log)


def publish_gan_results(spec: ExperimentSpec, storage: Storage, grid, inputs: dict, log=print) -> SweepResult:
    s = spec.gan.sweep
    ranked = []
    for r in grid:
        if r.metrics is None or s.metric not in (r.metrics or {}):
            continue
        # The trial's best retained checkpoint (Result.best_checkpoints, unlike get_best_checkpoint,
        # does not raise for a trial whose folder holds none, e.g. one stopped before its first).
        kept = [(c, m[s.metric]) for c, m in (r.best_checkpoints or []) if s.metric in m]
        if not kept and r.checkpoint is not None and s.metric in (r.metrics or {}):
            kept = [(r.checkpoint, r.metrics[s.metric])]  # PBT can reset a trial's bookkeeping
        if not kept:
            continue
        best, value = min(kept, key=lambda cm: cm[1] if s.mode == "min" else -cm[1])
        df = r.metrics_dataframe
        ranked.append(
            {
                "trial_id": trial_id_of(r),
                s.metric: float(value),
                "checkpoint": checkpoint_uri(best),
                "checkpoint_ref": best,
                "iterations": int(r.metrics.get("training_iteration", 0)),
                "config": {k: v for k, v in r.config.items() if isinstance(v, (int, float, str, bool))},
                "history": df,
            }
        )
    if not ranked:
        raise RuntimeError("no trial reported a result; see the Tune output above")
    ranked.sort(key=lambda t: t[s.metric], reverse=s.mode == "max")
    uri = join(sweep_dir(spec, "gan"), "results")
    with tempfile.TemporaryDirectory(prefix="aigc-sweep-") as tmp:
        out = Path(tmp)
        best = ranked[0]
        best_dir = out / "best"
        best_dir.mkdir()
        ckpt_local = best["checkpoint_ref"].to_directory(str(out / ".ckpt"))
        generator = load_generator(ckpt_local, best["config"])
        state = torch.load(Path(ckpt_local, "gan_state.pt"), weights_only=True)
        from safetensors.torch import save_file

        save_file(state["g"], best_dir / "generator.safetensors")
        save_file(state["d"], best_dir / "discriminator.safetensors")
        (best_dir / "config.json").write_text(json.dumps(best["config"], indent=2))
        (best_dir / "metrics.json").write_text(json.dumps({s.metric: best[s.metric], "trial_id": best["trial_id"]}))
        shutil.rmtree(out / ".ckpt")
        top = [{k: v for k, v in t.items() if k not in ("history", "checkpoint_ref")} for t in ranked[: s.top_k]]
        (out / "topk.json").write_text(json.dumps(top, indent=2))
        exploits = _exploits(storage, spec)
        (out / "exploits.json").write_text(json.dumps(exploits, indent=2))
        _results_csv(ranked, s.metric, out / "results.csv")
        _curves_png(ranked, s.metric, out / "curves.png", f"{spec.name}: GAN sweep ({s.scheduler})")
        _samples_png(generator, out / "samples.png")
        publish_directory(
            storage,
            out,
            uri,
            kind="sweep/gan",
            spec_hash=spec_hash(spec, "data", "gan"),
            inputs=inputs,
            meta={"best": top[0], "trials": len(ranked)},
        )
    log(f"[sweep] best {s.metric} {best[s.metric]:.3f} ({best['trial_id']}), {len(ranked)} trials -> {uri}")
    return SweepResult(uri, top[0], top, len(grid), exploits)


def trial_id_of(result) -> str:
    """A Result's own trial id, from its folder name: after a PBT exploit its last reported
    metrics are a copy of the donor's, trial_id included."""
    match = re.search(r"_([0-9a-f]{5}_\d{5})(?:_|$)", Path(result.path).name)
    return match.group(1) if match else str(result.metrics.get("trial_id"))


def _exploits(storage: Storage, spec: ExperimentSpec) -> list[dict]:
    """PBT exploits, as the trials recorded them when they restored a donor's checkpoint."""
    events = [storage.read_json(f) for f in storage.list_files(join(sweep_dir(spec, "gan"), "events"), ".json")]
    return sorted(events, key=lambda e: (e["trial_id"], e["at_iteration"]))


def checkpoint_uri(checkpoint) -> str:
    """A Tune checkpoint's location as one of our URIs (its ``path`` has no scheme on S3)."""
    return f"s3://{checkpoint.path}" if checkpoint.filesystem.type_name == "s3" else checkpoint.path


def _results_csv(ranked: list[dict], metric: str, path: Path) -> None:
    import csv

    keys = sorted({k for t in ranked for k in t["config"]})
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["rank", "trial_id", metric, "iterations", *keys, "checkpoint"])
        for i, t in enumerate(ranked, 1):
            writer.writerow(
                [
                    i,
                    t["trial_id"],
                    f"{t[metric]:.6g}",
                    t["iterations"],
                    *(t["config"].get(k) for k in keys),
                    t["checkpoint"],
                ]
            )


def _curves_png(ranked: list[dict], metric: str, path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4), dpi=100)
    for t in ranked:
        df = t["history"]
        if df is None or metric not in df:
            continue
        ax.plot(df["training_iteration"], df[metric], marker="o", ms=3, label=t["trial_id"][-5:])
    ax.set_xlabel("iteration")
    ax.set_ylabel(metric)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


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
