"""The training loop: plain torch.distributed + DeepSpeed, the same under Ray Train or torchrun.

``run_training`` knows nothing of Ray. What differs between launchers — where the data comes
from, where checkpoints go, how metrics are reported — is behind ``Hooks`` (``RayHooks`` in
``pretrain.py``; ``LocalHooks`` in ``torchrun.py`` for ``torchrun -m aigc_ray.train.torchrun``).

Data position is the step number (see ``sampler.py``): a checkpoint holds the DeepSpeed state
plus ``step``, and a resumed run continues with exactly the batches it would have seen.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .. import progress
from ..spec.sections import TrainingSpec
from .ds_config import deepspeed_config, training_precision
from .sampler import GlobalBatchOrder

CKPT_TAG = "ckpt"  # one fixed DeepSpeed tag: each reported checkpoint folder holds one state
STATE_FILE = "aigc_state.json"
HF_CONFIG_FILE = "hf_config.json"


@dataclass
class LoopConfig:
    """Everything one worker needs; picklable, passed through ``train_loop_config``."""

    training: TrainingSpec  # the stage's own section: pretrain or finetune
    hf_config: dict
    seed: int
    special_ids: dict[str, int]
    task: str = "pretrain"  # pretrain | caption | classify
    objective: str = "clm"  # pretraining: clm | mlm
    mask_prob: float = 0.15  # pretraining with mlm: fraction of tokens masked
    init: dict | None = None  # fine-tuning: {"uri": base model folder, "s3": S3Settings}
    tuning: dict | None = None  # fine-tuning: {"mode", "freeze_layers", "lora_r", "lora_alpha", "lora_dropout"}
    tracking: Any = None  # the stage's MLflow run (tracking.RunRef): rank 0 logs into it, no other rank


class Hooks:
    """What the launcher provides to the loop."""

    def train_blocks(self) -> np.ndarray:
        raise NotImplementedError

    def eval_blocks(self) -> np.ndarray | None:
        return None

    @contextlib.contextmanager
    def latest_checkpoint(self) -> Iterator[str | None]:
        yield None

    def report(self, metrics: dict, checkpoint_dir: str) -> None:
        """A checkpoint and the metrics of its step. The loop reports nothing between checkpoints:
        Ray Train holds one unread report per worker and its controller reads them every 2 s
        (RAY_TRAIN_HEALTH_CHECK_INTERVAL_S), so a report every log_every steps stalled fast loops
        until the next read — 1.1 s of every 2 s in the quickstart's fine-tuning. The steps'
        metrics reach MLflow, the history and the live line."""
        raise NotImplementedError


def stable_seed(*parts) -> int:
    """A seed from values, equal in every process (``hash()`` of a str is salted per process)."""
    digest = hashlib.sha256(":".join(map(str, parts)).encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


def _mlm_inputs(blocks: torch.Tensor, gen: torch.Generator, mask_prob: float, ids: dict[str, int], vocab: int):
    """BERT masking: ``mask_prob`` of non-special tokens chosen; of those 80 % [MASK], 10 % random, 10 % kept."""
    labels = blocks.clone()
    chosen = torch.rand(blocks.shape, generator=gen) < mask_prob
    chosen &= blocks != ids["pad"]
    labels[~chosen] = -100
    inputs = blocks.clone()
    roll = torch.rand(blocks.shape, generator=gen)
    inputs[chosen & (roll < 0.8)] = ids["mask"]
    random_tok = torch.randint(0, vocab, blocks.shape, generator=gen)
    swap = chosen & (roll >= 0.8) & (roll < 0.9)
    inputs[swap] = random_tok[swap]
    return inputs, labels


def batch_for(blocks, rows: np.ndarray, cfg: LoopConfig, step: int, chunk: int, device) -> dict:
    """Model inputs for ``rows`` of ``blocks``. MLM masks are a function of (seed, step, chunk
    position in the global batch), never of the rank, so resuming on another world size agrees.
    Fine-tuning data is a dict of prepared columns (input_ids, attention_mask, labels)."""
    if isinstance(blocks, dict):
        return {k: torch.from_numpy(v[rows]).to(device) for k, v in blocks.items()}
    x = torch.from_numpy(blocks[rows].astype(np.int64))
    if cfg.objective == "clm":
        return {"input_ids": x.to(device), "labels": x.to(device)}
    gen = torch.Generator().manual_seed(stable_seed(cfg.seed, step, chunk, "mask"))
    inputs, labels = _mlm_inputs(x, gen, cfg.mask_prob, cfg.special_ids, cfg.hf_config["vocab_size"])
    return {"input_ids": inputs.to(device), "labels": labels.to(device)}


def _all_mean(value: float, device) -> float:
    t = torch.tensor([value], dtype=torch.float64, device=device)
    torch.distributed.all_reduce(t)
    return float(t.item()) / torch.distributed.get_world_size()


def init_distributed(use_gpu: bool) -> None:
    """DeepSpeed's communication backend over the process group Ray Train (or torchrun) created,
    so its own config code (HfDeepSpeedConfig under ZeRO-3) sees the real world size.

    On CPUs, DeepSpeed's backend would first JIT-compile its shared-memory all-reduce op
    (``deepspeed_shm_comm``: 35-40 s of g++ on 2 cores, on every node and after every
    reinstall, before the first step). Only its inference all-reduce (tensor-parallel module
    injection) calls that op, and that falls back to torch's all_reduce without it; training's
    collectives (ZeRO reduce-scatter, all-gather, all-reduce) always go through gloo. So it is
    not built here."""
    import importlib

    import deepspeed

    # by module path: the package's attribute ``deepspeed.comm.torch`` is torch itself
    ds_comm_torch = importlib.import_module("deepspeed.comm.torch")
    build_shm_op = ds_comm_torch.build_shm_op
    if not use_gpu:
        ds_comm_torch.build_shm_op = lambda: None
    try:
        deepspeed.init_distributed(dist_backend="nccl" if use_gpu else "gloo")
    finally:
        ds_comm_torch.build_shm_op = build_shm_op


def build_engine(cfg: LoopConfig, world: int):
    """Model + DeepSpeed engine. ZeRO-3 models are built while an HfDeepSpeedConfig is alive."""
    import deepspeed
    from transformers import AutoConfig
    from transformers.integrations import HfDeepSpeedConfig

    from ..models.lm import build_lm

    init_distributed(cfg.training.use_gpu)
    ds_config = deepspeed_config(cfg.training, world)
    torch.manual_seed(cfg.seed)  # identical initial weights (and new heads) on every rank
    keep_alive = HfDeepSpeedConfig(ds_config) if cfg.training.zero_stage == 3 else None
    if cfg.init:
        from ..models.tuning import prepare
        from .model_cache import local_model_dir

        model = prepare(local_model_dir(cfg.init), cfg.task, cfg.tuning)
    else:
        model = build_lm(AutoConfig.for_model(**cfg.hf_config))
    trainable = [p for p in model.parameters() if p.requires_grad]
    engine, _, _, _ = deepspeed.initialize(model=model, model_parameters=trainable, config=ds_config)
    del keep_alive
    return engine


def num_samples(data) -> int:
    return len(next(iter(data.values()))) if isinstance(data, dict) else len(data)


def eval_chunks(num_blocks: int, micro: int, batches: int) -> int:
    """How many held-out micro-batches to evaluate: the first ``batches`` that exist."""
    return min(batches, num_blocks // micro)


def evaluate(engine, cfg: LoopConfig, blocks: np.ndarray, rank: int, world: int) -> dict:
    """Held-out loss/perplexity (CLM) or masked accuracy (MLM) on the first ``eval_batches``
    micro-batches of the split — the same rows and masks at any world size, so a plain model
    evaluated on one process gives the same number. Chunk ``c`` goes to rank ``c % world``;
    every rank runs the same number of forward passes (ZeRO-3 forwards are collective)."""
    engine.eval()
    micro = cfg.training.micro_batch_size
    chunks = eval_chunks(num_samples(blocks), micro, cfg.training.eval_batches)
    stats = torch.zeros(3, dtype=torch.float64)  # loss sum, correct masked tokens, masked tokens
    with torch.no_grad():
        for c in range(rank, math.ceil(chunks / world) * world, world):
            real = c < chunks
            rows = np.arange(c * micro, (c + 1) * micro) if real else np.arange(micro)  # padding pass
            inputs = batch_for(blocks, rows, cfg, step=-1, chunk=c, device=engine.device)
            out = engine(**inputs)
            if not real:
                continue
            stats[0] += float(out.loss)
            if cfg.task == "classify":
                stats[1] += float((out.logits.argmax(-1) == inputs["labels"]).sum())
                stats[2] += float(inputs["labels"].numel())
            elif cfg.task == "pretrain" and cfg.objective == "mlm":
                target = inputs["labels"] != -100
                stats[1] += float((out.logits.argmax(-1)[target] == inputs["labels"][target]).sum())
                stats[2] += float(target.sum())
    engine.train()
    torch.distributed.all_reduce(stats)
    loss = float(stats[0]) / max(chunks, 1)
    result = {"eval_loss": loss, "eval_batches": chunks}
    accuracy = float(stats[1] / max(float(stats[2]), 1))
    if cfg.task == "classify":
        result["eval_accuracy"] = accuracy
    elif cfg.task == "caption" or cfg.objective == "clm":
        result["eval_perplexity"] = math.exp(min(loss, 50))
    else:
        result["eval_masked_accuracy"] = accuracy
    return result


def save_checkpoint(engine, cfg: LoopConfig, step: int, history: list, resumes: list, world: int, path: str) -> None:
    """This rank's part of a checkpoint (DeepSpeed writes rank-named files) plus, on rank 0, the
    loop state and the HF config needed to export it."""
    engine.save_checkpoint(path, tag=CKPT_TAG, client_state={"step": step})
    if torch.distributed.get_rank() == 0:
        state = {"step": step, "world_size": world, "history": history, "resumes": resumes, "seed": cfg.seed}
        Path(path, STATE_FILE).write_text(json.dumps(state))
        Path(path, HF_CONFIG_FILE).write_text(json.dumps(cfg.hf_config))


def run_training(cfg: LoopConfig, hooks: Hooks) -> None:
    """Train ``cfg.training.max_steps`` global steps, resuming from the hooks' latest checkpoint."""
    import tempfile

    p = cfg.training
    rank, world = torch.distributed.get_rank(), torch.distributed.get_world_size()
    # Wall-clock marks of this worker's start-up (on the run's first record): where the time
    # before step 1 goes — the launcher's part ends at loop_start.
    marks = {"loop_start": time.time()}
    t_load = time.perf_counter()
    # The worker's share of the blocks is read from Ray Data once, before the first step (the
    # data position is the step number, see sampler.py); each step then only indexes it. Both
    # waits are in the history: data_load_s on the run's first record, data_wait_s on each.
    blocks = hooks.train_blocks()
    data_load_s = time.perf_counter() - t_load
    marks["data_loaded"] = time.time()
    order = GlobalBatchOrder(num_samples(blocks), p.global_batch_size, cfg.seed)
    engine = build_engine(cfg, world)
    marks["engine_built"] = time.time()
    start, history, resumes = 0, [], []
    with hooks.latest_checkpoint() as ckpt:
        if ckpt:
            state = json.loads(Path(ckpt, STATE_FILE).read_text())
            same_world = state["world_size"] == world
            engine.load_checkpoint(ckpt, tag=CKPT_TAG, load_optimizer_states=same_world, load_lr_scheduler_states=True)
            if not same_world:
                _load_consolidated(engine, ckpt)
            start, history, resumes = state["step"], state["history"], state.get("resumes", [])
            resumes.append({"at_step": start, "from_world_size": state["world_size"], "world_size": world})
            if rank == 0:
                print(
                    f"[{cfg.task}] resumed at step {start} from a {state['world_size']}-worker checkpoint", flush=True
                )
    ga = p.grad_accum_steps * p.num_workers // world  # same global batch on any world size
    tokens_per_step = p.global_batch_size * p.seq_len
    t_last, started = time.perf_counter(), time.perf_counter()
    untracked: list[tuple[dict, int]] = []  # rank 0's steps not yet written to MLflow
    for step in range(start, p.max_steps):
        losses, data_wait = [], 0.0
        for micro in range(ga):
            rows = order.micro_indices(step, micro, rank, world, p.micro_batch_size)
            chunk = micro * world + rank  # position of these rows in the global batch
            # Dropout masks from (seed, step, chunk): a resumed run, or one on another world size,
            # draws the same masks as an uninterrupted one.
            torch.manual_seed(stable_seed(cfg.seed, step, chunk, "dropout"))
            t_data = time.perf_counter()
            batch = batch_for(blocks, rows, cfg, step, chunk, engine.device)
            data_wait += time.perf_counter() - t_data
            out = engine(**batch)
            engine.backward(out.loss)
            engine.step()
            losses.append(float(out.loss.detach()))
        loss = _all_mean(sum(losses) / len(losses), engine.device)
        now = time.perf_counter()
        record = {
            "step": step + 1,
            "loss": loss,
            "lr": engine.get_lr()[0],
            "tokens_per_s": tokens_per_step / (now - t_last),
            "data_wait_s": data_wait,  # this rank's time getting the step's batches ready
            "data_wait_share": data_wait / (now - t_last),
            "epoch": order.epoch_of(step + 1),
            "time": time.time(),  # wall clock: lets a launcher measure start-up to first step
        }
        if step == start:
            record["precision"] = training_precision(p)  # what ``auto`` became on this worker
            record["data_load_s"] = data_load_s
            record["startup_marks"] = marks
        t_last = now
        history.append(record)
        last = step + 1 == p.max_steps
        checkpoint_now = (step + 1) % p.checkpoint_every == 0 or last
        if rank == 0 and cfg.tracking is not None:
            # wall-clock times are not metrics; the steps go to MLflow in one write per log_every
            untracked.append(
                ({k: v for k, v in record.items() if k not in ("step", "time", "startup_marks")}, step + 1)
            )
            if checkpoint_now or (step + 1) % p.log_every == 0:
                cfg.tracking.log_steps(untracked)
                untracked = []
        eta = (now - started) / (step + 1 - start) * (p.max_steps - step - 1)
        if rank == 0:
            progress.emit(
                f"{cfg.task} step {step + 1}/{p.max_steps} · loss {loss:.4f} · "
                f"{record['tokens_per_s']:,.0f} tok/s · ETA {progress.eta(eta)}",
                force=last,
            )
        if rank == 0 and ((step + 1) % p.log_every == 0 or last or step == start):
            print(
                f"[{cfg.task}] step {step + 1}/{p.max_steps} loss {loss:.4f} lr {record['lr']:.2e} "
                f"{record['tokens_per_s']:,.0f} tok/s ETA {eta:.0f}s",
                flush=True,
            )
        if checkpoint_now:
            metrics = dict(record)
            if last and (eval_blocks := hooks.eval_blocks()) is not None:
                metrics.update(evaluate(engine, cfg, eval_blocks, rank, world))
                history[-1] = {**record, **metrics}
                if rank == 0 and cfg.tracking is not None:
                    cfg.tracking.log_metrics({k: v for k, v in metrics.items() if k.startswith("eval_")}, step + 1)
            with tempfile.TemporaryDirectory(prefix=f"aigc-ckpt-r{rank}-") as d:
                save_checkpoint(engine, cfg, step + 1, history, resumes, world, d)
                hooks.report(metrics, d)


def _load_consolidated(engine, ckpt: str) -> None:
    """Different world size: ZeRO optimizer shards don't fit, so load the consolidated fp32
    weights from all shards (every rank has the whole checkpoint folder) and keep a fresh
    optimizer; the schedule and data position still continue from the checkpoint."""
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    state_dict = get_fp32_state_dict_from_zero_checkpoint(ckpt, tag=CKPT_TAG)
    if engine.zero_optimization_stage() == 3:
        import deepspeed

        with deepspeed.zero.GatheredParameters(list(engine.module.parameters()), modifier_rank=0):
            if torch.distributed.get_rank() == 0:
                engine.module.load_state_dict(state_dict, strict=False)
    else:
        engine.module.load_state_dict(state_dict, strict=False)
        if hasattr(engine.optimizer, "refresh_fp32_params"):  # ZeRO 1/2 keep fp32 masters apart
            engine.optimizer.refresh_fp32_params()
