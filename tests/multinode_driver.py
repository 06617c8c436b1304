"""Driver for the multi-node test, run as its own process (it owns a 2-node Ray cluster).

Starts a head and a second node with Ray's own test-cluster utility (two raylets on this
machine), pretrains with one worker pinned to each node, removes the second node once the
first checkpoint is committed, lets elastic Ray Train go on on the surviving node from that
checkpoint, then adds a third node and lets Train grow back to two workers (again from the
last checkpoint). Prints one JSON line (prefix ``RESULT``) for the test to read.

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
import traceback


def committed_checkpoints(storage, ckpt_root: str) -> int:
    snapshots = [f for f in storage.list_files(ckpt_root) if f.endswith("checkpoint_manager_snapshot.json")]
    return sum(len(storage.read_json(f)["checkpoint_results"]) for f in snapshots)


def latest_committed_step(storage, ckpt_root: str) -> int:
    """The training step of the newest committed checkpoint (0 before the first)."""
    snapshots = [f for f in storage.list_files(ckpt_root) if f.endswith("checkpoint_manager_snapshot.json")]
    steps = [r["metrics"]["step"] for f in snapshots for r in storage.read_json(f)["checkpoint_results"]]
    return max(steps, default=0)


def main(root: str, name: str, temp_dir: str, steps: str = "150") -> None:
    # Ray's test cluster records its address in <RAY_TMPDIR>/ray: keep it inside our own folder
    # (the default, /tmp/ray, may not exist, and other clusters on the machine read it).
    os.environ["RAY_TMPDIR"] = temp_dir
    os.makedirs(os.path.join(temp_dir, "ray"), exist_ok=True)
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
            f"pretrain.max_steps={steps}",  # long enough to shrink and grow back
            "pretrain.checkpoint_every=10",
            "pretrain.log_every=5",
            "pretrain.eval_batches=4",
            "pretrain.lr=0.003",
            "pretrain.warmup_steps=2",
            "pretrain.num_workers=2",
            "pretrain.min_workers=1",
            "pretrain.max_failures=2",
            "pretrain.grow_check_s=2",  # check for returned nodes every 2 s (default 60)
            "pretrain.cpus_per_worker=0.5",
            "pretrain.worker_resources={train_slot: 1}",  # one worker per node
        ],
    )
    storage = Storage.from_spec(spec.storage)
    nodes_seen: set[str] = set()
    removed: list[float] = []
    added: list[str] = []
    first_group: set[str] = set()
    alone_since: dict[str, int] = {}

    def train_workers() -> list:
        return [a for a in list_actors(filters=[("state", "=", "ALIVE")]) if "RayTrainWorker" in (a.class_name or "")]

    def remove_a_node_then_add_one(trainer: threading.Thread) -> None:
        try:
            _remove_a_node_then_add_one(trainer)
        except Exception:  # the test reads stderr when the result falls short
            traceback.print_exc()

    def _remove_a_node_then_add_one(trainer: threading.Thread) -> None:
        deadline = time.time() + 600
        last = None
        while time.time() < deadline and not added and trainer.is_alive():
            workers = train_workers()
            nodes_seen.update(a.node_id for a in workers)
            now = sorted((a.actor_id[:8], a.node_id[:8]) for a in workers)
            if now != last:  # for the test's failure message
                print(f"{time.time():.1f} train workers (actor, node): {now}", file=sys.stderr, flush=True)
                last = now
            if not removed and committed_checkpoints(storage, join(pretrain_dir(spec), "ray")) >= 1:
                first_group.update(a.actor_id for a in workers)
                cluster.remove_node(second, allow_graceful=False)
                removed.append(time.time())
            elif (
                removed
                and len(survivors := [a for a in workers if a.node_id != second.node_id]) == 1
                and (survivors[0].actor_id not in first_group)
            ):
                # Train restarted on the survivor alone (a new worker group). Once that group has
                # committed a checkpoint of its own (so its resume is on record), a node returns.
                # The removed node's worker is left out: the state API may list it as alive until
                # Ray's health checks declare its node dead (~15 s), by when a run whose controller
                # polls every 0.5 s could have trained to its end on the survivor (seen once in CI).
                step = latest_committed_step(storage, join(pretrain_dir(spec), "ray"))
                alone_since.setdefault("step", step)
                if step > alone_since["step"]:
                    added.append(cluster.add_node(num_cpus=1, resources=slot).node_id)
            time.sleep(0.2)
        while time.time() < deadline and trainer.is_alive() and len(train_workers()) < 2:  # until Train grew back
            time.sleep(0.2)
        nodes_seen.update(a.node_id for a in train_workers())

    # Ray's test cluster adds nodes from the main thread only (it installs signal handlers), so
    # training runs in a thread and the main thread removes and adds nodes.
    outcome: dict = {}

    def train() -> None:
        try:
            outcome["result"] = pretrain(spec, storage, log=lambda *_: None)
        except BaseException as exc:  # re-raised in the main thread
            outcome["error"] = exc

    trainer = threading.Thread(target=train, daemon=True)
    trainer.start()
    try:
        remove_a_node_then_add_one(trainer)
        trainer.join()
        if "error" in outcome:
            raise outcome["error"]
        result = outcome["result"]
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
                    "added_node": added[0] if added else None,
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
    main(*sys.argv[1:5])
