"""Where a model's tensors go: the device of its parameters.

Training and serving code places a model once (``module.to(device)``, the device a Ray worker
was given: see ``runtime.worker_device``) and every batch follows the model. Random draws stay
on the CPU with the seeded ``torch.Generator``s and are moved after, so a seed gives the same
batches on a GPU as on the CPU, and the CPU path is unchanged."""

from __future__ import annotations

import torch


def module_device(module: torch.nn.Module) -> torch.device:
    """The device of the module's first parameter (the CPU for a module without parameters)."""
    for p in module.parameters():
        return p.device
    return torch.device("cpu")


def on(device: torch.device, *tensors):
    """Each tensor moved to ``device`` (None stays None); one value for one tensor."""
    moved = tuple(None if t is None else t.to(device, non_blocking=True) for t in tensors)
    return moved[0] if len(moved) == 1 else moved
