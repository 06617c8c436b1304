"""The GAN trial: trains G and D, scores samples, checkpoints both networks and both optimizers
as one unit, so a PBT exploit always copies a matching (G, D) pair from one donor.

G and D come from the factory (``models.generators``): DCGAN or style-based G, unconditional or
conditioned on the caption's MiniLM embedding (text-to-image). A conditional trial trains on
(image, caption embedding) rows and its D also learns to reject real images paired with a
caption naming another digit (GAN-INT-CLS's matching-aware loss, Reed et al. 2016). It reports
``cond_accuracy``: the digit classifier's accuracy on samples for "a handwritten zero" ...
"nine" against the prompt's digit. The caption embeddings are computed once in the driver and
handed to every trial, so no trial loads MiniLM.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..models.gan import discriminator_loss, generator_loss
from ..models.generators import build_discriminator, build_generator, generate, generate_for_embeddings, is_conditional
from ..models.style_gan import StyleGenerator
from .classifier import DigitClassifier
from .gan_pair import d_lr_of, pair_checkpoint, plain_config, restore_pair
from .metrics import class_accuracy, frechet_distance, inception_score

STATE_FILE = "gan_state.pt"
META_FILE = "gan_meta.json"
EVAL_SEED = 12345  # the fixed latents every evaluation samples from
DIGITS = 10


def spread(features: np.ndarray) -> float:
    """Mean distance of samples to their centroid: near 0 when a generator has collapsed."""
    return float(np.linalg.norm(features - features.mean(0), axis=1).mean())


def class_spread(features: np.ndarray, labels: np.ndarray) -> float:
    """``spread`` within each class, averaged over the classes present: for a conditional GAN's
    samples grouped by prompt, near 0 when each prompt always gets the same image."""
    groups = [features[labels == k] for k in np.unique(labels)]
    return float(np.mean([spread(f) for f in groups if len(f) > 1]))


def build(config: dict):
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

    @classmethod
    def make(cls, real: np.ndarray, captions: dict | None = None) -> TrainData:
        """``captions`` (conditional only): {"embedding": (N, 384), "label": (N,), "named": (N,)},
        ``named`` being the digit the row's caption names (-1 for a vague caption)."""
        real_t = torch.from_numpy(np.array(real))  # the object store's arrays are read-only
        if captions is None:
            return cls(real_t)
        named = np.asarray(captions["named"])
        rows = [np.flatnonzero(named == k) for k in range(DIGITS)]
        pool = np.zeros((DIGITS, max(1, max(len(r) for r in rows))), dtype=np.int64)
        for k, r in enumerate(rows):
            pool[k, : len(r)] = r
        return cls(
            real_t,
            torch.from_numpy(np.array(captions["embedding"], dtype=np.float32)),
            torch.from_numpy(np.array(captions["label"], dtype=np.int64)),
            torch.from_numpy(pool),
            torch.tensor([len(r) for r in rows]),
        )

    def mismatched(self, label: torch.Tensor, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """For each label, the caption embedding of a random row whose caption names another
        digit, and a mask of the rows that got one (False only if no row names such a digit)."""
        other = (label + torch.randint(1, DIGITS, label.shape, generator=gen)) % DIGITS
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
    idx = torch.randint(0, len(data.real), (batch,), generator=gen)
    x = data.real[idx]
    z = torch.randn(batch, g.z_dim, generator=gen)
    c = None if data.cond is None else data.cond[idx]
    if isinstance(g, StyleGenerator):
        z2 = crossover = None
        mixing = float(config.get("mixing_prob") or 0.0)
        if mixing > 0 and float(torch.rand((), generator=gen)) < mixing:
            z2 = torch.randn(batch, g.z_dim, generator=gen)
            crossover = int(torch.randint(1, g.num_styles, (), generator=gen))
        fake = g(z, c, z2=z2, crossover=crossover, noise_gen=gen)
    else:
        fake = g(z) if c is None else g(z, c)
    if c is None:
        real_logits, fake_logits = d(x), d(fake.detach())
        loss_d = discriminator_loss(real_logits, fake_logits)
    else:
        real_logits, fake_logits = d(x, c), d(fake.detach(), c)
        loss_d = discriminator_loss(real_logits, fake_logits)
        weight = float(config.get("mismatch_weight", 1.0))
        if weight > 0:
            wrong_c, ok = data.mismatched(data.label[idx], gen)
            mismatch_logits = d(x, wrong_c)
            per_row = F.binary_cross_entropy_with_logits(
                mismatch_logits, torch.zeros_like(mismatch_logits), reduction="none"
            )
            loss_d = loss_d + weight * (per_row * ok).sum() / ok.sum().clamp(min=1)
    opt_d.zero_grad(set_to_none=True)
    loss_d.backward()
    opt_d.step()
    loss_g = generator_loss(d(fake) if c is None else d(fake, c))
    opt_g.zero_grad(set_to_none=True)
    loss_g.backward()
    opt_g.step()
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


def cond_accuracy(g, classifier: DigitClassifier, prompt_embeddings: np.ndarray, eval_samples: int) -> float:
    """The classifier's accuracy on the samples for the digit prompts, against each prompt's digit."""
    images, digits = eval_images(g, eval_samples, prompt_embeddings)
    with torch.no_grad():
        probs = torch.softmax(classifier(images), 1).numpy()
    return class_accuracy(probs, digits)


def gan_trainable(
    config: dict,
    real: np.ndarray,
    classifier_state: dict,
    real_mu: np.ndarray,
    real_sigma: np.ndarray,
    real_spread: float,
    events_uri: str | None = None,
    s3=None,
    captions: dict | None = None,
    prompt_embeddings: np.ndarray | None = None,
) -> None:
    """Tune function trainable. ``real``: training images in GAN space (N, 1, 16, 16).

    Conditional (``condition: caption``): ``real`` holds only the rows used for training, and
    ``captions`` their caption embeddings, labels and named digits (see ``TrainData.make``);
    ``prompt_embeddings``: (10, 384), the embeddings of "a handwritten zero" ... "nine"."""
    from ray import tune

    torch.set_num_threads(1)
    g, d, opt_g, opt_d = build(config)
    classifier = DigitClassifier()
    classifier.load_state_dict(classifier_state)
    classifier.eval()
    step, iteration, restored = 0, 0, {}
    checkpoint = tune.get_checkpoint()
    if checkpoint:
        step, iteration, restored, meta = restore_pair(checkpoint, g, d, opt_g, opt_d, config, STATE_FILE, META_FILE)
        me = tune.get_context().get_trial_id()
        if events_uri and meta["trial_id"] != me:  # a PBT exploit: record it where the driver will look
            from ..storage import Storage, join

            event = {
                "trial_id": me,
                "donor": meta["trial_id"],
                "at_iteration": iteration,
                "pair_matches": restored["restored_pair_matches"],
            }
            Storage(s3).write_json(join(events_uri, f"{me}-{iteration}-{meta['trial_id']}.json"), event)
    if is_conditional(config) and (captions is None or prompt_embeddings is None):
        raise ValueError("a conditional GAN trial needs the caption and digit-prompt embeddings from the driver")
    data = TrainData.make(real, captions if is_conditional(config) else None)
    real_class_spread = None
    if data.cond is not None:  # the real images' spread within each digit, for cond_diversity
        with torch.no_grad():
            real_class_spread = class_spread(classifier.features(data.real).numpy(), data.label.numpy())
    gen = torch.Generator().manual_seed(config["seed"] * 1000 + iteration)
    while iteration < config["max_iterations"]:
        d_correct = d_total = 0.0
        for _ in range(config["steps_per_iteration"]):
            out = train_step(g, d, opt_g, opt_d, data, config, gen)
            step += 1
            d_correct += float((out["real_logits"] > 0).sum() + (out["fake_logits"] < 0).sum())
            d_total += 2 * len(out["real_logits"])
        iteration += 1
        images, digits = eval_images(g, config["eval_samples"], prompt_embeddings if data.cond is not None else None)
        with torch.no_grad():
            feats = classifier.features(images)
            probs = torch.softmax(classifier.head(feats), 1).numpy()
        feats = feats.numpy()
        metrics = {
            "fid": frechet_distance(real_mu, real_sigma, feats.mean(0), np.cov(feats, rowvar=False)),
            "inception_score": inception_score(probs),
            "diversity": spread(feats) / real_spread,
            "d_accuracy": d_correct / d_total,
            "loss_d": float(out["loss_d"]),
            "loss_g": float(out["loss_g"]),
            "step": step,
            "trial_id": tune.get_context().get_trial_id(),
            **restored,
        }
        if data.cond is not None:
            metrics["cond_accuracy"] = class_accuracy(probs, digits)
            metrics["cond_diversity"] = class_spread(feats, digits) / real_class_spread
        meta = {
            "trial_id": metrics["trial_id"],
            "config": plain_config(config),
            "metrics": {k: v for k, v in metrics.items() if isinstance(v, (int, float))},
        }
        with pair_checkpoint(g, d, opt_g, opt_d, step, iteration, meta, STATE_FILE, META_FILE) as folder:
            tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(folder))


def load_generator(ckpt_dir: str, config: dict):
    g = build_generator(config)
    g.load_state_dict(torch.load(Path(ckpt_dir, STATE_FILE), weights_only=True)["g"])
    return g.eval()
