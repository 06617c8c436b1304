"""``torchrun --nproc-per-node N -m aigc_ray.train.torchrun SPEC OUT_DIR``: the training loop of
``loop.py`` without Ray — data read in-process, checkpoints in a local folder, metrics printed.
The same loop Ray Train launches, so a GPU box without Ray can run it."""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path

import torch

from .loop import STATE_FILE, Hooks, init_distributed, run_training


class LocalHooks(Hooks):
    """torchrun: data read in-process, checkpoints in a local folder, metrics printed."""

    def __init__(self, spec, out_dir: str):
        from ..data.lm_blocks import local_blocks
        from ..storage import Storage

        self.out = Path(out_dir)
        storage = Storage.from_spec(spec.storage)
        self._train = local_blocks(spec, storage, "train", spec.pretrain.seq_len)
        self._eval = local_blocks(spec, storage, "val", spec.pretrain.seq_len)

    def train_blocks(self):
        return self._train

    def eval_blocks(self):
        return self._eval

    @contextlib.contextmanager
    def latest_checkpoint(self):
        yield str(self.out) if (self.out / STATE_FILE).exists() else None

    def report(self, metrics, checkpoint_dir):
        import shutil

        if torch.distributed.get_rank() == 0:
            print(json.dumps(metrics), flush=True)
        shutil.copytree(checkpoint_dir, self.out, dirs_exist_ok=True)


def main() -> None:
    """The entry point: SPEC OUT_DIR [--set-style overrides]."""
    import sys

    from ..spec import load_spec
    from .pretrain import loop_config

    spec_path, out_dir = sys.argv[1], sys.argv[2]
    spec = load_spec(spec_path, sys.argv[3:])
    init_distributed(spec.pretrain.use_gpu)
    if os.environ.get("LOCAL_RANK") and spec.pretrain.use_gpu:
        torch.cuda.set_device(int(os.environ["LOCAL_RANK"]))
    run_training(loop_config(spec), LocalHooks(spec, out_dir))


if __name__ == "__main__":
    main()
