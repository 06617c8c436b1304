"""The fusion trial: image + caption classifier with one learning rate per part (image encoder,
text encoder, fusion head) and a freeze schedule for the text encoder, scored every iteration by
accuracy and macro-F1 on the validation split."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..models.fusion import FusionClassifier

STATE_FILE = "fusion_state.pt"
META_FILE = "fusion_meta.json"
NUM_CLASSES = 10


def build_model(config: dict, vocab_size: int) -> FusionClassifier:
    torch.manual_seed(config["seed"])
    return FusionClassifier(
        vocab_size,
        operator=config["operator"],
        dim=int(config["dim"]),
        num_classes=NUM_CLASSES,
        max_len=int(config["max_len"]),
        text_encoder=config["text_encoder"],
    )


def build_optimizer(model: FusionClassifier, config: dict) -> torch.optim.Optimizer:
    """Adam with a parameter group per part, so each part's learning rate is its own dimension."""
    return torch.optim.Adam(
        [
            {"params": model.image.parameters(), "lr": config["image_lr"], "name": "image"},
            {"params": model.text.parameters(), "lr": config["text_lr"], "name": "text"},
            {"params": [*model.fusion.parameters(), *model.head.parameters()], "lr": config["head_lr"], "name": "head"},
        ]
    )


def apply_learning_rates(optimizer: torch.optim.Optimizer, config: dict) -> None:
    """After a PBT exploit the config holds explored learning rates; a restored optimizer has the donor's."""
    for group in optimizer.param_groups:
        group["lr"] = config[f"{group['name']}_lr"]


def set_text_frozen(model: FusionClassifier, frozen: bool) -> None:
    # Frozen parameters get no gradient, so Adam neither moves them nor advances their state.
    for p in model.text.parameters():
        p.requires_grad_(not frozen)


def predict(model: FusionClassifier, arrays: dict[str, np.ndarray], batch: int = 256) -> np.ndarray:
    """Class probabilities (N, 10) for arrays with image, input_ids, attention_mask."""
    model.eval()
    out = []
    with torch.no_grad():
        for i in range(0, len(arrays["label"]), batch):
            logits = model(
                *(torch.from_numpy(arrays[k][i : i + batch]) for k in ("image", "input_ids", "attention_mask"))
            )
            out.append(torch.softmax(logits, dim=1).numpy())
    return np.concatenate(out)


def classification_metrics(probs: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    from sklearn.metrics import f1_score

    pred = probs.argmax(1)
    return {
        "accuracy": float((pred == labels).mean()),
        "macro_f1": float(f1_score(labels, pred, average="macro", zero_division=0)),  # classes seen in either
        "loss": float(-np.log(np.clip(probs[np.arange(len(labels)), labels], 1e-12, None)).mean()),
    }


def train_iteration(
    model: FusionClassifier, optimizer, x: dict[str, torch.Tensor], config: dict, iteration: int
) -> float:
    """One iteration (``steps_per_iteration`` Adam steps on seeded random batches); the last loss.
    The batches depend only on (seed, iteration), so a restored trial sees the same ones."""
    set_text_frozen(model, iteration < config["freeze_text_iterations"])
    model.train()
    gen = torch.Generator().manual_seed(config["seed"] * 1000 + iteration)
    batch = int(config["batch_size"])
    for _ in range(config["steps_per_iteration"]):
        idx = torch.randint(0, len(x["label"]), (batch,), generator=gen)
        logits = model(x["image"][idx], x["input_ids"][idx], x["attention_mask"][idx])
        loss = nn.functional.cross_entropy(logits, x["label"][idx])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return loss.item()


def as_tensors(arrays: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
    return {k: torch.from_numpy(np.array(v)) for k, v in arrays.items()}  # object-store arrays are read-only


def fusion_trainable(config: dict, train: dict, val: dict, vocab_size: int) -> None:
    """Tune function trainable. ``train``/``val``: image (N,1,8,8), input_ids, attention_mask, label."""
    from ray import tune

    torch.set_num_threads(1)
    model = build_model(config, vocab_size)
    optimizer = build_optimizer(model, config)
    step, iteration = 0, 0
    checkpoint = tune.get_checkpoint()
    if checkpoint:
        with checkpoint.as_directory() as ckpt:
            state = torch.load(Path(ckpt, STATE_FILE), weights_only=True)  # our own file, tensors only
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        apply_learning_rates(optimizer, config)
        step, iteration = int(state["step"]), int(state["iteration"])
    x = as_tensors(train)
    while iteration < config["max_iterations"]:
        train_loss = train_iteration(model, optimizer, x, config, iteration)
        step += config["steps_per_iteration"]
        iteration += 1
        scores = classification_metrics(predict(model, val), val["label"])
        metrics = {
            "accuracy": scores["accuracy"],
            "macro_f1": scores["macro_f1"],
            "val_loss": scores["loss"],
            "train_loss": train_loss,
            "text_frozen": iteration <= config["freeze_text_iterations"],
            "step": step,
            "trial_id": tune.get_context().get_trial_id(),
        }
        with tempfile.TemporaryDirectory() as tmp:
            torch.save(
                {
                    "model": model.state_dict(),
                    "optimizer": optimizer.state_dict(),
                    "step": step,
                    "iteration": iteration,
                },
                Path(tmp, STATE_FILE),
            )
            Path(tmp, META_FILE).write_text(json.dumps({"trial_id": metrics["trial_id"], "vocab_size": vocab_size}))
            tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(tmp))


def load_fusion(ckpt_dir: str, config: dict, vocab_size: int) -> FusionClassifier:
    model = build_model(config, vocab_size)
    model.load_state_dict(torch.load(Path(ckpt_dir, STATE_FILE), weights_only=True)["model"])
    return model.eval()
