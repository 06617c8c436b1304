"""The in-project digit classifier whose features and probabilities score generated images.

Trained once on the real training images (in GAN space: 16x16, [-1, 1]) and stored as an
artifact (safetensors + manifest) keyed by the shards' fingerprint, so every sweep and trial
scores samples with the same network.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..data.arrays import digit_arrays
from ..data.digits import NUM_CLASSES
from ..layout import classifier_uri, multimodal_uri
from ..manifest import publish_directory, read_manifest
from ..spec import ExperimentSpec
from ..storage import Storage, join
from .gan import to_gan_space

FEATURES = 64


class DigitClassifier(nn.Module):
    """(N, 1, 16, 16) in [-1, 1] -> logits (N, 10); ``features`` is the 64-d penultimate layer."""

    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(1, 32, 3, padding=1),
            nn.ReLU(True),
            nn.MaxPool2d(2),  # (N, 32, 8, 8)
            nn.Conv2d(32, 64, 3, padding=1),
            nn.ReLU(True),
            nn.MaxPool2d(2),  # (N, 64, 4, 4)
            nn.Flatten(),
            nn.Linear(64 * 16, FEATURES),
            nn.ReLU(True),
        )
        self.head = nn.Linear(FEATURES, NUM_CLASSES)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))


def train_classifier(images: np.ndarray, labels: np.ndarray, seed: int, epochs: int = 20) -> DigitClassifier:
    """Adam on the real images with small random shifts (so it also judges imperfect samples)."""
    torch.manual_seed(seed)
    model = DigitClassifier()
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    x, y = to_gan_space(torch.from_numpy(images)), torch.from_numpy(labels)
    gen = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        for idx in torch.randperm(len(x), generator=gen).split(64):
            shift = torch.randint(-1, 2, (2,), generator=gen).tolist()
            batch = torch.roll(x[idx], shifts=shift, dims=(2, 3))
            loss = nn.functional.cross_entropy(model(batch), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    return model.eval()


def accuracy(model: DigitClassifier, images: np.ndarray, labels: np.ndarray) -> float:
    with torch.no_grad():
        pred = model(to_gan_space(torch.from_numpy(images))).argmax(1).numpy()
    return float((pred == labels).mean())


def load_or_train_classifier(spec: ExperimentSpec, storage: Storage) -> DigitClassifier:
    """The stored classifier for these shards, trained and stored first if missing or stale."""
    from safetensors.torch import load, save

    uri = classifier_uri(spec)
    shards = read_manifest(storage, multimodal_uri(spec))
    fingerprint = shards.fingerprint if shards else "unbuilt"
    existing = read_manifest(storage, uri)
    if existing is not None and existing.inputs.get("shards") == fingerprint:
        model = DigitClassifier()
        model.load_state_dict(load(storage.read_bytes(join(uri, "model.safetensors"))))
        return model.eval()
    train, val = digit_arrays(spec, storage, "train"), digit_arrays(spec, storage, "val")
    model = train_classifier(train["image"], train["label"], spec.data.seed)
    val_accuracy = accuracy(model, val["image"], val["label"])
    with tempfile.TemporaryDirectory() as tmp:
        Path(tmp, "model.safetensors").write_bytes(save(model.state_dict()))
        Path(tmp, "eval.json").write_text(json.dumps({"val_accuracy": val_accuracy}))
        publish_directory(
            storage,
            Path(tmp),
            uri,
            kind="model/digit-classifier",
            spec_hash=fingerprint,
            inputs={"shards": fingerprint},
            meta={"val_accuracy": val_accuracy},
        )
    return model


def score_images(model: DigitClassifier, gan_images: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """(features, class probabilities) of images already in GAN space."""
    with torch.no_grad():
        feats = model.features(gan_images)
        probs = torch.softmax(model.head(feats), dim=1)
    return feats.numpy(), probs.numpy()
