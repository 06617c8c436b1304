"""The ensemble, its Serve deployment and the feedback fine-tune."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator

from .base import Section, absolute_local


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
    boosting: int = Field(
        0,
        ge=0,
        description="Members built by multi-class AdaBoost (SAMME): rounds in sequence, each member trained on the "
        "rows the committee so far gets wrong; they combine with their AdaBoost weights.",
    )
    boosting_candidates: int = Field(
        1,
        ge=1,
        description="Members trained per round in parallel (Ray tasks, other seeds); the lowest weighted error is kept.",
    )
    boosting_weighting: Literal["loss", "resample"] = Field(
        "resample",
        description="How a member sees the sample weights: a weighted resample of the training split, or a weighted loss.",
    )
    boosting_learning_rate: float = Field(1.0, gt=0, le=10, description="Shrinks each boosted member's weight.")
    boosting_iterations: int = Field(6, ge=1, description="Training iterations per boosted member.")
    members: list[str] = Field(
        default_factory=list,
        description="More members: exported fusion models (model.safetensors + config.json) or fusion-sweep checkpoints.",
    )
    language_models: list[str] = Field(
        default_factory=lambda: ["finetune"],
        description="Causal language models whose next-token log-probabilities are averaged: 'pretrain', "
        "'finetune' (this experiment's exports; skipped when not causal, and by default the causal pretraining "
        "stands in for a classifier fine-tuning) or HF export URIs; they must share a tokenizer.",
    )
    seed: int = 0

    @model_validator(mode="after")
    def _has_members(self) -> EnsembleSpec:
        if not (self.top_k or self.bagging or self.boosting or self.members):
            raise ValueError("an ensemble needs members: set top_k, bagging, boosting or members")
        if self.boosting and self.strategy == "vote":
            raise ValueError(
                "boosting with strategy 'vote': boosted members combine with their AdaBoost weights, which an "
                "unweighted vote ignores; use weighted, mean or stacking"
            )
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
    gpus_per_replica: float = Field(
        0.0,
        ge=0,
        description="GPUs per replica of each member, generator and language model (fractions share one GPU); "
        "0: the CPU. The ingress never takes one.",
    )
    max_ongoing_requests: int = Field(16, ge=1, description="Per replica: requests in flight at once.")
    max_queued_requests: int = Field(64, ge=1, description="Per deployment: waiting requests beyond this get 503.")
    max_batch_size: int = Field(
        16, ge=1, description="Dynamic batching of /v1/classify: requests the ingress sends each member as one call."
    )
    batch_wait_ms: float = Field(5.0, ge=0, description="How long the ingress waits to fill a batch.")
    request_timeout_s: float = Field(30.0, gt=0, description="Per request, end to end.")
    drain_check_s: float = Field(
        2.0,
        gt=0,
        description="A replica being stopped (scale-down, redeploy, shutdown) waits this long, then again until its "
        "requests in flight are done (Serve's graceful_shutdown_wait_loop_s): time for the routers to stop sending "
        "it work. A shutdown stops the ingress, then the members: two waits.",
    )
    max_request_bytes: int = Field(256 * 1024, ge=1024, description="Larger bodies get 413.")
    max_tokens: int = Field(128, ge=1, description="Upper bound on a completion's max_tokens.")
    max_images: int = Field(16, ge=1, description="Upper bound on images (or clips) per generation request.")
    max_prompt_chars: int = Field(200, ge=1, description="Longer prompts get 422.")
    auth_token_env: str = Field(
        "AIGC_SERVE_TOKEN", description="Bearer token for every /v1 route, read from this environment variable ..."
    )
    auth_token_file: str | None = Field(None, description="... or from this file. Neither set: no auth.")
    feedback_uri: str | None = Field(None, description="Where feedback shards go (default <root>/<name>/feedback).")
    feedback_memory_mb: float = Field(
        64.0,
        gt=0,
        description="Per ingress replica: the inputs (images, captions, prompts) of recent answers held so feedback "
        "can turn them into training data; beyond this the oldest answers' inputs are dropped first.",
    )
    feedback_answers: int = Field(
        10_000, ge=1, description="Per ingress replica: recent answers feedback can refer to; older ones get 404."
    )
    refuse_out_of_range: bool = Field(
        False,
        description="/v1/classify and /v1/explain refuse (422) an image with a pixel outside the range the members "
        "saw at that position in training (± out_of_range_tolerance): changes where the training images never "
        "varied, such as a digit's empty border, which small adversarial perturbations use.",
    )
    out_of_range_tolerance: float = Field(
        0.1, ge=0, le=1, description="How far outside the trained range a pixel may lie."
    )

    @field_validator("auth_token_file")
    @classmethod
    def _abs(cls, v: str | None) -> str | None:
        return absolute_local(v) if v else v

    def ingress_capacity(self, members: int) -> int:
        """Requests one ingress replica holds before it answers 503: what its members serve at once
        (each request waits on every member) plus the queue."""
        return self.max_ongoing_requests * self.replicas * max(1, members) + self.max_queued_requests

    @model_validator(mode="after")
    def _batch_fits(self) -> ServeSpec:
        if self.max_batch_size > self.ingress_capacity(1):
            raise ValueError(
                f"max_batch_size ({self.max_batch_size}) cannot exceed max_ongoing_requests x replicas + "
                f"max_queued_requests ({self.ingress_capacity(1)}): the ingress never holds enough requests "
                "to fill the batch"
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
