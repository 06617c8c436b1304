"""The video GAN trial: trains G and D on the moving-digit clips, scores generated clips (frame
Fréchet distance, temporal consistency, motion), and checkpoints both networks and both
optimizers as one unit, so a PBT exploit always copies a matching (G, D) pair from one donor."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ..models.gan import discriminator_loss, generator_loss
from ..models.video_gan import VideoDiscriminator, VideoGenerator, from_video_space, load_video_generator
from .classifier import DigitClassifier
from .gan_pair import d_lr_of, pair_checkpoint, plain_config, restore_pair
from .video_metrics import clip_metrics

STATE_FILE = "video_gan_state.pt"
META_FILE = "video_gan_meta.json"
EVAL_SEED = 12345  # every evaluation scores clips from the same noise


def build(config: dict):
    """G, D and their Adam optimizers for a trial's config (seeded)."""
    torch.manual_seed(config["seed"])
    shape = (int(config["frames"]), int(config["frame_size"]))
    g = VideoGenerator(int(config["z_dim"]), int(config["width"]), *shape)
    d = VideoDiscriminator(int(config["width"]), *shape)
    betas = (config["beta1"], 0.999)
    return (
        g,
        d,
        torch.optim.Adam(g.parameters(), lr=config["g_lr"], betas=betas),
        torch.optim.Adam(d.parameters(), lr=d_lr_of(config), betas=betas),
    )


def video_trainable(
    config: dict,
    real: np.ndarray,
    classifier_state: dict,
    real_mu: np.ndarray,
    real_sigma: np.ndarray,
    real_consistency: float,
    real_motion: float,
) -> None:
    """Tune function trainable. ``real``: training clips in video space (N, 1, T, H, W);
    ``real_mu``/``real_sigma``: their frames' classifier-feature statistics."""
    from ray import tune

    torch.set_num_threads(1)
    g, d, opt_g, opt_d = build(config)
    classifier = DigitClassifier()
    classifier.load_state_dict(classifier_state)
    classifier.eval()
    step, iteration, restored = 0, 0, {}
    checkpoint = tune.get_checkpoint()
    if checkpoint:
        step, iteration, restored, _ = restore_pair(checkpoint, g, d, opt_g, opt_d, config, STATE_FILE, META_FILE)
    real_t = torch.from_numpy(np.array(real))  # the object store's arrays are read-only
    gen = torch.Generator().manual_seed(config["seed"] * 1000 + iteration)
    batch = int(config["batch_size"])
    real_stats = (real_mu, real_sigma)
    while iteration < config["max_iterations"]:
        d_correct = d_total = 0.0
        for _ in range(config["steps_per_iteration"]):
            x = real_t[torch.randint(0, len(real_t), (batch,), generator=gen)]
            fake = g(torch.randn(batch, g.z_dim, generator=gen))
            real_logits, fake_logits = d(x), d(fake.detach())
            loss_d = discriminator_loss(real_logits, fake_logits)
            opt_d.zero_grad(set_to_none=True)
            loss_d.backward()
            opt_d.step()
            loss_g = generator_loss(d(fake))
            opt_g.zero_grad(set_to_none=True)
            loss_g.backward()
            opt_g.step()
            step += 1
            d_correct += float((real_logits > 0).sum() + (fake_logits < 0).sum())
            d_total += 2 * batch
        iteration += 1
        g.eval()
        with torch.no_grad():
            z = torch.randn(int(config["eval_samples"]), g.z_dim, generator=torch.Generator().manual_seed(EVAL_SEED))
            clips = from_video_space(g(z))
        g.train()
        scores = clip_metrics(classifier, real_stats, clips)
        metrics = {
            **scores,
            "temporal_consistency_real": real_consistency,
            "temporal_ratio": scores["temporal_consistency"] / real_consistency if real_consistency else float("nan"),
            "motion_real": real_motion,
            "d_accuracy": d_correct / d_total,
            "loss_d": loss_d.item(),
            "loss_g": loss_g.item(),
            "step": step,
            "trial_id": tune.get_context().get_trial_id(),
            **restored,
        }
        meta = {"trial_id": metrics["trial_id"], "config": plain_config(config)}
        with pair_checkpoint(g, d, opt_g, opt_d, step, iteration, meta, STATE_FILE, META_FILE) as folder:
            tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(folder))


def load_checkpoint_generator(ckpt_dir: str, config: dict) -> VideoGenerator:
    """The generator of a trial checkpoint folder."""
    return load_video_generator(torch.load(Path(ckpt_dir, STATE_FILE), weights_only=True)["g"], config)
