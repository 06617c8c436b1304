"""The safety filter on prompts and generated text (see ``aigc_ray.safety``)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator

from .base import Section

# What the filter can score: the word/pattern list covers all of them, the packaged classifier
# (offensive language) adds its score to the first two.
SAFETY_CATEGORIES = ("profanity", "harassment", "violence", "self-harm", "sexual")


class SafetySpec(Section):
    """A moderation step on prompts (completions, text-to-image) and on generated text."""

    enabled: bool = Field(True, description="Moderate prompts and generated text.")
    categories: list[str] = Field(
        default_factory=lambda: list(SAFETY_CATEGORIES),
        description=f"Categories that flag a text; of {', '.join(SAFETY_CATEGORIES)}.",
    )
    threshold: float = Field(
        0.5, gt=0, le=1, description="A category flags a text when its score (0-1) reaches this value."
    )
    action: Literal["block", "redact", "log"] = Field(
        "block",
        description="What a flagged text gets: block (a prompt: 400; an output: replaced), redact (the flagged "
        "words masked) or log (passed on, recorded).",
    )
    classifier: bool = Field(
        True,
        description="Add the packaged offensive-language classifier (alt-profanity-check, offline) to the "
        "word/pattern list; false: the list alone.",
    )

    @field_validator("categories")
    @classmethod
    def _known_categories(cls, v: list[str]) -> list[str]:
        unknown = [c for c in v if c not in SAFETY_CATEGORIES]
        if unknown:
            raise ValueError(f"unknown categories {unknown}; allowed: {', '.join(SAFETY_CATEGORIES)}")
        if not v:
            raise ValueError("needs at least one category (to turn the filter off, set safety.enabled: false)")
        return v
