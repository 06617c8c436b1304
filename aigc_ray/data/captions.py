"""Captions as the fusion classifier reads them: token ids and attention masks, from our BPE
tokenizer or MiniLM's own, beside the split's images and labels."""

from __future__ import annotations

import numpy as np

from ..spec import ExperimentSpec
from ..storage import Storage
from .arrays import digit_arrays
from .tokenizer import load_fast_tokenizer, minilm_tokenizer


def caption_tokenizer(spec: ExperimentSpec, tokenizer_uri: str) -> str:
    """What a model with this spec's text encoder reads: 'minilm' (MiniLM's own) or our tokenizer's URI."""
    return "minilm" if spec.fusion.text_encoder == "minilm" else tokenizer_uri


def encode_captions(texts: list[str], tokenizer: str, storage: Storage, limit: int = 32):
    """(input_ids, attention_mask) int64 arrays padded to the longest caption (at most ``limit``
    tokens), and the vocabulary size; ``tokenizer``: 'minilm' or the URI of our BPE tokenizer.
    Padding is masked out (attention_mask 0), so the width does not change a model's outputs."""
    if tokenizer == "minilm":
        tok = minilm_tokenizer()
        enc = tok(list(texts), padding="longest", truncation=True, max_length=limit, return_tensors="np")
        return enc["input_ids"].astype(np.int64), enc["attention_mask"].astype(np.int64), tok.vocab_size
    tok = load_fast_tokenizer(storage.s3, tokenizer)
    encoded = [e.ids[:limit] for e in tok.encode_batch(list(texts))]
    width = max(1, max(len(ids) for ids in encoded))
    ids = np.full((len(encoded), width), tok.token_to_id("<pad>"), dtype=np.int64)
    mask = np.zeros((len(encoded), width), dtype=np.int64)
    for i, row in enumerate(encoded):
        ids[i, : len(row)], mask[i, : len(row)] = row, 1
    return ids, mask, tok.get_vocab_size()


def caption_tokens(ids: list[int], tokenizer: str, storage: Storage) -> list[str]:
    """The tokens behind ``ids`` as the tokenizer spells them (to label per-token attributions)."""
    if tokenizer == "minilm":
        return minilm_tokenizer().convert_ids_to_tokens(list(ids))
    tok = load_fast_tokenizer(storage.s3, tokenizer)
    return [tok.decode([int(i)], skip_special_tokens=False) for i in ids]  # byte-level BPE: " seven", not "Ġseven"


def fusion_arrays(
    spec: ExperimentSpec, storage: Storage, split: str, tokenizer: str, limit: int = 32
) -> tuple[dict, int]:
    """A split as the fusion model's inputs: image, input_ids, attention_mask, label; and the vocabulary size."""
    rows = digit_arrays(spec, storage, split)
    ids, mask, vocab = encode_captions(list(rows["text"]), tokenizer, storage, limit)
    return {"image": rows["image"], "input_ids": ids, "attention_mask": mask, "label": rows["label"]}, vocab
