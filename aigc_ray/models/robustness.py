"""Adversarial attacks on the image input of a classifier whose caption is held fixed: FGSM and
PGD under an L∞ budget ε, on images in [0, 1].

The attacks take ``logits(x)``: a function from an image batch to class scores, the caption
already bound (a fusion member reading its caption, or the ensemble's log-probabilities), so the
same code attacks a member, the ensemble, or a model with its caption replaced by one that names
nothing (otherwise the caption alone can carry the answer and no pixel change matters).

- FGSM (Goodfellow et al., 2015): one step of size ε along the sign of the loss's gradient.
- PGD (Madry et al., 2018): ``steps`` steps of ``step_size`` (default 2.5·ε/steps), each projected
  back onto the ε-ball around the image and onto [0, 1], from a uniform random start in the ball;
  with ``restarts`` > 1 an example counts as fooled if any restart fools it.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from torch.nn import functional as F

Logits = Callable[[torch.Tensor], torch.Tensor]
ATTACKS = ("fgsm", "pgd")


def _gradient(logits: Logits, x: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    x = x.detach().requires_grad_(True)
    loss = F.cross_entropy(logits(x), labels)
    (grad,) = torch.autograd.grad(loss, x)
    return grad


def fgsm(logits: Logits, images: torch.Tensor, labels: torch.Tensor, epsilon: float) -> torch.Tensor:
    """One signed-gradient step of size ε, clipped to [0, 1]."""
    if epsilon == 0:
        return images.clone()
    return (images + epsilon * _gradient(logits, images, labels).sign()).clamp(0, 1).detach()


def pgd(
    logits: Logits,
    images: torch.Tensor,
    labels: torch.Tensor,
    epsilon: float,
    steps: int = 10,
    step_size: float | None = None,
    restarts: int = 1,
    seed: int = 0,
) -> torch.Tensor:
    """Projected gradient ascent on the loss inside the L∞ ε-ball (and [0, 1]), from random starts."""
    if epsilon == 0:
        return images.clone()
    step = step_size if step_size is not None else 2.5 * epsilon / steps
    gen = torch.Generator().manual_seed(seed)
    best, fooled = None, torch.zeros(len(images), dtype=torch.bool)
    for _ in range(restarts):
        start = (torch.rand(images.shape, generator=gen) * 2 - 1).to(images) * epsilon
        x = (images + start).clamp(0, 1)
        for _ in range(steps):
            x = x + step * _gradient(logits, x, labels).sign()
            x = torch.min(torch.max(x, images - epsilon), images + epsilon).clamp(0, 1).detach()
        with torch.no_grad():
            wrong = logits(x).argmax(1) != labels
        if best is None:
            best = x
        else:  # a later restart replaces the example only where it fools and the earlier ones did not
            best[wrong & ~fooled] = x[wrong & ~fooled]
        fooled |= wrong
    return best


def attack(name: str, logits: Logits, images: torch.Tensor, labels: torch.Tensor, epsilon: float, **options):
    """``name``'s adversarial images (``options``: PGD's steps, step_size, restarts, seed)."""
    if name == "fgsm":
        return fgsm(logits, images, labels, epsilon)
    if name == "pgd":
        return pgd(logits, images, labels, epsilon, **options)
    raise ValueError(f"unknown attack {name!r}; allowed: {', '.join(ATTACKS)}")


def accuracy_under_attack(
    logits_for: Callable[[slice], Logits],
    images: np.ndarray,
    labels: np.ndarray,
    epsilons: list[float],
    name: str = "pgd",
    batch: int = 256,
    answer_for: Callable[[slice], Callable[[torch.Tensor], np.ndarray]] | None = None,
    **options,
) -> dict[float, float]:
    """{ε: accuracy on the attacked images}, batch by batch. ``logits_for(rows)``: the logits of
    those rows' images with their captions bound; ``answer_for(rows)``: the classes to score
    (default: the logits' arg-max; an ensemble whose combination is not its attack surrogate
    scores with its own rule). ``options``: PGD's steps, step_size, restarts, seed."""
    out = {}
    for eps in epsilons:
        right = 0
        for i in range(0, len(labels), batch):
            rows = slice(i, i + batch)
            logits = logits_for(rows)
            x = torch.from_numpy(np.asarray(images[rows], dtype=np.float32))
            y = torch.from_numpy(np.asarray(labels[rows], dtype=np.int64))
            adv = attack(name, logits, x, y, float(eps), **options)
            with torch.no_grad():
                got = answer_for(rows)(adv) if answer_for else logits(adv).argmax(1).numpy()
            right += int((np.asarray(got) == y.numpy()).sum())
        out[float(eps)] = right / len(labels)
    return out
