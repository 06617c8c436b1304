"""Short-video generation: moving-digit clips, their video/v1 shards (local and S3, read with Ray
Data), the animation encoders, the clip metrics, the video GAN and a tiny real Ray Tune sweep."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from aigc_ray.cli import main
from aigc_ray.data import video
from aigc_ray.data.animation import decode_gif_frames, encode_apng, encode_gif, is_gif, video_grid
from aigc_ray.data.digits import load_pixels
from aigc_ray.data.images import to_uint8
from aigc_ray.data.shards import ShardError, validate_shards
from aigc_ray.data.video import (
    build_video_shards,
    clip_rng,
    decode_clip,
    moving_digit_clip,
    video_arrays,
    video_batches,
)
from aigc_ray.layout import data_root, video_uri
from aigc_ray.manifest import read_manifest
from aigc_ray.models.classifier import ImageClassifier
from aigc_ray.models.video_gan import (
    VideoDiscriminator,
    VideoGenerator,
    generate_clips,
    load_video_generator,
)
from aigc_ray.models.video_metrics import frame_fid, motion, temporal_consistency
from aigc_ray.spec import load_spec
from aigc_ray.storage import join

pytestmark = pytest.mark.timeout(300)

# Few clips, small shards (so a set has several files), same settings in every test: the set
# built by one test is up to date for the next.
VIDEO = ["video.clips=64", "video.rows_per_shard=20"]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
QUICKSTART = str(Path(__file__).resolve().parent.parent / "examples" / "quickstart.yaml")


def video_spec(root, *overrides):
    return load_spec(None, [f"storage.root={root}", "data.rows_per_shard=300", *VIDEO, *overrides])


@pytest.fixture(scope="module")
def digits():
    return load_pixels()


@pytest.fixture(scope="module")
def real_clips(digits):
    pixels, _ = digits
    return np.stack([moving_digit_clip(pixels[i], 8, 16, 1.5, clip_rng(0, i)) for i in range(48)])


# ------------------------------------------------------------------------------ clips


def centroids(clip: np.ndarray) -> np.ndarray:
    """(frames, 2) intensity centroid (y, x) per frame."""
    ys, xs = np.mgrid[: clip.shape[1], : clip.shape[2]]
    mass = clip.sum(axis=(1, 2))
    return np.stack([(clip * ys).sum(axis=(1, 2)) / mass, (clip * xs).sum(axis=(1, 2)) / mass], axis=1)


def test_clips_are_deterministic_and_bounce_inside_the_frame(digits):
    pixels, _ = digits
    a = moving_digit_clip(pixels[3], 8, 16, 1.5, clip_rng(0, 3))
    assert a.shape == (8, 16, 16) and a.dtype == np.float32 and 0 <= a.min() and a.max() <= 1
    assert np.array_equal(a, moving_digit_clip(pixels[3], 8, 16, 1.5, clip_rng(0, 3)))
    assert not np.array_equal(a, moving_digit_clip(pixels[3], 8, 16, 1.5, clip_rng(1, 3)))
    assert not np.array_equal(a[0], a[1])  # it moves
    # Long clips bounce: the digit's whole mass stays in the frame, and it turns around.
    turned = 0
    for i in range(10):
        clip = moving_digit_clip(pixels[i], 40, 16, 1.5, clip_rng(0, i))
        np.testing.assert_allclose(clip.sum(axis=(1, 2)), pixels[i].sum() / 255.0, rtol=1e-4)
        steps = np.diff(centroids(clip), axis=0)
        assert np.abs(steps).max() <= 1.5 + 1e-3  # never faster than max_speed
        turned += int((np.sign(steps[:-1]) * np.sign(steps[1:]) < 0).any())
    assert turned == 10
    with pytest.raises(ValueError, match="8x8"):
        moving_digit_clip(np.zeros((4, 4)), 8, 16, 1.5, clip_rng(0, 0))
    with pytest.raises(ValueError, match="frame_size"):
        moving_digit_clip(pixels[0], 8, 8, 1.5, clip_rng(0, 0))


def test_truncated_clip_is_an_error_naming_the_row(local_data):
    spec = video_spec(local_data[0].storage.root)
    batch = next(video_batches(spec))
    row = {k: batch.column(k)[2].as_py() for k in ("id", "frames", "height", "width", "clip")}
    assert decode_clip(row).shape == (8, 16, 16)
    row["clip"] = row["clip"][:-5]
    with pytest.raises(ValueError, match=r"clip of row 'video-00002' has 2043 bytes, expected .* = 2048"):
        decode_clip(row)


# ------------------------------------------------------------------------------ shards


def test_clips_sample_imported_data_across_its_splits_and_classes(tmp_path):
    """Imported data comes in id order, which is its folders' order: ``test/`` before ``train/``,
    one class folder after another. 64 clips from 300 such rows (200 of them test) still get
    training clips of every class, and the same ones every time."""
    ids = [
        f"{split}/class{c}/{i:03d}.png"
        for split, n in (("test", 200), ("train", 100))
        for c in range(4)
        for i in range(n // 4)
    ]
    splits = [i.split("/")[0] for i in ids]
    labels = np.array([int(i.split("/")[1][5:]) for i in ids], dtype=np.int32)
    pixels = np.random.default_rng(0).integers(0, 17, (len(ids), 8, 8)).astype(np.uint8)
    source = video.SourceDigits(ids, pixels, labels, splits)
    table = pa.Table.from_batches(list(video_batches(video_spec(tmp_path), source)))
    rows = table.to_pylist()
    train = [r for r in rows if r["split"] == "train"]
    assert len(rows) == 64 and 10 <= len(train) <= 40, len(train)  # a third of the source is train
    assert {r["label"] for r in train} == {0, 1, 2, 3}
    assert len({r["source_id"] for r in rows}) == 64  # 64 of the 300, none twice
    for r in rows:  # each clip keeps its source row's split and label
        k = ids.index(r["source_id"])
        assert (r["split"], r["label"]) == (splits[k], labels[k])
    again = pa.Table.from_batches(list(video_batches(video_spec(tmp_path), source)))
    assert again.equals(table)


def test_video_shards_round_trip(local_data, capsys):
    base, storage = local_data
    spec = video_spec(base.storage.root)
    manifest = build_video_shards(spec, storage, log=lambda *_: None)
    assert manifest.kind == "shards/video/v1" and manifest.meta["rows"] == 64 and len(manifest.files) == 4
    assert manifest.inputs == {
        join(data_root(spec), "multimodal"): read_manifest(storage, join(data_root(spec), "multimodal")).fingerprint
    }
    logged = []
    assert build_video_shards(spec, storage, log=logged.append).files == manifest.files
    assert "up to date" in logged[0]
    report = validate_shards(storage, video_uri(spec))
    assert report.ok and report.kind == "video/v1" and report.rows == 64, report.faults

    # Read back: the split, decoded, in shard order.
    arrays = video_arrays(spec, storage, "train")
    clips = arrays["clip"]
    assert clips.shape[1:] == (1, 8, 16, 16) and clips.dtype == np.float32 and 0 < len(clips) < 64
    assert len(set(arrays["id"])) == len(clips)
    # Labels and splits are the source digits'; the stored clips are the embedded recipe's.
    pixels, labels = load_pixels()
    table = pa.Table.from_batches(list(video_batches(spec)))
    by_id = {r["id"]: r for r in table.to_pylist()}
    for clip, label, row_id in zip(arrays["clip"], arrays["label"], arrays["id"], strict=True):
        src = by_id[row_id]
        assert src["split"] == "train" and label == src["label"] == labels[int(src["source_id"][7:12])]
        np.testing.assert_allclose(clip[0], decode_clip(src), atol=0)
    assert sum(report.splits.values()) == 64 and set(report.splits) <= {"train", "val", "test"}

    cli = ["data", "video", "-c", QUICKSTART, "--set", f"storage.root={base.storage.root}"]
    assert main([*cli, *(a for o in VIDEO for a in ("--set", o))]) == 0
    assert "up to date" in capsys.readouterr().out


def test_missing_or_corrupt_input_is_a_clear_error_and_writes_nothing(local_data, tmp_path, capsys):
    base, storage = local_data
    spec = video_spec(tmp_path)
    with pytest.raises(FileNotFoundError, match="aigc data build"):
        build_video_shards(spec, storage)
    assert main(["data", "video", "-c", QUICKSTART, "--set", f"storage.root={tmp_path}"]) == 1
    assert "run `aigc data build` first" in capsys.readouterr().err
    # A copy of the digit shards with one undecodable image.
    src, dst = join(data_root(base), "multimodal"), join(data_root(spec), "multimodal")
    for f in storage.list_files(src):
        storage.write_bytes(join(dst, f.rsplit("/", 1)[1]), storage.read_bytes(f))
    name = sorted(read_manifest(storage, dst).files)[1]
    table = pq.read_table(join(dst, name))
    images = table["image"].to_pylist()
    images[3] = b"not a png"
    table = table.set_column(
        table.schema.get_field_index("image"), table.schema.field("image"), pa.array(images, pa.binary())
    )
    buf = io.BytesIO()
    pq.write_table(table, buf)
    storage.write_bytes(join(dst, name), buf.getvalue())
    # the set's manifest no longer matches the file: refused before any row is decoded
    with pytest.raises(ShardError, match=rf"{name}: .*since it was built\)?; run `aigc data build`"):
        build_video_shards(spec, storage)
    assert storage.list_files(video_uri(spec)) == []


def test_a_failed_rebuild_leaves_the_previous_set_intact(local_data, tmp_path, monkeypatch):
    base, storage = local_data
    spec = video_spec(tmp_path)
    src, dst = join(data_root(base), "multimodal"), join(data_root(spec), "multimodal")
    for f in storage.list_files(src):
        storage.write_bytes(join(dst, f.rsplit("/", 1)[1]), storage.read_bytes(f))
    first = build_video_shards(spec, storage, log=lambda *_: None)
    before = storage.list_files(video_uri(spec))
    calls = {"n": 0}
    real = video.moving_digit_clip

    def dies_late(*args):
        calls["n"] += 1
        if calls["n"] > 50:  # after two 20-row shards were written
            raise RuntimeError("killed mid-build")
        return real(*args)

    monkeypatch.setattr(video, "moving_digit_clip", dies_late)
    spec.video.max_speed = 1.0  # other settings: a rebuild, with other bytes
    with pytest.raises(RuntimeError, match="killed mid-build"):
        build_video_shards(spec, storage, log=lambda *_: None)
    assert storage.list_files(video_uri(spec)) == before
    assert read_manifest(storage, video_uri(spec)).files == first.files


def test_video_shards_on_s3_match_local(local_data, s3_data):
    (lbase, lstore), (sbase, sstore) = local_data, s3_data
    local = build_video_shards(video_spec(lbase.storage.root), lstore, log=lambda *_: None)
    spec = video_spec(sbase.storage.root, f"storage.endpoint_url={sbase.storage.endpoint_url}")
    remote = build_video_shards(spec, sstore, log=lambda *_: None)
    assert video_uri(spec).startswith("s3://") and remote.fingerprint == local.fingerprint
    assert validate_shards(sstore, video_uri(spec)).ok
    clips = video_arrays(spec, sstore, "val")["clip"]
    assert len(clips) and clips.shape[1:] == (1, 8, 16, 16)


# ------------------------------------------------------------------------------ animation, metrics, model


def test_gif_and_apng_have_every_frame_at_the_right_size(real_clips):
    gif = encode_gif(real_clips[0], fps=8, scale=2)
    assert is_gif(gif) and not is_gif(PNG_MAGIC)
    frames = decode_gif_frames(gif)
    assert frames.shape == (8, 32, 32)
    assert np.array_equal(frames[:, ::2, ::2], np.round(real_clips[0] * 255).astype(np.uint8))  # lossless gray
    grid = video_grid(real_clips[:6])
    assert grid.shape == (8, 1 + 2 * 17, 1 + 3 * 17)
    assert decode_gif_frames(encode_gif(grid, scale=3)).shape == (8, grid.shape[1] * 3, grid.shape[2] * 3)
    apng = encode_apng((real_clips[1] * 255).astype(np.uint8))
    assert apng[:8] == PNG_MAGIC and decode_gif_frames(apng).shape == (8, 16, 16)
    with pytest.raises(ValueError, match="expected frames"):
        encode_gif(np.zeros((16, 16)))
    with pytest.raises(ValueError, match="not a decodable animation"):
        decode_gif_frames(b"GIF89a garbage")


def test_temporal_consistency_motion_and_frame_fid(real_clips):
    noise = np.random.default_rng(0).uniform(size=real_clips.shape).astype(np.float32)
    static = np.repeat(real_clips[:, :1], 8, axis=1)
    real_tc, noise_tc = temporal_consistency(real_clips), temporal_consistency(noise)
    assert 0 <= noise_tc < 0.1 < 0.4 < real_tc <= 1
    assert motion(static) == 0 and temporal_consistency(static) == 1 and motion(real_clips) > 0.01
    assert temporal_consistency(real_clips[:, None]) == real_tc  # (N, 1, T, H, W) too
    torch.manual_seed(0)
    classifier = ImageClassifier().eval()
    same = frame_fid(classifier, real_clips[:24], real_clips[24:])
    assert same < frame_fid(classifier, real_clips[:24], noise[24:])


def test_video_gan_shapes_and_seeded_generation():
    g, d = VideoGenerator(8, 4, 8, 16), VideoDiscriminator(4, 8, 16)
    x = g(torch.randn(3, 8))
    assert x.shape == (3, 1, 8, 16, 16) and x.abs().max() <= 1 and d(x).shape == (3,)
    clips = generate_clips(g, 5, seed=1)
    assert clips.shape == (5, 8, 16, 16) and clips.min() >= 0 and clips.max() <= 1
    assert np.array_equal(clips, generate_clips(g, 5, seed=1)) and not np.array_equal(
        clips, generate_clips(g, 5, seed=2)
    )
    assert VideoGenerator(8, 4, 4, 12)(torch.randn(2, 8)).shape == (2, 1, 4, 12, 12)
    with pytest.raises(ValueError, match="frames must be a multiple of 4"):
        VideoGenerator(8, 4, 6, 16)
    with pytest.raises(ValueError, match="frame_size must be a multiple of 4"):
        VideoDiscriminator(4, 8, 14)
    with pytest.raises(ValueError, match="lacks frames"):
        load_video_generator(g.state_dict(), {"z_dim": 8, "width": 4})


# ------------------------------------------------------------------------------ the sweep


@pytest.mark.slow
def test_tiny_video_sweep_publishes_a_rebuildable_generator(ray_local, local_data):
    from safetensors.torch import load

    from aigc_ray.tune.video_sweep import run_video_sweep

    base, storage = local_data
    spec = video_spec(
        base.storage.root,
        "name=video-tiny",
        "video.width=4",
        "video.z_dim=8",
        "video.batch_size=8",
        "video.eval_samples=16",
        "video.sweep.num_samples=2",
        "video.sweep.max_iterations=2",
        "video.sweep.steps_per_iteration=3",
    )
    result = run_video_sweep(spec, storage, progress=False, log=lambda *_: None)
    assert result.trials == 2 and result.total_steps == 12
    names = {f.rsplit("/", 1)[1] for f in storage.list_files(result.uri)}
    assert {"generator.safetensors", "discriminator.safetensors", "config.json", "metrics.json"} <= names
    assert {"strip.png", "sample.gif", "topk.json", "results.csv", "curves.png", "video_metrics.json"} <= names
    assert storage.read_bytes(join(result.uri, "strip.png"))[:8] == PNG_MAGIC
    gif = decode_gif_frames(storage.read_bytes(join(result.uri, "sample.gif")))
    assert gif.shape[1:] == (3 * (1 + 4 * 17), 3 * (1 + 4 * 17))
    metrics = json.loads(storage.read_bytes(join(result.uri, "best/metrics.json")))
    assert np.isfinite(metrics["frame_fid"]) and 0 <= metrics["temporal_consistency"] <= 1
    assert metrics["temporal_consistency_real"] > 0.4 and metrics["motion_real"] > 0
    config = json.loads(storage.read_bytes(join(result.uri, "best/config.json")))
    g = load_video_generator(load(storage.read_bytes(join(result.uri, "best/generator.safetensors"))), config)
    # the GIF is the best generator's 16 clips for seed 0 in a 4x4 grid, every frame (3x pixels)
    grid = to_uint8(video_grid(generate_clips(g, 16, seed=0))).repeat(3, axis=1).repeat(3, axis=2)
    keep = [0] + [i for i in range(1, len(grid)) if not np.array_equal(grid[i], grid[i - 1])]
    np.testing.assert_array_equal(gif, grid[keep])
    assert generate_clips(g, 3, seed=0).shape == (3, 8, 16, 16)
    print("tiny video sweep:", json.dumps(metrics))


@pytest.mark.slow
def test_video_pbt_exploits_restore_a_matching_generator_and_discriminator(ray_local, local_data):
    """PBT on the video GAN: a trial that takes another's checkpoint gets that donor's G and D
    together (the weight hashes recorded with the checkpoint match after loading)."""
    from aigc_ray.layout import sweep_dir
    from aigc_ray.tune.video_sweep import run_video_sweep

    base, storage = local_data
    spec = video_spec(
        base.storage.root,
        "name=video-pbt",
        "video.width=4",
        "video.z_dim=8",
        "video.batch_size=8",
        "video.eval_samples=16",
        "video.sweep.scheduler=pbt",
        "video.sweep.perturbation_interval=1",
        "video.sweep.num_samples=3",
        "video.sweep.max_concurrent_trials=3",
        # PBT exploits only when a trial reports while in the bottom quantile of what the others
        # have reported so far: timing-dependent, so enough chances that a busy machine still sees one
        "video.sweep.max_iterations=14",
        "video.sweep.steps_per_iteration=3",
    )
    result = run_video_sweep(spec, storage, progress=False, log=lambda *_: None)
    assert result.trials == 3
    # Read the checkpoints themselves (Tune rewrites a trial's result.json when PBT restarts it):
    # each records whose checkpoint its lineage last took and whether G and D matched.
    metas = [
        json.loads(meta.read_text()) for meta in (Path(sweep_dir(spec, "video")) / "tune").rglob("video_gan_meta.json")
    ]
    exploits = [m for m in metas if m.get("restored_from") not in (None, m["trial_id"])]
    assert exploits, "PBT made no exploit in 14 iterations of 3 trials"
    assert all(m["metrics"]["restored_pair_matches"] for m in exploits)
    assert {m["restored_from"] for m in exploits} <= {m["trial_id"] for m in metas}  # donors are trials here
