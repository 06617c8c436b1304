"""``aigc sweep fusion``: the image + caption classifier sweep (fusion operator, a learning rate
per part, the text encoder's freeze schedule). Trials are chosen on the validation split; the
best model is also scored once on the held-out test split. Beyond the shared results it writes
``best/model.safetensors`` (with the text tokenizer's location in its config) and
``confusion.png`` (the best model's test-split confusion matrix).

Augmentation (``fusion.augment_ratio`` > 0, or the ratio among the searched dimensions): the
driver loads the text-to-image generator (``models.augment``), makes one synthetic pool for every
trial (its captions as noisy as the data's, ``data.caption_noise``; the images always show their
label's digit) and records the generator's artifact among the sweep's inputs.
``fusion.real_fraction`` trains on a seeded, label-stratified share of the real training split
(validation and test stay whole and real). ``best/metrics.json`` records both, with the best
trial's ratio, and ``augmentation.json`` the details (real rows, pool size, generator)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np

from ..data.build import build_data
from ..data.captions import caption_tokenizer, encode_captions, fusion_arrays
from ..data.info import dataset_info
from ..layout import multimodal_uri, sweep_dir
from ..layout import tokenizer_uri as tokenizer_location
from ..models.augment import load_augmenter, max_augment_ratio, pool_per_class, real_subset, synthetic_pool
from ..models.fusion_training import classification_metrics, fusion_config, load_fusion, predict
from ..spec import ExperimentSpec
from ..spec.sections import FUSION_STRUCTURAL
from ..storage import Storage
from .fusion_trainable import fusion_trainable
from .tuner import SweepResult, publish_sweep, run_tuner


def run_fusion_sweep(
    spec: ExperimentSpec, storage: Storage, resume: bool = False, progress: bool = True, log=print
) -> SweepResult:
    """Run (or, with ``resume``, finish) the fusion sweep and publish its results."""
    from ray import tune

    built = build_data(spec, storage, log=log, say_up_to_date=False)
    tokenizer_uri = tokenizer_location(spec)
    tokenizer, limit = caption_tokenizer(spec, tokenizer_uri), spec.fusion.max_text_tokens
    f, s = spec.fusion, spec.fusion.sweep
    train, vocab = fusion_arrays(spec, storage, "train", tokenizer, limit)
    all_rows = len(train["label"])
    train = real_subset(train, f.real_fraction, s.seed)
    val, _ = fusion_arrays(spec, storage, "val", tokenizer, limit)
    inputs = {multimodal_uri(spec): built.multimodal.fingerprint}
    if spec.fusion.text_encoder == "tiny":
        inputs[tokenizer_uri] = built.tokenizer.fingerprint
    augmentation = {"real_fraction": f.real_fraction, "real_rows": len(train["label"]), "real_rows_all": all_rows}
    params = {"train": train, "val": val, "vocab_size": vocab}
    max_ratio = max_augment_ratio(spec)
    if max_ratio > 0:  # one pool, made here, for every trial and every ratio up to the largest
        augmenter = load_augmenter(spec, storage)
        info = dataset_info(spec, storage)
        per_class = pool_per_class(max_ratio, len(train["label"]), info.num_classes)
        noise = spec.data.caption_noise.model_dump()  # captions as noisy as the real ones
        rows = synthetic_pool(
            augmenter.generator,
            augmenter.config,
            per_class,
            s.seed,
            s.seed,
            **noise,
            classes=info.classes,
            side=info.side,
        )
        ids, mask, _ = encode_captions(list(rows["text"]), tokenizer, storage, limit)
        params["synthetic"] = {"image": rows["image"], "input_ids": ids, "attention_mask": mask, "label": rows["label"]}
        inputs[augmenter.source_uri] = augmenter.fingerprint
        augmentation |= {
            "max_augment_ratio": max_ratio,
            "pool_rows": len(rows["label"]),
            "pool_captions": noise,
            "generator": augmenter.uri,
            "generator_source": augmenter.source_uri,
            "generator_fingerprint": augmenter.fingerprint,
        }
        log(
            f"[sweep] augmentation: {len(rows['label'])} generated samples ({per_class} per class) from "
            f"{augmenter.uri}, for ratios up to {max_ratio:g} over {len(train['label'])} real rows"
        )
    trainable = tune.with_resources(
        tune.with_parameters(fusion_trainable, **params),
        {"cpu": spec.fusion.sweep.cpus_per_trial, "gpu": spec.fusion.sweep.gpus_per_trial},
    )
    grid = run_tuner(
        s,
        trainable,
        fusion_config(spec, vocab, tokenizer_uri, dataset_info(spec, storage)),
        sweep_dir(spec, "fusion"),
        storage,
        structural=FUSION_STRUCTURAL,
        resume=resume,
        progress=progress,
        log=log,
    )

    def write_best(out: Path, best: dict) -> dict:
        from safetensors.torch import save_file

        ckpt = best["checkpoint_ref"].to_directory(str(out / ".ckpt"))
        model = load_fusion(ckpt, best["config"], vocab)
        shutil.rmtree(out / ".ckpt")
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, out / "best" / "model.safetensors")
        test, _ = fusion_arrays(spec, storage, "test", tokenizer, limit)
        probs = predict(model, test)
        scores = classification_metrics(probs, test["label"])
        _confusion_png(probs.argmax(1), test["label"], out / "confusion.png", scores, probs.shape[1])
        ratio = float(best["config"].get("augment_ratio") or 0.0)
        (out / "augmentation.json").write_text(json.dumps({**augmentation, "augment_ratio": ratio}, indent=2))
        return {
            "test_accuracy": scores["accuracy"],
            "test_macro_f1": scores["macro_f1"],
            "real_fraction": float(f.real_fraction),
            "augment_ratio": ratio,  # the best trial's (its last, should PBT have changed it)
        }

    return publish_sweep(spec, storage, "fusion", s, grid, inputs, write_best, log)


def _confusion_png(pred: np.ndarray, labels: np.ndarray, path: Path, scores: dict, classes: int) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    matrix = np.zeros((classes, classes), dtype=int)
    np.add.at(matrix, (labels, pred), 1)
    fig, ax = plt.subplots(figsize=(4.8, 4.2), dpi=100)
    ax.imshow(matrix, cmap="Blues")
    for (r, c), n in np.ndenumerate(matrix):
        if n:
            ax.text(
                c, r, str(n), ha="center", va="center", fontsize=7, color="white" if n > matrix.max() / 2 else "black"
            )
    ax.set_xticks(range(classes))
    ax.set_yticks(range(classes))
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(
        f"best fusion model, test: acc {scores['accuracy']:.3f}, macro-F1 {scores['macro_f1']:.3f}", fontsize=9
    )
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
