"""``aigc serve run`` (the app on the embedded or a given Ray) and ``aigc serve build`` (a Serve
config file that plain ``serve deploy`` accepts: the same builder, the spec as its args)."""

from __future__ import annotations

import contextlib
import json
import threading
from collections.abc import Iterator

from .. import progress
from ..ensemble.build import ENSEMBLE_FILE
from ..layout import ensemble_dir
from ..spec import ExperimentSpec
from ..storage import Storage, join

APP_NAME = "aigc"
IMPORT_PATH = "aigc_ray.serve.app:build_app"


def app_args(spec: ExperimentSpec) -> dict:
    return {"spec": spec.model_dump(mode="json")}


def serve_config(spec: ExperimentSpec, storage: Storage) -> dict:
    """A ``serve deploy`` config: HTTP options from the spec, the app built by ``build_app`` from
    the resolved spec, and the ingress's user_config (strategy and weights: edit and redeploy to
    reconfigure in place). Checked against Serve's own schema before it is returned."""
    from ray.serve.schema import ServeDeploySchema

    s = spec.serve
    doc = json.loads(storage.read_bytes(join(ensemble_dir(spec), ENSEMBLE_FILE)))
    config = {
        "proxy_location": "EveryNode",  # a proxy per node: the load balancer spreads over them
        "http_options": {"host": s.host, "port": s.port, "request_timeout_s": s.request_timeout_s},
        "applications": [
            {
                "name": APP_NAME,
                "route_prefix": s.route_prefix,
                "import_path": IMPORT_PATH,
                "args": app_args(spec),
                "runtime_env": {"env_vars": {"OMP_NUM_THREADS": "1"}},
                "deployments": [
                    {"name": "ingress", "user_config": {"strategy": doc["strategy"], "weights": doc["weights"]}}
                ],
            }
        ],
    }
    ServeDeploySchema.model_validate(config)
    return config


def start_local(spec: ExperimentSpec, user_config: dict | None = None):
    """Start Serve's HTTP proxy (spec.serve.host:port) and run (or update) the app; returns the
    ingress handle. A new ``user_config`` (strategy, weights) on a running app reconfigures the
    ingress replicas in place."""
    from ray import serve

    from .app import build_app

    s = spec.serve
    serve.start(http_options={"host": s.host, "port": s.port, "request_timeout_s": s.request_timeout_s})
    args = app_args(spec) | ({"user_config": user_config} if user_config is not None else {})
    # Serve's controller is polled for the live line only when a line listens (not in tests, library use)
    watching = _replicas_on_the_live_line(APP_NAME) if progress.listening() else contextlib.nullcontext()
    with watching:
        return serve.run(build_app(args), name=APP_NAME, route_prefix=s.route_prefix)


@contextlib.contextmanager
def _replicas_on_the_live_line(app: str, every_s: float = 1.0) -> Iterator[None]:
    """While ``serve.run`` waits for the app: how many of its replicas are ready, per second."""
    from ray import serve

    stop = threading.Event()

    def watch() -> None:
        while not stop.wait(every_s):
            with contextlib.suppress(Exception):  # the app may not be known to the controller yet
                deployments = serve.status().applications[app].deployments
                counts = [d.replica_states for d in deployments.values()]
                ready = sum(
                    n for c in counts for state, n in c.items() if str(getattr(state, "value", state)) == "RUNNING"
                )
                total = sum(n for c in counts for n in c.values())
                progress.emit(f"serve: {ready}/{total} replicas ready in {len(deployments)} deployments")

    watcher = threading.Thread(target=watch, name="aigc-serve-progress", daemon=True)
    watcher.start()
    try:
        yield
    finally:
        stop.set()
        watcher.join(timeout=5)


def base_url(spec: ExperimentSpec) -> str:
    host = "127.0.0.1" if spec.serve.host in ("0.0.0.0", "::") else spec.serve.host
    return f"http://{host}:{spec.serve.port}{spec.serve.route_prefix.rstrip('/')}"
