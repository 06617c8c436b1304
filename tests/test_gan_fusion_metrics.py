"""Quality metrics (Fréchet distance, inception score), the in-project classifier, the GAN and
the fusion operators."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from aigc_ray.models.fusion import Fusion, FusionClassifier
from aigc_ray.models.gan import Discriminator, Generator, discriminator_loss, from_gan_space, generator_loss, sample
from aigc_ray.models.metrics import feature_stats, frechet_distance, frechet_from_features, inception_score


def rotation(dim: int, seed: int) -> np.ndarray:
    q, _ = np.linalg.qr(np.random.default_rng(seed).normal(size=(dim, dim)))
    return q


def test_frechet_matches_the_closed_form_for_commuting_covariances():
    # Σ1 = Q D1 Qᵀ, Σ2 = Q D2 Qᵀ share eigenvectors but are far from diagonal; then
    # (Σ1 Σ2)^½ = Q (D1 D2)^½ Qᵀ and d² = |Δμ|² + Σ (√d1 − √d2)².
    q = rotation(6, 0)
    d1, d2 = np.array([1.0, 2.0, 0.5, 3.0, 1.5, 0.2]), np.array([2.0, 0.5, 0.5, 1.0, 4.0, 0.8])
    s1, s2 = q @ np.diag(d1) @ q.T, q @ np.diag(d2) @ q.T
    mu1, mu2 = np.arange(6.0), np.arange(6.0)[::-1]
    expected = np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(d1) - np.sqrt(d2)) ** 2)
    assert frechet_distance(mu1, s1, mu2, s2) == pytest.approx(expected, rel=1e-9)
    # And from samples of those Gaussians, the estimate converges to the same value.
    rng = np.random.default_rng(1)
    a = rng.multivariate_normal(mu1, s1, size=40_000)
    b = rng.multivariate_normal(mu2, s2, size=40_000)
    assert frechet_from_features(a, b) == pytest.approx(expected, rel=0.02)


def test_frechet_is_zero_for_identical_sets_and_grows_with_a_shift():
    x = np.random.default_rng(2).normal(size=(2000, 8))
    assert abs(frechet_from_features(x, x)) < 1e-6
    distances = [frechet_from_features(x, x + shift) for shift in (0.1, 0.5, 1.0, 2.0)]
    assert distances == sorted(distances) and distances[0] > 0
    assert distances[-1] == pytest.approx(8 * 2.0**2, rel=1e-6)  # a pure mean shift: |Δμ|²


def test_frechet_is_exact_and_quiet_for_singular_covariances():
    """A dead feature (all zeros in both sets) and fewer samples than features make the covariances
    singular: the distance is the one in the live features, with no warning."""
    import warnings

    rng = np.random.default_rng(3)
    live_a, live_b = rng.normal(size=(6, 3)), rng.normal(1.0, 2.0, size=(6, 3))
    dead = np.zeros((6, 5))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        full = frechet_from_features(np.hstack([live_a, dead]), np.hstack([live_b, dead]))
    assert full == pytest.approx(frechet_from_features(live_a, live_b), rel=1e-9)


def test_frechet_refuses_mismatched_shapes():
    with pytest.raises(ValueError, match="shapes differ"):
        frechet_distance(np.zeros(3), np.eye(3), np.zeros(4), np.eye(4))
    with pytest.raises(ValueError, match="at least 2 samples"):
        feature_stats(np.zeros((1, 3)))


def test_inception_score_bounds():
    assert inception_score(np.full((100, 10), 0.1)) == pytest.approx(1.0)
    assert inception_score(np.eye(10)[np.arange(100) % 10]) == pytest.approx(10.0, rel=1e-6)
    assert inception_score(np.eye(10)[np.zeros(100, dtype=int)]) == pytest.approx(1.0)


def test_classifier_learns_real_digits_and_scores_noise_far_from_them(local_data):
    from aigc_ray.data.arrays import digit_arrays
    from aigc_ray.layout import classifier_uri
    from aigc_ray.models.classifier import accuracy, load_or_train_classifier, score_images
    from aigc_ray.models.gan import to_gan_space

    spec, storage = local_data
    model = load_or_train_classifier(spec, storage)
    assert storage.exists(classifier_uri(spec) + "/model.safetensors")
    val = digit_arrays(spec, storage, "val")
    assert accuracy(model, val["image"], val["label"]) > 0.9
    again = load_or_train_classifier(spec, storage)  # from the stored artifact, not retrained
    for a, b in zip(model.state_dict().values(), again.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    train = digit_arrays(spec, storage, "train")
    real_f, real_p = score_images(model, to_gan_space(torch.from_numpy(train["image"][:600])))
    val_f, _ = score_images(model, to_gan_space(torch.from_numpy(val["image"])))
    noise_f, _ = score_images(model, torch.rand(600, 1, 16, 16) * 2 - 1)
    assert frechet_from_features(real_f, val_f) < 0.2 * frechet_from_features(real_f, noise_f)
    assert inception_score(real_p) > 7  # confident and diverse on real digits


def test_gan_shapes_losses_and_seeded_samples():
    g, d = Generator(z_dim=16, width=16), Discriminator(width=16)
    images = sample(g, 8, seed=3)
    assert images.shape == (8, 1, 16, 16) and images.min() >= -1 and images.max() <= 1
    assert torch.equal(images, sample(g, 8, seed=3)) and not torch.equal(images, sample(g, 8, seed=4))
    assert 0 <= from_gan_space(images).min() and from_gan_space(images).max() <= 1
    logits = d(images)
    assert logits.shape == (8,)
    # D's loss is −log σ(r) − log(1 − σ(f)); G's non-saturating loss is −log σ(f).
    r, f = torch.tensor([2.0]), torch.tensor([-1.0])
    assert discriminator_loss(r, f).item() == pytest.approx(
        -np.log(1 / (1 + np.exp(-2))) - np.log(1 - 1 / (1 + np.exp(1)))
    )
    assert generator_loss(f).item() == pytest.approx(-np.log(1 / (1 + np.exp(1))))


def test_weighted_sum_fusion_is_the_formula():
    torch.manual_seed(0)
    fusion = Fusion("weighted_sum", dim=8)
    e_f, h_u = torch.randn(5, 8), torch.randn(5, 8)
    h = fusion(None, e_f, None, h_u, None)
    expected = e_f @ fusion.w_f.weight.T + h_u @ fusion.w_u.weight.T  # h = E_f·W_f + h_u·W_u
    torch.testing.assert_close(h, expected)


@pytest.mark.parametrize("operator", ["weighted_sum", "concat", "gated", "cross_attention"])
def test_every_fusion_operator_uses_both_modalities(operator):
    torch.manual_seed(0)
    model = FusionClassifier(vocab_size=100, operator=operator, dim=32)
    image = torch.rand(4, 1, 8, 8)
    ids = torch.randint(5, 100, (4, 12))
    mask = torch.ones(4, 12, dtype=torch.long)
    mask[:, 9:] = 0
    logits = model(image, ids, mask)
    assert logits.shape == (4, 10)
    logits.sum().backward()
    assert model.image.conv[0].weight.grad.abs().sum() > 0 and model.text.embed.weight.grad.abs().sum() > 0
    with torch.no_grad():  # changing either input changes the output
        assert not torch.allclose(model(image, ids, mask), model(torch.rand(4, 1, 8, 8), ids, mask))
        assert not torch.allclose(model(image, ids, mask), model(image, torch.randint(5, 100, (4, 12)), mask))


def test_unknown_fusion_operator_is_refused():
    with pytest.raises(ValueError, match="unknown fusion operator 'sum'"):
        Fusion("sum")
