"""``aigc sweep FAMILY``: run (or resume) one family's Ray Tune sweep and publish its results."""

from __future__ import annotations

from ..spec import ExperimentSpec
from ..storage import Storage
from ..tracking import log_plots, tracked_run
from .tuner import SweepResult


def run_sweep(family: str, spec: ExperimentSpec, storage: Storage, resume: bool = False, log=print) -> SweepResult:
    """The sweep of ``family`` (gan, fusion or video); ValueError for another name."""
    if family == "gan":
        from .gan_sweep import run_gan_sweep as run
    elif family == "fusion":
        from .fusion_sweep import run_fusion_sweep as run
    elif family == "video":
        from .video_sweep import run_video_sweep as run
    else:
        raise ValueError(f"unknown sweep family {family!r}; allowed: gan, fusion, video")
    sweep = getattr(spec, family).sweep
    with tracked_run(spec, f"sweep_{family}", params=sweep.model_dump()) as run_ref:
        result = run(spec, storage, resume=resume, log=log)
        if run_ref is not None:
            run_ref.log_metrics({f"best.{sweep.metric}": result.best[sweep.metric], "trials": result.trials})
            run_ref.set_tags({"aigc.artifact": result.uri})
            log_plots(run_ref, storage, result.uri)
    return result
