"""Multi-node: a 2-node Ray cluster on this machine (Ray's own test-cluster utility: a head and a
second raylet), pretraining with a worker on each node, the second node removed mid-run, and
elastic Ray Train finishing on the survivor from the last checkpoint."""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from conftest import kill_cluster

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]

DRIVER = Path(__file__).with_name("multinode_driver.py")


def test_pretraining_survives_losing_a_node(local_data):
    base, _ = local_data
    # Its own cluster, so its own process: Ray allows one cluster connection per process.
    temp_dir = tempfile.mkdtemp(prefix="mn-", dir="/tmp")  # short: Ray's socket paths live under it
    try:
        proc = subprocess.run(
            [sys.executable, str(DRIVER), base.storage.root, "multinode", temp_dir],
            capture_output=True,
            text=True,
            timeout=780,
        )
    finally:
        kill_cluster(temp_dir)  # whatever the driver left behind if it failed
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    assert proc.returncode == 0 and lines, proc.stdout[-3000:] + proc.stderr[-3000:]
    got = json.loads(lines[-1].removeprefix("RESULT "))

    # One worker ran on each node (one train_slot per node), then the second node went away.
    assert got["removed"] and got["second_node"] in got["train_nodes"] and len(got["train_nodes"]) == 2
    assert got["alive_nodes"] == 1
    # Train restarted on the one node left, from a checkpoint (the first one, unless the node's death
    # was noticed after the second), with the same global batch.
    (resume,) = got["resumes"]
    assert resume["from_world_size"] == 2 and resume["world_size"] == 1 and resume["at_step"] in (10, 20)
    assert got["steps"] == list(range(1, 31))
    losses, at = got["losses"], resume["at_step"]
    assert abs(losses[at] - losses[at - 1]) < 0.3 < losses[0] - losses[-1]  # continued, not started over
