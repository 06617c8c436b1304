"""The video GAN trial: trains G and D on the moving-digit clips, scores generated clips (frame
Fréchet distance, temporal consistency, motion), and checkpoints both networks and both
optimizers as one unit, so a PBT exploit always copies a matching (G, D) pair from one donor."""

from __future__ import annotations

import numpy as np
import torch

from ..models.classifier import ImageClassifier
from ..models.device import module_device
from ..models.gan import EVAL_SEED
from ..models.precision import autocast
from ..models.video_gan import build_video_gan, from_video_space, sample_clips, video_train_step
from ..models.video_metrics import clip_metrics
from .gan_pair import PairTrial
from .trial import run_trial

STATE_FILE = "video_gan_state.pt"
META_FILE = "video_gan_meta.json"


class VideoTrial(PairTrial):
    state_file, meta_file = STATE_FILE, META_FILE

    def __init__(self, config: dict, real: torch.Tensor, classifier: ImageClassifier, real_stats: dict):
        super().__init__(config, *build_video_gan(config))
        self.real, self.classifier, self.real_stats = real, classifier, real_stats
        self.gen = None

    def iterate(self, iteration: int) -> tuple[dict, int]:
        config, g = self.config, self.g
        if self.gen is None:  # one stream of draws from here on, seeded by where the trial (re)starts
            self.gen = torch.Generator().manual_seed(config["seed"] * 1000 + iteration)
        batch = int(config["batch_size"])
        d_correct = d_total = 0.0
        with autocast(config.get("precision", "fp32"), module_device(g)):
            for _ in range(config["steps_per_iteration"]):
                out = video_train_step(g, self.d, self.opt_g, self.opt_d, self.real, batch, self.gen)
                d_correct += float((out["real_logits"] > 0).sum() + (out["fake_logits"] < 0).sum())
                d_total += 2 * batch
        clips = from_video_space(sample_clips(g, int(config["eval_samples"]), EVAL_SEED))  # same noise each time
        real = self.real_stats
        scores = clip_metrics(self.classifier, (real["mu"], real["sigma"]), clips)
        metrics = {
            **scores,
            "temporal_consistency_real": real["consistency"],
            "temporal_ratio": scores["temporal_consistency"] / real["consistency"]
            if real["consistency"]
            else float("nan"),
            "motion_real": real["motion"],
            "d_accuracy": d_correct / d_total,
            "loss_d": float(out["loss_d"]),
            "loss_g": float(out["loss_g"]),
        }
        return metrics, config["steps_per_iteration"]


def video_trainable(
    config: dict,
    real: np.ndarray,
    classifier: ImageClassifier,
    real_mu: np.ndarray,
    real_sigma: np.ndarray,
    real_consistency: float,
    real_motion: float,
) -> None:
    """Tune function trainable. ``real``: training clips in video space (N, 1, T, H, W);
    ``real_mu``/``real_sigma``: their frames' classifier-feature statistics."""
    torch.set_num_threads(1)
    classifier.eval()
    real_t = torch.from_numpy(np.array(real))  # the object store's arrays are read-only
    stats = {"mu": real_mu, "sigma": real_sigma, "consistency": real_consistency, "motion": real_motion}
    run_trial(config, VideoTrial(config, real_t, classifier, stats))
