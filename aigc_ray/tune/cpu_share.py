"""A sweep's tail uses the CPUs its ended trials leave idle.

ASHA stops most trials early, so a sweep ends with a few trials running and the cores of those it
stopped idle: the quickstart's video sweep ran its last trial alone on one core of two for 15 s
of its 25 s. A trial runs one torch thread per whole CPU it asked for (at least one). Once
nothing is left to start (every trial created, none pending or paused), the threads the sweep's
trials ran at once on a node, less those its running trials run there on their own, go to the
trials still running on that node as extra threads, from their next iteration (a video GAN step:
25 ms on one thread, 15 ms on two; a GAN step 1.4x faster).

Only threads this sweep ran are handed out, never more (``max_concurrent_trials`` stays a limit);
under PBT none are (trials pause and resume, and an exploit is replayed exactly from the donor's
checkpoint, which the same thread count guarantees). The driver's
``CpuShareCallback`` decides; each trial asks the job's ``CpuShare`` actor before each iteration
(``ShareClient``), keyed by trial id, so sweeps side by side in one job share one actor.
"""

from __future__ import annotations

from collections import defaultdict

import ray
from ray import tune
from ray.tune.experiment import Trial

SHARE_ACTOR = "aigc-tune-cpu-share"


@ray.remote(num_cpus=0)
class CpuShare:
    """trial id -> threads it may run beyond its own."""

    def __init__(self) -> None:
        self.extra: dict[str, int] = {}

    def update(self, trial_ids: list[str], extra: dict[str, int]) -> None:
        for trial_id in trial_ids:
            self.extra.pop(trial_id, None)
        self.extra.update(extra)

    def extra_for(self, trial_id: str) -> int:
        return self.extra.get(trial_id, 0)


class ShareClient:
    """A trial's side: asks the job's ``CpuShare`` for its extra threads, finding the actor on the
    first ask that it exists (none exists in a job that ran no sweep with the callback)."""

    def __init__(self) -> None:
        self.handle = None

    def extra_threads(self, trial_id: str) -> int:
        """The threads ``trial_id`` may run beyond its own now; 0 when the answer cannot be had."""
        if self.handle is None:
            try:
                self.handle = ray.get_actor(SHARE_ACTOR)
            except ValueError:
                return 0
        try:
            return int(ray.get(self.handle.extra_for.remote(trial_id), timeout=10))
        except (ray.exceptions.RayError, ray.exceptions.GetTimeoutError):
            return 0


def own_threads(cpus: float) -> int:
    """A trial's torch threads for the CPUs it asked for: one per whole CPU, at least one (the
    quickstart's trials ask for 0.5 CPU each and run one thread, two at once on 2 cores)."""
    return max(1, int(cpus))


def _threads(trial: Trial) -> int:
    return own_threads(trial.placement_group_factory.required_resources.get("CPU", 0))


class CpuShareCallback(tune.Callback):
    """Decides each running trial's extra threads from the sweep's trials (see the module's doc)."""

    def __init__(self, total_trials: int):
        self.total_trials = total_trials
        self.nodes: dict[str, str] = {}  # trial id -> the node its results come from
        self.only_node: str | None = None  # the cluster's node while it has one: where every trial is
        self.peak: dict[str, int] = {}  # node -> most threads its trials ran at once (thread_shares keeps it)
        self.published: dict[str, int] = {}
        self.share = None

    def setup(self, **info) -> None:
        self.share = CpuShare.options(name=SHARE_ACTOR, get_if_exists=True).remote()

    def on_trial_start(self, iteration, trials, trial, **info) -> None:
        alive = [n["NodeManagerAddress"] for n in ray.nodes() if n["Alive"]]
        self.only_node = alive[0] if len(alive) == 1 else None
        self._publish(trials)

    def on_trial_result(self, iteration, trials, trial, result, **info) -> None:
        if result.get("node_ip"):
            self.nodes[trial.trial_id] = result["node_ip"]
        self._publish(trials)

    def on_trial_complete(self, iteration, trials, trial, **info) -> None:
        self._publish(trials, ended=trial)  # Tune calls this while the trial still reads RUNNING

    def on_trial_error(self, iteration, trials, trial, **info) -> None:
        self._publish(trials, ended=trial)

    def on_experiment_end(self, trials, **info) -> None:
        if self.share is not None and self.published:
            self.share.update.remote(list(self.published), {})

    def extras(self, trials: list[Trial], ended: Trial | None = None) -> dict[str, int]:
        running = [t for t in trials if t.status == Trial.RUNNING and t is not ended]
        # A trial's node is known from its first result; a trial still starting is on the one node
        # a single-node cluster has, and on a larger one waits for its first result.
        placed = {t.trial_id: (self.nodes.get(t.trial_id, self.only_node), _threads(t)) for t in running}
        more_to_come = len(trials) < self.total_trials or any(t.status in (Trial.PENDING, Trial.PAUSED) for t in trials)
        return thread_shares(placed, self.peak, more_to_come)

    def _publish(self, trials: list[Trial], ended: Trial | None = None) -> None:
        extra = self.extras(trials, ended)
        if extra != self.published and self.share is not None:
            self.share.update.remote(list(self.published), extra)
            self.published = extra


def thread_shares(
    running: dict[str, tuple[str | None, int]], peak: dict[str, int], more_to_come: bool
) -> dict[str, int]:
    """The extra threads of each running trial (trial id -> (its node or None, its own threads)).

    ``peak`` (node -> the most threads the sweep's trials ran there at once) is brought up to date
    first. Nothing is shared while ``more_to_come`` (a trial is still to be created, pending or
    paused): a trial about to start will want its CPU. Then on each node the threads of the peak
    that its running trials no longer use are split evenly among them, the remainder to the first
    by trial id. A trial of unknown node (on a cluster of several nodes, until its first result)
    gets none and counts on none: its node's other trials may run over by its threads for an
    iteration."""
    held: dict[str, int] = defaultdict(int)
    for node, threads in running.values():
        if node is not None:
            held[node] += threads
    for node, threads in held.items():
        peak[node] = max(peak.get(node, 0), threads)
    if more_to_come:
        return {}
    extra: dict[str, int] = {}
    for node, threads in held.items():
        on_node = sorted(trial_id for trial_id, (where, _) in running.items() if where == node)
        free = peak[node] - threads
        for i, trial_id in enumerate(on_node):
            share = free // len(on_node) + (1 if i < free % len(on_node) else 0)
            if share:
                extra[trial_id] = share
    return extra
