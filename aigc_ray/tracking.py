"""Experiments tracked in MLflow: one MLflow experiment per spec ``name``; ``aigc run`` is a
parent run with one child run per stage; a sweep's trials are child runs of the sweep's run
(Ray Tune's ``MLflowLoggerCallback``); a training job logs from its rank 0 only, into its
stage's run (one run per job, never one per worker).

The runs this process has open form a stack (``tracked_run``): a stage opened inside ``aigc run``
becomes the run's child, the same stage run alone (``aigc pretrain``) a run of its own. Workers
get a ``RunRef`` (tracking URI + run id) and log into that run; they never open runs.

MLflow's telemetry is off: nothing leaves the machine but what goes to the URI the user named.
"""

from __future__ import annotations

import contextlib
import functools
import math
import os
import re
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

from .spec import ExperimentSpec, spec_hash
from .spec.tracking import absolute_sqlite

DEFAULT_STORE = "runs/mlflow.db"  # beside the command's directory, like storage.root's ./runs
_KEY_UNSAFE = re.compile(r"[^\w\-. /]")  # what MLflow refuses in a metric's name
PARAM_CHARS = 500  # MLflow refuses longer values (6000 at most); configs hold a few long strings
METRICS_PER_BATCH = 1000  # the most metrics MLflow takes in one log_batch


def tracking_uri(spec: ExperimentSpec) -> str | None:
    """Where this spec's runs go (None: tracking is off): ``tracking.mlflow_uri``, else
    MLFLOW_TRACKING_URI, else a SQLite file ``./runs/mlflow.db``."""
    if not spec.tracking.enabled:
        return None
    uri = spec.tracking.mlflow_uri or absolute_sqlite(
        os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{DEFAULT_STORE}"
    )
    if uri.startswith("sqlite:///"):
        Path(uri.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    return uri


def mlflow_module():
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")  # before MLflow reads it on import
    import mlflow

    return mlflow


# A warm-up thread (``open_store_early``) and the stage may ask for the same client at once:
# one builds it, the other waits for it.
_CLIENTS_LOCK = threading.Lock()


_OPEN_ERRORS: dict[str, Exception] = {}  # uri -> what the warm-up thread met opening it


def _client(uri: str):
    with _CLIENTS_LOCK:
        error = _OPEN_ERRORS.pop(uri, None)
        if error is not None:  # met once already: not worth MLflow's retries (~100 s) a second time
            raise error
        return _new_client(uri)


@functools.lru_cache(maxsize=8)
def _new_client(uri: str):
    return mlflow_module().MlflowClient(tracking_uri=uri)


def open_store_early(spec: ExperimentSpec) -> threading.Thread | None:
    """Import MLflow and open the spec's tracking store on a thread of its own, now, so that the
    ~2.5 s this costs on 2 cores (MLflow's import: SQLAlchemy, protobufs, its GenAI modules; a
    SQLite store's schema check) runs while Ray starts (``ray.init`` mostly waits on its
    processes) instead of between Ray's start and the first stage's ``fit()``. A command calls
    it before starting Ray; the stage's first run then finds the client made. Nothing is
    reported from here: what the thread met opening the store is raised by the stage's first
    call (``tracked_run`` names the store), without MLflow's retries a second time.
    Returns the thread (None: tracking is off); it ends by itself."""
    uri = tracking_uri(spec)
    if uri is None:
        return None
    thread = threading.Thread(target=_open_store, args=(uri,), name="aigc-mlflow-open")
    thread.start()
    return thread


def _open_store(uri: str) -> None:
    with _CLIENTS_LOCK:
        try:
            client = _new_client(uri)
            if uri.startswith("sqlite:///"):  # local: opening it costs no network wait
                client.search_experiments(max_results=1)
        except Exception as exc:  # noqa: BLE001 - raised by the stage's first call, see _client
            _OPEN_ERRORS[uri] = exc


def _scalars(values: Mapping, prefix: str = "") -> dict:
    """Nested mappings flattened to ``a.b`` keys; only numbers, strings and booleans kept."""
    flat = {}
    for key, value in values.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(_scalars(value, f"{name}."))
        elif isinstance(value, (bool, int, float, str)) or value is None:
            flat[name] = value
    return flat


def metric_values(values: Mapping) -> dict[str, float]:
    """What MLflow can chart: finite numbers (booleans are not metrics)."""
    return {
        _KEY_UNSAFE.sub("_", k): float(v)
        for k, v in _scalars(values).items()
        if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
    }


def param_values(values: Mapping) -> dict[str, str]:
    """Params as MLflow stores them: strings, cut to ``PARAM_CHARS``."""
    return {k: str(v)[:PARAM_CHARS] for k, v in _scalars(values).items()}


@dataclass(frozen=True)
class RunRef:
    """One MLflow run, picklable: what a Ray worker needs to log into it."""

    uri: str
    experiment_id: str
    run_id: str
    name: str

    def log_metrics(self, metrics: Mapping, step: int = 0) -> None:
        """Log the numbers of ``metrics`` at ``step``."""
        self.log_steps([(metrics, step)])

    def log_steps(self, steps: list[tuple[Mapping, int]]) -> None:
        """Log several steps' metrics in one write (a training loop buffers its steps: one store
        commit per step cost rank 0 — and so every rank, at the next all-reduce — about 5 % of a
        small model's step). A tracking store that fails here warns once and training goes on:
        hours of training are not lost to a tracking outage."""
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        rows = [Metric(k, v, now, step) for metrics, step in steps for k, v in metric_values(metrics).items()]
        try:
            for i in range(0, len(rows), METRICS_PER_BATCH):
                _client(self.uri).log_batch(self.run_id, metrics=rows[i : i + METRICS_PER_BATCH])
        except Exception as exc:  # noqa: BLE001 - see the docstring
            _warn_once(f"MLflow: could not log metrics to run {self.run_id} at {self.uri}: {exc}")

    def log_params(self, params: Mapping) -> None:
        from mlflow.entities import Param

        values = param_values(params)
        items = list(values.items())
        for i in range(0, len(items), 100):  # MLflow takes at most 100 params per batch
            _client(self.uri).log_batch(self.run_id, params=[Param(k, v) for k, v in items[i : i + 100]])

    def set_tags(self, tags: Mapping) -> None:
        for key, value in param_values(tags).items():
            _client(self.uri).set_tag(self.run_id, key, value)

    def log_files(self, files: Mapping[str, bytes], artifact_path: str | None = None) -> None:
        """Attach files (name -> bytes) to the run as artifacts (plots, reports)."""
        if not files:
            return
        with tempfile.TemporaryDirectory(prefix="aigc-artifacts-") as d:
            for name, data in files.items():
                Path(d, name).write_bytes(data)
            _client(self.uri).log_artifacts(self.run_id, d, artifact_path)


_WARNED: set[str] = set()


def _warn_once(message: str) -> None:
    if message not in _WARNED:
        _WARNED.add(message)
        print(f"warning: {message}", file=sys.stderr, flush=True)


_OPEN: list[RunRef] = []  # this process's open runs, innermost last


def active_run() -> RunRef | None:
    """The innermost run this process has open (None: none, or tracking is off)."""
    return _OPEN[-1] if _OPEN else None


def _experiment_id(uri: str, name: str) -> str:
    client = _client(uri)
    found = client.get_experiment_by_name(name)
    if found is not None:
        return found.experiment_id
    location = None
    if uri.startswith("sqlite:///"):  # artifacts beside the database, not in the command's cwd
        location = Path(uri.removeprefix("sqlite:///")).with_name("mlflow-artifacts").as_uri()
    try:
        return client.create_experiment(name, artifact_location=location)
    except Exception:  # created meanwhile by another process of the same experiment
        found = client.get_experiment_by_name(name)
        if found is None:
            raise
        return found.experiment_id


@contextlib.contextmanager
def tracked_run(spec: ExperimentSpec, name: str, params: Mapping | None = None) -> Iterator[RunRef | None]:
    """An MLflow run named ``name`` for the duration of the block: a child of this process's
    innermost open run, if any; the open run itself if it already has this name (a stage that
    the pipeline opened, entered again by the stage's own function). Tagged with the spec hash,
    the code version and the storage root; FINISHED, or FAILED when the block raises.
    Yields None when tracking is off."""
    uri = tracking_uri(spec)
    if uri is None:
        yield None
        return
    current = active_run()
    if current is not None and current.name == name and current.uri == uri:
        if params:
            current.log_params(params)
        yield current
        return
    from .manifest import code_version

    try:
        experiment = _experiment_id(uri, spec.name)
        tags = {
            "aigc.stage": name,
            "aigc.spec_hash": spec_hash(spec),
            "aigc.code_version": code_version(),
            "aigc.storage_root": spec.storage.root,
        }
        if current is not None and current.uri == uri:
            tags["mlflow.parentRunId"] = current.run_id
        run = _client(uri).create_run(experiment, run_name=name, tags=tags)
    except Exception as exc:
        raise RuntimeError(
            f"MLflow at {uri} refused to open a run ({type(exc).__name__}: {exc}); fix tracking.mlflow_uri "
            "(or MLFLOW_TRACKING_URI), or set tracking.enabled: false"
        ) from exc
    ref = RunRef(uri, experiment, run.info.run_id, name)
    if params:
        ref.log_params(params)
    _OPEN.append(ref)
    status = "FAILED"
    try:
        yield ref
        status = "FINISHED"
    finally:
        _OPEN.remove(ref)
        _client(uri).set_terminated(ref.run_id, status)


def trial_params(config: Mapping) -> dict[str, str]:
    """What a trial's run records as params: the config's scalar values (the searched ones among
    them), as MLflow stores them."""
    return param_values({k: v for k, v in config.items() if isinstance(v, (bool, int, float, str))})


def log_plots(run: RunRef | None, storage, uri: str) -> None:
    """Attach the PNG plots a stage wrote under ``uri`` (local or S3) to its run."""
    if run is None:
        return
    plots = storage.list_files(uri, suffix=".png")
    run.log_files({f.rsplit("/", 1)[-1]: storage.read_bytes(f) for f in plots}, "plots")


def tensorboard_scalars(log_dir: Path, points: list[tuple[str, float, int]]) -> None:
    """TensorBoard event files in ``log_dir``: (tag, value, step) points, the non-finite left out
    (TensorBoard draws them as gaps at best)."""
    from tensorboardX import SummaryWriter

    with SummaryWriter(str(log_dir)) as writer:
        for tag, value, step in points:
            if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
                writer.add_scalar(tag, value, step)


def stage_events(storage, uri: str, values: Mapping, step: int) -> None:
    """A stage's summary numbers as TensorBoard scalars in the folder ``uri`` (local or S3; one
    more event file per run of the stage, ``step`` its time in seconds, so TensorBoard draws the
    runs one after another)."""
    points = [(k, v, step) for k, v in metric_values(values).items()]
    if not points:
        return
    with tempfile.TemporaryDirectory(prefix="aigc-events-") as d:
        tensorboard_scalars(Path(d), points)
        for f in Path(d).iterdir():
            storage.write_bytes(f"{uri.rstrip('/')}/{f.name}", f.read_bytes())
