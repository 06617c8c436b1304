"""A user's base model brings its own tokenizer, and tokenizers frame texts differently: Llama's
puts ``<s>`` first, BERT's wraps a text in ``[CLS] … [SEP]`` and has no end-of-text token, GPT-2's
and ours add nothing. Fine-tuning examples and pretraining blocks are built in the base's own
frame, never with a start token in the middle of a sequence (no Ray here: the quick subset)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from base_models import TEXTS, WORDS, llama_style_tokenizer

from aigc_ray.data.lm_blocks import _tokenizer_kwargs, tokenize_documents
from aigc_ray.data.tokenizer import special_tokens, train_tokenizer
from aigc_ray.storage import Storage
from aigc_ray.train.finetune import base_tokenizer, caption_examples, prompt_and_caption_ids


def test_a_llama_style_caption_has_one_start_token_and_the_loss_skips_it(tmp_path):
    llama_style_tokenizer().save_pretrained(tmp_path)
    tokenizer = base_tokenizer(str(tmp_path))  # as fine-tuning loads it: no pad token, so it pads with </s>
    bos, eos = tokenizer.bos_token_id, tokenizer.eos_token_id
    prompt, caption = prompt_and_caption_ids(tokenizer, "Caption for a seven:", "a handwritten 7")
    assert prompt == tokenizer("Caption for a seven:")["input_ids"] and prompt[0] == bos  # as generation sees it
    assert bos not in caption and caption[-1] == eos
    assert tokenizer.decode(caption, skip_special_tokens=True) == "a handwritten 7"

    rows = [{"text": "a handwritten 7", "label": 7, "caption_kind": "exact"}]
    ex = caption_examples(rows, tokenizer, 24, tuple(WORDS))
    ids, labels = ex["input_ids"][0], ex["labels"][0]
    assert list(ids[: ex["attention_mask"][0].sum()]).count(bos) == 1 and ids[0] == bos
    learned = labels[labels != -100]
    assert bos not in learned and list(learned) == caption


def test_our_own_tokenizer_frames_captions_as_before():
    """Ours (byte-level BPE, no post-processor): the caption ids are the caption's own encoding."""
    tokenizer = train_tokenizer(TEXTS, 300)
    prompt, caption = prompt_and_caption_ids(tokenizer, "Caption for a two:", "a neat 2")
    assert prompt == tokenizer("Caption for a two:")["input_ids"]
    assert caption == [*tokenizer(" a neat 2")["input_ids"], tokenizer.eos_token_id]


@pytest.mark.parametrize(
    ("make", "first", "last"),
    [
        ("ours", None, "</s>"),  # nothing added by the tokenizer; the document ends with </s>
        ("llama", "<s>", "</s>"),  # <s> document </s>
        ("bert", "[CLS]", "[SEP]"),  # [CLS] document [SEP]: no eos, and no second [SEP]
    ],
)
def test_pretraining_documents_keep_the_tokenizers_frame_and_end_once(tmp_path, make, first, last):
    from transformers import AutoTokenizer

    from aigc_ray.data.tokenizer import minilm_path
    from aigc_ray.spec import load_spec

    if make == "bert":
        tokenizer = AutoTokenizer.from_pretrained(minilm_path())  # a real BERT WordPiece tokenizer
    else:
        tokenizer = llama_style_tokenizer() if make == "llama" else train_tokenizer(TEXTS, 300)
    folder = tmp_path / "base"  # a model folder as pretrain.init names it: config + tokenizer
    tokenizer.save_pretrained(folder)
    causal = make != "bert"
    architecture = "LlamaForCausalLM" if causal else "BertForMaskedLM"
    (folder / "config.json").write_text(json.dumps({"architectures": [architecture]}))
    objective = "clm" if causal else "mlm"
    spec = load_spec(None, [f"storage.root={tmp_path}", f"pretrain.objective={objective}", f"pretrain.init={folder}"])
    storage = Storage.from_spec(spec.storage)
    if make != "ours":
        assert special_tokens(storage, str(folder))["eos" if causal else "sep"] == last
    assert _tokenizer_kwargs(spec, storage)["eos_token"] == last  # what ends a document

    long = " ".join(["seven"] * 300)  # past the 128 that MiniLM's tokenizer.json pads and cuts to
    docs = np.array(["the digit seven", "a handwritten two", long])
    out = tokenize_documents({"text": docs}, None, str(folder), last)
    assert len(out["tokens"][2]) >= 300  # whole, not truncated
    for ids in out["tokens"]:
        tokens = tokenizer.convert_ids_to_tokens([int(i) for i in ids])
        assert tokens[-1] == last and tokens[:-1].count(last) == 0
        assert tokenizer.pad_token is None or tokenizer.pad_token not in tokens  # nothing padded
        if first:
            assert tokens[0] == first and tokens.count(first) == 1
