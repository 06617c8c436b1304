"""The HTTP schema of the Serve app: what each route accepts and answers. Pydantic validates
every request, so a bad one gets a 422 that names the field and the rule it broke."""

from __future__ import annotations

import reprlib
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, field_validator, model_validator

from ..data.images import check_client_image

NUL = "\x00"


def check_text(v: Any) -> Any:
    """Text must be Unicode that encodes as UTF-8 and holds no NUL: JSON's escapes can carry an
    unpaired surrogate ("\\ud800") that no tokenizer, Parquet file or response body accepts,
    and NUL truncates text in C-based consumers. Runs before the type check, so non-strings pass
    on to it unchanged."""
    if not isinstance(v, str):
        return v
    try:
        v.encode("utf-8")
    except UnicodeEncodeError as e:
        raise ValueError(
            f"holds an unpaired surrogate (U+{ord(v[e.start]):04X} at character {e.start}): not valid Unicode text"
        ) from None
    if NUL in v:
        raise ValueError(f"holds a NUL character (U+0000 at character {v.index(NUL)})")
    return v


Text = Annotated[str, BeforeValidator(check_text)]


class Strict(BaseModel):
    """A request body. ``null`` for a field that has a default means that default, as OpenAI's
    API reads it (its fields are nullable: clients generated from its OpenAPI document, and many
    written by hand, send ``"temperature": null`` for "not set")."""

    model_config = ConfigDict(extra="forbid")

    @model_validator(mode="before")
    @classmethod
    def _null_is_the_default(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        defaulted = {
            name
            for name, f in cls.model_fields.items()
            if not f.is_required() and (f.default_factory is not None or f.default is not None)
        }
        return {k: v for k, v in data.items() if not (v is None and k in defaulted)}


class ErrorInfo(BaseModel):
    message: str = Field(description="What is wrong, for people.")
    type: str = Field(description="OpenAI's error type, e.g. invalid_request_error, authentication_error.")
    code: int | str = Field(
        description="The HTTP status; for a refusal by the safety filter, OpenAI's content_policy_violation."
    )


class ErrorBody(BaseModel):
    """Every non-2xx answer: FastAPI's ``detail`` and OpenAI's ``error``, so both kinds of client
    read the reason. Input quoted back is always valid UTF-8 (an unpaired surrogate as its escape)."""

    detail: Any = Field(description="The message; for a 422, the list of validation errors.")
    error: ErrorInfo


class ImageAndCaption(Strict):
    """An (image, caption) pair as the fusion classifiers read it: /v1/classify's and /v1/explain's input."""

    image: Text = Field(
        description="Base64 PNG, JPEG or WebP, bare or as a data: URL (grey or colour, any shape up to 16 "
        "megapixels; the body is bounded by serve.max_request_bytes): its centred square is resized to the "
        "data's image shape (see /v1/models; 8x8 grey for the digits).",
    )
    text: Text = Field(description="The image's caption.", min_length=1, max_length=500)

    @field_validator("image")
    @classmethod
    def _decodes(cls, v: str) -> str:
        check_client_image(v)  # raises ValueError with the reason
        return v


class ClassifyRequest(ImageAndCaption):
    return_members: bool = Field(False, description="Also return each member's probabilities.")


class ClassifyResponse(BaseModel):
    id: str
    model: str
    label: int
    label_name: str  # the class's name in the training data
    probabilities: list[float]
    strategy: str
    members: dict[str, list[float]] | None = None


class ExplainRequest(ImageAndCaption):
    """What to explain: one (image, caption) as /v1/classify takes it, and optionally the class."""

    target: int | Text | None = Field(
        None,
        description="The class to explain, by index or name (see /v1/models); default: the class the ensemble answers.",
    )
    steps: int = Field(256, ge=8, le=1024, description="Integrated Gradients' integration steps.")


class ExplainResponse(BaseModel):
    """Why the ensemble answered as it did (aigc_ray.ensemble.explain): the answer, the image's
    attribution map (numbers (C, H, W) and a PNG overlay: red raised the probability, blue lowered
    it), per-token attributions, the modality shares, the method, the baselines and IG's
    convergence deltas; each member's own explanation under ``members``."""

    model_config = ConfigDict(extra="allow")
    id: str
    model: str
    label: int
    label_name: str
    target: int
    target_name: str
    probability: float
    strategy: str
    method: dict
    baseline: dict
    modality_shares: dict[str, float]
    shapley: dict
    attribution_of: dict[str, str]
    delta: dict[str, float]
    image_attribution: list
    tokens: list[dict]
    overlay_png: str
    members: dict


def check_prompt(v: str) -> str:
    """A prompt must say something: not blank, no control characters."""
    if not v.strip():
        raise ValueError("prompt is blank: describe the image, e.g. 'a handwritten three'")
    bad = sorted({f"U+{ord(c):04X}" for c in v if ord(c) < 32 or 0x7F <= ord(c) < 0xA0})
    if bad:
        raise ValueError(f"prompt holds control characters ({', '.join(bad)})")
    return v.strip()


class ImagesRequest(Strict):
    """OpenAI's image-generation request (POST /v1/images/generations; /v1/images is the same),
    plus seed and style_seed. Fields this server cannot honour (quality, style, ...) are refused."""

    model: Text | None = Field(None, description="aigc-gan, or leave out (GET /v1/models lists this server's).")
    prompt: Text | None = Field(
        None,
        max_length=2000,
        description="What to draw, e.g. 'a handwritten three' (text-to-image generators need one; "
        "an unconditional generator refuses it). The server's limit is serve.max_prompt_chars.",
    )
    n: int = Field(1, ge=1, le=64, description="How many images (the server's limit is serve.max_images).")
    seed: int | None = Field(None, ge=0, le=2**31 - 1, description="Same seed, same images.")
    style_seed: int | None = Field(
        None,
        ge=0,
        le=2**31 - 1,
        description="Style generator only: mix in the styles of this seed's latent (coarse from seed, fine from style_seed).",
    )
    size: Text | None = Field(
        None,
        pattern=r"^([1-9][0-9]{0,3}x[1-9][0-9]{0,3}|auto)$",
        description="WIDTHxHEIGHT, square, a whole multiple of the generator's own size (pixels repeated); "
        "default or 'auto': the generator's own size (see /v1/models).",
    )
    response_format: Text | None = Field(
        None, description="b64_json (the default and the only one: this server hosts no image URLs)."
    )
    user: Text | None = Field(None, max_length=200, description="Accepted for OpenAI compatibility; unused.")

    @field_validator("response_format")
    @classmethod
    def _inline_only(cls, v: str | None) -> str | None:
        if v not in (None, "b64_json"):
            raise ValueError("only b64_json: this server answers images inline and hosts no URLs")
        return v

    @field_validator("prompt")
    @classmethod
    def _prompt(cls, v: str | None) -> str | None:
        return None if v is None else check_prompt(v)


class VideosRequest(Strict):
    n: int = Field(1, ge=1, le=64, description="How many clips (the server's limit is serve.max_images).")
    seed: int | None = Field(None, ge=0, le=2**31 - 1, description="Same seed, same clips.")
    format: Literal["gif", "apng"] = Field("gif", description="Animated GIF or animated PNG.")
    fps: int = Field(8, ge=1, le=30, description="Frames per second of the animation.")
    scale: int = Field(4, ge=1, le=8, description="Each pixel drawn scale x scale.")


class VideoData(BaseModel):
    b64_data: str = Field(description="The animation, base64.")
    media_type: str
    frames: int
    width: int
    height: int


class VideosResponse(BaseModel):
    id: str
    created: int
    model: str
    seed: int
    data: list[VideoData]


class ImageData(BaseModel):
    b64_json: str


class ImagesResponse(BaseModel):
    id: str
    created: int
    model: str
    seed: int
    prompt: str | None = None
    data: list[ImageData]


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="ignore")

    include_usage: bool = Field(
        False, description="Send usage in a last chunk with no choices (OpenAI's way) instead of on the final one."
    )


def only_no_op(field: str, v: Any, no_ops: tuple) -> Any:
    """A field this server does not honour passes only with a value that asks for nothing
    (clients send ``"presence_penalty": 0`` whatever they are told); any other is refused by name
    rather than ignored."""
    if v is not None and v not in no_ops:
        shown = reprlib.repr(v)  # a tool list may hold pages of JSON schema
        raise ValueError(
            f"{field}={shown}: this server does not apply {field}, so the answer would not be what was asked for; leave it out"
        )
    return v


class Decoding(Strict):
    """What completions and chat completions share: the OpenAI fields this server honours. Fields
    that would change the answer but are not applied (penalties, logit_bias, tools, JSON output)
    are refused by name unless they ask for nothing; the rest of OpenAI's
    extras (metadata, store, service_tier, ...) change nothing here and are ignored."""

    model_config = ConfigDict(extra="ignore")

    model: Text = Field(description="aigc-lm (GET /v1/models lists this server's).")
    temperature: float = Field(1.0, ge=0, le=2)
    top_p: float = Field(1.0, gt=0, le=1)
    n: int = Field(1, ge=1, le=1, description="One choice per request.")
    stop: Text | Annotated[list[Text], Field(max_length=4)] | None = Field(
        None, description="Up to 4 strings; the answer ends before the first (not returned)."
    )
    seed: int | None = Field(None, description="Same seed, same answer (at temperature > 0).")
    stream: bool = Field(False, description="Answer as server-sent events, chunk by chunk, then 'data: [DONE]'.")
    stream_options: StreamOptions | None = None
    user: Text | None = Field(None, max_length=200, description="Accepted for OpenAI compatibility; unused.")
    presence_penalty: float | None = Field(None, description="0 only: not applied (any other value is refused).")
    frequency_penalty: float | None = Field(None, description="0 only: not applied (any other value is refused).")
    logit_bias: dict[str, float] | None = Field(None, description="Empty only: not applied.")

    @field_validator("presence_penalty", "frequency_penalty")
    @classmethod
    def _no_penalty(cls, v: float | None, info) -> float | None:
        return only_no_op(info.field_name, v, (0,))

    @field_validator("logit_bias")
    @classmethod
    def _no_bias(cls, v: dict | None) -> dict | None:
        return only_no_op("logit_bias", v, ({},))

    @property
    def stops(self) -> list[str]:
        return [self.stop] if isinstance(self.stop, str) else list(self.stop or [])

    @property
    def usage_chunk(self) -> bool:
        return bool(self.stream_options and self.stream_options.include_usage)


MAX_PROMPTS = 16  # prompts of one completions request (LangChain's OpenAI LLM batches up to 20)
MAX_PROMPT_IDS = 4096  # token ids of one prompt sent as ids (the model's own positions bound it further)
MAX_LOGPROBS = 20  # alternatives per token (OpenAI's legacy completions allow 5, vLLM 20)
TokenIds = Annotated[list[Annotated[int, Field(ge=0)]], Field(min_length=1, max_length=MAX_PROMPT_IDS)]


class CompletionRequest(Decoding):
    """OpenAI's completions request."""

    prompt: Text | list[Text] | TokenIds | list[TokenIds] = Field(
        description=f"A prompt, or a list of up to {MAX_PROMPTS} answered as one choice each (index = the prompt's "
        "place), as batching clients send them (not with stream). A prompt may be token ids of this model's "
        "tokenizer (GET /v1/models names it), as evaluation harnesses send them: read as sent, no token added."
    )
    max_tokens: int = Field(16, ge=0, description="0 only with echo: score the prompt, answer nothing.")
    logprobs: int | None = Field(
        None,
        ge=0,
        le=MAX_LOGPROBS,
        description="Return each token's log-probability under the ensemble (before temperature and top_p) and "
        "this many most likely alternatives at its place; not with stream.",
    )
    echo: bool = Field(False, description="Answer the prompt followed by its completion (with logprobs: scored too).")
    suffix: Text | None = Field(None, description="Empty only: no insertion.")
    best_of: int | None = Field(None, description="1 only: one candidate per request.")

    @field_validator("suffix")
    @classmethod
    def _no_suffix(cls, v: str | None) -> str | None:
        return only_no_op("suffix", v, ("",))

    @field_validator("best_of")
    @classmethod
    def _one_candidate(cls, v: int | None) -> int | None:
        return only_no_op("best_of", v, (1,))

    @field_validator("prompt")
    @classmethod
    def _prompt_sizes(cls, v: Any) -> Any:
        prompts = [v] if isinstance(v, str) or (v and isinstance(v[0], int)) else v
        if not 0 < len(prompts) <= MAX_PROMPTS:
            raise ValueError(f"{len(prompts)} prompts; send 1 to {MAX_PROMPTS}")
        for i, p in enumerate(prompts):
            if isinstance(p, str) and not 0 < len(p) <= 2000:
                where = "" if prompts is not v else f" {i}"
                raise ValueError(f"prompt{where} must be 1 to 2000 characters")
        return v

    @model_validator(mode="after")
    def _whole_answers(self) -> CompletionRequest:
        if self.stream and len(self.prompts) > 1:
            raise ValueError(
                f"stream one prompt at a time ({len(self.prompts)} prompts are answered whole, without stream)"
            )
        if self.stream and (self.logprobs is not None or self.echo):
            raise ValueError("logprobs and echo are answered whole: send them without stream")
        if self.max_tokens == 0 and not self.echo:
            raise ValueError("max_tokens 0 answers nothing: ask for at least 1 token, or echo the prompt to score it")
        return self

    @property
    def prompts(self) -> list[str | list[int]]:
        """One entry per prompt: its text, or its token ids."""
        if isinstance(self.prompt, str) or isinstance(self.prompt[0], int):
            return [self.prompt]
        return list(self.prompt)

    @property
    def scored(self) -> bool:
        """Whether the answer carries more than the completion's text (log-probabilities, the prompt)."""
        return self.logprobs is not None or self.echo


class TextPart(Strict):
    type: Literal["text"] = Field(description="Text only: the language model reads no images or audio.")
    text: Text


class ChatMessage(BaseModel):
    # extras ignored: clients send earlier answers back with e.g. "refusal": null
    model_config = ConfigDict(extra="ignore")

    role: Literal["system", "developer", "user", "assistant"]
    content: Text | list[TextPart] = Field(description="Text, or a list of text parts (joined).")
    name: Text | None = Field(None, max_length=64)

    @property
    def text(self) -> str:
        return self.content if isinstance(self.content, str) else "".join(p.text for p in self.content)


class CallsNoTools(BaseModel):
    """The tool fields of OpenAI's chat and Responses requests. The models here call no tools, so
    only the values that ask for none pass (clients send ``tools: []`` and ``tool_choice: auto``
    by default); the chat route's old names (``functions``, ``function_call``) follow the same rule."""

    tools: list[Any] | None = Field(None, description="Empty only: the model calls no tools.")
    tool_choice: Any = Field(None, description="none or auto only (the model calls no tools).")

    @field_validator("tools", "functions", check_fields=False)
    @classmethod
    def _no_tools(cls, v: list | None, info) -> list | None:
        return only_no_op(info.field_name, v, ([],))

    @field_validator("tool_choice", "function_call", check_fields=False)
    @classmethod
    def _no_tool_choice(cls, v: Any, info) -> Any:
        return only_no_op(info.field_name, v, ("none", "auto"))


class ChatCompletionRequest(Decoding, CallsNoTools):
    """OpenAI's chat-completions request. The conversation is rendered to a prompt with the
    model's chat template, or, for a model without one, as 'User: ...' / 'Assistant: ...' lines
    ending in 'Assistant:'."""

    messages: list[ChatMessage] = Field(min_length=1, max_length=64)
    max_tokens: int | None = Field(None, ge=1, description="Deprecated by OpenAI: max_completion_tokens.")
    max_completion_tokens: int | None = Field(None, ge=1, description="Default: the server's serve.max_tokens.")
    logprobs: bool = Field(
        False,
        description="Return each answer token's log-probability under the ensemble (before temperature and "
        "top_p); not with stream.",
    )
    top_logprobs: int | None = Field(
        None, ge=0, le=MAX_LOGPROBS, description="With logprobs: this many most likely alternatives per token."
    )
    functions: list[Any] | None = Field(None, description="Empty only (tools' old name).")
    function_call: Any = Field(None, description="none or auto only (tool_choice's old name).")
    response_format: dict[str, Any] | None = Field(
        None, description='{"type": "text"} only: the output is not constrained to JSON.'
    )
    modalities: list[str] | None = Field(None, description='["text"] only.')
    audio: dict[str, Any] | None = Field(None, description="Refused: text only.")

    @field_validator("response_format")
    @classmethod
    def _text_format(cls, v: dict | None) -> dict | None:
        return only_no_op("response_format", v, ({"type": "text"},))

    @field_validator("modalities")
    @classmethod
    def _text_only(cls, v: list | None) -> list | None:
        return only_no_op("modalities", v, (["text"],))

    @field_validator("audio")
    @classmethod
    def _no_audio(cls, v: dict | None) -> dict | None:
        return only_no_op("audio", v, ())

    @field_validator("messages")
    @classmethod
    def _not_too_long(cls, v: list[ChatMessage]) -> list[ChatMessage]:
        chars = sum(len(m.text) for m in v)
        if chars > 8000:
            raise ValueError(f"the conversation holds {chars} characters; at most 8000")
        return v

    @model_validator(mode="after")
    def _one_limit(self) -> ChatCompletionRequest:
        if None not in (self.max_tokens, self.max_completion_tokens) and self.max_tokens != self.max_completion_tokens:
            raise ValueError("max_tokens and max_completion_tokens disagree: send one")
        if self.top_logprobs and not self.logprobs:
            raise ValueError("top_logprobs needs logprobs: true (as OpenAI asks)")
        if self.stream and self.logprobs:
            raise ValueError("logprobs are answered whole: send them without stream")
        return self

    @property
    def logprobs_top(self) -> int | None:
        """How many alternatives per token, or None for no log-probabilities."""
        return (self.top_logprobs or 0) if self.logprobs else None

    @property
    def limit(self) -> int | None:
        return self.max_completion_tokens or self.max_tokens


class CompletionLogprobs(BaseModel):
    """OpenAI's completions log-probabilities, one entry per token of the choice's text (with echo,
    the prompt's first: its first token has none), plus the end-of-text token that ended the
    answer, which the text does not hold."""

    tokens: list[str]
    token_logprobs: list[float | None]
    top_logprobs: list[dict[str, float] | None]
    text_offset: list[int] = Field(description="Where each token starts in the choice's text.")


class CompletionChoice(BaseModel):
    text: str
    index: int
    logprobs: CompletionLogprobs | None = Field(
        None, description="With logprobs in the request; null if the safety filter changed the answer."
    )
    finish_reason: str | None = Field(description="stop | length; null on a streamed chunk before the last.")


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class CompletionResponse(BaseModel):
    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int
    model: str
    choices: list[CompletionChoice]
    usage: Usage | None = Field(
        description="Always on an answer; on a stream, on the final chunk (see stream_options)."
    )


class AssistantMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str


class TopLogprob(BaseModel):
    token: str
    logprob: float
    bytes: list[int] = Field(description="The token's text as UTF-8 bytes.")


class TokenLogprob(TopLogprob):
    top_logprobs: list[TopLogprob] = Field(description="The likeliest tokens at this place, likeliest first.")


class ChatLogprobs(BaseModel):
    content: list[TokenLogprob]
    refusal: None = None


class ChatChoice(BaseModel):
    index: int
    message: AssistantMessage
    logprobs: ChatLogprobs | None = Field(
        None, description="With logprobs in the request; null if the safety filter changed the answer."
    )
    finish_reason: str


class ChatCompletionResponse(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[ChatChoice]
    usage: Usage


class ChatDelta(BaseModel):
    role: Literal["assistant"] | None = None
    content: str | None = None


class ChatChunkChoice(BaseModel):
    index: int
    delta: ChatDelta
    logprobs: None = None
    finish_reason: str | None = None


class ChatCompletionChunk(BaseModel):
    """One server-sent event of a streamed chat completion."""

    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: str
    choices: list[ChatChunkChoice]
    usage: Usage | None = None


class FeedbackRequest(Strict):
    response_id: Text = Field(min_length=1, max_length=100, description="The id of an earlier answer.")
    rating: int | None = Field(None, ge=1, le=5, description="1 (bad) to 5 (good).")
    correct_label: Annotated[int, Field(ge=0)] | Text | None = Field(
        None,
        description="For a classification: the right class, by index or by name (GET /v1/models lists the classes).",
    )
    correct_text: Text | None = Field(
        None, min_length=1, max_length=2000, description="For a completion: a better one."
    )
    comment: Text | None = Field(None, max_length=2000)

    @model_validator(mode="after")
    def _says_something(self) -> FeedbackRequest:
        if self.rating is None and self.correct_label is None and self.correct_text is None:
            raise ValueError("feedback needs a rating, a correct_label or a correct_text")
        return self


class FeedbackResponse(BaseModel):
    id: str
    stored: str
    note: str | None = Field(None, description="Set when the answer's inputs were no longer held: stored without them.")


def inline_schema(model: type[BaseModel]) -> dict:
    """``model``'s JSON schema with its definitions written in place: for a schema that is not an
    OpenAPI component (a streamed chunk), where a $ref would point into the document's root."""
    schema = model.model_json_schema(mode="serialization")
    defs = schema.pop("$defs", {})

    def resolve(node):
        if isinstance(node, dict):
            if "$ref" in node:
                return resolve(defs[node["$ref"].rsplit("/", 1)[-1]])
            return {k: resolve(v) for k, v in node.items()}
        return [resolve(v) for v in node] if isinstance(node, list) else node

    return resolve(schema)


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "aigc-ray"
    kind: str
    details: dict


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


MODERATION_MAX_CHARS = 20_000  # per text: what one request may ask the filter to read


class ModerationRequest(Strict):
    """OpenAI's moderation request: one text or a list of them."""

    model_config = ConfigDict(extra="ignore")

    input: Text | Annotated[list[Text], Field(min_length=1, max_length=32)] = Field(
        description=f"The text, or up to 32 texts, each at most {MODERATION_MAX_CHARS} characters."
    )
    model: Text | None = Field(None, max_length=100, description="aigc-moderation (the only one here).")

    @field_validator("input")
    @classmethod
    def _within_limits(cls, v: str | list[str]) -> str | list[str]:
        for text in [v] if isinstance(v, str) else v:
            if len(text) > MODERATION_MAX_CHARS:
                raise ValueError(f"a text of {len(text)} characters; at most {MODERATION_MAX_CHARS} each")
        return v

    @property
    def texts(self) -> list[str]:
        return [self.input] if isinstance(self.input, str) else list(self.input)


class ModerationResult(BaseModel):
    flagged: bool
    categories: dict[str, bool]
    category_scores: dict[str, float]
    category_applied_input_types: dict[str, list[str]]


class ModerationResponse(BaseModel):
    id: str
    model: str
    results: list[ModerationResult]
