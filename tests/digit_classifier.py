"""A small fusion classifier trained in seconds on scikit-learn's digits, for tests that need a
model that has really learned (explanations, adversarial attacks): half its captions name the
digit ("a handwritten seven"), half name nothing ("a handwritten digit"), so it reads both the
image and the caption."""

from __future__ import annotations

import functools

import torch

from aigc_ray.models.fusion import FusionClassifier

WORDS = "zero one two three four five six seven eight nine".split()
VOCAB = ["<pad>", "a", "handwritten", "digit", "number", "written", "by", "hand", *WORDS]
VAGUE = ["a handwritten digit", "a number written by hand", "a digit", "handwritten"]  # name nothing
BASELINE = VAGUE[0]  # the caption that stands for "no caption" in the Shapley values


def caption(label: int | None, vague: int = 0) -> list[int]:
    """Token ids of 'a handwritten <word>', or of one of the vague captions for None (padded to 5)."""
    words = (VAGUE[vague] if label is None else f"a handwritten {WORDS[label]}").split()
    return [VOCAB.index(w) for w in words] + [0] * (5 - len(words))


def baseline() -> tuple[torch.Tensor, torch.Tensor]:
    ids = torch.tensor([caption(None, 0)])
    return ids, (ids != 0).long()


@functools.cache
def trained_on_digits():
    """(model in eval mode, test images (N, 1, 8, 8) in [0, 1], test labels): the last 397 digits."""
    model, images, labels = train_on_digits()
    vague = torch.tensor([caption(None, 1)] * len(labels))
    with torch.no_grad():
        accuracy = (model(images, vague, (vague != 0).long()).argmax(1) == labels).float().mean()
    assert accuracy > 0.8, f"the test model did not learn the images: {accuracy:.2f}"
    return model, images, labels


def train_on_digits(steps: int = 400, adversarial: dict | None = None):
    """A fresh model trained ``steps`` Adam steps (seeded); ``adversarial``: adversarial training's
    settings (adversarial_epsilon, adversarial_steps, adversarial_fraction) as the fusion config holds them."""
    from sklearn.datasets import load_digits

    from aigc_ray.models.fusion_training import adversarial_batch

    torch.manual_seed(0)
    digits = load_digits()
    images = torch.tensor(digits.images / 16.0, dtype=torch.float32).unsqueeze(1)
    labels = torch.tensor(digits.target)
    test = slice(1400, None)  # the first 1,400 train it
    model = FusionClassifier(len(VOCAB), operator="cross_attention", dim=32, image_side=8)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    gen = torch.Generator().manual_seed(0)
    for _ in range(steps):
        idx = torch.randint(0, 1400, (64,), generator=gen)
        named = torch.rand(64, generator=gen) < 0.5
        kinds = torch.randint(0, len(VAGUE), (64,), generator=gen)
        ids = torch.tensor(
            [caption(int(y) if n else None, int(k)) for y, n, k in zip(labels[idx], named, kinds, strict=True)]
        )
        x, mask = images[idx], (ids != 0).long()
        if adversarial:
            x = adversarial_batch(model, x, ids, mask, labels[idx], {"adversarial_fraction": 0.5, **adversarial}, gen)
        loss = torch.nn.functional.cross_entropy(model(x, ids, mask), labels[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval(), images[test], labels[test]
