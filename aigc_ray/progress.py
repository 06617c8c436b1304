"""Where the running stage is, for the one live line the terminal shows per stage.

Code that makes progress calls ``emit("pretrain step 40/300 loss 2.31 …")``. In the process that
owns the terminal (the CLI's, which installs a ``sink``), the text goes straight to the live
line. In a Ray worker — a Ray Train worker, a Tune trial, a task — it is printed as one marked line:
Ray relays worker output to the driver, where it lands in the stage's log file, and the Console
picks the latest marked line out of that file (``parse``). So no extra actor or queue is needed,
and the log keeps the progress history. Emits are throttled per process: a step loop may call
``emit`` on every step. Anywhere else (a library call, a benchmark) it is dropped.
"""

from __future__ import annotations

import contextlib
import re
import sys
import time
from collections.abc import Callable, Iterator

MARK = "[aigc-progress] "
_MARKED = re.compile(re.escape(MARK) + r"(.*)")
WORKER_EVERY_S = 2.0  # a worker's marked lines: often enough for a live line, few enough for a log

_sink: Callable[[str], None] | None = None
_last_emit = 0.0


def emit(text: str, force: bool = False) -> None:
    """Report progress (at most one line per ``WORKER_EVERY_S`` from a worker; every call reaches
    an installed sink, which draws at its own pace). ``force``: also the final update of a loop."""
    global _last_emit
    if _sink is not None:
        _sink(text)
        return
    if not _in_ray_worker():  # a library call, a benchmark, a notebook: no line to feed
        return
    now = time.monotonic()
    if not force and now - _last_emit < WORKER_EVERY_S:
        return
    _last_emit = now
    print(MARK + text, file=sys.stdout, flush=True)


def listening() -> bool:
    """Whether anything would show an ``emit`` here (a terminal's line, or a driver relaying a
    worker's output): progress that costs work to measure is measured only then."""
    return _sink is not None or _in_ray_worker()


def _in_ray_worker() -> bool:
    ray = sys.modules.get("ray")
    if ray is None:
        return False
    try:
        from ray._private.worker import WORKER_MODE, global_worker

        return global_worker.mode == WORKER_MODE
    except Exception:  # noqa: BLE001 - a Ray without these names: say nothing rather than fail a step
        return False


def parse(line: str) -> str | None:
    """The progress text of a marked line (Ray's relay prefixes ``(RayTrainWorker pid=…)``), or None."""
    found = _MARKED.search(line)
    return found.group(1).split("\r")[0].strip() or None if found else None


@contextlib.contextmanager
def sink(show: Callable[[str], None]) -> Iterator[None]:
    """Send this process's ``emit`` calls to ``show`` for the duration of the block."""
    global _sink
    outer, _sink = _sink, show
    try:
        yield
    finally:
        _sink = outer


def eta(seconds: float) -> str:
    """A duration a person reads at a glance: 42s, 3m05s, 1h12m."""
    s = max(0, int(seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"
