"""Explanations of the fusion classifier, checked rather than assumed: IG's completeness, the
Shapley values' efficiency, the modality shares on captions that name nothing and on blank
images, a saliency that differs from a randomised model's, and pixels whose deletion matters.

The model: a small fusion classifier trained here in seconds on scikit-learn's digits, half the
captions naming the digit ("a handwritten seven"), half naming nothing ("a handwritten digit"),
so that it has learned to read both the image and the caption."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from digit_classifier import VOCAB, baseline, caption, trained_on_digits
from scipy.stats import spearmanr

from aigc_ray.models.explain import explain, modality_shapley
from aigc_ray.models.fusion import FusionClassifier


@pytest.fixture(scope="module")
def trained():
    return trained_on_digits()


@torch.no_grad()
def probability(model, image, ids, mask, target: int) -> float:
    return float(torch.softmax(model(image, ids, mask), -1)[0, target])


def one(images, labels, i, named: bool):
    """Example i of the test split, with its exact caption or a vague one other than the baseline."""
    ids = torch.tensor([caption(int(labels[i]) if named else None, 1 + i % 3)])
    return images[i : i + 1], ids, (ids != 0).long()


def test_integrated_gradients_are_complete_and_shapley_values_efficient(trained):
    model, images, labels = trained
    for i in range(5):
        image, ids, mask = one(images, labels, i, named=i % 2 == 0)
        e = explain(model, image, ids, mask)
        gap = probability(model, image, ids, mask, e.target) - probability(
            model, torch.zeros_like(image), ids, mask, e.target
        )
        # IG: the attributions add up to the output's change from the baseline, within 1 % of the output
        assert abs(e.image_attribution.sum() - gap) <= 0.01 * e.probability, (e.image_attribution.sum(), gap)
        assert abs(e.image_delta) <= 0.01 * e.probability and abs(e.token_delta) <= 0.01 * e.probability
        phi_i, phi_c, v = modality_shapley(model, image, ids, mask, e.target, baseline())
        assert phi_i + phi_c == pytest.approx(v["both"] - v["none"], abs=1e-6)  # efficiency
        assert e.image_share + e.caption_share == pytest.approx(1.0)
        assert e.attention is not None and e.attention.shape == (5, 16)  # 5 token positions x 4x4 patches
        assert np.allclose(e.attention.sum(-1), 1.0, atol=1e-5)


def test_a_caption_naming_nothing_leaves_the_decision_to_the_image_and_a_blank_image_to_the_caption(trained):
    model, images, labels = trained
    image_shares, caption_shares = [], []
    for i in range(20):
        image, vague, mask = one(images, labels, i, named=False)
        image_shares.append(explain(model, image, vague, mask, steps=16, baseline_caption=baseline()).image_share)
        _, exact, mask = one(images, labels, i, named=True)
        blank = torch.zeros_like(image)  # the image player's baseline itself: its value is 0
        caption_shares.append(explain(model, blank, exact, mask, steps=16, baseline_caption=baseline()).caption_share)
    assert np.mean(image_shares) >= 0.9, image_shares
    assert np.mean(caption_shares) >= 0.9, caption_shares


def test_the_saliency_of_a_trained_model_is_not_that_of_a_randomised_one(trained):
    model, images, labels = trained
    scrambled = FusionClassifier(len(VOCAB), operator="cross_attention", dim=32, image_side=8).eval()
    correlations = []
    for i in range(10):
        image, ids, mask = one(images, labels, i, named=False)
        ours = explain(model, image, ids, mask, steps=16)
        theirs = explain(scrambled, image, ids, mask, target=ours.target, steps=16)
        correlations.append(spearmanr(ours.image_attribution.ravel(), theirs.image_attribution.ravel())[0])
    assert np.nanmean(correlations) < 0.5, correlations


def test_deleting_the_most_attributed_pixels_costs_more_than_deleting_random_ones(trained):
    model, images, labels = trained
    rng = np.random.default_rng(0)
    top_drops, random_drops = [], []
    for i in range(20):
        image, ids, mask = one(images, labels, i, named=False)
        e = explain(model, image, ids, mask, steps=16)
        k = int(0.2 * image.numel())
        top = np.argsort(-e.image_attribution.ravel())[:k]
        chosen = rng.choice(image.numel(), k, replace=False)
        kept = {}
        for name, pixels in (("top", top), ("random", chosen)):
            x = image.clone().reshape(-1)
            x[torch.as_tensor(pixels)] = 0.0
            kept[name] = probability(model, x.reshape(image.shape), ids, mask, e.target)
        top_drops.append(e.probability - kept["top"])
        random_drops.append(e.probability - kept["random"])
    assert np.mean(top_drops) > np.mean(random_drops), (np.mean(top_drops), np.mean(random_drops))


def test_the_overlay_marks_pixels_that_raised_the_answer_red_and_those_that_lowered_it_blue():
    from aigc_ray.data.images import decode_image_file, decode_png, encode_png
    from aigc_ray.ensemble.explain import overlay_png

    image = np.full((1, 2, 2), 0.5, dtype=np.float32)
    attribution = np.array([[[1.0, 0.0], [0.0, -0.5]]])
    png = decode_png(overlay_png(image, attribution, scale=4))
    assert png.shape == (8, 8, 3)  # each pixel a 4x4 block, in colour
    red, neutral, blue = png[0, 0].astype(int), png[0, 7].astype(int), png[7, 7].astype(int)
    assert red[0] > 200 and red[2] < 80  # the strongest raise: full red
    assert neutral[0] == neutral[1] == neutral[2]  # no attribution: the image's grey
    assert blue[2] > blue[0] + 40  # a lowering half as strong: half-way to blue
    # `aigc explain` reads any image format, resized to the model's input
    back = decode_image_file(encode_png(np.eye(4)), side=2, channels=1)
    assert back.shape == (1, 2, 2) and back.max() <= 1.0
    with pytest.raises(ValueError, match="not a decodable image"):
        decode_image_file(b"not an image", side=2)
