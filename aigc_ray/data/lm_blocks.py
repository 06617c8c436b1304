"""Language-model samples: the corpus tokenized and packed into fixed-length blocks.

Ray Data tokenizes the corpus shards in parallel (``map_batches``) with order preserved; the
documents are joined with ``</s>`` and cut into ``seq_len``-token blocks, dropping the tail.
The same packing runs in one process without Ray (``local_blocks``, the same blocks): for a
corpus small enough to tokenize in the driver, for torchrun and for evaluation.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

from ..layout import corpus_uri, pretrain_tokenizer_uri
from ..manifest import read_manifest
from ..spec import ExperimentSpec
from ..storage import S3Settings, Storage, StorageError
from .shards import split_table
from .stream import read_split
from .tokenizer import load_fast_tokenizer, special_tokens


def tokenize_documents(batch: dict, s3: S3Settings, tokenizer_uri: str, eos_token: str = "</s>") -> dict:
    """Token ids of each document, framed as the tokenizer frames a text (a Llama-style ``<s>``
    first, BERT's ``[CLS] … [SEP]``; ours adds nothing), then ``eos_token`` unless the frame
    already ends with it (a variable-length list column)."""
    tok = load_fast_tokenizer(s3, tokenizer_uri)
    eos = tok.token_to_id(eos_token)
    encodings = tok.encode_batch([str(t) for t in batch["text"]])
    tokens = np.empty(len(encodings), dtype=object)  # ragged: one array per document
    for i, enc in enumerate(encodings):
        ids = enc.ids if enc.ids and enc.ids[-1] == eos else [*enc.ids, eos]
        tokens[i] = np.array(ids, dtype=np.int32)
    return {"tokens": tokens}


def pack_blocks(token_arrays: Iterable[np.ndarray], block_len: int) -> np.ndarray:
    """Concatenate token arrays in order and cut into rows of ``block_len`` (tail dropped)."""
    arrays = [np.asarray(a, dtype=np.int32) for a in token_arrays]
    flat = np.concatenate(arrays) if arrays else np.zeros(0, dtype=np.int32)
    n = len(flat) // block_len
    return flat[: n * block_len].reshape(n, block_len)


def _tokenizer_kwargs(spec: ExperimentSpec, storage: Storage) -> dict:
    """Where pretraining's tokenizer is (``pretrain.init``'s own, else ours) and the token that
    ends a document: its end-of-text, or for an encoder without one (BERT) its separator."""
    uri = pretrain_tokenizer_uri(spec)
    names = special_tokens(storage, uri) if spec.pretrain.init else {"eos": "</s>"}
    eos = names["eos"] or names.get("sep")
    if eos is None:
        raise StorageError(f"{uri}: the tokenizer names no eos or sep token (documents are separated by one)")
    return {"s3": storage.s3, "tokenizer_uri": uri, "eos_token": eos}


def corpus_token_dataset(spec: ExperimentSpec, storage: Storage, split: str):
    """Ray Dataset of the split's documents as token arrays, in a fixed order (no shuffling:
    the training sampler shuffles blocks deterministically itself)."""
    unshuffled = spec.model_copy(deep=True)
    unshuffled.data.shuffle = "none"
    ds = read_split(unshuffled, storage, split, part="corpus", columns=["id", "text"])
    ds.context.enable_progress_bars = False  # runs inside every Train worker: bars would interleave
    return ds.map_batches(
        tokenize_documents,
        batch_format="numpy",
        fn_kwargs=_tokenizer_kwargs(spec, storage),
    )


def corpus_bytes(storage: Storage, uri: str) -> int:
    """The size of a corpus shard set (all splits), from its manifest."""
    manifest = read_manifest(storage, uri)
    if manifest is None:
        raise StorageError(f"{uri}: no corpus shard set here (no manifest)")
    return sum(entry.bytes for entry in manifest.files.values())


def blocks_from_dataset_iterator(iterator, block_len: int) -> np.ndarray:
    """Pack the token arrays a Ray Data iterator yields (inside a Train worker)."""
    arrays: list[np.ndarray] = []
    for batch in iterator.iter_batches(batch_format="numpy", batch_size=1024):
        arrays.extend(batch["tokens"])
    return pack_blocks(arrays, block_len)


def split_texts(spec: ExperimentSpec, storage: Storage, split: str) -> list[str]:
    """A split's documents, without Ray: the corpus shards read in file order."""
    return split_table(storage, corpus_uri(spec), split, ["text"])["text"].to_pylist()


def split_tokens(spec: ExperimentSpec, storage: Storage, split: str, texts: list[str] | None = None) -> np.ndarray:
    """A split's documents as token arrays, without Ray, tokenized here (``texts``: the split's
    documents when the caller has read them already)."""
    texts = split_texts(spec, storage, split) if texts is None else texts
    return tokenize_documents({"text": texts}, **_tokenizer_kwargs(spec, storage))["tokens"]


def local_blocks(
    spec: ExperimentSpec, storage: Storage, split: str, block_len: int, texts: list[str] | None = None
) -> np.ndarray:
    """The same blocks without Ray: read the shards in file order and tokenize in-process."""
    return pack_blocks(split_tokens(spec, storage, split, texts), block_len)
