"""Driver for the multi-node test, run as its own process (it owns a 2-node Ray cluster).

Starts a head and a second node with Ray's own test-cluster utility (two raylets on this
machine), pretrains with one worker pinned to each node, removes the second node once the
first checkpoint is committed, and lets elastic Ray Train finish on the surviving node from
that checkpoint. Prints one JSON line (prefix ``RESULT``) for the test to read.

Usage: python tests/multinode_driver.py STORAGE_ROOT RUN_NAME TEMP_DIR
(TEMP_DIR: a short, empty folder; the test kills the processes naming it if this driver hangs.)
"""

from __future__ import annotations

import json
import logging
import os
import sys
import threading
import time


def committed_checkpoints(storage, ckpt_root: str) -> int:
    snapshots = [f for f in storage.list_files(ckpt_root) if f.endswith("checkpoint_manager_snapshot.json")]
    return sum(len(storage.read_json(f)["checkpoint_results"]) for f in snapshots)


def main(root: str, name: str, temp_dir: str) -> None:
    import ray
    from ray.cluster_utils import Cluster
    from ray.util.state import list_actors

    from aigc_ray.layout import pretrain_dir
    from aigc_ray.spec import load_spec
    from aigc_ray.storage import Storage, join
    from aigc_ray.train.pretrain import pretrain

    os.environ.pop("RAY_ADDRESS", None)
    # One train_slot per node pins one worker to each. The head has a whole CPU left over for
    # Ray Data's read tasks (they ask for 1 CPU; half-CPUs spread over two nodes never fit one).
    slot = {"train_slot": 1}
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 2, "resources": slot, "temp_dir": temp_dir})
    second = cluster.add_node(num_cpus=1, resources=slot)
    cluster.wait_for_nodes()
    env = {"OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false", "RAY_ADDRESS": cluster.address}
    ray.init(
        address=cluster.address,
        runtime_env={"env_vars": env},  # RAY_ADDRESS: Train's helper actors must not pick another cluster here
        logging_level=logging.WARNING,
    )
    spec = load_spec(
        None,
        [
            f"storage.root={root}",
            f"name={name}",
            "data.rows_per_shard=300",
            "pretrain.max_steps=30",
            "pretrain.checkpoint_every=10",
            "pretrain.log_every=5",
            "pretrain.eval_batches=4",
            "pretrain.lr=0.003",
            "pretrain.warmup_steps=2",
            "pretrain.num_workers=2",
            "pretrain.min_workers=1",
            "pretrain.max_failures=2",
            "pretrain.cpus_per_worker=0.5",
            "pretrain.worker_resources={train_slot: 1}",  # one worker per node
        ],
    )
    storage = Storage.from_spec(spec.storage)
    nodes_seen: set[str] = set()
    removed: list[float] = []

    def remove_second_node_after_first_checkpoint() -> None:
        deadline = time.time() + 400
        while time.time() < deadline:
            for actor in list_actors(filters=[("state", "=", "ALIVE")]):
                if "RayTrainWorker" in (actor.class_name or ""):
                    nodes_seen.add(actor.node_id)
            if committed_checkpoints(storage, join(pretrain_dir(spec), "ray")) >= 1:
                cluster.remove_node(second, allow_graceful=False)
                removed.append(time.time())
                return
            time.sleep(0.2)

    watcher = threading.Thread(target=remove_second_node_after_first_checkpoint, daemon=True)
    watcher.start()
    try:
        result = pretrain(spec, storage, log=lambda *_: None)
        watcher.join(timeout=5)
        history = [
            json.loads(line)
            for line in storage.read_bytes(join(result.export_uri, "history.jsonl")).decode().splitlines()
        ]
        print(
            "RESULT "
            + json.dumps(
                {
                    "removed": bool(removed),
                    "train_nodes": sorted(nodes_seen),
                    "second_node": second.node_id,
                    "alive_nodes": sum(1 for n in ray.nodes() if n["Alive"]),
                    "resumes": result.eval["resumes"],
                    "steps": [h["step"] for h in history],
                    "losses": [h["loss"] for h in history],
                    "export_uri": result.export_uri,
                }
            ),
            flush=True,
        )
    finally:
        ray.shutdown()
        cluster.shutdown()


if __name__ == "__main__":
    main(*sys.argv[1:4])
