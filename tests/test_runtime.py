"""The embedded Ray a command starts belongs to that command: killed with SIGKILL mid-run, the
driver takes its cluster with it (GCS, raylet, dashboard and runtime-env agents, workers)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import textwrap
import time

import psutil
import pytest

DRIVER = textwrap.dedent(
    """
    import sys, time
    import ray
    from aigc_ray.runtime import ray_session
    from aigc_ray.spec import load_spec

    with ray_session(load_spec(None, [])):
        ray.get([ray.remote(lambda: 1).remote() for _ in range(2)])  # workers and the env agent in use
        print("ready", flush=True)
        time.sleep(600)
    """
)


def _alive(procs: list[psutil.Process]) -> list[str]:
    out = []
    for p in procs:
        try:
            if p.status() != psutil.STATUS_ZOMBIE:
                out.append(f"{p.pid} {' '.join(p.cmdline())[:120]}")
        except psutil.NoSuchProcess:
            pass
    return out


@pytest.mark.slow
def test_killing_the_driver_ends_its_embedded_ray_cluster():
    # its own session folder, apart from other tests' Ray (short: Ray's socket paths are <= 107 bytes)
    with tempfile.TemporaryDirectory(prefix="aigc-rt-", dir="/tmp") as tmp:
        _kill_and_watch({**os.environ, "RAY_TMPDIR": tmp})


def _kill_and_watch(env: dict) -> None:
    driver = subprocess.Popen(
        [sys.executable, "-c", DRIVER], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env
    )
    try:
        assert driver.stdout.readline().strip() == "ready", driver.stderr.read()[-2000:]
        cluster = psutil.Process(driver.pid).children(recursive=True)
        titles = " ".join(" ".join(p.cmdline()) for p in cluster)
        assert "gcs_server" in titles and "raylet" in titles, titles  # the processes we expect to end
    finally:
        os.kill(driver.pid, signal.SIGKILL)
        driver.wait()
    deadline = time.monotonic() + 20  # the report: agents left orphaned for 25 s or more
    while _alive(cluster) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not _alive(cluster), "still running after the driver was killed:\n" + "\n".join(_alive(cluster))


RAYLET = textwrap.dedent(
    """
    import os, subprocess, sys, time
    # a stand-in raylet (its command line names ray): starts a worker when the file appears
    while not os.path.exists(sys.argv[1]):
        time.sleep(0.01)
    worker = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)  # ray worker"])
    open(sys.argv[1] + ".pid", "w").write(str(worker.pid))
    time.sleep(120)
    """
)


def test_the_reaper_ends_a_worker_started_just_before_the_driver_died(tmp_path):
    """The reaper looks below the driver once a second; a worker the raylet starts in between
    (the one that outlived a killed driver in CI) is found below the processes it knows."""
    import threading

    from aigc_ray.reaper import watch

    go = tmp_path / "go"
    # a stand-in driver holding the stand-in raylet: never this pytest process, whose Ray
    # descendants (the session's cluster, other tests') the reaper would end with them
    spawn = "import subprocess, sys, time; subprocess.Popen(sys.argv[1:]); time.sleep(120)"
    driver = subprocess.Popen([sys.executable, "-c", spawn, sys.executable, "-c", RAYLET + "# ray", str(go)])
    deadline = time.monotonic() + 20
    while not psutil.Process(driver.pid).children():
        assert time.monotonic() < deadline, "the stand-in driver started no raylet"
        time.sleep(0.01)
    (raylet,) = psutil.Process(driver.pid).children()
    read_end, write_end = os.pipe()
    pipe = os.fdopen(read_end, "r")
    watcher = threading.Thread(target=watch, args=(driver.pid, pipe))
    watcher.start()
    try:
        time.sleep(1.5)  # the reaper has seen the raylet
        go.touch()
        deadline = time.monotonic() + 20
        while not (tmp_path / "go.pid").exists() or not (tmp_path / "go.pid").read_text():
            assert time.monotonic() < deadline, "the stand-in raylet started no worker"
            time.sleep(0.01)
        worker = psutil.Process(int((tmp_path / "go.pid").read_text()))
        os.close(write_end)  # the driver is gone, right after the worker started
        watcher.join(timeout=30)
        assert not watcher.is_alive()
        assert not _alive([raylet]) and not _alive([worker]), "the worker started since the last look outlived it"
    finally:
        driver.kill()
        driver.wait()
        for p in (raylet,):
            try:
                p.kill()
            except psutil.NoSuchProcess:
                pass
        if (tmp_path / "go.pid").exists() and (tmp_path / "go.pid").read_text():
            try:
                psutil.Process(int((tmp_path / "go.pid").read_text())).kill()
            except psutil.NoSuchProcess:
                pass
