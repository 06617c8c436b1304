"""Ends an embedded Ray cluster when the command that started it dies, even by SIGKILL.

A killed driver cannot shut its cluster down, and Ray's raylet, GCS and workers notice on their
own, but its dashboard and runtime-env agents stay orphaned for half a minute or more. So
``runtime.ray_session`` starts this watcher beside an embedded cluster: it reads a pipe from the
driver (end of file = the driver is gone, however it ended), keeps a list of the driver's Ray
descendants (refreshed every second, since the raylet starts processes as it goes), and once the
pipe closes it terminates those that are still running. Run as ``python -m aigc_ray.reaper PID``,
in its own session, so the signal that stops the driver's process group does not stop it too.
"""

from __future__ import annotations

import os
import select
import sys
import time

import psutil

GRACE_S = 3.0  # between SIGTERM and SIGKILL


def ray_descendants(pid: int) -> dict[tuple[int, float], psutil.Process]:
    """The Ray processes below ``pid``, keyed as ``below`` keys them."""
    try:
        driver = psutil.Process(pid)
    except psutil.NoSuchProcess:
        return {}
    out = {}
    for key, p in below([driver]).items():
        try:
            if p.pid != os.getpid() and "ray" in " ".join(p.cmdline()):
                out[key] = p
        except psutil.Error:
            pass
    return out


def end(processes: list[psutil.Process]) -> None:
    for p in processes:
        try:
            p.terminate()
        except psutil.Error:
            pass
    _, alive = psutil.wait_procs(processes, timeout=GRACE_S)
    for p in alive:
        try:
            p.kill()
        except psutil.Error:
            pass


def below(processes: list[psutil.Process]) -> dict[tuple[int, float], psutil.Process]:
    """Every process below ``processes``, keyed by (pid, start time) so a reused pid is never hit."""
    out = {}
    for parent in processes:
        try:
            children = parent.children(recursive=True)
        except psutil.Error:
            continue
        for p in children:
            try:
                out[(p.pid, p.create_time())] = p
            except psutil.Error:
                pass
    return out


def watch(driver_pid: int, pipe=sys.stdin) -> None:
    known: dict[tuple[int, float], psutil.Process] = {}
    while True:
        known.update(ray_descendants(driver_pid))
        ready, _, _ = select.select([pipe], [], [], 1.0)
        if ready and not pipe.buffer.read1(4096):  # end of file: the driver has gone
            break
    # A worker the raylet started since the last look is no longer below the driver (its parents
    # were re-parented when it died) but still below the raylet: look below what we know, now,
    # before the raylet exits and its children are re-parented too.
    known.update(below([p for p in known.values() if p.is_running()]))
    time.sleep(0.5)  # let processes that exit on their own go first
    end([p for p in known.values() if p.is_running()])


if __name__ == "__main__":
    watch(int(sys.argv[1]))
