"""A sweep's live line: trials running, finished and stopped early, and the best metric so far."""

from __future__ import annotations

import math

from ray.tune import Callback

from .. import progress


class SweepProgress(Callback):
    """Counts the trials by state on every step of Tune's loop (on the driver). A trial that
    ended before ``max_iterations`` was stopped early (ASHA, a collapse rule). A module-level
    class of plain fields: Tune pickles its callbacks with the experiment for ``--resume``."""

    def __init__(self, family: str, metric: str, mode: str, max_iterations: int, total: int):
        self.family, self.metric, self.mode = family, metric, mode
        self.max_iterations, self.total = max_iterations, total
        self.best: float | None = None

    def on_trial_result(self, iteration, trials, trial, result, **info):
        value = result.get(self.metric)
        if isinstance(value, (int, float)) and math.isfinite(value):
            better = self.best is None or (value < self.best if self.mode == "min" else value > self.best)
            self.best = value if better else self.best
        progress.emit(self.line(trials))

    def on_trial_complete(self, iteration, trials, trial, **info):
        progress.emit(self.line(trials), force=True)

    def on_trial_error(self, iteration, trials, trial, **info):
        progress.emit(self.line(trials), force=True)

    def line(self, trials) -> str:
        running = sum(t.status == "RUNNING" for t in trials)
        failed = sum(t.status == "ERROR" for t in trials)
        ended = [t for t in trials if t.status == "TERMINATED"]
        early = sum((t.last_result or {}).get("training_iteration", 0) < self.max_iterations for t in ended)
        parts = [
            f"sweep {self.family}: {len(ended) + failed}/{self.total} trials done",
            f"{running} running",
            f"{len(ended) - early} finished",
            f"{early} stopped early",
        ]
        if failed:
            parts.append(f"{failed} failed")
        if self.best is not None:
            parts.append(f"best {self.metric} {self.best:.4g}")
        return " · ".join(parts)
