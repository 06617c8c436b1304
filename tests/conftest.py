"""Session fixtures that start real parts: an S3 server on loopback (moto's server mode, with
IAM auth enforced so wrong credentials are really refused) and one local Ray cluster.

Ray is started once per session (each start costs seconds on 2 cores) in a private temp dir,
and stopped by its own handle — never `ray stop`, which kills every Ray process on the machine.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import psutil
import pytest

from aigc_ray.data.build import build_data
from aigc_ray.spec import load_spec
from aigc_ray.storage import Storage

# Every run the tests start is tracked (tracking is on by default) into a store of the session's
# own, never into ./runs/mlflow.db of the checkout; `aigc` subprocesses inherit it. Tests that
# read the store back name a store of their own (tracking.mlflow_uri).
_MLFLOW_DIR = tempfile.mkdtemp(prefix="aigc-mlflow-")
os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{_MLFLOW_DIR}/mlflow.db"
os.environ["MLFLOW_DISABLE_TELEMETRY"] = "true"

# IAM policy for the test user: allowed everything in the fake account.
_ALLOW_ALL = '{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":"*","Resource":"*"}]}'


# GAN and fusion sweeps small enough for a test: 2 trials of 2 short iterations each.
TINY_SWEEPS = [
    "gan.width=8",
    "gan.eval_samples=64",
    "gan.sweep.num_samples=1",  # x the quickstart's 2-generator grid
    "gan.sweep.max_iterations=2",
    "gan.sweep.steps_per_iteration=5",
    "fusion.dim=16",
    "fusion.sweep.num_samples=2",
    "fusion.sweep.max_iterations=2",
    "fusion.sweep.steps_per_iteration=10",
    "video.clips=64",
    "video.width=4",
    "video.z_dim=8",
    "video.batch_size=8",
    "video.eval_samples=16",
    "video.sweep.num_samples=2",
    "video.sweep.max_iterations=2",
    "video.sweep.steps_per_iteration=3",
]


# A whole pipeline small enough for a test: a few steps of each language model, the tiny sweeps.
TINY_RUN = [
    "pretrain.model.preset=tiny",
    "pretrain.max_steps=6",
    "pretrain.checkpoint_every=6",
    "pretrain.log_every=6",
    "finetune.max_steps=6",
    "finetune.checkpoint_every=6",
    *TINY_SWEEPS,
    "serve.cpus_per_replica=0.2",
]


# Fixtures that start a Ray cluster (directly or through another fixture). A test that uses one
# is slow whether or not it says so: ``make test-fast`` (-m "not slow") must never start Ray.
RAY_FIXTURES = {"ray_local", "served", "cluster", "built"}


def pytest_collection_modifyitems(config, items):
    for item in items:
        if RAY_FIXTURES & set(getattr(item, "fixturenames", ())) and not item.get_closest_marker("slow"):
            item.add_marker(pytest.mark.slow)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cluster_pids(temp_dir: str) -> set[int]:
    """The processes of the cluster in ``temp_dir``: those whose command line names it, and their
    descendants (workers, agents, job drivers rename themselves `ray::...`)."""
    pids: set[int] = set()
    for proc in psutil.process_iter(["cmdline"]):
        if any(temp_dir in arg for arg in proc.info["cmdline"] or ()):
            pids.add(proc.pid)
            with contextlib.suppress(psutil.Error):
                pids.update(child.pid for child in proc.children(recursive=True))
    pids.discard(os.getpid())
    return pids


def kill_cluster(temp_dir: str) -> None:
    """Stop a cluster we started, by its processes (never `ray stop`: it kills every cluster here)."""
    for _ in range(3):  # again, in case a dying raylet started something
        procs = []
        for pid in cluster_pids(temp_dir):
            with contextlib.suppress(psutil.Error):
                procs.append(psutil.Process(pid))
        if not procs:
            break
        for p in procs:
            with contextlib.suppress(psutil.Error):
                p.send_signal(signal.SIGTERM)
        _, alive = psutil.wait_procs(procs, timeout=10)
        for p in alive:
            with contextlib.suppress(psutil.Error):
                p.kill()
        psutil.wait_procs(alive, timeout=5)
    shutil.rmtree(temp_dir, ignore_errors=True)


@dataclass
class S3Server:
    endpoint: str
    access_key: str
    secret_key: str
    region: str = "us-east-1"

    def client(self, **overrides):
        import boto3

        kwargs = {"aws_access_key_id": self.access_key, "aws_secret_access_key": self.secret_key, **overrides}
        return boto3.client("s3", endpoint_url=self.endpoint, region_name=self.region, **kwargs)

    def make_bucket(self, name: str) -> str:
        self.client().create_bucket(Bucket=name)
        return name


@pytest.fixture(scope="session")
def s3_server():
    """A moto S3 server subprocess on a free loopback port; credentials exported to the process env
    (the standard AWS chain), so the code under test and Ray workers find them as in production."""
    import boto3

    port = free_port()
    endpoint = f"http://127.0.0.1:{port}"
    # The first 3 requests (IAM setup below) are unauthenticated; every later one must be signed
    # with the created user's keys.
    env = dict(os.environ, INITIAL_NO_AUTH_ACTION_COUNT="3")
    proc = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.time() + 30
        while True:
            try:
                urllib.request.urlopen(f"{endpoint}/moto-api/", timeout=1)
                break
            except OSError:
                if time.time() > deadline or proc.poll() is not None:
                    raise RuntimeError("moto server did not start") from None
                time.sleep(0.1)
        iam = boto3.client(
            "iam",
            endpoint_url=endpoint,
            region_name="us-east-1",
            aws_access_key_id="setup",
            aws_secret_access_key="setup",
        )
        iam.create_user(UserName="aigc-test")
        iam.put_user_policy(UserName="aigc-test", PolicyName="all", PolicyDocument=_ALLOW_ALL)
        key = iam.create_access_key(UserName="aigc-test")["AccessKey"]
        server = S3Server(endpoint, key["AccessKeyId"], key["SecretAccessKey"])
        saved = {k: os.environ.get(k) for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION")}
        os.environ.update(
            AWS_ACCESS_KEY_ID=server.access_key,
            AWS_SECRET_ACCESS_KEY=server.secret_key,
            AWS_DEFAULT_REGION=server.region,
            AWS_EC2_METADATA_DISABLED="true",
        )
        yield server
        for k, v in saved.items():
            os.environ.pop(k, None) if v is None else os.environ.__setitem__(k, v)
    finally:
        proc.terminate()
        proc.wait(timeout=10)


@pytest.fixture(scope="session")
def ray_local(s3_server):
    """One local Ray cluster for the session (2 CPUs, threads pinned), started after the S3
    credentials are in the environment so its workers inherit them."""
    import ray

    os.environ.pop("RAY_ADDRESS", None)
    temp_dir = tempfile.mkdtemp(prefix="aigc-ray-", dir="/tmp")
    ray.init(
        num_cpus=2,
        include_dashboard=False,
        _temp_dir=temp_dir,
        runtime_env={"env_vars": {"OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}},
        logging_level=logging.WARNING,
    )
    from ray.data import DataContext

    DataContext.get_current().enable_progress_bars = False
    yield ray
    ray.shutdown()
    shutil.rmtree(temp_dir, ignore_errors=True)


@pytest.fixture(scope="session")
def local_data(tmp_path_factory):
    """The embedded dataset built once on local disk: (spec, storage)."""
    root = tmp_path_factory.mktemp("local-run")
    spec = load_spec(None, [f"storage.root={root}", "data.rows_per_shard=300"])
    storage = Storage.from_spec(spec.storage)
    build_data(spec, storage, log=lambda *_: None)
    return spec, storage


@pytest.fixture(scope="session")
def s3_data(s3_server):
    """The embedded dataset built once into the S3 server: (spec, storage)."""
    bucket = s3_server.make_bucket("aigc-shards")
    spec = load_spec(
        None,
        [
            f"storage.root=s3://{bucket}/quickstart",
            f"storage.endpoint_url={s3_server.endpoint}",
            "data.rows_per_shard=300",
        ],
    )
    storage = Storage.from_spec(spec.storage)
    build_data(spec, storage, log=lambda *_: None)
    return spec, storage


def tensorboard_scalars_in(folder: Path) -> dict[str, float]:
    """The scalars in a folder's TensorBoard event files, read from the records themselves."""
    import struct

    from tensorboardX.proto import event_pb2

    found = {}
    for events in folder.glob("events.out.tfevents.*"):
        data, i = events.read_bytes(), 0
        while i < len(data):  # TFRecord: length (8 bytes), its CRC (4), the record, its CRC (4)
            (n,) = struct.unpack("<Q", data[i : i + 8])
            for value in event_pb2.Event.FromString(data[i + 12 : i + 12 + n]).summary.value:
                found[value.tag] = value.simple_value
            i += 12 + n + 4
    return found
