"""Deterministic global batches: the data position is just the step number.

Sample ``j`` of global step ``s`` is position ``p = s·G + j`` of an endless stream that walks a
fresh seeded permutation of the dataset each epoch. Any rank, at any world size, after any
restart, computes the same global batch for the same step; a rank takes its own micro-batches
of it. So a resumed run sees exactly the samples an uninterrupted one sees, and a 2-worker run
resumed on 1 worker trains on the same global batches (Ray Data's own iterator cannot resume
mid-epoch: ray-project/ray#37633).
"""

from __future__ import annotations

import numpy as np


class GlobalBatchOrder:
    """Which dataset rows make up each global batch, as a pure function of (seed, step)."""

    def __init__(self, num_samples: int, global_batch: int, seed: int):
        if num_samples < 1:
            raise ValueError("the dataset is empty: no samples to train on")
        self.num_samples = num_samples
        self.global_batch = global_batch
        self.seed = seed
        self._perms: dict[int, np.ndarray] = {}

    def _perm(self, epoch: int) -> np.ndarray:
        if epoch not in self._perms:
            self._perms = {epoch: np.random.default_rng([self.seed, epoch]).permutation(self.num_samples)}
        return self._perms[epoch]

    def global_indices(self, step: int) -> np.ndarray:
        """Row indices of global step ``step`` (length ``global_batch``)."""
        positions = step * self.global_batch + np.arange(self.global_batch)
        epochs, within = np.divmod(positions, self.num_samples)
        return np.array([self._perm(int(e))[int(w)] for e, w in zip(epochs, within, strict=True)])

    def micro_indices(self, step: int, micro: int, rank: int, world: int, micro_size: int) -> np.ndarray:
        """Rows for accumulation step ``micro`` of ``rank``: chunk ``micro·world + rank`` of the batch."""
        chunk = micro * world + rank
        return self.global_indices(step)[chunk * micro_size : (chunk + 1) * micro_size]

    def epoch_of(self, step: int) -> float:
        return step * self.global_batch / self.num_samples
