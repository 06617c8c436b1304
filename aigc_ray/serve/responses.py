"""OpenAI's Responses API (``POST /v1/responses``) over the served language model: what
``client.responses.create(...)`` sends and what it reads back (``response.output_text``).

A request is a conversation like a chat completion's (``input``: a text or message items, with
``instructions`` as the system's turn first), answered as one assistant message. The server keeps
no conversations and calls no tools, so ``previous_response_id``, ``conversation``, ``tools`` and
JSON output are refused by name, as on the chat route. ``stream: true`` answers the Responses
API's events (response.created ... response.output_text.delta ... response.completed), told from
the chat route's guarded stream (``response_events``).
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from .schema import CallsNoTools, Strict, Text, only_no_op

ROLES = Literal["system", "developer", "user", "assistant"]


class ContentPart(BaseModel):
    """A text part of a message item: ``input_text`` (what the user said) or ``output_text`` (an
    earlier answer sent back with its ``annotations``). Images and files are refused by type."""

    model_config = ConfigDict(extra="ignore")
    type: Literal["input_text", "output_text"]
    text: Text


class MessageItem(BaseModel):
    """One turn of ``input``; an earlier answer comes back with its ``id`` and ``status``."""

    model_config = ConfigDict(extra="ignore")
    type: Literal["message"] = "message"
    role: ROLES
    content: Text | list[ContentPart]

    @property
    def text(self) -> str:
        return self.content if isinstance(self.content, str) else "".join(p.text for p in self.content)


class ResponsesRequest(Strict, CallsNoTools):
    """OpenAI's Responses request, text in and text out. Fields that change nothing here
    (``store``, ``metadata``, ``truncation``, ...) are ignored."""

    model_config = ConfigDict(extra="ignore")

    model: Text = Field(description="aigc-lm (GET /v1/models lists this server's).")
    input: Text | Annotated[list[MessageItem], Field(min_length=1, max_length=64)] = Field(
        description="The user's text, or the conversation as message items."
    )
    instructions: Text | None = Field(None, description="The system's turn, put first.")
    max_output_tokens: int | None = Field(None, ge=1, description="Default: the server's serve.max_tokens.")
    temperature: float = Field(1.0, ge=0, le=2)
    top_p: float = Field(1.0, gt=0, le=1)
    stream: bool = Field(False, description="Answer as server-sent events (OpenAI's response.* events).")
    user: Text | None = Field(None, max_length=200, description="Accepted for OpenAI compatibility; unused.")
    text: dict[str, Any] | None = Field(None, description='format {"type": "text"} only: no JSON output.')
    previous_response_id: Text | None = Field(None, description="Refused: send the whole conversation as input.")
    conversation: Any = Field(None, description="Refused: send the whole conversation as input.")
    include: list[Any] | None = Field(None, description="Empty only (no log-probabilities, no tool outputs).")
    reasoning: dict[str, Any] | None = Field(None, description="Empty only: the model does not reason apart.")
    background: bool | None = Field(None, description="false only: answered in the request.")
    prompt: Any = Field(None, description="Refused: no stored prompt templates here.")

    @field_validator("text")
    @classmethod
    def _text_format(cls, v: dict | None) -> dict | None:
        if v is not None and v.get("format") not in (None, {"type": "text"}):
            only_no_op("text.format", v.get("format"), ())
        return v

    @field_validator("previous_response_id", "conversation", "prompt")
    @classmethod
    def _no_stored_state(cls, v: Any, info) -> Any:
        if v is not None:
            raise ValueError(
                f"{info.field_name}: this server keeps no conversations or prompts; send the whole conversation as input"
            )
        return v

    @field_validator("include")
    @classmethod
    def _nothing_included(cls, v: list | None) -> list | None:
        return only_no_op("include", v, ([],))

    @field_validator("reasoning")
    @classmethod
    def _no_reasoning(cls, v: dict | None) -> dict | None:
        return only_no_op("reasoning", v, ({},))

    @field_validator("background")
    @classmethod
    def _in_the_request(cls, v: bool | None) -> bool | None:
        return only_no_op("background", v, (False,))

    @field_validator("input")
    @classmethod
    def _not_too_long(cls, v: str | list[MessageItem]) -> str | list[MessageItem]:
        chars = len(v) if isinstance(v, str) else sum(len(m.text) for m in v)
        if not 0 < chars <= 8000:
            raise ValueError(f"the input holds {chars} characters; 1 to 8000")
        return v

    def messages(self) -> list[dict]:
        """The conversation as chat templates take it: the instructions as the system's turn first
        (OpenAI's developer role is the system's)."""
        items = [MessageItem(role="user", content=self.input)] if isinstance(self.input, str) else self.input
        turns = [{"role": "system", "content": self.instructions}] if self.instructions else []
        return turns + [{"role": "system" if m.role == "developer" else m.role, "content": m.text} for m in items]


class OutputText(BaseModel):
    type: Literal["output_text"] = "output_text"
    text: str
    annotations: list = Field(default_factory=list)


class OutputMessage(BaseModel):
    type: Literal["message"] = "message"
    id: str
    status: Literal["in_progress", "completed", "incomplete"]
    role: Literal["assistant"] = "assistant"
    content: list[OutputText]


class ResponseUsage(BaseModel):
    input_tokens: int
    input_tokens_details: dict = Field(default_factory=lambda: {"cached_tokens": 0})
    output_tokens: int
    output_tokens_details: dict = Field(default_factory=lambda: {"reasoning_tokens": 0})
    total_tokens: int


class ResponseObject(BaseModel):
    """The answer, in the shape the openai client's ``Response`` reads (``output_text`` joins
    the message's text). ``status`` is ``incomplete`` when ``max_output_tokens`` cut it
    (``incomplete_details.reason``) or the safety filter withheld it (``content_filter``)."""

    id: str
    object: Literal["response"] = "response"
    created_at: int
    status: Literal["in_progress", "completed", "incomplete"]
    incomplete_details: dict | None = None
    error: dict | None = None
    model: str
    output: list[OutputMessage]
    instructions: str | None = None
    max_output_tokens: int | None = None
    temperature: float
    top_p: float
    parallel_tool_calls: bool = False
    tool_choice: str = "none"
    tools: list = Field(default_factory=list)
    text: dict = Field(default_factory=lambda: {"format": {"type": "text"}})
    metadata: dict = Field(default_factory=dict)
    usage: ResponseUsage | None = None


INCOMPLETE = {"length": "max_output_tokens", "content_filter": "content_filter"}


def response_object(
    rid: str, message_id: str, created: int, req: ResponsesRequest, text: str, finish: str | None, usage: dict | None
) -> ResponseObject:
    """``text`` (the answer, filtered) ended by ``finish`` (stop | length | content_filter; None:
    still being written) as a Response; ``usage``: prompt_tokens and completion_tokens."""
    reason = INCOMPLETE.get(finish or "")
    status = "in_progress" if finish is None else "incomplete" if reason else "completed"
    return ResponseObject(
        id=rid,
        created_at=created,
        status=status,
        incomplete_details={"reason": reason} if reason else None,
        model=req.model,
        output=[] if finish is None else [OutputMessage(id=message_id, status=status, content=[OutputText(text=text)])],
        instructions=req.instructions,
        max_output_tokens=req.max_output_tokens,
        temperature=req.temperature,
        top_p=req.top_p,
        usage=None
        if usage is None
        else ResponseUsage(
            input_tokens=usage["prompt_tokens"],
            output_tokens=usage["completion_tokens"],
            total_tokens=usage["prompt_tokens"] + usage["completion_tokens"],
        ),
    )


async def response_events(
    chat_events: AsyncIterator[str], rid: str, message_id: str, created: int, req: ResponsesRequest
) -> AsyncIterator[str]:
    """A streamed chat answer (``data: <chat.completion.chunk>`` events, then ``data: [DONE]``)
    as the Responses API streams one: the response created, its message and text part added, a
    ``response.output_text.delta`` per piece, the text, part and message done, then
    ``response.completed`` (or ``response.incomplete``, with the reason) holding the whole
    response; an error event for a failure mid-stream. Each event numbered in order."""
    sequence = 0

    def event(kind: str, **fields) -> str:
        nonlocal sequence
        body = json.dumps({"type": kind, "sequence_number": sequence, **fields})
        sequence += 1
        return f"event: {kind}\ndata: {body}\n\n"

    def message(status: str, text: str | None) -> dict:
        content = [] if text is None else [OutputText(text=text).model_dump()]
        return {"type": "message", "id": message_id, "status": status, "role": "assistant", "content": content}

    where = {"item_id": message_id, "output_index": 0, "content_index": 0}
    started = response_object(rid, message_id, created, req, "", None, None).model_dump()
    yield event("response.created", response=started)
    yield event("response.in_progress", response=started)
    yield event("response.output_item.added", output_index=0, item=message("in_progress", None))
    yield event("response.content_part.added", **where, part=OutputText(text="").model_dump())
    text, finish, usage = "", None, None
    try:
        async for raw in chat_events:
            for line in raw.splitlines():
                if not line.startswith("data: {"):
                    continue  # "data: [DONE]" ends the chat stream; this one ends with its last event
                data = json.loads(line[6:])
                if "error" in data:
                    error = data["error"]
                    yield event("error", code=str(error.get("code")), message=error.get("message"), param=None)
                    return
                for choice in data.get("choices") or []:
                    delta = choice["delta"].get("content") or ""
                    if delta:
                        text += delta
                        yield event("response.output_text.delta", **where, delta=delta, logprobs=[])
                    finish = choice.get("finish_reason") or finish
                usage = data.get("usage") or usage
    finally:  # a client that hangs up here stops the decode there, as on the chat route
        await chat_events.aclose()
    done = response_object(rid, message_id, created, req, text, finish or "stop", usage).model_dump()
    status = done["status"]
    yield event("response.output_text.done", **where, text=text, logprobs=[])
    yield event("response.content_part.done", **where, part=OutputText(text=text).model_dump())
    yield event("response.output_item.done", output_index=0, item=message(status, text))
    yield event("response.completed" if status == "completed" else "response.incomplete", response=done)
