"""Adversarial robustness of the served classifiers (see ``aigc_ray.models.robustness``)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator

from .base import Section


class RobustnessSpec(Section):
    """FGSM and PGD (L∞) on the image input of each ensemble member and of the ensemble, the
    caption held as given and replaced by one that names nothing."""

    enabled: bool = Field(False, description="Run the robustness stage after the ensemble in `aigc run`.")
    epsilons: list[float] = Field(
        default_factory=lambda: [0.0, 0.02, 0.05, 0.1, 0.2],
        description="L∞ budgets on pixels in [0, 1]; 0 is the clean accuracy.",
    )
    attacks: list[Literal["fgsm", "pgd"]] = Field(default_factory=lambda: ["fgsm", "pgd"], min_length=1)
    pgd_steps: int = Field(10, ge=1, le=1000)
    pgd_step_size: float | None = Field(None, gt=0, le=1, description="Default: 2.5 × ε / pgd_steps.")
    restarts: int = Field(1, ge=1, le=100, description="PGD's random restarts (an example fooled by any counts).")
    examples: int = Field(500, ge=1, description="Test rows attacked (the first ones of the split).")
    seed: int = 0

    @field_validator("epsilons")
    @classmethod
    def _budgets(cls, v: list[float]) -> list[float]:
        bad = [e for e in v if not 0 <= e <= 1]
        if bad:
            raise ValueError(f"every epsilon must be in [0, 1] (pixels are in [0, 1]), got {bad}")
        if not v:
            raise ValueError("needs at least one epsilon")
        return sorted(set(v))
