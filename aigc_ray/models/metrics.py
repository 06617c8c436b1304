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


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray) -> float:
    """d² = |μ1 − μ2|² + Tr(Σ1 + Σ2 − 2 (Σ1 Σ2)^½), the Fréchet distance between two Gaussians.

    Only the trace of (Σ1 Σ2)^½ is needed, and it equals Tr((Σ1^½ Σ2 Σ1^½)^½): the square roots of
    the eigenvalues of a symmetric positive semi-definite matrix. So it is computed with symmetric
    eigen-decompositions — exact for singular covariances (few samples, dead features), where
    scipy's general ``sqrtm`` warns and may return an inaccurate or complex root.
    """
    mu1, mu2 = np.atleast_1d(mu1).astype(np.float64), np.atleast_1d(mu2).astype(np.float64)
    sigma1, sigma2 = np.atleast_2d(sigma1).astype(np.float64), np.atleast_2d(sigma2).astype(np.float64)
    if mu1.shape != mu2.shape or sigma1.shape != sigma2.shape:
        raise ValueError(f"shapes differ: {mu1.shape} vs {mu2.shape}, {sigma1.shape} vs {sigma2.shape}")
    w, v = np.linalg.eigh((sigma1 + sigma1.T) / 2)
    root1 = (v * np.sqrt(np.clip(w, 0, None))) @ v.T  # Σ1^½
    inner = root1 @ sigma2 @ root1
    trace_covmean = np.sqrt(np.clip(np.linalg.eigvalsh((inner + inner.T) / 2), 0, None)).sum()
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2.0 * trace_covmean)


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
