"""A terminal a person can read: our lines on it, everything else in a log file per stage.

While a stage runs, the process's stdout and stderr (file descriptors 1 and 2, so also Ray's
worker output relayed to the driver, Ray Data's and Tune's progress tables, library warnings and
anything a subprocess started then writes) go to ``<root>/<name>/logs/<stage>.log``; the lines the
project means for the user go to the terminal through ``Console.say`` (and into the log too, for
context). With ``verbose`` nothing is redirected: everything streams as it comes, and the log
file holds our lines. A log under an ``s3://`` root is written locally and uploaded when the
stage ends. When a stage fails, ``failure_lines`` gives what to print: the log's path and its
last lines (the failing worker's own output is among them).

While a stage runs, one live line under its lines says where it is (``progress.emit`` from the
driver, or the latest marked line its workers printed into the log): redrawn in place on a
terminal; on anything else (CI, a file) a plain line every ``PLAIN_EVERY_S`` seconds at most.
"""

from __future__ import annotations

import contextlib
import io
import os
import shutil
import sys
import tempfile
import threading
import time
import traceback
from collections.abc import Iterator
from pathlib import Path

from . import progress
from .layout import logs_uri
from .spec import ExperimentSpec
from .storage import Storage

TAIL_LINES = 15
PLAIN_EVERY_S = 15.0  # a non-interactive output gets a progress line at most this often
FOLLOW_EVERY_S = 0.5  # how often the stage's log is read for its workers' progress


def _terminal() -> io.TextIOBase:
    """A stream to where stdout points now, unaffected by later redirection of descriptor 1 (when
    stdout is not descriptor 1, e.g. a test's capture, that stream itself)."""
    try:
        if sys.stdout.fileno() == 1:
            return os.fdopen(os.dup(1), "w", buffering=1, encoding=sys.stdout.encoding or "utf-8")
    except (AttributeError, OSError, io.UnsupportedOperation):
        pass
    return sys.stdout


def _is_tty(stream) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


class LiveLine:
    """The stage's one progress line: below everything else on a terminal, redrawn in place."""

    def __init__(self, out: io.TextIOBase, tty: bool, plain_every: float = PLAIN_EVERY_S):
        self.out, self.tty, self.plain_every = out, tty, plain_every
        self.lock = threading.Lock()
        self.text: str | None = None
        self.active = False
        self._drawn = False
        self._last_plain = 0.0
        self._printed: str | None = None

    def start(self) -> None:
        with self.lock:
            self.active, self.text, self._printed = True, None, None
            self._last_plain = time.monotonic()  # a stage shorter than plain_every prints none

    def stop(self) -> None:
        with self.lock:
            self._erase()
            self.active, self.text = False, None

    def show(self, text: str) -> None:
        with self.lock:
            if not self.active:
                return
            self.text = text
            if self.tty:
                self._draw()
            elif text != self._printed and time.monotonic() - self._last_plain >= self.plain_every:
                self.out.write(f"  > {text}\n")
                self.out.flush()
                self._printed, self._last_plain = text, time.monotonic()

    @contextlib.contextmanager
    def above(self) -> Iterator[None]:
        """Write a line of our own: the live line steps aside and comes back below it."""
        with self.lock:
            self._erase()
            yield
            if self.active and self.text and self.tty:
                self._draw()

    def _draw(self) -> None:
        width = shutil.get_terminal_size().columns
        self.out.write("\r\x1b[K" + f"  > {self.text}"[: max(10, width - 1)])
        self.out.flush()
        self._drawn = True

    def _erase(self) -> None:
        if self._drawn:
            self.out.write("\r\x1b[K")
            self.out.flush()
            self._drawn = False


def _follow(path: Path, start: int, stop: threading.Event, show) -> None:
    """Show the latest progress line that the stage's workers printed into its log."""
    with open(path, "rb") as f:
        f.seek(start)
        rest = b""
        while not stop.wait(FOLLOW_EVERY_S):
            rest += f.read()
            *lines, rest = rest.split(b"\n")
            for raw in reversed(lines):
                text = progress.parse(raw.decode("utf-8", errors="replace"))
                if text:
                    show(text)
                    break


class Console:
    def __init__(self, verbose: bool = False):
        self.verbose = verbose
        self.out = _terminal()
        self.live = LiveLine(self.out, _is_tty(self.out))
        self._log: io.TextIOBase | None = None
        self.last_log: str | None = None  # where the last stage's log went (local path or URI)
        self._tail: list[str] = []  # its last lines, read when it ended

    def say(self, *parts, sep: str = " ", end: str = "\n", **_) -> None:
        """``print`` for the user: to the terminal, and to the running stage's log."""
        text = sep.join(str(p) for p in parts) + end
        with self.live.above():
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
            with self._live_line(local) if not self.verbose else contextlib.nullcontext():
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

    @contextlib.contextmanager
    def _live_line(self, log: Path) -> Iterator[None]:
        """The live line for a stage whose output goes to ``log``: this process's progress
        directly, its workers' from the log. A nested stage follows its own log on its outer
        stage's line."""
        outer = self.live.active  # the `run` around the stages: its line comes back, emptied, after
        self.live.start()
        stop = threading.Event()
        follower = threading.Thread(
            target=_follow, args=(log, log.stat().st_size, stop, self.live.show), name="aigc-progress", daemon=True
        )
        follower.start()
        try:
            with progress.sink(self.live.show):
                yield
        finally:
            stop.set()
            follower.join(timeout=5)
            self.live.stop()
            if outer:
                self.live.start()

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
