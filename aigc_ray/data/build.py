"""``aigc data build``: the multimodal data, the corpus and the tokenizer, written as artifacts.

Layout under the spec's data URI::

    multimodal/  part-*.parquet + _manifest.json   (multimodal/v1: an embedded set, or data.source imported)
    corpus/      part-*.parquet + _manifest.json   (text/v1: the embedded corpus, or data.corpus imported)
    tokenizer/   tokenizer.json, ... + _manifest.json

The multimodal manifest records the class names (index = label) and the image shape that every
later stage sizes its models from. A part whose manifest records the same build hash (for
imported data: also the same source listing) is up to date and is skipped, so re-running the
command is cheap and never rewrites good data.
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
from .corpus_import import import_corpus_batches
from .digits import IMAGE_SIDE as DIGITS_SIDE
from .digits import WORDS, digit_batches
from .image_import import import_images, source_fingerprint
from .image_sources import SourceError
from .schema import MULTIMODAL_V1, TEXT_V1
from .shapes import CLASSES as SHAPE_CLASSES
from .shapes import IMAGE_SIDE as SHAPES_SIDE
from .shapes import shape_batches
from .shards import ShardError, split_table, verify_shards, write_shards
from .tokenizer import save_tokenizer, train_tokenizer

DATASET_VERSION = "digits-captions-v1"
# The modules whose code determines the built bytes: their source is part of the build hash,
# so editing a caption template rebuilds the data instead of silently keeping the old one.
BUILDER_MODULES = (
    "digits.py",
    "shapes.py",
    "corpus.py",
    "corpus_import.py",
    "image_import.py",
    "image_sources.py",
    "stdlib_docs.py",
    "schema.py",
    "images.py",
    "shards.py",
    "tokenizer.py",
)
BUILD_FIELDS = (
    "dataset",
    "seed",
    "rows_per_shard",
    "repeat",
    "splits",
    "caption_noise",
    "corpus_max_chars",
    "vocab_size",
    "source",
    "image_size",
    "on_bad_row",
    "corpus",
)
# The embedded sets: (record batches, class names, image shape)
EMBEDDED = {
    "digits": (digit_batches, WORDS, [DIGITS_SIDE, DIGITS_SIDE, 1]),
    "shapes": (shape_batches, SHAPE_CLASSES, [SHAPES_SIDE, SHAPES_SIDE, 3]),
}


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
    if spec.data.source and spec.data.source.columns.text is None:  # captions written from the template
        fields["prompt_template"] = spec.data.prompt_template
    here = Path(__file__).parent
    code = hashlib.sha256(b"".join((here / name).read_bytes() for name in BUILDER_MODULES)).hexdigest()
    key = {"fields": fields, "version": DATASET_VERSION, "code": code, "python": sys.version_info[:2]}
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()


def corpus_fingerprint(storage: Storage, files: list[str], pattern: str) -> str:
    """The corpus files' paths, sizes and modification times (one listing, no reads)."""
    fingerprint = storage.listing_fingerprint(files)
    if fingerprint is None:
        raise SourceError(f"data.corpus: no files match {pattern}")
    return fingerprint


def _texts(storage: Storage, uri: str) -> list[str]:
    """The train-split texts of a shard set, for tokenizer training."""
    return split_table(storage, uri, "train", ["text"])["text"].to_pylist()


def build_data(
    spec: ExperimentSpec, storage: Storage, force: bool = False, log=print, say_up_to_date: bool = True
) -> BuiltData:
    """Build (or confirm up to date) the multimodal shards, the corpus and the tokenizer.
    ``say_up_to_date``: also log the parts that were up to date (a stage that only makes sure of
    its data says nothing then: it is the `data` command's answer, not the stage's news)."""
    d = spec.data
    root = data_root(spec)
    h = build_hash(spec)
    fractions = d.splits.model_dump()
    written: list[str] = []

    # The user's sources are listed first (one listing each, no reads): a missing or empty one is
    # an error before anything is written, and the listing says whether an import is up to date.
    sources: dict[str, tuple[str, str]] = {}  # part -> (source URI, its fingerprint)
    corpus_files: list[str] = []
    if d.source is not None:
        sources["multimodal"] = (d.source.uri, source_fingerprint(storage, d.source.uri))
    if d.corpus is not None:
        corpus_files = storage.glob(d.corpus.uri)
        sources["corpus"] = (d.corpus.uri, corpus_fingerprint(storage, corpus_files, d.corpus.uri))

    fresh: list[str] = []  # the parts found up to date, reported in one line

    def current(part: str) -> Manifest | None:
        """The committed part if it was built from this spec (and this source, unchanged)."""
        existing = read_manifest(storage, join(root, part))
        if existing is None or existing.spec_hash != h or force:
            return None
        if part in sources and existing.inputs.get(sources[part][0]) != sources[part][1]:
            return None  # the user's data changed since it was imported
        if part != "tokenizer":  # what is skipped is checked: sizes, then each file's hash
            try:
                verify_shards(storage, join(root, part), existing)
            except ShardError as exc:
                log(f"  {part:<10} {exc.uri}: {exc.problem}: rebuilding")
                return None
        fresh.append(part)
        return existing

    multimodal = current("multimodal")
    if multimodal is None:
        if d.source is not None:
            inputs = dict([sources["multimodal"]])
            multimodal = import_images(spec, storage, join(root, "multimodal"), h, inputs, log=log)
        else:
            make_batches, classes, shape = EMBEDDED[d.dataset]
            batches = make_batches(d.seed, fractions, d.caption_noise.vague, d.caption_noise.wrong, d.repeat)
            multimodal = write_shards(
                storage,
                join(root, "multimodal"),
                batches,
                MULTIMODAL_V1,
                d.rows_per_shard,
                h,
                meta={"dataset": d.dataset, "seed": d.seed, "classes": list(classes), "image_shape": shape},
            )
            log(
                f"  multimodal wrote {multimodal.meta['rows']} rows in {len(multimodal.files)} shards: "
                f"{multimodal.meta['splits']}"
            )
        written.append("multimodal")

    corpus = current("corpus")
    if corpus is None:
        if d.corpus is not None:
            inputs = dict([sources["corpus"]])
            batches = import_corpus_batches(
                storage, corpus_files, d.seed, fractions, d.corpus_max_chars, text_field=d.corpus.text_field
            )
            meta = {"source": d.corpus.uri, "files": len(corpus_files)}
        else:
            inputs, batches = {}, corpus_batches(d.seed, fractions, d.corpus_max_chars)
            meta = {"python": ".".join(map(str, sys.version_info[:3]))}
        corpus = write_shards(storage, join(root, "corpus"), batches, TEXT_V1, d.rows_per_shard, h, inputs, meta)
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
    if fresh and say_up_to_date:
        log(f"  {'data':<10} up to date: {', '.join(fresh)} ({root})")
    return BuiltData(root, multimodal, corpus, tokenizer, written)
