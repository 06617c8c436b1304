"""Stages as Ray jobs, against a real cluster started with `ray start --head` and its jobs API.

The cluster runs with Ray 2.60's token authentication on, its token in a file private to the
test (the machine's own ~/.ray/auth_token is never read or written: the cluster and every client
here run with HOME pointing into a temp dir). It is stopped by its own process ids — never
`ray stop`, which would kill every Ray process on the machine.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shlex
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pytest
from conftest import cluster_pids, free_port, kill_cluster

from aigc_ray import jobs
from aigc_ray.spec import load_spec

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

REPO = Path(__file__).resolve().parent.parent
QUICKSTART = "examples/quickstart.yaml"
BIN = Path(sys.executable).parent
_PORT_FLAGS = (
    "--port",
    "--dashboard-port",
    "--ray-client-server-port",
    "--dashboard-agent-listen-port",
    "--dashboard-agent-grpc-port",
    "--runtime-env-agent-port",
    "--metrics-export-port",
    "--node-manager-port",
    "--object-manager-port",
)
_AUTH_VARS = ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH", "RAY_ADDRESS", "RAY_API_SERVER_ADDRESS")


@dataclass
class Cluster:
    address: str  # the jobs API, http://127.0.0.1:PORT
    temp_dir: str  # private: every process of the cluster names it, or descends from one that does
    token: str | None
    env: dict[str, str]  # what `ray start` ran with


def _wait_for_jobs_api(cluster: Cluster, timeout: float = 90) -> None:
    headers = {"Authorization": f"Bearer {cluster.token}"} if cluster.token else {}
    deadline = time.monotonic() + timeout
    while True:
        try:
            req = urllib.request.Request(f"{cluster.address}/api/jobs/", headers=headers)
            with urllib.request.urlopen(req, timeout=2) as r:
                if r.status == 200:
                    return
        except (OSError, urllib.error.HTTPError):
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"the jobs API at {cluster.address} did not answer within {timeout:.0f}s")
        time.sleep(0.5)


@contextlib.contextmanager
def ray_cluster(auth: bool):
    """A single-node cluster (2 CPUs, dashboard on loopback, every port free-picked) in a private
    temp dir; token auth on with a token of its own, or explicitly disabled."""
    temp_dir = tempfile.mkdtemp(prefix="aigc-jobs-", dir="/tmp")  # short: Ray's socket paths
    home = Path(temp_dir, "home")
    home.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in _AUTH_VARS}
    env.update(HOME=str(home), PATH=f"{BIN}{os.pathsep}{env.get('PATH', '')}")
    token = None
    if auth:
        token = secrets.token_hex(32)
        token_file = Path(temp_dir, "auth_token")
        token_file.write_text(token)
        env.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN_PATH=str(token_file))
    else:
        env["RAY_AUTH_MODE"] = "disabled"
    ports = {flag: free_port() for flag in _PORT_FLAGS}
    cmd = [str(BIN / "ray"), "start", "--head", "--num-cpus", "2", "--temp-dir", temp_dir]
    cmd += ["--include-dashboard", "true", "--dashboard-host", "127.0.0.1", "--disable-usage-stats"]
    cmd += [str(x) for kv in ports.items() for x in kv]
    cluster = Cluster(f"http://127.0.0.1:{ports['--dashboard-port']}", temp_dir, token, env)
    try:
        started = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
        assert started.returncode == 0, started.stdout[-2000:] + started.stderr[-2000:]
        _wait_for_jobs_api(cluster)
        yield cluster
    finally:
        kill_cluster(temp_dir)


@pytest.fixture(scope="module")
def cluster():
    with ray_cluster(auth=True) as c:
        yield c


@pytest.fixture(autouse=True)
def no_ambient_token(monkeypatch, tmp_path):
    """Clients find no token unless a test gives one: no RAY_AUTH_* variables, an empty HOME."""
    for var in _AUTH_VARS:
        monkeypatch.delenv(var, raising=False)
    home = tmp_path / "client-home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    return home


def _data_overrides(root: Path) -> list[str]:
    return [f"storage.root={root}", "data.rows_per_shard=300"]


def _submit(address: str, overrides: list[str], token: str | None, stage: str = "data_build"):
    spec = load_spec(str(REPO / QUICKSTART), overrides)
    lines: list[str] = []
    job_id, status = jobs.submit(address, stage, str(REPO / QUICKSTART), overrides, spec, token=token, log=lines.append)
    return job_id, status, "\n".join(lines)


@pytest.fixture(scope="module")
def built(cluster, tmp_path_factory):
    """`data_build` submitted once through aigc_ray.jobs: (job id, status, streamed logs, runs dir)."""
    runs = tmp_path_factory.mktemp("jobs-built") / "runs"
    return (*_submit(cluster.address, _data_overrides(runs), cluster.token), runs)


def test_data_build_runs_as_a_job_and_its_logs_stream_back(built):
    job_id, status, logs, runs = built
    assert status == "SUCCEEDED", logs[-3000:]
    assert f"submitted job {job_id}" in logs
    assert "python jobs/data_build.py -c examples/quickstart.yaml --set storage.root=" in logs
    assert f"building the embedded 'digits' dataset into {runs}/data" in logs
    assert "multimodal wrote 1797 rows in 6 shards" in logs
    assert "done: multimodal, corpus, tokenizer" in logs
    assert f"job {job_id} SUCCEEDED" in logs
    assert (runs / "data" / "multimodal" / "_manifest.json").is_file()


def test_token_is_required_found_in_rays_places_and_then_lists_and_reads_jobs(
    cluster, built, no_ambient_token, monkeypatch
):
    job_id = built[0]
    with pytest.raises(RuntimeError) as refused:
        jobs.list_jobs(cluster.address)
    message = str(refused.value)
    assert f"the Ray cluster at {cluster.address} requires an authentication token" in message
    assert "RAY_AUTH_TOKEN (unset)" in message and "RAY_AUTH_TOKEN_PATH (unset)" in message
    assert f"~/.ray/auth_token ({no_ambient_token}/.ray/auth_token) (missing)" in message
    with pytest.raises(RuntimeError, match="refused the authentication token from the token argument"):
        jobs.client(cluster.address, token="0" * 64)

    # the token from RAY_AUTH_TOKEN: the job is listed with its entry point and times
    monkeypatch.setenv("RAY_AUTH_TOKEN", cluster.token)
    listed = {j["id"]: j for j in jobs.list_jobs(cluster.address)}
    monkeypatch.delenv("RAY_AUTH_TOKEN")
    assert listed[job_id]["status"] == "SUCCEEDED"
    assert listed[job_id]["entrypoint"].startswith("python jobs/data_build.py -c examples/quickstart.yaml")
    assert listed[job_id]["start_time"] <= listed[job_id]["end_time"]

    # the token from ~/.ray/auth_token: the job's logs
    (no_ambient_token / ".ray").mkdir()
    (no_ambient_token / ".ray" / "auth_token").write_text(cluster.token + "\n")
    logs = jobs.job_logs(cluster.address, job_id)
    assert "multimodal wrote 1797 rows in 6 shards" in logs

    # the token from the file RAY_AUTH_TOKEN_PATH names (and only that file when it is set)
    monkeypatch.setenv("RAY_AUTH_TOKEN_PATH", str(Path(cluster.temp_dir, "auth_token")))
    assert jobs.find_token()[1].startswith("RAY_AUTH_TOKEN_PATH=")
    assert jobs.stop_job(cluster.address, job_id) is False  # it ended long ago
    monkeypatch.setenv("RAY_AUTH_TOKEN_PATH", str(Path(cluster.temp_dir, "no-such-file")))
    with pytest.raises(RuntimeError, match=r"RAY_AUTH_TOKEN_PATH=.*no-such-file \(missing or empty\)"):
        jobs.client(cluster.address)


def test_a_bad_spec_fails_the_job_and_a_running_job_can_be_stopped(cluster, tmp_path):
    overrides = [f"storage.root={tmp_path}/runs", "data.rows_per_shard=300"]
    spec = load_spec(str(REPO / QUICKSTART), overrides)  # the client's copy is fine...
    lines: list[str] = []
    # ...the job's is not: the stage reports the problem and exits 1
    _, status = jobs.submit(
        cluster.address,
        "data-build",
        QUICKSTART,
        [*overrides, "data.rows_per_shard=0"],
        spec,
        token=cluster.token,
        log=lines.append,
    )
    logs = "\n".join(lines)
    assert status == "FAILED", logs[-3000:]
    assert "error: " in logs and "data.rows_per_shard = 0: Input should be greater than or equal to 1" in logs
    assert not (tmp_path / "runs").exists()

    c = jobs.client(cluster.address, cluster.token)
    job_id = c.submit_job(entrypoint='python -c "import time; time.sleep(60)"')
    deadline = time.monotonic() + 60
    while c.get_job_status(job_id).value != "RUNNING":
        assert time.monotonic() < deadline, "the sleeping job never started"
        time.sleep(0.3)
    assert jobs.stop_job(cluster.address, job_id, token=cluster.token) is True
    assert jobs.wait_for(c, job_id, timeout=60) == "STOPPED"
    listed = {j["id"]: j["status"] for j in jobs.list_jobs(cluster.address, token=cluster.token)}
    assert listed[job_id] == "STOPPED"
    with pytest.raises(RuntimeError, match="does not exist"):
        jobs.job_logs(cluster.address, "raysubmit_nosuchjob", token=cluster.token)


def test_entrypoints_and_runtime_env_name_what_a_job_needs():
    spec = load_spec(str(REPO / QUICKSTART), [])
    assert jobs.job_entrypoint("pretrain", "examples/quickstart.yaml", ["data.seed=3", "name=a b"]) == (
        "python jobs/pretrain.py -c examples/quickstart.yaml --set data.seed=3 --set 'name=a b'"
    )
    assert {"data_build", "data_stream", "pretrain", "finetune", "pipeline"} <= set(jobs.stages())
    with pytest.raises(ValueError, match="unknown stage 'train': the stages that run as jobs are .*data_build"):
        jobs.job_entrypoint("train", QUICKSTART, [])
    env = jobs.runtime_env(spec, str(REPO))
    assert env["working_dir"] == str(REPO) and {".venv", "runs", ".git"} <= set(env["excludes"])
    assert env["env_vars"] == dict(spec.ray.env_vars) and "pip" not in env
    assert not any(k.startswith(("AWS_", "RAY_AUTH")) for k in env["env_vars"])
    leaky = spec.model_copy(update={"ray": spec.ray.model_copy(update={"env_vars": {"AWS_SECRET_ACCESS_KEY": "x"}})})
    with pytest.raises(ValueError, match=r"looks like a secret \(AWS_SECRET_ACCESS_KEY\)"):
        jobs.runtime_env(leaky, str(REPO))
    assert jobs.runtime_env(spec, str(REPO), pip=["aigc-ray"])["pip"] == ["aigc-ray"]
    with pytest.raises(ValueError, match="must be inside"):
        jobs.job_spec_path("/etc/hosts")


def test_plain_ray_job_submit_runs_the_same_entry_point(cluster, tmp_path):
    entrypoint = jobs.job_entrypoint("data_build", QUICKSTART, _data_overrides(tmp_path / "runs"))
    cmd = [str(BIN / "ray"), "job", "submit", "--address", cluster.address, "--working-dir", "."]
    cmd += ["--", *shlex.split(entrypoint)]
    env = {k: v for k, v in os.environ.items() if k not in _AUTH_VARS}  # HOME: the empty one

    refused = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert refused.returncode != 0 and "Missing authentication token" in refused.stdout + refused.stderr

    env.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=cluster.token)
    done = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=240)
    out = done.stdout + done.stderr
    assert done.returncode == 0, out[-3000:]
    assert "multimodal wrote 1797 rows in 6 shards" in out and "succeeded" in out
    assert (tmp_path / "runs" / "data" / "multimodal" / "_manifest.json").is_file()


def test_a_cluster_without_auth_takes_jobs_without_a_token(tmp_path):
    assert jobs.find_token()[0] is None
    with ray_cluster(auth=False) as open_cluster:
        job_id, status, logs = _submit(open_cluster.address, _data_overrides(tmp_path / "runs"), token=None)
        assert status == "SUCCEEDED", logs[-3000:]
        assert [j["id"] for j in jobs.list_jobs(open_cluster.address)] == [job_id]
    assert (tmp_path / "runs" / "data" / "multimodal" / "_manifest.json").is_file()
    assert not cluster_pids(open_cluster.temp_dir)


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_the_submit_and_jobs_commands(cluster, tmp_path, capsys):
    from aigc_ray.cli import main

    token_file = tmp_path / "token"
    token_file.write_text(cluster.token or "")
    runs = tmp_path / "runs"
    common = ["--address", cluster.address, "--token-file", str(token_file)]
    argv = ["submit", "data_build", "-c", str(REPO / QUICKSTART), *common]
    for o in _data_overrides(runs):
        argv += ["--set", o]
    assert main(argv) == 0
    out = capsys.readouterr().out
    job_id = out.split("submitted job ", 1)[1].split()[0]
    assert "SUCCEEDED" in out and (runs / "data" / "multimodal" / "_manifest.json").exists()
    assert main(["jobs", "list", *common]) == 0
    assert job_id in capsys.readouterr().out
    assert main(["jobs", "logs", job_id, *common]) == 0
    assert "multimodal" in capsys.readouterr().out
    assert main(["jobs", "stop", job_id, *common]) == 0
    assert "already finished" in capsys.readouterr().out
    assert main(["jobs", "list", "--address", cluster.address]) == 1  # no token: refused, clearly
    assert "requires an authentication token" in capsys.readouterr().err
