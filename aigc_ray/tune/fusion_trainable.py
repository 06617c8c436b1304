"""The fusion trial: image + caption classifier with one learning rate per part (image encoder,
text encoder, fusion head) and a freeze schedule for the text encoder, scored every iteration by
accuracy and macro-F1 on the validation split. The training itself is ``models.fusion_training``."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from ..models.device import module_device
from ..models.fusion_training import (
    FIELDS,
    STATE_FILE,
    apply_learning_rates,
    as_tensors,
    build_model,
    build_optimizer,
    classification_metrics,
    predict,
    train_iteration,
)
from ..models.precision import autocast
from ..runtime import worker_device
from .trial import run_trial

META_FILE = "fusion_meta.json"


class FusionTrial:
    def __init__(self, config: dict, train: dict, val: dict, vocab_size: int, synthetic: dict | None):
        self.config, self.val, self.vocab_size = config, val, vocab_size
        self.model = build_model(config, vocab_size).to(worker_device())  # its GPU when given one
        self.optimizer = build_optimizer(self.model, config)
        self.x = as_tensors(train)
        self.pool = as_tensors({k: synthetic[k] for k in FIELDS}) if synthetic is not None else None
        self.best_robust = 0.0  # the best robust accuracy so far (a collapse below it stops the trial)

    def restore(self, folder: str, trial_id: str) -> tuple[int, int, dict]:
        state = torch.load(
            Path(folder, STATE_FILE), map_location="cpu", weights_only=True
        )  # our own file, tensors only
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        apply_learning_rates(self.optimizer, self.config)
        return int(state["step"]), int(state["iteration"]), {}

    def iterate(self, iteration: int) -> tuple[dict, int]:
        config = self.config
        ratio = float(config.get("augment_ratio") or 0.0)
        if ratio > 0 and self.pool is None:
            raise ValueError(f"augment_ratio {ratio:g} needs the synthetic pool from the driver (fusion_sweep)")
        with autocast(config.get("precision", "fp32"), module_device(self.model)):
            train_loss = train_iteration(self.model, self.optimizer, self.x, config, iteration, self.pool)
        scores = classification_metrics(predict(self.model, self.val), self.val["label"])
        metrics = {
            "accuracy": scores["accuracy"],
            "macro_f1": scores["macro_f1"],
            "val_loss": scores["loss"],
            "train_loss": train_loss,
            "augment_ratio": ratio,
            "adversarial_epsilon": float(config.get("adversarial_epsilon") or 0.0),
            "text_frozen": iteration + 1 <= config["freeze_text_iterations"],
        }
        if float(config.get("robust_epsilon") or 0.0) > 0:
            metrics |= self._robustness(iteration)
        return metrics, config["steps_per_iteration"]

    def _robustness(self, iteration: int) -> dict:
        """robust_accuracy: 10-step PGD at ``robust_epsilon`` on up to 256 validation rows (their
        captions as given). Adversarial training can overfit catastrophically (Wong et al., 2020:
        PGD accuracy collapses within an iteration while FGSM accuracy soars): a trial whose
        robust accuracy falls more than 5 points below its best is stopped there."""
        from ..models.robustness import accuracy_under_attack

        rows = slice(0, min(256, len(self.val["label"])))
        model = self.model.eval()
        device = next(model.parameters()).device
        ids, mask = (torch.from_numpy(self.val[k][rows]).to(device) for k in ("input_ids", "attention_mask"))
        eps = float(self.config["robust_epsilon"])

        def logits_for(batch: slice):
            return lambda x: model(x.to(device), ids[batch], mask[batch]).cpu()

        robust = accuracy_under_attack(
            logits_for, self.val["image"][rows], self.val["label"][rows], [eps], "pgd", steps=10, seed=iteration
        )[eps]
        self.best_robust = max(self.best_robust, robust)
        collapsed = float(self.config.get("adversarial_epsilon") or 0.0) > 0 and robust < self.best_robust - 0.05
        return {"robust_accuracy": robust, "catastrophic_overfitting": collapsed, "stop_trial": collapsed}

    def save(self, folder: str, step: int, iteration: int, metrics: dict) -> None:
        state = {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "step": step,
            "iteration": iteration,
        }
        torch.save(state, Path(folder, STATE_FILE))
        Path(folder, META_FILE).write_text(json.dumps({"trial_id": metrics["trial_id"], "vocab_size": self.vocab_size}))


def fusion_trainable(config: dict, train: dict, val: dict, vocab_size: int, synthetic: dict | None = None) -> None:
    """Tune function trainable. ``train``/``val``: image (N,1,8,8), input_ids, attention_mask, label.
    ``synthetic``: the generated pool (same keys), needed when ``augment_ratio`` > 0; the ratio is
    read from the config every iteration, so a PBT explore may change it."""
    torch.set_num_threads(1)
    run_trial(config, FusionTrial(config, train, val, vocab_size, synthetic))
