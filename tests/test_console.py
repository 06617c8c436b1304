"""The terminal shows our lines; Ray's and the libraries' output goes to the stage's log file, or
to the terminal too with -v; a failing stage prints one reason, its log's path and last lines."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from aigc_ray.console import Console
from aigc_ray.spec import load_spec

# What Ray Data prints on its own on every run (Ray's token-auth notice is not printed on every
# ray.init, so it is not listed here).
RAY_CHATTER = ("Execution plan of Dataset", "Running Dataset")


def _aigc(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.run(
        [sys.executable, "-m", "aigc_ray.cli", *args], capture_output=True, text=True, env=env, timeout=300
    )


@pytest.mark.slow
def test_ray_output_goes_to_the_stage_log_and_verbose_shows_it(local_data):
    root = local_data[0].storage.root
    common = ["-c", "examples/quickstart.yaml", "--set", f"storage.root={root}", "--set", "name=console"]
    quiet = _aigc("data", "stream", *common)
    assert quiet.returncode == 0, quiet.stderr
    terminal = quiet.stdout + quiet.stderr
    assert "rows 1437 in" in quiet.stdout and "labels" in quiet.stdout  # our report of the stream
    assert not any(chatter in terminal for chatter in RAY_CHATTER), terminal
    assert len(terminal.strip().splitlines()) <= 8, terminal
    log = Path(root, "console", "logs", "stream.log").read_text()
    assert all(chatter in log for chatter in RAY_CHATTER)
    assert "rows 1437 in" in log  # our lines are in the log too, for context

    loud = _aigc("-v", "data", "stream", *common)
    assert loud.returncode == 0 and all(chatter in loud.stdout + loud.stderr for chatter in RAY_CHATTER)


@pytest.mark.slow
def test_a_stage_that_fails_unexpectedly_prints_its_reason_its_log_and_the_logs_last_lines(local_data, tmp_path):
    import shutil

    from aigc_ray.layout import multimodal_uri

    spec = local_data[0]
    data = Path(tmp_path, "data")
    shutil.copytree(multimodal_uri(spec), data / "multimodal")
    # A set without a manifest (plain Parquet files, as another tool writes them) has nothing to
    # check its files against: a truncated one fails inside Ray Data's read task.
    (data / "multimodal" / "_manifest.json").unlink()
    first = sorted((data / "multimodal").glob("*.parquet"))[0]
    first.write_bytes(first.read_bytes()[:100])
    common = ["-c", "examples/quickstart.yaml", "--set", f"storage.root={tmp_path}", "--set", f"data.uri={data}"]
    failed = _aigc("data", "stream", *common)
    assert failed.returncode == 1
    lines = failed.stderr.strip().splitlines()
    assert lines[0].startswith("error: "), failed.stderr
    assert lines[1] == f"log: {tmp_path}/quickstart/logs/stream.log"
    assert len(lines) > 2 and all(line.startswith("  | ") for line in lines[2:]), failed.stderr  # the log tail
    assert "Traceback" not in failed.stdout + failed.stderr
    assert "Traceback" in Path(tmp_path, "quickstart", "logs", "stream.log").read_text()  # all of it is there


@pytest.mark.slow
def test_an_error_that_names_its_cause_is_one_line(local_data, tmp_path):
    import shutil

    from aigc_ray.layout import multimodal_uri

    data = Path(tmp_path, "data")
    shutil.copytree(multimodal_uri(local_data[0]), data / "multimodal")
    first = sorted((data / "multimodal").glob("*.parquet"))[0]
    size = first.stat().st_size
    first.write_bytes(first.read_bytes()[:100])  # truncated: the manifest says what it should be
    common = ["-c", "examples/quickstart.yaml", "--set", f"storage.root={tmp_path}", "--set", f"data.uri={data}"]
    failed = _aigc("data", "stream", *common)
    assert failed.returncode == 1
    assert failed.stderr.strip().splitlines() == [
        f"error: {first}: 100 bytes, the manifest says {size}"
        " (truncated or overwritten since it was built); run `aigc data build` to rebuild it"
    ]


def test_a_stage_log_under_s3_is_uploaded_when_the_stage_ends(s3_server):
    from aigc_ray.storage import Storage

    bucket = s3_server.make_bucket("aigc-logs")
    spec = load_spec(None, [f"storage.root=s3://{bucket}/x", f"storage.endpoint_url={s3_server.endpoint}"])
    console = Console(verbose=True)  # no descriptor games inside pytest: our lines only
    with console.stage(spec, "pretrain"):
        console.say("step 10 loss 3.2")
    text = Storage.from_spec(spec.storage).read_bytes(f"s3://{bucket}/x/quickstart/logs/pretrain.log").decode()
    assert text == "step 10 loss 3.2\n"
    assert console.failure_lines() == [f"log: s3://{bucket}/x/quickstart/logs/pretrain.log", "  | step 10 loss 3.2"]


def test_the_live_line_shows_workers_progress_from_the_log_and_this_process_directly(tmp_path, capsys):
    import time

    from aigc_ray import progress

    spec = load_spec(None, [f"storage.root={tmp_path}"])
    console = Console()  # quiet: descriptor 1 goes to the stage's log, our lines to pytest's stdout
    console.live.plain_every = 0.0  # not a terminal: a plain line per change, here without a pause
    seen = ""
    with console.stage(spec, "pretrain"):
        console.say("[3/9] pretrain: running")
        # a worker's line as Ray relays it to the driver, prefix and all
        os.write(1, f"(RayTrainWorker pid=42) {progress.MARK}pretrain step 3/10 · loss 2.5000\n".encode())
        deadline = time.monotonic() + 20
        while "step 3/10" not in seen and time.monotonic() < deadline:
            time.sleep(0.1)
            seen += capsys.readouterr().out
        progress.emit("sweep gan: 1/4 trials done")  # this process: straight to the line
    seen += capsys.readouterr().out
    assert seen.splitlines() == [
        "[3/9] pretrain: running",
        "  > pretrain step 3/10 · loss 2.5000",
        "  > sweep gan: 1/4 trials done",
    ]
    log = Path(tmp_path, "quickstart", "logs", "pretrain.log").read_text()
    assert f"{progress.MARK}pretrain step 3/10" in log  # the history stays in the log
    progress.emit("after the stage", force=True)  # no line open, not a Ray worker: nothing printed
    assert capsys.readouterr().out == ""


def test_on_a_terminal_the_live_line_is_redrawn_in_place_below_our_lines():
    import io

    from aigc_ray.console import LiveLine

    out = io.StringIO()
    line = LiveLine(out, tty=True)
    line.show("ignored: no stage running")
    line.start()
    line.show("step 1/3")
    line.show("step 2/3")
    with line.above():
        out.write("a line of ours\n")
    line.stop()
    erase = "\r\x1b[K"
    assert out.getvalue() == (
        f"{erase}  > step 1/3{erase}  > step 2/3{erase}a line of ours\n{erase}  > step 2/3{erase}"
    )
    quiet = io.StringIO()
    plain = LiveLine(quiet, tty=False, plain_every=3600)
    plain.start()
    plain.show("step 1/3")  # a stage shorter than plain_every prints no progress line
    assert quiet.getvalue() == ""


def test_a_stage_inside_the_run_leaves_no_progress_line_behind(tmp_path, capsys):
    from aigc_ray import progress

    spec = load_spec(None, [f"storage.root={tmp_path}"])
    console = Console()
    console.live.tty = True  # drawn as on a terminal
    with console.stage(spec, "run"):
        with console.stage(spec, "data"):
            progress.emit("multimodal/v1: 256 rows written")
            console.say("  data written")
        console.say("[1/9] data: done")
        console.say("[2/9] stream: running")
    out = capsys.readouterr().out
    erase = "\r\x1b[K"
    assert out.endswith(f"{erase}[1/9] data: done\n[2/9] stream: running\n"), repr(out)
    assert out.count("rows written") == 2  # drawn, then drawn again below our line, never after the stage


@pytest.mark.slow
def test_a_ray_worker_reports_progress_and_a_plain_driver_does_not(ray_local):
    import ray

    from aigc_ray import progress

    @ray.remote(num_cpus=0)
    def where() -> bool:
        progress.emit("task step 1/1", force=True)  # printed as a marked line, which Ray relays
        return progress._in_ray_worker()

    assert ray.get(where.remote()) is True
    assert progress._in_ray_worker() is False  # this driver has no line: emit drops the text
