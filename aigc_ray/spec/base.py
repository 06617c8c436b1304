"""The spec's building blocks: the strict base model and helpers every section uses."""

from __future__ import annotations

import os

from pydantic import BaseModel, ConfigDict


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
