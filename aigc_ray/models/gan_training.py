"""Training a GAN as plain torch: G, D and their optimizers built from a config, one training
step (unconditional, or text-to-image with the matching-aware loss), and the images every
evaluation scores. Tune's trial (``tune.gan_trainable``) drives these.

G and D come from the factory (``models.generators``): DCGAN or style-based G, unconditional or
conditioned on the caption's MiniLM embedding (text-to-image). A conditional step trains on
(image, caption embedding) rows and its D also learns to reject real images paired with a
caption naming another digit (GAN-INT-CLS's matching-aware loss, Reed et al. 2016); with
``class_weight`` > 0 D also names each real image's class and G is trained so that D names the
class its caption asks for (AC-GAN's auxiliary classifier, Odena et al. 2017).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from ..data.digits import NUM_CLASSES
from .classifier import ImageClassifier
from .device import module_device, on
from .gan import EVAL_SEED, d_lr_of, descend, discriminator_loss, generator_loss
from .generators import build_discriminator, build_generator, class_weight, generate, generate_for_embeddings
from .metrics import class_accuracy
from .style_gan import StyleGenerator


def spread(features: np.ndarray) -> float:
    """Mean distance of samples to their centroid: near 0 when a generator has collapsed."""
    return float(np.linalg.norm(features - features.mean(0), axis=1).mean())


def class_spread(features: np.ndarray, labels: np.ndarray) -> float:
    """``spread`` within each class, averaged over the classes present: for a conditional GAN's
    samples grouped by prompt, near 0 when each prompt always gets the same image."""
    groups = [features[labels == k] for k in np.unique(labels)]
    return float(np.mean([spread(f) for f in groups if len(f) > 1]))


def build_gan(config: dict):
    """G, D and their Adam optimizers for a trial's config (seeded)."""
    torch.manual_seed(config["seed"])
    g = build_generator(config)
    d = build_discriminator(config)
    d_lr = d_lr_of(config)
    betas = (config["beta1"], 0.999)
    return (
        g,
        d,
        torch.optim.Adam(g.parameters(), lr=config["g_lr"], betas=betas),
        torch.optim.Adam(d.parameters(), lr=d_lr, betas=betas),
    )


@dataclass
class TrainData:
    """What a trial trains on. ``real``: images in GAN space (N, 1, 16, 16). For a conditional
    GAN also ``cond``: each row's caption embedding (N, 384), ``label``: each row's true digit,
    and the mismatch pools: ``pool[k, :pool_len[k]]`` are the rows whose caption names digit k."""

    real: torch.Tensor
    cond: torch.Tensor | None = None
    label: torch.Tensor | None = None
    pool: torch.Tensor | None = None
    pool_len: torch.Tensor | None = None
    named: torch.Tensor | None = None  # the class each row's caption names, -1 for a vague one

    @classmethod
    def make(cls, real: np.ndarray, captions: dict | None = None, num_classes: int = NUM_CLASSES) -> TrainData:
        """``captions`` (conditional only): {"embedding": (N, 384), "label": (N,), "named": (N,)},
        ``named`` being the digit the row's caption names (-1 for a vague caption)."""
        real_t = torch.from_numpy(np.array(real))  # the object store's arrays are read-only
        if captions is None:
            return cls(real_t)
        named = np.asarray(captions["named"])
        rows = [np.flatnonzero(named == k) for k in range(num_classes)]
        pool = np.zeros((num_classes, max(1, max(len(r) for r in rows))), dtype=np.int64)
        for k, r in enumerate(rows):
            pool[k, : len(r)] = r
        return cls(
            real_t,
            torch.from_numpy(np.array(captions["embedding"], dtype=np.float32)),
            torch.from_numpy(np.array(captions["label"], dtype=np.int64)),
            torch.from_numpy(pool),
            torch.tensor([len(r) for r in rows]),
            torch.from_numpy(named.astype(np.int64)),
        )

    def mismatched(self, label: torch.Tensor, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """For each label, the caption embedding of a random row whose caption names another
        digit, and a mask of the rows that got one (False only if no row names such a digit)."""
        classes = len(self.pool)
        other = (label + torch.randint(1, classes, label.shape, generator=gen)) % classes
        size = self.pool_len[other]
        pick = (torch.rand(label.shape, generator=gen) * size.clamp(min=1)).long().clamp(max=self.pool.shape[1] - 1)
        return self.cond[self.pool[other, pick]], size > 0


def train_step(g, d, opt_g, opt_d, data: TrainData, config: dict, gen: torch.Generator) -> dict:
    """One D update and one G update on a batch drawn with ``gen``; returns the losses and logits.

    Unconditional: the minimax losses. Conditional: G and D see the batch's captions, and D's
    loss adds ``mismatch_weight`` × BCE(D(real image, caption naming another digit), fake).
    Style generator: with probability ``mixing_prob`` the fakes are made with two mixed styles
    (a random crossover slot), and its noise inputs are drawn from ``gen``.
    """
    batch = int(config["batch_size"])
    device = module_device(g)  # draws on the CPU from ``gen``, then moved: same batches anywhere
    idx = torch.randint(0, len(data.real), (batch,), generator=gen)
    x = on(device, data.real[idx])
    z = on(device, torch.randn(batch, g.z_dim, generator=gen))
    c = None if data.cond is None else on(device, data.cond[idx])
    if isinstance(g, StyleGenerator):
        z2 = crossover = None
        mixing = float(config.get("mixing_prob") or 0.0)
        if mixing > 0 and float(torch.rand((), generator=gen)) < mixing:
            z2 = on(device, torch.randn(batch, g.z_dim, generator=gen))
            crossover = int(torch.randint(1, g.num_styles, (), generator=gen))
        fake = g(z, c, z2=z2, crossover=crossover, noise_gen=gen)
    else:
        fake = g(z) if c is None else g(z, c)
    aux = class_weight(config) if c is not None else 0.0
    if c is None:
        real_logits, fake_logits = d(x), d(fake.detach())
        loss_d = discriminator_loss(real_logits, fake_logits)
    else:
        if aux:
            real_logits, real_classes = d(x, c, classes=True)
        else:
            real_logits = d(x, c)
        fake_logits = d(fake.detach(), c)
        loss_d = discriminator_loss(real_logits, fake_logits)
        weight = float(config.get("mismatch_weight", 1.0))
        if weight > 0:
            wrong_c, ok = on(device, *data.mismatched(data.label[idx], gen))
            mismatch_logits = d(x, wrong_c)
            per_row = F.binary_cross_entropy_with_logits(
                mismatch_logits, torch.zeros_like(mismatch_logits), reduction="none"
            )
            loss_d = loss_d + weight * (per_row * ok).sum() / ok.sum().clamp(min=1)
        if aux:  # D learns the class of the real image (whatever its caption says)
            loss_d = loss_d + aux * F.cross_entropy(real_classes, on(device, data.label[idx]))
    descend(opt_d, loss_d)
    if c is None:
        loss_g = generator_loss(d(fake))
    elif not aux:
        loss_g = generator_loss(d(fake, c))
    else:  # G: D should name the class the caption asked for (a vague caption asks for none)
        g_logits, fake_classes = d(fake, c, classes=True)
        asked = on(device, data.named[idx])
        per_row = F.cross_entropy(fake_classes, asked.clamp(min=0), reduction="none")
        named = (asked >= 0).float()
        loss_g = generator_loss(g_logits) + aux * (per_row * named).sum() / named.sum().clamp(min=1)
    descend(opt_g, loss_g)
    return {
        "loss_d": loss_d.detach(),
        "loss_g": loss_g.detach(),
        "real_logits": real_logits,
        "fake_logits": fake_logits,
    }


def eval_images(g, eval_samples: int, prompt_embeddings: np.ndarray | None = None) -> tuple[torch.Tensor, np.ndarray]:
    """The images every evaluation scores, and the digit each was asked for (-1: unconditional).

    Unconditional: ``eval_samples`` images from ``EVAL_SEED``. Conditional: ceil(eval_samples / P)
    images for each of the P prompt embeddings (prompt-major), from ``EVAL_SEED``; prompt i asks
    for digit i."""
    if prompt_embeddings is None:
        return generate(g, int(eval_samples), EVAL_SEED), np.full(int(eval_samples), -1)
    per_prompt = -(-int(eval_samples) // len(prompt_embeddings))
    images = generate_for_embeddings(g, prompt_embeddings, per_prompt, EVAL_SEED)
    return images, np.repeat(np.arange(len(prompt_embeddings)), per_prompt)


def cond_accuracy(g, classifier: ImageClassifier, prompt_embeddings: np.ndarray, eval_samples: int) -> float:
    """The classifier's accuracy on the samples for the digit prompts, against each prompt's digit."""
    images, digits = eval_images(g, eval_samples, prompt_embeddings)
    with torch.no_grad():
        probs = torch.softmax(classifier(images), 1).numpy()
    return class_accuracy(probs, digits)
