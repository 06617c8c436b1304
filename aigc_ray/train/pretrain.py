"""``aigc pretrain``: launch the training loop on Ray Train, then export and evaluate.

The corpus is tokenized once per run (on Ray Data, or in the driver when it is small:
``token_inputs``) into Ray's object store; every worker receives the whole (unsplit) token
stream and takes its micro-batches of each deterministic global batch (``sampler.py``). Ray Train runs the loop
with ``FailureConfig`` restarts from the latest checkpoint, keeps the last K checkpoints, and
resumes a re-run with the same run name from the run's storage.
"""

from __future__ import annotations

import contextlib
import json
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path

from ..data.build import build_data, build_hash
from ..data.lm_blocks import (
    blocks_from_dataset_iterator,
    corpus_bytes,
    corpus_token_dataset,
    local_blocks,
    split_texts,
)
from ..data.tokenizer import SPECIAL_TOKENS, download_tokenizer, special_tokens
from ..layout import corpus_uri, pretrain_dir, pretrain_export, pretrain_tokenizer_uri, ray_runs, tokenizer_uri
from ..manifest import folder_fingerprint, publish_directory
from ..runtime import cpus_per_train_worker, set_train_driver_env
from ..spec import ExperimentSpec, spec_hash
from ..spec.load import check_fits_positions
from ..spec.training import vocabulary_problem
from ..storage import Storage, StorageError, checkpoint_uri, join
from ..tracking import log_plots, tracked_run
from .feed import ordered_ingest_options
from .loop import Hooks, LoopConfig, run_training


def loop_config(spec: ExperimentSpec) -> LoopConfig:
    """The worker's config: the pretrain section, the HF model config and the tokenizer's ids
    (with ``pretrain.init``: that folder's config and tokenizer, and its weights to start from)."""
    from tokenizers import Tokenizer

    from ..models.lm import lm_config

    storage = Storage.from_spec(spec.storage)
    p = spec.pretrain
    uri = pretrain_tokenizer_uri(spec)
    if p.init and not storage.exists(join(uri, "tokenizer.json")):
        raise StorageError(f"{uri}: no tokenizer.json (pretrain.init needs the folder's fast tokenizer)")
    tok = Tokenizer.from_str(storage.read_bytes(join(uri, "tokenizer.json")).decode())
    names = special_tokens(storage, uri) if p.init else {k.removesuffix("_token"): v for k, v in SPECIAL_TOKENS.items()}
    special = {name: (tok.token_to_id(t) if t else None) for name, t in names.items()}
    if p.init:
        hf_config = storage.read_json(join(p.init, "config.json"))
        check_fits_positions(hf_config, p.seq_len, "pretrain.seq_len", p.init)
        if problem := vocabulary_problem(hf_config, tok.get_vocab_size(), p.init):
            raise StorageError(problem)  # before any Ray work, as a base without eos
        init = {"uri": p.init, "s3": storage.s3}
    else:
        hf_config, init = lm_config(p, tok.get_vocab_size(), special).to_dict(), None
    return LoopConfig(
        training=p,
        hf_config=hf_config,
        seed=spec.data.seed,
        special_ids=special,
        objective=p.objective,
        mask_prob=p.mask_prob,
        init=init,
        tuning={"mode": "full"} if init else None,
    )


def run_key(spec: ExperimentSpec, storage: Storage) -> str:
    """The pretraining run's key: its trajectory (and the init folder's content, if any)."""
    init = [folder_fingerprint(storage, spec.pretrain.init)] if spec.pretrain.init else []
    return trajectory_key(spec.pretrain, build_hash(spec), *init)


class RayHooks(Hooks):
    """Inside a Ray Train worker: the blocks from the object store (a small corpus) or the Ray Data
    shards (a large one), checkpoints and metrics via ray.train."""

    def __init__(self, seq_len: int, blocks: dict | None = None):
        self.seq_len = seq_len
        self.blocks = blocks  # split -> ObjectRef of blocks packed by the driver; None: the Ray Data shards

    def train_blocks(self):
        return self._blocks("train")

    def eval_blocks(self):
        return self._blocks("val")

    def _blocks(self, split: str):
        import ray.train

        if self.blocks is not None:
            return ray.get(self.blocks[split])  # zero-copy from this node's object store
        return blocks_from_dataset_iterator(ray.train.get_dataset_shard(split), self.seq_len)

    @contextlib.contextmanager
    def latest_checkpoint(self):
        import ray.train

        checkpoint = ray.train.get_checkpoint()
        if checkpoint is None:
            yield None
            return
        with checkpoint.as_directory() as d:
            yield d

    def report(self, metrics, checkpoint_dir):
        import ray.train

        ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(checkpoint_dir))


def train_loop_per_worker(config: dict) -> None:
    cfg: LoopConfig = config["loop"]
    run_training(cfg, RayHooks(cfg.training.seq_len, config.get("blocks")))


@dataclass
class PretrainResult:
    export_uri: str
    metrics: dict
    checkpoint_path: str
    eval: dict


# Settings that change how a run executes but not what it computes: a re-run that differs only
# in these resumes the same run (e.g. on fewer workers); any other change starts a fresh one.
RESUME_NEUTRAL = {
    "num_workers",
    "min_workers",
    "grow_check_s",
    "cpus_per_worker",
    "worker_resources",
    "use_gpu",
    "max_failures",
    "log_every",
    "keep_checkpoints",
    "eval_batches",
    "tokenize_in_driver_mb",
}


def trajectory_key(section, *more: str) -> str:
    """Names the Ray Train run: same key, same training trajectory, so resuming is safe."""
    import hashlib

    fields = section.model_dump(mode="json", exclude=RESUME_NEUTRAL)
    return hashlib.sha256(json.dumps([fields, *more], sort_keys=True).encode()).hexdigest()[:12]


def ray_run_config(storage: Storage, root: str, key: str, max_failures: int, keep: int):
    """Ray Train's RunConfig for a run under ``root``: checkpoints on our storage (local or S3),
    restarts on failure, the last ``keep`` checkpoints kept, resumed when ``key`` matches."""
    from ray.train import CheckpointConfig, FailureConfig, RunConfig

    path, fs = storage.ray_storage(root)
    return RunConfig(
        name=f"train-{key}",
        storage_path=path,
        storage_filesystem=fs,
        failure_config=FailureConfig(max_failures=max_failures),
        checkpoint_config=CheckpointConfig(num_to_keep=keep),
    )


def committed_checkpoints(storage: Storage, run_root: str) -> list[dict]:
    """The checkpoints a Ray Train run has committed, oldest first (its checkpoint manager's
    snapshot; none before the first)."""
    snapshot = join(run_root, "checkpoint_manager_snapshot.json")
    return storage.read_json(snapshot)["checkpoint_results"] if storage.exists(snapshot) else []


def remove_uncommitted_checkpoints(storage: Storage, run_root: str) -> list[str]:
    """Delete the checkpoint folders under a Ray Train run that its checkpoint manager never
    committed (a copy cut off by a crash, or one pruned while a worker died): they are never
    resumed from and would stay in storage. Returns the folders removed."""
    committed = {r["checkpoint_dir_name"] for r in committed_checkpoints(storage, run_root)}
    removed: set[str] = set()
    prefix = len(run_root.rstrip("/")) + 1
    for f in storage.list_files(run_root):
        folder = f[prefix:].split("/", 1)[0]
        if folder.startswith("checkpoint_") and "/" in f[prefix:] and folder not in committed:
            storage.delete(f)
            removed.add(folder)
    return sorted(removed)


def fit_and_tidy(trainer, storage: Storage, run_root: str, log=print):
    """``trainer.fit()`` with the run's uncommitted checkpoint folders removed before (what a
    killed earlier run left) and after (what this one's failures left)."""
    for stale in remove_uncommitted_checkpoints(storage, run_root):
        log(f"  removed an uncommitted checkpoint an earlier run left: {stale}")
    set_train_driver_env()
    try:
        return trainer.fit()
    finally:
        remove_uncommitted_checkpoints(storage, run_root)


def start_train_coordinator() -> None:
    """Ask for Ray's autoscaling coordinator now, without waiting for it.

    Ray Train's controller registers every run's resources with this cluster-wide actor (named,
    detached: one per cluster, created by the first run) and waits for the answer, so on a fresh
    cluster the controller stood still while the actor's process started and imported Ray Data
    (1.7 s of the start on 2 cores, one core idle). Asked for here, before the stage opens its
    MLflow run and tokenizes, its process starts meanwhile; the controller then finds it. This is
    Ray's own get-or-create function, so the actor is the one Ray would make; if a Ray version
    moves it, Train creates it itself as before."""
    import ray

    if not ray.is_initialized():  # the call would start a Ray of its own
        return
    try:
        from ray.data._internal.cluster_autoscaler.default_autoscaling_coordinator import (
            get_or_create_autoscaling_coordinator,
        )

        get_or_create_autoscaling_coordinator()
    except Exception:  # noqa: BLE001 - an optimisation only: Train asks for it again
        return


def pretrain(spec: ExperimentSpec, storage: Storage, log=print) -> PretrainResult:
    """Train, export to ``layout.pretrain_export`` and evaluate; returns where and how well.
    Tracked as one MLflow run: the section as params, rank 0's loss, learning rate and tokens/s
    per step, the export's evaluation and plots."""
    start_train_coordinator()
    with tracked_run(spec, "pretrain", params=spec.pretrain.model_dump()) as run:
        result = _pretrain(spec, storage, log, run)
        if run is not None:
            run.log_metrics({f"export.{k}": v for k, v in result.eval.items()})
            run.set_tags({"aigc.artifact": result.export_uri})
            log_plots(run, storage, result.export_uri)
        return result


@dataclass
class TokenInputs:
    """How the workers get the corpus's tokens: Ray Datasets of token arrays, which each worker
    packs (a large corpus, tokenized on Ray Data), or blocks packed here and put into Ray's
    object store (a small one)."""

    datasets: dict | None = None
    blocks: dict | None = None  # split -> ObjectRef


def token_inputs(spec: ExperimentSpec, storage: Storage, log=print) -> TokenInputs:
    """The corpus splits tokenized once, here or on Ray Data, and held in Ray's object store.

    Every worker takes the whole (unsplit) token stream. Handed lazy datasets, each worker ran
    its own read-and-tokenize pass before step 1 (measured: 12-15 s each on 2 cores, the two
    competing for the same CPUs); materialized, the pass runs once and each worker copies the
    blocks from the object store (0.4 s). A corpus up to ``pretrain.tokenize_in_driver_mb`` is
    tokenized and packed in this process (the embedded one: 0.2 s, where Ray Data's two passes
    took 4-9 s of task start-up) and its blocks put into the object store as they are: no Ray Data
    at all (its dataset, executor and coordinator actor cost ~1.5 s of the start); a larger one
    on Ray Data, in parallel across the cluster, the two splits at once."""
    import ray

    t = time.perf_counter()
    size = corpus_bytes(storage, corpus_uri(spec))
    if size <= spec.pretrain.tokenize_in_driver_mb * 1e6:
        blocks = {split: local_blocks(spec, storage, split, spec.pretrain.seq_len) for split in ("train", "val")}
        log(
            f"[pretrain] corpus ({size / 1e6:.1f} MB) tokenized in the driver: {len(blocks['train']):,} "
            f"training blocks of {spec.pretrain.seq_len} tokens in {time.perf_counter() - t:.1f} s"
        )
        return TokenInputs(blocks={split: ray.put(b) for split, b in blocks.items()})
    with ThreadPoolExecutor(max_workers=2, thread_name_prefix="aigc-tokenize") as pool:
        passes = {s: pool.submit(corpus_token_dataset(spec, storage, s).materialize) for s in ("train", "val")}
        datasets = {split: done.result() for split, done in passes.items()}
    log(
        f"[pretrain] corpus ({size / 1e6:.1f} MB) tokenized on Ray Data: "
        f"{datasets['train'].count():,} training documents in {time.perf_counter() - t:.1f} s"
    )
    return TokenInputs(datasets=datasets)


def _pretrain(spec: ExperimentSpec, storage: Storage, log, run) -> PretrainResult:
    import ray
    from ray.train import DataConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    built = build_data(spec, storage, log=log, say_up_to_date=False)
    p = spec.pretrain
    cpus = p.cpus_per_worker or cpus_per_train_worker(
        p.num_workers, ray.cluster_resources().get("CPU", 1), spec.ray.data_cpus
    )
    tokens = token_inputs(spec, storage, log)
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config={"loop": replace(loop_config(spec), tracking=run), "blocks": tokens.blocks},
        scaling_config=ScalingConfig(
            # Elastic: Train restarts on whatever number of workers in [min, max] the cluster fits now.
            num_workers=(p.min_workers, p.num_workers) if p.min_workers else p.num_workers,
            elastic_resize_monitor_interval_s=p.grow_check_s,  # read only by elastic runs
            use_gpu=p.use_gpu,
            resources_per_worker={"CPU": cpus, **p.worker_resources},
        ),
        torch_config=TorchConfig(backend="nccl" if p.use_gpu else "gloo"),
        datasets=tokens.datasets,
        # Every worker gets the whole token stream, in order; the sampler picks its rows.
        dataset_config=DataConfig(datasets_to_split=[], execution_options=ordered_ingest_options()),
        run_config=ray_run_config(
            storage,
            ray_runs(pretrain_dir(spec)),
            run_key(spec, storage),
            p.max_failures,
            p.keep_checkpoints,
        ),
    )
    run_root = join(ray_runs(pretrain_dir(spec)), f"train-{run_key(spec, storage)}")
    result = fit_and_tidy(trainer, storage, run_root, log)
    if result.error:
        raise result.error
    log(
        f"[pretrain] finished: {json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in result.metrics.items()})}"
    )
    inputs = data_inputs(spec, built, storage)
    with result.checkpoint.as_directory() as ckpt:
        export_uri, evaluation = export(
            spec, storage, ckpt, inputs | {checkpoint_uri(result.checkpoint): "ray-train-checkpoint"}, log
        )
    return PretrainResult(export_uri, result.metrics, result.checkpoint.path, evaluation)


def data_inputs(spec: ExperimentSpec, built, storage: Storage) -> dict[str, str]:
    """The lineage of a language model: the corpus and the tokenizer it was trained on, and the
    model it continued (``pretrain.init``: whose tokenizer it is)."""
    if spec.pretrain.init:
        return {
            corpus_uri(spec): built.corpus.fingerprint,
            spec.pretrain.init: folder_fingerprint(storage, spec.pretrain.init),
        }
    return {
        corpus_uri(spec): built.corpus.fingerprint,
        tokenizer_uri(spec): built.tokenizer.fingerprint,
    }


def latest_checkpoint_uri(spec: ExperimentSpec, storage: Storage) -> str:
    """The newest checkpoint Ray Train has committed for this spec's run (raises if none yet)."""
    run_root = join(ray_runs(pretrain_dir(spec)), f"train-{run_key(spec, storage)}")
    results = committed_checkpoints(storage, run_root)
    if not results:
        raise StorageError(f"{run_root}: no committed checkpoint for this spec's run yet")
    return join(run_root, results[-1]["checkpoint_dir_name"])


def export_latest(spec: ExperimentSpec, storage: Storage, log=print) -> tuple[str, dict]:
    """Export the latest committed checkpoint now (a run may still be going on)."""
    uri = latest_checkpoint_uri(spec, storage)
    built = build_data(spec, storage, log=lambda *_: None)
    inputs = data_inputs(spec, built, storage)
    with tempfile.TemporaryDirectory(prefix="aigc-ckpt-") as local:
        storage.download(uri, local)
        return export(spec, storage, local, inputs | {uri: "ray-train-checkpoint"}, log)


# What a continued model keeps of its init besides the weights: its tokenizer, an instruct
# model's chat template, and its generation config (the end-of-turn ids an answer stops at).
INIT_SIDE_FILES = ("tokenizer", "special_tokens_map", "vocab", "merges", "added_tokens", "chat_template")


def copy_init_side_files(storage: Storage, init_uri: str, out: Path) -> None:
    """Copy the init folder's tokenizer, chat template and generation config into the export
    ``out`` (written after the model: the init's generation config replaces the one derived
    from the model's config, which knows only the tokenizer's eos)."""
    for f in storage.list_files(init_uri):
        name = f.rsplit("/", 1)[-1]
        if "/" not in f[len(init_uri.rstrip("/")) + 1 :] and (
            name.startswith(INIT_SIDE_FILES) or name == "generation_config.json"
        ):
            Path(out, name).write_bytes(storage.read_bytes(f))


def export(spec: ExperimentSpec, storage: Storage, ckpt: str, inputs: dict, log=print) -> tuple[str, dict]:
    """Consolidate ``ckpt`` into a plain HF folder (safetensors + tokenizer), evaluate it with no
    code of ours beyond loading, and write it with eval, samples and plots to storage."""
    from transformers import AutoTokenizer

    from ..models.tuning import in_saved_dtype
    from .export import load_export_model, plain_eval_loss, read_state, sample_prompts, samples, write_run_artifacts

    export_uri = pretrain_export(spec)
    state = read_state(ckpt)
    engine_eval = next((h for h in reversed(state["history"]) if "eval_loss" in h), {})
    cfg = loop_config(spec)
    with tempfile.TemporaryDirectory(prefix="aigc-export-") as tmp:
        out = Path(tmp, "export")
        model = load_export_model(ckpt)
        if spec.pretrain.init:  # continued pretraining: written in the init model's own dtype
            model = in_saved_dtype(model, cfg.hf_config)  # the init's config.json, read by loop_config
        model.save_pretrained(out, safe_serialization=True)
        if spec.pretrain.init:
            copy_init_side_files(storage, spec.pretrain.init, out)
        else:
            download_tokenizer(storage, tokenizer_uri(spec), out)
        tokenizer = AutoTokenizer.from_pretrained(out)
        held_out = split_texts(spec, storage, "val")  # read once: the evaluation's blocks and the samples' prompts
        val = local_blocks(spec, storage, "val", spec.pretrain.seq_len, held_out)
        evaluation = {
            **{k: v for k, v in engine_eval.items() if k.startswith("eval_")},
            "export_eval_loss": plain_eval_loss(model, val, cfg),
            "step": state["step"],
            "resumes": state.get("resumes", []),
        }
        texts = samples(model, tokenizer, spec.pretrain.objective, sample_prompts(held_out))
        title = f"{spec.name}: {spec.pretrain.model_family} pretraining"
        write_run_artifacts(out, state["history"], title, evaluation, texts)
        publish_directory(
            storage,
            out,
            export_uri,
            kind=f"model/hf-{'causal' if spec.pretrain.objective == 'clm' else 'masked'}-lm",
            spec_hash=spec_hash(spec, "data", "pretrain"),
            inputs={k: str(v) for k, v in inputs.items()},
            meta={"eval": evaluation, "params": sum(p.numel() for p in model.parameters())},
        )
    for line in texts:
        log(f"[pretrain] sample: {line!r}")
    log(f"[pretrain] exported to {export_uri}: {json.dumps(evaluation)}")
    return export_uri, evaluation
