"""The ``aigc`` command: one sub-command per stage, plus validate and run.

Exit status: 0 success, 1 a problem with the input (spec, storage, shards) that is reported on
stderr without a traceback, 2 a usage error.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from concurrent.futures import ThreadPoolExecutor
from functools import partial

from . import layout
from .console import Console
from .spec import ExperimentSpec, SpecError, load_spec, spec_hash, spec_to_yaml
from .storage import S3Settings, Storage, StorageError


def _spec_args(p: argparse.ArgumentParser, required: bool = True) -> None:
    p.add_argument("-c", "--config", required=required, metavar="SPEC", help="experiment spec (YAML)")
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY.PATH=VALUE",
        help="override a spec value, e.g. --set data.seed=3 (repeatable)",
    )


def _address_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--address", help="Ray cluster to join (default: RAY_ADDRESS, else an embedded local Ray)")


def _load(args: argparse.Namespace) -> ExperimentSpec:
    return load_spec(args.config, args.overrides)


CONSOLE = Console()  # main() replaces it with one for the command's --verbose


def _stage(spec: ExperimentSpec, name: str):
    """The command's work, with Ray's and the libraries' output in ``<root>/<name>/logs/<name>.log``."""
    return CONSOLE.stage(spec, name)


@contextlib.contextmanager
def _ray_stage(spec: ExperimentSpec, name: str, address: str | None, ray: bool = True, tracked: bool = True):
    """``_stage`` around a Ray session (started or joined; none when ``ray`` is false). A
    ``tracked`` command's MLflow store opens on a thread meanwhile, while Ray starts."""
    from .runtime import ray_session
    from .tracking import open_store_early

    with _stage(spec, name):
        if tracked:
            open_store_early(spec)
        with ray_session(spec, address) if ray else contextlib.nullcontext():
            yield


def cmd_validate(args: argparse.Namespace) -> int:
    spec = load_spec(args.spec, args.overrides)
    if args.print:
        print(spec_to_yaml(spec), end="")
    print(f"ok: {args.spec} is a valid experiment spec (spec hash {spec_hash(spec)[:12]})")
    from .spec.cost import spec_cost

    print("what it will cost:")
    for line in spec_cost(spec):
        print(f"  {line}")
    return 0


def cmd_data_build(args: argparse.Namespace) -> int:
    from .data.build import build_data

    spec = _load(args)
    d = spec.data
    what = f"{d.source.format} data from {d.source.uri}" if d.source else f"the embedded '{d.dataset}' dataset"
    print(f"building {what} into {layout.data_root(spec)}")
    built = build_data(spec, Storage.from_spec(spec.storage), force=args.force)
    print(f"done: {', '.join(built.written) or 'everything was up to date'}")
    return 0


def cmd_data_video(args: argparse.Namespace) -> int:
    from .data.video import build_video_shards

    spec = _load(args)
    v = spec.video
    print(
        f"building {v.clips} moving-digit clips ({v.frames}x{v.frame_size}x{v.frame_size}) into {layout.video_uri(spec)}"
    )
    build_video_shards(spec, Storage.from_spec(spec.storage), force=args.force)
    return 0


def _print_report(report) -> None:
    splits = ", ".join(f"{k} {v}" for k, v in sorted(report.splits.items()))
    print(f"{report.uri}: {report.kind or 'unknown kind'}, {report.files} file(s), {report.rows} rows ({splits})")
    for fault in report.faults:
        print(f"  FAULT {fault}")


def cmd_data_validate(args: argparse.Namespace) -> int:
    from .data.shards import validate_shards

    storage = Storage(S3Settings.resolve(args.endpoint_url, args.region))
    ok = True
    for uri in args.uri:
        report = validate_shards(storage, uri)
        _print_report(report)
        ok = ok and report.ok
    print("ok" if ok else "FAILED: see the faults above")
    return 0 if ok else 1


def cmd_data_stream(args: argparse.Namespace) -> int:
    spec = _load(args)
    storage = Storage.from_spec(spec.storage)
    print(f"streaming split '{args.split}' of {layout.multimodal_uri(spec)} through Ray Data")
    with _ray_stage(spec, "stream", args.address, tracked=False):
        from .train.feed import stream_epoch

        stream_epoch(spec, storage, args.split, args.workers, log=CONSOLE.say)
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    """The pipeline: every stage that is not up to date, then the run report."""
    from .pipeline import RunOptions, format_plan, plan_run, run_pipeline
    from .report import write_report

    spec = _load(args)
    storage = Storage.from_spec(spec.storage)
    if args.dry_run:
        print(f"what `aigc run` would do for {spec.name} (read from the manifests; nothing started):")
        print(format_plan(plan_run(spec, storage, RunOptions(tuple(args.force), args.no_serve))))
        return 0
    # The report reads only storage: it is written while Ray shuts down (1.4 s, mostly waiting for
    # its processes to end), the pool's exit waits for it once Ray is down.
    with ThreadPoolExecutor(1) as pool, _ray_stage(spec, "run", args.address):
        options = RunOptions(tuple(args.force), args.no_serve, args.keep_serving, args.workers)
        results = run_pipeline(spec, storage, options, log=CONSOLE.say, stage_log=partial(CONSOLE.stage, spec))
        report = pool.submit(write_report, spec, storage, results)
    ran = [r.name for r in results if r.status == "ran"]
    print(f"pipeline finished: ran {', '.join(ran) or 'nothing (all up to date)'}; report: {report.result()}")
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    """`aigc run --dry-run` without the run options: the stage table."""
    from .pipeline import format_plan, plan_run

    spec = _load(args)
    print(f"{spec.name}:")
    print(format_plan(plan_run(spec, Storage.from_spec(spec.storage))))
    return 0


def cmd_pretrain(args: argparse.Namespace) -> int:
    from .train.pretrain import pretrain

    spec = _load(args)
    storage = Storage.from_spec(spec.storage)
    p = spec.pretrain
    # continued pretraining trains the init folder's own model, not a preset of ours
    model = f"the model at {p.init}" if p.init else f"a {p.model_family} model, {p.model.preset} {p.model.dims}"
    print(
        f"pretraining {model} ({p.objective}), "
        f"ZeRO-{p.zero_stage} {p.precision}, {p.num_workers} worker(s), {p.max_steps} steps"
    )
    with _ray_stage(spec, "pretrain", args.address):
        result = pretrain(spec, storage, log=CONSOLE.say)
    print(f"export: {result.export_uri}")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from .train.pretrain import export_latest

    spec = _load(args)
    uri, evaluation = export_latest(spec, Storage.from_spec(spec.storage))
    print(f"export: {uri}")
    return 0


def cmd_finetune(args: argparse.Namespace) -> int:
    from .train.finetune import finetune

    spec = _load(args)
    storage = Storage.from_spec(spec.storage)
    f = spec.finetune
    print(
        f"fine-tuning the {f.base} model ({f.task or 'task from the base'}, {f.mode}), {f.num_workers} worker(s), {f.max_steps} steps"
    )
    with _ray_stage(spec, "finetune", args.address):
        uri, _ = finetune(spec, storage, log=CONSOLE.say)
    print(f"export: {uri}")
    return 0


def cmd_sweep(args: argparse.Namespace) -> int:
    from .tune.sweep import run_sweep

    spec = _load(args)
    storage = Storage.from_spec(spec.storage)
    sweep = getattr(spec, args.family).sweep
    print(
        f"sweeping the {args.family} model: {sweep.num_samples} sample(s), {sweep.scheduler}, {sweep.search_alg} "
        f"search over {', '.join(sweep.search_space) or 'nothing'}; metric {sweep.metric} ({sweep.mode})"
    )
    with _ray_stage(spec, f"sweep_{args.family}", args.address):
        result = run_sweep(args.family, spec, storage, resume=args.resume, log=CONSOLE.say)
    print(f"results: {result.uri}")
    return 0


def cmd_ensemble(args: argparse.Namespace) -> int:
    from .ensemble.build import build_ensemble, evaluate_ensemble

    spec = _load(args)
    storage = Storage.from_spec(spec.storage)
    if args.action == "evaluate":
        report = evaluate_ensemble(spec, storage, log=lambda *_: None)
        print(f"ensemble {report.uri} ({report.strategy})\n{report.table()}")
        return 0
    e = spec.ensemble
    print(
        f"building a '{e.strategy}' ensemble: top {e.top_k} of the fusion sweep, {e.bagging} bagged, {e.boosting} boosted, "
        f"{len(e.members)} listed"
    )
    # Ray only trains bagged and boosted members
    with _ray_stage(spec, "ensemble", args.address, ray=bool(e.bagging or e.boosting)):
        report = build_ensemble(spec, storage, log=CONSOLE.say)
    print(f"ensemble: {report.uri}")
    return 0


def cmd_robustness(args: argparse.Namespace) -> int:
    """Attack the committed ensemble (FGSM, PGD on the image) and commit its accuracy per ε."""
    from .ensemble.robustness import evaluate_robustness

    spec = _load(args)
    storage = Storage.from_spec(spec.storage)
    r = spec.robustness
    print(
        f"attacking the ensemble's image input: {', '.join(r.attacks)} at ε {', '.join(f'{e:g}' for e in r.epsilons)} "
        f"on {r.examples} test rows, captions as given and vague"
    )
    with _stage(spec, "robustness"):
        report = evaluate_robustness(spec, storage, log=CONSOLE.say)
    print(f"robustness: {report.uri}")
    return 0


def cmd_explain(args: argparse.Namespace) -> int:
    """Why the committed ensemble answers what it does for one image and caption: the explanation
    /v1/explain serves, as JSON, and its overlay as a PNG beside it."""
    import base64
    import json
    from pathlib import Path

    from .data.images import decode_image_file
    from .ensemble.explain import explain_example, load_explainer

    spec = _load(args)
    storage = Storage.from_spec(spec.storage)
    explainer = load_explainer(storage, layout.ensemble_dir(spec))
    raw = storage.read_bytes(args.image if "://" in args.image else os.path.abspath(args.image))
    channels, height, _ = explainer.image_shape
    try:
        image = decode_image_file(raw, height, channels)
    except ValueError as exc:
        return _failed(f"error: --image {args.image}: {exc}", tail=False)
    try:
        doc = explain_example(explainer, image, args.text, args.target, args.steps)
    except ValueError as exc:  # a class the data does not have, steps out of range
        return _failed(f"error: {exc}", tail=False)
    out = Path(args.out or f"{Path(args.image.rstrip('/')).stem}.explanation.json")
    overlay = out.with_suffix(".png")
    out.parent.mkdir(parents=True, exist_ok=True)
    overlay.write_bytes(base64.b64decode(doc["overlay_png"]))
    out.write_text(json.dumps(doc, indent=1) + "\n")
    shares = doc["modality_shares"]
    top = sorted(doc["tokens"], key=lambda t: -abs(t["attribution"]))[:3]
    print(
        f"answer {doc['label_name']} (p = {doc['probability']:.3f} for {doc['target_name']}, {doc['strategy']} ensemble); "
        f"image {shares['image']:.0%}, caption {shares['caption']:.0%} of the decision"
    )
    print("tokens that weighed most: " + ", ".join(f"{t['token'].strip()!r} {t['attribution']:+.3f}" for t in top))
    print(
        f"IG ({doc['method']['steps']} steps) convergence delta: image {doc['delta']['image']:+.2e}, tokens {doc['delta']['tokens']:+.2e}"
    )
    print(f"wrote {out} and {overlay}")
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    from .serve.deploy import base_url, serve_config, start_local

    spec = _load(args)
    storage = Storage.from_spec(spec.storage)
    if args.action == "build":
        import yaml

        text = yaml.safe_dump(serve_config(spec, storage), sort_keys=False)
        with open(args.output, "w") as f:
            f.write(text)
        print(f"wrote {args.output}: `serve deploy {args.output}` deploys it (the nodes need aigc-ray installed)")
        return 0
    import time

    with _ray_stage(spec, "serve", args.address, tracked=False):
        start_local(spec)
        CONSOLE.say(
            f"serving {base_url(spec)}  (/v1/classify /v1/images /v1/completions /v1/feedback /v1/models); Ctrl-C stops"
        )
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            from ray import serve

            serve.shutdown()
    return 0


def cmd_feedback(args: argparse.Namespace) -> int:
    spec = _load(args)
    storage = Storage.from_spec(spec.storage)
    if args.action == "ingest":
        from .data.feedback_ingest import ingest_feedback

        manifest = ingest_feedback(spec, storage)
        print(f"feedback shards: {layout.feedback_shards_uri(spec)} ({manifest.meta['rows']} examples)")
        return 0
    from .ensemble.refresh import refresh_from_feedback

    report = refresh_from_feedback(spec, storage)
    print(f"ensemble refreshed: {report.uri}; `aigc serve run` redeploys it")
    return 0


def cmd_lineage(args: argparse.Namespace) -> int:
    from .lineage import format_tree, lineage
    from .storage import S3Settings

    storage = Storage(S3Settings.resolve(args.endpoint_url))
    node = lineage(storage, args.uri if "://" in args.uri else os.path.abspath(args.uri))
    if node.kind is None:
        print(f"error: no committed artifact (no _manifest.json) at {args.uri}", file=sys.stderr)
        return 1
    print(format_tree(node))
    return 0


def cmd_infra(args: argparse.Namespace) -> int:
    from pathlib import Path

    from .infra.render import check_in_sync, render_all

    spec = _load(args)
    out = Path(args.output)
    if args.check:
        stale = check_in_sync(spec, out)
        for name in stale:
            print(f"out of date: {name}")
        print("in sync" if not stale else f"{len(stale)} file(s) differ: run `aigc infra render -c {args.config}`")
        return 1 if stale else 0
    for path in render_all(spec, out):
        print(f"wrote {path}")
    return 0


def cmd_submit(args: argparse.Namespace) -> int:
    from .jobs import submit

    spec = _load(args)  # validated here, before anything is sent to the cluster
    _, status = submit(
        args.address, args.stage, args.config, args.overrides, spec, token=_token(args), wait=not args.no_wait
    )
    return 0 if status in ("SUCCEEDED", "PENDING", "RUNNING") else 1


def _token(args: argparse.Namespace) -> str | None:
    if args.token_file:
        with open(args.token_file) as f:
            return f.read().strip()
    return None


def cmd_jobs(args: argparse.Namespace) -> int:
    from .jobs import job_logs, list_jobs, stop_job

    token = _token(args)
    if args.action == "list":
        for job in list_jobs(args.address, token):
            print(f"{job['id']}  {job['status']:<9}  {job['start_time'] or '-':<25}  {job['entrypoint']}")
        return 0
    if not args.job_id:
        print(f"error: `aigc jobs {args.action}` needs a JOB_ID", file=sys.stderr)
        return 2
    if args.action == "logs":
        print(job_logs(args.address, args.job_id, token), end="")
        return 0
    stopped = stop_job(args.address, args.job_id, token)
    print(f"{args.job_id}: {'stopping' if stopped else 'already finished'}")
    return 0


def _jobs_api_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--address",
        default=os.environ.get("RAY_API_SERVER_ADDRESS") or os.environ.get("RAY_ADDRESS") or "http://127.0.0.1:8265",
        help="the cluster's jobs API (dashboard), e.g. http://HEAD:8265",
    )
    p.add_argument(
        "--token-file",
        default=None,
        help="Ray auth token file (default: RAY_AUTH_TOKEN, RAY_AUTH_TOKEN_PATH, then ~/.ray/auth_token)",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="aigc", description="aigc-ray: from one YAML spec to a served generative-model ensemble, on Ray."
    )
    parser.add_argument(
        "-v",
        "--verbose",
        action="store_true",
        help="stream Ray's and the libraries' output to the terminal (by default it goes to <root>/<name>/logs/)",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("validate", help="check an experiment spec; print every problem")
    p.add_argument("spec", metavar="SPEC")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY.PATH=VALUE")
    p.add_argument("--print", action="store_true", help="also print the resolved spec with defaults")
    p.set_defaults(func=cmd_validate)

    p = sub.add_parser(
        "run", help="run the pipeline: data, pretrain, fine-tune, GAN, video and fusion sweeps, ensemble, serve"
    )
    _spec_args(p)
    _address_arg(p)
    p.add_argument("--workers", type=int, default=0, help="stream into N Ray Train workers instead of the driver")
    p.add_argument("--keep-serving", action="store_true", help="keep the Serve app up after the demo requests")
    p.add_argument("--no-serve", action="store_true", help="stop after the ensemble (no Serve app)")
    p.add_argument("--force", action="append", default=[], metavar="STAGE", help="run STAGE even if up to date")
    p.add_argument("--dry-run", action="store_true", help="say which stages would run and why; start nothing")
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("status", help="each stage of the pipeline: up to date, stale (and why) or not built")
    _spec_args(p)
    p.set_defaults(func=cmd_status)

    p = sub.add_parser("pretrain", help="pretrain a causal or masked LM with Ray Train + DeepSpeed; export to HF")
    _spec_args(p)
    _address_arg(p)
    p.set_defaults(func=cmd_pretrain)

    p = sub.add_parser("export", help="export the latest committed pretraining checkpoint to HF now")
    _spec_args(p)
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("finetune", help="fine-tune (full / frozen layers / LoRA) our export or MiniLM; export to HF")
    _spec_args(p)
    _address_arg(p)
    p.set_defaults(func=cmd_finetune)

    p = sub.add_parser("sweep", help="Ray Tune sweep of the GAN, the image+caption fusion classifier or the video GAN")
    p.add_argument("family", choices=["gan", "fusion", "video"], help="what to sweep")
    _spec_args(p)
    _address_arg(p)
    p.add_argument("--resume", action="store_true", help="finish an interrupted sweep (Tuner.restore)")
    p.set_defaults(func=cmd_sweep)

    p = sub.add_parser("ensemble", help="build the ensemble from trained members, or evaluate the built one")
    p.add_argument("action", choices=["build", "evaluate"])
    _spec_args(p)
    _address_arg(p)
    p.set_defaults(func=cmd_ensemble)

    p = sub.add_parser("robustness", help="the ensemble's accuracy under FGSM and PGD attacks on its image input")
    p.add_argument("action", choices=["evaluate"])
    _spec_args(p)
    p.set_defaults(func=cmd_robustness)

    p = sub.add_parser("explain", help="explain the ensemble's answer for an image and caption (IG, modality shares)")
    _spec_args(p)
    p.add_argument(
        "--image", required=True, metavar="PATH", help="the image (PNG, JPEG, ...; a local path or s3:// URI)"
    )
    p.add_argument("--text", required=True, help="its caption")
    p.add_argument("--target", help="the class to explain (name or index); default: the ensemble's answer")
    p.add_argument("--steps", type=int, default=256, help="Integrated Gradients' steps (8..1024; default 256)")
    p.add_argument("--out", metavar="FILE", help="where the JSON goes (default: IMAGE-STEM.explanation.json here)")
    p.set_defaults(func=cmd_explain)

    p = sub.add_parser("serve", help="serve the ensemble on Ray Serve (run), or write a `serve deploy` config (build)")
    p.add_argument("action", choices=["run", "build"])
    _spec_args(p)
    _address_arg(p)
    p.add_argument("-o", "--output", default="serve.yaml", help="build: where to write the Serve config")
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("feedback", help="turn served feedback into shards (ingest) and fine-tune the ensemble on them")
    p.add_argument("action", choices=["ingest", "finetune"])
    _spec_args(p)
    p.set_defaults(func=cmd_feedback)

    p = sub.add_parser("lineage", help="show where an artifact came from: its manifest's inputs, followed")
    p.add_argument("uri", metavar="URI", help="an artifact folder (local or s3://), e.g. runs/quickstart/ensemble")
    p.add_argument("--endpoint-url", default=None, help="S3-compatible endpoint (default: AWS_ENDPOINT_URL / AWS)")
    p.set_defaults(func=cmd_lineage)

    p = sub.add_parser("infra", help="generate cluster.yaml and the KubeRay manifests from the spec")
    p.add_argument("action", choices=["render"])
    _spec_args(p)
    p.add_argument("-o", "--output", default=".", help="repository root to write cluster.yaml and infra/kuberay/ under")
    p.add_argument("--check", action="store_true", help="only check the files there are what the spec renders")
    p.set_defaults(func=cmd_infra)

    p = sub.add_parser("submit", help="submit a stage (a jobs/*.py entry point) as a Ray job; stream its logs")
    p.add_argument(
        "stage", help="data_build, pretrain, finetune, sweep_gan, sweep_fusion, ensemble_build, pipeline, ..."
    )
    _spec_args(p)
    _jobs_api_args(p)
    p.add_argument("--no-wait", action="store_true", help="return once submitted")
    p.set_defaults(func=cmd_submit)

    p = sub.add_parser("jobs", help="list the cluster's Ray jobs, print one's logs, or stop one")
    p.add_argument("action", choices=["list", "logs", "stop"])
    p.add_argument("job_id", nargs="?", metavar="JOB_ID")
    _jobs_api_args(p)
    p.set_defaults(func=cmd_jobs)

    data = sub.add_parser("data", help="build, validate and stream shard sets").add_subparsers(
        dest="data_command", required=True, metavar="ACTION"
    )
    p = data.add_parser("build", help="write the embedded dataset, corpus and tokenizer to storage")
    _spec_args(p)
    p.add_argument("--force", action="store_true", help="rebuild even if the manifests say up to date")
    p.set_defaults(func=cmd_data_build)

    p = data.add_parser("video", help="write the moving-digit clips (video/v1) made from the built digit shards")
    _spec_args(p)
    p.add_argument("--force", action="store_true", help="rebuild even if the manifest says up to date")
    p.set_defaults(func=cmd_data_video)

    p = data.add_parser("validate", help="check shard sets: schema, decodable images, counts, hashes")
    p.add_argument("uri", nargs="+", metavar="URI", help="shard set folder (local or s3://bucket/prefix)")
    p.add_argument("--endpoint-url", help="S3-compatible endpoint (default: AWS_ENDPOINT_URL)")
    p.add_argument("--region", help="S3 region (default: AWS_REGION)")
    p.set_defaults(func=cmd_data_validate)

    p = data.add_parser("stream", help="stream one epoch of a split through Ray Data and print what was read")
    _spec_args(p)
    _address_arg(p)
    p.add_argument("--split", default="train", choices=["train", "val", "test"])
    p.add_argument("--workers", type=int, default=0, help="stream into N Ray Train workers instead of the driver")
    p.set_defaults(func=cmd_data_stream)
    return parser


def main(argv: list[str] | None = None) -> int:
    from .data.image_sources import SourceError
    from .jobs import JobsError

    global CONSOLE
    args = build_parser().parse_args(argv)
    CONSOLE = Console(verbose=args.verbose)
    try:
        return args.func(args)
    # Errors whose message already names the problem and what to do (a wrong spec, a missing
    # bucket, a damaged shard, a refusing cluster, a missing input): that one line and nothing
    # more; the stage's log still holds the traceback for whoever wants it.
    except (SpecError, StorageError, SourceError) as exc:  # SourceError: the user's data, named
        return _failed(f"error: {exc}", tail=False)
    except JobsError as exc:  # the cluster refused or is not there: the message says what to do
        return _failed(f"error: {exc}", tail=False)
    except FileNotFoundError as exc:  # a stage's input is missing: say which, and what makes it
        return _failed(f"error: {exc.args[0] if exc.args else exc}", tail=False)
    except Exception as exc:
        if CONSOLE.last_log is None:  # not inside a stage: a bug of ours, with its traceback
            raise
        # a stage failed: its reason in one line, the traceback and everything else in its log
        reason = (str(exc).strip().splitlines() or [""])[-1]
        return _failed(f"error: {type(exc).__name__}: {reason}".rstrip(": "))


def _failed(line: str, tail: bool = True) -> int:
    """Print why the command failed; with ``tail``, also the stage log's path and last lines
    (an unexpected failure: the reason alone rarely says enough)."""
    print(line, file=sys.stderr)
    for extra in CONSOLE.failure_lines() if tail else ():
        print(extra, file=sys.stderr)
    return 1


def exit_with(code: int) -> None:
    """End a command's process: S3 released before the interpreter exits (see ``storage.release_s3``)."""
    from .storage import release_s3

    sys.stdout.flush()
    release_s3()
    sys.exit(code)


def console_main(argv: list[str] | None = None) -> None:
    """The `aigc` command (and the jobs/ entry points): ``main``, then ``exit_with``. In-process
    callers (tests, notebooks) use ``main`` and keep S3."""
    exit_with(main(argv))


if __name__ == "__main__":
    console_main()
