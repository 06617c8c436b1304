"""Multi-node: a 2-node Ray cluster on this machine (Ray's own test-cluster utility: a head and a
second raylet), pretraining with a worker on each node, the second node removed mid-run, elastic
Ray Train going on on the survivor from the last checkpoint, and growing back to two workers when
a node joins again."""

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
# Long enough that Train, after shrinking, still has minutes to notice a returned node and grow
# back under a loaded CI machine (150 steps once left it about a minute, and it did not).
STEPS = 300


def test_pretraining_survives_losing_a_node_and_grows_back_when_one_joins(local_data):
    base, _ = local_data
    # Its own cluster, so its own process: Ray allows one cluster connection per process.
    temp_dir = tempfile.mkdtemp(prefix="mn-", dir="/tmp")  # short: Ray's socket paths live under it
    try:
        proc = subprocess.run(
            [sys.executable, str(DRIVER), base.storage.root, "multinode", temp_dir, str(STEPS)],
            capture_output=True,
            text=True,
            timeout=780,
        )
    finally:
        kill_cluster(temp_dir)  # whatever the driver left behind if it failed
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    assert proc.returncode == 0 and lines, proc.stdout[-3000:] + proc.stderr[-3000:]
    got = json.loads(lines[-1].removeprefix("RESULT "))

    # One worker ran on each node (one train_slot per node), then the second node went away, then
    # a third node joined and Train grew back onto it.
    assert got["removed"] and got["second_node"] in got["train_nodes"], got
    assert got["added_node"] in got["train_nodes"] and len(got["train_nodes"]) == 3, got
    assert got["alive_nodes"] == 2
    # Train restarted on the one node left from a committed checkpoint (every 10 steps; which one
    # depends on how soon the node's death was noticed), then on two again from a later one, with
    # the same global batch.
    shrink, grow = got["resumes"]
    assert shrink["from_world_size"] == 2 and shrink["world_size"] == 1
    assert shrink["at_step"] >= 10 and shrink["at_step"] % 10 == 0, shrink
    assert grow["from_world_size"] == 1 and grow["world_size"] == 2 and shrink["at_step"] < grow["at_step"] < STEPS
    assert got["steps"] == list(range(1, STEPS + 1))
    losses = got["losses"]
    for at in (shrink["at_step"], grow["at_step"]):  # continued, not started over
        assert abs(losses[at] - losses[at - 1]) < 0.3, (at, losses)
    assert losses[0] - losses[-1] > 0.3
