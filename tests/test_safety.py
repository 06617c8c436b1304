"""The safety filter's moderation step on a labelled set: what it flags, what it lets through,
where it masks, and that hostile text never breaks it."""

from __future__ import annotations

import pytest
from moderation_fixture import HARMFUL, HARMLESS, OBFUSCATED, SUBSTRING_TRAPS
from pydantic import ValidationError

from aigc_ray.safety.moderator import REMOVED, Moderator, redact
from aigc_ray.spec.safety import SafetySpec


@pytest.fixture(scope="module")
def moderator() -> Moderator:
    pytest.importorskip("profanity_check", reason="alt-profanity-check installs on Python >= 3.11 only")
    return Moderator(SafetySpec())  # the defaults: word list + packaged classifier, threshold 0.5


@pytest.fixture(scope="module")
def word_list() -> Moderator:
    return Moderator(SafetySpec(classifier=False))


def test_the_labelled_set_is_flagged_with_high_recall_and_few_false_positives(moderator):
    assert len(HARMFUL) + len(HARMLESS) >= 200 and len(HARMFUL) >= 100 and len(HARMLESS) >= 100
    recall = sum(v.flagged for v in moderator.check(HARMFUL)) / len(HARMFUL)
    false_positives = sum(v.flagged for v in moderator.check(HARMLESS)) / len(HARMLESS)
    assert recall >= 0.9, recall
    assert false_positives <= 0.05, false_positives


def test_the_classifiers_fast_path_gives_the_packages_own_probabilities(moderator):
    from profanity_check import predict_prob

    from aigc_ray.safety.moderator import packaged_classifier

    texts = HARMFUL + HARMLESS
    assert packaged_classifier()(texts) == pytest.approx(list(predict_prob(texts)), abs=1e-12)


def test_words_inside_other_words_are_not_flagged(word_list, moderator):
    for text, verdict in zip(SUBSTRING_TRAPS, word_list.check(SUBSTRING_TRAPS), strict=True):
        assert not verdict.flagged, (text, verdict.spans)
    assert not any(v.flagged for v in moderator.check(["Scunthorpe", "the assassin's class", "cumin", "Sussex"]))


def test_leetspeak_masks_stretching_and_spacing_are_read_through(word_list):
    for text, verdict in zip(OBFUSCATED, word_list.check(OBFUSCATED), strict=True):
        assert verdict.flagged, text
    hidden = ["f\u200buck", "ｆｕｃｋ", "FUCK", "fück", "s h i t", "b-i-t-c-h"]  # zero-width, full-width, accents
    assert all(v.flagged for v in word_list.check(hidden))


def test_redaction_masks_exactly_the_flagged_words(word_list):
    text = "you are a f*cking idiot, really"
    (verdict,) = word_list.check([text])
    assert verdict.categories["profanity"] and verdict.categories["harassment"]
    assert redact(text, verdict) == "you are a ******* *****, really"
    (threat,) = word_list.check(["ok. I will kill you tomorrow"])
    assert (
        threat.categories["violence"]
        and redact("ok. I will kill you tomorrow", threat) == "ok. * **** **** *** tomorrow"
    )
    (clean,) = word_list.check(["a handwritten seven"])
    assert redact("a handwritten seven", clean) == "a handwritten seven"


def test_a_teams_own_classifier_plugs_in_and_the_threshold_decides():
    def own(texts):  # a team's model: everything looks 70 % offensive to it
        return [0.7] * len(texts)

    strict = Moderator(SafetySpec(threshold=0.6), classify=own)
    lenient = Moderator(SafetySpec(threshold=0.8), classify=own)
    (flagged,) = strict.check(["a pleasant day"])
    (passed,) = lenient.check(["a pleasant day"])
    assert flagged.flagged and flagged.category_scores["profanity"] == 0.7 and not flagged.spans
    assert redact("a pleasant day", flagged) == REMOVED  # nothing to point at: the whole text goes
    assert not passed.flagged and passed.category_scores["harassment"] == 0.7


def test_only_the_configured_categories_flag_but_every_score_is_reported(word_list):
    violence_only = Moderator(SafetySpec(categories=["violence"], classifier=False))
    swear, threat = violence_only.check(["what the fuck", "i will hurt you"])
    assert not swear.flagged and swear.category_scores["profanity"] == 1.0
    assert threat.flagged and threat.categories == {
        "profanity": False,
        "harassment": False,
        "violence": True,
        "self-harm": False,
        "sexual": False,
    }


def test_the_policy_version_names_the_policy():
    a, b = Moderator(SafetySpec(classifier=False)), Moderator(SafetySpec(classifier=False))
    assert a.policy_version == b.policy_version and len(a.policy_version) == 12
    assert Moderator(SafetySpec(classifier=False, threshold=0.7)).policy_version != a.policy_version


def test_hostile_text_is_scored_not_crashed_on(moderator):
    hostile = [
        "\ud800 unpaired surrogate",
        "nul \x00 and bell \x07",
        "\u202ea reversed caption\u202c",
        "e" + "\u0301" * 1_000_000,  # a megabyte of combining marks
        "",
        "   ",
        "\U0001f600" * 1000,
    ]
    verdicts = moderator.check(hostile)
    assert len(verdicts) == len(hostile) and not any(v.flagged for v in verdicts)


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ({"categories": ["spam"]}, "unknown categories ['spam']; allowed: profanity, harassment"),
        ({"categories": []}, "needs at least one category"),
        ({"threshold": 0}, "greater than 0"),
        ({"action": "delete"}, "'block', 'redact' or 'log'"),
    ],
)
def test_a_wrong_policy_is_refused_with_what_is_allowed(override, message):
    with pytest.raises(ValidationError, match=message.replace("[", r"\[").replace("]", r"\]")):
        SafetySpec(**override)


def test_a_failing_filter_or_audit_fails_the_request_closed(tmp_path):
    """The ingress's own moderation steps, on a filter whose model raises and on an audit folder
    that cannot be written: 503 with Retry-After, never an answer that skipped the check."""
    import asyncio

    from fastapi import HTTPException

    from aigc_ray.serve.app import EnsembleIngress
    from aigc_ray.storage import Storage

    def broken(texts):
        raise OSError("the model file is gone")

    ingress = object.__new__(EnsembleIngress.func_or_class)
    ingress.safety = SafetySpec()
    ingress.storage = Storage(None)
    ingress.moderator = Moderator(ingress.safety, classify=broken)
    ingress.audit_uri = str(tmp_path / "audit")
    with pytest.raises(HTTPException) as caught:
        asyncio.run(ingress._guard_prompts("cmpl-1", "/v1/completions", ["a handwritten seven"]))
    assert caught.value.status_code == 503 and caught.value.headers == {"Retry-After": "1"}
    assert "refused rather than answered unchecked" in caught.value.detail

    ingress.moderator = Moderator(SafetySpec(classifier=False))
    (tmp_path / "blocker").write_text("a file where the audit folder should be")
    ingress.audit_uri = str(tmp_path / "blocker" / "audit")
    with pytest.raises(HTTPException) as caught:
        asyncio.run(ingress._guard_output("cmpl-2", "/v1/completions", "a handwritten seven"))
    assert caught.value.status_code == 503 and "could not record its decision" in caught.value.detail

    ingress.audit_uri = str(tmp_path / "audit")  # writable again: the answer goes out, audited
    assert asyncio.run(ingress._guard_output("cmpl-3", "/v1/completions", "a handwritten seven")) == (
        "a handwritten seven",
        False,
    )
    assert len(list((tmp_path / "audit").glob("*.jsonl"))) == 1
