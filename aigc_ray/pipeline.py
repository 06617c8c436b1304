"""``aigc run``: the stages as a DAG, each skipped when its output already exists for the same
inputs, then a run report.

    data ─▶ stream        (a smoke check: one epoch through Ray Data, when the data changed)
    data ─▶ pretrain ─▶ finetune ─┐
    data ─▶ sweep_gan ─┬──────────┤
    data ─▶ sweep_video ──────────┤   (when video.enabled)
    data ─▶ sweep_fusion ◀┘ ──────┴─▶ ensemble ─▶ robustness ─▶ serve
                                   (GAN samples, when fusion.augment_ratio > 0; robustness when enabled)

A stage is up to date when its artifact's manifest exists, was made from the same spec
sections (its recorded spec hash) and every parent artifact it recorded still has the
fingerprint it recorded — decided from the lineage manifests, never from file names. The GAN
and fusion sweeps do not depend on each other; they run one after the other because on a small
machine they would only compete for the same cores.
"""

from __future__ import annotations

import contextlib
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial

from . import layout
from .manifest import read_manifest
from .spec import ExperimentSpec, spec_hash
from .storage import Storage
from .tracking import stage_events, tracked_run

FINGERPRINT = re.compile(r"[0-9a-f]{64}")


def freshness(storage: Storage, uri: str, expected_spec_hash: str) -> tuple[bool, str]:
    """(up to date?, why) for the artifact at ``uri``."""
    manifest = read_manifest(storage, uri)
    if manifest is None:
        return False, "not built yet"
    if manifest.spec_hash != expected_spec_hash:
        return False, "its spec sections changed"
    for parent, recorded in sorted(manifest.inputs.items()):
        if not FINGERPRINT.fullmatch(recorded):
            continue  # a checkpoint folder or a package version: not an artifact to compare
        current = read_manifest(storage, parent)
        if current is None or current.fingerprint != recorded:
            return False, f"its input {parent} changed"
    return True, f"up to date ({manifest.fingerprint[:12]})"


@dataclass
class RunOptions:
    """What the command line asks of ``aigc run``."""

    force: tuple[str, ...] = ()  # stages to run even when up to date
    skip_serve: bool = False  # stop after the ensemble
    keep_serving: bool = False  # leave the Serve app up after the demo requests
    workers: int = 0  # the stream check's Ray Train workers (0: the driver reads the epoch)


@dataclass
class RunContext:
    """What the stages of one run share: the options, and what earlier stages found."""

    options: RunOptions
    data_written: bool = False  # the data stage wrote something (so the stream check runs)
    log: Callable[..., None] = print  # the stages' own lines (the terminal's, while the rest goes to logs)


@dataclass
class Stage:
    name: str
    needs: tuple[str, ...]
    run: Callable[[ExperimentSpec, Storage, RunContext], dict]  # (spec, storage, context) -> summary
    output: Callable[[ExperimentSpec], str] | None = None  # its artifact; None: always runs
    sections: tuple[str, ...] = ()  # the spec sections its artifact's spec hash covers


@dataclass
class StageResult:
    name: str
    status: str  # ran | skipped | failed
    seconds: float
    why: str = ""
    summary: dict = field(default_factory=dict)


def _data(spec, storage, ctx):
    from .data.build import build_data

    built = build_data(spec, storage, log=ctx.log)  # checks its own parts: only what changed is rebuilt
    ctx.data_written = bool(built.written)
    rows = {"multimodal_rows": built.multimodal.meta.get("rows"), "corpus_rows": built.corpus.meta.get("rows")}
    return {"written": built.written, "uri": built.root, "up_to_date": not built.written, **rows}


def _stream(spec, storage, ctx):
    from .train.feed import stream_epoch

    seen = stream_epoch(spec, storage, "train", ctx.options.workers, log=ctx.log)
    return {"rows": seen.rows, "rows_per_s": seen.rows / max(seen.seconds, 1e-9)} if seen else {}


def _pretrain(spec, storage, ctx):
    from .train.pretrain import pretrain

    return {"uri": pretrain(spec, storage, log=ctx.log).export_uri}


def _finetune(spec, storage, ctx):
    from .train.finetune import finetune

    uri, evaluation = finetune(spec, storage, log=ctx.log)
    return {"uri": uri, "eval": evaluation}


def _sweep(family):
    def run(spec, storage, ctx):
        from .tune.sweep import run_sweep

        result = run_sweep(family, spec, storage, log=ctx.log)
        metric = getattr(spec, family).sweep.metric
        return {"uri": result.uri, metric: result.best[metric], "trials": result.trials}

    return run


def _ensemble(spec, storage, ctx):
    from .ensemble.build import build_ensemble

    report = build_ensemble(spec, storage, log=ctx.log)
    return {"uri": report.uri, "test": report.metrics["test"]["ensemble"]}


def _robustness(spec, storage, ctx):
    from .ensemble.robustness import ENSEMBLE, evaluate_robustness

    report = evaluate_robustness(spec, storage, log=ctx.log)
    vague = report.results["vague"]  # the image alone: what the attack measures
    numbers = {f"{a}_eps{e:g}": acc for a, by_who in vague.items() for e, acc in by_who[ENSEMBLE].items()}
    return {"uri": report.uri, **numbers}


def _serve(spec, storage, ctx):
    from .serve.demo import serve_and_ask

    return {"answers": serve_and_ask(spec, storage, keep_serving=ctx.options.keep_serving, log=ctx.log)}


STAGES = (
    Stage("data", (), _data),
    Stage("stream", ("data",), _stream),
    Stage("pretrain", ("data",), _pretrain, layout.pretrain_export, ("data", "pretrain")),
    Stage("finetune", ("pretrain",), _finetune, layout.finetune_export, ("data", "finetune")),
    Stage("sweep_gan", ("data",), _sweep("gan"), partial(layout.sweep_results, family="gan"), ("data", "gan")),
    Stage("sweep_video", ("data",), _sweep("video"), partial(layout.sweep_results, family="video"), ("data", "video")),
    # after sweep_gan: with fusion.augment_ratio > 0 its generator makes training samples
    Stage(
        "sweep_fusion",
        ("data", "sweep_gan"),
        _sweep("fusion"),
        partial(layout.sweep_results, family="fusion"),
        ("data", "fusion"),
    ),
    Stage(
        "ensemble",
        ("finetune", "sweep_gan", "sweep_video", "sweep_fusion"),
        _ensemble,
        layout.ensemble_dir,
        ("data", "fusion", "ensemble"),
    ),
    Stage(
        "robustness",
        ("ensemble",),
        _robustness,
        layout.robustness_dir,
        ("data", "fusion", "ensemble", "robustness"),
    ),
    Stage("serve", ("ensemble", "robustness"), _serve),
)
STAGE_NAMES = tuple(s.name for s in STAGES)


def run_pipeline(
    spec: ExperimentSpec,
    storage: Storage,
    options: RunOptions | None = None,
    log=print,
    stage_log: Callable[[str], contextlib.AbstractContextManager] | None = None,
) -> list[StageResult]:
    """Run every stage that is not up to date, in dependency order (inside a Ray session the
    caller opened). A failing stage stops the run; ValueError for an unknown stage in ``force``.
    ``log``: the run's and the stages' own lines; ``stage_log(name)``: a context each stage runs
    in (the CLI's sends everything else a stage prints to its log file)."""
    options = options or RunOptions()
    force = options.force
    unknown = set(force) - set(STAGE_NAMES)
    if unknown:
        raise ValueError(f"unknown stage(s) {sorted(unknown)}; stages: {', '.join(STAGE_NAMES)}")
    ctx = RunContext(options, log=log)
    results: list[StageResult] = []
    stages = [s for s in STAGES if not (options.skip_serve and s.name == "serve")]
    # One MLflow run for the whole `aigc run`, a child run per stage that runs (see tracking.py)
    with tracked_run(spec, "run", params={"force": ",".join(force), "stages": ",".join(s.name for s in stages)}):
        for i, stage in enumerate(stages, 1):
            _run_stage(spec, storage, stage, f"[{i}/{len(stages)}] {stage.name}", ctx, results, stage_log)
    return results


def _run_stage(spec, storage, stage: Stage, tag: str, ctx: RunContext, results: list, stage_log) -> None:
    """One stage of ``run_pipeline``: skipped when up to date, else run in its log file and its
    own MLflow run (a child of the run's), which records its summary's numbers and artifact."""
    log, force = ctx.log, ctx.options.force
    fresh, why = False, ""
    if stage.output is not None and stage.name not in force:
        fresh, why = freshness(storage, stage.output(spec), spec_hash(spec, *stage.sections))
    if stage.name == "stream" and not ctx.data_written and "stream" not in force:
        fresh, why = True, "the data did not change"
    if stage.name == "sweep_video" and not spec.video.enabled:
        fresh, why = True, "video.enabled is false"
    if stage.name == "robustness" and not spec.robustness.enabled:
        fresh, why = True, "robustness.enabled is false"
    if fresh:
        log(f"{tag}: skipped, {why}")
        results.append(StageResult(stage.name, "skipped", 0.0, why))
        return
    log(f"{tag}: running" + (f" ({why})" if why else ""))
    start = time.perf_counter()
    try:
        with stage_log(stage.name) if stage_log else contextlib.nullcontext(), tracked_run(spec, stage.name) as run:
            summary = stage.run(spec, storage, ctx)
            numbers = {k: v for k, v in summary.items() if k != "up_to_date"}
            if run is not None:
                run.log_metrics(numbers)
                if isinstance(summary.get("uri"), str):
                    run.set_tags({"aigc.artifact": summary["uri"]})
            stage_events(storage, layout.stage_events_uri(spec, stage.name), numbers, int(time.time()))
    except Exception:
        results.append(StageResult(stage.name, "failed", time.perf_counter() - start, why))
        log(f"{tag}: FAILED after {time.perf_counter() - start:.0f} s")
        raise
    if summary.get("up_to_date"):  # a stage that checks its own parts found nothing to do
        results.append(StageResult(stage.name, "skipped", time.perf_counter() - start, "up to date", summary))
        log(f"{tag}: up to date")
        return
    results.append(StageResult(stage.name, "ran", time.perf_counter() - start, why, summary))
    log(f"{tag}: done in {time.perf_counter() - start:.0f} s")


@dataclass
class StagePlan:
    name: str
    state: str  # up to date | stale | not built | runs | off
    why: str


def _data_plan(spec: ExperimentSpec, storage: Storage, force: bool) -> StagePlan:
    from .data.build import build_hash

    if force:
        return StagePlan("data", "stale", "forced (--force data)")
    expected = build_hash(spec)
    for part, uri in (
        ("multimodal", layout.multimodal_uri(spec)),
        ("corpus", layout.corpus_uri(spec)),
        ("tokenizer", layout.tokenizer_uri(spec)),
    ):
        manifest = read_manifest(storage, uri)
        if manifest is None:
            return StagePlan("data", "not built", f"no {part} at {uri}")
        if manifest.spec_hash != expected:
            return StagePlan(
                "data", "stale", f"the data settings (or the builder's code) changed since {part} was built"
            )
    return StagePlan("data", "up to date", f"shards, corpus and tokenizer at {layout.data_root(spec)}")


class _NoInputs:
    inputs: dict = {}


_NO_INPUTS = _NoInputs()


def _outputs(name: str, spec: ExperimentSpec) -> list[str]:
    """The artifacts a stage writes (the data stage: shards, corpus, tokenizer, and what is derived
    from the shards when a stage needs it: the clips and the metric classifier)."""
    if name == "data":
        return [
            layout.multimodal_uri(spec),
            layout.corpus_uri(spec),
            layout.tokenizer_uri(spec),
            layout.video_uri(spec),
            layout.classifier_uri(spec),
        ]
    stage = next(s for s in STAGES if s.name == name)
    return [stage.output(spec)] if stage.output is not None else []


def plan_run(spec: ExperimentSpec, storage: Storage, options: RunOptions | None = None) -> list[StagePlan]:
    """What ``run_pipeline`` would do, read from the manifests alone: no Ray, nothing written.
    A stage is stale too when a parent whose output it recorded as an input will run."""
    options = options or RunOptions()
    plans: dict[str, StagePlan] = {}
    for stage in STAGES:
        if stage.name == "serve" and options.skip_serve:
            plans["serve"] = StagePlan("serve", "off", "--no-serve")
            continue
        running = [n for n in stage.needs if plans[n].state in ("stale", "not built")]
        if stage.output is not None and running:  # only parents whose output it recorded as an input
            recorded = (read_manifest(storage, stage.output(spec)) or _NO_INPUTS).inputs
            running = [n for n in running if any(uri in recorded for uri in _outputs(n, spec))]
        if stage.name == "data":
            plan = _data_plan(spec, storage, "data" in options.force)
        elif stage.name == "stream":
            wanted = running or "stream" in options.force
            plan = StagePlan("stream", "runs" if wanted else "up to date", "when the data changed" if wanted else "")
        elif stage.name == "serve":
            plan = StagePlan("serve", "runs", f"the Serve app on {spec.serve.host}:{spec.serve.port}")
        elif stage.name == "sweep_video" and not spec.video.enabled:
            plan = StagePlan(stage.name, "off", "video.enabled is false")
        elif stage.name == "robustness" and not spec.robustness.enabled:
            plan = StagePlan(stage.name, "off", "robustness.enabled is false")
        else:
            out = stage.output(spec)
            fresh, why = freshness(storage, out, spec_hash(spec, *stage.sections))
            if stage.name in options.force:
                plan = StagePlan(stage.name, "stale", "forced (--force)")
            elif not fresh:
                plan = StagePlan(stage.name, "not built" if why == "not built yet" else "stale", f"{why} ({out})")
            elif running:
                plan = StagePlan(stage.name, "stale", f"after {', '.join(running)}, whose output it reads")
            else:
                plan = StagePlan(stage.name, "up to date", why)
        plans[stage.name] = plan
    return list(plans.values())


def format_plan(plans: list[StagePlan]) -> str:
    width = max(len(p.name) for p in plans)
    return "\n".join(f"  {p.name:<{width}}  {p.state:<10}  {p.why}".rstrip() for p in plans)
