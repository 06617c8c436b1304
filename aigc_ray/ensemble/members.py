"""Where an ensemble's fusion classifiers come from: the fusion sweep's top-k checkpoints,
bootstrap-resampled ("bagged") members trained in parallel on Ray, and checkpoints listed in
the spec. Each becomes a ``Member``: weights, config and lineage, in one format."""

from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..layout import sweep_results
from ..manifest import read_manifest
from ..models.fusion_training import STATE_FILE, as_tensors, build_model, build_optimizer, predict, train_iteration
from ..runtime import worker_device
from ..spec import ExperimentSpec, SpecError, spec_hash
from ..storage import Storage, join


@dataclass
class Member:
    name: str
    source: str  # sweep | bagging | listed
    config: dict
    state: dict[str, torch.Tensor]
    lineage: dict = field(default_factory=dict)

    def model(self):
        model = build_model(self.config, int(self.config["vocab_size"]))
        model.load_state_dict(self.state)
        return model.eval()


def load_checkpoint_state(storage: Storage, uri: str) -> tuple[dict, dict | None]:
    """(state dict, config or None) of an exported fusion model folder (model.safetensors +
    config.json) or a fusion-sweep checkpoint (fusion_state.pt; its config is the trial's params.json)."""
    from safetensors.torch import load

    if storage.exists(join(uri, "model.safetensors")):
        state = load(storage.read_bytes(join(uri, "model.safetensors")))
        return state, json.loads(storage.read_bytes(join(uri, "config.json")))
    if storage.exists(join(uri, STATE_FILE)):
        with tempfile.TemporaryDirectory() as tmp:
            local = storage.download(uri, tmp)
            state = torch.load(Path(local, STATE_FILE), map_location="cpu", weights_only=True)["model"]  # tensors only
        params = uri.rstrip("/").rsplit("/", 1)[0] + "/params.json"
        return state, (json.loads(storage.read_bytes(params)) if storage.exists(params) else None)
    raise FileNotFoundError(f"{uri} holds no fusion model: expected model.safetensors + config.json or {STATE_FILE}")


def sweep_members(spec: ExperimentSpec, storage: Storage) -> list[Member]:
    """The fusion sweep's ``ensemble.top_k`` best checkpoints (the sweep must have run)."""
    k = spec.ensemble.top_k
    if not k:
        return []
    results = sweep_results(spec, "fusion")
    manifest = read_manifest(storage, results)
    if manifest is None:
        raise FileNotFoundError(f"no fusion sweep results at {results}: run `aigc sweep fusion` first (or top_k: 0)")
    top = json.loads(storage.read_bytes(join(results, "topk.json")))
    if len(top) < k:
        raise SpecError(
            "ensemble.top_k",
            [
                f"ensemble.top_k = {k}: the fusion sweep at {results} lists only {len(top)} checkpoints (its sweep.top_k)"
            ],
        )
    members = []
    for rank, entry in enumerate(top[:k], 1):
        state, _ = load_checkpoint_state(storage, entry["checkpoint"])
        lineage = {
            "checkpoint": entry["checkpoint"],
            "sweep_trial": entry["trial_id"],
            "sweep_results": results,
            "sweep_fingerprint": manifest.fingerprint,
            "spec_hash": manifest.spec_hash,
            "data": manifest.inputs,
            "code_version": manifest.code_version,
            "validation": {spec.fusion.sweep.metric: entry[spec.fusion.sweep.metric]},
        }
        members.append(Member(f"sweep-{rank}", "sweep", entry["config"], state, lineage))
    return members


def listed_members(spec: ExperimentSpec, storage: Storage) -> list[Member]:
    members = []
    for i, uri in enumerate(spec.ensemble.members, 1):
        state, config = load_checkpoint_state(storage, uri)
        if config is None:
            raise ValueError(f"{uri}: a checkpoint without its trial's params.json; export the model first")
        parent = read_manifest(storage, uri)
        lineage = {"checkpoint": uri, **({"fingerprint": parent.fingerprint} if parent else {})}
        members.append(Member(f"listed-{i}", "listed", config, state, lineage))
    return members


def bagged_members(
    spec: ExperimentSpec, storage: Storage, base_config: dict, train: dict, data_inputs: dict
) -> list[Member]:
    """``ensemble.bagging`` members, each trained on its own bootstrap resample of the training
    split (same size, drawn with replacement), as parallel Ray tasks."""
    import ray

    k = spec.ensemble.bagging
    if not k:
        return []
    config = {**base_config, "max_iterations": spec.ensemble.bagging_iterations}
    sweep = spec.fusion.sweep  # a bagged member costs what a fusion trial costs
    task = ray.remote(num_cpus=sweep.cpus_per_trial, num_gpus=sweep.gpus_per_trial)(_train_bagged)
    train_ref = ray.put(train)
    seeds = [spec.ensemble.seed * 1000 + i for i in range(k)]
    states = ray.get([task.remote(config, train_ref, seed) for seed in seeds])
    h = spec_hash(spec, "data", "fusion", "ensemble")
    return [
        Member(
            f"bagged-{i + 1}",
            "bagging",
            {**config, "seed": seed},
            {name: torch.from_numpy(np.array(t)) for name, t in state.items()},  # object-store arrays are read-only
            {"bootstrap_seed": seed, "spec_hash": h, "data": data_inputs},
        )
        for i, (seed, state) in enumerate(zip(seeds, states, strict=True))
    ]


def _train_bagged(config: dict, train: dict, seed: int) -> dict[str, np.ndarray]:
    rows = np.random.default_rng(seed).integers(0, len(train["label"]), len(train["label"]))
    return _state(_trained(config, {k: v[rows] for k, v in train.items()}, seed))


def _trained(config: dict, rows: dict[str, np.ndarray], seed: int):
    """A fusion classifier trained on ``rows`` for ``config["max_iterations"]`` iterations, from
    its own seed (initialisation and batches)."""
    torch.set_num_threads(1)
    x = as_tensors(rows)
    config = {**config, "seed": seed}
    model = build_model(config, int(config["vocab_size"])).to(worker_device())
    optimizer = build_optimizer(model, config)
    for iteration in range(config["max_iterations"]):
        train_iteration(model, optimizer, x, config, iteration)
    return model


def _state(model) -> dict[str, np.ndarray]:
    return {k: v.detach().cpu().numpy().copy() for k, v in model.state_dict().items()}


BOOSTING_MIN_ROWS_PER_CLASS = 10  # a member cannot learn a class from fewer, however they are weighted


def boosted_members(
    spec: ExperimentSpec, storage: Storage, base_config: dict, train: dict, data_inputs: dict, log=print
) -> list[Member]:
    """``ensemble.boosting`` members by SAMME (``ensemble.boosting``): rounds in sequence, each
    round's ``boosting_candidates`` trained in parallel as Ray tasks on the current sample weights
    (a weighted resample of the training split, or a weighted loss), the lowest weighted error
    kept. Each member's lineage names its round, α, error, seed and the weights' fingerprint."""
    import ray

    from .boosting import samme

    e = spec.ensemble
    counts = np.bincount(train["label"], minlength=int(base_config.get("num_classes", 10)))
    if counts.min() < BOOSTING_MIN_ROWS_PER_CLASS:
        worst = int(counts.argmin())
        raise SpecError(
            "ensemble.boosting",
            [
                f"ensemble.boosting = {e.boosting}: class {worst} has {counts[worst]} training rows; boosting needs "
                f"at least {BOOSTING_MIN_ROWS_PER_CLASS} of every class"
            ],
        )
    config = {**base_config, "max_iterations": e.boosting_iterations}
    sweep = spec.fusion.sweep  # a boosted member costs what a fusion trial costs
    task = ray.remote(num_cpus=sweep.cpus_per_trial, num_gpus=sweep.gpus_per_trial)(_train_boosted)
    train_ref = ray.put(train)
    labels = np.asarray(train["label"])

    def fit(weights: np.ndarray, round_: int, seed: int):
        seeds = [seed * 100 + c for c in range(e.boosting_candidates)]
        results = ray.get([task.remote(config, train_ref, weights, e.boosting_weighting, s) for s in seeds])
        errors = [float(np.sum(weights * (pred != labels))) for _, pred in results]
        best = int(np.argmin(errors))
        log(
            f"[ensemble] boosting round {round_ + 1}/{e.boosting}: weighted error "
            + ", ".join(f"{err:.3f}" for err in errors)
            + (f" (kept {best + 1})" if len(errors) > 1 else "")
        )
        return (seeds[best], results[best][0]), results[best][1]

    rounds = samme(fit, labels, len(counts), e.boosting, e.boosting_learning_rate, seed=e.seed * 1000 + 7)
    h = spec_hash(spec, "data", "fusion", "ensemble")
    return [
        Member(
            f"boosted-{r.round + 1}",
            "boosting",
            {**config, "seed": r.member[0]},
            {name: torch.from_numpy(np.array(t)) for name, t in r.member[1].items()},
            {
                "boosting_round": r.round + 1,
                "alpha": r.alpha,
                "weighted_error": r.error,
                "sample_weights": r.weights_fingerprint,
                "weighting": e.boosting_weighting,
                "seed": r.member[0],
                "spec_hash": h,
                "data": data_inputs,
            },
        )
        for r in rounds
    ]


def _train_boosted(
    config: dict, train: dict, weights: np.ndarray, weighting: str, seed: int
) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """One boosting candidate: (its weights, its answer for every training row)."""
    if weighting == "resample":
        rows = np.random.default_rng(seed).choice(len(weights), len(weights), p=weights / weights.sum())
        model = _trained(config, {k: v[rows] for k, v in train.items()}, seed)
    else:  # the weighted loss: weights scaled to mean 1, so the learning rates mean what they meant
        model = _trained(config, {**train, "weight": (weights * len(weights)).astype(np.float32)}, seed)
    answers = predict(model.eval(), train).argmax(1)
    return _state(model), answers
