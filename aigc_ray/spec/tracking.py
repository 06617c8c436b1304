"""Where experiments are tracked: MLflow's runs, params and metrics (see ``aigc_ray.tracking``)."""

from __future__ import annotations

import os

from pydantic import Field, field_validator

from .base import Section

# What MLflow's clients accept as a tracking URI. A bare path is refused: MLflow would read it as
# its deprecated file store, where users of a SQLite default mean a database.
MLFLOW_SCHEMES = ("sqlite:///", "http://", "https://", "postgresql", "mysql", "mssql", "databricks", "file://")


class TrackingSpec(Section):
    """Every run, stage, sweep trial and training job recorded in MLflow, one MLflow experiment per
    spec ``name``. Nothing leaves the machine but what goes to the URI named here."""

    enabled: bool = Field(True, description="Record runs in MLflow (false: no MLflow import, nothing written).")
    mlflow_uri: str | None = Field(
        None,
        description="MLflow tracking URI (sqlite:///path.db, http://host:5000, postgresql://...); "
        "default: MLFLOW_TRACKING_URI, else sqlite:///./runs/mlflow.db beside the command's directory. "
        "On a multi-node cluster use a tracking server: a SQLite file is one machine's.",
    )

    @field_validator("mlflow_uri")
    @classmethod
    def _a_tracking_uri(cls, v: str | None) -> str | None:
        if v is None:
            return v
        if not v.startswith(MLFLOW_SCHEMES):
            raise ValueError(
                f"{v!r} is not an MLflow tracking URI; use sqlite:///path/mlflow.db, http(s)://host:port "
                "or a database URI (postgresql://..., mysql://...)"
            )
        return absolute_sqlite(v)


def absolute_sqlite(uri: str) -> str:
    """``sqlite:///relative.db`` resolved against the command's directory: Ray workers, which log
    from other directories, must open the same file."""
    if not uri.startswith("sqlite:///"):
        return uri
    path = uri.removeprefix("sqlite:///")
    return "sqlite:///" + os.path.abspath(os.path.expanduser(path)) if path and path != ":memory:" else uri
