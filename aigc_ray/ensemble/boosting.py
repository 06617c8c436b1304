"""Boosting: members trained in sequence, each on the examples the committee so far gets wrong.

Multi-class AdaBoost in its SAMME form (Zhu, Zou, Rosset & Hastie, 2009), the algorithm of
scikit-learn's ``AdaBoostClassifier``, over any learner: a round trains a member on the training
rows weighted by ``sample_weight``, its weighted error ε gives its weight

    α = learning_rate · (ln((1 − ε) / ε) + ln(K − 1))

and the rows it got wrong are weighted up by e^α, then renormalised. A member no better than
chance for K classes (ε ≥ 1 − 1/K) is dropped and the round retried with a new seed; a member
without error ends boosting (α = 1, as scikit-learn does). The committee's answer is the
α-weighted vote of its members (``samme_scores``); served as fusion classifiers, boosted members
combine their probabilities with their α weights.

``samme`` is the loop alone: the learner is a callback, so the same loop drives fusion
classifiers on Ray and, in the tests, a deterministic decision stump whose every number is
checked against scikit-learn's.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np


class BoostingError(ValueError):
    """Boosting cannot go on: every candidate of a round was no better than chance."""


@dataclass
class BoostedRound:
    round: int  # 0-based
    seed: int  # the seed of the member that was kept
    error: float  # its weighted training error ε
    alpha: float  # its weight in the committee
    weights_fingerprint: str  # sha256 of the sample weights it trained on (its lineage)
    member: Any  # what the learner returned
    predictions: np.ndarray  # its answers on the training rows
    retried: int = 0  # candidates dropped before it (no better than chance)


def weights_fingerprint(sample_weight: np.ndarray) -> str:
    """A stable fingerprint of sample weights (rounded to 12 digits: the same weights on another
    machine give the same lineage)."""
    rounded = np.round(np.asarray(sample_weight, dtype=np.float64), 12)
    return "sha256:" + hashlib.sha256(rounded.tobytes()).hexdigest()


def samme(
    fit: Callable[[np.ndarray, int, int], tuple[Any, np.ndarray]],
    labels: np.ndarray,
    n_classes: int,
    rounds: int,
    learning_rate: float = 1.0,
    seed: int = 0,
    retries: int = 2,
) -> list[BoostedRound]:
    """Run up to ``rounds`` SAMME rounds. ``fit(sample_weight, round, seed)`` trains one member on
    the training rows weighted by ``sample_weight`` (it sums to 1) and returns (member, its
    predicted class for each training row). Seeds: ``seed + 1000 · round + attempt``."""
    labels = np.asarray(labels)
    if n_classes < 2:
        raise ValueError(f"boosting needs at least 2 classes, got {n_classes}")
    if rounds < 1 or learning_rate <= 0:
        raise ValueError(f"rounds must be >= 1 and learning_rate > 0, got {rounds} and {learning_rate}")
    w = np.full(len(labels), 1.0 / len(labels))
    chance = 1.0 - 1.0 / n_classes
    out: list[BoostedRound] = []
    for r in range(rounds):
        fingerprint = weights_fingerprint(w)
        for attempt in range(retries + 1):
            s = seed + 1000 * r + attempt
            member, predictions = fit(w, r, s)
            incorrect = np.asarray(predictions) != labels
            error = float(np.mean(np.average(incorrect, weights=w, axis=0)))
            if error < chance:
                break
        else:
            raise BoostingError(
                f"boosting round {r + 1}: {retries + 1} members in a row were no better than chance "
                f"(weighted error {error:.3f} >= {chance:.3f} for {n_classes} classes); give members more "
                "training steps or lower ensemble.boosting"
            )
        if error <= 0:  # a perfect member: the committee is settled
            out.append(BoostedRound(r, s, 0.0, 1.0, fingerprint, member, np.asarray(predictions), attempt))
            break
        alpha = learning_rate * (np.log((1.0 - error) / error) + np.log(n_classes - 1.0))
        out.append(BoostedRound(r, s, error, float(alpha), fingerprint, member, np.asarray(predictions), attempt))
        if r == rounds - 1:
            break
        w = np.exp(np.log(w) + alpha * incorrect * (w > 0))
        total = w.sum()
        if not np.isfinite(total) or total <= 0:
            break
        w = w / total
    return out


def samme_scores(predictions: list[np.ndarray], alphas: list[float], n_classes: int) -> np.ndarray:
    """(N, K): the committee's α-weighted vote per class in SAMME's symmetric coding (a member's
    answer counts 1, every other class −1/(K − 1)), normalised by Σα: scikit-learn's
    ``decision_function``. Its arg-max is the committee's answer."""
    scores = np.zeros((len(predictions[0]), n_classes))
    for pred, alpha in zip(predictions, alphas, strict=True):
        coded = np.full((len(pred), n_classes), -1.0 / (n_classes - 1))
        coded[np.arange(len(pred)), np.asarray(pred)] = 1.0
        scores += alpha * coded
    return scores / float(np.sum(alphas))
