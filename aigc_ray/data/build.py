"""``aigc data build``: the embedded dataset, the corpus and the tokenizer, written as artifacts.

Layout under the spec's data URI::

    multimodal/  part-*.parquet + _manifest.json   (multimodal/v1: captioned digits)
    corpus/      part-*.parquet + _manifest.json   (text/v1: the LM pretraining corpus)
    tokenizer/   tokenizer.json, ... + _manifest.json

A part whose manifest records the same build hash is up to date and is skipped, so re-running
the command is cheap and never rewrites good data.
"""

from __future__ import annotations

import hashlib
import json
import sys
from dataclasses import dataclass
from pathlib import Path

from ..layout import data_root
from ..manifest import Manifest, read_manifest
from ..spec import ExperimentSpec
from ..storage import Storage, join
from .corpus import corpus_batches
from .digits import digit_batches
from .schema import MULTIMODAL_V1, TEXT_V1
from .shards import split_table, write_shards
from .tokenizer import save_tokenizer, train_tokenizer

DATASET_VERSION = "digits-captions-v1"
# The modules whose code determines the built bytes: their source is part of the build hash,
# so editing a caption template rebuilds the data instead of silently keeping the old one.
BUILDER_MODULES = ("digits.py", "corpus.py", "stdlib_docs.py", "schema.py", "images.py", "shards.py", "tokenizer.py")
BUILD_FIELDS = (
    "dataset",
    "seed",
    "rows_per_shard",
    "repeat",
    "splits",
    "caption_noise",
    "corpus_max_chars",
    "vocab_size",
)


@dataclass
class BuiltData:
    """The three committed artifacts and which of them this call actually (re)wrote."""

    root: str
    multimodal: Manifest
    corpus: Manifest
    tokenizer: Manifest
    written: list[str]


def build_hash(spec: ExperimentSpec) -> str:
    """Hash of everything that determines the built bytes (not batch size or shuffling)."""
    fields = spec.data.model_dump(mode="json", include=set(BUILD_FIELDS))
    here = Path(__file__).parent
    code = hashlib.sha256(b"".join((here / name).read_bytes() for name in BUILDER_MODULES)).hexdigest()
    key = {"fields": fields, "version": DATASET_VERSION, "code": code, "python": sys.version_info[:2]}
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()


def _texts(storage: Storage, uri: str) -> list[str]:
    """The train-split texts of a shard set, for tokenizer training."""
    return split_table(storage, uri, "train", ["text"])["text"].to_pylist()


def build_data(spec: ExperimentSpec, storage: Storage, force: bool = False, log=print) -> BuiltData:
    """Build (or confirm up to date) the multimodal shards, the corpus and the tokenizer."""
    d = spec.data
    root = data_root(spec)
    h = build_hash(spec)
    fractions = d.splits.model_dump()
    written: list[str] = []

    def current(part: str) -> Manifest | None:
        existing = read_manifest(storage, join(root, part))
        if existing is not None and existing.spec_hash == h and not force:
            log(f"  {part:<10} up to date ({join(root, part)})")
            return existing
        return None

    multimodal = current("multimodal")
    if multimodal is None:
        batches = digit_batches(d.seed, fractions, d.caption_noise.vague, d.caption_noise.wrong, d.repeat)
        multimodal = write_shards(
            storage,
            join(root, "multimodal"),
            batches,
            MULTIMODAL_V1,
            d.rows_per_shard,
            h,
            meta={"dataset": d.dataset, "seed": d.seed},
        )
        written.append("multimodal")
        log(
            f"  multimodal wrote {multimodal.meta['rows']} rows in {len(multimodal.files)} shards: {multimodal.meta['splits']}"
        )

    corpus = current("corpus")
    if corpus is None:
        batches = corpus_batches(d.seed, fractions, d.corpus_max_chars)
        corpus = write_shards(
            storage,
            join(root, "corpus"),
            batches,
            TEXT_V1,
            d.rows_per_shard,
            h,
            meta={"python": ".".join(map(str, sys.version_info[:3]))},
        )
        written.append("corpus")
        log(
            f"  corpus     wrote {corpus.meta['rows']} documents in {len(corpus.files)} shards: {corpus.meta['splits']}"
        )

    tokenizer = current("tokenizer")
    inputs = {join(root, "corpus"): corpus.fingerprint, join(root, "multimodal"): multimodal.fingerprint}
    if tokenizer is not None and tokenizer.inputs != inputs:
        tokenizer = None  # its training data changed underneath it
    if tokenizer is None:
        texts = _texts(storage, join(root, "corpus")) + _texts(storage, join(root, "multimodal"))
        tokenizer = save_tokenizer(storage, join(root, "tokenizer"), train_tokenizer(texts, d.vocab_size), h, inputs)
        written.append("tokenizer")
        log(f"  tokenizer  trained byte-level BPE, vocab {tokenizer.meta['vocab_size']}")
    return BuiltData(root, multimodal, corpus, tokenizer, written)
