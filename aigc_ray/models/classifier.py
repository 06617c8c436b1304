"""The in-project image classifier whose features and probabilities score generated images
(Fréchet distance, inception score, conditional accuracy).

Trained once on the real training images (in GAN space: ``gan_size`` square, [-1, 1], the data's
channels and classes) and stored as an artifact (safetensors + its shape in config.json +
manifest) keyed by the shards' fingerprint, so every sweep and trial scores samples with the
same network.
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
from .gan import gan_size, to_gan_space, up_layers

FEATURES = 64


class ImageClassifier(nn.Module):
    """(N, C, size, size) in [-1, 1] -> logits (N, classes); ``features`` is the 64-d penultimate
    layer. Conv + pool stages halve the side down to 4x4 (size 16: two stages, 32 then 64 wide)."""

    def __init__(self, channels: int = 1, size: int = 16, num_classes: int = NUM_CLASSES):
        super().__init__()
        self.config = {"channels": channels, "size": size, "num_classes": num_classes}
        stages: list[nn.Module] = []
        width, inputs = 32, channels
        for _ in range(up_layers(size)):  # (N, in, r, r) -> (N, width, r/2, r/2)
            stages += [nn.Conv2d(inputs, width, 3, padding=1), nn.ReLU(True), nn.MaxPool2d(2)]
            inputs, width = width, min(2 * width, 64)
        self.body = nn.Sequential(*stages, nn.Flatten(), nn.Linear(inputs * 16, FEATURES), nn.ReLU(True))
        self.head = nn.Linear(FEATURES, num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))


def train_classifier(
    images: np.ndarray, labels: np.ndarray, seed: int, num_classes: int = NUM_CLASSES, epochs: int = 20
) -> ImageClassifier:
    """Adam on the real images (N, C, H, W) in [0, 1], in GAN space, with small random shifts
    (so it also judges imperfect samples)."""
    torch.manual_seed(seed)
    size = gan_size(images.shape[-1])
    model = ImageClassifier(images.shape[1], size, num_classes)
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    x, y = to_gan_space(torch.from_numpy(images), size), torch.from_numpy(labels)
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


def accuracy(model: ImageClassifier, images: np.ndarray, labels: np.ndarray) -> float:
    with torch.no_grad():
        pred = model(to_gan_space(torch.from_numpy(images), model.config["size"])).argmax(1).numpy()
    return float((pred == labels).mean())


def load_or_train_classifier(spec: ExperimentSpec, storage: Storage) -> ImageClassifier:
    """The stored classifier for these shards, trained and stored first if missing or stale."""
    from safetensors.torch import load, save

    uri = classifier_uri(spec)
    shards = read_manifest(storage, multimodal_uri(spec))
    fingerprint = shards.fingerprint if shards else "unbuilt"
    existing = read_manifest(storage, uri)
    if (
        existing is not None
        and existing.inputs.get("shards") == fingerprint
        and storage.exists(join(uri, "config.json"))
    ):
        model = ImageClassifier(**json.loads(storage.read_bytes(join(uri, "config.json"))))
        model.load_state_dict(load(storage.read_bytes(join(uri, "model.safetensors"))))
        return model.eval()
    train, val = digit_arrays(spec, storage, "train"), digit_arrays(spec, storage, "val")
    classes = int(max(train["label"].max(), val["label"].max())) + 1
    if shards is not None and shards.meta.get("classes"):
        classes = len(shards.meta["classes"])
    model = train_classifier(train["image"], train["label"], spec.data.seed, classes)
    val_accuracy = accuracy(model, val["image"], val["label"])
    with tempfile.TemporaryDirectory() as tmp:
        Path(tmp, "model.safetensors").write_bytes(save(model.state_dict()))
        Path(tmp, "eval.json").write_text(json.dumps({"val_accuracy": val_accuracy}))
        Path(tmp, "config.json").write_text(json.dumps(model.config))
        publish_directory(
            storage,
            Path(tmp),
            uri,
            kind="model/image-classifier",
            spec_hash=fingerprint,
            inputs={"shards": fingerprint},
            meta={"val_accuracy": val_accuracy},
        )
    return model


def score_images(model: ImageClassifier, gan_images: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """(features, class probabilities) of images already in GAN space."""
    with torch.no_grad():
        feats = model.features(gan_images)
        probs = torch.softmax(model.head(feats), dim=1)
    return feats.numpy(), probs.numpy()
