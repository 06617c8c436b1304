"""``aigc feedback finetune``: the closed loop's last step. Every member of the served ensemble
is fine-tuned on the ingested feedback examples (each batch mixes them with a replay of the
training split, so the members learn the corrections without forgetting the rest), and a new
version of the ensemble is committed with its parent and the feedback in its lineage. Serving
it again (``aigc serve run``) redeploys the members with the new weights."""

from __future__ import annotations

import torch
from torch import nn

from ..data.arrays import shard_arrays
from ..data.captions import encode_captions, fusion_arrays
from ..layout import ensemble_dir, feedback_shards_uri
from ..manifest import read_manifest
from ..models.fusion_training import as_tensors
from ..spec import ExperimentSpec
from ..spec.sections import FeedbackSpec
from ..storage import Storage
from .build import EnsembleReport, commit_ensemble, load_ensemble
from .members import Member


def finetune_member(model, feedback: dict, replay: dict, f: FeedbackSpec, seed: int = 0) -> dict[str, torch.Tensor]:
    """Adam on batches of ``feedback_fraction`` feedback rows (drawn with replacement) and the
    rest replayed training rows; returns the new state dict."""
    torch.manual_seed(seed)
    fb, rp = as_tensors(feedback), as_tensors(replay)
    n_fb = max(1, round(f.batch_size * f.feedback_fraction))
    n_rp = f.batch_size - n_fb
    gen = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.Adam(model.parameters(), lr=f.lr)
    model.train()
    for _ in range(f.steps):
        a = torch.randint(0, len(fb["label"]), (n_fb,), generator=gen)
        b = torch.randint(0, len(rp["label"]), (n_rp,), generator=gen)
        width = max(fb["input_ids"].shape[1], rp["input_ids"].shape[1])
        ids = torch.cat([_pad(fb["input_ids"][a], width), _pad(rp["input_ids"][b], width)])
        mask = torch.cat([_pad(fb["attention_mask"][a], width), _pad(rp["attention_mask"][b], width)])
        logits = model(torch.cat([fb["image"][a], rp["image"][b]]), ids, mask)
        loss = nn.functional.cross_entropy(logits, torch.cat([fb["label"][a], rp["label"][b]]))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    model.eval()
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _pad(x: torch.Tensor, width: int) -> torch.Tensor:
    # Token ids and masks padded with 0: the mask keeps padded positions out of every operator.
    return nn.functional.pad(x, (0, width - x.shape[1]))


def refresh_from_feedback(spec: ExperimentSpec, storage: Storage, log=print) -> EnsembleReport:
    """Fine-tune every member on the ingested feedback and commit the next ensemble version."""
    uri, fb_uri = ensemble_dir(spec), feedback_shards_uri(spec)
    previous = read_manifest(storage, uri)
    if previous is None:
        raise FileNotFoundError(f"no committed ensemble at {uri}: run `aigc ensemble build` first")
    feedback = read_manifest(storage, fb_uri)
    if feedback is None:
        raise FileNotFoundError(f"no feedback shards at {fb_uri}: run `aigc feedback ingest` first")
    ens = load_ensemble(storage, uri)
    rows = shard_arrays(storage, fb_uri, "train")
    members = []
    for i, (name, model, config, entry) in enumerate(
        zip(ens.names, ens.models, ens.configs, ens.doc["members"], strict=True)
    ):
        ids, mask, _ = encode_captions(list(rows["text"]), config["tokenizer"], storage, int(config["max_text_tokens"]))
        fb = {"image": rows["image"], "input_ids": ids, "attention_mask": mask, "label": rows["label"]}
        replay, _ = fusion_arrays(spec, storage, "train", config["tokenizer"], int(config["max_text_tokens"]))
        state = finetune_member(model, fb, replay, spec.feedback, seed=spec.ensemble.seed * 100 + i)
        lineage = {**entry["lineage"], "finetuned_on_feedback": fb_uri, "feedback_fingerprint": feedback.fingerprint}
        members.append(Member(name, entry["source"], config, state, lineage))
    log(f"[feedback] fine-tuned {len(members)} members on {len(rows['label'])} corrected examples")
    parent = {"ensemble": uri, "fingerprint": previous.fingerprint, "feedback": fb_uri}
    inputs = {**previous.inputs, fb_uri: feedback.fingerprint}
    return commit_ensemble(spec, storage, members, inputs, parent=parent, log=log)
