"""Every stage as a Ray job: submit ``python jobs/<stage>.py -c SPEC`` to a cluster's jobs API,
follow its logs, list, read and stop jobs.

The job runs in a copy of this repository (the runtime_env's ``working_dir``) on the cluster, so
the spec must live inside the repository, and local paths in it (``storage.root: ./runs``)
point at the cluster's disk, not this machine's. Nothing secret travels with a job: S3 credentials
on a cluster come from the nodes' IAM role, and the Ray token from the nodes' environment.

Token authentication (on by default for Ray 2.60 clusters): the token is taken from the
``token`` argument, else ``RAY_AUTH_TOKEN``, else the file named by ``RAY_AUTH_TOKEN_PATH``,
else ``~/.ray/auth_token`` (Ray's own order) and sent as ``Authorization: Bearer ...``. Ray's
client only sends a token by itself when ``RAY_AUTH_MODE=token`` is set in the client's
environment; here it is sent whenever one is found (a cluster without auth ignores it).
"""

from __future__ import annotations

import asyncio
import datetime as _dt
import os
import shlex
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent
JOBS_DIR = REPO_ROOT / "jobs"

#: Never uploaded with a job (Ray also honours the repository's .gitignore files).
EXCLUDES = [
    ".venv",
    "runs",
    ".git",
    "__pycache__",
    "*.pyc",
    ".pytest_cache",
    ".ruff_cache",
    ".hypothesis",
    "*.egg-info",
]

TERMINAL = ("SUCCEEDED", "FAILED", "STOPPED")

_SECRET_WORDS = {"SECRET", "PASSWORD", "PASSWD", "TOKEN", "CREDENTIALS", "APIKEY"}


class JobsError(RuntimeError):
    """The jobs API cannot be used: unreachable, or it refused us (token missing or wrong)."""


# --------------------------------------------------------------------------------------------
# entry points and runtime_env


def stages() -> list[str]:
    """The stages that can run as jobs: the ``jobs/*.py`` entry points of this repository."""
    return sorted(p.stem for p in JOBS_DIR.glob("*.py") if not p.name.startswith("_"))


def job_entrypoint(stage: str, spec_path: str, overrides: list[str]) -> str:
    """The shell entrypoint of a stage's job: ``python jobs/<stage>.py -c SPEC [--set K=V ...]``.

    ``stage`` is the name of a file in ``jobs/`` (``data-build`` is accepted for ``data_build``);
    ``spec_path`` is used as given (relative paths resolve in the job's working_dir, i.e. the
    repository copy). The words are shell-quoted, so values with spaces survive. An unknown stage
    raises ValueError naming the valid ones.
    """
    valid = stages()
    name = stage.replace("-", "_")
    if name not in valid:
        raise ValueError(f"unknown stage {stage!r}: the stages that run as jobs are {', '.join(valid)}")
    words = ["python", f"jobs/{name}.py", "-c", str(spec_path)]
    for override in overrides:
        words += ["--set", override]
    return shlex.join(words)


def _secret_like(name: str) -> bool:
    upper = name.upper()
    return bool(_SECRET_WORDS & set(upper.split("_"))) or "ACCESS_KEY" in upper or "API_KEY" in upper


def runtime_env(spec, working_dir: str, pip: list[str] | None = None) -> dict[str, Any]:
    """The job's runtime_env: the repository as ``working_dir`` (without .venv, runs, .git and
    caches), the spec's ``ray.env_vars`` for every process of the job, and optionally ``pip``
    packages for clusters that lack the project's dependencies (installed per job: slow).

    Never carries secrets: a secret-looking variable raises ValueError (the spec already refuses
    them; this guards specs built in code).
    """
    env_vars = {str(k): str(v) for k, v in dict(spec.ray.env_vars).items()}
    secret = sorted(k for k in env_vars if _secret_like(k))
    if secret:
        raise ValueError(
            f"looks like a secret ({', '.join(secret)}): secrets never travel in a job's runtime_env — "
            "clusters get S3 credentials from the nodes' IAM role and the Ray token from their environment"
        )
    env: dict[str, Any] = {"working_dir": str(working_dir), "excludes": list(EXCLUDES), "env_vars": env_vars}
    if pip:
        env["pip"] = list(pip)
    return env


def job_spec_path(spec_path: str, working_dir: Path = REPO_ROOT) -> str:
    """``spec_path`` as the job sees it: relative to the working_dir it travels in.

    A spec outside the working_dir would not exist on the cluster: ValueError says so.
    """
    path = Path(spec_path).expanduser().resolve()
    root = Path(working_dir).resolve()
    try:
        return path.relative_to(root).as_posix()
    except ValueError:
        raise ValueError(
            f"{spec_path}: the spec must be inside {root} (the job's working_dir, uploaded with the job); copy it there"
        ) from None


# --------------------------------------------------------------------------------------------
# the client and its token


def find_token(token: str | None = None) -> tuple[str | None, str]:
    """``(token, where)``: the token for the jobs API and where it came from, or ``(None, where
    it was looked for)``. Order: the argument, ``RAY_AUTH_TOKEN``, the file named by
    ``RAY_AUTH_TOKEN_PATH`` (if set, only that file), ``~/.ray/auth_token``."""
    if token:
        return token.strip(), "the token argument"
    env_token = os.environ.get("RAY_AUTH_TOKEN", "").strip()
    if env_token:
        return env_token, "RAY_AUTH_TOKEN"
    named = os.environ.get("RAY_AUTH_TOKEN_PATH")
    path = Path(named).expanduser() if named else Path.home() / ".ray" / "auth_token"
    where = f"RAY_AUTH_TOKEN_PATH={path}" if named else f"~/.ray/auth_token ({path})"
    try:
        text = path.read_text().strip()
    except OSError:
        text = ""
    if text:
        return text, where
    looked = "the token argument (--token), RAY_AUTH_TOKEN (unset), " + (
        f"RAY_AUTH_TOKEN_PATH={path} (missing or empty)" if named else f"RAY_AUTH_TOKEN_PATH (unset), {where} (missing)"
    )
    return None, looked


def _http_address(address: str) -> str:
    address = address.strip().rstrip("/")
    return address if "://" in address else f"http://{address}"


class _Guard:
    """Turns Ray's authentication and connection errors into a JobsError that says what to do."""

    def __init__(self, address: str, where: str, had_token: bool = True):
        self.address, self.where, self.had_token = address, where, had_token

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        from ray.exceptions import AuthenticationError

        if isinstance(exc, AuthenticationError):  # Ray raises it for HTTP 401 and 403
            text = str(exc)
            missing = "401" in text or "Missing authentication token" in text or "Authentication required" in text
            if missing or not self.had_token:
                # (without a token of ours, a refused one is one Ray found by itself, e.g. the token
                # of another local cluster's session: still, we have none for this cluster)
                raise JobsError(
                    f"the Ray cluster at {self.address} requires an authentication token (token auth is on) "
                    f"and none was found: looked in {self.where}. Copy the cluster's token into "
                    "~/.ray/auth_token, or set RAY_AUTH_TOKEN or RAY_AUTH_TOKEN_PATH"
                ) from exc
            raise JobsError(
                f"the Ray cluster at {self.address} refused the authentication token from {self.where}: "
                "it is not this cluster's token"
            ) from exc
        if isinstance(exc, ConnectionError):
            raise JobsError(
                f"no Ray jobs API at {self.address}: is the cluster's dashboard running there "
                "(`ray start --head --dashboard-host ...`, port 8265 by default)?"
            ) from exc
        return False


def client(address: str, token: str | None = None):
    """A ``ray.job_submission.JobSubmissionClient`` for the jobs API at ``address``
    (``http://HOST:8265``; the scheme may be left out).

    The token (see :func:`find_token`) is sent as ``Authorization: Bearer <token>``. A cluster
    that wants a token and gets none or a wrong one raises JobsError (a RuntimeError) saying where
    the token was looked for; an unreachable address raises JobsError too.
    """
    from ray.job_submission import JobSubmissionClient

    address = _http_address(address)
    found, where = find_token(token)
    headers = {"Authorization": f"Bearer {found}"} if found else None
    with _Guard(address, where, bool(found)):
        c = JobSubmissionClient(address, headers=headers)  # its version check is refused here
    c._aigc_guard = _Guard(address, where, bool(found))
    return c


def _guard(c) -> _Guard:
    return getattr(c, "_aigc_guard", None) or _Guard("the Ray cluster", "(unknown)")


# --------------------------------------------------------------------------------------------
# submit, follow, list, logs, stop


def _status(c, job_id: str) -> str:
    with _guard(c):
        return c.get_job_status(job_id).value


def wait_for(c, job_id: str, timeout: float | None = None, poll: float = 0.5) -> str:
    """Poll until the job is SUCCEEDED, FAILED or STOPPED; its final status (TimeoutError after
    ``timeout`` seconds)."""
    deadline = None if timeout is None else time.monotonic() + timeout
    while True:
        status = _status(c, job_id)
        if status in TERMINAL:
            return status
        if deadline is not None and time.monotonic() > deadline:
            raise TimeoutError(f"job {job_id} is still {status} after {timeout:.0f}s")
        time.sleep(poll)


def follow_logs(c, job_id: str, log: Callable[[str], Any] = print) -> None:
    """Stream the job's logs to ``log``, one whole line per call, until the job ends."""

    async def tail() -> None:
        pending = ""
        async for chunk in c.tail_job_logs(job_id):
            pending += chunk
            *lines, pending = pending.split("\n")
            for line in lines:
                log(line)
        if pending:
            log(pending)

    def run() -> None:
        with _guard(c):
            asyncio.run(tail())

    try:
        asyncio.get_running_loop()
    except RuntimeError:  # the usual case: no event loop in this thread
        run()
        return
    # called from inside an event loop (a notebook): tail in a thread of its own
    errors: list[BaseException] = []

    def in_thread() -> None:
        try:
            run()
        except BaseException as exc:  # noqa: BLE001 - re-raised below
            errors.append(exc)

    t = threading.Thread(target=in_thread, daemon=True)
    t.start()
    t.join()
    if errors:
        raise errors[0]


def submit(
    address: str,
    stage: str,
    spec_path: str,
    overrides: list[str],
    spec,
    token: str | None = None,
    wait: bool = True,
    log: Callable[[str], Any] = print,
    pip: list[str] | None = None,
) -> tuple[str, str]:
    """Submit ``stage`` (a ``jobs/*.py`` entry point) with ``spec_path`` and ``overrides`` as a Ray
    job to the cluster at ``address``, the repository as its working_dir and the spec's
    ``ray.env_vars`` in its environment (``spec`` is the loaded spec, for those).

    Logs the job id; with ``wait`` streams the job's logs to ``log`` line by line until it ends and
    returns ``(job_id, final status)``, the status being SUCCEEDED, FAILED or STOPPED. Without
    ``wait`` returns at once with the current status (PENDING or RUNNING). An interrupt while
    waiting leaves the job running and says how to stop it.
    """
    entrypoint = job_entrypoint(stage, job_spec_path(spec_path), overrides)
    env = runtime_env(spec, str(REPO_ROOT), pip=pip)
    c = client(address, token)
    with _guard(c):
        job_id = c.submit_job(entrypoint=entrypoint, runtime_env=env)
    log(f"submitted job {job_id} to {_http_address(address)}: {entrypoint}")
    if not wait:
        return job_id, _status(c, job_id)
    try:
        try:
            follow_logs(c, job_id, log)
        except JobsError:
            raise
        except Exception as exc:  # the log stream broke: the job itself may be fine
            log(f"(log stream of {job_id} interrupted: {exc}; waiting for the job to end)")
        status = wait_for(c, job_id)
    except KeyboardInterrupt:
        log(f"job {job_id} keeps running on the cluster; stop it with `aigc jobs stop {job_id} --address ...`")
        raise
    log(f"job {job_id} {status}")
    return job_id, status


def _iso(ms: int | None) -> str | None:
    if not ms:
        return None
    return _dt.datetime.fromtimestamp(ms / 1000, tz=_dt.UTC).isoformat(timespec="seconds")


def list_jobs(address: str, token: str | None = None) -> list[dict]:
    """The cluster's jobs, oldest first: ``id`` (the submission id, else the driver's job id),
    ``status``, ``entrypoint``, ``start_time`` and ``end_time`` (ISO-8601 UTC, None if not
    started / not ended) and Ray's ``message``."""
    c = client(address, token)
    with _guard(c):
        jobs = c.list_jobs()
    rows = [
        {
            "id": j.submission_id or j.job_id,
            "status": j.status.value,
            "entrypoint": j.entrypoint,
            "start_time": _iso(j.start_time),
            "end_time": _iso(j.end_time),
            "message": j.message,
        }
        for j in jobs
    ]
    return sorted(rows, key=lambda r: r["start_time"] or "")


def job_logs(address: str, job_id: str, token: str | None = None) -> str:
    """Everything the job has logged so far (RuntimeError if there is no such job)."""
    c = client(address, token)
    with _guard(c):
        return c.get_job_logs(job_id)


def stop_job(address: str, job_id: str, token: str | None = None) -> bool:
    """Ask the cluster to stop the job: True if it was running and is being stopped, False if it
    had already ended (RuntimeError if there is no such job)."""
    c = client(address, token)
    with _guard(c):
        return bool(c.stop_job(job_id))
