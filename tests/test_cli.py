"""The `aigc` command as a user runs it: real subprocesses, real S3 server, a real Ray cluster."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from aigc_ray.cli import main

AIGC = str(Path(sys.executable).parent / "aigc")
REPO = Path(__file__).resolve().parent.parent


def aigc(*args, env=None, timeout=240) -> subprocess.CompletedProcess:
    return subprocess.run(
        [AIGC, *args], capture_output=True, text=True, timeout=timeout, env={**os.environ, **(env or {})}
    )


def test_data_build_then_validate_on_s3(s3_server):
    bucket = s3_server.make_bucket("aigc-cli")
    common = ["--set", f"storage.root=s3://{bucket}/exp", "--set", f"storage.endpoint_url={s3_server.endpoint}"]
    built = aigc("data", "build", "-c", str(REPO / "examples" / "quickstart.yaml"), *common)
    assert built.returncode == 0, built.stderr
    assert "multimodal wrote 1797 rows in 8 shards" in built.stdout and "tokenizer  trained" in built.stdout
    again = aigc("data", "build", "-c", str(REPO / "examples" / "quickstart.yaml"), *common)
    assert "everything was up to date" in again.stdout
    checked = aigc("data", "validate", f"s3://{bucket}/exp/data/multimodal", "--endpoint-url", s3_server.endpoint)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "1797 rows (test 180, train 1437, val 180)" in checked.stdout


def test_bad_inputs_exit_1_with_a_named_problem(s3_server, tmp_path):
    missing = aigc(
        "data",
        "build",
        "--set",
        "storage.root=s3://nobucket-here/x",
        "--set",
        f"storage.endpoint_url={s3_server.endpoint}",
        "-c",
        str(REPO / "examples" / "quickstart.yaml"),
    )
    assert missing.returncode == 1 and "s3://nobucket-here: bucket does not exist" in missing.stderr
    assert "Traceback" not in missing.stderr
    wrong = aigc(
        "data",
        "validate",
        "s3://nobucket-here/x",
        "--endpoint-url",
        s3_server.endpoint,
        env={"AWS_ACCESS_KEY_ID": "AKIAWRONG", "AWS_SECRET_ACCESS_KEY": "wrong"},
    )
    assert wrong.returncode == 1 and "access denied" in wrong.stderr
    typo = tmp_path / "typo.yaml"
    typo.write_text("data:\n  rows_per_shard: 0\n")
    bad = aigc("data", "build", "-c", str(typo))
    assert bad.returncode == 1 and "data.rows_per_shard = 0: Input should be greater than or equal to 1" in bad.stderr
    assert not (tmp_path / "runs").exists()


@pytest.mark.slow
def test_stream_into_train_workers_on_an_existing_cluster(ray_local, s3_data):
    """`aigc data stream --address` joins a running cluster (Ray 2.60 token auth included), and
    the spec's worker environment (threads pinned) reaches the Train workers."""
    spec, _ = s3_data
    address = ray_local.get_runtime_context().gcs_address
    res = aigc(
        "data",
        "stream",
        "--address",
        address,
        "--workers",
        "2",
        "--set",
        f"storage.root={spec.storage.root}",
        "--set",
        f"storage.endpoint_url={spec.storage.endpoint_url}",
        "--set",
        "data.rows_per_shard=300",
        "--set",
        "data.equal_shards=false",
        "-c",
        str(REPO / "examples" / "quickstart.yaml"),
    )
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-3000:]
    assert "worker 0:" in res.stdout and "worker 1:" in res.stdout
    assert res.stdout.count("torch threads 1,") == 2
    assert "total 1437 rows across 2 Ray Train workers" in res.stdout


@pytest.mark.slow
def test_run_is_the_demo_on_an_embedded_ray(tmp_path):
    """What `make demo` runs (fewer steps, smaller sweeps): data, a streamed epoch, pretraining,
    fine-tuning and both sweeps on an embedded Ray that the command starts and stops itself."""
    from conftest import TINY_SWEEPS, free_port

    small_sweeps = [*TINY_SWEEPS, f"serve.port={free_port()}"]
    res = aigc(
        "run",
        "-c",
        str(REPO / "examples" / "quickstart.yaml"),
        "--set",
        f"storage.root={tmp_path}/runs",
        "--set",
        "pretrain.max_steps=8",
        "--set",
        "pretrain.checkpoint_every=8",
        "--set",
        "finetune.max_steps=8",
        "--set",
        "finetune.checkpoint_every=8",
        *(x for o in small_sweeps for x in ("--set", o)),
        env={"RAY_ADDRESS": ""},
        timeout=480,
    )
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-3000:]
    assert "rows 1437 in 23 batches" in res.stdout and "unique ids 1437" in res.stdout
    assert "[finetune] sample: 'Caption for a zero:" in res.stdout
    assert "[finetune] captions name the class asked for:" in res.stdout
    assert "pipeline finished" in res.stdout
    assert (tmp_path / "runs" / "quickstart" / "finetune" / "export" / "model.safetensors").exists()
    assert "[sweep] best cond_accuracy" in res.stdout and "[sweep] best accuracy" in res.stdout
    assert "[sweep] best frame_fid" in res.stdout
    sweeps = tmp_path / "runs" / "quickstart" / "sweeps"
    plots = (
        "gan/results/samples.png",
        "gan/results/curves.png",
        "fusion/results/curves.png",
        "video/results/strip.png",
    )
    for plot in plots:
        assert (sweeps / plot).read_bytes()[:4] == b"\x89PNG", plot
    # it ends with the served ensemble answering one request of each kind
    for route in ("/v1/models", "/v1/classify", "/v1/images", "/v1/videos", "/v1/completions", "/v1/feedback"):
        assert f"  {route}" in res.stdout, route
    assert "'a handwritten " in res.stdout and "read back as [" in res.stdout
    report = (tmp_path / "runs" / "quickstart" / "report" / "report.html").read_text()
    assert "Ensemble vs members" in report and "data:image/png;base64," in report and "/v1/classify" in report
    assert "Video sweep" in report and "Best cond_accuracy by generator: " in report
    assert list((tmp_path / "runs" / "quickstart" / "feedback").glob("part-*.parquet"))
    # the report explains the ensemble and says what the safety filter did; so does `aigc explain`
    assert "  /v1/explain" in res.stdout and "of the decision" in res.stdout
    md = (tmp_path / "runs" / "quickstart" / "report" / "report.md").read_text()
    assert "## Explanations" in md and "| exact |" in md and "| vague |" in md and "explanations.png" in md
    assert "## Safety filter" in md and "texts checked" in md and "0 flagged" in md
    explained_by_the_command(tmp_path)


def explained_by_the_command(tmp_path) -> None:
    """`aigc explain` on the run's ensemble: a test image of a 3 with the baseline caption itself
    (it names no class: its Shapley value is exactly 0, the decision all the image's), written as
    JSON and a PNG overlay; a class the data does not have is refused."""
    from aigc_ray.data.arrays import shard_arrays
    from aigc_ray.data.images import encode_png
    from aigc_ray.storage import Storage

    test = shard_arrays(Storage(), str(tmp_path / "runs" / "data" / "multimodal"), "test")
    three = int(np.flatnonzero(test["label"] == 3)[0])
    image = tmp_path / "three.png"
    image.write_bytes(encode_png(test["image"][three].transpose(1, 2, 0), scale=4))
    out = tmp_path / "why" / "three.json"
    args = ["-c", str(REPO / "examples" / "quickstart.yaml"), "--set", f"storage.root={tmp_path}/runs"]
    got = main(["explain", *args, "--image", str(image), "--text", "a handwritten digit", "--out", str(out)])
    assert got == 0
    why = json.loads(out.read_text())
    assert why["target"] == why["label"] and why["modality_shares"] == {"image": 1.0, "caption": 0.0}
    assert np.asarray(why["image_attribution"]).shape == (1, 8, 8) and why["tokens"]
    assert out.with_suffix(".png").read_bytes()[:4] == b"\x89PNG"
    assert main(["explain", *args, "--image", str(image), "--text", "a", "--target", "eleven"]) == 1
