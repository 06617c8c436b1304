"""Every image model is sized by the data: at each resolution the spec accepts (16 to 128 pixels)
and in grey or RGB, the generators draw images of that shape, the discriminators and the metric
classifier take them, a training step runs, and the fusion classifier reads them."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from aigc_ray.data.info import DatasetInfo
from aigc_ray.models.classifier import ImageClassifier
from aigc_ray.models.fusion_training import build_model, predict, shape_config
from aigc_ray.models.gan_training import TrainData, build_gan, train_step
from aigc_ray.models.generators import generate

SIZES = [16, 32, 64, 128]
GAN = {"seed": 0, "z_dim": 8, "width": 4, "style_dim": 8, "mapping_layers": 1, "condition": "caption", "cond_dim": 8}
GAN |= {"g_lr": 1e-3, "d_lr": 1e-3, "lr_ratio": None, "beta1": 0.5, "batch_size": 4}


@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("kind", ["dcgan", "style"])
def test_text_to_image_gans_train_and_draw_at_every_size(kind, size, channels):
    config = {**GAN, "generator": kind, "image_size": size, "channels": channels, "num_classes": 3}
    torch.manual_seed(0)
    g, d, opt_g, opt_d = build_gan(config)
    rng = np.random.default_rng(0)
    real = rng.uniform(-1, 1, (6, channels, size, size)).astype(np.float32)
    captions = {
        "embedding": rng.normal(size=(6, 384)).astype(np.float32),
        "label": np.arange(6) % 3,
        "named": np.arange(6) % 3,
    }
    out = train_step(g, d, opt_g, opt_d, TrainData.make(real, captions, 3), config, torch.Generator().manual_seed(0))
    assert np.isfinite(float(out["loss_d"])) and np.isfinite(float(out["loss_g"]))
    images = generate(g, 2, seed=0, cond=captions["embedding"][0])
    assert images.shape == (2, channels, size, size) and images.abs().max() <= 1
    classifier = ImageClassifier(channels=channels, size=size, num_classes=3)
    assert classifier(images).shape == (2, 3)


@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("side", [8, *SIZES])
def test_the_fusion_classifier_reads_images_of_every_size(side, channels):
    info = DatasetInfo(("a", "b", "c", "d"), (side, side, channels))
    config = {"seed": 0, "operator": "cross_attention", "dim": 16, "max_text_tokens": 6, "text_encoder": "tiny"}
    model = build_model({**config, **shape_config(info)}, vocab_size=30)
    rng = np.random.default_rng(0)
    arrays = {
        "image": rng.uniform(0, 1, (3, channels, side, side)).astype(np.float32),
        "input_ids": rng.integers(3, 30, (3, 6)),
        "attention_mask": np.ones((3, 6), dtype=np.int64),
        "label": np.zeros(3, dtype=np.int64),
    }
    probs = predict(model, arrays)
    assert probs.shape == (3, 4)
    np.testing.assert_allclose(probs.sum(1), 1, atol=1e-5)
