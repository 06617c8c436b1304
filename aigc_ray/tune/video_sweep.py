"""``aigc sweep video``: the video GAN sweep on the moving-digit clips. Beyond the shared results
(``sweep.publish_sweep``) it writes the best generator and discriminator (safetensors; with
``best/config.json`` — frames, frame_size, z_dim, width — enough to rebuild the generator),
``strip.png`` (generated clips, one per row, frames side by side: the run report's video
strip), ``sample.gif`` (a looping grid of generated clips) and ``video_metrics.json`` (the
best generator's clip metrics beside the real clips')."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch

from ..data.animation import clip_strip, encode_gif, video_grid
from ..data.build import build_data
from ..data.images import encode_png
from ..data.video import build_video_shards, video_arrays
from ..layout import classifier_uri, sweep_dir, video_uri
from ..manifest import read_manifest
from ..models.classifier import load_or_train_classifier
from ..models.gan import EVAL_SEED
from ..models.video_gan import check_video_shape, generate_clips, load_video_generator, to_video_space
from ..models.video_metrics import clip_metrics, frame_stats, motion, temporal_consistency
from ..spec import ExperimentSpec
from ..spec.sweeps import VIDEO_STRUCTURAL
from ..storage import Storage
from .tuner import SweepResult, publish_sweep, run_tuner
from .video_trainable import STATE_FILE, video_trainable

STRIP_CLIPS = 8
GIF_CLIPS = 16


def run_video_sweep(
    spec: ExperimentSpec, storage: Storage, resume: bool = False, progress: bool = True, log=print
) -> SweepResult:
    """Run (or, with ``resume``, finish) the video GAN sweep and publish its results. Builds the
    digit shards and the clip shards first when they are missing or stale."""
    from ray import tune

    check_video_shape(spec.video.frames, spec.video.frame_size)
    build_data(spec, storage, log=log, say_up_to_date=False)
    clips_manifest = build_video_shards(spec, storage, log=log)
    classifier = load_or_train_classifier(spec, storage)
    train = video_arrays(spec, storage, "train")["clip"]  # (N, 1, T, H, W) in [0, 1]
    real_mu, real_sigma = frame_stats(classifier, train)
    real_consistency, real_motion = temporal_consistency(train), motion(train)
    log(f"[video] {len(train)} training clips: temporal consistency {real_consistency:.3f}, motion {real_motion:.4f}")
    trainable = tune.with_resources(
        tune.with_parameters(
            video_trainable,
            real=to_video_space(torch.from_numpy(train)).numpy(),
            classifier=classifier,
            real_mu=real_mu,
            real_sigma=real_sigma,
            real_consistency=real_consistency,
            real_motion=real_motion,
        ),
        {"cpu": spec.video.sweep.cpus_per_trial, "gpu": spec.video.sweep.gpus_per_trial},
    )
    s = spec.video.sweep
    grid = run_tuner(
        s,
        trainable,
        spec.video.trial_config(),
        sweep_dir(spec, "video"),
        storage,
        structural=VIDEO_STRUCTURAL,
        resume=resume,
        progress=progress,
        log=log,
    )
    inputs = {
        video_uri(spec): clips_manifest.fingerprint,
        classifier_uri(spec): read_manifest(storage, classifier_uri(spec)).fingerprint,
    }

    def write_best(out: Path, best: dict) -> dict:
        from safetensors.torch import save_file

        ckpt = best["checkpoint_ref"].to_directory(str(out / ".ckpt"))
        state = torch.load(Path(ckpt, STATE_FILE), map_location="cpu", weights_only=True)
        shutil.rmtree(out / ".ckpt")
        save_file(state["g"], out / "best" / "generator.safetensors")
        save_file(state["d"], out / "best" / "discriminator.safetensors")
        g = load_video_generator(state["g"], best["config"])
        shown = generate_clips(g, max(STRIP_CLIPS, GIF_CLIPS), seed=0)
        (out / "strip.png").write_bytes(encode_png(clip_strip(shown[:STRIP_CLIPS]), scale=2))
        (out / "sample.gif").write_bytes(encode_gif(video_grid(shown[:GIF_CLIPS]), fps=8, scale=3))
        scored = generate_clips(g, int(best["config"].get("eval_samples", spec.video.eval_samples)), seed=EVAL_SEED)
        extra = {
            **clip_metrics(classifier, (real_mu, real_sigma), scored),
            "temporal_consistency_real": real_consistency,
            "motion_real": real_motion,
        }
        (out / "video_metrics.json").write_text(json.dumps(extra, indent=2))
        return {k: v for k, v in extra.items() if k != s.metric}  # the sweep's metric is the trial's own

    return publish_sweep(spec, storage, "video", s, grid, inputs, write_best, log)
