"""A GAN trial's checkpoint: generator, discriminator and both optimizers as one unit, so a PBT
exploit always copies a matching (G, D) pair from one donor. Shared by the image and video GAN
trainables; each names its own files."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch

from ..models.gan import d_lr_of
from ..runtime import worker_device


def weights_hash(module: torch.nn.Module) -> str:
    h = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        h.update(name.encode())
        h.update(tensor.detach().cpu().numpy().tobytes())
    return h.hexdigest()[:16]


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr


def plain_config(config: dict) -> dict:
    return {k: v for k, v in config.items() if isinstance(v, (int, float, str, bool)) or v is None}


def restore_pair(folder: str, g, d, opt_g, opt_d, config: dict, state_file: str, meta_file: str):
    """Load a trial checkpoint folder into (g, d, opt_g, opt_d) and apply the config's learning
    rates (after a PBT exploit they are the explored ones, not the donor's). Returns (step,
    iteration, what to report about the restore, the checkpoint's meta)."""
    state = torch.load(Path(folder, state_file), map_location="cpu", weights_only=True)  # our own file, tensors only
    meta = json.loads(Path(folder, meta_file).read_text())
    g.load_state_dict(state["g"])
    d.load_state_dict(state["d"])
    opt_g.load_state_dict(state["opt_g"])
    opt_d.load_state_dict(state["opt_d"])
    set_lr(opt_g, config["g_lr"])
    set_lr(opt_d, d_lr_of(config))
    restored = {
        "restored_from": meta["trial_id"],
        # with restored_from, names the lineage: a trial may take the same donor twice, and the
        # donor may itself have changed lineage (and shapes) in between
        "restored_at_iteration": int(state["iteration"]),
        "restored_pair_matches": weights_hash(g) == meta["g_hash"] and weights_hash(d) == meta["d_hash"],
    }
    return int(state["step"]), int(state["iteration"]), restored, meta


def save_pair(
    folder: str, g, d, opt_g, opt_d, step: int, iteration: int, meta: dict, state_file: str, meta_file: str
) -> None:
    """Write the pair's checkpoint into ``folder``: both networks and optimizers, and ``meta``
    plus both weight hashes (so a restore can tell that it got a matching pair)."""
    state = {
        "g": g.state_dict(),
        "d": d.state_dict(),
        "opt_g": opt_g.state_dict(),
        "opt_d": opt_d.state_dict(),
        "step": step,
        "iteration": iteration,
    }
    torch.save(state, Path(folder, state_file))
    Path(folder, meta_file).write_text(json.dumps({**meta, "g_hash": weights_hash(g), "d_hash": weights_hash(d)}))


class PairTrial:
    """The checkpoint half of a GAN family's ``trial.Trial``: restore and save the (G, D) pair.
    Subclasses set ``state_file``/``meta_file``, build the four parts and implement ``iterate``."""

    state_file: str
    meta_file: str

    def __init__(self, config: dict, g, d, opt_g, opt_d):
        device = worker_device()  # the trial's GPU when it was given one (gpus_per_trial)
        g.to(device)
        d.to(device)  # in place: the optimizers keep the same parameters
        self.config, self.g, self.d, self.opt_g, self.opt_d = config, g, d, opt_g, opt_d

    def restore(self, folder: str, trial_id: str) -> tuple[int, int, dict]:
        parts = (self.g, self.d, self.opt_g, self.opt_d)
        step, iteration, restored, meta = restore_pair(folder, *parts, self.config, self.state_file, self.meta_file)
        if meta["trial_id"] != trial_id:
            self.exploited(trial_id, meta["trial_id"], iteration, restored["restored_pair_matches"])
        return step, iteration, restored

    def exploited(self, trial_id: str, donor: str, iteration: int, pair_matches: bool) -> None:
        """Called when the restored checkpoint is another trial's (a PBT exploit)."""

    def save(self, folder: str, step: int, iteration: int, metrics: dict) -> None:
        meta = {
            "trial_id": metrics["trial_id"],
            "restored_from": metrics.get("restored_from"),  # whose checkpoint this lineage last took
            "config": plain_config(self.config),
            "metrics": {k: v for k, v in metrics.items() if isinstance(v, (int, float))},
        }
        parts = (self.g, self.d, self.opt_g, self.opt_d)
        save_pair(folder, *parts, step, iteration, meta, self.state_file, self.meta_file)
