"""One trial skeleton for every sweep family: restore from Tune's checkpoint, iterate, and report
each iteration's metrics with a checkpoint. A family supplies a ``Trial``: how to restore, run one
iteration and save; the loop, the bookkeeping (``step``, ``trial_id``, ``threads``) and Tune's
calls live here. Each iteration runs on one torch thread per whole CPU of the trial (at least
one), plus those ``cpu_share`` hands it once the sweep's other trials have ended.
"""

from __future__ import annotations

import tempfile
from typing import Protocol


class Trial(Protocol):
    def restore(self, folder: str, trial_id: str) -> tuple[int, int, dict]:
        """Load a checkpoint folder; returns (step, iteration, metrics to add to every report)."""

    def iterate(self, iteration: int) -> tuple[dict, int]:
        """Train iteration ``iteration`` (0-based) and evaluate; returns (metrics, steps run)."""

    def save(self, folder: str, step: int, iteration: int, metrics: dict) -> None:
        """Write the checkpoint after ``iteration`` iterations (``step`` steps) into ``folder``."""


def run_trial(config: dict, trial: Trial) -> None:
    """Drive ``trial`` from Tune's latest checkpoint (a restart or a PBT exploit) to
    ``config["max_iterations"]``, reporting after every iteration with a checkpoint; a trial whose
    metrics say ``stop_trial`` ends after that report."""
    import torch
    from ray import tune

    from .cpu_share import ShareClient, own_threads

    context = tune.get_context()
    trial_id = context.get_trial_id()
    own = own_threads(context.get_trial_resources().required_resources.get("CPU", 1))
    share = ShareClient()
    step, iteration, restored = 0, 0, {}
    checkpoint = tune.get_checkpoint()
    if checkpoint:
        with checkpoint.as_directory() as folder:
            step, iteration, restored = trial.restore(folder, trial_id)
    while iteration < config["max_iterations"]:
        threads = own + share.extra_threads(trial_id)  # more once the sweep's other trials ended
        if threads != torch.get_num_threads():
            torch.set_num_threads(threads)
        metrics, steps = trial.iterate(iteration)
        step += steps
        iteration += 1
        metrics = {**metrics, "step": step, "trial_id": trial_id, "threads": threads, **restored}
        with tempfile.TemporaryDirectory() as folder:
            trial.save(folder, step, iteration, metrics)
            tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(folder))
        if metrics.get("stop_trial"):  # the trial itself found it must not go on (e.g. a collapse)
            return
