"""`aigc run` as a DAG on the S3 server: every stage once (tiny sizes, real Ray, real Serve and
HTTP), then re-runs that skip what is up to date, decided from the lineage manifests."""

from __future__ import annotations

import pytest
from conftest import TINY_RUN as TINY

from aigc_ray.pipeline import STAGES, RunOptions, freshness, plan_run, run_pipeline
from aigc_ray.spec import load_spec


def statuses(results):
    return {r.name: r.status for r in results}


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_the_pipeline_runs_on_s3_then_skips_what_is_up_to_date(ray_local, s3_data, s3_server):
    from conftest import free_port

    from aigc_ray.storage import Storage

    base, _ = s3_data
    args = [
        f"storage.root={base.storage.root}",
        f"storage.endpoint_url={base.storage.endpoint_url}",
        "name=pipeline",
        "data.rows_per_shard=300",
        f"serve.port={free_port()}",
        *TINY,
    ]
    spec = load_spec("examples/quickstart.yaml", args)
    storage = Storage.from_spec(spec.storage)
    quiet = {"log": lambda *_: None}
    no_serve = RunOptions(skip_serve=True)

    first = run_pipeline(spec, storage, **quiet)
    assert statuses(first) == {
        "data": "skipped",  # built by the fixture already, and found up to date
        "stream": "skipped",
        "pretrain": "ran",
        "finetune": "ran",
        "sweep_gan": "ran",
        "sweep_video": "ran",
        "sweep_fusion": "ran",
        "ensemble": "ran",
        "robustness": "skipped",  # robustness.enabled is false
        "serve": "ran",
    }
    answers = first[-1].summary["answers"]
    assert set(answers) == {"classify", "explain", "images", "videos", "completion", "feedback"}
    assert answers["explain"]["label"] == answers["classify"]["label"]
    assert answers["images"]["prompt"].startswith("a handwritten ") and len(answers["images"]["read_back"]) == 4
    assert answers["videos"]["data"][0]["media_type"] == "image/gif"
    assert answers["feedback"]["stored"].startswith("s3://")
    probabilities = answers["classify"]["probabilities"]
    assert len(probabilities) == 10 and abs(sum(probabilities) - 1) < 1e-4
    assert answers["classify"]["label"] == max(range(10), key=probabilities.__getitem__)
    (choice,) = answers["completion"]["choices"]
    assert isinstance(choice["text"], str) and choice["finish_reason"] in ("stop", "length")

    planned = {p.name: p.state for p in plan_run(spec, storage, no_serve)}  # the dry run agrees, before
    assert planned == {**{n: "up to date" for n in planned}, "robustness": "off", "serve": "off"}, planned
    again = run_pipeline(spec, storage, no_serve, **quiet)
    assert set(statuses(again).values()) == {"skipped"}, statuses(again)
    assert all(r.why for r in again)

    # a change to one sweep re-runs that sweep and what depends on it, nothing else
    changed = load_spec("examples/quickstart.yaml", [*args, "gan.sweep.max_iterations=1"])
    planned = {p.name: p.state for p in plan_run(changed, storage, no_serve)}
    assert {n for n, state in planned.items() if state == "stale"} == {"sweep_gan", "ensemble"}, planned
    third = run_pipeline(changed, storage, no_serve, **quiet)
    ran = {n for n, s in statuses(third).items() if s == "ran"}
    assert ran == {"sweep_gan", "ensemble"}, statuses(third)
    why = {r.name: r.why for r in third}
    assert why["sweep_gan"] == "its spec sections changed" and "sweeps/gan/results changed" in why["ensemble"]


def test_freshness_follows_recorded_fingerprints(tmp_path):
    from pathlib import Path

    from aigc_ray.manifest import publish_directory
    from aigc_ray.storage import Storage

    storage = Storage(None)
    parent, child = str(tmp_path / "parent"), str(tmp_path / "child")
    src = Path(tmp_path / "src")
    src.mkdir()
    (src / "a.txt").write_text("one")
    p = publish_directory(storage, src, parent, kind="x", spec_hash="s")
    publish_directory(
        storage, src, child, kind="y", spec_hash="h", inputs={parent: p.fingerprint, "/ckpt": "ray-train-checkpoint"}
    )
    fresh, why = freshness(storage, child, "h")
    assert fresh and why.startswith("up to date (")  # the checkpoint input is not an artifact: ignored
    assert freshness(storage, child, "other") == (False, "its spec sections changed")
    (src / "a.txt").write_text("two")
    publish_directory(storage, src, parent, kind="x", spec_hash="s")  # the parent changed
    assert freshness(storage, child, "h") == (False, f"its input {parent} changed")
    assert freshness(storage, str(tmp_path / "nothing"), "h") == (False, "not built yet")


def test_a_change_to_any_setting_a_stage_reads_makes_it_stale(tmp_path):
    """Each training stage reads only its own section (fine-tuning no longer borrows precision,
    clipping, decay, offload or GPUs from pretrain:), and its freshness hash covers that section:
    a change to what it reads re-runs it, a change to another stage's settings does not."""
    from aigc_ray.manifest import publish_directory
    from aigc_ray.spec import spec_hash
    from aigc_ray.storage import Storage
    from aigc_ray.train.ds_config import deepspeed_config

    stages = {s.name: s for s in STAGES}
    storage = Storage(None)
    src = tmp_path / "src"
    src.mkdir()
    (src / "a.txt").write_text("x")
    base = ["finetune.base=minilm", "finetune.task=classify", f"storage.root={tmp_path}"]
    spec = load_spec(None, base)
    out = stages["finetune"].output(spec)
    publish_directory(storage, src, out, kind="y", spec_hash=spec_hash(spec, *stages["finetune"].sections))
    assert freshness(storage, out, spec_hash(spec, *stages["finetune"].sections))[0]
    for setting in ("grad_clip=0.5", "precision=bf16", "weight_decay=0.1", "lr=0.01", "use_gpu=true"):
        changed = load_spec(None, [*base, f"finetune.{setting}"])
        fresh, why = freshness(storage, out, spec_hash(changed, *stages["finetune"].sections))
        assert (fresh, why) == (False, "its spec sections changed"), setting
        elsewhere = load_spec(None, [*base, f"pretrain.{setting}"])
        assert freshness(storage, out, spec_hash(elsewhere, *stages["finetune"].sections))[0], setting
    # and the engine is configured from the fine-tune's own section
    clipped = load_spec(None, [*base, "finetune.grad_clip=0.25", "pretrain.grad_clip=2.0", "finetune.precision=bf16"])
    ds = deepspeed_config(clipped.finetune, clipped.finetune.num_workers)
    assert ds["gradient_clipping"] == 0.25 and ds["bf16"]["enabled"] is True
    assert deepspeed_config(clipped.pretrain, 2)["gradient_clipping"] == 2.0


def test_dry_run_says_what_would_run_without_starting_ray(tmp_path):
    import subprocess
    import sys

    code = (
        "import sys; from aigc_ray.cli import main; "
        f"rc = main(['run', '-c', 'examples/quickstart.yaml', '--dry-run', '--no-serve', '--set', 'storage.root={tmp_path}']); "
        "assert 'ray' not in sys.modules, 'the dry run imported Ray'; sys.exit(rc)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    lines = {line.split()[0]: line.split()[1:] for line in out.stdout.splitlines()[1:]}
    assert lines["data"][:2] == ["not", "built"] and lines["ensemble"][:2] == ["not", "built"]
    assert lines["serve"][0] == "off"
    assert not (tmp_path / "quickstart").exists() and not (tmp_path / "data").exists()  # nothing written


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_the_second_embedded_dataset_runs_the_same_way(ray_local, tmp_path):
    """The shapes (32x32 RGB, 6 classes) through every stage and Serve: models sized from the
    manifest, prompts and captions from the class names, answers in the data's shape."""
    import base64

    from conftest import free_port

    from aigc_ray.data.images import decode_png
    from aigc_ray.data.shapes import CLASSES
    from aigc_ray.storage import Storage

    robustness = [
        "robustness.enabled=true",
        "robustness.examples=40",
        "robustness.epsilons=[0, 0.1]",
        "robustness.pgd_steps=3",
    ]
    args = [f"storage.root={tmp_path}", "data.dataset=shapes", f"serve.port={free_port()}", *TINY, *robustness]
    spec = load_spec("examples/quickstart.yaml", args)
    results = run_pipeline(spec, Storage.from_spec(spec.storage), log=lambda *_: None)
    assert set(statuses(results).values()) == {"ran"}, statuses(results)  # robustness too: RGB images
    robust = next(r for r in results if r.name == "robustness").summary
    assert 0 <= robust["pgd_eps0.1"] <= robust["pgd_eps0"] <= 1
    answers = results[-1].summary["answers"]
    assert answers["explain"]["label_name"] in CLASSES and len(answers["explain"]["image_attribution"]) == 3
    probabilities = answers["classify"]["probabilities"]
    assert len(probabilities) == len(CLASSES) and answers["classify"]["label_name"] in CLASSES
    assert answers["images"]["prompt"] in {f"a {name}" for name in CLASSES}  # not "a handwritten ..."
    assert decode_png(base64.b64decode(answers["images"]["data"][0]["b64_json"])).shape == (32, 32, 3)
    assert answers["completion"]["choices"][0]["text"] is not None
    assert answers["videos"]["data"][0]["media_type"] == "image/gif"
