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

from pathlib import Path

import numpy as np
import torch

from ..models.classifier import ImageClassifier
from ..models.device import module_device
from ..models.gan_training import TrainData, build_gan, class_spread, eval_images, spread, train_step
from ..models.generators import build_generator, is_conditional
from ..models.metrics import class_accuracy, frechet_distance, inception_score
from ..models.precision import autocast
from .gan_pair import PairTrial
from .trial import run_trial

STATE_FILE = "gan_state.pt"
META_FILE = "gan_meta.json"


class GanTrial(PairTrial):
    state_file, meta_file = STATE_FILE, META_FILE

    def __init__(self, config: dict, data: TrainData, classifier: ImageClassifier, real_stats: dict, **where):
        super().__init__(config, *build_gan(config))
        self.data, self.classifier, self.real = data, classifier, real_stats
        self.prompt_embeddings = where.get("prompt_embeddings") if data.cond is not None else None
        self.events_uri, self.s3 = where.get("events_uri"), where.get("s3")
        self.gen = None
        self.real_class_spread = None
        if data.cond is not None:  # the real images' spread within each digit, for cond_diversity
            with torch.no_grad():
                self.real_class_spread = class_spread(classifier.features(data.real).numpy(), data.label.numpy())

    def exploited(self, trial_id: str, donor: str, iteration: int, pair_matches: bool) -> None:
        if not self.events_uri:
            return
        from ..storage import Storage, join

        event = {"trial_id": trial_id, "donor": donor, "at_iteration": iteration, "pair_matches": pair_matches}
        Storage(self.s3).write_json(join(self.events_uri, f"{trial_id}-{iteration}-{donor}.json"), event)

    def iterate(self, iteration: int) -> tuple[dict, int]:
        config = self.config
        if self.gen is None:  # one stream of draws from here on, seeded by where the trial (re)starts
            self.gen = torch.Generator().manual_seed(config["seed"] * 1000 + iteration)
        d_correct = d_total = 0.0
        with autocast(config.get("precision", "fp32"), module_device(self.g)):
            for _ in range(config["steps_per_iteration"]):
                out = train_step(self.g, self.d, self.opt_g, self.opt_d, self.data, config, self.gen)
                d_correct += float((out["real_logits"] > 0).sum() + (out["fake_logits"] < 0).sum())
                d_total += 2 * len(out["real_logits"])
        images, digits = eval_images(self.g, config["eval_samples"], self.prompt_embeddings)
        with torch.no_grad():
            feats = self.classifier.features(images)
            probs = torch.softmax(self.classifier.head(feats), 1).numpy()
        feats = feats.numpy()
        metrics = {
            "fid": frechet_distance(self.real["mu"], self.real["sigma"], feats.mean(0), np.cov(feats, rowvar=False)),
            "inception_score": inception_score(probs),
            "diversity": spread(feats) / self.real["spread"],
            "d_accuracy": d_correct / d_total,
            "loss_d": float(out["loss_d"]),
            "loss_g": float(out["loss_g"]),
        }
        if self.data.cond is not None:
            metrics["cond_accuracy"] = class_accuracy(probs, digits)
            metrics["cond_diversity"] = class_spread(feats, digits) / self.real_class_spread
        return metrics, config["steps_per_iteration"]


def gan_trainable(
    config: dict,
    real: np.ndarray,
    classifier: ImageClassifier,
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
    ``prompt_embeddings``: (classes, 384), the embeddings of "a handwritten zero" ... "nine".
    ``events_uri``: where a PBT exploit is recorded (for the sweep's ``exploits.json``)."""
    torch.set_num_threads(1)
    if is_conditional(config) and (captions is None or prompt_embeddings is None):
        raise ValueError("a conditional GAN trial needs the caption and digit-prompt embeddings from the driver")
    classifier.eval()
    data = TrainData.make(real, captions if is_conditional(config) else None, int(config.get("num_classes", 10)))
    real_stats = {"mu": real_mu, "sigma": real_sigma, "spread": real_spread}
    trial = GanTrial(
        config, data, classifier, real_stats, events_uri=events_uri, s3=s3, prompt_embeddings=prompt_embeddings
    )
    run_trial(config, trial)


def load_generator(ckpt_dir: str, config: dict):
    """The generator of a trial checkpoint folder."""
    g = build_generator(config)
    g.load_state_dict(torch.load(Path(ckpt_dir, STATE_FILE), map_location="cpu", weights_only=True)["g"])
    return g.eval()
