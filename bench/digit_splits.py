"""What the fusion benchmarks share: the embedded digits built under a work folder, their train
and test splits as the fusion classifier reads them, the starting config, and captions swapped
for one that names nothing."""

from __future__ import annotations

import tempfile
from dataclasses import dataclass


@dataclass
class DigitSplits:
    spec: object
    storage: object
    train: dict
    test: dict
    config: dict  # fusion_config of the spec: a trial's starting settings
    encode: object  # texts -> (input_ids, attention_mask)

    def vague(self, rows: dict) -> dict:
        """``rows`` with every caption replaced by one that names no digit (the image alone)."""
        from aigc_ray.data.digits import WORDS, baseline_caption

        ids, mask = self.encode([baseline_caption(WORDS)] * len(rows["label"]))
        return {**rows, "input_ids": ids, "attention_mask": mask}


def digit_splits(work: str | None, prefix: str, *overrides: str) -> DigitSplits:
    """The digits built under ``work`` (without one, a new temporary folder whose name starts
    with ``prefix``), the spec taking ``overrides``."""
    from aigc_ray.data.build import build_data
    from aigc_ray.data.captions import caption_tokenizer, encode_captions, fusion_arrays
    from aigc_ray.models.fusion_training import fusion_config
    from aigc_ray.spec import load_spec
    from aigc_ray.storage import Storage, join

    spec = load_spec(None, [f"storage.root={work or tempfile.mkdtemp(prefix=prefix)}", *overrides])
    storage = Storage.from_spec(spec.storage)
    built = build_data(spec, storage, log=lambda *_: None)
    tokenizer_uri = join(built.root, "tokenizer")
    tokenizer, limit = caption_tokenizer(spec, tokenizer_uri), spec.fusion.max_text_tokens
    train, vocab = fusion_arrays(spec, storage, "train", tokenizer, limit)
    test, _ = fusion_arrays(spec, storage, "test", tokenizer, limit)

    def encode(texts: list[str]):
        return encode_captions(texts, tokenizer, storage, limit)[:2]

    return DigitSplits(spec, storage, train, test, fusion_config(spec, vocab, tokenizer_uri), encode)
