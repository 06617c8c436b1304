"""The Ray Tune machinery every sweep family shares: run a Tuner, rank its trials, publish results.

A sweep of family F writes under ``layout.sweep_dir(spec, F)``: ``tune/`` (Tune's own
experiment, restorable with ``--resume``) and a committed ``results/`` folder: ``best/``
(weights in safetensors, config, metrics), ``topk.json`` (the k best checkpoints, for the
ensemble), ``results.csv``, ``curves.png`` (every trial's metric per iteration) and the
family's own plots. The families (``gan_sweep``, ``fusion_sweep``, ``video_sweep``) supply the
trainable, its fixed inputs and what goes into ``best/``.
"""

from __future__ import annotations

import json
import re
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from ..layout import sweep_results
from ..manifest import publish_directory
from ..spec import ExperimentSpec, spec_hash
from ..spec.cost import sweep_trials
from ..spec.sections import SweepSpec
from ..storage import Storage, checkpoint_uri, join
from .cpu_share import CpuShareCallback
from .space import param_space, scheduler, search_alg
from .sweep_progress import SweepProgress
from .trial_runs import trial_run_callbacks


@dataclass
class SweepResult:
    uri: str
    best: dict
    top_k: list[dict]
    trials: int
    total_steps: int  # training steps summed over every trial: the sweep's compute
    exploits: list[dict] = field(default_factory=list)  # GAN PBT: whose (G, D) pair each exploit took
    best_extra: dict = field(default_factory=dict)  # e.g. the best fusion model's test-split metrics


def run_tuner(
    sweep: SweepSpec,
    trainable,
    defaults: dict,
    uri: str,
    storage: Storage,
    *,
    structural: frozenset[str] = frozenset(),
    stop=None,
    resume: bool = False,
    on_fresh_start: Callable[[], None] | None = None,
    progress: bool = True,
    log=print,
):
    """Run the sweep ``sweep`` of ``trainable`` with its experiment under ``<uri>/tune``, or with
    ``resume`` finish the one there (``Tuner.restore``: finished trials are not run again).
    ``structural``: dimensions that change the network's shape, so PBT must not mutate them.
    ``progress``: Tune's progress table on stdout."""
    from ray import tune

    path, fs = storage.ray_storage(join(uri, "tune"))
    experiment = f"{path.rstrip('/')}/sweep"
    if resume and tune.Tuner.can_restore(experiment, storage_filesystem=fs):
        log(f"[sweep] resuming {experiment}")
        tuner = tune.Tuner.restore(
            experiment, trainable, resume_unfinished=True, resume_errored=True, storage_filesystem=fs
        )
    else:
        if on_fresh_start:
            on_fresh_start()
        tuner = tune.Tuner(
            trainable,
            param_space=param_space(defaults, sweep),
            tune_config=tune.TuneConfig(
                metric=sweep.metric,
                mode=sweep.mode,
                scheduler=scheduler(sweep, structural),
                search_alg=search_alg(sweep),
                num_samples=sweep.num_samples,
                max_concurrent_trials=sweep.max_concurrent_trials,
                # A new trial runs in the worker process the last one finished in: without this each
                # trial paid ~5 s of process start and imports between trials (bench/scaling.py). Not
                # under PBT: an exploit into a reused actor did not replay exactly from the donor's
                # checkpoint (test_sweep's PBT test), so PBT keeps a fresh process per trial start.
                reuse_actors=sweep.scheduler != "pbt",
            ),
            run_config=tune.RunConfig(
                name="sweep",
                storage_path=path,
                storage_filesystem=fs,
                stop=stop,
                verbose=1 if progress else 0,
                callbacks=[  # the live line; each trial a child MLflow run of the sweep's run
                    SweepProgress(
                        uri.rstrip("/").rsplit("/", 1)[-1],
                        sweep.metric,
                        sweep.mode,
                        sweep.max_iterations,
                        sweep_trials(sweep),
                    ),
                    *trial_run_callbacks(),
                    # the sweep's tail: trials still running take the CPUs of those that ended
                    *([CpuShareCallback(sweep_trials(sweep))] if sweep.scheduler != "pbt" else []),
                ],
                # Every checkpoint is kept while the sweep runs and pruned once it ends (below): with
                # num_to_keep, Tune snapshots and uploads the whole experiment state each time a trial
                # has checkpointed that many times (ray-project/ray#31613), which made the time per
                # trial-iteration grow with the trial count (bench/scaling.py: 64 trials 128 s -> 35 s).
                # PBT keeps them all anyway: its exploits need the donors' checkpoints.
                checkpoint_config=tune.CheckpointConfig(
                    num_to_keep=None,
                    checkpoint_score_attribute=None if sweep.scheduler == "pbt" else sweep.metric,
                    checkpoint_score_order=sweep.mode,
                ),
            ),
        )
    grid = tuner.fit()
    if sweep.scheduler != "pbt":
        prune_checkpoints(grid, sweep, KEEP_CHECKPOINTS)
    return grid


KEEP_CHECKPOINTS = 2  # per trial, the best by the sweep's metric: what ranking and the top-k read


def prune_checkpoints(grid, sweep: SweepSpec, keep: int) -> int:
    """Delete every trial's checkpoints but its ``keep`` best by the sweep's metric (what Tune's
    ``num_to_keep`` would have left); return how many were deleted. Checkpoints that never
    reported the metric go first. Safe to repeat: a checkpoint already gone is skipped."""
    from pyarrow.fs import FileType

    deleted = 0
    for r in grid:
        for checkpoint, _ in _checkpoints_best_first(r, sweep)[keep:]:
            if checkpoint.filesystem.get_file_info(checkpoint.path).type != FileType.NotFound:
                checkpoint.filesystem.delete_dir(checkpoint.path)
                deleted += 1
    return deleted


def _checkpoints_best_first(result, sweep: SweepSpec) -> list[tuple]:
    """A trial's (checkpoint, metric value) pairs, best first; a missing or NaN value last."""

    def key(pair: tuple) -> tuple:
        value = pair[1]
        if value is None or value != value:
            return (1, 0.0)
        return (0, value if sweep.mode == "min" else -value)

    scored = [(c, m.get(sweep.metric)) for c, m in (result.best_checkpoints or [])]
    return sorted(scored, key=key)


def rank_trials(grid, sweep: SweepSpec) -> list[dict]:
    """Every trial with a retained checkpoint, best first, each with its best checkpoint and history."""
    ranked = []
    for r in grid:
        if r.metrics is None or sweep.metric not in (r.metrics or {}):
            continue
        # The trial's best retained checkpoint (Result.best_checkpoints, unlike get_best_checkpoint,
        # does not raise for a trial whose folder holds none, e.g. one stopped before its first).
        # Only those prune_checkpoints left (the best KEEP_CHECKPOINTS), and only those with the metric.
        kept = [(c, v) for c, v in _checkpoints_best_first(r, sweep)[:KEEP_CHECKPOINTS] if v is not None]
        if not kept and r.checkpoint is not None:
            kept = [(r.checkpoint, r.metrics[sweep.metric])]  # PBT can reset a trial's bookkeeping
        if not kept:
            continue
        best, value = min(kept, key=lambda cm: cm[1] if sweep.mode == "min" else -cm[1])
        ranked.append(
            {
                "trial_id": trial_id_of(r),
                sweep.metric: float(value),
                "checkpoint": checkpoint_uri(best),
                "checkpoint_ref": best,
                "iterations": int(r.metrics.get("training_iteration", 0)),
                "config": {k: v for k, v in r.config.items() if isinstance(v, (int, float, str, bool))},
                "history": r.metrics_dataframe,
            }
        )
    if not ranked:
        raise RuntimeError("no trial reported a result; see the Tune output above")
    ranked.sort(key=lambda t: t[sweep.metric], reverse=sweep.mode == "max")
    return ranked


def total_steps(grid) -> int:
    """Training steps run by all trials together (each trial reports its running ``step``)."""
    total = 0
    for r in grid:
        df = r.metrics_dataframe
        if df is not None and "step" in df and len(df):
            total += int(df["step"].max())
    return total


def publish_sweep(
    spec: ExperimentSpec,
    storage: Storage,
    family: str,
    sweep: SweepSpec,
    grid,
    inputs: dict,
    write_best: Callable[[Path, dict], dict],
    log=print,
) -> SweepResult:
    """Commit ``results/`` for a finished sweep. ``write_best(out_dir, best_trial)`` writes the
    family's files (``best/`` and its own plots) from the best trial's checkpoint and returns
    extra metrics recorded with the best (e.g. on the test split)."""
    ranked = rank_trials(grid, sweep)
    uri = sweep_results(spec, family)
    best = ranked[0]
    with tempfile.TemporaryDirectory(prefix="aigc-sweep-") as tmp:
        out = Path(tmp)
        (out / "best").mkdir()
        extra = write_best(out, best)
        (out / "best" / "config.json").write_text(json.dumps(best["config"], indent=2))
        best_metrics = {sweep.metric: best[sweep.metric], "trial_id": best["trial_id"], **extra}
        (out / "best" / "metrics.json").write_text(json.dumps(best_metrics, indent=2))
        top = [{k: v for k, v in t.items() if k not in ("history", "checkpoint_ref")} for t in ranked[: sweep.top_k]]
        (out / "topk.json").write_text(json.dumps(top, indent=2))
        _results_csv(ranked, sweep.metric, out / "results.csv")
        _curves_png(ranked, sweep.metric, out / "curves.png", f"{spec.name}: {family} sweep ({sweep.scheduler})")
        steps = total_steps(grid)
        publish_directory(
            storage,
            out,
            uri,
            kind=f"sweep/{family}",
            spec_hash=spec_hash(spec, "data", family),
            inputs=inputs,
            meta={"best": top[0], "best_extra": extra, "trials": len(ranked), "total_steps": steps},
        )
    log(f"[sweep] best {sweep.metric} {best[sweep.metric]:.4f} ({best['trial_id']}), {len(ranked)} trials -> {uri}")
    return SweepResult(uri, top[0], top, len(grid), steps, best_extra=extra)


def trial_id_of(result) -> str:
    """A Result's own trial id, from its folder name: after a PBT exploit its last reported
    metrics are a copy of the donor's, trial_id included."""
    match = re.search(r"_([0-9a-f]{5}_\d{5})(?:_|$)", Path(result.path).name)
    return match.group(1) if match else str(result.metrics.get("trial_id"))


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
