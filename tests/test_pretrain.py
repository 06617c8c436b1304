"""Pretraining on real Ray Train + DeepSpeed (CPU, gloo), data and checkpoints on the S3 server."""

from __future__ import annotations

import json
import math
import threading
import time

import numpy as np
import psutil
import pytest
import torch

from aigc_ray.cli import main
from aigc_ray.data.lm_blocks import local_blocks
from aigc_ray.layout import pretrain_dir
from aigc_ray.spec import load_spec
from aigc_ray.storage import Storage, join
from aigc_ray.train.pretrain import pretrain

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

FAST = ["pretrain.lr=0.003", "pretrain.warmup_steps=2", "pretrain.log_every=5", "pretrain.eval_batches=4"]


def spec_for(base_spec, name: str, *overrides: str):
    root = [f"storage.root={base_spec.storage.root}"]
    if base_spec.storage.endpoint_url:
        root.append(f"storage.endpoint_url={base_spec.storage.endpoint_url}")
    return load_spec(None, [*root, f"name={name}", "data.rows_per_shard=300", *FAST, *overrides])


def history(storage: Storage, export_uri: str) -> list[dict]:
    return [json.loads(line) for line in storage.read_bytes(join(export_uri, "history.jsonl")).decode().splitlines()]


@pytest.mark.parametrize(("stage", "objective"), [(0, "clm"), (1, "mlm"), (2, "clm"), (3, "clm")])
def test_zero_stage_trains_and_exports_to_plain_transformers(ray_local, s3_data, tmp_path, stage, objective):
    base, storage = s3_data
    spec = spec_for(
        base,
        f"zero{stage}",
        f"pretrain.zero_stage={stage}",
        f"pretrain.objective={objective}",
        "pretrain.max_steps=12",
        "pretrain.checkpoint_every=4",
        "pretrain.keep_checkpoints=2",
    )
    result = pretrain(spec, storage, log=lambda *_: None)
    assert result.export_uri.startswith("s3://")
    kept = {
        f.split("/checkpoint_2")[1].split("/")[0]
        for f in storage.list_files(join(pretrain_dir(spec), "ray"))
        if "/checkpoint_2" in f
    }
    assert len(kept) == 2  # 3 checkpoints were written; the oldest was pruned after the newest committed
    losses = [h["loss"] for h in history(storage, result.export_uri)]
    assert len(losses) == 12 and losses[-1] < losses[0] - 0.2, losses

    from transformers import AutoModelForCausalLM, AutoModelForMaskedLM, AutoTokenizer

    folder = storage.download(result.export_uri, tmp_path / "export")
    auto = AutoModelForCausalLM if objective == "clm" else AutoModelForMaskedLM
    model = auto.from_pretrained(folder).eval()  # plain transformers, no code of ours
    tok = AutoTokenizer.from_pretrained(folder)
    assert (tmp_path / "export" / "model.safetensors").exists()
    # The held-out loss of the plain model equals the engine's, on the same rows (and masks).
    from aigc_ray.train.export import plain_eval_loss
    from aigc_ray.train.pretrain import loop_config

    val = local_blocks(spec, storage, "val", spec.pretrain.seq_len)
    assert math.isclose(plain_eval_loss(model, val, loop_config(spec)), result.eval["eval_loss"], rel_tol=1e-5)
    if objective == "clm":
        out = model.generate(**tok("a handwritten", return_tensors="pt"), max_new_tokens=5, do_sample=False)
        assert out.shape[1] > 2
        assert result.eval["eval_perplexity"] == pytest.approx(math.exp(result.eval["eval_loss"]))
    else:
        assert 0 < result.eval["eval_masked_accuracy"] <= 1
    if stage == 3:  # on request: the latest committed checkpoint exported again gives the same model
        from aigc_ray.train.pretrain import export_latest

        before = storage.read_bytes(join(result.export_uri, "model.safetensors"))
        uri, again = export_latest(spec, storage, log=lambda *_: None)
        assert uri == result.export_uri and again["eval_loss"] == result.eval["eval_loss"]
        assert storage.read_bytes(join(uri, "model.safetensors")) == before


def _committed_checkpoints(storage: Storage, ckpt_root: str) -> int:
    """Checkpoints Ray Train has registered (its snapshot is written after a checkpoint commits)."""
    snapshots = [f for f in storage.list_files(ckpt_root) if f.endswith("checkpoint_manager_snapshot.json")]
    return sum(len(storage.read_json(f)["checkpoint_results"]) for f in snapshots)


def _kill_a_worker_after_first_checkpoint(storage: Storage, ckpt_root: str, killed: list) -> None:
    """Watch storage for the first committed checkpoint, then SIGKILL one Ray Train worker."""
    deadline = time.time() + 240
    while time.time() < deadline and not killed:
        if _committed_checkpoints(storage, ckpt_root) >= 1:
            for proc in psutil.process_iter(["cmdline"]):
                if any("RayTrainWorker" in part for part in proc.info["cmdline"] or []):
                    proc.kill()
                    killed.append(proc.pid)
                    return
        time.sleep(0.05)


def test_killed_worker_is_replaced_and_the_resumed_run_matches_an_uninterrupted_one(ray_local, local_data):
    base, storage = local_data
    common = ["pretrain.max_steps=40", "pretrain.checkpoint_every=10", "pretrain.max_failures=2"]
    reference = pretrain(spec_for(base, "uninterrupted", *common), storage, log=lambda *_: None)

    spec = spec_for(base, "interrupted", *common)
    killed: list[int] = []
    watcher = threading.Thread(
        target=_kill_a_worker_after_first_checkpoint,
        args=(storage, join(pretrain_dir(spec), "ray"), killed),
        daemon=True,
    )
    watcher.start()
    resumed = pretrain(spec, storage, log=lambda *_: None)
    watcher.join(timeout=5)
    assert killed, "no worker was killed: the run ended before its first checkpoint was seen"
    assert resumed.eval["resumes"] and resumed.eval["resumes"][0]["world_size"] == 2
    ref, got = history(storage, reference.export_uri), history(storage, resumed.export_uri)
    assert [h["step"] for h in got] == list(range(1, 41))
    np.testing.assert_allclose([h["loss"] for h in got], [h["loss"] for h in ref], rtol=1e-6)
    assert resumed.eval["eval_loss"] == pytest.approx(reference.eval["eval_loss"], rel=1e-6)


def test_resume_on_fewer_workers_continues_from_the_checkpoint(ray_local, local_data):
    from ray.train import ControllerError, WorkerGroupError

    base, storage = local_data
    common = ["pretrain.max_steps=30", "pretrain.checkpoint_every=10", "pretrain.max_failures=0"]
    spec = spec_for(base, "shrink", *common)
    killed: list[int] = []
    watcher = threading.Thread(
        target=_kill_a_worker_after_first_checkpoint,
        args=(storage, join(pretrain_dir(spec), "ray"), killed),
        daemon=True,
    )
    watcher.start()
    with pytest.raises((WorkerGroupError, ControllerError)):
        pretrain(spec, storage, log=lambda *_: None)
    assert killed
    # The same command, same run name, now on one worker: it resumes instead of starting over.
    smaller = spec_for(base, "shrink", *common, "pretrain.num_workers=1")
    result = pretrain(smaller, storage, log=lambda *_: None)
    (resume,) = result.eval["resumes"]
    assert resume["from_world_size"] == 2 and resume["world_size"] == 1 and resume["at_step"] % 10 == 0
    steps = history(storage, result.export_uri)
    assert [h["step"] for h in steps] == list(range(1, 31))
    at = resume["at_step"]
    before, after = steps[at - 1]["loss"], steps[at]["loss"]
    assert abs(after - before) < 0.3 < steps[0]["loss"] - after  # continued, not restarted from scratch


def test_bad_pretrain_specs_are_refused_before_ray_starts(tmp_path, capsys):
    cases = {
        "pretrain.zero_stage=4": "pretrain.zero_stage = 4: Input should be 0, 1, 2 or 3",
        "pretrain.global_batch_size=20": "global_batch_size (20) must be divisible by micro_batch_size × num_workers = 8 × 2 = 16",
        "pretrain.family=llama": "pretrain.family = \"llama\": Input should be 'gpt2' or 'bert'",
        "pretrain.min_workers=3": "min_workers (3) > num_workers (2)",
        "pretrain.num_workers=4;pretrain.min_workers=2": "an elastic run (min_workers 2) may run on 3: global_batch_size "
        "(32) must be divisible by micro_batch_size × num_workers = 8 × 3 = 24",
        "pretrain.worker_resources={CPU: 2}": "worker_resources cannot set CPU",
    }
    for overrides, message in cases.items():
        started = time.perf_counter()
        sets = [arg for override in overrides.split(";") for arg in ("--set", override)]
        assert main(["pretrain", "-c", "examples/quickstart.yaml", *sets, "--set", f"storage.root={tmp_path}"]) == 1
        assert message in capsys.readouterr().err
        assert time.perf_counter() - started < 5  # refused up front, no Ray start
    assert not torch.distributed.is_initialized()
