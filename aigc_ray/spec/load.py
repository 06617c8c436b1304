"""Loading the spec from YAML: duplicate-key detection, --set overrides, readable errors, hashing."""

from __future__ import annotations

import difflib
import hashlib
import json
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from .sections import ExperimentSpec
from .training import positions_problem


class SpecError(ValueError):
    """The spec is invalid. ``problems`` holds one line per fault: dotted path, bad value, what is allowed."""

    def __init__(self, source: str, problems: list[str]):
        self.source = source
        self.problems = problems
        lines = "\n".join(f"  - {p}" for p in problems)
        super().__init__(f"{source}: {len(problems)} problem(s) in the experiment spec:\n{lines}")


def check_fits_positions(config: dict, seq_len: int, field: str, where: str) -> None:
    """``training.positions_problem`` for a base the spec could not read when it was loaded (on
    S3), at the stage's start: SpecError names the field and the limit."""
    problem = positions_problem(config, seq_len, field, where)
    if problem:
        raise SpecError(where, [problem])


class _UniqueKeyLoader(yaml.SafeLoader):
    """A SafeLoader that refuses duplicate keys: PyYAML would silently keep the last one."""


def _construct_mapping(loader: _UniqueKeyLoader, node: yaml.MappingNode, deep: bool = False) -> dict:
    seen: dict[Any, int] = {}
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        if key in seen:
            raise yaml.constructor.ConstructorError(
                None, None, f"duplicate key {key!r} (first on line {seen[key] + 1})", key_node.start_mark
            )
        seen[key] = key_node.start_mark.line
    return loader.construct_mapping(node, deep=deep)


_UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


def parse_yaml(text: str, source: str) -> dict:
    """Parse YAML text into a mapping; raises SpecError naming the line of a syntax fault or duplicate key."""
    try:
        data = yaml.load(text, Loader=_UniqueKeyLoader)  # noqa: S506 - SafeLoader subclass
    except yaml.YAMLError as exc:
        raise SpecError(source, [f"not valid YAML: {exc}"]) from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise SpecError(source, [f"the top level must be a mapping of sections, got {type(data).__name__}"])
    return data


def apply_overrides(raw: dict, overrides: list[str], source: str) -> dict:
    """Apply ``a.b=c`` overrides to a raw mapping; values are parsed as YAML scalars/lists."""
    problems = []
    for item in overrides:
        path, sep, value = item.partition("=")
        if not sep or not path.strip():
            problems.append(f"--set {item!r}: expected KEY.PATH=VALUE, e.g. data.seed=3")
            continue
        keys = path.strip().split(".")
        node = raw
        for depth, key in enumerate(keys[:-1]):
            child = node.setdefault(key, {})
            if not isinstance(child, dict):
                problems.append(f"--set {item!r}: {'.'.join(keys[: depth + 1])} is a value, not a section")
                break
            node = child
        else:
            node[keys[-1]] = yaml.safe_load(value) if value.strip() else ""
    if problems:
        raise SpecError(source, problems)
    return raw


def _dotted(loc: tuple) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "<root>"


def _model_at(loc: tuple) -> type[BaseModel] | None:
    """The pydantic model that owns the field at ``loc`` (for listing allowed keys)."""
    model: type[BaseModel] | None = ExperimentSpec
    for part in loc[:-1]:
        if model is None or not isinstance(part, str) or part not in model.model_fields:
            return None
        ann = model.model_fields[part].annotation
        model = ann if isinstance(ann, type) and issubclass(ann, BaseModel) else None
    return model


def describe_errors(exc: ValidationError) -> list[str]:
    """One readable line per pydantic error: dotted path, the bad value, and what is allowed."""
    lines = []
    for err in exc.errors(include_url=False):
        loc = tuple(err["loc"])
        path = _dotted(loc)
        if err["type"] == "extra_forbidden":
            owner = _model_at(loc)
            allowed = sorted(owner.model_fields) if owner else []
            hint = difflib.get_close_matches(str(loc[-1]), allowed, n=1)
            did_you_mean = f"; did you mean '{hint[0]}'?" if hint else ""
            lines.append(f"{path}: unknown key{did_you_mean} (allowed: {', '.join(allowed)})")
            continue
        value = err.get("input")
        if not loc or (err["type"] == "value_error" and isinstance(value, dict)):
            # a check across sections, or across a section's keys: the message names them
            lines.append(f"{path if loc else 'spec'}: {err['msg'].removeprefix('Value error, ')}")
            continue
        shown = json.dumps(value, default=str)
        shown = shown if len(shown) <= 120 else shown[:117] + "..."
        lines.append(f"{path} = {shown}: {err['msg']}")
    return lines


def build_spec(raw: dict, source: str = "<spec>") -> ExperimentSpec:
    """Validate a raw mapping into an ExperimentSpec; raises SpecError listing every problem."""
    try:
        return ExperimentSpec.model_validate(raw)
    except ValidationError as exc:
        raise SpecError(source, describe_errors(exc)) from None


def load_spec(path: str | Path | None, overrides: list[str] | None = None) -> ExperimentSpec:
    """Load a spec file (or the defaults when ``path`` is None) and apply ``--set`` overrides."""
    source = str(path) if path else "<defaults>"
    raw: dict = {}
    if path:
        p = Path(path)
        if not p.is_file():
            raise SpecError(source, [f"spec file not found: {p}"])
        raw = parse_yaml(p.read_text(), source)
    raw = apply_overrides(raw, overrides or [], source)
    return build_spec(raw, source)


def spec_hash(spec: ExperimentSpec, *sections: str) -> str:
    """A stable hash of the whole spec, or of the named sections only (what a stage depends on)."""
    dumped = spec.model_dump(mode="json")
    if sections:
        dumped = {name: dumped[name] for name in sections}
    canonical = json.dumps(dumped, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


def spec_to_yaml(spec: ExperimentSpec) -> str:
    """The fully resolved spec (defaults filled in) as YAML."""
    return yaml.safe_dump(spec.model_dump(mode="json"), sort_keys=False)
