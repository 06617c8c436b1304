"""A GAN trial's checkpoint: generator, discriminator and both optimizers as one unit, so a PBT
exploit always copies a matching (G, D) pair from one donor. Shared by the image and video GAN
trainables; each names its own files."""

from __future__ import annotations

import hashlib
import json
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch


def weights_hash(module: torch.nn.Module) -> str:
    h = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        h.update(name.encode())
        h.update(tensor.detach().cpu().numpy().tobytes())
    return h.hexdigest()[:16]


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr


def d_lr_of(config: dict) -> float:
    """D's learning rate: g_lr × lr_ratio (TTUR) when the ratio is set, else d_lr."""
    return config["g_lr"] * config["lr_ratio"] if config.get("lr_ratio") else config["d_lr"]


def plain_config(config: dict) -> dict:
    return {k: v for k, v in config.items() if isinstance(v, (int, float, str, bool)) or v is None}


def restore_pair(checkpoint, g, d, opt_g, opt_d, config: dict, state_file: str, meta_file: str):
    """Load a trial checkpoint into (g, d, opt_g, opt_d) and apply the config's learning rates
    (after a PBT exploit they are the explored ones, not the donor's). Returns (step, iteration,
    what to report about the restore, the checkpoint's meta)."""
    with checkpoint.as_directory() as ckpt:
        state = torch.load(Path(ckpt, state_file), weights_only=True)  # our own file, tensors only
        meta = json.loads(Path(ckpt, meta_file).read_text())
    g.load_state_dict(state["g"])
    d.load_state_dict(state["d"])
    opt_g.load_state_dict(state["opt_g"])
    opt_d.load_state_dict(state["opt_d"])
    set_lr(opt_g, config["g_lr"])
    set_lr(opt_d, d_lr_of(config))
    restored = {
        "restored_from": meta["trial_id"],
        "restored_pair_matches": weights_hash(g) == meta["g_hash"] and weights_hash(d) == meta["d_hash"],
    }
    return int(state["step"]), int(state["iteration"]), restored, meta


@contextmanager
def pair_checkpoint(
    g, d, opt_g, opt_d, step: int, iteration: int, meta: dict, state_file: str, meta_file: str
) -> Iterator[str]:
    """A temporary folder holding the pair's checkpoint (``meta`` plus both weight hashes), for
    ``tune.report(..., checkpoint=Checkpoint.from_directory(folder))`` inside the block."""
    with tempfile.TemporaryDirectory() as tmp:
        state = {
            "g": g.state_dict(),
            "d": d.state_dict(),
            "opt_g": opt_g.state_dict(),
            "opt_d": opt_d.state_dict(),
            "step": step,
            "iteration": iteration,
        }
        torch.save(state, Path(tmp, state_file))
        Path(tmp, meta_file).write_text(json.dumps({**meta, "g_hash": weights_hash(g), "d_hash": weights_hash(d)}))
        yield tmp
