"""Boosting, checked against a reference: the SAMME loop driven by a deterministic decision
stump gives scikit-learn's AdaBoostClassifier's member weights, errors and staged predictions."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.datasets import make_classification
from sklearn.ensemble import AdaBoostClassifier
from sklearn.tree import DecisionTreeClassifier

from aigc_ray.ensemble.boosting import BoostingError, samme, samme_scores, weights_fingerprint


def stump_data(classes: int = 4):
    # continuous features: no two splits tie, so a stump's fit does not depend on its random state
    return make_classification(
        n_samples=400, n_features=8, n_informative=6, n_redundant=0, n_classes=classes, random_state=0
    )


@pytest.mark.parametrize(("classes", "learning_rate"), [(4, 1.0), (3, 0.5)])
def test_samme_with_a_stump_is_scikit_learns_adaboost(classes, learning_rate):
    x, y = stump_data(classes)
    rounds = 12
    reference = AdaBoostClassifier(
        DecisionTreeClassifier(max_depth=1), n_estimators=rounds, learning_rate=learning_rate, random_state=0
    ).fit(x, y)

    def fit(sample_weight, _round, seed):
        stump = DecisionTreeClassifier(max_depth=1, random_state=seed).fit(x, y, sample_weight=sample_weight)
        return stump, stump.predict(x)

    got = samme(fit, y, classes, rounds, learning_rate=learning_rate)
    n = len(reference.estimators_)
    assert len(got) == n == rounds
    np.testing.assert_allclose([r.error for r in got], reference.estimator_errors_[:n], rtol=0, atol=1e-9)
    np.testing.assert_allclose([r.alpha for r in got], reference.estimator_weights_[:n], rtol=0, atol=1e-9)
    staged = list(reference.staged_predict(x))
    for k in range(1, n + 1):
        scores = samme_scores([r.member.predict(x) for r in got[:k]], [r.alpha for r in got[:k]], classes)
        np.testing.assert_array_equal(scores.argmax(1), staged[k - 1])
    final = samme_scores([r.member.predict(x) for r in got], [r.alpha for r in got], classes)
    np.testing.assert_allclose(final, reference.decision_function(x), rtol=0, atol=1e-9)
    # each round trained on other weights: the lineage tells them apart
    assert len({r.weights_fingerprint for r in got}) == n


def test_a_member_no_better_than_chance_is_retried_with_a_new_seed_then_boosting_stops():
    y = np.arange(100) % 4
    seen = []

    def fit(_w, _round, seed):  # the first candidate answers every row wrong, its retry every row right
        seen.append(seed)
        return seed, (y + 1) % 4 if seed == 10 else y

    (kept,) = samme(fit, y, 4, rounds=3, seed=10)
    assert seen == [10, 11] and kept.retried == 1 and kept.seed == 11
    assert kept.error == 0.0 and kept.alpha == 1.0  # a perfect member settles the committee

    with pytest.raises(BoostingError, match="no better than chance"):
        samme(lambda w, r, s: (s, (y + 1) % 4), y, 4, rounds=2, retries=1)


def test_weight_fingerprints_are_stable_and_tell_weights_apart():
    w = np.full(10, 0.1)
    assert weights_fingerprint(w) == weights_fingerprint(w.copy() + 1e-15)
    assert weights_fingerprint(w) != weights_fingerprint(np.r_[w[:-1], 0.2])
