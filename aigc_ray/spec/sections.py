"""The experiment spec: one pydantic model per section, defaults that run on a 2-core laptop.

Every model forbids unknown keys, so a typo in YAML is an error instead of a silent default.
Later stages own their sections; the shape is here so one file describes a whole experiment.
"""

from __future__ import annotations

import os
from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator


def absolute_local(uri: str) -> str:
    """Local paths are resolved against the directory the command runs in: Ray workers run in
    other directories, so a relative path would point somewhere else there."""
    if "://" in uri and not uri.startswith("file://"):
        return uri
    return os.path.abspath(os.path.expanduser(uri.removeprefix("file://")))


def check_batch(global_batch: int, micro: int, workers: int) -> None:
    """The global batch must split into whole micro-batches on every worker."""
    if global_batch % (micro * workers):
        raise ValueError(
            f"global_batch_size ({global_batch}) must be divisible by "
            f"micro_batch_size × num_workers = {micro} × {workers} = {micro * workers}"
        )


class Section(BaseModel):
    """Base for every spec section: unknown keys are rejected, values are re-validated on assignment."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, validate_default=True)


class StorageSpec(Section):
    """Where artifacts live. Credentials never appear here: they come from the standard AWS chain."""

    root: str = Field("./runs", description="Local path or s3://bucket/prefix under which every artifact is written.")
    endpoint_url: str | None = Field(
        None, description="S3-compatible endpoint (e.g. http://127.0.0.1:9000); default: AWS_ENDPOINT_URL or AWS."
    )
    region: str | None = Field(None, description="S3 region; default: AWS_REGION / AWS_DEFAULT_REGION or us-east-1.")

    @field_validator("root")
    @classmethod
    def _root_not_empty(cls, v: str) -> str:
        if not v.strip():
            raise ValueError("must be a local path or an s3://bucket/prefix URI, not empty")
        return absolute_local(v)

    @field_validator("endpoint_url")
    @classmethod
    def _endpoint_has_scheme(cls, v: str | None) -> str | None:
        if v is not None and not v.startswith(("http://", "https://")):
            raise ValueError("must start with http:// or https://")
        return v


class RaySpec(Section):
    """How to reach Ray, and the environment every worker gets."""

    address: str | None = Field(
        None,
        description="Cluster to join ('auto', 'ray://host:10001', host:port); default: RAY_ADDRESS or an embedded local Ray.",
    )
    num_cpus: int | None = Field(None, ge=1, description="CPUs for an embedded local Ray (default: all).")
    data_cpus: float = Field(
        1.0,
        ge=0,
        description="CPUs kept free of training workers so Ray Data's read/decode tasks always run (2-core deadlock otherwise).",
    )
    env_vars: dict[str, str] = Field(
        default_factory=lambda: {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"},
        description="Environment for every Ray worker (runtime_env). Threads pinned: oversubscribed BLAS collapses throughput.",
    )

    @field_validator("env_vars")
    @classmethod
    def _no_secrets(cls, v: dict[str, str]) -> dict[str, str]:
        secret_words = {"SECRET", "PASSWORD", "PASSWD", "TOKEN", "CREDENTIALS", "APIKEY"}
        secret_like = [
            k
            for k in v
            if secret_words & set(k.upper().split("_")) or "ACCESS_KEY" in k.upper() or "API_KEY" in k.upper()
        ]
        if secret_like:
            raise ValueError(
                f"looks like a secret ({', '.join(secret_like)}); secrets never go in the spec — "
                "use the standard AWS chain, Ray's token file or the environment of the process"
            )
        return v


class SplitFractions(Section):
    train: float = Field(0.8, gt=0, lt=1)
    val: float = Field(0.1, ge=0, lt=1)
    test: float = Field(0.1, ge=0, lt=1)

    @model_validator(mode="after")
    def _sum_to_one(self) -> SplitFractions:
        total = self.train + self.val + self.test
        if abs(total - 1.0) > 1e-6:
            raise ValueError(f"train + val + test must sum to 1.0, got {total:g}")
        return self


class CaptionNoise(Section):
    """Fractions of captions that are deliberately unhelpful, so a model must use the image too."""

    vague: float = Field(0.15, ge=0, le=1, description="Captions that name no digit ('a handwritten digit').")
    wrong: float = Field(0.10, ge=0, le=1, description="Captions that name a different digit than the label.")

    @model_validator(mode="after")
    def _at_most_one(self) -> CaptionNoise:
        if self.vague + self.wrong > 1:
            raise ValueError(f"vague + wrong must be at most 1, got {self.vague + self.wrong:g}")
        return self


class DataSpec(Section):
    """The embedded dataset, its shards, and how Ray Data streams them."""

    dataset: Literal["digits"] = Field(
        "digits", description="Embedded multimodal dataset to build (no network needed)."
    )
    uri: str | None = Field(None, description="Where shards live; default: <storage.root>/data.")

    @field_validator("uri")
    @classmethod
    def _absolute_uri(cls, v: str | None) -> str | None:
        return absolute_local(v) if v else v

    seed: int = Field(0, description="Seed for captions, splits and shuffling.")
    rows_per_shard: int = Field(256, ge=1, description="Rows per Parquet shard.")
    repeat: int = Field(1, ge=1, description="Write the embedded dataset this many times (bigger data for benchmarks).")
    splits: SplitFractions = Field(default_factory=SplitFractions)
    caption_noise: CaptionNoise = Field(default_factory=CaptionNoise)
    corpus_max_chars: int = Field(2_000_000, ge=10_000, description="Upper bound on the pretraining text corpus size.")
    vocab_size: int = Field(4096, ge=300, le=200_000, description="Byte-level BPE tokenizer vocabulary size.")
    max_seq_len: int = Field(32, ge=4, description="Tokens per caption after padding/truncation.")
    batch_size: int = Field(64, ge=1, description="Rows per batch streamed to a worker.")
    shuffle: Literal["none", "files", "global"] = Field(
        "global", description="none: file order; files: shuffle shard order; global: full seeded row shuffle."
    )
    read_unit_mb: float = Field(
        4.0,
        gt=0,
        description="Target size of one Ray Data read task (in-memory MiB). Ray packs small shards into "
        "128 MiB units by default: one task, no parallelism, for a dataset of small shards.",
    )
    footer_readers: int = Field(
        2,
        ge=1,
        description="Actors Ray Data starts to read Parquet footers per epoch (its default, 32, "
        "costs seconds and dozens of processes on a small machine).",
    )
    equal_shards: bool = Field(
        True,
        description="Every training worker sees the same row count (synchronous training needs it; "
        "drops fewer than num_workers rows per epoch). false: every row exactly once.",
    )


# (n_layer, n_head, n_embd) per preset. GPT-2 sizes follow the GPT-2 paper; "tiny" and "small"
# train on a 2-core laptop in minutes.
MODEL_PRESETS: dict[str, tuple[int, int, int]] = {
    "tiny": (2, 2, 64),
    "small": (4, 4, 128),
    "gpt2": (12, 12, 768),
    "gpt2-medium": (24, 16, 1024),
    "gpt2-large": (36, 20, 1280),
    "gpt2-xl": (48, 25, 1600),
}


class ModelSize(Section):
    """A model size: a preset, optionally with any of its dimensions overridden."""

    preset: Literal["tiny", "small", "gpt2", "gpt2-medium", "gpt2-large", "gpt2-xl"] = "tiny"
    n_layer: int | None = Field(None, ge=1)
    n_head: int | None = Field(None, ge=1)
    n_embd: int | None = Field(None, ge=8)

    @property
    def dims(self) -> tuple[int, int, int]:
        """(n_layer, n_head, n_embd) after overrides."""
        layer, head, embd = MODEL_PRESETS[self.preset]
        return (self.n_layer or layer, self.n_head or head, self.n_embd or embd)

    @model_validator(mode="after")
    def _heads_divide(self) -> ModelSize:
        _, n_head, n_embd = self.dims
        if n_embd % n_head:
            raise ValueError(f"n_embd ({n_embd}) must be divisible by n_head ({n_head})")
        return self


FAMILY_OF_OBJECTIVE = {"clm": "gpt2", "mlm": "bert"}


class PretrainSpec(Section):
    """Language-model pretraining on Ray Train + DeepSpeed."""

    objective: Literal["clm", "mlm"] = Field("clm", description="clm: next-token; mlm: 15 % masking.")
    family: Literal["gpt2", "bert"] | None = Field(
        None, description="Model family; default gpt2 for clm, bert for mlm."
    )
    model: ModelSize = Field(default_factory=ModelSize)
    seq_len: int = Field(64, ge=8, description="Tokens per training sample (packed from the corpus).")
    mask_prob: float = Field(0.15, gt=0, lt=1, description="MLM: fraction of tokens masked.")
    num_workers: int = Field(2, ge=1)
    use_gpu: bool = False
    cpus_per_worker: float | None = Field(None, gt=0, description="Default: what ray.data_cpus leaves, split evenly.")
    zero_stage: Literal[0, 1, 2, 3] = 2
    offload_optimizer: bool = Field(False, description="ZeRO-Offload: optimizer state in CPU memory (GPU runs).")
    offload_params: bool = Field(False, description="ZeRO-3 only: parameters in CPU memory.")
    precision: Literal["fp32", "bf16"] = "fp32"
    micro_batch_size: int = Field(8, ge=1)
    global_batch_size: int = Field(16, ge=1)
    lr: float = Field(1e-3, gt=0)
    weight_decay: float = Field(0.01, ge=0)
    grad_clip: float = Field(1.0, ge=0, description="Max global gradient norm (0 = off).")
    warmup_steps: int = Field(10, ge=0)
    max_steps: int = Field(100, ge=1)
    log_every: int = Field(10, ge=1)
    checkpoint_every: int = Field(50, ge=1)
    keep_checkpoints: int = Field(2, ge=1)
    max_failures: int = Field(1, ge=0, description="Worker failures survived by restarting from the last checkpoint.")
    eval_batches: int = Field(8, ge=1, description="Held-out batches for perplexity / masked accuracy.")

    @property
    def model_family(self) -> str:
        return self.family or FAMILY_OF_OBJECTIVE[self.objective]

    @property
    def grad_accum_steps(self) -> int:
        return self.global_batch_size // (self.micro_batch_size * self.num_workers)

    @model_validator(mode="after")
    def _consistent(self) -> PretrainSpec:
        check_batch(self.global_batch_size, self.micro_batch_size, self.num_workers)
        if self.family and self.family != FAMILY_OF_OBJECTIVE[self.objective]:
            raise ValueError(
                f"family '{self.family}' does not train objective '{self.objective}' (clm trains gpt2, mlm trains bert)"
            )
        if self.offload_params and self.zero_stage != 3:
            raise ValueError("offload_params needs zero_stage 3")
        return self


class FinetuneSpec(Section):
    """Fine-tuning of our pretrained export or the offline MiniLM, on the captioned digits."""

    base: Literal["pretrain", "minilm"] = Field(
        "pretrain", description="pretrain: our export; minilm: the PyPI MiniLM."
    )
    task: Literal["caption", "classify"] | None = Field(
        None,
        description="caption: generate a digit's caption (causal LM); classify: caption -> digit (encoder). "
        "Default: caption for a causal base, classify for an encoder.",
    )
    mode: Literal["full", "freeze", "lora"] = "lora"
    freeze_layers: int = Field(0, ge=0, description="mode freeze: embeddings and the lower N layers stay fixed.")
    lora_r: int = Field(8, ge=1)
    lora_alpha: int = Field(16, ge=1)
    lora_dropout: float = Field(0.0, ge=0, lt=1)
    num_workers: int = Field(2, ge=1)
    zero_stage: Literal[0, 1, 2] = 2
    micro_batch_size: int = Field(8, ge=1)
    global_batch_size: int = Field(16, ge=1)
    lr: float = Field(1e-3, gt=0)
    warmup_steps: int = Field(5, ge=0)
    max_steps: int = Field(60, ge=1)
    seq_len: int = Field(24, ge=8, description="Tokens per example (prompt + caption, or caption).")
    log_every: int = Field(10, ge=1)
    checkpoint_every: int = Field(30, ge=1)
    keep_checkpoints: int = Field(2, ge=1)
    max_failures: int = Field(1, ge=0)
    eval_batches: int = Field(8, ge=1)

    @model_validator(mode="after")
    def _consistent(self) -> FinetuneSpec:
        check_batch(self.global_batch_size, self.micro_batch_size, self.num_workers)
        if self.base == "minilm" and self.task == "caption":
            raise ValueError("the MiniLM base is an encoder: it can classify, not generate captions")
        if self.mode == "freeze" and self.freeze_layers < 1:
            raise ValueError("mode 'freeze' needs freeze_layers >= 1")
        return self


class SearchDim(Section):
    """One dimension of a search space: a distribution to sample or values to try."""

    type: Literal["uniform", "loguniform", "int", "choice", "grid"]
    low: float | None = None
    high: float | None = None
    values: list[Any] | None = None

    @model_validator(mode="after")
    def _complete(self) -> SearchDim:
        if self.type in ("choice", "grid"):
            if not self.values:
                raise ValueError(f"a '{self.type}' dimension needs a non-empty 'values' list")
        else:
            if self.low is None or self.high is None or not self.low < self.high:
                raise ValueError(f"a '{self.type}' dimension needs low < high, got low={self.low}, high={self.high}")
            if self.type == "loguniform" and self.low <= 0:
                raise ValueError(f"a 'loguniform' dimension needs low > 0, got {self.low}")
        return self


class SweepSpec(Section):
    """A Ray Tune sweep: search space in YAML, scheduler, searcher, budget."""

    scheduler: Literal["fifo", "asha", "pbt"] = "asha"
    search_alg: Literal["random", "optuna"] = "random"
    num_samples: int = Field(4, ge=1, description="Trials (times the grid, if the space has grid dimensions).")
    max_concurrent_trials: int = Field(2, ge=1)
    cpus_per_trial: float = Field(0.5, gt=0)
    metric: str = "score"
    mode: Literal["min", "max"] = "max"
    max_iterations: int = Field(6, ge=1, description="Reports per trial; each is steps_per_iteration training steps.")
    steps_per_iteration: int = Field(40, ge=1)
    grace_period: int = Field(2, ge=1, description="ASHA: iterations before a trial can be stopped.")
    reduction_factor: float = Field(2, gt=1)
    perturbation_interval: int = Field(2, ge=1, description="PBT: iterations between exploit/explore.")
    top_k: int = Field(3, ge=1, description="Best checkpoints listed for the ensemble.")
    seed: int = 0
    search_space: dict[str, SearchDim] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _compatible(self) -> SweepSpec:
        has_grid = any(d.type == "grid" for d in self.search_space.values())
        if self.search_alg == "optuna" and self.scheduler == "pbt":
            raise ValueError("PBT mutates running trials itself: use search_alg 'random' with scheduler 'pbt'")
        if self.search_alg == "optuna" and has_grid:
            raise ValueError("optuna cannot search 'grid' dimensions: use 'choice' instead")
        if self.scheduler == "pbt" and not any(d.type != "grid" for d in self.search_space.values()):
            raise ValueError("PBT needs at least one non-grid dimension to mutate")
        return self


def _check_space(sweep: SweepSpec, allowed: set[str], structural: frozenset[str], what: str) -> None:
    unknown = sorted(set(sweep.search_space) - allowed)
    if unknown:
        raise ValueError(f"{what} cannot search {', '.join(unknown)}; searchable: {', '.join(sorted(allowed))}")
    mutable = [n for n, d in sweep.search_space.items() if d.type != "grid" and n not in structural]
    if sweep.scheduler == "pbt" and not mutable:
        raise ValueError(
            f"PBT in {what} needs a dimension it can mutate; {', '.join(sorted(structural))} change the "
            "network's shape and are only sampled once"
        )


GAN_SEARCHABLE = {"g_lr", "d_lr", "lr_ratio", "z_dim", "width", "batch_size", "beta1"}
FUSION_SEARCHABLE = {"operator", "image_lr", "text_lr", "head_lr", "freeze_text_iterations", "dim", "batch_size"}
FUSION_OPERATORS = ("weighted_sum", "concat", "gated", "cross_attention")
# Dimensions that shape the network: a trial samples them once; PBT never mutates them.
GAN_STRUCTURAL = frozenset({"z_dim", "width"})
FUSION_STRUCTURAL = frozenset({"operator", "dim"})


# Each family's sweep defaults; a spec that sets only some sweep keys keeps the rest of these.
GAN_SWEEP_DEFAULTS = {
    "metric": "fid",
    "mode": "min",
    "search_space": {
        "g_lr": {"type": "loguniform", "low": 1e-4, "high": 2e-3},
        "lr_ratio": {"type": "choice", "values": [0.5, 1.0, 2.0]},
    },
}
FUSION_SWEEP_DEFAULTS = {
    "metric": "accuracy",
    "mode": "max",
    "search_space": {
        "operator": {"type": "choice", "values": list(FUSION_OPERATORS)},
        "image_lr": {"type": "loguniform", "low": 1e-3, "high": 1e-2},
    },
}


def _merge_sweep_defaults(data: Any, defaults: dict) -> Any:
    if isinstance(data, dict):
        given = data.get("sweep") or {}
        if isinstance(given, dict):
            return {**data, "sweep": {**defaults, **given}}
    return data


class SweptSection(Section):
    """A model family with a ``sweep``: the family's sweep defaults fill what the spec leaves out,
    and its search space may only name the family's searchable dimensions.
    ``_sweep_family``: (name, sweep defaults, searchable, structural)."""

    _sweep_family: ClassVar = ("", {}, set(), frozenset())

    @model_validator(mode="before")
    @classmethod
    def _sweep_defaults(cls, data: Any) -> Any:
        return _merge_sweep_defaults(data, cls._sweep_family[1])

    @model_validator(mode="after")
    def _space(self):
        name, _, searchable, structural = self._sweep_family
        _check_space(self.sweep, searchable, structural, name)
        return self


class GanSpec(SweptSection):
    """DCGAN trained on the shard images; its hyperparameters are the sweep's defaults."""

    z_dim: int = Field(32, ge=1)
    width: int = Field(32, ge=4)
    g_lr: float = Field(2e-4, gt=0)
    d_lr: float = Field(2e-4, gt=0, description="Ignored when lr_ratio is set (then d_lr = g_lr × lr_ratio).")
    lr_ratio: float | None = Field(None, gt=0, description="TTUR: D/G learning-rate ratio.")
    beta1: float = Field(0.5, ge=0, lt=1)
    batch_size: int = Field(64, ge=2)
    eval_samples: int = Field(500, ge=16, description="Generated samples per Fréchet distance.")
    collapse_diversity: float = Field(
        0.25, ge=0, description="Stop a trial whose sample spread falls below this fraction of the real data's."
    )
    d_win_accuracy: float = Field(0.995, gt=0, le=1, description="Stop a trial whose D is at least this accurate ...")
    collapse_patience: int = Field(
        3, ge=1, description="... for this many consecutive reports (after the sweep's grace_period)."
    )
    sweep: SweepSpec = Field(default_factory=lambda: SweepSpec(**GAN_SWEEP_DEFAULTS))

    _sweep_family: ClassVar = ("the GAN sweep", GAN_SWEEP_DEFAULTS, GAN_SEARCHABLE, GAN_STRUCTURAL)


class FusionSpec(SweptSection):
    """Image + caption classifier; its hyperparameters are the sweep's defaults."""

    operator: Literal["weighted_sum", "concat", "gated", "cross_attention"] = "weighted_sum"
    text_encoder: Literal["tiny", "minilm"] = "tiny"
    dim: int = Field(64, ge=8)
    image_lr: float = Field(3e-3, gt=0)
    text_lr: float = Field(3e-3, gt=0)
    head_lr: float = Field(3e-3, gt=0)
    freeze_text_iterations: int = Field(0, ge=0, description="Iterations with the text encoder frozen first.")
    batch_size: int = Field(64, ge=2)
    max_text_tokens: int = Field(32, ge=4, le=512, description="Captions are cut to this many tokens.")
    sweep: SweepSpec = Field(default_factory=lambda: SweepSpec(**FUSION_SWEEP_DEFAULTS))

    _sweep_family: ClassVar = ("the fusion sweep", FUSION_SWEEP_DEFAULTS, FUSION_SEARCHABLE, FUSION_STRUCTURAL)

    @model_validator(mode="after")
    def _operators(self) -> FusionSpec:
        if "operator" in self.sweep.search_space:
            bad = [v for v in self.sweep.search_space["operator"].values or [] if v not in FUSION_OPERATORS]
            if bad:
                raise ValueError(f"unknown fusion operator(s) {bad}; allowed: {', '.join(FUSION_OPERATORS)}")
        return self


class EnsembleSpec(Section):
    """Which fusion classifiers form the served ensemble, and how their answers are combined."""

    strategy: Literal["mean", "weighted", "vote", "stacking"] = Field(
        "weighted",
        description="mean of probabilities | weighted mean (weights fitted on validation) | majority vote | "
        "stacking (a logistic-regression meta-model on the members' validation predictions)",
    )
    top_k: int = Field(2, ge=0, description="Members from the fusion sweep's top-k checkpoints.")
    bagging: int = Field(0, ge=0, description="Members trained on bootstrap resamples (in parallel on Ray).")
    bagging_iterations: int = Field(6, ge=1, description="Training iterations per bagged member.")
    members: list[str] = Field(
        default_factory=list,
        description="More members: exported fusion models (model.safetensors + config.json) or fusion-sweep checkpoints.",
    )
    language_models: list[str] = Field(
        default_factory=lambda: ["finetune"],
        description="Language models whose next-token log-probabilities are averaged: 'pretrain', 'finetune' "
        "(this experiment's exports) or HF export URIs; they must share a tokenizer.",
    )
    seed: int = 0

    @model_validator(mode="after")
    def _has_members(self) -> EnsembleSpec:
        if not (self.top_k or self.bagging or self.members):
            raise ValueError("an ensemble needs members: set top_k, bagging or members")
        return self


class ServeSpec(Section):
    """The Ray Serve application: one deployment per ensemble member behind an HTTP ingress."""

    host: str = Field("127.0.0.1", description="Where Serve's HTTP proxy listens (0.0.0.0 behind a load balancer).")
    port: int = Field(8000, ge=1, le=65535)
    route_prefix: str = Field("/", pattern=r"^/")
    replicas: int = Field(1, ge=1, description="Replicas per member deployment.")
    ingress_replicas: int = Field(1, ge=1)
    autoscale_max_replicas: int | None = Field(
        None, ge=1, description="Autoscale members between `replicas` and this (None: fixed)."
    )
    cpus_per_replica: float = Field(0.25, gt=0, description="Fractional CPUs, so an ensemble fits 2 cores.")
    max_ongoing_requests: int = Field(16, ge=1, description="Per replica: requests in flight at once.")
    max_queued_requests: int = Field(64, ge=1, description="Per deployment: waiting requests beyond this get 503.")
    max_batch_size: int = Field(16, ge=1, description="Dynamic batching in the members (@serve.batch).")
    batch_wait_ms: float = Field(5.0, ge=0, description="How long a member waits to fill a batch.")
    request_timeout_s: float = Field(30.0, gt=0, description="Per request, end to end.")
    max_request_bytes: int = Field(256 * 1024, ge=1024, description="Larger bodies get 413.")
    max_tokens: int = Field(128, ge=1, description="Upper bound on a completion's max_tokens.")
    auth_token_env: str = Field(
        "AIGC_SERVE_TOKEN", description="Bearer token for every /v1 route, read from this environment variable ..."
    )
    auth_token_file: str | None = Field(None, description="... or from this file. Neither set: no auth.")
    feedback_uri: str | None = Field(None, description="Where feedback shards go (default <root>/<name>/feedback).")

    @field_validator("auth_token_file")
    @classmethod
    def _abs(cls, v: str | None) -> str | None:
        return absolute_local(v) if v else v

    @model_validator(mode="after")
    def _batch_fits(self) -> ServeSpec:
        if self.max_batch_size > self.max_ongoing_requests:
            raise ValueError(
                f"max_batch_size ({self.max_batch_size}) cannot exceed max_ongoing_requests "
                f"({self.max_ongoing_requests}): a replica never holds enough requests to fill the batch"
            )
        if self.autoscale_max_replicas is not None and self.autoscale_max_replicas < self.replicas:
            raise ValueError(f"autoscale_max_replicas ({self.autoscale_max_replicas}) < replicas ({self.replicas})")
        return self


class FeedbackSpec(Section):
    """The closed loop: captured feedback -> training shards -> a fine-tuned ensemble."""

    steps: int = Field(40, ge=1, description="Fine-tuning steps per member on the feedback.")
    lr: float = Field(2e-3, gt=0)
    batch_size: int = Field(32, ge=2)
    feedback_fraction: float = Field(
        0.5, gt=0, le=1, description="Share of each batch drawn from the feedback; the rest replays training data."
    )


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


class ExperimentSpec(Section):
    """A whole experiment, from raw shards to a served ensemble."""

    name: str = Field("quickstart", pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$", description="Run name: names artifacts.")
    storage: StorageSpec = Field(default_factory=StorageSpec)
    ray: RaySpec = Field(default_factory=RaySpec)
    data: DataSpec = Field(default_factory=DataSpec)
    pretrain: PretrainSpec = Field(default_factory=PretrainSpec)
    finetune: FinetuneSpec = Field(default_factory=FinetuneSpec)
    gan: GanSpec = Field(default_factory=GanSpec)
    fusion: FusionSpec = Field(default_factory=FusionSpec)
    ensemble: EnsembleSpec = Field(default_factory=EnsembleSpec)
    serve: ServeSpec = Field(default_factory=ServeSpec)
    feedback: FeedbackSpec = Field(default_factory=FeedbackSpec)
    cluster: ClusterSpec = Field(default_factory=ClusterSpec)

    @property
    def data_uri(self) -> str:
        """Where this experiment's shards live."""
        return self.data.uri or self.storage.root.rstrip("/") + "/data"
