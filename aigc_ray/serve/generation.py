"""Text generation for the OpenAI routes: a conversation rendered to a prompt, and the language
models' decode streamed piece by piece (what ``LMEnsemble.complete`` answers at once)."""

from __future__ import annotations

from collections.abc import Iterator

from ..ensemble.lm import Completion, LMEnsemble, TokenScores

# A model exported without a chat template reads the conversation as lines like these, and its
# answer ends where it would start the user's next turn.
ROLE_NAMES = {"system": "System", "developer": "System", "user": "User", "assistant": "Assistant"}
PLAIN_TEMPLATE_STOPS = ["\nUser:"]


class ChatTemplateRefused(ValueError):
    """The model's chat template refused the conversation (e.g. roles that do not alternate)."""


def render_chat(tokenizer, messages: list[dict]) -> tuple[str, list[str]]:
    """``messages`` ({"role", "content"}) as the prompt the model continues, and the stop strings
    that end its turn: the tokenizer's chat template when the export has one, else plain lines
    ("User: ...", "Assistant: ...") ending in "Assistant:"."""
    if getattr(tokenizer, "chat_template", None):
        from jinja2 import TemplateError

        try:
            prompt = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        except TemplateError as e:  # templates refuse conversations with raise_exception(...)
            raise ChatTemplateRefused(f"the model's chat template refuses this conversation: {e}") from None
        return prompt, []
    lines = [f"{ROLE_NAMES[m['role']]}: {m['content']}" for m in messages]
    return "\n".join([*lines, "Assistant:"]), list(PLAIN_TEMPLATE_STOPS)


def stream_completion(
    lm: LMEnsemble,
    prompt: str,
    max_tokens: int,
    temperature: float = 1.0,
    top_p: float = 1.0,
    stop: list[str] | None = None,
    seed: int | None = None,
) -> Iterator[dict]:
    """``lm.complete`` piece by piece (``lm.decode``): the same tokens, yielded as
    {"text": ...} once they can no longer change, then a last piece with the rest of the text,
    "finish_reason", "prompt_tokens" and "completion_tokens". The pieces join to exactly the
    text ``lm.complete`` returns."""
    stops = [s for s in stop or [] if s]
    cleans_up_spaces = bool(getattr(lm.tokenizer, "clean_up_tokenization_spaces", False))
    sent = ""
    for step in lm.decode(prompt, max_tokens, temperature, top_p, stops, seed):
        if isinstance(step, Completion):
            yield {
                "text": step.text[len(sent) :],
                "finish_reason": step.finish_reason,
                "prompt_tokens": step.prompt_tokens,
                "completion_tokens": step.completion_tokens,
            }
            return
        ready = step[: settled(step, stops, cleans_up_spaces)]
        if len(ready) > len(sent):
            yield {"text": ready[len(sent) :]}
            sent = ready


def settled(text: str, stops: list[str], cleans_up_spaces: bool) -> int:
    """How much of ``text`` (decoded so far) the next tokens cannot change: not a tail that may
    become a stop string (it is cut, not sent), not a character still missing bytes (decoded as
    U+FFFD), and, for a tokenizer that cleans up spaces (" ." -> "."), not from the last space."""
    whole = text.rstrip("\ufffd")
    end = len(whole)
    for s in stops:
        held = next((k for k in range(min(len(s) - 1, len(whole)), 0, -1) if whole.endswith(s[:k])), 0)
        end = min(end, len(whole) - held)
    if cleans_up_spaces and (space := text.rfind(" ", 0, end)) >= 0:  # no space: nothing to clean up
        end = space
    return end


def scored_completion(
    lm: LMEnsemble,
    prompt: str | list[int],
    max_tokens: int,
    temperature: float,
    top_p: float,
    stop: list[str] | None,
    seed: int | None,
    logprobs: int | None,
    echo: bool,
) -> dict:
    """A completion with what OpenAI's ``logprobs`` and ``echo`` add: {"completion", "prompt_text"
    (the echoed prompt, else ""), "logprobs" (OpenAI's shape, or None)}, or {"refused": why} for a
    prompt that cannot be scored (longer than the model's positions)."""
    ids = lm.prompt_ids(prompt)
    head = None
    if echo and logprobs is not None:
        try:
            head = lm.score(ids, logprobs)
        except ValueError as e:
            return {"refused": str(e)}
    done = lm.complete(prompt, max_tokens, temperature, top_p, stop, seed, logprobs)
    if not echo:
        prompt_text = ""
    else:  # the prompt as sent; ids as the text they stand for
        prompt_text = prompt if isinstance(prompt, str) else lm.tokenizer.decode(ids, skip_special_tokens=True)
    parts = [(head, 0), (done.scores, len(prompt_text))]
    shown = [(scores, start) for scores, start in parts if scores is not None]
    return {
        "completion": done,
        "prompt_text": prompt_text,
        "logprobs": openai_logprobs(lm.tokenizer, shown) if logprobs is not None else None,
    }


def openai_logprobs(tokenizer, parts: list[tuple[TokenScores, int]]) -> dict:
    """Scored tokens as OpenAI's completions ``logprobs``: ``parts`` are (tokens, where their text
    starts in the choice's text); a token's offset is where the text up to it ends."""
    out: dict[str, list] = {"tokens": [], "token_logprobs": [], "top_logprobs": [], "text_offset": []}
    for scores, start in parts:
        for k, (token, lp, top) in enumerate(zip(scores.ids, scores.logprobs, scores.top, strict=True)):
            out["tokens"].append(tokenizer.decode([token]))
            out["token_logprobs"].append(lp)
            out["top_logprobs"].append(None if top is None else _by_text(tokenizer, top))
            out["text_offset"].append(start + len(tokenizer.decode(scores.ids[:k], skip_special_tokens=True)))
    return out


def _by_text(tokenizer, top: list[tuple[int, float]]) -> dict[str, float]:
    """Alternatives keyed by their text, as OpenAI sends them; two ids of one text keep the likelier."""
    out: dict[str, float] = {}
    for token, lp in top:
        text = tokenizer.decode([token])
        out[text] = max(lp, out.get(text, lp))
    return out


def chat_logprobs(completion: dict, tokens: int) -> dict:
    """Completions' ``logprobs`` as chat's: one entry per answer token (``tokens`` of them: not
    the end of turn, which chat's answers do not list), alternatives likeliest first."""

    def entry(token: str, logprob: float) -> dict:
        return {"token": token, "logprob": logprob, "bytes": list(token.encode("utf-8"))}

    content = [
        {**entry(token, lp), "top_logprobs": [entry(t, v) for t, v in sorted(top.items(), key=lambda tv: -tv[1])]}
        for token, lp, top in zip(
            completion["tokens"][:tokens], completion["token_logprobs"], completion["top_logprobs"], strict=False
        )
    ]
    return {"content": content, "refusal": None}
