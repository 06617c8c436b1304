"""``aigc sweep FAMILY``: run (or resume) one family's Ray Tune sweep and publish its results."""

from __future__ import annotations

from ..spec import ExperimentSpec
from ..storage import Storage
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
    return run(spec, storage, resume=resume, log=log)
