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
        progress.emit(self.line(trials, ending=trial), force=True)

    def on_trial_error(self, iteration, trials, trial, **info):
        progress.emit(self.line(trials, failing=trial), force=True)

    def on_experiment_end(self, trials, **info):
        progress.emit(self.line(trials), force=True)

    def line(self, trials, ending=None, failing=None) -> str:
        """The counts; ``ending``/``failing``: a trial Tune is ending now (its status not set yet)."""

        def status(t) -> str:
            return "TERMINATED" if t is ending else "ERROR" if t is failing else t.status

        running = sum(status(t) == "RUNNING" for t in trials)
        failed = sum(status(t) == "ERROR" for t in trials)
        ended = [t for t in trials if status(t) == "TERMINATED"]
        early = sum((t.last_result or {}).get("training_iteration", 0) < self.max_iterations for t in ended)
        line = (
            f"sweep {self.family} {len(ended) + failed}/{self.total}: {running} running, "
            f"{len(ended) - early} finished, {early} stopped early"
        )
        if failed:
            line += f", {failed} failed"
        if self.best is not None:
            line += f" · best {self.metric} {self.best:.4g}"
        return line
