"""The fusion trial: image + caption classifier with one learning rate per part (image encoder,
text encoder, fusion head) and a freeze schedule for the text encoder, scored every iteration by
accuracy and macro-F1 on the validation split.

With ``augment_ratio`` > 0 each training batch also holds generated samples from a synthetic pool
(``tune.augment``), about ratio/(1 + ratio) of its rows; validation uses real data only. At ratio
0 training is exactly the plain real-data training, draw for draw."""

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
FIELDS = ("image", "input_ids", "attention_mask", "label")


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


def synthetic_count(batch: int, ratio: float, gen: torch.Generator) -> int:
    """Synthetic rows in a batch: batch × ratio / (1 + ratio), rounded up or down at random in
    proportion (so the expected share is exactly ratio / (1 + ratio)), leaving at least one real row."""
    want = batch * ratio / (1 + ratio)
    n = int(want)
    if float(torch.rand((), generator=gen)) < want - n:
        n += 1
    return min(n, batch - 1)


def draw_batch(
    x: dict[str, torch.Tensor], synthetic: dict[str, torch.Tensor] | None, batch: int, ratio: float, gen
) -> tuple[dict[str, torch.Tensor], int]:
    """One training batch drawn with ``gen`` (with replacement), and how many of its rows are synthetic.

    Without augmentation (``ratio`` 0 or no pool): ``batch`` real rows, the same single draw as
    plain training. With it: ``synthetic_count`` rows from the pool after the real ones; caption
    ids of the two parts are padded (mask 0, ignored by both text encoders) to a common width."""
    if ratio <= 0 or synthetic is None:
        idx = torch.randint(0, len(x["label"]), (batch,), generator=gen)
        return {k: x[k][idx] for k in FIELDS}, 0
    n_syn = synthetic_count(batch, ratio, gen)
    real_idx = torch.randint(0, len(x["label"]), (batch - n_syn,), generator=gen)
    syn_idx = torch.randint(0, len(synthetic["label"]), (n_syn,), generator=gen)
    real = {k: x[k][real_idx] for k in FIELDS}
    syn = {k: synthetic[k][syn_idx] for k in FIELDS}
    width = max(real["input_ids"].shape[1], syn["input_ids"].shape[1])
    for part in (real, syn):
        for k in ("input_ids", "attention_mask"):
            part[k] = nn.functional.pad(part[k], (0, width - part[k].shape[1]))
    return {k: torch.cat([real[k], syn[k]]) for k in FIELDS}, n_syn


def train_iteration(
    model: FusionClassifier,
    optimizer,
    x: dict[str, torch.Tensor],
    config: dict,
    iteration: int,
    synthetic: dict[str, torch.Tensor] | None = None,
) -> float:
    """One iteration (``steps_per_iteration`` Adam steps on seeded random batches); the last loss.
    The batches depend only on (seed, iteration), so a restored trial sees the same ones.

    ``synthetic``: the generated pool (same keys as ``x``); with ``config["augment_ratio"]`` > 0
    batches mix it in (``draw_batch``). Without a pool training uses real rows only, whatever the
    ratio (e.g. bagged ensemble members trained from a sweep's best config)."""
    set_text_frozen(model, iteration < config["freeze_text_iterations"])
    model.train()
    gen = torch.Generator().manual_seed(config["seed"] * 1000 + iteration)
    batch = int(config["batch_size"])
    ratio = float(config.get("augment_ratio") or 0.0)
    for _ in range(config["steps_per_iteration"]):
        b, _ = draw_batch(x, synthetic, batch, ratio, gen)
        logits = model(b["image"], b["input_ids"], b["attention_mask"])
        loss = nn.functional.cross_entropy(logits, b["label"])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return loss.item()


def as_tensors(arrays: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
    return {k: torch.from_numpy(np.array(v)) for k, v in arrays.items()}  # object-store arrays are read-only


def fusion_trainable(config: dict, train: dict, val: dict, vocab_size: int, synthetic: dict | None = None) -> None:
    """Tune function trainable. ``train``/``val``: image (N,1,8,8), input_ids, attention_mask, label.
    ``synthetic``: the generated pool (same keys), needed when ``augment_ratio`` > 0; the ratio is
    read from the config every iteration, so a PBT explore may change it."""
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
    pool = as_tensors({k: synthetic[k] for k in FIELDS}) if synthetic is not None else None
    while iteration < config["max_iterations"]:
        ratio = float(config.get("augment_ratio") or 0.0)
        if ratio > 0 and pool is None:
            raise ValueError(f"augment_ratio {ratio:g} needs the synthetic pool from the driver (fusion_sweep)")
        train_loss = train_iteration(model, optimizer, x, config, iteration, pool)
        step += config["steps_per_iteration"]
        iteration += 1
        scores = classification_metrics(predict(model, val), val["label"])
        metrics = {
            "accuracy": scores["accuracy"],
            "macro_f1": scores["macro_f1"],
            "val_loss": scores["loss"],
            "train_loss": train_loss,
            "augment_ratio": ratio,
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
