"""Swept model families (GAN, fusion, video): their hyperparameters and their Ray Tune sweeps."""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from pydantic import Field, model_validator

from .base import Section


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
    cpus_per_trial: float = Field(
        0.5,
        gt=0,
        description="CPUs Ray reserves per trial; a trial runs one torch thread per whole CPU (at least one), "
        "and at the sweep's end also the threads of its trials that ended (not under PBT).",
    )
    gpus_per_trial: float = Field(
        0.0, ge=0, description="GPUs per trial (fractions share one); 0: the CPU. Bagging tasks take the fusion's."
    )
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


GAN_SEARCHABLE = {
    "g_lr",
    "d_lr",
    "lr_ratio",
    "z_dim",
    "width",
    "batch_size",
    "beta1",
    "generator",
    "style_dim",
    "mixing_prob",
    "mismatch_weight",
    "class_weight",
}
FUSION_SEARCHABLE = {
    "operator",
    "image_lr",
    "text_lr",
    "head_lr",
    "freeze_text_iterations",
    "dim",
    "batch_size",
    "augment_ratio",
    "adversarial_epsilon",
    "adversarial_fraction",
}
VIDEO_SEARCHABLE = {"g_lr", "d_lr", "lr_ratio", "z_dim", "width", "batch_size", "beta1"}
FUSION_OPERATORS = ("weighted_sum", "concat", "gated", "cross_attention")
GENERATORS = ("dcgan", "style")
# Dimensions that shape the network: a trial samples them once; PBT never mutates them.
# (class_weight: D has a class head only when it is above 0)
GAN_STRUCTURAL = frozenset({"z_dim", "width", "generator", "style_dim", "class_weight"})
FUSION_STRUCTURAL = frozenset({"operator", "dim"})
VIDEO_STRUCTURAL = frozenset({"z_dim", "width"})


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
VIDEO_SWEEP_DEFAULTS = {
    "metric": "frame_fid",
    "mode": "min",
    "num_samples": 2,
    "search_space": {"g_lr": {"type": "loguniform", "low": 2e-4, "high": 2e-3}},
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
    precision: Literal["fp32", "bf16", "auto"] = Field(
        "fp32",
        description="The trials' training steps: bf16 under torch.autocast (weights and optimizer stay float32; "
        "evaluation runs in float32). auto: bf16 where the trial's GPU or CPU computes it natively, else fp32.",
    )
    # Settings of the section that are not a trial's (data building, stopping rules, lineage).
    _not_trial_settings: ClassVar[frozenset[str]] = frozenset()

    def trial_config(self) -> dict:
        """A trial's starting config: the section's model and training settings, and the sweep's
        budget and seed (the search space then overrides what it searches)."""
        budget = self.sweep.model_dump(include={"max_iterations", "steps_per_iteration", "seed"})
        return {**self.model_dump(exclude={"sweep", *self._not_trial_settings}), **budget}

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
    """The image GAN trained on the shard images; its hyperparameters are the sweep's defaults.

    ``generator`` picks the architecture (DCGAN or style-based); ``condition: caption`` makes it
    text-to-image: G is conditioned on the caption's MiniLM embedding and D judges image–caption
    agreement by projection."""

    generator: Literal["dcgan", "style"] = "dcgan"
    condition: Literal["none", "caption"] = Field(
        "none", description="'caption': text-to-image, conditioned on the caption's sentence embedding."
    )
    cond_dim: int = Field(32, ge=1, description="Width the caption embedding is projected to (condition: caption).")
    mismatch_weight: float = Field(
        1.0, ge=0, description="Weight of D's loss on real images paired with a wrong caption (condition: caption)."
    )
    class_weight: float = Field(
        1.0,
        ge=0,
        description="condition: caption: weight of an auxiliary classification loss (AC-GAN): D also names the "
        "class of each real image, and G is trained so that D names the class its caption asks for. It teaches "
        "the generators to draw the named class sooner (the style generator most). 0: off.",
    )
    style_dim: int = Field(64, ge=4, description="Style generator: width of the mapping network's style vector w.")
    mapping_layers: int = Field(3, ge=1, le=8, description="Style generator: layers of the mapping network z -> w.")
    mixing_prob: float = Field(
        0.5, ge=0, le=1, description="Style generator: share of training batches generated with two mixed styles."
    )
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
    _not_trial_settings: ClassVar = frozenset({"collapse_diversity", "d_win_accuracy", "collapse_patience"})

    @model_validator(mode="after")
    def _generators(self) -> GanSpec:
        if "generator" in self.sweep.search_space:
            bad = [v for v in self.sweep.search_space["generator"].values or [] if v not in GENERATORS]
            if bad:
                raise ValueError(f"unknown generator(s) {bad}; allowed: {', '.join(GENERATORS)}")
        return self


# fusion.adversarial's keys and the flat settings they stand for.
ADVERSARIAL_KEYS = {"epsilon": "adversarial_epsilon", "steps": "adversarial_steps", "fraction": "adversarial_fraction"}


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
    augment_ratio: float = Field(
        0.0,
        ge=0,
        le=4,
        description="Generated, labelled samples mixed into training per real sample (0: real data only).",
    )
    augment_generator: str | None = Field(
        None,
        description="Text-to-image generator that makes them: a GAN sweep's best/ folder "
        "(default: this experiment's GAN sweep, which must then have condition: caption).",
    )
    real_fraction: float = Field(
        1.0, gt=0, le=1, description="Share of the real training split used (the augmentation benchmark's knob)."
    )
    adversarial_epsilon: float = Field(
        0.0,
        ge=0,
        le=1,
        description="Adversarial training (Madry): this share of each batch's images replaced by PGD examples "
        "within this L∞ budget (pixels in [0, 1]; 0: off). A sweep dimension like any other.",
    )
    adversarial_steps: int = Field(
        1, ge=1, le=50, description="PGD steps per adversarial example (1: FGSM from a random start, the cheap one)."
    )
    adversarial_fraction: float = Field(0.5, gt=0, le=1, description="Share of each batch made adversarial.")
    robust_epsilon: float = Field(
        0.0,
        ge=0,
        le=1,
        description="ε at which every trial reports robust_accuracy (10-step PGD on up to 256 validation rows; 0: "
        "not measured). A sweep may then rank by it (metric: robust_accuracy).",
    )
    sweep: SweepSpec = Field(default_factory=lambda: SweepSpec(**FUSION_SWEEP_DEFAULTS))

    _sweep_family: ClassVar = ("the fusion sweep", FUSION_SWEEP_DEFAULTS, FUSION_SEARCHABLE, FUSION_STRUCTURAL)
    _not_trial_settings: ClassVar = frozenset({"augment_generator", "real_fraction"})

    @property
    def max_augment_ratio(self) -> float:
        """The largest augment_ratio any trial can use: the default, or the search space's bound/values."""
        ratios = [float(self.augment_ratio)]
        dim = self.sweep.search_space.get("augment_ratio")
        if dim is not None:
            ratios += [float(v) for v in dim.values] if dim.type in ("choice", "grid") else [float(dim.high)]
        return max(ratios)

    @model_validator(mode="before")
    @classmethod
    def _adversarial_block(cls, data: Any) -> Any:
        """``adversarial: {epsilon, steps, fraction}`` is the spelled-out form of the flat
        ``adversarial_*`` keys (which a search space names as ``adversarial.epsilon`` too): both
        validate to the same section, so the stage fingerprints do not depend on the spelling."""
        if not isinstance(data, dict):
            return data
        data = dict(data)
        block = data.pop("adversarial", None)
        if block is not None:
            if not isinstance(block, dict):
                raise ValueError(f"adversarial must be a mapping {{epsilon, steps, fraction}}, got {block!r}")
            unknown = sorted(set(block) - set(ADVERSARIAL_KEYS))
            if unknown:
                raise ValueError(f"adversarial: unknown key(s) {unknown}; allowed: {', '.join(ADVERSARIAL_KEYS)}")
            for key, value in block.items():
                flat = ADVERSARIAL_KEYS[key]
                if flat in data and data[flat] != value:
                    raise ValueError(f"adversarial.{key} ({value!r}) and {flat} ({data[flat]!r}) disagree; give one")
                data[flat] = value
        sweep = data.get("sweep")
        if isinstance(sweep, dict) and isinstance(sweep.get("search_space"), dict):
            space = {}
            for name, dim in sweep["search_space"].items():
                head, _, key = name.partition(".")
                space[ADVERSARIAL_KEYS[key] if head == "adversarial" and key in ADVERSARIAL_KEYS else name] = dim
            data["sweep"] = {**sweep, "search_space": space}
        return data

    @model_validator(mode="after")
    def _robust_metric_is_measured(self) -> FusionSpec:
        if self.sweep.metric == "robust_accuracy" and self.robust_epsilon == 0:
            raise ValueError(
                "sweep.metric robust_accuracy is measured only with fusion.robust_epsilon > 0 (the PGD budget "
                "trials are scored at), e.g. 0.1"
            )
        return self

    @model_validator(mode="after")
    def _operators(self) -> FusionSpec:
        if "operator" in self.sweep.search_space:
            bad = [v for v in self.sweep.search_space["operator"].values or [] if v not in FUSION_OPERATORS]
            if bad:
                raise ValueError(f"unknown fusion operator(s) {bad}; allowed: {', '.join(FUSION_OPERATORS)}")
        return self


class VideoSpec(SweptSection):
    """Short clips of a digit drifting and bouncing in a small frame (built offline from the
    embedded digits, deterministic in the seed) and the video GAN swept on them."""

    enabled: bool = Field(True, description="Build the clips and sweep the video GAN in `aigc run`.")
    clips: int = Field(
        600, ge=16, description="Clips to build (one per source image, taken in a seeded order and cycled)."
    )
    frames: int = Field(8, ge=4, le=32)
    frame_size: int = Field(16, ge=12, le=64, description="Square frame side in pixels; the 8x8 digit moves inside.")
    max_speed: float = Field(1.5, gt=0, description="Pixels per frame, at most, along each axis.")
    seed: int = 0
    rows_per_shard: int = Field(128, ge=1)
    z_dim: int = Field(32, ge=1)
    width: int = Field(32, ge=4)
    g_lr: float = Field(5e-4, gt=0)
    d_lr: float = Field(5e-4, gt=0, description="Ignored when lr_ratio is set (then d_lr = g_lr × lr_ratio).")
    lr_ratio: float | None = Field(None, gt=0)
    beta1: float = Field(0.5, ge=0, lt=1)
    batch_size: int = Field(32, ge=2)
    eval_samples: int = Field(128, ge=16, description="Generated clips per frame Fréchet distance.")
    sweep: SweepSpec = Field(default_factory=lambda: SweepSpec(**VIDEO_SWEEP_DEFAULTS))

    _sweep_family: ClassVar = ("the video sweep", VIDEO_SWEEP_DEFAULTS, VIDEO_SEARCHABLE, VIDEO_STRUCTURAL)
    # the clip-building settings (``seed`` too: a trial's seed is the sweep's)
    _not_trial_settings: ClassVar = frozenset({"enabled", "clips", "max_speed", "seed", "rows_per_shard"})

    @model_validator(mode="after")
    def _shape(self) -> VideoSpec:
        # The video GAN doubles time and space twice from a 1/4-size volume.
        for name in ("frames", "frame_size"):
            if getattr(self, name) % 4:
                raise ValueError(f"{name} ({getattr(self, name)}) must be a multiple of 4 for the video GAN")
        return self
