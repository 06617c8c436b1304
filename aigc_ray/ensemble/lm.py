"""Causal language models that share a tokenizer, decoded together: each step's next-token
distribution is the mean of the members' log-probabilities (``combine.average_log_probs``)."""

from __future__ import annotations

import inspect
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np
import torch

from ..spec.training import learned_positions
from .combine import average_log_probs


@dataclass
class TokenScores:
    """Tokens with the ensemble's log-probability of each (before temperature and top_p) and,
    when asked for, the ``top`` most likely tokens at its place as (id, log-probability) pairs.
    A text's first token has none (``None``): nothing came before it."""

    ids: list[int] = field(default_factory=list)
    logprobs: list[float | None] = field(default_factory=list)
    top: list[list[tuple[int, float]] | None] = field(default_factory=list)

    def add(self, token: int, log_probs: np.ndarray | None, top: int) -> None:
        self.ids.append(token)
        if log_probs is None:
            self.logprobs.append(None)
            self.top.append(None)
            return
        self.logprobs.append(float(log_probs[token]))
        best = np.argsort(-log_probs)[:top] if top else []
        self.top.append([(int(i), float(log_probs[i])) for i in best])


@dataclass
class Completion:
    text: str
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str  # "stop" (a stop string or end of text) | "length"
    # with ``logprobs``: the answer's tokens, and the end-of-text token that ended it (not in
    # ``text``, as OpenAI lists it: a scoring client reads the last token's place as the answer's)
    scores: TokenScores | None = None


@dataclass
class _DecodeState:
    """One decode's key/value caches (one per member) and how many of its tokens they hold."""

    caches: list | None = None
    held: int = 0


class LMEnsemble:
    """Members are local HF export folders; the first one's tokenizer is used for all."""

    def __init__(self, folders: list[str], weights: list[float] | None = None, device="cpu"):
        from transformers import AutoModelForCausalLM, AutoTokenizer

        if not folders:
            raise ValueError("an LM ensemble needs at least one model")
        self.tokenizer = AutoTokenizer.from_pretrained(folders[0])
        self.device = torch.device(device)
        # on a GPU in the dtype they were saved in (a bf16 export stays bf16); on a CPU in float32,
        # where bf16 matmuls are slower on most CPUs and transformers 5 would keep a bf16 export bf16
        dtype = "auto" if self.device.type == "cuda" else torch.float32
        self.models = [AutoModelForCausalLM.from_pretrained(f, dtype=dtype).eval().to(self.device) for f in folders]
        vocab = {len(AutoTokenizer.from_pretrained(f)) for f in folders}
        if len(vocab) != 1:
            raise ValueError(f"language models must share a tokenizer; vocabulary sizes differ: {sorted(vocab)}")
        self.weights = weights
        self.context = min(learned_positions(m.config.to_dict()) for m in self.models)
        self.stop_ids = end_of_text_ids(self.tokenizer, self.models)
        self._cache_kwargs = [_cache_kwarg(m) for m in self.models]  # read once, not every token

    def prompt_ids(self, prompt: str | list[int]) -> list[int]:
        """The prompt's token ids as the model reads them: framed by its tokenizer (Llama's
        ``<s>`` first), unless the text already starts with that token — a chat template that
        writes it itself (Llama 3's) would otherwise give the model two. Token ids (a client that
        tokenized with this model's tokenizer, as evaluation harnesses do) are read as sent."""
        if not isinstance(prompt, str):
            return self.checked_ids(prompt)
        bos = self.tokenizer.bos_token
        written = bool(bos) and prompt.startswith(bos)
        return list(self.tokenizer(prompt, add_special_tokens=not written)["input_ids"])

    def checked_ids(self, ids: list[int]) -> list[int]:
        """``ids`` if every one is a token of this vocabulary, else a ValueError naming the first that is not."""
        vocab = len(self.tokenizer)
        for i, t in enumerate(ids):
            if not 0 <= t < vocab:
                raise ValueError(f"token id {t} (at {i}) is not in this model's vocabulary of {vocab}")
        return list(ids)

    def score(self, ids: list[int], top: int = 0) -> TokenScores:
        """The ensemble's log-probability of each token of ``ids`` given those before it (the
        first has none), read in one pass: what a client asks for with ``echo`` to score a text."""
        if len(ids) > self.context:
            raise ValueError(
                f"the prompt is {len(ids)} tokens; this model scores at most {self.context} (its learned positions)"
            )
        with torch.no_grad():
            batch = torch.tensor([ids], device=self.device)
            per_model = [
                torch.log_softmax(m(input_ids=batch).logits[0].double(), -1).cpu().numpy() for m in self.models
            ]
        mixed = average_log_probs(per_model, self.weights)  # (T, V): row t predicts token t + 1
        scores = TokenScores()
        for t, token in enumerate(ids):
            scores.add(token, mixed[t - 1] if t else None, top)
        return scores

    def next_log_probs(self, ids: torch.Tensor) -> np.ndarray:
        """The ensemble's next-token log-probabilities after ``ids`` (1, T), read from scratch."""
        with torch.no_grad():
            ids = ids.to(self.device)
            per_model = [
                torch.log_softmax(m(input_ids=ids).logits[0, -1].double(), -1).cpu().numpy() for m in self.models
            ]
        return average_log_probs(per_model, self.weights)

    def _cached_log_probs(self, ids: list[int], state: _DecodeState) -> np.ndarray:
        """``next_log_probs`` of ``ids`` reading only the tokens the members' key/value caches do
        not hold yet: one token a step instead of the whole text again (a 500-token prompt was
        re-read for every token of the answer). Past the learned positions the window slides, so
        every step reads its window from scratch as before."""
        if len(ids) > self.context:
            state.caches, state.held = None, 0
            return self.next_log_probs(torch.tensor([ids[-self.context :]]))
        with torch.no_grad():
            new = torch.tensor([ids[state.held :]], device=self.device)
            caches = state.caches or [None] * len(self.models)
            outs = [
                m(input_ids=new, use_cache=True, **{kwarg: c})
                for m, kwarg, c in zip(self.models, self._cache_kwargs, caches, strict=True)
            ]
            per_model = [torch.log_softmax(o.logits[0, -1].double(), -1).cpu().numpy() for o in outs]
        state.caches, state.held = [_returned_cache(o) for o in outs], len(ids)
        return average_log_probs(per_model, self.weights)

    def complete(
        self,
        prompt: str,
        max_tokens: int = 32,
        temperature: float = 1.0,
        top_p: float = 1.0,
        stop: list[str] | None = None,
        seed: int | None = None,
        logprobs: int | None = None,
    ) -> Completion:
        """Sample (or, at temperature 0, take the arg-max) token by token until ``max_tokens``,
        the end-of-text token or a ``stop`` string (which is not returned). With ``logprobs``
        (0 or more alternatives per place) the answer's tokens come scored."""
        *_, done = self.decode(prompt, max_tokens, temperature, top_p, stop, seed, logprobs)
        return done

    def decode(
        self,
        prompt: str,
        max_tokens: int = 32,
        temperature: float = 1.0,
        top_p: float = 1.0,
        stop: list[str] | None = None,
        seed: int | None = None,
        logprobs: int | None = None,
    ) -> Iterator[str | Completion]:
        """``complete`` step by step: the text decoded so far after each token that did not end
        the answer, then the ``Completion`` (what a streaming server sends piece by piece)."""
        rng = np.random.default_rng(seed)
        prompt_ids = self.prompt_ids(prompt)
        if not prompt_ids:
            prompt_ids = [self.tokenizer.bos_token_id or self.tokenizer.eos_token_id]
        ids, new = list(prompt_ids), []
        scores = TokenScores() if logprobs is not None else None
        finish, state = "length", _DecodeState()
        for _ in range(max_tokens):
            log_probs = self._cached_log_probs(ids, state)
            token = _choose(log_probs, temperature, top_p, rng)
            if scores is not None:
                scores.add(token, log_probs, logprobs)
            if token in self.stop_ids:
                finish = "stop"
                break
            ids.append(token)
            new.append(token)
            text = self.tokenizer.decode(new, skip_special_tokens=True)
            cut = _first_stop(text, stop or [])
            if cut is not None:
                yield Completion(text[:cut], len(prompt_ids), len(new), "stop", _within(scores, self.tokenizer, cut))
                return
            yield text
        answer = self.tokenizer.decode(new, skip_special_tokens=True)
        yield Completion(answer, len(prompt_ids), len(new), finish, scores)


def _within(scores: TokenScores | None, tokenizer, chars: int) -> TokenScores | None:
    """The scored tokens that make up the first ``chars`` characters of the answer (the text a
    stop string cut), and the one the stop string begins in."""
    if scores is None:
        return None
    keep = 0
    while keep < len(scores.ids) and len(tokenizer.decode(scores.ids[:keep], skip_special_tokens=True)) < chars:
        keep += 1
    return TokenScores(scores.ids[:keep], scores.logprobs[:keep], scores.top[:keep])


def _cache_kwarg(model) -> str:
    """transformers 5.25 renamed a model's ``past_key_values`` argument ``cache`` (the old name
    goes in 5.40); earlier 5.x releases know only the old one."""
    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"


def _returned_cache(output):
    cache = getattr(output, "cache", None)
    return cache if cache is not None else output.past_key_values


def end_of_text_ids(tokenizer, models) -> frozenset[int]:
    """The tokens that end an answer: the tokenizer's eos and every id the models' generation
    configs end on (an instruct model's end of turn: Llama 3's ``<|eot_id|>``, Qwen's
    ``<|im_end|>``), so a chat answer stops at its turn's end, not at max_tokens."""
    ids = {tokenizer.eos_token_id}
    for m in models:
        eos = getattr(getattr(m, "generation_config", None), "eos_token_id", None)
        ids.update(eos if isinstance(eos, list | tuple) else [eos])
    return frozenset(i for i in ids if i is not None)


def _choose(log_probs: np.ndarray, temperature: float, top_p: float, rng: np.random.Generator) -> int:
    if temperature <= 0:
        return int(log_probs.argmax())
    logits = log_probs / temperature
    p = np.exp(logits - logits.max())
    p /= p.sum()
    if top_p < 1:  # nucleus: the smallest set of tokens whose mass reaches top_p
        order = np.argsort(-p)
        keep = order[: int(np.searchsorted(np.cumsum(p[order]), top_p) + 1)]
        mask = np.zeros_like(p)
        mask[keep] = p[keep]
        p = mask / mask.sum()
    return int(rng.choice(len(p), p=p))


def _first_stop(text: str, stops: list[str]) -> int | None:
    hits = [text.find(s) for s in stops if s and s in text]
    return min(hits) if hits else None
