"""Training precision: ``fp32``, ``bf16``, or ``auto`` (bf16 where the hardware computes it natively).

A GPU since Ampere multiplies bf16 at twice or more its float32 rate, and so does a CPU with
AVX512-BF16 or AMX (measured on the 2-core AMD EPYC CI machine: the quickstart's GPT-2 steps
1.4x, the video GAN's 1.45x). Elsewhere bf16 is emulated and slower than float32, so ``auto``
only picks it where it is native. It is resolved where the work runs (a Ray Train worker, a
Tune trial), not in the driver, which may have neither the GPU nor the CPU the workers have.

bf16 here is mixed precision: the weights and optimizer state stay float32 (DeepSpeed's master
weights, or ``torch.autocast`` for the sweeps' networks), only the matmuls and convolutions run
in bf16, and losses, softmaxes and normalisations stay float32.
"""

from __future__ import annotations

import contextlib

import torch

PRECISIONS = ("fp32", "bf16", "auto")


def native_bf16(device: torch.device) -> bool:
    """Whether ``device`` multiplies bf16 natively: a CUDA device that says so, a CPU with
    AVX512-BF16 or AMX tiles (torch's own checks; absent ones count as no)."""
    if device.type == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported(including_emulation=False)
    if device.type == "cpu":
        checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
        return any(bool(getattr(torch.cpu, name, lambda: False)()) for name in checks)
    return False


def resolve_precision(precision: str, device: torch.device) -> str:
    """``fp32`` or ``bf16`` for ``device``: ``auto`` becomes bf16 where it is native."""
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}; expected one of {', '.join(PRECISIONS)}")
    if precision == "auto":
        return "bf16" if native_bf16(device) else "fp32"
    return precision


def autocast(precision: str, device: torch.device):
    """The context a sweep's training steps run in: bf16 autocast under ``bf16`` (or ``auto``
    resolved to it), nothing under ``fp32``. Evaluation stays outside it, in float32, so trials'
    metrics compare across precisions."""
    if resolve_precision(precision, device) == "bf16":
        # No weight cache: autocast keeps the bf16 copy of each weight it cast until the
        # outermost context exits, so a context around several optimizer steps (or around one GAN
        # step, where G's loss reads D after D's update) would compute with weights as they were
        # before the updates: the quickstart's sweeps learned nothing (fusion accuracy 0.16).
        return torch.autocast(device.type, dtype=torch.bfloat16, cache_enabled=False)
    return contextlib.nullcontext()
