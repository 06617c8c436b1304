"""Clip-quality metrics: per-frame Fréchet distance, temporal consistency and motion.

- ``frame_fid``: the Fréchet distance (``metrics.frechet_distance``) between the in-project
  digit classifier's features of real frames and of generated frames: how real each frame
  looks, ignoring time.
- ``temporal_consistency``: how much frame t+1 agrees with frame t, in [0, 1]: the Pearson
  correlation of consecutive frames' pixels (no motion compensation), floored at 0 and
  averaged over frame pairs and clips. A moving digit keeps most of its overlap from one frame
  to the next; independent noise frames score about 0; a frozen clip scores 1. Report it for the
  real clips too: the generated/real ratio is the meaningful number.
- ``motion``: mean absolute difference of consecutive frames, so a generator that makes
  consistent but static clips (consistency 1, motion 0) is visible.

Every function takes clips in [0, 1] as (N, T, H, W) or (N, 1, T, H, W).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from .metrics import feature_stats, frechet_distance

CLASSIFIER_SIZE = 16  # the digits' classifier input side (a classifier's own config says its size)


def as_clips(clips) -> np.ndarray:
    """(N, T, H, W) float64 from (N, T, H, W) or (N, 1, T, H, W), array or tensor."""
    x = clips.detach().cpu().numpy() if isinstance(clips, torch.Tensor) else np.asarray(clips)
    if x.ndim == 5:
        if x.shape[1] != 1:
            raise ValueError(f"expected single-channel clips (N, 1, T, H, W), got shape {x.shape}")
        x = x[:, 0]
    if x.ndim != 4:
        raise ValueError(f"expected clips (N, T, H, W) or (N, 1, T, H, W), got shape {x.shape}")
    return x.astype(np.float64)


def temporal_consistency(clips) -> float:
    """Mean over clips and frame pairs of max(0, corr(frame t, frame t+1)), in [0, 1]; a pair
    of flat frames counts 1 if equal, else 0."""
    x = as_clips(clips)
    if x.shape[1] < 2:
        raise ValueError(f"need at least 2 frames per clip, got {x.shape[1]}")
    a = x[:, :-1].reshape(x.shape[0], x.shape[1] - 1, -1)
    b = x[:, 1:].reshape(a.shape)
    a = a - a.mean(-1, keepdims=True)
    b = b - b.mean(-1, keepdims=True)
    na, nb = np.linalg.norm(a, axis=-1), np.linalg.norm(b, axis=-1)
    flat = (na < 1e-8) | (nb < 1e-8)
    corr = (a * b).sum(-1) / np.where(flat, 1.0, na * nb)
    equal = np.abs(x[:, :-1] - x[:, 1:]).reshape(a.shape).max(-1) < 1e-8
    score = np.where(flat, equal.astype(np.float64), np.clip(corr, 0.0, 1.0))
    return float(score.mean())


def motion(clips) -> float:
    """Mean absolute difference between consecutive frames (0 for a static clip)."""
    x = as_clips(clips)
    if x.shape[1] < 2:
        raise ValueError(f"need at least 2 frames per clip, got {x.shape[1]}")
    return float(np.abs(np.diff(x, axis=1)).mean())


def frames_for_classifier(clips, size: int = CLASSIFIER_SIZE, channels: int = 1) -> torch.Tensor:
    """Every frame of every (grey) clip as (N*T, channels, size, size) in [-1, 1], resized
    (bilinear) if needed; grey repeated across the channels of a colour classifier."""
    x = torch.from_numpy(as_clips(clips).astype(np.float32))
    n, t, h, w = x.shape
    frames = x.reshape(n * t, 1, h, w)
    if (h, w) != (size, size):
        frames = F.interpolate(frames, size=(size, size), mode="bilinear", align_corners=False)
    return frames.clamp(0, 1).repeat(1, channels, 1, 1) * 2 - 1


def frame_features(classifier, clips, batch: int = 1024) -> np.ndarray:
    """The classifier's penultimate features of every frame, (N*T, features)."""
    shape = getattr(classifier, "config", {})
    frames = frames_for_classifier(clips, shape.get("size", CLASSIFIER_SIZE), shape.get("channels", 1))
    with torch.no_grad():
        return torch.cat([classifier.features(chunk) for chunk in frames.split(batch)]).numpy()


def frame_stats(classifier, clips) -> tuple[np.ndarray, np.ndarray]:
    """Mean and covariance of the frames' features (the real side of ``frame_fid``, computed once)."""
    return feature_stats(frame_features(classifier, clips))


def frame_fid(classifier, real, fake) -> float:
    """Fréchet distance between the frame features of ``real`` clips (or their precomputed
    ``frame_stats``) and those of ``fake`` clips."""
    real_mu, real_sigma = real if isinstance(real, tuple) else frame_stats(classifier, real)
    return frechet_distance(real_mu, real_sigma, *frame_stats(classifier, fake))


def clip_metrics(classifier, real_stats: tuple[np.ndarray, np.ndarray], clips) -> dict[str, float]:
    """frame_fid, temporal_consistency and motion of generated clips."""
    return {
        "frame_fid": frame_fid(classifier, real_stats, clips),
        "temporal_consistency": temporal_consistency(clips),
        "motion": motion(clips),
    }
