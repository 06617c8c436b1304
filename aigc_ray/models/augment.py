"""Data augmentation for the fusion classifier with a text-to-image GAN.

A caption-conditioned generator (a GAN sweep's ``best/`` folder) makes labelled training
samples: for digit k, captions drawn from the exact caption templates for k, each embedded with
MiniLM and drawn by the generator, then brought from GAN space (16x16 in [-1, 1]) back to the
real images' 8x8 in [0, 1] by 2x2 average (area) pooling, undoing ``to_gan_space``'s bilinear
2x upsampling up to a slight blur ([1/8, 3/4, 1/8] per axis; ``to_real_space`` also has the
exact least-squares inverse, which measured no better for the classifier). The pool is made
once, in the driver, and handed to every trial like the real arrays; trials mix it into their
batches by ``augment_ratio`` (see ``fusion_training.train_iteration``). Its captions may be
made as noisy as the data's (``shown_captions``), as the fusion sweep does.

``real_subset`` takes the seeded, label-stratified share of the real training split that
``fusion.real_fraction`` asks for.
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from ..data.digits import NUM_CLASSES, WORDS, baseline_caption, caption
from ..layout import augment_generator_uri
from ..manifest import read_manifest
from ..spec import ExperimentSpec
from ..storage import Storage, join
from .gan import from_gan_space
from .generators import generate_for_embeddings, is_conditional, load_generator_export

GENERATOR_FILE = "generator.safetensors"
CONFIG_FILE = "config.json"


@dataclass
class Augmenter:
    """A loaded text-to-image generator and where it came from.

    ``uri``: the ``best/`` folder it was read from; ``source_uri``/``fingerprint``: the committed
    artifact holding it (a GAN sweep's ``results/`` and its manifest fingerprint), for the fusion
    sweep's manifest inputs. For a folder outside any committed artifact, ``source_uri`` is the
    folder itself and ``fingerprint`` a hash of its two files ("sha256:...")."""

    generator: torch.nn.Module
    config: dict
    uri: str
    source_uri: str
    fingerprint: str


def load_augmenter(spec: ExperimentSpec, storage: Storage) -> Augmenter:
    """The generator (eval mode) and config of ``augment_generator_uri(spec)``, with its lineage.

    Raises FileNotFoundError when the folder has no generator, and ValueError when the
    generator is unconditional (it cannot be asked for a given digit, so it cannot make
    labelled samples)."""
    from safetensors.torch import load

    uri = augment_generator_uri(spec)
    weights_uri, config_uri = join(uri, GENERATOR_FILE), join(uri, CONFIG_FILE)
    if not (storage.exists(weights_uri) and storage.exists(config_uri)):
        where = "fusion.augment_generator" if spec.fusion.augment_generator else "this experiment's GAN sweep"
        raise FileNotFoundError(
            f"fusion augmentation needs a text-to-image generator, but {where} has none at {uri} "
            f"({GENERATOR_FILE} and {CONFIG_FILE}): run `aigc sweep gan` with gan.condition=caption first, "
            "or set fusion.augment_generator to a caption-conditioned GAN sweep's best/ folder"
        )
    config_bytes = storage.read_bytes(config_uri)
    config = json.loads(config_bytes)
    if not is_conditional(config):
        raise ValueError(
            f"the generator at {uri} is unconditional (condition: {config.get('condition') or 'none'}): it cannot "
            "be asked for a given digit, so it cannot make labelled samples for fusion augmentation; "
            "run `aigc sweep gan` with gan.condition=caption, or point fusion.augment_generator at such a generator"
        )
    weights = storage.read_bytes(weights_uri)
    source_uri, fingerprint = _source(storage, uri, weights, config_bytes)
    return Augmenter(load_generator_export(load(weights), config), config, uri, source_uri, fingerprint)


def _source(storage: Storage, uri: str, weights: bytes, config_bytes: bytes) -> tuple[str, str]:
    """The committed artifact the folder belongs to (itself or, for ``.../best``, its parent) and
    its fingerprint; checks that the weights read are the ones that manifest lists."""
    candidates = [(uri, "")]
    if uri.rstrip("/").endswith("/best"):
        candidates.insert(0, (uri.rstrip("/").rsplit("/", 1)[0], "best/"))
    for artifact, prefix in candidates:
        manifest = read_manifest(storage, artifact)
        if manifest is None:
            continue
        entry = manifest.files.get(prefix + GENERATOR_FILE)
        if entry is not None and entry.sha256 != hashlib.sha256(weights).hexdigest():
            raise RuntimeError(
                f"{join(uri, GENERATOR_FILE)} differs from what {artifact}'s manifest lists: "
                "the folder is being rewritten; try again when its sweep has finished"
            )
        return artifact, manifest.fingerprint
    digest = hashlib.sha256(hashlib.sha256(weights).digest() + hashlib.sha256(config_bytes).digest()).hexdigest()
    return uri, f"sha256:{digest}"  # not a manifest fingerprint: `aigc run` will not compare it


def max_augment_ratio(spec: ExperimentSpec) -> float:
    """The largest augment_ratio any trial can use: the default, or the search space's bound/values."""
    return spec.fusion.max_augment_ratio


def pool_per_class(max_ratio: float, real_rows: int, num_classes: int = NUM_CLASSES) -> int:
    """Synthetic samples per class for a pool serving ratios up to ``max_ratio`` over ``real_rows`` real rows."""
    return max(1, math.ceil(max_ratio * real_rows / num_classes)) if max_ratio > 0 else 0


def _is_digits(classes) -> bool:
    return classes is None or tuple(classes) == WORDS


def pool_captions(
    per_class: int, caption_seed: int, classes: tuple[str, ...] | None = None, template: str = "a {name}"
) -> tuple[np.ndarray, list[str]]:
    """Labels (class-major, ``per_class`` each) and a caption per sample: for the digits drawn
    from their exact templates ("a handwritten seven", "the digit 7", ...), deterministic in the
    seed; for other classes the prompt ``template`` with the class name."""
    if _is_digits(classes):
        labels = np.repeat(np.arange(NUM_CLASSES, dtype=np.int64), per_class)
        rng = np.random.default_rng([caption_seed, 3])
        return labels, [caption(int(k), "exact", rng)[0] for k in labels]
    labels = np.repeat(np.arange(len(classes), dtype=np.int64), per_class)
    return labels, [template.format(name=classes[k]) for k in labels]


def _noisy_caption(label: int, kind: str, rng: np.random.Generator, classes, template: str) -> str:
    """A vague (names no class) or wrong (names another class) caption for ``label``."""
    if _is_digits(classes):
        return caption(label, kind, rng)[0]
    if kind == "vague":
        return baseline_caption(classes)
    other = int((label + rng.integers(1, len(classes))) % len(classes))
    return template.format(name=classes[other])


@functools.cache
def _upsampling_inverse(small: int, large: int) -> torch.Tensor:
    """P (small, large): the least-squares inverse of ``to_gan_space``'s bilinear resize along one
    axis (it is separable: up(X) = U X Uᵀ with U = large × small, so X = P up(X) Pᵀ with P = U⁺)."""
    basis = torch.eye(small, dtype=torch.float64).reshape(small, 1, small, 1)
    up = F.interpolate(basis, size=(large, 1), mode="bilinear", align_corners=False)  # column i: up(e_i)
    return torch.linalg.pinv(up.reshape(small, large).T).float()


def to_real_space(images: torch.Tensor, method: str = "area", side: int | None = None) -> torch.Tensor:
    """GAN space (N, C, S, S) in [-1, 1] -> the real images' (N, C, side, side) in [0, 1]
    (default side S/2: the digits, 8x8 in a 16x16 GAN space).

    ``area``: average pooling; an image ``to_gan_space`` made 2x larger comes back blurred by
    [1/8, 3/4, 1/8] along each axis. ``inverse``: the least-squares inverse of ``to_gan_space``
    (exact for an image it made; for a generated one the image whose upsampling is closest)."""
    x = from_gan_space(images)
    side = side or x.shape[-1] // 2
    if side == x.shape[-1]:  # the data is at the GAN's own size
        return x
    if method == "area":
        return F.adaptive_avg_pool2d(x, side) if x.shape[-1] % side == 0 else F.interpolate(x, size=side, mode="area")
    if method != "inverse":
        raise ValueError(f"unknown method {method!r}; allowed: inverse, area")
    p = _upsampling_inverse(side, x.shape[-1])
    return (p @ x @ p.T).clamp(0, 1)


def shown_captions(
    labels: np.ndarray,
    exact: list[str],
    vague: float,
    wrong: float,
    caption_seed: int,
    classes: tuple[str, ...] | None = None,
    template: str = "a {name}",
) -> tuple[list[str], np.ndarray]:
    """The captions the classifier sees with the pool and their kinds: each sample's exact caption,
    except a ``vague`` share replaced by one naming no digit and a ``wrong`` share by one naming
    another digit (the data's own caption noise, ``data.caption_noise``). Seeded apart from
    the exact captions, so with both shares 0 the captions are ``pool_captions``' own."""
    if vague == 0 and wrong == 0:
        return list(exact), np.full(len(labels), "exact", dtype=object)
    if vague < 0 or wrong < 0 or vague + wrong > 1:
        raise ValueError(f"vague and wrong must be >= 0 with vague + wrong <= 1, got {vague:g}, {wrong:g}")
    rng = np.random.default_rng([caption_seed, 4])
    kinds = rng.choice(["exact", "vague", "wrong"], size=len(labels), p=[1 - vague - wrong, vague, wrong])
    texts = [
        t if k == "exact" else _noisy_caption(int(y), str(k), rng, classes, template)
        for t, k, y in zip(exact, kinds, labels, strict=True)
    ]
    return texts, kinds.astype(object)


def synthetic_pool(
    generator: torch.nn.Module,
    config: dict,
    per_class: int,
    seed: int,
    caption_seed: int,
    *,
    vague: float = 0.0,
    wrong: float = 0.0,
    classes: tuple[str, ...] | None = None,
    side: int | None = None,
) -> dict[str, np.ndarray]:
    """``per_class`` generated samples per digit, as the real arrays are (``digit_arrays``):
    {"image": (N, 1, 8, 8) float32 in [0, 1], "label": (N,) int64, "text": (N,) object}, class-major,
    and "caption_kind" (N,): exact, vague or wrong.

    Each sample is drawn by the generator from the MiniLM embedding of a caption from the exact
    templates for its label (``caption_seed``; latents from ``seed``), and by default that is the
    caption it comes with: the text branch sees realistic captions, the image branch images made
    for them. ``vague``/``wrong``: shares whose caption is then swapped for a vague or a wrong one,
    as in the real data (``shown_captions``); the image still shows the label's digit."""
    if not is_conditional(config):
        raise ValueError("synthetic_pool needs a caption-conditioned generator (condition: caption)")
    from ..models.text_condition import embed_texts

    template = config.get("prompt_template", "a {name}")
    labels, exact = pool_captions(int(per_class), caption_seed, classes, template)
    if not len(labels):
        raise ValueError(f"per_class must be at least 1, got {per_class}")
    images = to_real_space(generate_for_embeddings(generator, embed_texts(exact), 1, seed), side=side)
    texts, kinds = shown_captions(labels, exact, vague, wrong, caption_seed, classes, template)
    return {
        "image": images.numpy().astype(np.float32),
        "label": labels,
        "text": np.array(texts, dtype=object),
        "caption_kind": kinds,
    }


def real_subset(arrays: dict[str, np.ndarray], fraction: float, seed: int) -> dict[str, np.ndarray]:
    """A seeded, label-stratified ``fraction`` of the rows of ``arrays`` (every value indexed by row).

    round(fraction × N) rows in all, split over the labels in proportion to their counts (largest
    remainder), at least one per label; the chosen rows keep their original order. Deterministic
    in ``seed``, and nested: with one seed a smaller fraction's rows are among a larger one's.
    ``fraction`` >= 1 returns the arrays unchanged."""
    if not 0 < fraction:
        raise ValueError(f"fraction must be > 0, got {fraction}")
    if fraction >= 1:
        return dict(arrays)
    labels = np.asarray(arrays["label"])
    classes, counts = np.unique(labels, return_counts=True)
    total = max(len(classes), int(round(fraction * len(labels))))
    quota = counts * (total / len(labels))
    take = np.minimum(np.maximum(np.floor(quota).astype(int), 1), counts)
    while take.sum() < total:  # the largest remainders get one more (ties: the lower label)
        room = np.where(take < counts, quota - take, -np.inf)
        take[int(np.argmax(room))] += 1
    while take.sum() > total:  # the one-per-label minimum overshot: the most over quota give one back
        over = np.where(take > 1, take - quota, -np.inf)
        take[int(np.argmax(over))] -= 1
    rng = np.random.default_rng([seed, 5])
    chosen = [rng.permutation(np.flatnonzero(labels == k))[:n] for k, n in zip(classes, take, strict=True)]
    rows = np.sort(np.concatenate(chosen))
    return {k: np.asarray(v)[rows] for k, v in arrays.items()}
