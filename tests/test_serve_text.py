"""The serving side of text, without Ray: what the request schema accepts as text, how errors
quote what they were sent, how a conversation becomes a prompt, and that a streamed decode joins
to exactly what ``LMEnsemble.complete`` answers at once (the served tests check the routes)."""

from __future__ import annotations

import json

import pytest
from pydantic import ValidationError

from aigc_ray.serve.schema import ChatCompletionRequest, ClassifyRequest, CompletionRequest, FeedbackRequest

CORPUS = [
    "Caption for a seven: a handwritten seven. Caption for a three: a handwritten three.",
    "Légende : un sept écrit à la main. 手書きの七。 ✍️ 7️⃣ naïve café — « quotes ».",
] * 20


@pytest.fixture(scope="module")
def lm(tmp_path_factory):
    """A random 1-layer GPT-2 over a byte-level BPE trained on text with multi-byte characters:
    its samples split characters across tokens, which a stream must not send half of."""
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    from aigc_ray.data.tokenizer import train_tokenizer
    from aigc_ray.ensemble.lm import LMEnsemble

    tok = train_tokenizer(CORPUS, 300)
    torch.manual_seed(0)
    config = GPT2Config(
        vocab_size=len(tok),
        n_positions=64,
        n_layer=1,
        n_head=2,
        n_embd=32,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
    )
    folder = tmp_path_factory.mktemp("lm")
    GPT2LMHeadModel(config).save_pretrained(folder)
    tok.save_pretrained(folder)
    return LMEnsemble([str(folder)])


@pytest.mark.parametrize(
    "text",
    ["\ud800", "a\udfff b", "\udc00\ud800", "ok\x00"],
    ids=["high-surrogate", "low-surrogate", "reversed-pair", "nul"],
)
def test_every_text_field_refuses_unencodable_text_and_nul(text):
    requests = [
        (ClassifyRequest, {"image": "iVBORw0KGgo=", "text": text}, "text"),
        (CompletionRequest, {"model": "aigc-lm", "prompt": text}, "prompt"),
        (CompletionRequest, {"model": "aigc-lm", "prompt": [text]}, "prompt"),
        (CompletionRequest, {"model": "aigc-lm", "prompt": "hi", "stop": [text]}, "stop"),
        (CompletionRequest, {"model": text, "prompt": "hi"}, "model"),
        (ChatCompletionRequest, {"model": "aigc-lm", "messages": [{"role": "user", "content": text}]}, "messages"),
        (
            ChatCompletionRequest,
            {"model": "aigc-lm", "messages": [{"role": "user", "content": [{"type": "text", "text": text}]}]},
            "messages",
        ),
        (FeedbackRequest, {"response_id": "x", "rating": 1, "comment": text}, "comment"),
        (FeedbackRequest, {"response_id": text, "rating": 1}, "response_id"),
    ]
    for model, body, field in requests:
        with pytest.raises(ValidationError) as caught:
            model(**body)
        messages = [e["msg"] for e in caught.value.errors() if e["loc"][0] == field]
        assert any("unpaired surrogate" in m or "NUL" in m for m in messages), (body, caught.value.errors())


def test_text_that_is_merely_unusual_passes():
    for text in (
        "\u202egnp.exe",
        "a" + "\u0301" * 1000,
        "tab\tand\nnewline",
        "😀 \U0001f9d1\u200d\U0001f4bb",
        "\x1b[31m",
    ):
        assert CompletionRequest(model="aigc-lm", prompt=text).prompts == [text]


def test_error_bodies_quote_any_input_as_valid_utf8():
    from aigc_ray.serve.app import error_body, printable

    assert printable("a\ud800b") == "a\\ud800b"
    assert printable(b"\xc0\xaf ok") == "\\xc0\\xaf ok"
    assert printable({"\udfff": [("x", ValueError("bad \ud800"))]}) == {"\\udfff": [["x", "bad \\ud800"]]}
    body = error_body(422, "text: \ud800", [{"input": "\ud800", "loc": ("body", "\udc00")}])
    encoded = json.dumps(body, ensure_ascii=False).encode("utf-8")  # what JSONResponse does: must not raise
    assert json.loads(encoded)["detail"][0]["input"] == "\\ud800"


def test_null_is_the_default_as_openai_reads_it_and_still_refused_where_a_value_is_required():
    unset = {"temperature": None, "top_p": None, "n": None, "stop": None, "seed": None, "stream": None}
    req = CompletionRequest(model="aigc-lm", prompt="a", max_tokens=None, **unset)
    assert (req.temperature, req.top_p, req.n, req.max_tokens, req.stream, req.stops) == (1.0, 1.0, 1, 16, False, [])
    chat = ChatCompletionRequest(model="aigc-lm", messages=[{"role": "user", "content": "hi"}], **unset)
    assert (chat.temperature, chat.max_completion_tokens, chat.stream) == (1.0, None, False)
    with pytest.raises(ValidationError, match="prompt"):
        CompletionRequest(model="aigc-lm", prompt=None)
    with pytest.raises(ValidationError, match="messages"):
        ChatCompletionRequest(model="aigc-lm", messages=None)


def test_what_would_change_the_answer_unapplied_is_refused_by_name_and_no_op_values_pass():
    chat = {"model": "aigc-lm", "messages": [{"role": "user", "content": "hi"}]}
    for body in (
        {**chat, "tools": [], "tool_choice": "auto", "response_format": {"type": "text"}, "modalities": ["text"]},
        {**chat, "presence_penalty": 0, "frequency_penalty": 0.0, "logit_bias": {}, "parallel_tool_calls": True},
        {**chat, "metadata": {"team": "x"}, "store": False, "service_tier": "auto", "reasoning_effort": "low"},
    ):
        ChatCompletionRequest(**body)
    CompletionRequest(model="aigc-lm", prompt="a", echo=False, suffix="", best_of=1, presence_penalty=0)
    for field, value in [
        ("tools", [{"type": "function", "function": {"name": "f", "parameters": {"big": "x" * 5000}}}]),
        ("functions", [{"name": "f"}]),
        ("tool_choice", "required"),
        ("function_call", {"name": "f"}),
        ("response_format", {"type": "json_schema", "json_schema": {"name": "s"}}),
        ("modalities", ["text", "audio"]),
        ("audio", {"voice": "alloy", "format": "wav"}),
        ("presence_penalty", 0.5),
        ("frequency_penalty", -1.0),
        ("logit_bias", {"50256": -100}),
    ]:
        with pytest.raises(ValidationError, match=rf"{field}=.*does not apply {field}.*leave it out") as e:
            ChatCompletionRequest(**chat, **{field: value})
        assert len(str(e.value)) < 1000  # a tool's pages of JSON schema are not quoted back whole
    for field, value in [("suffix", "the end"), ("best_of", 4), ("logit_bias", {"1": 5})]:
        with pytest.raises(ValidationError, match=rf"{field}=.*does not apply {field}"):
            CompletionRequest(model="aigc-lm", prompt="a", **{field: value})


def test_a_list_of_prompts_is_a_batch_and_a_prompt_may_be_token_ids():
    from aigc_ray.serve.schema import MAX_PROMPTS

    assert CompletionRequest(model="aigc-lm", prompt=["a", "b", "c"]).prompts == ["a", "b", "c"]
    # token ids, as evaluation harnesses send them: one prompt, or a batch of them
    assert CompletionRequest(model="aigc-lm", prompt=[464, 3290, 318]).prompts == [[464, 3290, 318]]
    assert CompletionRequest(model="aigc-lm", prompt=[[464, 3290], [318]]).prompts == [[464, 3290], [318]]
    for prompt, said in [
        (["a"] * (MAX_PROMPTS + 1), f"{MAX_PROMPTS + 1} prompts; send 1 to {MAX_PROMPTS}"),
        ([[1]] * (MAX_PROMPTS + 1), f"{MAX_PROMPTS + 1} prompts; send 1 to {MAX_PROMPTS}"),
        ([], "0 prompts"),
        (["a", ""], "prompt 1 must be 1 to 2000 characters"),
        ([[464], []], "at least 1 item"),
        ([5, -1], "greater than or equal to 0"),
    ]:
        with pytest.raises(ValidationError, match=said):
            CompletionRequest(model="aigc-lm", prompt=prompt)
    with pytest.raises(ValidationError, match="stream one prompt at a time"):
        CompletionRequest(model="aigc-lm", prompt=["a", "b"], stream=True)
    assert CompletionRequest(model="aigc-lm", prompt=["a"], stream=True).prompts == ["a"]


def test_log_probabilities_are_asked_for_within_limits_and_never_on_a_stream():
    chat = {"model": "aigc-lm", "messages": [{"role": "user", "content": "hi"}]}
    assert CompletionRequest(model="aigc-lm", prompt="hi", logprobs=5, echo=True, max_tokens=0).scored
    assert not CompletionRequest(model="aigc-lm", prompt="hi", logprobs=None, echo=None).scored  # nulls: defaults
    assert ChatCompletionRequest(**chat, logprobs=True, top_logprobs=3).logprobs_top == 3
    assert ChatCompletionRequest(**chat, logprobs=True).logprobs_top == 0
    assert ChatCompletionRequest(**chat, logprobs=False).logprobs_top is None
    for model, extra, said in [
        (CompletionRequest, {"prompt": "hi", "logprobs": 21}, "less than or equal to 20"),
        (CompletionRequest, {"prompt": "hi", "logprobs": 1, "stream": True}, "without stream"),
        (CompletionRequest, {"prompt": "hi", "echo": True, "stream": True}, "without stream"),
        (CompletionRequest, {"prompt": "hi", "max_tokens": 0}, "max_tokens 0 answers nothing"),
        (ChatCompletionRequest, {"top_logprobs": 2}, "top_logprobs needs logprobs"),
        (ChatCompletionRequest, {"logprobs": True, "stream": True}, "without stream"),
        (ChatCompletionRequest, {"logprobs": True, "top_logprobs": 21}, "less than or equal to 20"),
    ]:
        body = {"model": "aigc-lm", "prompt": "hi"} if model is CompletionRequest else chat
        with pytest.raises(ValidationError, match=said):
            model(**{**body, **extra})


def test_a_scored_prompt_holds_what_reading_each_prefix_from_scratch_gives(lm):
    """``score``: token t's log-probability given the tokens before it, in one pass, for a
    client that scores a text (``echo`` with ``logprobs``); the first token has none."""
    import numpy as np
    import torch

    ids = lm.prompt_ids("Caption for a seven: a handwritten seven.")
    scores = lm.score(ids, top=3)
    assert scores.ids == ids and scores.logprobs[0] is None and scores.top[0] is None
    for t in range(1, len(ids)):
        scratch = lm.next_log_probs(torch.tensor([ids[:t]]))
        assert scores.logprobs[t] == pytest.approx(scratch[ids[t]], abs=1e-6)
        best = np.argsort(-scratch)[:3]
        assert [i for i, _ in scores.top[t]] == best.tolist()
        assert [v for _, v in scores.top[t]] == pytest.approx(scratch[best].tolist(), abs=1e-6)
    with pytest.raises(ValueError, match=f"scores at most {lm.context}"):
        lm.score(ids * (lm.context // len(ids) + 1))
    with pytest.raises(ValueError, match="token id 100000 .* not in this model's vocabulary"):
        lm.prompt_ids([1, 100000])


def test_a_greedy_answers_tokens_are_each_the_likeliest_and_the_end_of_text_is_listed(lm):
    done = lm.complete("Caption for a seven:", 12, temperature=0, logprobs=2)
    s = done.scores
    assert len(s.ids) in (done.completion_tokens, done.completion_tokens + 1)
    for token, lp, top in zip(s.ids, s.logprobs, s.top, strict=True):
        assert top[0] == (token, pytest.approx(lp)) and len(top) == 2 and top[0][1] >= top[1][1]
    if len(s.ids) > done.completion_tokens:  # ended by end of text: listed last, not in the text
        assert done.finish_reason == "stop" and s.ids[-1] in lm.stop_ids
    assert lm.tokenizer.decode(s.ids[: done.completion_tokens], skip_special_tokens=True) == done.text
    # a stop string cuts the text: the tokens are those of the text kept (and the one it starts in)
    sampled = lm.complete("Caption for a seven:", 24, temperature=1.0, seed=5)
    at = next(i for i in range(2, len(sampled.text) - 1) if sampled.text.find(sampled.text[i : i + 2]) == i)
    cut = lm.complete("Caption for a seven:", 24, temperature=1.0, seed=5, logprobs=0, stop=[sampled.text[at : at + 2]])
    assert cut.text == sampled.text[:at]
    kept = cut.scores.ids
    assert lm.tokenizer.decode(kept, skip_special_tokens=True).startswith(cut.text)
    assert not lm.tokenizer.decode(kept[:-1], skip_special_tokens=True).startswith(cut.text) or not cut.text


def test_an_evaluation_harness_reads_a_continuations_log_likelihood_from_echo(lm):
    """lm-evaluation-harness's ``local-completions`` scores a continuation by sending
    context + continuation as token ids with echo, logprobs 1 and max_tokens 1, then summing
    ``token_logprobs[len(context):-1]`` and checking each against its place's best alternative:
    that must be the continuation's log-likelihood, and greedy exactly when it is the arg-max path."""
    import numpy as np
    import torch

    from aigc_ray.serve.generation import scored_completion

    context = lm.prompt_ids("Caption for a seven:")
    continuation = lm.tokenizer(" a handwritten seven", add_special_tokens=False)["input_ids"]
    out = scored_completion(lm, context + continuation, 1, 0.0, 1.0, None, 1234, 1, True)
    lp = out["logprobs"]
    assert len(lp["tokens"]) == len(context) + len(continuation) + 1  # + the one token asked for
    assert out["prompt_text"] == lm.tokenizer.decode(context + continuation, skip_special_tokens=True)
    harness = sum(lp["token_logprobs"][len(context) : -1])  # lm-eval's parse_logprobs
    is_greedy = all(
        t == max(top.values())
        for t, top in zip(lp["token_logprobs"][len(context) : -1], lp["top_logprobs"][len(context) : -1], strict=True)
    )
    ids, expected, greedy = list(context), 0.0, True
    for token in continuation:
        scratch = lm.next_log_probs(torch.tensor([ids]))
        expected += scratch[token]
        greedy &= int(np.argmax(scratch)) == token
        ids.append(token)
    assert harness == pytest.approx(expected, abs=1e-6) and is_greedy == greedy
    # the offsets place each token's text in the echoed prompt + completion
    text = out["prompt_text"] + out["completion"].text
    for k, (token, offset) in enumerate(zip(lp["tokens"], lp["text_offset"], strict=True)):
        if k < len(context) + len(continuation) + out["completion"].completion_tokens:
            assert text[offset : offset + len(token)] == token
    # greedy continuations are told apart from others
    greedy_ids = list(context)
    for _ in range(3):
        greedy_ids.append(int(np.argmax(lm.next_log_probs(torch.tensor([greedy_ids])))))
    out = scored_completion(lm, greedy_ids, 1, 0.0, 1.0, None, 0, 1, True)["logprobs"]
    assert all(
        t == max(top.values())
        for t, top in zip(out["token_logprobs"][len(context) : -1], out["top_logprobs"][len(context) : -1], strict=True)
    )


def test_chat_log_probabilities_list_the_answers_tokens_likeliest_alternatives_first(lm):
    from aigc_ray.serve.generation import chat_logprobs, scored_completion

    out = scored_completion(lm, "User: hi\nAssistant:", 6, 0.0, 1.0, None, None, 3, False)
    done = out["completion"]
    chat = chat_logprobs(out["logprobs"], done.completion_tokens)
    assert len(chat["content"]) == done.completion_tokens
    assert "".join(c["token"] for c in chat["content"]) == done.text
    for c in chat["content"]:
        assert bytes(c["bytes"]) == c["token"].encode()
        values = [t["logprob"] for t in c["top_logprobs"]]
        assert values == sorted(values, reverse=True) and c["logprob"] == pytest.approx(values[0])


def test_a_conversation_renders_as_plain_lines_without_a_chat_template():
    from aigc_ray.data.tokenizer import train_tokenizer
    from aigc_ray.serve.generation import render_chat

    tok = train_tokenizer(CORPUS, 300)
    messages = [
        {"role": "system", "content": "Describe digits."},
        {"role": "user", "content": "Caption for a seven:"},
        {"role": "assistant", "content": "a handwritten seven."},
        {"role": "user", "content": "Caption for a three:"},
    ]
    prompt, stops = render_chat(tok, messages)
    assert prompt == (
        "System: Describe digits.\nUser: Caption for a seven:\nAssistant: a handwritten seven.\n"
        "User: Caption for a three:\nAssistant:"
    )
    assert stops == ["\nUser:"]


def test_a_conversation_renders_with_the_exports_chat_template_and_its_refusals():
    from aigc_ray.data.tokenizer import train_tokenizer
    from aigc_ray.serve.generation import ChatTemplateRefused, render_chat

    tok = train_tokenizer(CORPUS, 300)
    tok.chat_template = (
        "{% for m in messages %}{% if m['role'] == 'system' and not loop.first %}"
        "{{ raise_exception('a system message comes first') }}{% endif %}"
        "<|{{ m['role'] }}|>{{ m['content'] }}{% endfor %}{% if add_generation_prompt %}<|assistant|>{% endif %}"
    )
    prompt, stops = render_chat(tok, [{"role": "system", "content": "S"}, {"role": "user", "content": "U"}])
    assert (prompt, stops) == ("<|system|>S<|user|>U<|assistant|>", [])
    with pytest.raises(ChatTemplateRefused, match="a system message comes first"):
        render_chat(tok, [{"role": "user", "content": "U"}, {"role": "system", "content": "S"}])


def test_settled_holds_back_what_later_tokens_may_change():
    from aigc_ray.serve.generation import settled

    assert settled("a handwritten", [], False) == len("a handwritten")
    assert settled("abc\ufffd\ufffd", [], False) == 3  # a character still missing bytes
    assert settled("seven.\nUs", ["\nUser:"], False) == len("seven.")  # may become the stop string
    assert settled("seven.\nX", ["\nUser:"], False) == len("seven.\nX")
    assert settled("ab", ["b!", "ab?"], False) == 0  # the longest possible start of any stop
    assert settled("a handwritten", [], True) == len("a")  # " ." -> "." may still happen
    assert settled("x '", [], True) == len("x")  # " ' " -> "'" once a space follows
    # without a space the clean-up has nothing to remove: a word-less answer still streams
    assert settled("7+7=14", [], True) == len("7+7=14")


@pytest.mark.parametrize("temperature, seed", [(0.0, None), (1.0, 3), (0.8, 11)])
def test_a_streamed_decode_joins_to_what_complete_answers(lm, temperature, seed):
    from aigc_ray.serve.generation import stream_completion

    stopped = 0
    for prompt, stop in [
        ("Caption for a seven:", None),
        ("Caption for a seven:", ["::", "ten", "Ւ"]),
        ("Légende : un", ["é", " a", "\x1e\x1e", "?\x1b"]),
        ("手書き", ["。", "writ", "=\x1b"]),
        ("naïve", ["\n", "ca", "ee", "h"]),
    ]:
        done = lm.complete(prompt, 24, temperature, 0.9 if temperature else 1.0, stop, seed)
        pieces = list(stream_completion(lm, prompt, 24, temperature, 0.9 if temperature else 1.0, stop, seed))
        *middle, last = pieces
        assert all(p["text"] and "finish_reason" not in p for p in middle)
        # joined, exactly the answer: no piece sent a half character (U+FFFD) that became whole later
        assert "".join(p["text"] for p in pieces) == done.text, (prompt, pieces)
        for s in stop or []:
            assert s not in "".join(p["text"] for p in pieces)
        stopped += last["finish_reason"] == "stop"
        assert (last["finish_reason"], last["prompt_tokens"], last["completion_tokens"]) == (
            done.finish_reason,
            done.prompt_tokens,
            done.completion_tokens,
        )
    assert stopped >= 2  # stop strings were met, mid-stream


def test_decoding_reads_each_token_once_and_answers_what_reading_from_scratch_answers(lm, tmp_path):
    """The members' key/value caches change nothing but the cost: at every step, with GPT-2's
    learned positions and a Llama's rotary ones, alone and as a two-member ensemble, and past the
    context, where the window slides, the log-probabilities are those of the whole text read again."""
    import numpy as np
    import torch
    from base_models import llama_folder

    from aigc_ray.ensemble.lm import LMEnsemble, _DecodeState

    for seed in (0, 1):
        llama_folder(tmp_path / f"llama{seed}", seed=seed)
    llamas = LMEnsemble([str(tmp_path / "llama0"), str(tmp_path / "llama1")], weights=[0.7, 0.3])
    for ensemble in (lm, LMEnsemble([str(tmp_path / "llama0")]), llamas):
        ids, state = ensemble.prompt_ids("Caption for a seven: a handwritten"), _DecodeState()
        reads: list[int] = []  # the tokens each member's forward pass reads in the cached decode
        hooks = [m.register_forward_pre_hook(_count_tokens(reads), with_kwargs=True) for m in ensemble.models]
        steps = []
        for step in range(ensemble.context + 8 - len(ids)):
            cached = ensemble._cached_log_probs(ids, state)
            steps.append((len(ids), reads[:]))
            reads.clear()
            scratch = ensemble.next_log_probs(torch.tensor([ids[-ensemble.context :]]))
            reads.clear()
            np.testing.assert_allclose(cached, scratch, atol=1e-5, err_msg=f"step {step}")
            ids.append(int(np.argsort(cached)[-1 - step % 3]))  # not only the arg-max: other paths too
        for hook in hooks:
            hook.remove()
        members = len(ensemble.models)
        assert steps[0][1] == [steps[0][0]] * members  # the prompt, read once
        fits = [r for n, r in steps[1:] if n <= ensemble.context]
        assert fits and all(r == [1] * members for r in fits)  # then one new token a step
        assert [r for n, r in steps if n > ensemble.context] == [[ensemble.context] * members] * 7  # window slides
        assert state.caches is None


def _count_tokens(reads: list[int]):
    return lambda _, args, kwargs: reads.append(kwargs["input_ids"].shape[1])


def test_an_instruct_models_chat_prompt_has_one_start_token_and_its_end_of_turn_stops(tmp_path):
    """A user's instruct model (Llama-3-like): its chat template writes ``<s>`` itself, so the
    prompt is not given a second one, and a turn ends at the generation config's ``<|eot|>`` —
    not at max_tokens with the template's next turn written out."""
    from base_models import EOT, instruct_llama_folder

    from aigc_ray.ensemble.lm import LMEnsemble
    from aigc_ray.serve.generation import render_chat

    tokenizer = instruct_llama_folder(tmp_path)
    lm = LMEnsemble([str(tmp_path)])
    prompt, stops = render_chat(lm.tokenizer, [{"role": "user", "content": "Caption for a seven:"}])
    assert prompt.startswith("<s>") and stops == []
    ids = lm.prompt_ids(prompt)
    assert ids.count(tokenizer.bos_token_id) == 1 and ids[0] == tokenizer.bos_token_id
    done = lm.complete(prompt, max_tokens=8, temperature=0)
    assert (done.finish_reason, done.completion_tokens, done.text) == ("stop", 0, "")
    assert EOT not in done.text
    plain = lm.prompt_ids("Caption for a seven:")  # a completion prompt still gets the model's <s>
    assert plain[0] == tokenizer.bos_token_id and plain.count(tokenizer.bos_token_id) == 1


def test_an_image_comes_as_png_jpeg_or_webp_bare_or_as_a_data_url():
    """What clients send: a phone's JPEG, a browser's data: URL. A GIF, or a data URL that is
    not base64, is refused naming what is taken."""
    import base64
    import io

    import numpy as np
    from PIL import Image

    def b64(fmt: str) -> str:
        buf = io.BytesIO()
        Image.fromarray(np.full((16, 16, 3), 200, np.uint8)).save(buf, format=fmt)
        return base64.b64encode(buf.getvalue()).decode()

    for fmt in ("PNG", "JPEG", "WEBP"):
        ClassifyRequest(image=b64(fmt), text="a seven")
        ClassifyRequest(image=f"data:image/{fmt.lower()};base64,{b64(fmt)}", text="a seven")
    with pytest.raises(ValidationError, match="image must be a PNG, JPEG or WEBP, got GIF"):
        ClassifyRequest(image=b64("GIF"), text="a seven")
    with pytest.raises(ValidationError, match="a data URL must be base64"):
        ClassifyRequest(image="data:image/png,rawbytes", text="a seven")


def test_a_responses_request_is_the_conversation_the_chat_route_renders():
    from aigc_ray.serve.responses import ResponsesRequest, response_object

    req = ResponsesRequest(
        model="aigc-lm",
        instructions="Describe digits.",
        input=[
            {"role": "developer", "content": "Be brief."},
            {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "Caption for a seven:"}]},
            {
                "id": "msg-1",
                "status": "completed",
                "type": "message",
                "role": "assistant",
                "content": [{"type": "output_text", "text": "a seven", "annotations": []}],
            },
        ],
        store=True,
        metadata={"team": "x"},
        truncation="disabled",
    )
    assert req.messages() == [
        {"role": "system", "content": "Describe digits."},
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Caption for a seven:"},
        {"role": "assistant", "content": "a seven"},
    ]
    assert ResponsesRequest(model="aigc-lm", input="hi").messages() == [{"role": "user", "content": "hi"}]
    with pytest.raises(ValidationError, match="the input holds 9000 characters"):
        ResponsesRequest(model="aigc-lm", input="x" * 9000)
    cut = response_object("resp-1", "msg-1", 0, req, "a sev", "length", {"prompt_tokens": 9, "completion_tokens": 2})
    assert (cut.status, cut.incomplete_details, cut.usage.total_tokens) == (
        "incomplete",
        {"reason": "max_output_tokens"},
        11,
    )
    whole = response_object("resp-1", "msg-1", 0, req, "a seven", "stop", {"prompt_tokens": 9, "completion_tokens": 3})
    assert (whole.status, whole.incomplete_details, whole.output[0].content[0].text) == ("completed", None, "a seven")
