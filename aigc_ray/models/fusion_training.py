"""Training the fusion classifier, as plain torch: the model and optimizer a config builds, one
iteration of seeded training steps (optionally mixing in generated samples), prediction and the
classification metrics. Tune's trial (``tune.fusion_trainable``), bagged and boosted ensemble
members and the feedback fine-tune all train through these functions.

A config is a plain dict (``fusion_config`` makes the default one from the spec); the keys read
here: seed, operator, dim, max_text_tokens, text_encoder, image_lr, text_lr, head_lr,
freeze_text_iterations, batch_size, steps_per_iteration, augment_ratio.

With ``augment_ratio`` > 0 each training batch also holds generated samples from a synthetic pool
(``models.augment``), about ratio/(1 + ratio) of its rows; validation uses real data only. At
ratio 0 training is exactly the plain real-data training, draw for draw."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..data.captions import caption_tokenizer
from ..data.digits import NUM_CLASSES
from ..data.info import DIGITS, DatasetInfo
from ..spec import ExperimentSpec
from .device import module_device, on
from .fusion import FusionClassifier

STATE_FILE = "fusion_state.pt"  # a trial checkpoint: model and optimizer state, step, iteration
FIELDS = ("image", "input_ids", "attention_mask", "label")


def fusion_config(spec: ExperimentSpec, vocab_size: int, tokenizer_uri: str, info: DatasetInfo = DIGITS) -> dict:
    """A trial's starting config: the fusion section's model and training settings, the sweep's
    budget and seed, the vocabulary and the tokenizer a server must encode captions with, and the
    data's image shape and classes."""
    return {
        **spec.fusion.trial_config(),
        "vocab_size": vocab_size,
        "tokenizer": caption_tokenizer(spec, tokenizer_uri),
        **shape_config(info),
    }


def shape_config(info: DatasetInfo) -> dict:
    """The model-config keys that size a fusion classifier for the data."""
    return {"num_classes": info.num_classes, "channels": info.channels, "image_side": info.side, "image_encoder": 2}


def build_model(config: dict, vocab_size: int) -> FusionClassifier:
    torch.manual_seed(config["seed"])
    return FusionClassifier(
        vocab_size,
        operator=config["operator"],
        dim=int(config["dim"]),
        num_classes=int(config.get("num_classes", NUM_CLASSES)),  # configs from before: the digits
        max_len=int(config["max_text_tokens"]),
        text_encoder=config["text_encoder"],
        channels=int(config.get("channels", 1)),
        image_side=int(config.get("image_side", 8)),
        image_encoder=int(config.get("image_encoder", 1)),  # configs from before: version 1
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
    """Class probabilities (N, classes) for arrays with image, input_ids, attention_mask."""
    model.eval()
    device = module_device(model)
    out = []
    with torch.no_grad():
        for i in range(0, len(arrays["label"]), batch):
            inputs = (torch.from_numpy(arrays[k][i : i + batch]) for k in ("image", "input_ids", "attention_mask"))
            logits = model(*on(device, *inputs))
            out.append(torch.softmax(logits, dim=1).cpu().numpy())
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
        return {k: x[k][idx] for k in (*FIELDS, "weight") if k in x}, 0
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

    ``x`` may hold a "weight" per row (boosting): the loss is then the weighted mean over the batch.
    ``synthetic``: the generated pool (same keys as ``x``); with ``config["augment_ratio"]`` > 0
    batches mix it in (``draw_batch``). Without a pool training uses real rows only, whatever the
    ratio (e.g. bagged ensemble members trained from a sweep's best config)."""
    set_text_frozen(model, iteration < config["freeze_text_iterations"])
    model.train()
    gen = torch.Generator().manual_seed(config["seed"] * 1000 + iteration)
    batch = int(config["batch_size"])
    ratio = float(config.get("augment_ratio") or 0.0)
    device = module_device(model)  # batches drawn on the CPU from ``gen``, then moved
    epsilon = float(config.get("adversarial_epsilon") or 0.0)
    for _ in range(config["steps_per_iteration"]):
        b, _ = draw_batch(x, synthetic, batch, ratio, gen)
        image, ids, mask, label = on(device, b["image"], b["input_ids"], b["attention_mask"], b["label"])
        if epsilon > 0:
            image = adversarial_batch(model, image, ids, mask, label, config, gen)
        logits = model(image, ids, mask)
        if "weight" in b:  # per-row weights (boosting's weighted loss): a weighted mean of the losses
            per_row = nn.functional.cross_entropy(logits, label, reduction="none")
            loss = (per_row * b["weight"].to(per_row)).sum() / b["weight"].sum().clamp_min(1e-12).to(per_row)
        else:
            loss = nn.functional.cross_entropy(logits, label)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return loss.item()


def adversarial_batch(model, image, ids, mask, label, config: dict, gen: torch.Generator) -> torch.Tensor:
    """Adversarial training's batch (Madry et al.): the first ``adversarial_fraction`` of the rows'
    images replaced by PGD examples against the model as it is now, ``adversarial_steps`` steps
    from a random start in the L∞ ball of ``adversarial_epsilon`` (one step: FGSM with a random
    start), the caption as given. The attack runs in eval mode (no dropout), then training resumes."""
    from .robustness import pgd

    n = max(1, round(float(config.get("adversarial_fraction", 0.5)) * len(image)))
    eps, steps = float(config["adversarial_epsilon"]), int(config.get("adversarial_steps", 1))
    model.eval()
    head_ids, head_mask = ids[:n], mask[:n]
    seed = int(torch.randint(0, 2**31 - 1, (), generator=gen))  # the batch's own, from the trial's stream
    adv = pgd(
        lambda z: model(z, head_ids, head_mask),
        image[:n],
        label[:n],
        eps,
        steps,
        1.25 * eps if steps == 1 else None,
        1,
        seed,
    )
    model.train()
    return torch.cat([adv, image[n:]])


def as_tensors(arrays: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
    return {k: torch.from_numpy(np.array(v)) for k, v in arrays.items()}  # object-store arrays are read-only


def load_fusion(ckpt_dir: str, config: dict, vocab_size: int) -> FusionClassifier:
    model = build_model(config, vocab_size)
    model.load_state_dict(torch.load(Path(ckpt_dir, STATE_FILE), map_location="cpu", weights_only=True)["model"])
    return model.eval()
