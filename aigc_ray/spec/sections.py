"""The experiment spec: one pydantic model per section, defaults that run on a 2-core laptop.

Every model forbids unknown keys, so a typo in YAML is an error instead of a silent default.
The sections live in per-family modules; this one assembles them and re-exports their names.
"""

from __future__ import annotations

from pydantic import Field, model_validator

from .base import Section, absolute_local, check_batch
from .cluster import K8S_QUANTITY, ClusterSpec
from .data import CaptionNoise, DataSpec, RaySpec, SplitFractions, StorageSpec
from .robustness import RobustnessSpec
from .safety import SafetySpec
from .serving import EnsembleSpec, FeedbackSpec, ServeSpec
from .sweeps import (
    FUSION_OPERATORS,
    FUSION_SEARCHABLE,
    FUSION_STRUCTURAL,
    GAN_SEARCHABLE,
    GAN_STRUCTURAL,
    GENERATORS,
    FusionSpec,
    GanSpec,
    SearchDim,
    SweepSpec,
    VideoSpec,
)
from .tracking import TrackingSpec
from .training import FAMILY_OF_OBJECTIVE, MODEL_PRESETS, FinetuneSpec, ModelSize, PretrainSpec, TrainingSpec

__all__ = [
    "FAMILY_OF_OBJECTIVE",
    "FUSION_OPERATORS",
    "FUSION_SEARCHABLE",
    "FUSION_STRUCTURAL",
    "GAN_SEARCHABLE",
    "GAN_STRUCTURAL",
    "GENERATORS",
    "K8S_QUANTITY",
    "MODEL_PRESETS",
    "CaptionNoise",
    "ClusterSpec",
    "DataSpec",
    "EnsembleSpec",
    "ExperimentSpec",
    "FeedbackSpec",
    "FinetuneSpec",
    "FusionSpec",
    "GanSpec",
    "ModelSize",
    "PretrainSpec",
    "TrackingSpec",
    "RobustnessSpec",
    "SafetySpec",
    "TrainingSpec",
    "RaySpec",
    "SearchDim",
    "Section",
    "ServeSpec",
    "SplitFractions",
    "StorageSpec",
    "SweepSpec",
    "VideoSpec",
    "absolute_local",
    "check_batch",
]


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
    video: VideoSpec = Field(default_factory=VideoSpec)
    ensemble: EnsembleSpec = Field(default_factory=EnsembleSpec)
    serve: ServeSpec = Field(default_factory=ServeSpec)
    feedback: FeedbackSpec = Field(default_factory=FeedbackSpec)
    cluster: ClusterSpec = Field(default_factory=ClusterSpec)
    tracking: TrackingSpec = Field(default_factory=TrackingSpec)
    safety: SafetySpec = Field(default_factory=SafetySpec)
    robustness: RobustnessSpec = Field(default_factory=RobustnessSpec)

    @model_validator(mode="after")
    def _augmentation_has_a_generator(self) -> ExperimentSpec:
        if (
            self.fusion.max_augment_ratio > 0
            and self.fusion.augment_generator is None
            and self.gan.condition != "caption"
        ):
            raise ValueError(
                "fusion augmentation draws labelled samples from this experiment's GAN, which must then be "
                "text-to-image: set gan.condition: caption (or point fusion.augment_generator at one)"
            )
        return self
