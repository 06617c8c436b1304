"""How an ensemble's members' answers become one answer.

Classifiers (member probabilities ``P``: (M, N, C)):
  mean      p = mean_m P_m
  weighted  p = Σ_m w_m P_m, w on the simplex, fitted to minimise validation log-loss
  vote      p = share of members whose arg-max is each class (ties: the mean breaks them)
  stacking  p = softmax(W · [P_1 … P_M] + b): a multinomial logistic regression fitted on the
            members' predictions for data none of them trained on (the validation split)
Language models sharing a tokenizer: the next-token distribution is the mean of the members'
log-probabilities (a geometric mean of their distributions, renormalised).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

STRATEGIES = ("mean", "weighted", "vote", "stacking")


@dataclass
class Combiner:
    """A fitted combination rule; ``weights`` for mean/weighted/vote, ``coef``/``intercept`` for stacking."""

    strategy: str
    weights: list[float]
    coef: np.ndarray | None = None  # (C, M·C)
    intercept: np.ndarray | None = None  # (C,)
    info: dict = field(default_factory=dict)

    def __call__(self, probs: np.ndarray) -> np.ndarray:
        """(M, N, C) member probabilities -> (N, C) ensemble probabilities."""
        probs = np.asarray(probs, dtype=np.float64)
        if probs.ndim != 3 or probs.shape[0] != len(self.weights):
            raise ValueError(f"expected ({len(self.weights)}, N, C) member probabilities, got {probs.shape}")
        if self.strategy in ("mean", "weighted"):
            return np.tensordot(np.asarray(self.weights), probs, axes=1)
        if self.strategy == "vote":
            return vote(probs, np.asarray(self.weights))
        if self.strategy == "stacking":
            return _softmax(stack_features(probs) @ self.coef.T + self.intercept)
        raise ValueError(f"unknown strategy {self.strategy!r}; allowed: {', '.join(STRATEGIES)}")

    def with_weights(self, weights: list[float]) -> Combiner:
        """The same rule with new member weights (normalised), e.g. from a live reconfigure."""
        w = np.asarray(weights, dtype=np.float64)
        if len(w) != len(self.weights) or (w < 0).any() or w.sum() <= 0:
            raise ValueError(f"need {len(self.weights)} non-negative weights with a positive sum, got {weights}")
        return Combiner(self.strategy, list(w / w.sum()), self.coef, self.intercept, self.info)


def vote(probs: np.ndarray, weights: np.ndarray) -> np.ndarray:
    members, n, classes = probs.shape
    votes = np.zeros((n, classes))
    for m in range(members):
        votes[np.arange(n), probs[m].argmax(1)] += weights[m]
    tie_break = 1e-6 * np.tensordot(weights, probs, axes=1)  # never outweighs one vote
    out = votes + tie_break
    return out / out.sum(1, keepdims=True)


def stack_features(probs: np.ndarray) -> np.ndarray:
    """(M, N, C) -> (N, M·C): each row holds every member's probabilities for that example."""
    return np.concatenate(list(probs), axis=1)


def fit_combiner(
    strategy: str, probs: np.ndarray, labels: np.ndarray, seed: int = 0, committee: dict[int, float] | None = None
) -> Combiner:
    """Fit ``strategy`` on validation predictions (M, N, C) and labels (N,).

    ``committee``: {member index: AdaBoost α} of boosted members. Under mean and weighted they
    enter the fit as one member, their α-weighted mean, and share its weight in proportion to α
    (boosting's own combination, inside the ensemble's); stacking learns every member's part itself."""
    if committee and strategy in ("mean", "weighted"):
        return _with_committee(strategy, probs, labels, seed, committee)
    members = probs.shape[0]
    uniform = [1.0 / members] * members
    if strategy in ("mean", "vote"):
        return Combiner(strategy, uniform)
    if strategy == "weighted":
        return Combiner("weighted", list(fit_weights(probs, labels)))
    if strategy == "stacking":
        return fit_stacking(probs, labels, seed)
    raise ValueError(f"unknown strategy {strategy!r}; allowed: {', '.join(STRATEGIES)}")


def _with_committee(
    strategy: str, probs: np.ndarray, labels: np.ndarray, seed: int, committee: dict[int, float]
) -> Combiner:
    boosted = sorted(committee)
    alphas = np.array([committee[i] for i in boosted], dtype=np.float64)
    shares = alphas / alphas.sum()
    others = [i for i in range(probs.shape[0]) if i not in committee]
    grouped = np.concatenate([probs[others], np.tensordot(shares, probs[boosted], axes=1)[None]])
    inner = fit_combiner(strategy, grouped, labels, seed)
    weights = np.zeros(probs.shape[0])
    weights[others] = inner.weights[:-1]
    weights[boosted] = inner.weights[-1] * shares
    return Combiner(strategy, list(weights), info={"boosted_committee_weight": float(inner.weights[-1])})


def fit_weights(probs: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Simplex weights minimising the log-loss of Σ w_m P_m (softmax-parameterised, L-BFGS)."""
    from scipy.optimize import minimize

    picked = probs[:, np.arange(len(labels)), labels]  # (M, N): each member's probability of the truth

    def loss(theta):
        w = _softmax(theta)
        p = np.clip(w @ picked, 1e-12, None)
        grad_w = -(picked / p).mean(1)  # d loss / d w
        return -np.log(p).mean(), w * (grad_w - w @ grad_w)  # chain rule through the softmax

    result = minimize(loss, np.zeros(probs.shape[0]), jac=True, method="L-BFGS-B")
    return _softmax(result.x)


def fit_stacking(probs: np.ndarray, labels: np.ndarray, seed: int = 0, folds: int = 5) -> Combiner:
    """A logistic-regression meta-model on the members' predictions. Its reported score comes
    from out-of-fold predictions (cross-fitted on the validation split), never in-sample."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_predict

    x, classes = stack_features(probs), probs.shape[2]
    meta = LogisticRegression(C=1.0, max_iter=2000)
    k = max(2, min(folds, int(np.bincount(labels).min())))
    oof = cross_val_predict(
        meta, x, labels, cv=StratifiedKFold(k, shuffle=True, random_state=seed), method="predict_proba"
    )
    meta.fit(x, labels)
    coef = np.zeros((classes, x.shape[1]))
    intercept = np.full(classes, -1e9)  # a class the meta-model never saw gets no probability
    coef[meta.classes_], intercept[meta.classes_] = meta.coef_, meta.intercept_
    oof_full = np.zeros((len(labels), classes))
    oof_full[:, meta.classes_] = oof
    return Combiner(
        "stacking",
        [1.0 / probs.shape[0]] * probs.shape[0],
        coef,
        intercept,
        info={"out_of_fold": out_of_fold_scores(oof_full, labels), "folds": k},
    )


def out_of_fold_scores(probs: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    from sklearn.metrics import f1_score

    pred = probs.argmax(1)
    return {
        "accuracy": float((pred == labels).mean()),
        "macro_f1": float(f1_score(labels, pred, average="macro", zero_division=0)),
    }


def average_log_probs(log_probs: list[np.ndarray] | np.ndarray, weights: list[float] | None = None) -> np.ndarray:
    """Next-token log-probabilities (…, V) of language models sharing a tokenizer -> the
    ensemble's: the (weighted) mean of the members' log-probabilities, renormalised."""
    lp = np.asarray(log_probs, dtype=np.float64)
    w = np.full(lp.shape[0], 1.0 / lp.shape[0]) if weights is None else np.asarray(weights) / np.sum(weights)
    mixed = np.tensordot(w, lp, axes=1)
    return mixed - _logsumexp(mixed)


def _softmax(x: np.ndarray) -> np.ndarray:
    z = np.exp(x - x.max(-1, keepdims=True))
    return z / z.sum(-1, keepdims=True)


def _logsumexp(x: np.ndarray) -> np.ndarray:
    m = x.max(-1, keepdims=True)
    return m + np.log(np.exp(x - m).sum(-1, keepdims=True))
