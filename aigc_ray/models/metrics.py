"""Sample-quality metrics: Fréchet distance on classifier features, and the inception score.

The digits analogue of FID: features come from a small classifier trained in-project on the
real images (``classifier.py``), not from Inception-v3 (no hub here). The Fréchet distance is
computed with the real formula, including the matrix square root — no diagonal approximation.
"""

from __future__ import annotations

import numpy as np


def feature_stats(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and covariance (rows are samples) in float64."""
    f = np.asarray(features, dtype=np.float64)
    if f.ndim != 2 or len(f) < 2:
        raise ValueError(f"need a (samples, features) array with at least 2 samples, got shape {f.shape}")
    return f.mean(axis=0), np.cov(f, rowvar=False)


def frechet_distance(
    mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray, eps: float = 1e-6
) -> float:
    """d² = |μ1 − μ2|² + Tr(Σ1 + Σ2 − 2 (Σ1 Σ2)^½), the Fréchet distance between two Gaussians.

    A singular product (few samples, dead features) gets ``eps`` on the diagonals, as in the
    reference FID code; an imaginary part beyond numerical noise is an error, not discarded.
    """
    from scipy.linalg import sqrtm

    mu1, mu2 = np.atleast_1d(mu1).astype(np.float64), np.atleast_1d(mu2).astype(np.float64)
    sigma1, sigma2 = np.atleast_2d(sigma1).astype(np.float64), np.atleast_2d(sigma2).astype(np.float64)
    if mu1.shape != mu2.shape or sigma1.shape != sigma2.shape:
        raise ValueError(f"shapes differ: {mu1.shape} vs {mu2.shape}, {sigma1.shape} vs {sigma2.shape}")
    covmean = sqrtm(sigma1 @ sigma2)
    if not np.isfinite(covmean).all():
        offset = np.eye(len(sigma1)) * eps
        covmean = sqrtm((sigma1 + offset) @ (sigma2 + offset))
    if np.iscomplexobj(covmean):
        if not np.allclose(np.diagonal(covmean).imag, 0, atol=1e-3):
            raise ValueError(f"matrix square root has a large imaginary part: {np.abs(covmean.imag).max():g}")
        covmean = covmean.real
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2.0 * np.trace(covmean))


def frechet_from_features(real: np.ndarray, fake: np.ndarray) -> float:
    """Fréchet distance between the feature distributions of two sample sets."""
    return frechet_distance(*feature_stats(real), *feature_stats(fake))


def inception_score(probs: np.ndarray, eps: float = 1e-12) -> float:
    """exp(E_x KL(p(y|x) ‖ p(y))) from class probabilities (rows sum to 1): 1 for uninformative
    or collapsed samples, up to the number of classes for confident and diverse ones."""
    p = np.asarray(probs, dtype=np.float64)
    marginal = p.mean(axis=0, keepdims=True)
    kl = (p * (np.log(p + eps) - np.log(marginal + eps))).sum(axis=1)
    return float(np.exp(kl.mean()))


def class_accuracy(probs: np.ndarray, labels: np.ndarray) -> float:
    """Share of rows whose most probable class is the wanted label (e.g. a text-to-image GAN's
    samples for "a handwritten seven" classified as 7: ``cond_accuracy``; chance is 1/classes)."""
    p, y = np.asarray(probs), np.asarray(labels)
    if len(p) != len(y) or not len(p):
        raise ValueError(f"need as many labels as rows, got {len(y)} labels for {len(p)} rows")
    return float((p.argmax(axis=1) == y).mean())
