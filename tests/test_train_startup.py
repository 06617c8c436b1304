"""What the training loop does before its first step."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap


def test_cpu_training_compiles_no_deepspeed_op_and_its_collectives_work(tmp_path):
    """DeepSpeed's CPU backend JIT-compiles a shared-memory all-reduce (35-40 s of g++ on 2 cores,
    on every fresh node) that training never calls: the loop's init leaves it unbuilt, and the
    collectives training uses still work. In a child process: a process group is global state."""
    extensions = tmp_path / "torch_extensions"
    script = textwrap.dedent(
        """
        import torch, torch.distributed as dist
        dist.init_process_group("gloo", init_method="tcp://127.0.0.1:0", rank=0, world_size=1)
        from aigc_ray.train.loop import init_distributed
        init_distributed(use_gpu=False)
        import importlib
        import deepspeed.comm as ds_comm
        assert importlib.import_module("deepspeed.comm.comm").cdb.shm_comm_op is None
        t = torch.ones(3)
        ds_comm.all_reduce(t)
        ds_comm.inference_all_reduce(t)  # the one caller of the op falls back to torch's
        assert t.tolist() == [1.0, 1.0, 1.0], t
        # DeepSpeed left as found
        assert importlib.import_module("deepspeed.comm.torch").build_shm_op.__name__ == "build_shm_op"
        print("ok")
        """
    )
    env = {"TORCH_EXTENSIONS_DIR": str(extensions), "DS_ACCELERATOR": "cpu", "PATH": "/usr/bin:/bin"}
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and done.stdout.strip().endswith("ok"), done.stderr[-3000:]
    assert not extensions.exists() or not any(extensions.rglob("*.so")), list(extensions.rglob("*"))


COORDINATOR = ("AutoscalingCoordinator", "AutoscalingCoordinator")  # Ray's name and namespace for it


def _coordinator_alive(ray) -> bool:
    try:
        ray.get_actor(COORDINATOR[0], namespace=COORDINATOR[1])
        return True
    except ValueError:
        return False


def test_a_training_stage_asks_for_rays_autoscaling_coordinator_before_it_opens_its_run(ray_local):
    """Ray Train's controller waits on the cluster's autoscaling coordinator (one detached actor
    per cluster); a stage asks for it first thing, so its process starts while the driver opens
    its MLflow run. Checked on a cluster where it was ended first: the call brings it back, the
    one Ray Train finds (same name and namespace), and it answers."""
    import time

    import ray

    from aigc_ray.train.pretrain import start_train_coordinator

    if _coordinator_alive(ray):  # an earlier test's training made it
        ray.kill(ray.get_actor(COORDINATOR[0], namespace=COORDINATOR[1]), no_restart=True)
        deadline = time.monotonic() + 60
        while _coordinator_alive(ray):
            assert time.monotonic() < deadline, "the killed coordinator kept its name"
            time.sleep(0.2)
    start_train_coordinator()
    handle = ray.get_actor(COORDINATOR[0], namespace=COORDINATOR[1])
    ray.get(handle.__ray_ready__.remote(), timeout=60)


def test_asking_for_the_coordinator_without_ray_starts_no_ray():
    """Outside a Ray session (torchrun, a notebook before ray.init) the call does nothing: Ray's
    own function would have started a local Ray to create the actor in."""
    script = (
        "from aigc_ray.train.pretrain import start_train_coordinator\n"
        "import ray\n"
        "start_train_coordinator()\n"
        "print('ray started' if ray.is_initialized() else 'no ray')\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stdout.strip() == "no ray", done.stderr[-3000:]


def test_a_training_run_polls_its_workers_often_and_keeps_a_value_the_user_exported(ray_local, monkeypatch, tmp_path):
    """Ray Train's controller polls its workers every 2 s by default, so a finished run waited up
    to 2 s more for fit() to return; a stage's fit() sets a shorter interval, which Ray Train
    carries from the driver to its controller and workers. A value the user exported wins."""
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from aigc_ray.runtime import TRAIN_DRIVER_ENV
    from aigc_ray.spec import load_spec
    from aigc_ray.storage import Storage
    from aigc_ray.train.pretrain import fit_and_tidy

    def write_train_env(config) -> None:  # defined here: the workers cannot import a test module
        import json
        import os

        with open(config["out"], "w") as f:
            json.dump({name: os.environ.get(name, "unset") for name in config["names"]}, f)

    names = sorted(TRAIN_DRIVER_ENV)
    for name in names:
        monkeypatch.delenv(name, raising=False)  # restored after the test, like any the run sets
    monkeypatch.setenv("RAY_TRAIN_ENABLE_PRINT_PATCH", "1")
    trainer = TorchTrainer(
        write_train_env,
        train_loop_config={"names": names, "out": str(tmp_path / "env.json")},
        scaling_config=ScalingConfig(num_workers=1, resources_per_worker={"CPU": 0.5}),
        run_config=RunConfig(name="env", storage_path=str(tmp_path / "ray")),
    )
    storage = Storage.from_spec(load_spec(None, [f"storage.root={tmp_path}"]).storage)
    fit_and_tidy(trainer, storage, str(tmp_path / "ray" / "env"), log=lambda *_: None)
    seen = json.loads((tmp_path / "env.json").read_text())  # in the worker
    assert seen == {"RAY_TRAIN_ENABLE_PRINT_PATCH": "1", "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.5"}
