"""Fusion sweeps on real Ray Tune (2 CPUs, tiny models): Optuna + ASHA from the spec, on local
disk and on the S3 server; the per-part learning rates and the text freeze schedule."""

from __future__ import annotations

import csv
import io
import json
import re

import numpy as np
import pytest
import torch

from aigc_ray.data.captions import encode_captions, fusion_arrays
from aigc_ray.models.fusion_training import (
    apply_learning_rates,
    build_model,
    build_optimizer,
    classification_metrics,
    predict,
    set_text_frozen,
)
from aigc_ray.spec import load_spec
from aigc_ray.tune.fusion_sweep import run_fusion_sweep

TINY = [
    "data.rows_per_shard=300",
    "fusion.dim=16",
    "fusion.batch_size=32",
    "fusion.sweep.max_iterations=3",
    "fusion.sweep.steps_per_iteration=10",
    "fusion.sweep.max_concurrent_trials=2",
]


def fusion_spec(base, name, *overrides):
    return load_spec(None, [f"storage.root={base.storage.root}", f"name={name}", *TINY, *overrides])


@pytest.mark.slow
@pytest.mark.timeout(400)
def test_optuna_asha_fusion_sweep_publishes_a_model_that_reproduces_its_score(ray_local, local_data, tmp_path):
    from safetensors.torch import load

    base, storage = local_data
    spec = fusion_spec(
        base,
        "fusion-optuna",
        "fusion.sweep.search_alg=optuna",
        "fusion.sweep.scheduler=asha",
        "fusion.sweep.num_samples=4",
        "fusion.sweep.grace_period=1",
        'fusion.sweep.search_space={"operator": {"type": "choice", "values": ["weighted_sum", "gated"]},'
        ' "text_lr": {"type": "loguniform", "low": 0.001, "high": 0.01},'
        ' "freeze_text_iterations": {"type": "int", "low": 0, "high": 2}}',
    )
    result = run_fusion_sweep(spec, storage, log=lambda *_: None)
    assert result.trials == 4 and len(result.top_k) == 3
    accs = [t["accuracy"] for t in result.top_k]
    assert accs == sorted(accs, reverse=True)
    text = storage.read_bytes(result.uri + "/results.csv").decode()
    assert text.startswith("rank,trial_id,accuracy")
    configs = list(csv.DictReader(io.StringIO(text)))  # trial folder names hold commas: a real CSV reader
    assert len(configs) == 4
    for c in configs:  # Optuna sampled inside the YAML bounds
        assert c["operator"] in ("weighted_sum", "gated")
        assert 0.001 <= float(c["text_lr"]) <= 0.01 and int(c["freeze_text_iterations"]) in (0, 1, 2)
    assert len({c["text_lr"] for c in configs}) == 4
    tune_dir = result.uri.rsplit("/", 1)[0] + "/tune/sweep"
    assert any("searcher-state" in f for f in storage.list_files(tune_dir)), "Optuna's state was not saved"

    # The exported best model, loaded from safetensors alone, scores what the sweep reported.
    config = json.loads(storage.read_bytes(result.uri + "/best/config.json"))
    model = build_model(config, config["vocab_size"])
    model.load_state_dict(load(storage.read_bytes(result.uri + "/best/model.safetensors")))
    val, _ = fusion_arrays(spec, storage, "val", config["tokenizer"], config["max_text_tokens"])
    assert classification_metrics(predict(model, val), val["label"])["accuracy"] == pytest.approx(
        result.best["accuracy"]
    )
    metrics = json.loads(storage.read_bytes(result.uri + "/best/metrics.json"))
    test, _ = fusion_arrays(spec, storage, "test", config["tokenizer"], config["max_text_tokens"])
    scores = classification_metrics(predict(model, test), test["label"])  # scored once on the held-out split
    assert (metrics["test_accuracy"], metrics["test_macro_f1"]) == pytest.approx(
        (scores["accuracy"], scores["macro_f1"])
    )
    assert storage.read_bytes(result.uri + "/confusion.png")[:4] == b"\x89PNG"
    assert storage.read_bytes(result.uri + "/curves.png")[:4] == b"\x89PNG"
    # ASHA's compute: each trial reports its running step count; the total is what was trained.
    assert result.total_steps == sum(int(c["iterations"]) for c in configs) * 10  # every trial's own count


@pytest.mark.slow
@pytest.mark.timeout(400)
def test_sweeps_run_against_s3(ray_local, s3_data):
    base, storage = s3_data
    spec = fusion_spec(base, "fusion-s3", "fusion.sweep.scheduler=fifo", "fusion.sweep.num_samples=2")
    result = run_fusion_sweep(spec, storage, log=lambda *_: None)
    assert result.uri.startswith("s3://") and result.trials == 2
    for t in result.top_k:  # the checkpoints the ensemble will load are on S3, where Tune put them
        assert t["checkpoint"].startswith("s3://") and storage.exists(t["checkpoint"] + "/fusion_state.pt")
    # Every checkpoint is kept while the sweep runs (no experiment-state upload per num_to_keep
    # checkpoints) and each trial is pruned to its best two once it ends: three iterations, two kept.
    tune_dir = result.uri.rsplit("/", 1)[0] + "/tune/sweep"
    kept: dict[str, set[str]] = {}
    for f in storage.list_files(tune_dir):
        match = re.search(r"/([^/]+_\d{5}[^/]*)/(checkpoint_\d+)/", f)
        if match:
            kept.setdefault(match.group(1), set()).add(match.group(2))
    assert len(kept) == 2 and all(len(c) == 2 for c in kept.values()), kept
    assert {t["checkpoint"].rsplit("/", 1)[-1] for t in result.top_k} <= set().union(*kept.values())
    assert storage.exists(result.uri + "/best/model.safetensors")
    assert storage.exists(result.uri + "/_manifest.json")


def test_per_part_learning_rates_and_the_text_freeze_schedule():
    config = {
        "seed": 0,
        "operator": "concat",
        "dim": 16,
        "max_text_tokens": 8,
        "text_encoder": "tiny",
        "image_lr": 0.01,
        "text_lr": 0.002,
        "head_lr": 0.005,
    }
    model = build_model(config, vocab_size=50)
    opt = build_optimizer(model, config)
    assert {g["name"]: g["lr"] for g in opt.param_groups} == {"image": 0.01, "text": 0.002, "head": 0.005}
    apply_learning_rates(opt, {**config, "text_lr": 0.004})  # what a PBT explore does
    assert {g["name"]: g["lr"] for g in opt.param_groups}["text"] == 0.004

    image, ids, mask = torch.rand(8, 1, 8, 8), torch.randint(5, 50, (8, 6)), torch.ones(8, 6, dtype=torch.long)
    labels = torch.arange(8)

    def step():
        loss = torch.nn.functional.cross_entropy(model(image, ids, mask), labels)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    def snapshot(part):
        return [p.detach().clone() for p in part.parameters()]

    text0, image0 = snapshot(model.text), snapshot(model.image)
    set_text_frozen(model, True)
    step()
    assert all(torch.equal(a, b) for a, b in zip(text0, snapshot(model.text), strict=True))  # frozen: untouched
    assert not all(torch.equal(a, b) for a, b in zip(image0, snapshot(model.image), strict=True))
    set_text_frozen(model, False)
    step()
    assert not all(torch.equal(a, b) for a, b in zip(text0, snapshot(model.text), strict=True))


def test_macro_f1_weighs_every_class_equally():
    labels = np.array([0] * 90 + [1] * 10)
    always_zero = np.eye(10)[np.zeros(100, dtype=int)]
    scores = classification_metrics(always_zero, labels)
    assert scores["accuracy"] == pytest.approx(0.9)
    # F1 of class 0 = 2·0.9/(0.9+1) ≈ 0.947, of class 1 = 0: the rare class halves the mean
    assert scores["macro_f1"] == pytest.approx((2 * 0.9 / 1.9) / 2)


def test_minilm_text_encoder_reads_minilm_tokens(local_data):
    _, storage = local_data
    ids, mask, vocab = encode_captions(["a handwritten seven", "zero"], "minilm", storage)
    assert vocab > 30000 and ids.shape == mask.shape and mask[1].sum() < mask[0].sum()
    model = build_model(
        {"seed": 0, "operator": "cross_attention", "dim": 16, "max_text_tokens": 32, "text_encoder": "minilm"}, vocab
    )
    logits = model(torch.rand(2, 1, 8, 8), torch.from_numpy(ids), torch.from_numpy(mask))
    assert logits.shape == (2, 10)
    logits.sum().backward()
    assert model.text.bert.embeddings.word_embeddings.weight.grad.abs().sum() > 0


@pytest.mark.slow
@pytest.mark.timeout(400)
def test_a_sweep_over_adversarial_training_ranks_trials_by_robust_accuracy(ray_local, local_data):
    """adversarial_epsilon is a sweep dimension like any other, and the sweep may rank by the
    robust accuracy every trial reports (10-step PGD at fusion.robust_epsilon)."""
    base, storage = local_data
    spec = fusion_spec(
        base,
        "fusion-adversarial",
        "fusion.sweep.scheduler=fifo",
        "fusion.sweep.num_samples=1",  # one trial per grid value
        "fusion.sweep.metric=robust_accuracy",
        "fusion.robust_epsilon=0.1",
        "fusion.adversarial_steps=1",
        'fusion.sweep.search_space={"adversarial_epsilon": {"type": "grid", "values": [0.0, 0.1]}}',
    )
    result = run_fusion_sweep(spec, storage, log=lambda *_: None)
    assert result.trials == 2 and "robust_accuracy" in result.best
    text = storage.read_bytes(result.uri + "/results.csv").decode()
    assert text.startswith("rank,trial_id,robust_accuracy")
    rows = list(csv.DictReader(io.StringIO(text)))
    assert sorted(float(r["adversarial_epsilon"]) for r in rows) == [0.0, 0.1]
    robust = [float(r["robust_accuracy"]) for r in rows]
    assert robust == sorted(robust, reverse=True) and all(0 <= a <= 1 for a in robust)


def test_a_collapsing_adversarial_trial_is_stopped_and_a_standard_one_is_not():
    """Catastrophic overfitting: robust accuracy more than 5 points below the trial's best stops
    an adversarially trained trial; a standard trial is only measured."""
    from aigc_ray.tune.fusion_trainable import FusionTrial

    rng = np.random.default_rng(0)
    val = {
        "image": rng.random((40, 1, 8, 8), dtype=np.float32),
        "input_ids": rng.integers(1, 30, (40, 5)),
        "attention_mask": np.ones((40, 5), dtype=np.int64),
        "label": rng.integers(0, 10, 40),
    }
    config = load_spec(None, ["fusion.dim=16", "fusion.robust_epsilon=0.1"]).fusion.trial_config()
    config |= {"vocab_size": 30, "num_classes": 10, "channels": 1, "image_side": 8, "image_encoder": 2}
    for epsilon, stops in ((0.1, True), (0.0, False)):
        trial = FusionTrial({**config, "adversarial_epsilon": epsilon}, val, val, 30, None)
        trial.best_robust = 0.99  # as if an earlier iteration had held up
        got = trial._robustness(0)
        assert got["robust_accuracy"] < 0.9 and got["stop_trial"] is stops and got["catastrophic_overfitting"] is stops
