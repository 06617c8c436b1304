"""Benchmark: the served language model's decode, reading each token once vs the whole text again.

``LMEnsemble`` decodes token by token. Each step used to run the members over the whole text so
far (prompt + answer, up to the context); now the members keep their key/value caches and read
only the new token. Side by side, in one process, on the same GPT-2-shaped model (random weights:
the cost does not depend on them) and the same prompt: the tokens/s of a greedy answer both ways,
checked to be the same tokens, for a short and a long prompt and for a two-member ensemble. One
line per comparison with its ratio (cached / from scratch).

    python bench/lm_decode.py [--layers 6] [--width 384] [--tokens 64]
"""

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def from_scratch(lm, prompt: str, tokens: int) -> list[int]:
    """The decode as it was: every step reads the whole window again (greedy, no stop)."""
    import torch

    ids = lm.prompt_ids(prompt)
    out = []
    for _ in range(tokens):
        token = int(lm.next_log_probs(torch.tensor([ids[-lm.context :]])).argmax())
        ids.append(token)
        out.append(token)
    return out


def cached(lm, prompt: str, tokens: int) -> list[int]:
    """The decode as ``LMEnsemble.decode`` runs it now (greedy, no stop)."""
    from aigc_ray.ensemble.lm import _DecodeState

    ids, state = lm.prompt_ids(prompt), _DecodeState()
    out = []
    for _ in range(tokens):
        token = int(lm._cached_log_probs(ids, state).argmax())
        ids.append(token)
        out.append(token)
    return out


def timed(fn, *args) -> tuple[float, list[int]]:
    fn(*args)  # warm up
    best, result = float("inf"), None
    for _ in range(3):
        t = time.perf_counter()
        result = fn(*args)
        best = min(best, time.perf_counter() - t)
    return best, result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--layers", type=int, default=6)
    parser.add_argument("--width", type=int, default=384)
    parser.add_argument("--tokens", type=int, default=64)
    args = parser.parse_args()

    import torch
    from transformers import GPT2Config, GPT2LMHeadModel
    from transformers.utils import logging as hf_logging

    from aigc_ray.data.tokenizer import train_tokenizer
    from aigc_ray.ensemble.lm import LMEnsemble

    hf_logging.disable_progress_bar()  # the terminal shows the figures, not weight-loading bars
    torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))
    words = "a handwritten seven three zero circle square triangle caption for the of digit".split()
    corpus = [" ".join(words[(i * 7 + j) % len(words)] for j in range(40)) for i in range(200)]
    tok = train_tokenizer(corpus, 512)
    with tempfile.TemporaryDirectory() as tmp:
        folders = []
        for seed in (0, 1):
            torch.manual_seed(seed)
            config = GPT2Config(vocab_size=len(tok), n_positions=1024, n_layer=args.layers, n_head=6, n_embd=args.width)
            folder = Path(tmp, f"lm{seed}")
            GPT2LMHeadModel(config).save_pretrained(folder)
            tok.save_pretrained(folder)
            folders.append(str(folder))
        one, two = LMEnsemble(folders[:1]), LMEnsemble(folders)
        short = "Caption for a seven:"
        long = " ".join(corpus[:20])[:2400]  # ~500 tokens: a RAG prompt, a long chat
        print(
            f"GPT-2 shape {args.layers} layers x {args.width}, {args.tokens} greedy tokens, "
            f"{os.environ['OMP_NUM_THREADS']} thread(s)"
        )
        for name, lm, prompt in (("short prompt", one, short), ("long prompt", one, long), ("2 members", two, long)):
            n_prompt = len(lm.prompt_ids(prompt))
            base_s, base_ids = timed(from_scratch, lm, prompt, args.tokens)
            new_s, new_ids = timed(cached, lm, prompt, args.tokens)
            same = "same tokens" if base_ids == new_ids else "DIFFERENT tokens"
            print(
                f"decode {name} ({n_prompt} prompt tokens): cached {args.tokens / new_s:,.1f} tok/s vs "
                f"from scratch {args.tokens / base_s:,.1f} tok/s, ratio {base_s / new_s:.2f} ({same})"
            )


if __name__ == "__main__":
    main()
