"""The AWS cluster-launcher config (``ray up cluster.yaml``) from ``spec.cluster``.

Contract: ``cluster_config(spec) -> dict`` is a pure function of the spec (no I/O, no clock) whose
result validates against Ray's own ``ray/autoscaler/ray-schema.json``, and which:

- starts a CPU head (``head_instance_type``) that runs no tasks (``--num-cpus=0``), and CPU and GPU
  **spot** worker types that scale from 0 to ``cpu_workers_max`` / ``max_gpu_workers``;
- gives every node an IAM instance profile for S3 (``IamInstanceProfile.Arn``): no access keys;
- binds the dashboard / jobs API to 127.0.0.1 on the head and opens no port for it: users reach
  it through the SSH tunnel of ``ray dashboard cluster.yaml``;
- turns Ray's token auth on (``RAY_AUTH_MODE=token``) with the token of the user who runs
  ``ray up`` (``~/.ray/auth_token``, synced to every node): a plain ``ray start`` in 2.60 only
  enables it when a token already exists on the node;
- syncs the project (the directory ``ray up`` runs in: the repo root) to ``~/aigc-ray`` on every
  node and installs it there, so ``python jobs/<stage>.py -c SPEC`` runs on the cluster.
"""

from __future__ import annotations

from ..spec import ExperimentSpec

HEAD_TYPE = "ray.head.cpu"
CPU_WORKER_TYPE = "ray.worker.cpu"
GPU_WORKER_TYPE = "ray.worker.gpu"
REMOTE_PROJECT = "~/aigc-ray"
TOKEN_FILE = "~/.ray/auth_token"
# Token auth for every `ray start`; Ray reads the token from its default path, TOKEN_FILE, which
# file_mounts fills on every node: the same token everywhere, none in this file.
AUTH_ENV = "RAY_AUTH_MODE=token"


def _node_config(instance_type: str, profile_arn: str, spot: bool, disk_gb: int) -> dict:
    config: dict = {
        "InstanceType": instance_type,
        "IamInstanceProfile": {"Arn": profile_arn},
        # The images are large (the GPU one ~10 GB) and checkpoints spill to local disk first.
        "BlockDeviceMappings": [{"DeviceName": "/dev/sda1", "Ebs": {"VolumeSize": disk_gb, "VolumeType": "gp3"}}],
    }
    if spot:
        config["InstanceMarketOptions"] = {"MarketType": "spot"}
    return config


def cluster_config(spec: ExperimentSpec) -> dict:
    """The cluster-launcher config for ``spec.cluster`` (see the module docstring for the contract)."""
    c = spec.cluster
    head_profile = c.head_instance_profile_arn or c.s3_instance_profile_arn
    return {
        "cluster_name": c.name,
        "max_workers": c.cpu_workers_max + c.max_gpu_workers,
        "upscaling_speed": 1.0,
        "idle_timeout_minutes": 5,
        "docker": {
            "head_image": c.ray_image,
            "worker_image": c.gpu_image,
            "container_name": "ray_container",
            "pull_before_run": True,
            "run_options": ["--ulimit nofile=65536:65536"],
        },
        # Ray creates the security group itself: SSH in, all traffic between the cluster's nodes.
        # Nothing here adds a rule for 8265 (dashboard) or 10001 (client): both stay private.
        "provider": {"type": "aws", "region": c.region, "cache_stopped_nodes": False},
        "auth": {"ssh_user": "ubuntu"},
        "available_node_types": {
            HEAD_TYPE: {
                # CPU 0: the head runs GCS, the dashboard, the autoscaler and the job drivers; a task
                # that exhausts its memory would take the whole cluster down with it.
                "resources": {"CPU": 0},
                "node_config": _node_config(c.head_instance_type, head_profile, spot=False, disk_gb=256),
            },
            CPU_WORKER_TYPE: {
                "min_workers": 0,
                "max_workers": c.cpu_workers_max,
                "resources": {},  # CPU and memory: detected from the instance type at `ray up`
                "node_config": _node_config(c.cpu_instance_type, c.s3_instance_profile_arn, spot=True, disk_gb=256),
                "docker": {"worker_image": c.ray_image},
            },
            GPU_WORKER_TYPE: {
                "min_workers": 0,
                "max_workers": c.max_gpu_workers,
                "resources": {"GPU": c.gpus_per_worker},
                "node_config": _node_config(c.gpu_instance_type, c.s3_instance_profile_arn, spot=True, disk_gb=512),
            },
        },
        "head_node_type": HEAD_TYPE,
        "file_mounts": {REMOTE_PROJECT: ".", TOKEN_FILE: TOKEN_FILE},
        "cluster_synced_files": [],
        "file_mounts_sync_continuously": False,
        # Never ship the local venv, artifacts or caches: .gitignore already lists them.
        "rsync_exclude": [".git", ".venv", "runs", "**/__pycache__"],
        "rsync_filter": [".gitignore"],
        "initialization_commands": [],
        "setup_commands": [f"pip install --no-cache-dir -e {REMOTE_PROJECT}"],
        "head_setup_commands": [],
        "worker_setup_commands": [],
        "head_start_ray_commands": [
            "ray stop",
            f"ulimit -n 65536; {AUTH_ENV} ray start --head --num-cpus=0 --port=6379 --object-manager-port=8076 "
            "--autoscaling-config=~/ray_bootstrap_config.yaml --dashboard-host=127.0.0.1",
        ],
        "worker_start_ray_commands": [
            "ray stop",
            f"ulimit -n 65536; {AUTH_ENV} ray start --address=$RAY_HEAD_IP:6379 --object-manager-port=8076",
        ],
    }


HEADER = """\
# AWS cluster launcher: `ray up cluster.yaml` (from the repository root: the project is synced from `.`).
# Needs a Ray token first: `ray get-auth-token --generate` (it is copied to every node; Ray's token
# auth guards the dashboard and the jobs API). The dashboard listens on 127.0.0.1 only and no port
# is opened for it: reach it with `ray dashboard cluster.yaml` (an SSH tunnel to localhost:8265).
# S3 comes from the nodes' IAM instance profile: no access keys here or on the nodes.
"""
