"""The GAN trial: trains G and D, scores samples, checkpoints both networks and both optimizers
as one unit, so a PBT exploit always copies a matching (G, D) pair from one donor."""

from __future__ import annotations

import hashlib
import json
import tempfile
from pathlib import Path

import numpy as np
import torch

from ..models.gan import Discriminator, Generator, discriminator_loss, generator_loss
from .classifier import DigitClassifier
from .metrics import frechet_distance, inception_score

STATE_FILE = "gan_state.pt"
META_FILE = "gan_meta.json"


def weights_hash(module: torch.nn.Module) -> str:
    h = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        h.update(name.encode())
        h.update(tensor.detach().cpu().numpy().tobytes())
    return h.hexdigest()[:16]


def spread(features: np.ndarray) -> float:
    """Mean distance of samples to their centroid: near 0 when a generator has collapsed."""
    return float(np.linalg.norm(features - features.mean(0), axis=1).mean())


def build(config: dict):
    torch.manual_seed(config["seed"])
    g = Generator(int(config["z_dim"]), int(config["width"]))
    d = Discriminator(int(config["width"]))
    d_lr = config["g_lr"] * config["lr_ratio"] if config.get("lr_ratio") else config["d_lr"]
    betas = (config["beta1"], 0.999)
    return (
        g,
        d,
        torch.optim.Adam(g.parameters(), lr=config["g_lr"], betas=betas),
        torch.optim.Adam(d.parameters(), lr=d_lr, betas=betas),
    )


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr


def gan_trainable(
    config: dict,
    real: np.ndarray,
    classifier_state: dict,
    real_mu: np.ndarray,
    real_sigma: np.ndarray,
    real_spread: float,
    events_uri: str | None = None,
    s3=None,
) -> None:
    """Tune function trainable. ``real``: training images in GAN space (N, 1, 16, 16)."""
    from ray import tune

    torch.set_num_threads(1)
    g, d, opt_g, opt_d = build(config)
    classifier = DigitClassifier()
    classifier.load_state_dict(classifier_state)
    classifier.eval()
    step, iteration, restored = 0, 0, {}
    checkpoint = tune.get_checkpoint()
    if checkpoint:
        with checkpoint.as_directory() as ckpt:
            state = torch.load(Path(ckpt, STATE_FILE), weights_only=True)  # our own file, tensors only
            meta = json.loads(Path(ckpt, META_FILE).read_text())
        g.load_state_dict(state["g"])
        d.load_state_dict(state["d"])
        opt_g.load_state_dict(state["opt_g"])
        opt_d.load_state_dict(state["opt_d"])
        step, iteration = int(state["step"]), int(state["iteration"])
        # After a PBT exploit the config holds the explored learning rates: apply them.
        set_lr(opt_g, config["g_lr"])
        set_lr(opt_d, config["g_lr"] * config["lr_ratio"] if config.get("lr_ratio") else config["d_lr"])
        restored = {
            "restored_from": meta["trial_id"],
            "restored_pair_matches": weights_hash(g) == meta["g_hash"] and weights_hash(d) == meta["d_hash"],
        }
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
    real_t = torch.from_numpy(np.array(real))  # the object store's arrays are read-only
    gen = torch.Generator().manual_seed(config["seed"] * 1000 + iteration)
    batch = int(config["batch_size"])
    while iteration < config["max_iterations"]:
        d_correct = d_total = 0.0
        for _ in range(config["steps_per_iteration"]):
            x = real_t[torch.randint(0, len(real_t), (batch,), generator=gen)]
            z = torch.randn(batch, g.z_dim, generator=gen)
            fake = g(z)
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
            z = torch.randn(config["eval_samples"], g.z_dim, generator=torch.Generator().manual_seed(12345))
            feats = classifier.features(g(z))
            probs = torch.softmax(classifier.head(feats), 1).numpy()
        g.train()
        feats = feats.numpy()
        metrics = {
            "fid": frechet_distance(real_mu, real_sigma, feats.mean(0), np.cov(feats, rowvar=False)),
            "inception_score": inception_score(probs),
            "diversity": spread(feats) / real_spread,
            "d_accuracy": d_correct / d_total,
            "loss_d": float(loss_d),
            "loss_g": float(loss_g),
            "step": step,
            "trial_id": tune.get_context().get_trial_id(),
            **restored,
        }
        with tempfile.TemporaryDirectory() as tmp:
            torch.save(
                {
                    "g": g.state_dict(),
                    "d": d.state_dict(),
                    "opt_g": opt_g.state_dict(),
                    "opt_d": opt_d.state_dict(),
                    "step": step,
                    "iteration": iteration,
                },
                Path(tmp, STATE_FILE),
            )
            Path(tmp, META_FILE).write_text(
                json.dumps(
                    {
                        "trial_id": metrics["trial_id"],
                        "g_hash": weights_hash(g),
                        "d_hash": weights_hash(d),
                        "config": _plain(config),
                    }
                )
            )
            tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(tmp))


def _plain(config: dict) -> dict:
    return {k: v for k, v in config.items() if isinstance(v, (int, float, str, bool)) or v is None}


def load_generator(ckpt_dir: str, config: dict) -> Generator:
    g = Generator(int(config["z_dim"]), int(config["width"]))
    g.load_state_dict(torch.load(Path(ckpt_dir, STATE_FILE), weights_only=True)["g"])
    return g.eval()
