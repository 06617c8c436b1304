"""Cluster definitions rendered from the spec: valid for the tools that consume them (Ray's cluster
launcher schema, KubeRay's CRDs, Serve's deploy schema), secure by construction, and in sync with
the committed files. Fast: no Ray cluster, no Kubernetes."""

from __future__ import annotations

import copy
import json
import os
import re
import shutil
from pathlib import Path

import jsonschema
import pytest
import yaml

from aigc_ray.infra import aws, kuberay, render
from aigc_ray.spec import load_spec

REPO = Path(__file__).resolve().parent.parent
CRDS = REPO.parent / "shared" / "kuberay-crds"
QUICKSTART = "examples/quickstart.yaml"
DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")


@pytest.fixture
def spec(monkeypatch):
    # Local paths in a spec resolve against the working directory, as `aigc` run from the repo does.
    monkeypatch.chdir(REPO)
    return load_spec(QUICKSTART, [])


@pytest.fixture
def rendered(spec) -> dict[str, str]:
    return {rel.as_posix(): text for rel, text in render.documents(spec).items()}


# ---------------------------------------------------------------- AWS cluster launcher


def ray_schema() -> dict:
    import ray

    with open(os.path.join(os.path.dirname(ray.__file__), "autoscaler", "ray-schema.json")) as f:
        return json.load(f)


def test_cluster_yaml_validates_against_rays_schema(rendered):
    config = yaml.safe_load(rendered["cluster.yaml"])
    jsonschema.validate(config, ray_schema())
    assert config["cluster_name"] == "aigc-ray" and config["provider"] == {
        "type": "aws",
        "region": "us-west-2",
        "cache_stopped_nodes": False,
    }
    assert config["head_node_type"] in config["available_node_types"]
    # What `ray up` does before it talks to AWS: merge the provider's defaults, validate again.
    from ray.autoscaler._private.util import prepare_config, validate_config

    validate_config(prepare_config(config))


def test_ray_schema_check_is_real(spec):
    broken = aws.cluster_config(spec)
    broken["available_node_types"][aws.GPU_WORKER_TYPE]["max_workers"] = "four"
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(broken, ray_schema())


def test_workers_are_spot_from_zero_and_every_node_has_the_s3_profile(spec):
    config = aws.cluster_config(spec)
    types = config["available_node_types"]
    for name in (aws.GPU_WORKER_TYPE, aws.CPU_WORKER_TYPE):
        assert types[name]["min_workers"] == 0
        assert types[name]["node_config"]["InstanceMarketOptions"] == {"MarketType": "spot"}
    gpu = types[aws.GPU_WORKER_TYPE]
    assert gpu["max_workers"] == spec.cluster.max_gpu_workers
    assert gpu["node_config"]["InstanceType"] == spec.cluster.gpu_instance_type
    assert gpu["resources"]["GPU"] == spec.cluster.gpus_per_worker
    head = types[config["head_node_type"]]
    assert head["node_config"]["InstanceType"] == spec.cluster.head_instance_type
    assert "InstanceMarketOptions" not in head["node_config"]  # the head must not be reclaimed
    for node in types.values():
        assert node["node_config"]["IamInstanceProfile"] == {"Arn": spec.cluster.s3_instance_profile_arn}


def test_dashboard_stays_private_and_token_auth_is_on(spec):
    config = aws.cluster_config(spec)
    head_start = " ".join(config["head_start_ray_commands"])
    assert "--dashboard-host=127.0.0.1" in head_start and "0.0.0.0" not in json.dumps(config)
    assert "security_group" not in config["provider"]  # Ray's default: SSH in, nothing else public
    for command in config["head_start_ray_commands"] + config["worker_start_ray_commands"]:
        if "ray start" in command:
            assert "RAY_AUTH_MODE=token" in command
    assert aws.TOKEN_FILE in config["file_mounts"]


def test_the_project_is_installed_on_every_node(spec):
    config = aws.cluster_config(spec)
    assert config["file_mounts"][aws.REMOTE_PROJECT] == "."
    assert any("pip install" in c and aws.REMOTE_PROJECT in c for c in config["setup_commands"])
    assert ".venv" in config["rsync_exclude"]  # never ship the local virtualenv


# ---------------------------------------------------------------- KubeRay CRDs


def openapi_to_jsonschema(node):
    """An openAPIV3Schema as plain JSON Schema: int-or-string as anyOf, x-kubernetes-* keys
    dropped, and unknown fields refused where the API server would refuse them (kubectl's strict
    field validation): objects with declared properties and no preserve-unknown-fields."""
    if isinstance(node, list):
        return [openapi_to_jsonschema(n) for n in node]
    if not isinstance(node, dict):
        return node
    out = {k: openapi_to_jsonschema(v) for k, v in node.items() if not k.startswith("x-kubernetes-")}
    if node.get("x-kubernetes-int-or-string"):
        out.pop("type", None)
        out["anyOf"] = [{"type": "integer"}, {"type": "string"}]
    if (
        "properties" in node
        and "additionalProperties" not in node
        and not node.get("x-kubernetes-preserve-unknown-fields")
    ):
        out["additionalProperties"] = False
    return out


_VALIDATORS: dict[str, jsonschema.Draft7Validator] = {}


def validator(kind: str) -> jsonschema.Draft7Validator:
    if not CRDS.is_dir():
        pytest.skip(f"KubeRay CRDs not found at {CRDS}")
    if kind not in _VALIDATORS:
        crd = yaml.safe_load((CRDS / f"ray.io_{kind.lower()}s.yaml").read_text())
        assert crd["spec"]["names"]["kind"] == kind
        (version,) = [v for v in crd["spec"]["versions"] if v["name"] == "v1"]
        _VALIDATORS[kind] = jsonschema.Draft7Validator(openapi_to_jsonschema(version["schema"]["openAPIV3Schema"]))
    return _VALIDATORS[kind]


def check_manifest(manifest: dict) -> None:
    """Raises jsonschema.ValidationError unless ``manifest`` is valid for its CRD."""
    assert manifest["apiVersion"] == "ray.io/v1"
    name = manifest["metadata"]["name"]
    if not (DNS_LABEL.match(name) and len(name) <= 63):
        raise jsonschema.ValidationError(f"metadata.name {name!r} is not a DNS-1123 label")
    validator(manifest["kind"]).validate(manifest)


def kuberay_manifests(rendered: dict[str, str]) -> dict[str, dict]:
    docs = {path: yaml.safe_load(text) for path, text in rendered.items() if path.startswith("infra/kuberay/")}
    return {path: doc for path, doc in docs.items() if doc["apiVersion"] == "ray.io/v1"}


def test_every_kuberay_manifest_validates_against_its_crd(rendered):
    manifests = kuberay_manifests(rendered)
    assert sorted(m["kind"] for m in manifests.values()) == ["RayCluster"] + ["RayJob"] * len(kuberay.STAGES) + [
        "RayService"
    ]
    for path, manifest in manifests.items():
        try:
            check_manifest(manifest)
        except jsonschema.ValidationError as exc:
            pytest.fail(f"{path}: {exc.message} at {'.'.join(map(str, exc.absolute_path))}")


@pytest.mark.parametrize(
    "breakage",
    ["no head group", "replicas as text", "misspelt field", "bad name", "bad auth mode"],
)
def test_a_broken_manifest_fails_validation(spec, breakage):
    manifest = kuberay.raycluster(spec)
    check_manifest(copy.deepcopy(manifest))  # the unbroken one passes
    if breakage == "no head group":
        del manifest["spec"]["headGroupSpec"]
    elif breakage == "replicas as text":
        manifest["spec"]["workerGroupSpecs"][1]["maxReplicas"] = "four"
    elif breakage == "misspelt field":
        manifest["spec"]["headGroupSpec"]["template"]["spec"]["serviceAcountName"] = "x"
    elif breakage == "bad name":
        manifest["metadata"]["name"] = "AIGC_Ray"
    else:
        manifest["spec"]["authOptions"]["mode"] = "password"
    with pytest.raises(jsonschema.ValidationError):
        check_manifest(manifest)


def all_containers(cluster_spec: dict) -> list[dict]:
    groups = [cluster_spec["headGroupSpec"], *cluster_spec["workerGroupSpecs"]]
    return [c for g in groups for c in g["template"]["spec"]["containers"]]


def cluster_specs(spec) -> dict[str, dict]:
    jobs = {stage: kuberay.rayjob(spec, stage)["spec"]["rayClusterSpec"] for stage in kuberay.STAGES}
    return {
        "raycluster": kuberay.raycluster(spec)["spec"],
        "rayservice": kuberay.rayservice(spec)["spec"]["rayClusterConfig"],
        **jobs,
    }


def test_token_auth_comes_from_a_secret_never_a_literal(spec):
    for where, cluster in cluster_specs(spec).items():
        assert cluster["authOptions"] == {"mode": "token", "secretName": spec.cluster.auth_secret}, where
        for container in all_containers(cluster):
            env = {e["name"]: e for e in container["env"]}
            assert env["RAY_AUTH_MODE"] == {"name": "RAY_AUTH_MODE", "value": "token"}
            assert "value" not in env["RAY_AUTH_TOKEN"]
            assert env["RAY_AUTH_TOKEN"]["valueFrom"]["secretKeyRef"] == {
                "name": spec.cluster.auth_secret,
                "key": "auth_token",
            }
            for entry in container["env"]:  # nothing token-like is ever a literal
                if re.search("TOKEN|SECRET|PASSWORD|KEY", entry["name"]):
                    assert "value" not in entry and "secretKeyRef" in entry["valueFrom"], (where, entry)


def test_pods_are_sized_private_and_use_irsa(spec):
    for where, cluster in cluster_specs(spec).items():
        head = cluster["headGroupSpec"]
        assert head["serviceType"] == "ClusterIP", where
        assert cluster["enableInTreeAutoscaling"] is True
        groups = {g["groupName"]: g for g in cluster["workerGroupSpecs"]}
        assert set(groups) == {"cpu", "gpu"} and all(g["minReplicas"] == 0 for g in groups.values())
        gpu = groups["gpu"]["template"]["spec"]["containers"][0]["resources"]
        assert gpu["limits"]["nvidia.com/gpu"] == gpu["requests"]["nvidia.com/gpu"] == str(spec.cluster.gpus_per_worker)
        assert groups["gpu"]["maxReplicas"] == spec.cluster.max_gpu_workers
        for group in [head, *groups.values()]:
            assert group["template"]["spec"]["serviceAccountName"] == spec.cluster.service_account
        for container in all_containers(cluster):
            assert container["resources"]["requests"] and container["resources"]["limits"]
            assert container["image"] in (spec.cluster.ray_image, spec.cluster.gpu_image)
    sa = kuberay.service_account(spec)
    assert sa["metadata"]["name"] == spec.cluster.service_account
    assert sa["metadata"]["annotations"]["eks.amazonaws.com/role-arn"] == spec.cluster.s3_role_arn


def test_one_rayjob_per_stage_with_its_entry_point(spec, rendered):
    assert set(kuberay.STAGES) | {"serve"} == {p.stem for p in (REPO / "jobs").glob("*.py")}  # none forgotten
    for stage in kuberay.STAGES:
        job = yaml.safe_load(rendered[f"infra/kuberay/rayjob-{stage.replace('_', '-')}.yaml"])
        assert job["kind"] == "RayJob"
        assert job["spec"]["entrypoint"] == f"python jobs/{stage}.py -c {spec.cluster.spec_path}"
        assert job["spec"]["shutdownAfterJobFinishes"] is True and job["spec"]["ttlSecondsAfterFinished"] > 0
        assert job["spec"]["rayClusterSpec"] == kuberay.raycluster(spec)["spec"]
        assert yaml.safe_load(job["spec"]["runtimeEnvYAML"]) == {"working_dir": spec.cluster.project_dir}
    with pytest.raises(ValueError, match="unknown stage"):
        kuberay.rayjob(spec, "train")


def test_serve_config_v2_is_a_valid_serve_deploy_config(spec, rendered):
    from ray.serve.schema import ServeDeploySchema

    from aigc_ray.serve import deploy

    service = yaml.safe_load(rendered["infra/kuberay/rayservice.yaml"])
    assert service["spec"]["upgradeStrategy"] == {"type": "NewCluster"}
    assert isinstance(service["spec"]["serveConfigV2"], str)
    config = yaml.safe_load(service["spec"]["serveConfigV2"])
    ServeDeploySchema.model_validate(config)
    (app,) = config["applications"]
    assert (app["name"], app["import_path"]) == (deploy.APP_NAME, deploy.IMPORT_PATH)
    assert app["route_prefix"] == spec.serve.route_prefix
    assert app["runtime_env"]["env_vars"]["OMP_NUM_THREADS"] == "1"
    assert "deployments" not in app  # no user_config: the app reads the ensemble artifact itself
    assert config["http_options"]["port"] == spec.serve.port
    assert app["args"]["spec"] == kuberay.spec_dump(spec)
    assert app["args"]["spec"]["storage"]["root"] == "./runs"  # as written in the spec, not /abs/path
    # Serve's HTTP routes are not covered by Ray's token: the app's own bearer token, from a Secret.
    head = service["spec"]["rayClusterConfig"]["headGroupSpec"]["template"]["spec"]["containers"][0]
    serve_token = {e["name"]: e for e in head["env"]}[spec.serve.auth_token_env]
    assert serve_token["valueFrom"]["secretKeyRef"]["name"] == spec.cluster.serve_auth_secret


# ---------------------------------------------------------------- everything rendered


def test_no_credentials_or_local_paths_in_any_rendered_file(rendered):
    for path, text in rendered.items():
        lower = text.lower()
        for word in ("aws_access_key", "aws_secret", "secret_access_key", "access_key_id", "password"):
            assert word not in lower, (path, word)
        assert not re.search(r"\bA[KS]IA[0-9A-Z]{16}\b", text), path  # an AWS access key id
        assert str(REPO) not in text and "/work/" not in text, path
        assert text.startswith("# Generated by `aigc infra render -c examples/quickstart.yaml`"), path
        assert re.search(r"^# spec hash: [0-9a-f]{12}$", text, re.M), path


def test_committed_files_are_in_sync_with_the_spec(spec):
    assert render.check_in_sync(spec, REPO) == [], "run `aigc infra render -c examples/quickstart.yaml`"


def test_the_render_is_the_same_from_any_checkout(tmp_path, monkeypatch, spec, rendered):
    expected_hash = render.render_hash(spec)  # local paths are made relative to the working directory
    elsewhere = tmp_path / "other-checkout"
    (elsewhere / "examples").mkdir(parents=True)
    shutil.copy(REPO / QUICKSTART, elsewhere / QUICKSTART)
    monkeypatch.chdir(elsewhere)
    moved = load_spec(QUICKSTART, [])
    assert moved.storage.root != spec.storage.root  # absolute, and elsewhere
    assert {rel.as_posix(): text for rel, text in render.documents(moved).items()} == rendered
    assert render.render_hash(moved) == expected_hash


def test_render_all_writes_the_layout_and_check_in_sync_sees_drift(tmp_path, spec):
    written = render.render_all(spec, tmp_path)
    assert {p.relative_to(tmp_path).as_posix() for p in written} == {p.as_posix() for p in render.documents(spec)}
    assert (tmp_path / "cluster.yaml").is_file() and (tmp_path / "infra/kuberay/rayservice.yaml").is_file()
    assert render.check_in_sync(spec, tmp_path) == []
    (tmp_path / "infra/kuberay/raycluster.yaml").write_text("edited by hand\n")
    (tmp_path / "infra/kuberay/rayjob-old-stage.yaml").write_text("left over\n")
    (tmp_path / "cluster.yaml").unlink()
    assert render.check_in_sync(spec, tmp_path) == [
        "cluster.yaml",
        "infra/kuberay/raycluster.yaml",
        "infra/kuberay/rayjob-old-stage.yaml",
    ]


def test_a_spec_change_changes_the_render(spec, monkeypatch):
    changed = load_spec(QUICKSTART, ["cluster.max_gpu_workers=7", "cluster.cpu_workers_max=3"])
    config = aws.cluster_config(changed)
    assert config["available_node_types"][aws.GPU_WORKER_TYPE]["max_workers"] == 7
    assert config["max_workers"] == 10
    for cluster in cluster_specs(changed).values():
        groups = {g["groupName"]: g for g in cluster["workerGroupSpecs"]}
        assert (groups["gpu"]["maxReplicas"], groups["cpu"]["maxReplicas"]) == (7, 3)
    assert render.render_hash(changed) != render.render_hash(spec)
    stale = render.check_in_sync(changed, REPO)
    assert "cluster.yaml" in stale and "infra/kuberay/raycluster.yaml" in stale


def test_a_cluster_name_that_kubernetes_refuses_is_refused_at_load():
    from aigc_ray.spec import SpecError

    with pytest.raises(SpecError, match="cluster.name"):
        load_spec(None, ["cluster.name=AIGC_Ray"])


def test_the_infra_render_command_writes_and_checks(tmp_path, capsys):
    from aigc_ray.cli import main

    spec = str(Path(__file__).resolve().parent.parent / "examples" / "quickstart.yaml")
    assert main(["infra", "render", "-c", spec, "-o", str(tmp_path), "--check"]) == 1  # nothing there yet
    assert "out of date: cluster.yaml" in capsys.readouterr().out
    assert main(["infra", "render", "-c", spec, "-o", str(tmp_path)]) == 0
    assert (tmp_path / "cluster.yaml").exists() and (tmp_path / "infra" / "kuberay" / "rayservice.yaml").exists()
    assert main(["infra", "render", "-c", spec, "-o", str(tmp_path), "--check"]) == 0


def test_gpu_requests_are_rendered_with_the_gpu_group_that_meets_them(spec):
    """A spec that asks for GPUs renders them in every file's header beside the GPU worker group's
    size; the embedded spec carries them to Ray (trials, bagging tasks, Serve replicas); the GPU
    group's pods ask Kubernetes for nvidia.com/gpu and cluster.yaml's GPU type advertises GPU."""
    asks = ["gan.sweep.gpus_per_trial=1", "fusion.sweep.gpus_per_trial=0.5", "serve.gpus_per_replica=0.25"]
    gpu = load_spec(QUICKSTART, asks + ["cluster.gpus_per_worker=4", "cluster.max_gpu_workers=2"])
    files = render.documents(gpu)
    for text in files.values():
        assert "gan.sweep.gpus_per_trial = 1, fusion.sweep.gpus_per_trial" in text.splitlines()[2]
        assert "GPU workers: 0..2 x 4 GPUs" in text.splitlines()[2]
    service = yaml.safe_load(files[Path("infra/kuberay/rayservice.yaml")])
    serve_spec = yaml.safe_load(service["spec"]["serveConfigV2"])["applications"][0]["args"]["spec"]
    assert serve_spec["serve"]["gpus_per_replica"] == 0.25 and serve_spec["fusion"]["sweep"]["gpus_per_trial"] == 0.5
    groups = {g["groupName"]: g for g in service["spec"]["rayClusterConfig"]["workerGroupSpecs"]}
    limits = groups["gpu"]["template"]["spec"]["containers"][0]["resources"]["limits"]
    assert limits["nvidia.com/gpu"] == "4"
    assert aws.cluster_config(gpu)["available_node_types"][aws.GPU_WORKER_TYPE]["resources"] == {"GPU": 4}
    assert not any("GPUs:" in line for line in render.header(spec).splitlines())  # the CPU quickstart asks none


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["serve.gpus_per_replica=1", "cluster.max_gpu_workers=0"], "serve.gpus_per_replica: asks for 1 GPU"),
        (["gan.sweep.gpus_per_trial=8", "cluster.gpus_per_worker=4"], "more than a GPU worker has"),
    ],
)
def test_a_gpu_request_no_node_can_meet_is_refused_before_rendering(tmp_path, overrides, message):
    from aigc_ray.spec import SpecError

    with pytest.raises(SpecError, match=message):
        render.render_all(load_spec(QUICKSTART, overrides), tmp_path)
    assert not any(tmp_path.iterdir())  # nothing half-written
