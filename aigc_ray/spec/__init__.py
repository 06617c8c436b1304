"""The experiment spec: pydantic sections, YAML loading, overrides and hashing."""

from .load import SpecError, apply_overrides, build_spec, describe_errors, load_spec, spec_hash, spec_to_yaml
from .sections import DataSpec, ExperimentSpec, RaySpec, StorageSpec

__all__ = [
    "DataSpec",
    "ExperimentSpec",
    "RaySpec",
    "SpecError",
    "StorageSpec",
    "apply_overrides",
    "build_spec",
    "describe_errors",
    "load_spec",
    "spec_hash",
    "spec_to_yaml",
]
