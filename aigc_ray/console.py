"""A terminal a person can read: our lines on it, everything else in a log file per stage.

While a stage runs, the process's stdout and stderr (file descriptors 1 and 2, so also Ray's
worker output relayed to the driver, Ray Data's and Tune's progress tables, library warnings and
anything a subprocess started then writes) go to ``<root>/<name>/logs/<stage>.log``; the lines the
project means for the user go to the terminal through ``Console.say`` (and into the log too, for
context). With ``verbose`` nothing is redirected: everything streams as it comes, and the log
file holds our lines. A log under an ``s3://`` root is written locally and uploaded when the
stage ends. When a stage fails, ``failure_lines`` gives what to print: the log's path and its
last lines (the failing worker's own output is among them).
"""

from __future__ import annotations

import contextlib
import io
import os
import sys
import tempfile
import traceback
from collections.abc import Iterator
from pathlib import Path

from .layout import logs_uri
from .spec import ExperimentSpec
from .storage import Storage

TAIL_LINES = 15


def _terminal() -> io.TextIOBase:
    """A stream to where stdout points now, unaffected by later redirection of descriptor 1 (when
    stdout is not descriptor 1, e.g. a test's capture, that stream itself)."""
    try:
        if sys.stdout.fileno() == 1:
            return os.fdopen(os.dup(1), "w", buffering=1, encoding=sys.stdout.encoding or "utf-8")
    except (AttributeError, OSError, io.UnsupportedOperation):
        pass
    return sys.stdout


class Console:
    def __init__(self, verbose: bool = False):
        self.verbose = verbose
        self.out = _terminal()
        self._log: io.TextIOBase | None = None
        self.last_log: str | None = None  # where the last stage's log went (local path or URI)
        self._tail: list[str] = []  # its last lines, read when it ended

    def say(self, *parts, sep: str = " ", end: str = "\n", **_) -> None:
        """``print`` for the user: to the terminal, and to the running stage's log."""
        text = sep.join(str(p) for p in parts) + end
        self.out.write(text)
        self.out.flush()
        if self._log is not None:
            self._log.write(text)
            self._log.flush()

    @contextlib.contextmanager
    def stage(self, spec: ExperimentSpec, name: str) -> Iterator[None]:
        """Run a stage with its output in its log file (nested: the inner stage's file wins)."""
        storage = Storage.from_spec(spec.storage)
        uri = logs_uri(spec, name)
        remote = "://" in uri
        tmp = tempfile.TemporaryDirectory(prefix="aigc-log-") if remote else None
        local = Path(tmp.name, f"{name}.log") if tmp else Path(uri)
        local.parent.mkdir(parents=True, exist_ok=True)
        outer_log, self._log = self._log, open(local, "a", encoding="utf-8", buffering=1)  # noqa: SIM115
        self.last_log = uri
        saved = None
        if not self.verbose:
            sys.stdout.flush()
            sys.stderr.flush()
            saved = os.dup(1), os.dup(2)
            fd = os.open(local, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
            os.dup2(fd, 1)
            os.dup2(fd, 2)
            os.close(fd)
        try:
            yield
        except Exception:
            traceback.print_exc(file=self._log)  # the whole story in the log; the terminal gets one line
            raise
        finally:
            if saved is not None:
                sys.stdout.flush()
                sys.stderr.flush()
                os.dup2(saved[0], 1)
                os.dup2(saved[1], 2)
                os.close(saved[0])
                os.close(saved[1])
            self._log.close()
            self._log = outer_log
            self._tail = _last_lines(local)
            if tmp is not None:
                with contextlib.suppress(Exception):  # a log that cannot be uploaded must not hide the stage's result
                    storage.write_bytes(uri, local.read_bytes())
                tmp.cleanup()

    def failure_lines(self) -> list[str]:
        """After a failed stage: where its log is, and the log's last lines."""
        if self.last_log is None:
            return []
        return [f"log: {self.last_log}"] + [f"  | {line}" for line in self._tail]


def _last_lines(path: Path, n: int = TAIL_LINES) -> list[str]:
    """The last ``n`` lines of a file (reading at most its last 64 KiB); progress bars' carriage
    returns keep only what was drawn last."""
    with open(path, "rb") as f:
        f.seek(0, os.SEEK_END)
        f.seek(max(0, f.tell() - 65536))
        text = f.read().decode("utf-8", errors="replace")
    lines = [line.rsplit("\r", 1)[-1].rstrip() for line in text.splitlines()]
    return [line for line in lines if line][-n:]
