"""KubeRay manifests (``ray.io/v1``) from the experiment spec: a RayCluster, one RayJob per stage and
a RayService, plus the ServiceAccount their pods run as.

Contract: every function is a pure function of the spec (no storage, no cluster, no clock) whose
result validates against KubeRay's own CRD schema, and:

- token auth is on twice over: ``spec.authOptions`` (``mode: token``, ``secretName``: the operator
  then uses that Secret for its own dashboard calls and injects the token into the autoscaler and
  the RayJob submitter) and, on every Ray container, ``RAY_AUTH_MODE=token`` plus
  ``RAY_AUTH_TOKEN`` from the Secret via ``secretKeyRef`` (works with operators older than
  authOptions; the operator adds its own only where absent). Never a literal token;
- S3 through IRSA: pods run as ``spec.cluster.service_account``, whose ServiceAccount carries the
  ``eks.amazonaws.com/role-arn`` annotation; no access keys;
- the head service is ClusterIP (no LoadBalancer / NodePort for the dashboard);
- a CPU and a GPU worker group, both ``minReplicas: 0`` under the in-tree autoscaler, every
  container with requests = limits;
- ``serveConfigV2`` is built without storage: the app builder reads the ensemble's strategy and
  weights from the ensemble artifact itself, so no ``user_config`` is rendered.

``spec_dump`` is the checkout-independent form of the spec (see ``portable``) that the RayService
hands to the app builder.
"""

from __future__ import annotations

import os
from typing import Any

import yaml

from ..spec import ExperimentSpec

API_VERSION = "ray.io/v1"
# One RayJob per batch stage in jobs/; jobs/serve.py is the RayService's business, not a job's.
STAGES = (
    "data_build",
    "data_stream",
    "pretrain",
    "finetune",
    "sweep_gan",
    "sweep_fusion",
    "sweep_video",
    "ensemble_build",
    "robustness_evaluate",
    "feedback_ingest",
    "feedback_finetune",
    "pipeline",
)
# Same as aigc_ray.serve.deploy (not imported: that module pulls torch in through the ensemble
# code, seconds for a renderer that needs two strings; tests/test_infra.py checks they agree).
APP_NAME = "aigc"
IMPORT_PATH = "aigc_ray.serve.app:build_app"
TOKEN_KEY = "auth_token"  # the data key KubeRay's operator reads from authOptions.secretName
SERVE_TOKEN_KEY = "token"
JOB_TTL_SECONDS = 300  # time to read a finished job's logs before its cluster is deleted
LABELS = {"app.kubernetes.io/part-of": "aigc-ray", "app.kubernetes.io/managed-by": "aigc-infra-render"}
SMALL = {"cpu": "500m", "memory": "512Mi"}


def portable(value: Any, base: str | None = None) -> Any:
    """``value`` with every local path under ``base`` (default: the working directory) written
    relative to it (``/repo/runs`` -> ``./runs``). Loading a spec makes its local paths absolute
    against the working directory; written back relative, a render is the same in every checkout,
    and resolves against the project directory again where the spec is loaded on the cluster."""
    base = (base or os.getcwd()).rstrip("/")
    if isinstance(value, dict):
        return {k: portable(v, base) for k, v in value.items()}
    if isinstance(value, list):
        return [portable(v, base) for v in value]
    if isinstance(value, str) and base and (value == base or value.startswith(base + "/")):
        return "./" + os.path.relpath(value, base) if value != base else "."
    return value


def spec_dump(spec: ExperimentSpec) -> dict:
    """The spec as JSON-able data, local paths relative (``portable``)."""
    return portable(spec.model_dump(mode="json"))


def _meta(spec: ExperimentSpec, name: str, component: str) -> dict:
    return {
        "name": name,
        "namespace": spec.cluster.namespace,
        "labels": {**LABELS, "app.kubernetes.io/name": spec.cluster.name, "app.kubernetes.io/component": component},
    }


def _env(spec: ExperimentSpec, serve: bool) -> list[dict]:
    env = [
        {"name": "RAY_AUTH_MODE", "value": "token"},
        {
            "name": "RAY_AUTH_TOKEN",
            "valueFrom": {"secretKeyRef": {"name": spec.cluster.auth_secret, "key": TOKEN_KEY}},
        },
    ]
    if serve:
        # Ray's token guards the dashboard and jobs API, not Serve's HTTP routes: the app checks
        # its own bearer token, read from this variable (Ray workers inherit the pod's env).
        env.append(
            {
                "name": spec.serve.auth_token_env,
                "valueFrom": {"secretKeyRef": {"name": spec.cluster.serve_auth_secret, "key": SERVE_TOKEN_KEY}},
            }
        )
    return env


def _resources(cpu: str, memory: str, gpus: int = 0) -> dict:
    # requests = limits: Ray sizes its scheduler from the limits; a pod squeezed below them by
    # neighbours would make Ray over-commit the node.
    amount = {"cpu": cpu, "memory": memory} | ({"nvidia.com/gpu": str(gpus)} if gpus else {})
    return {"requests": dict(amount), "limits": dict(amount)}


def _pod(spec: ExperimentSpec, container: str, image: str, resources: dict, ports: list, serve: bool) -> dict:
    pod: dict = {
        "serviceAccountName": spec.cluster.service_account,
        "containers": [
            {
                "name": container,
                "image": image,
                "env": _env(spec, serve),
                "resources": resources,
                **({"ports": ports} if ports else {}),
            }
        ],
    }
    return {"spec": pod}


def cluster_spec(spec: ExperimentSpec, serve: bool = False) -> dict:
    """The RayCluster ``spec`` (also embedded in each RayJob and the RayService). ``serve``: give the
    containers the Serve bearer token and declare the Serve port."""
    c = spec.cluster
    head_ports = [
        {"name": "gcs-server", "containerPort": 6379},
        {"name": "dashboard", "containerPort": 8265},
        {"name": "client", "containerPort": 10001},
    ] + ([{"name": "serve", "containerPort": spec.serve.port}] if serve else [])
    gpu_pod = _pod(
        spec,
        "ray-worker",
        c.gpu_image,
        _resources(c.gpu_worker_cpus, c.gpu_worker_memory, c.gpus_per_worker),
        [],
        serve,
    )
    # GPU node groups are usually tainted so that CPU pods stay off them.
    gpu_pod["spec"]["tolerations"] = [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]
    return {
        "rayVersion": c.ray_version,
        "authOptions": {"mode": "token", "secretName": c.auth_secret},
        "enableInTreeAutoscaling": True,
        "autoscalerOptions": {
            "upscalingMode": "Default",
            "idleTimeoutSeconds": 60,
            "resources": {"requests": dict(SMALL), "limits": dict(SMALL)},
        },
        "headGroupSpec": {
            "serviceType": "ClusterIP",
            "rayStartParams": {
                # Inside the pod: the head Service and the operator reach the dashboard through the
                # pod IP. The Service is ClusterIP, so this is not public.
                "dashboard-host": "0.0.0.0",
                # The head runs GCS, the dashboard, the autoscaler and job drivers, no tasks.
                "num-cpus": "0",
            },
            "template": _pod(spec, "ray-head", c.ray_image, _resources(c.head_cpus, c.head_memory), head_ports, serve),
        },
        "workerGroupSpecs": [
            {
                "groupName": "cpu",
                "replicas": 0,
                "minReplicas": 0,
                "maxReplicas": c.cpu_workers_max,
                "rayStartParams": {},
                "template": _pod(
                    spec, "ray-worker", c.ray_image, _resources(c.cpu_worker_cpus, c.cpu_worker_memory), [], serve
                ),
            },
            {
                "groupName": "gpu",
                "replicas": 0,
                "minReplicas": 0,
                "maxReplicas": c.max_gpu_workers,
                "rayStartParams": {},
                "template": gpu_pod,
            },
        ],
    }


def raycluster(spec: ExperimentSpec) -> dict:
    """A long-lived RayCluster: submit any stage to it (``ray job submit`` through a port-forward)."""
    return {
        "apiVersion": API_VERSION,
        "kind": "RayCluster",
        "metadata": _meta(spec, spec.cluster.name, "raycluster"),
        "spec": cluster_spec(spec),
    }


def job_name(spec: ExperimentSpec, stage: str) -> str:
    return f"{spec.cluster.name}-{stage.replace('_', '-')}"


def rayjob(spec: ExperimentSpec, stage: str) -> dict:
    """One stage as a RayJob on its own cluster, deleted ``JOB_TTL_SECONDS`` after the job ends.
    The entry point runs in ``project_dir`` (the job's working_dir, uploaded by the submitter pod,
    which runs the head's image)."""
    if stage not in STAGES:
        raise ValueError(f"unknown stage {stage!r}; one of: {', '.join(STAGES)}")
    c = spec.cluster
    return {
        "apiVersion": API_VERSION,
        "kind": "RayJob",
        "metadata": _meta(spec, job_name(spec, stage), "rayjob"),
        "spec": {
            "entrypoint": f"python jobs/{stage}.py -c {c.spec_path}",
            "runtimeEnvYAML": yaml.safe_dump({"working_dir": c.project_dir}, sort_keys=False),
            "shutdownAfterJobFinishes": True,
            "ttlSecondsAfterFinished": JOB_TTL_SECONDS,
            "backoffLimit": 0,  # a stage resumes from its checkpoints: rerun it on purpose, not blindly
            "rayClusterSpec": cluster_spec(spec),
        },
    }


def serve_config(spec: ExperimentSpec) -> dict:
    """The Serve deploy config of ``aigc_ray.serve.deploy.serve_config`` without storage: no ingress
    ``user_config`` (``build_app`` reads strategy and weights from the ensemble artifact itself)."""
    s = spec.serve
    return {
        "proxy_location": "EveryNode",
        # 0.0.0.0: the proxies must accept the Serve Service's traffic from outside the pod.
        "http_options": {"host": "0.0.0.0", "port": s.port, "request_timeout_s": s.request_timeout_s},
        "applications": [
            {
                "name": APP_NAME,
                "route_prefix": s.route_prefix,
                "import_path": IMPORT_PATH,
                "args": {"spec": spec_dump(spec)},
                "runtime_env": {"env_vars": {"OMP_NUM_THREADS": "1"}},
            }
        ],
    }


def rayservice(spec: ExperimentSpec) -> dict:
    """The Serve application on its own cluster; a changed cluster spec rolls out as a new cluster
    that takes traffic once healthy (``upgradeStrategy: NewCluster``)."""
    return {
        "apiVersion": API_VERSION,
        "kind": "RayService",
        "metadata": _meta(spec, f"{spec.cluster.name}-serve", "rayservice"),
        "spec": {
            "upgradeStrategy": {"type": "NewCluster"},
            "serveConfigV2": yaml.safe_dump(serve_config(spec), sort_keys=False),
            "rayClusterConfig": cluster_spec(spec, serve=True),
        },
    }


def service_account(spec: ExperimentSpec) -> dict:
    """The pods' ServiceAccount; the IRSA annotation gives them the S3 role (no keys)."""
    c = spec.cluster
    meta = _meta(spec, c.service_account, "serviceaccount")
    meta["annotations"] = {"eks.amazonaws.com/role-arn": c.s3_role_arn}
    return {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": meta}
