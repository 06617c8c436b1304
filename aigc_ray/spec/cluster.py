"""Cluster definitions rendered from the spec: AWS launcher and KubeRay."""

from __future__ import annotations

from pydantic import Field

from .base import Section

K8S_QUANTITY = r"^[0-9]+(\.[0-9]+)?(m|Ki|Mi|Gi|Ti)?$"  # a Kubernetes resource quantity: "4", "500m", "16Gi"


class ClusterSpec(Section):
    """The clusters this experiment runs on: `aigc infra render` turns this section into the AWS
    cluster-launcher config (cluster.yaml) and the KubeRay manifests (infra/kuberay/). Secrets never
    appear here: S3 access comes from IAM (instance profile / IRSA), the Ray token from a Secret."""

    name: str = Field(
        "aigc-ray",
        pattern=r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$",
        max_length=40,
        description="Cluster name; also the prefix of every Kubernetes object (a DNS-1123 label, room for suffixes).",
    )
    region: str = Field("us-west-2", description="AWS region the cluster launcher starts instances in.")
    head_instance_type: str = Field("m5.2xlarge", description="EC2 type of the (CPU) head node.")
    cpu_instance_type: str = Field("m5.4xlarge", description="EC2 type of the CPU (spot) workers.")
    gpu_instance_type: str = Field("g5.12xlarge", description="EC2 type of the GPU (spot) workers.")
    max_gpu_workers: int = Field(4, ge=0, description="Upper bound of the GPU worker pool (it scales from 0).")
    cpu_workers_max: int = Field(4, ge=0, description="Upper bound of the CPU worker pool (it scales from 0).")
    gpus_per_worker: int = Field(4, ge=1, description="GPUs per GPU worker (g5.12xlarge: 4).")
    head_cpus: str = Field("4", pattern=K8S_QUANTITY, description="KubeRay: CPU request = limit of the head pod.")
    head_memory: str = Field("16Gi", pattern=K8S_QUANTITY, description="KubeRay: memory of the head pod.")
    cpu_worker_cpus: str = Field("8", pattern=K8S_QUANTITY, description="KubeRay: CPUs of a CPU worker pod.")
    cpu_worker_memory: str = Field("32Gi", pattern=K8S_QUANTITY, description="KubeRay: memory of a CPU worker pod.")
    gpu_worker_cpus: str = Field("16", pattern=K8S_QUANTITY, description="KubeRay: CPUs of a GPU worker pod.")
    gpu_worker_memory: str = Field("64Gi", pattern=K8S_QUANTITY, description="KubeRay: memory of a GPU worker pod.")
    ray_version: str = Field("2.60.0", description="Ray version in the images (KubeRay's rayVersion).")
    ray_image: str = Field(
        "rayproject/ray:2.60.0-py311",
        description="Image of the head and CPU workers; on KubeRay it must contain the project at project_dir "
        "(build FROM this one, see infra/README.md).",
    )
    gpu_image: str = Field("rayproject/ray:2.60.0-py311-gpu", description="Image of the GPU workers (CUDA).")
    project_dir: str = Field(
        "/home/ray/aigc-ray", description="KubeRay: where the project lives in the image (the jobs' working_dir)."
    )
    spec_path: str = Field(
        "examples/quickstart.yaml",
        description="The spec file, relative to the project directory, that jobs run with (-c) on the cluster.",
    )
    namespace: str = Field(
        "aigc", pattern=r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$", description="Kubernetes namespace of every object."
    )
    service_account: str = Field(
        "aigc-ray",
        pattern=r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$",
        description="Kubernetes ServiceAccount of the Ray pods (IRSA: it carries the S3 role).",
    )
    s3_role_arn: str = Field(
        "arn:aws:iam::123456789012:role/aigc-ray-s3",
        description="IRSA role for S3 on EKS (placeholder account: replace). No access keys anywhere.",
    )
    s3_instance_profile_arn: str = Field(
        "arn:aws:iam::123456789012:instance-profile/aigc-ray-s3",
        description="Instance profile of the AWS workers, for S3 (placeholder account: replace).",
    )
    head_instance_profile_arn: str | None = Field(
        None,
        description="Instance profile of the AWS head: S3 plus the autoscaler's EC2 rights (launch instances, "
        "iam:PassRole for the workers' profile). Default: s3_instance_profile_arn.",
    )
    auth_secret: str = Field(
        "aigc-ray-auth",
        pattern=r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$",
        description="Kubernetes Secret holding the Ray token under key auth_token (KubeRay's convention).",
    )
    serve_auth_secret: str = Field(
        "aigc-serve-auth",
        pattern=r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$",
        description="Kubernetes Secret holding the Serve bearer token (key token), exported as serve.auth_token_env.",
    )
