"""The moderation step: a text's score per category from the project's word/pattern list (1 for a
match) and the packaged offensive-language classifier (its probability, for profanity and
harassment), the larger of the two; a category flags the text at ``threshold``.

The classifier is alt-profanity-check: a linear model over character and word n-grams that ships
in its wheel, so it runs offline; it is loaded once per process."""

from __future__ import annotations

import functools
import hashlib
import json
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from ..spec.safety import SAFETY_CATEGORIES, SafetySpec
from . import wordlist
from .normalize import WILDCARDS, Token, squeeze, tokens

CLASSIFIER_CATEGORIES = ("profanity", "harassment")
REMOVED = "[removed by the safety filter]"


@dataclass
class Verdict:
    flagged: bool
    categories: dict[str, bool]
    category_scores: dict[str, float]
    spans: list[tuple[int, int, str]] = field(default_factory=list)  # (start, end, category) in the text


@functools.lru_cache(maxsize=1)
def packaged_classifier() -> Callable[[Sequence[str]], list[float]]:
    """alt-profanity-check's probability that each text is offensive: its TF-IDF features and its
    five sigmoid-calibrated linear SVMs, evaluated as one sparse product (the package's own
    ``predict_prob`` goes through scikit-learn's per-call checks, ~6 ms a text; this is the same
    number, ~1 ms)."""
    try:
        from profanity_check import profanity_check
    except ImportError as exc:  # pragma: no cover - a dependency of the project
        raise RuntimeError(
            "the safety filter's classifier needs alt-profanity-check (pip install alt-profanity-check), "
            "or set safety.classifier: false"
        ) from exc
    import numpy as np

    vectorizer, model = profanity_check.vectorizer, profanity_check.model
    members = model.calibrated_classifiers_
    weights = np.stack([m.estimator.coef_[0] for m in members], axis=1)  # features x members
    intercepts = np.array([m.estimator.intercept_[0] for m in members])
    slopes = np.array([m.calibrators[0].a_ for m in members])
    offsets = np.array([m.calibrators[0].b_ for m in members])

    def probabilities(texts: Sequence[str]) -> list[float]:
        decisions = vectorizer.transform(list(texts)) @ weights + intercepts  # texts x members
        return [float(p) for p in (1.0 / (1.0 + np.exp(slopes * decisions + offsets))).mean(axis=1)]

    return probabilities


def word_categories(word: str) -> set[str]:
    """The categories a normalised token belongs to (empty: none)."""
    for inside in wordlist.INSIDE:  # on the token as written: "shiitake" squeezed would hold "shit"
        if inside in word:
            return wordlist.WORD_CATEGORIES[inside]
    for form in dict.fromkeys((word, squeeze(word))):
        for stem in _stems(form):
            if stem in wordlist.WORD_CATEGORIES:
                return wordlist.WORD_CATEGORIES[stem]
    if any(c in WILDCARDS for c in word) and any(c.isalpha() for c in word) and len(word) >= 3:
        for stem in _stems(word):  # "f*cking": the stem with its hidden letter, then the list
            pattern = re.compile("".join("[a-z]" if c in WILDCARDS else re.escape(c) for c in stem))
            for known, categories in wordlist.WORD_CATEGORIES.items():
                if pattern.fullmatch(known):
                    return categories
    return set()


def _stems(form: str) -> list[str]:
    """The token, and the token less each common ending ("bitches" -> "bitch")."""
    cut = [form[: -len(e)] for e in wordlist.ENDINGS if form.endswith(e) and len(form) - len(e) >= 3]
    return [form, *cut]


def list_matches(text: str) -> list[tuple[int, int, str]]:
    """Where the word/pattern list matches ``text``: (start, end, category) in the original text."""
    toks = tokens(text)
    found = [(t.start, t.end, c) for t in toks for c in sorted(word_categories(t.text))]
    stream, starts = _stream(toks)
    for category, pattern in wordlist.PHRASE_PATTERNS.items():
        for m in pattern.finditer(stream):
            covered = [t for t, s in zip(toks, starts, strict=True) if s < m.end() and s + len(t.text) > m.start()]
            if covered:
                found.append((covered[0].start, covered[-1].end, category))
    return found


def _stream(toks: list[Token]) -> tuple[str, list[int]]:
    """The tokens joined by single spaces (apostrophes kept), and where each starts in it."""
    starts, pos = [], 0
    for t in toks:
        starts.append(pos)
        pos += len(t.text) + 1
    return " ".join(t.text.replace("\u2019", "'") for t in toks), starts


class Moderator:
    """Scores texts against the spec's policy. ``classify``: a stand-in for the packaged
    classifier (texts -> probabilities), for a team's own model."""

    def __init__(self, spec: SafetySpec, classify: Callable[[Sequence[str]], list[float]] | None = None):
        self.spec = spec
        self.classify = classify if classify is not None else packaged_classifier() if spec.classifier else None

    @property
    def policy_version(self) -> str:
        """What decided: the policy and the word list, hashed (in every audit record)."""
        policy = json.dumps(self.spec.model_dump(mode="json"), sort_keys=True) + wordlist.VERSION
        return hashlib.sha256(policy.encode()).hexdigest()[:12]

    def check(self, texts: Sequence[str]) -> list[Verdict]:
        if self.classify is not None and texts:
            probabilities = self.classify([wordlist.BENIGN_PATTERN.sub(" ", t) for t in texts])
        else:
            probabilities = [0.0] * len(texts)
        return [self._verdict(text, p) for text, p in zip(texts, probabilities, strict=True)]

    def _verdict(self, text: str, probability: float) -> Verdict:
        spans = list_matches(text)
        matched = {c for _, _, c in spans}
        scores = {
            c: max(1.0 if c in matched else 0.0, probability if c in CLASSIFIER_CATEGORIES else 0.0)
            for c in SAFETY_CATEGORIES
        }
        categories = {c: c in self.spec.categories and scores[c] >= self.spec.threshold for c in SAFETY_CATEGORIES}
        kept = [s for s in spans if categories[s[2]]]
        return Verdict(any(categories.values()), categories, scores, kept)


def redact(text: str, verdict: Verdict) -> str:
    """The flagged words masked with '*' (same length); a text flagged by the classifier alone,
    with nothing to point at, replaced whole."""
    if not verdict.flagged:
        return text
    if not verdict.spans:
        return REMOVED
    chars = list(text)
    for start, end, _ in verdict.spans:
        for i in range(start, end):
            if not chars[i].isspace():
                chars[i] = "*"
    return "".join(chars)


# OpenAI's moderation categories: each answer lists them all (its clients read them as fields);
# the ones this filter does not score are false with score 0, and profanity is added.
OPENAI_CATEGORIES = (
    "harassment",
    "harassment/threatening",
    "hate",
    "hate/threatening",
    "illicit",
    "illicit/violent",
    "self-harm",
    "self-harm/intent",
    "self-harm/instructions",
    "sexual",
    "sexual/minors",
    "violence",
    "violence/graphic",
)


def openai_result(verdict: Verdict) -> dict:
    """One entry of ``results`` in OpenAI's moderation answer."""
    keys = (*OPENAI_CATEGORIES, *(c for c in SAFETY_CATEGORIES if c not in OPENAI_CATEGORIES))
    return {
        "flagged": verdict.flagged,
        "categories": {c: verdict.categories.get(c, False) for c in keys},
        "category_scores": {c: round(verdict.category_scores.get(c, 0.0), 6) for c in keys},
        "category_applied_input_types": {c: ["text"] if c in SAFETY_CATEGORIES else [] for c in keys},
    }
