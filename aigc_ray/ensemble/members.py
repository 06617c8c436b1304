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
from ..models.fusion_training import STATE_FILE, as_tensors, build_model, build_optimizer, train_iteration
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

    torch.set_num_threads(1)
    rows = np.random.default_rng(seed).integers(0, len(train["label"]), len(train["label"]))
    x = as_tensors({k: v[rows] for k, v in train.items()})
    config = {**config, "seed": seed}  # its own initialisation and batches too
    model = build_model(config, int(config["vocab_size"])).to(worker_device())
    optimizer = build_optimizer(model, config)
    for iteration in range(config["max_iterations"]):
        train_iteration(model, optimizer, x, config, iteration)
    return {k: v.detach().cpu().numpy().copy() for k, v in model.state_dict().items()}
