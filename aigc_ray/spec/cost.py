"""What a spec will cost, read from the spec alone: workers and CPUs/GPUs per stage, trials per
sweep, training steps. Printed by ``aigc validate`` beside "valid", before anything runs."""

from __future__ import annotations

import math

from .sections import ExperimentSpec
from .sweeps import SweepSpec


def sweep_trials(sweep: SweepSpec) -> int:
    """Trials a sweep starts: num_samples times the size of its grid."""
    grid = math.prod(len(d.values or ()) for d in sweep.search_space.values() if d.type == "grid")
    return sweep.num_samples * grid


def _training(name: str, section, extra: str) -> tuple[str, int]:
    gpus = f", {section.num_workers} GPU(s)" if section.use_gpu else ""
    cpus = (
        f"{section.cpus_per_worker:g} CPU each"
        if getattr(section, "cpus_per_worker", None)
        else "the CPUs ray.data_cpus leaves, split evenly"
    )
    sequences = section.max_steps * section.global_batch_size
    line = (
        f"{name:<13}{section.num_workers} Ray Train workers ({cpus}{gpus}), ZeRO-{section.zero_stage}, "
        f"{'bf16 where native' if section.precision == 'auto' else section.precision}, {section.max_steps:,} steps x {section.global_batch_size} sequences "
        f"({sequences:,} of {section.seq_len} tokens){extra}"
    )
    return line, section.max_steps


def spec_cost(spec: ExperimentSpec) -> list[str]:
    """One line per stage, then the total training steps (sweeps at most: ASHA stops trials early)."""
    lines, steps = [], 0
    for name, section, extra in (
        ("pretrain", spec.pretrain, f", {spec.pretrain.model.preset} {spec.pretrain.objective}"),
        ("finetune", spec.finetune, f", {spec.finetune.mode}"),
    ):
        line, n = _training(name, section, extra)
        lines.append(line)
        steps += n
    for family in ("gan", "video", "fusion"):
        if family == "video" and not spec.video.enabled:
            lines.append(f"{'sweep_' + family:<13}off (video.enabled is false)")
            continue
        s = getattr(spec, family).sweep
        trials = sweep_trials(s)
        per_trial = s.max_iterations * s.steps_per_iteration
        at_once = min(trials, s.max_concurrent_trials)
        lines.append(
            f"{'sweep_' + family:<13}{trials} trials ({s.scheduler}), {at_once} at once x {s.cpus_per_trial:g} CPU"
            + (f" + {s.gpus_per_trial:g} GPU" if s.gpus_per_trial else "")
            + ", "
            f"up to {per_trial:,} steps each ({trials * per_trial:,} in all)"
        )
        steps += trials * per_trial
    e = spec.ensemble
    members = e.top_k + e.bagging + e.boosting + len(e.members)
    lines.append(
        f"{'ensemble':<13}{members} members ({e.top_k} from the sweep, {e.bagging} bagged, {e.boosting} boosted, "
        f"{len(e.members)} listed), {e.strategy}"
    )
    v = spec.serve
    replicas = members * v.replicas + v.ingress_replicas + 3  # + generator, video generator, language model
    lines.append(
        f"{'serve':<13}up to {replicas} replicas x {v.cpus_per_replica:g} CPU "
        f"({replicas * v.cpus_per_replica:g} CPUs"
        + (f", {(replicas - v.ingress_replicas) * v.gpus_per_replica:g} GPUs" if v.gpus_per_replica else "")
        + f") on {v.host}:{v.port}"
    )
    lines.append(f"{'total':<13}at most {steps:,} training steps")
    return lines
