"""Starting or joining Ray, and the resource policy that keeps Ray Data moving on small machines."""

from __future__ import annotations

import contextlib
import logging
import os
import subprocess
import sys
from collections.abc import Iterator

from .spec import ExperimentSpec


def resolve_address(spec: ExperimentSpec, address: str | None = None) -> str | None:
    """The cluster to join: ``--address``, then the spec, then RAY_ADDRESS; None = embedded Ray."""
    return address or spec.ray.address or os.environ.get("RAY_ADDRESS") or None


@contextlib.contextmanager
def ray_session(spec: ExperimentSpec, address: str | None = None, log_to_driver: bool = True) -> Iterator[None]:
    """Connect to the named cluster or start an embedded local Ray; shut down only what we started.

    Every worker gets the spec's ``ray.env_vars`` (threads pinned) through the job's runtime_env.
    If Ray is already initialised in this process (tests, notebooks), it is reused as is.
    ``log_to_driver=False`` leaves the workers' output in Ray's log files (benchmarks' terminals).
    """
    import ray

    if ray.is_initialized():
        yield
        return
    runtime_env = {"env_vars": dict(spec.ray.env_vars)}
    target = resolve_address(spec, address)
    if target:
        ray.init(address=target, runtime_env=runtime_env, logging_level=logging.WARNING, log_to_driver=log_to_driver)
    else:
        ray.init(
            # "local": always start a new cluster, even when a stale /tmp/ray/ray_current_cluster
            # (left by a killed `ray start`) would make a plain init try to join a dead one
            address="local",
            num_cpus=spec.ray.num_cpus,
            include_dashboard=False,
            runtime_env=runtime_env,
            logging_level=logging.WARNING,
            log_to_driver=log_to_driver,
        )
    reaper = None if target else start_reaper()
    try:
        yield
    finally:
        ray.shutdown()
        if reaper is not None:
            stop_reaper(reaper)


def start_reaper() -> subprocess.Popen:
    """The watcher that ends this process's embedded cluster if it dies without shutting it down
    (``aigc_ray.reaper``): it holds the read end of a pipe that closes when this process ends."""
    return subprocess.Popen(
        [sys.executable, "-m", "aigc_ray.reaper", str(os.getpid())],
        stdin=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,  # a Ctrl-C to the command's process group must not stop it
    )


def stop_reaper(reaper: subprocess.Popen) -> None:
    """After a clean shutdown: close the pipe (the reaper ends whatever Ray left) and wait for it."""
    reaper.stdin.close()
    try:
        reaper.wait(timeout=10)
    except subprocess.TimeoutExpired:
        reaper.kill()


def worker_device():
    """The torch device for this Ray task, actor or trial: its GPU when Ray assigned it one (Ray
    sets CUDA_VISIBLE_DEVICES to it, so it is ``cuda:0`` here), else the CPU."""
    import ray
    import torch

    on_gpu = ray.is_initialized() and bool(ray.get_gpu_ids()) and torch.cuda.is_available()
    return torch.device("cuda", 0) if on_gpu else torch.device("cpu")


def cpus_per_train_worker(num_workers: int, total_cpus: float, data_cpus: float) -> float:
    """CPUs each Train worker asks for, leaving ``data_cpus`` free for Ray Data's tasks.

    On 2 cores, two 1-CPU workers take every CPU and the read tasks never run (seen: a
    TorchTrainer stalled at 0 rows). Workers get an equal share of what remains, at most 1 CPU,
    at least 0.1 (they oversubscribe a little rather than fail to schedule).
    """
    if num_workers < 1:
        raise ValueError(f"num_workers must be >= 1, got {num_workers}")
    share = (total_cpus - data_cpus) / num_workers
    return round(min(1.0, max(0.1, share)), 3)


# Ray Train v2 reads these in the driver when fit() starts and passes them on to its controller
# and workers. Each is a default: a value the user exported wins.
TRAIN_DRIVER_ENV = {
    # Ray Train sends each worker's print() to its logger as well as to stdout, so every line a
    # worker printed reached the stage's log twice.
    "RAY_TRAIN_ENABLE_PRINT_PATCH": "0",
    # How often the controller polls its workers (Ray's default: 2 s). A run whose workers had
    # finished waited for the next poll before fit() returned: 3.4-4.7 s from the last step to
    # fit()'s return at 2 s, 1.2 s at 0.5 s, 1.0-1.1 s at 0.25 s (the quickstart's pretraining,
    # 2026-12-06). A poll a busy worker misses is no failure (that takes
    # RAY_TRAIN_WORKER_HEALTH_CHECK_TIMEOUT_S, 10 min), so a short interval costs only the polls.
    "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.5",
}


def set_train_driver_env() -> None:
    """``TRAIN_DRIVER_ENV`` into this process's environment where the user has not set them."""
    for name, value in TRAIN_DRIVER_ENV.items():
        os.environ.setdefault(name, value)
