"""The Serve application: a FastAPI ingress that composes the member deployments.

    POST /v1/classify      image + caption -> class probabilities (the ensemble's; members' on request)
    POST /v1/images/generations  GAN samples as base64 PNG, reproducible with a seed (text-to-image:
                           a prompt); OpenAI's images API. /v1/images is the same route
    POST /v1/videos        short clips from the video GAN as animated GIF or APNG
    POST /v1/completions   OpenAI-compatible completions from the language-model ensemble
    POST /v1/chat/completions  OpenAI-compatible chat over the same models (both stream on request)
    POST /v1/responses     OpenAI's Responses API over the same models (client.responses.create)
    POST /v1/feedback      a rating or correction for an earlier answer -> a feedback shard
    POST /v1/moderations   OpenAI's moderation: the safety filter's verdict on texts
    POST /v1/explain       why the ensemble answered as it did: IG attributions, modality shares
    GET  /v1/models        members, strategy, weights, metrics and lineage
    GET  /v1/members/stats each member replica's batch sizes so far
    GET  /v1/feedback/memory the answers this ingress replica holds for feedback, and their bytes
    GET  /healthz          liveness (no auth)

``build_app(args)`` is the application builder that ``serve run``/``serve deploy`` import
(``aigc_ray.serve.app:build_app``) with ``args = {"spec": <the resolved experiment spec>}``.
Ensemble weights and strategy live in the ingress's ``user_config``: changing them reconfigures
the running replicas in place, without a restart or a dropped request.

The safety filter (``spec.safety``, ``aigc_ray.safety``) reads every prompt (completions, chat,
text-to-image) and every generated text: a flagged prompt is refused (400,
content_policy_violation), redacted or only logged, per ``safety.action``; a flagged generation is
withheld (finish_reason content_filter) or redacted. Each decision is an audit record. If the
filter fails, the request fails (503): nothing passes unchecked.
"""

import asyncio
import contextlib
import functools
import hashlib
import hmac
import json
import os
import secrets
import time
import uuid
from functools import partial

import numpy as np
from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from ray import serve
from ray.exceptions import ActorUnavailableError, RayActorError
from starlette.exceptions import HTTPException as StarletteHTTPException

from ..data.digits import IMAGE_SIDE, WORDS
from ..data.feedback import feedback_row, write_feedback
from ..data.images import client_image_bytes, decode_client_image
from ..ensemble.build import ENSEMBLE_FILE
from ..ensemble.combine import STRATEGIES, Combiner
from ..ensemble.explain import resolve_target
from ..layout import ensemble_dir, feedback_uri, robustness_dir, safety_audit_uri
from ..manifest import folder_fingerprint, read_manifest
from ..safety.audit import audit_record, write_audit
from ..safety.moderator import Moderator, Verdict, openai_result, redact
from ..spec import ExperimentSpec
from ..spec.sections import SafetySpec, ServeSpec
from ..storage import Storage, join
from .batcher import MicroBatcher
from .generation import chat_logprobs
from .members import (
    ClassifierMember,
    ExplainerDeployment,
    GeneratorDeployment,
    LanguageModelDeployment,
    VideoGeneratorDeployment,
)
from .recent import INPUTS_EVICTED_NOTE, RecentAnswers
from .responses import ResponseObject, ResponsesRequest, response_events, response_object
from .schema import (
    AssistantMessage,
    ChatChoice,
    ChatChunkChoice,
    ChatCompletionChunk,
    ChatCompletionRequest,
    ChatCompletionResponse,
    ChatDelta,
    ClassifyRequest,
    ClassifyResponse,
    CompletionChoice,
    CompletionRequest,
    CompletionResponse,
    ErrorBody,
    ExplainRequest,
    ExplainResponse,
    FeedbackRequest,
    FeedbackResponse,
    ImageData,
    ImagesRequest,
    ImagesResponse,
    ModelCard,
    ModelList,
    ModerationRequest,
    ModerationResponse,
    Usage,
    VideoData,
    VideosRequest,
    VideosResponse,
    inline_schema,
)

LM_MODEL_ID = "aigc-lm"
ENSEMBLE_MODEL_ID = "aigc-ensemble"
MAX_IMAGE_SIDE = 512  # the largest /v1/images answer, in pixels per side
GENERATOR_MODEL_ID = "aigc-gan"
VIDEO_MODEL_ID = "aigc-video-gan"
MODERATION_MODEL_ID = "aigc-moderation"
STREAM_WINDOW = 400  # characters of a stream the filter rereads with each piece (phrases span pieces)
REPLICA_GONE = (RayActorError, ActorUnavailableError)  # a replica died or restarts under the request

api = FastAPI(title="aigc-ray ensemble", version="1", description=__doc__.split("\n\n")[0])


ERROR_TYPES = {
    401: "authentication_error",
    404: "not_found_error",
    413: "invalid_request_error",
    429: "rate_limit_error",
}


def error_body(status: int, message: str, detail=None) -> dict:
    """FastAPI's ``detail`` plus OpenAI's ``error`` object, so both kinds of client read the reason.
    Both may quote what the client sent: made ``printable``, so the body always encodes."""
    kind = ERROR_TYPES.get(status, "server_error" if status >= 500 else "invalid_request_error")
    return {
        "detail": printable(detail if detail is not None else message),
        "error": {"message": printable(message), "type": kind, "code": status},
    }


def printable(value):
    """``value`` with its text made valid UTF-8: an unpaired surrogate becomes its escape (the
    six characters \\ud800) and undecodable bytes theirs (\\xc0), so an error can quote any input
    back. Exceptions become their messages; numbers and the like pass through."""
    if isinstance(value, str):
        return value.encode("utf-8", "backslashreplace").decode("utf-8")
    if isinstance(value, bytes | bytearray):
        return bytes(value).decode("utf-8", "backslashreplace")
    if isinstance(value, dict):
        return {printable(k): printable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [printable(v) for v in value]
    if isinstance(value, BaseException):
        return printable(str(value))
    return value


def _field(loc) -> str:
    # pydantic names the union branch it tried in the location (prompt.list[function-before[...]]):
    # noise to a client, who wants the field
    return ".".join(str(p) for p in loc if p != "body" and not (isinstance(p, str) and p.endswith("]") and "[" in p))


@api.exception_handler(StarletteHTTPException)
async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
    return JSONResponse(error_body(exc.status_code, str(exc.detail)), exc.status_code, headers=exc.headers)


class ContentPolicyViolation(Exception):
    """A prompt the safety filter refuses: 400 with OpenAI's code content_policy_violation."""


@api.exception_handler(ContentPolicyViolation)
async def content_policy_error(request: Request, exc: ContentPolicyViolation) -> JSONResponse:
    body = error_body(400, str(exc))
    body["error"]["code"] = "content_policy_violation"
    return JSONResponse(body, 400)


@api.exception_handler(RequestValidationError)
async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
    """422 naming each field and rule. The errors quote the input, which may be what made it
    invalid (an unpaired surrogate, undecodable bytes): quoted ``printable``, never raw."""
    errors = printable(exc.errors())
    problems = "; ".join(f"{_field(e['loc'])}: {e['msg']}" for e in errors)
    return JSONResponse(error_body(422, problems, jsonable_encoder(errors)), 422)


# Documented on every /v1 route (the middleware's 411/413 and the auth's 401 included).
ERRORS = {
    400: "a request the server cannot serve (e.g. max_tokens over its limit), or a prompt the safety filter "
    "refuses (code content_policy_violation)",
    401: "missing or wrong bearer token",
    404: "unknown model, or a route this ensemble has no model for",
    411: "no Content-Length",
    413: "body over serve.max_request_bytes",
    422: "invalid request: the message names each field and the rule it broke",
    503: "overloaded, a deployment unavailable or the safety filter failing: retry later (Retry-After)",
    504: "no answer within serve.request_timeout_s",
}
ERROR_RESPONSES = {status: {"model": ErrorBody, "description": why} for status, why in ERRORS.items()}


# Requests past its capacity an ingress replica still takes in, only to answer them 503 at once
# (a coroutine each, no model work): enough that overload is answered in JSON, not by the proxy.
REJECTION_HEADROOM = 1000


@api.middleware("http")
async def admit(request: Request, call_next):
    """A JSON 503 with Retry-After once the replica holds its capacity (``ServeSpec.ingress_capacity``).
    Serve's own limit on the ingress is set above it, so overload is answered here, in the app's
    error shape, and not by the Serve proxy's plain-text backpressure reply."""
    state = request.app.state
    capacity = getattr(state, "capacity", None)
    if capacity is None or request.url.path == "/healthz":
        return await call_next(request)
    if state.in_flight >= capacity:
        body = error_body(503, f"overloaded: {capacity} requests in flight on this replica, retry later")
        return JSONResponse(body, 503, headers={"Retry-After": "1"})
    state.in_flight += 1
    try:
        return await call_next(request)
    finally:
        state.in_flight -= 1


@api.middleware("http")
async def limit_body_size(request: Request, call_next):
    """413 for bodies over the limit, before they are read; 411 for bodies of unknown length."""
    limit = request.app.state.max_request_bytes if hasattr(request.app.state, "max_request_bytes") else 1 << 20
    if request.method in ("POST", "PUT", "PATCH"):
        length = request.headers.get("content-length")
        if length is None:
            return JSONResponse(error_body(411, "send a Content-Length header (chunked bodies are not accepted)"), 411)
        if not length.isdigit() or int(length) > limit:
            return JSONResponse(error_body(413, f"request body over the limit of {limit} bytes"), 413)
    return await call_next(request)


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex}"


def usage_of(done: dict) -> Usage:
    """Token counts of a finished completion (``Completion`` fields, or a stream's last piece)."""
    return Usage(
        prompt_tokens=done["prompt_tokens"],
        completion_tokens=done["completion_tokens"],
        total_tokens=done["prompt_tokens"] + done["completion_tokens"],
    )


# A stream's events go out as they are made: not cached, and not collected by a reverse proxy
# (nginx, the committed load balancer, buffers a response until it ends unless told so).
SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


def sse(event) -> str:
    """One server-sent event: a chunk (a pydantic model) or an error body."""
    data = event.model_dump_json() if hasattr(event, "model_dump_json") else json.dumps(event)
    return f"data: {data}\n\n"


def streamed(chunk_model) -> dict:
    """The OpenAPI entry of a 200 that is JSON, or with stream: true, server-sent events of chunks."""
    return {
        "description": "The answer; with stream: true, server-sent events (data: <chunk>), then data: [DONE].",
        "content": {"text/event-stream": {"schema": inline_schema(chunk_model)}},
    }


def chat_messages(req: ChatCompletionRequest) -> list[dict]:
    """The conversation as chat templates take it (OpenAI's developer role is the system's)."""
    return [
        {
            "role": "system" if m.role == "developer" else m.role,
            "content": m.text,
            **({"name": m.name} if m.name else {}),
        }
        for m in req.messages
    ]


def chat_chunker(rid: str, created: int):
    """The chunks of a streamed chat answer: ``chunk(text, finish_reason, usage, choices=True)``."""

    def chunk(text: str, finish: str | None, usage: Usage | None, choices: bool = True) -> ChatCompletionChunk:
        delta = ChatDelta(role="assistant", content=text)  # every chunk says whose turn it is
        choice = ChatChunkChoice(index=0, delta=delta, finish_reason=finish)
        return ChatCompletionChunk(
            id=rid, created=created, model=LM_MODEL_ID, choices=[choice] if choices else [], usage=usage
        )

    return chunk


def read_token(env_name: str, file: str | None) -> str | None:
    """The bearer token from the environment or a secret file (never from the spec)."""
    if os.environ.get(env_name):
        return os.environ[env_name].strip()
    if file:
        try:
            with open(file) as f:
                return f.read().strip() or None
        except OSError as exc:
            raise RuntimeError(f"serve.auth_token_file {file}: {exc.strerror}") from None
    return None


async def require_token(request: Request) -> None:
    token = request.app.state.token
    if token is None:
        return
    given = request.headers.get("authorization", "")
    if not (given.startswith("Bearer ") and hmac.compare_digest(given[7:].encode(), token.encode())):
        raise HTTPException(401, "missing or wrong bearer token", headers={"WWW-Authenticate": "Bearer"})


def out_of_range(image: np.ndarray, low: np.ndarray, high: np.ndarray, tolerance: float) -> str | None:
    """What is wrong with ``image`` (C, H, W) against the training images' per-pixel range, or None."""
    below, above = image < low - tolerance, image > high + tolerance
    outside = below | above
    if not outside.any():
        return None
    c, y, x = (int(i) for i in np.argwhere(outside)[0])
    return (
        f"{int(outside.sum())} pixel(s) lie outside the range the models were trained on (± {tolerance:g}), "
        f"e.g. channel {c} row {y} column {x} is {image[c, y, x]:.2f}, trained {low[c, y, x]:.2f}-{high[c, y, x]:.2f}"
    )


def _input_range(storage: Storage, uri: str, doc: dict) -> tuple[np.ndarray, np.ndarray] | None:
    """The training images' per-pixel (min, max), for ensembles that recorded it."""
    if not doc.get("input_range"):
        return None
    from safetensors.numpy import load

    arrays = load(storage.read_bytes(join(uri, doc["input_range"])))
    return arrays["min"], arrays["max"]


# (above the class: the ingress replicas did not find it when it was defined after the class)
def _robustness_summary(storage: Storage, uri: str | None) -> dict | None:
    """{attack: {member or "ensemble": {ε: accuracy}}} with the captions replaced by one that names
    nothing (the image alone), from the committed robustness results; None when there are none."""
    from ..ensemble.robustness import read_robustness

    doc = read_robustness(storage, uri) if uri else None
    if doc is None:
        return None
    return {"captions": doc["vague_caption"], "examples": doc["examples"], **doc["results"]["vague"]}


@serve.deployment
@serve.ingress(api)
class EnsembleIngress:
    def __init__(
        self,
        placed: dict,
        settings: ServeSpec,
        members: dict,
        generator=None,
        lm=None,
        video=None,
        safety: SafetySpec | None = None,
        explainer=None,
    ):
        """``placed``: where this app's artifacts are (s3, ensemble_uri, feedback_uri, audit_uri),
        its name and the ensemble's version (a new version redeploys the ingress too);
        ``settings``: the spec's ``serve`` section; ``safety``: its ``safety`` section."""
        self.storage = Storage(placed["s3"])
        self.uri, self.spec_name = placed["ensemble_uri"], placed["name"]
        self.doc = json.loads(self.storage.read_bytes(join(self.uri, ENSEMBLE_FILE)))
        self.version = read_manifest(self.storage, self.uri).fingerprint[:16]
        self.members, self.generator, self.lm, self.video = members, generator, lm, video
        self.explainer = explainer
        self.names = list(members)
        self.timeout = settings.request_timeout_s
        self.max_tokens = settings.max_tokens
        self.max_images, self.max_prompt_chars = settings.max_images, settings.max_prompt_chars
        self.generator_config = (
            json.loads(self.storage.read_bytes(join(self.uri, "generator", "config.json"))) if generator else {}
        )
        # what the members were trained on (ensembles built before these were recorded: the digits)
        self.classes = list(self.doc.get("classes") or WORDS)
        self.image_shape = list(self.doc.get("image_shape") or [IMAGE_SIDE, IMAGE_SIDE, 1])
        self.feedback_uri = placed["feedback_uri"]
        self.robustness = _robustness_summary(self.storage, placed.get("robustness_uri"))
        self.refuse_out_of_range, self.range_tolerance = settings.refuse_out_of_range, settings.out_of_range_tolerance
        self.input_range = _input_range(self.storage, self.uri, self.doc)
        self.safety = safety or SafetySpec(enabled=False)
        self.moderator = Moderator(self.safety) if self.safety.enabled else None
        self.audit_uri = placed.get("audit_uri")
        self.responses = RecentAnswers(int(settings.feedback_memory_mb * 2**20), settings.feedback_answers)
        self.combiner = self._combiner(self.doc["strategy"], self.doc["weights"])
        # Dynamic batching happens here, not in each member: a batch of requests costs one call
        # per member (Serve's router and each member replica pay per call, ~4 ms of CPU each on 2
        # cores), and every member sees the same batch. Two batches in flight per member replica:
        # one running, the next formed and waiting, so no replica idles between batches
        # (``MicroBatcher``). A batch of one is no batching: calls go as they come.
        replicas = settings.autoscale_max_replicas or settings.replicas
        self.member_batches = MicroBatcher(
            self._members_answer,
            settings.max_batch_size,
            settings.batch_wait_ms / 1000,
            concurrency=replicas * (2 if settings.max_batch_size > 1 else settings.max_ongoing_requests),
        )
        api.state.token = read_token(settings.auth_token_env, settings.auth_token_file)
        api.state.max_request_bytes = settings.max_request_bytes
        api.state.capacity, api.state.in_flight = settings.ingress_capacity(len(self.names)), 0

    def _combiner(self, strategy: str, weights: dict) -> Combiner:
        if strategy not in STRATEGIES:
            raise ValueError(f"unknown strategy {strategy!r}; allowed: {', '.join(STRATEGIES)}")
        if set(weights) != set(self.names):
            raise ValueError(f"weights must name exactly the members {self.names}, got {sorted(weights)}")
        coef = intercept = None
        if strategy == "stacking":
            if self.doc["strategy"] != "stacking":
                raise ValueError("stacking needs a meta-model fitted at build time: rebuild with strategy 'stacking'")
            from safetensors.numpy import load

            arrays = load(self.storage.read_bytes(join(self.uri, "combiner.safetensors")))
            coef, intercept = arrays["coef"], arrays["intercept"]
        base = Combiner(strategy, [1.0 / len(self.names)] * len(self.names), coef, intercept)
        return base.with_weights([weights[n] for n in self.names])

    def reconfigure(self, user_config: dict) -> None:
        """Swap strategy and weights in place (Serve calls this on a new user_config)."""
        strategy = user_config.get("strategy", self.doc["strategy"])
        weights = user_config.get("weights", self.doc["weights"])
        self.combiner = self._combiner(strategy, weights)  # built fully first, then one assignment

    def _remember(self, rid: str, kind: str, answer: dict, **inputs) -> str:
        """Keep an answer (bounded, oldest dropped) so feedback can refer to it by its id."""
        self.responses.add(rid, kind, json.dumps(answer), **inputs)
        return rid

    @contextlib.contextmanager
    def _service_errors(self):
        """Overload, unavailability and timeouts of the deployments, as 503/504 answers."""
        from ray.serve.exceptions import BackPressureError, DeploymentUnavailableError

        try:
            yield
        except BackPressureError:
            raise HTTPException(503, "overloaded: a queue is full, retry later", headers={"Retry-After": "1"}) from None
        except (DeploymentUnavailableError, *REPLICA_GONE):
            raise HTTPException(503, "a deployment is unavailable, retry later", headers={"Retry-After": "1"}) from None
        except asyncio.TimeoutError:
            raise HTTPException(504, f"no answer within {self.timeout:g} s") from None

    async def _call(self, *calls):
        """Run deployment calls (zero-argument functions returning a handle call) concurrently
        within the request timeout. A call whose replica died is sent again (the router moves
        it to a live replica: every member call is idempotent)."""
        with self._service_errors():
            return await asyncio.wait_for(asyncio.gather(*(self._retrying(c) for c in calls)), self.timeout)

    @staticmethod
    async def _retrying(call, attempts: int = 4):
        for attempt in range(attempts):
            try:
                return await call()
            except REPLICA_GONE:
                if attempt == attempts - 1:
                    raise
                await asyncio.sleep(0.05 * 2**attempt)  # the router learns of the death meanwhile

    async def _members_answer(self, images: list[np.ndarray], texts: list[str]) -> list[list[list[float]]]:
        """Each member's probabilities for each request of a batch, as [request][member][class]."""
        outs = await self._call(*(partial(self.members[n].classify.remote, images, texts) for n in self.names))
        return [list(answers) for answers in zip(*outs, strict=True)]

    async def _verdicts(self, texts: list[str]) -> list[Verdict]:
        """The filter's verdicts. A filter that fails fails the request (503): nothing passes unchecked."""
        try:
            return await asyncio.to_thread(self.moderator.check, texts)
        except Exception as exc:  # noqa: BLE001 - whatever broke, the answer is the same: fail closed
            raise HTTPException(
                503,
                f"the safety filter failed ({type(exc).__name__}): the request is refused rather than answered "
                "unchecked; retry later",
                headers={"Retry-After": "1"},
            ) from None

    async def _audited(self, rid: str, route: str, stage: str, texts: list[str]) -> list[Verdict]:
        """Verdicts on ``texts``, each recorded under the audit URI before the answer goes out
        (an audit that cannot be written fails the request, like the filter itself)."""
        verdicts = await self._verdicts(texts)
        version = self.moderator.policy_version
        records = [
            audit_record(rid, route, stage, t, v, self.safety.action if v.flagged else "pass", version)
            for t, v in zip(texts, verdicts, strict=True)
        ]
        try:
            await asyncio.to_thread(write_audit, self.storage, self.audit_uri, records)
        except Exception as exc:  # noqa: BLE001 - as above
            raise HTTPException(
                503,
                f"the safety filter could not record its decision ({exc}); retry later",
                headers={"Retry-After": "1"},
            ) from None
        return verdicts

    async def _guard_prompts(self, rid: str, route: str, texts: list[str]) -> list[str]:
        """The prompts as the models get them: refused (block), masked (redact) or as sent (log,
        or nothing flagged)."""
        if self.moderator is None or not texts:
            return texts
        verdicts = await self._audited(rid, route, "prompt", texts)
        flagged = sorted({c for v in verdicts for c, hit in v.categories.items() if hit})
        if not flagged or self.safety.action == "log":
            return texts
        if self.safety.action == "block":
            raise ContentPolicyViolation(
                f"the prompt was flagged by the safety filter ({', '.join(flagged)}) and not answered; rephrase it"
            )
        return [redact(t, v) for t, v in zip(texts, verdicts, strict=True)]

    async def _guard_output(self, rid: str, route: str, text: str) -> tuple[str, bool]:
        """A generated text as the client gets it, and whether it was withheld (block)."""
        if self.moderator is None:
            return text, False
        (verdict,) = await self._audited(rid, route, "output", [text])
        if not verdict.flagged or self.safety.action == "log":
            return text, False
        if self.safety.action == "block":
            return "", True
        return redact(text, verdict), False

    def _model_image(self, b64: str) -> tuple[bytes, np.ndarray]:
        """A client's base64 image (bare or a data: URL): its file's bytes (what feedback keeps)
        and its pixels as the members read them (the data's shape), or 422 saying why not:
        undecodable, or (``serve.refuse_out_of_range``) with pixels outside the trained range."""
        height, _, channels = self.image_shape
        try:
            raw = client_image_bytes(b64)
            image = decode_client_image(raw, height, channels)
        except ValueError as e:
            raise HTTPException(422, f"image: {e}") from None
        if self.refuse_out_of_range and self.input_range is not None:
            problem = out_of_range(image, *self.input_range, self.range_tolerance)
            if problem:
                raise HTTPException(
                    422, f"image: {problem}; this server refuses such inputs (serve.refuse_out_of_range)"
                )
        return raw, image

    @api.get("/healthz")
    async def healthz(self) -> dict:
        return {"status": "ok", "version": self.version}

    @api.post(
        "/v1/classify",
        response_model=ClassifyResponse,
        responses=ERROR_RESPONSES,
        dependencies=[Depends(require_token)],
    )
    async def classify(self, req: ClassifyRequest) -> ClassifyResponse:
        raw, image = self._model_image(req.image)
        with self._service_errors():  # end to end: a request waiting for its batch counts too
            outs = await asyncio.wait_for(self.member_batches.submit(image, req.text), self.timeout)
        probs = np.asarray(outs)[:, None, :]  # (M, 1, C)
        combined = self.combiner(probs)[0]
        answer = {
            "label": int(combined.argmax()),
            "label_name": self.classes[int(combined.argmax())],
            "probabilities": [round(float(p), 6) for p in combined],
            "strategy": self.combiner.strategy,
        }
        rid = self._remember(new_id("clf"), "classify", answer, input_text=req.text, input_image=raw)
        members = {n: [round(float(p), 6) for p in o] for n, o in zip(self.names, outs, strict=True)}
        return ClassifyResponse(
            id=rid,
            model=f"{ENSEMBLE_MODEL_ID}@{self.version}",
            members=members if req.return_members else None,
            **answer,
        )

    def _check_count(self, n: int) -> None:
        if n > self.max_images:
            raise HTTPException(422, f"n: {n} requested; this server makes at most {self.max_images} per request")

    def _check_image_request(self, req: ImagesRequest) -> None:
        """What the generator can do with this request: a prompt for a text-to-image generator (and
        only for one), style mixing only for the style generator, within the server's limits."""
        if req.model not in (None, GENERATOR_MODEL_ID):
            raise HTTPException(404, f"model {req.model!r} not found; this server draws with {GENERATOR_MODEL_ID!r}")
        self._check_count(req.n)
        conditional = self.generator_config.get("condition") == "caption"
        if conditional and req.prompt is None:
            raise HTTPException(422, "prompt: required, this generator draws what the prompt describes")
        if not conditional and req.prompt is not None:
            raise HTTPException(
                422, "prompt: this generator is unconditional (trained without captions); leave prompt out"
            )
        if req.prompt is not None and len(req.prompt) > self.max_prompt_chars:
            raise HTTPException(
                422, f"prompt: {len(req.prompt)} characters; this server accepts at most {self.max_prompt_chars}"
            )
        if req.style_seed is not None and self.generator_config.get("generator") != "style":
            raise HTTPException(422, "style_seed: style mixing needs the style-based generator (gan.generator: style)")

    def _image_side(self, size: str | None) -> int:
        """The side of the served images: the generator's own, or a square whole multiple of it."""
        own = int(self.generator_config.get("image_size", 16))
        if size in (None, "auto"):
            return own
        width, height = (int(x) for x in size.split("x"))
        if width != height or width % own or width > MAX_IMAGE_SIDE:
            raise HTTPException(
                422,
                f"size: {size}; this generator draws {own}x{own} images: ask for a square whole multiple of "
                f"{own} up to {MAX_IMAGE_SIDE} (e.g. {own * 4}x{own * 4}), or leave size out",
            )
        return width

    @api.post(
        "/v1/images/generations",
        response_model=ImagesResponse,
        responses=ERROR_RESPONSES,
        dependencies=[Depends(require_token)],
    )
    @api.post(
        "/v1/images",
        response_model=ImagesResponse,
        responses=ERROR_RESPONSES,
        dependencies=[Depends(require_token)],
        description="The same as /v1/images/generations (OpenAI's path), kept for existing clients.",
    )
    async def images(self, req: ImagesRequest) -> ImagesResponse:
        if self.generator is None:
            raise HTTPException(404, "this ensemble has no generator: run the GAN sweep and rebuild the ensemble")
        self._check_image_request(req)
        seed = req.seed if req.seed is not None else secrets.randbelow(2**31)
        side = self._image_side(req.size)
        rid = new_id("img")
        prompt = req.prompt
        if prompt is not None:
            (prompt,) = await self._guard_prompts(rid, "/v1/images/generations", [prompt])
        (pngs,) = await self._call(partial(self.generator.generate.remote, req.n, seed, side, prompt, req.style_seed))
        answer = {"n": req.n, "seed": seed, "size": req.size}
        self._remember(rid, "images", answer, input_text=req.prompt or "")
        return ImagesResponse(
            id=rid,
            created=int(time.time()),
            model=GENERATOR_MODEL_ID,
            seed=seed,
            prompt=req.prompt,
            data=[ImageData(b64_json=p) for p in pngs],
        )

    @api.post(
        "/v1/videos", response_model=VideosResponse, responses=ERROR_RESPONSES, dependencies=[Depends(require_token)]
    )
    async def videos(self, req: VideosRequest) -> VideosResponse:
        if self.video is None:
            raise HTTPException(
                404, "this ensemble has no video generator: run the video sweep and rebuild the ensemble"
            )
        self._check_count(req.n)
        seed = req.seed if req.seed is not None else secrets.randbelow(2**31)
        (clips,) = await self._call(partial(self.video.generate.remote, req.n, seed, req.format, req.fps, req.scale))
        rid = self._remember(new_id("vid"), "videos", {"n": req.n, "seed": seed, "format": req.format})
        return VideosResponse(
            id=rid, created=int(time.time()), model=VIDEO_MODEL_ID, seed=seed, data=[VideoData(**c) for c in clips]
        )

    def _lm_limit(self, model: str, max_tokens: int) -> int:
        """The tokens a language-model request may make: 404 without a language model or for
        another model's name, 400 over the server's limit."""
        if self.lm is None:
            raise HTTPException(404, "this ensemble has no language model: fine-tune one and rebuild the ensemble")
        if model != LM_MODEL_ID:
            raise HTTPException(404, f"model {model!r} not found; this server has {LM_MODEL_ID!r}")
        if max_tokens > self.max_tokens:
            raise HTTPException(400, f"max_tokens is {max_tokens}; this server allows at most {self.max_tokens}")
        return max_tokens

    @api.post(
        "/v1/completions",
        response_model=CompletionResponse,
        responses={**ERROR_RESPONSES, 200: streamed(CompletionResponse)},
        dependencies=[Depends(require_token)],
    )
    async def completions(self, req: CompletionRequest) -> CompletionResponse | StreamingResponse:
        limit = self._lm_limit(req.model, req.max_tokens)
        rid, created = new_id("cmpl"), int(time.time())
        route = "/v1/completions"
        texts = await self._prompt_texts(req.prompts)
        guarded = await self._guard_prompts(rid, route, texts)
        # a prompt the filter masked is read as its masked text; the rest as sent (text or ids)
        prompts = [p if g == t else g for p, t, g in zip(req.prompts, texts, guarded, strict=True)]
        decoding = (limit, req.temperature, req.top_p, req.stops, req.seed)

        def remember(text: str) -> None:
            self._remember(rid, "completion", {"text": text}, input_text=texts[0])

        def chunk(text: str, finish: str | None, usage: Usage | None, choices: bool = True) -> CompletionResponse:
            choice = CompletionChoice(text=text, index=0, finish_reason=finish)
            return CompletionResponse(
                id=rid, created=created, model=LM_MODEL_ID, choices=[choice] if choices else [], usage=usage
            )

        if req.stream:  # one prompt (the schema refuses streaming a list)
            call = partial(self.lm.options(stream=True).stream.remote, prompts[0], *decoding)
            return await self._streamed(call, chunk, remember, req.usage_chunk, route=route, rid=rid)
        # a list of prompts: decoded concurrently (the replicas share them), one choice each
        if req.scored:
            scored = await self._call(
                *(partial(self.lm.complete_scored.remote, p, *decoding, req.logprobs, req.echo) for p in prompts)
            )
            if refused := next((o["refused"] for o in scored if "refused" in o), None):
                raise HTTPException(422, f"prompt: {refused}")
        else:
            dones = await self._call(*(partial(self.lm.complete.remote, p, *decoding) for p in prompts))
            scored = [{"completion": d, "prompt_text": "", "logprobs": None} for d in dones]
        choices = []
        for i, out in enumerate(scored):
            done = out["completion"]
            text, withheld = await self._guard_output(rid, route, done.text)
            # the tokens' log-probabilities would show what the filter took out of the text
            logprobs = out["logprobs"] if text == done.text else None
            finish = "content_filter" if withheld else done.finish_reason
            choices.append(
                CompletionChoice(text=out["prompt_text"] + text, index=i, logprobs=logprobs, finish_reason=finish)
            )
        dones = [o["completion"] for o in scored]
        if len(prompts) == 1:
            remember(choices[0].text)
        else:  # feedback on a batch refers to the whole batch
            answer = {"texts": [c.text for c in choices]}
            self._remember(rid, "completion", answer, input_text=json.dumps(texts, ensure_ascii=False))
        usage = Usage(
            prompt_tokens=sum(d.prompt_tokens for d in dones),
            completion_tokens=sum(d.completion_tokens for d in dones),
            total_tokens=sum(d.prompt_tokens + d.completion_tokens for d in dones),
        )
        return CompletionResponse(id=rid, created=created, model=LM_MODEL_ID, choices=choices, usage=usage)

    async def _prompt_texts(self, prompts: list[str | list[int]]) -> list[str]:
        """Each prompt's text: token ids as the model's tokenizer reads them (422 naming an id
        outside its vocabulary), text as sent."""
        ids = [p for p in prompts if not isinstance(p, str)]
        if not ids:
            return list(prompts)
        (read,) = await self._call(partial(self.lm.detokenize.remote, ids))
        if "refused" in read:
            raise HTTPException(422, f"prompt: {read['refused']}")
        texts = iter(read["texts"])
        return [p if isinstance(p, str) else next(texts) for p in prompts]

    async def _conversation(self, rid: str, route: str, messages: list[dict], field: str) -> tuple[str, list[str]]:
        """A conversation as the prompt the model continues and the stops that end its turn: the
        users' turns through the safety filter, then the model's chat template (422 naming
        ``field`` when the template refuses the conversation)."""
        said = [i for i, m in enumerate(messages) if m["role"] == "user"]
        guarded = await self._guard_prompts(rid, route, [messages[i]["content"] for i in said])
        for i, text in zip(said, guarded, strict=True):
            messages[i]["content"] = text
        (rendered,) = await self._call(partial(self.lm.render.remote, messages))
        if "refused" in rendered:
            raise HTTPException(422, f"{field}: {rendered['refused']}")
        return rendered["prompt"], rendered["stop"]

    @api.post(
        "/v1/chat/completions",
        response_model=ChatCompletionResponse,
        responses={**ERROR_RESPONSES, 200: streamed(ChatCompletionChunk)},
        dependencies=[Depends(require_token)],
    )
    async def chat_completions(self, req: ChatCompletionRequest) -> ChatCompletionResponse | StreamingResponse:
        limit = self._lm_limit(req.model, req.limit or self.max_tokens)
        rid, created = new_id("chatcmpl"), int(time.time())
        prompt, stops = await self._conversation(rid, "/v1/chat/completions", chat_messages(req), "messages")
        args = (prompt, limit, req.temperature, req.top_p, req.stops + stops, req.seed)

        def remember(text: str) -> None:
            self._remember(rid, "completion", {"text": text}, input_text=prompt)

        if req.stream:
            call = partial(self.lm.options(stream=True).stream.remote, *args)
            return await self._streamed(
                call,
                chat_chunker(rid, created),
                remember,
                req.usage_chunk,
                lstrip=True,
                route="/v1/chat/completions",
                rid=rid,
            )
        logprobs = None
        if req.logprobs_top is None:
            (done,) = await self._call(partial(self.lm.complete.remote, *args))
        else:
            (scored,) = await self._call(partial(self.lm.complete_scored.remote, *args, req.logprobs_top, False))
            done = scored["completion"]
            logprobs = chat_logprobs(scored["logprobs"], done.completion_tokens)
        text = done.text.lstrip()  # the template ends "Assistant:", the model goes on " ..."
        guarded, withheld = await self._guard_output(rid, "/v1/chat/completions", text)
        if guarded != text:  # the tokens' log-probabilities would show what the filter took out
            text, logprobs = guarded, None
        remember(text)
        return ChatCompletionResponse(
            id=rid,
            created=created,
            model=LM_MODEL_ID,
            choices=[
                ChatChoice(
                    index=0,
                    message=AssistantMessage(content=text),
                    logprobs=logprobs,
                    finish_reason="content_filter" if withheld else done.finish_reason,
                )
            ],
            usage=usage_of(vars(done)),
        )

    async def _streamed(
        self, call, chunk, remember, usage_chunk: bool, lstrip: bool = False, route: str = "", rid: str = ""
    ) -> StreamingResponse:
        """A streamed decode as server-sent events: ``chunk(text, finish_reason, usage)`` for each
        piece the model sends, usage on the final one (or, with stream_options.include_usage, in
        a last chunk without choices, as OpenAI sends it), then ``data: [DONE]``. The first piece
        is awaited before answering, so overload, an unavailable model and a timeout still get
        their status; a failure after that can only end the stream with an error event (OpenAI's
        ``data: {"error": ...}``). The answer is remembered for feedback once it is complete.
        With the safety filter on, the text so far is read before each piece goes out: once it is
        flagged, ``block`` ends the stream there (finish_reason content_filter, the decode
        stopped) and ``redact`` sends the piece masked; the final text is audited once."""
        deadline = time.monotonic() + self.timeout

        async def start():
            pieces = call()
            return pieces, await pieces.__anext__()

        with self._service_errors():
            pieces, first = await asyncio.wait_for(self._retrying(start), self.timeout)
        guarding = self.moderator is not None and self.safety.action != "log"

        async def events():
            piece, text, sent, finished, blocked = first, "", "", False, False
            try:
                with self._service_errors():
                    while True:
                        delta = piece["text"].lstrip() if lstrip and not text else piece["text"]
                        text += delta
                        if guarding and delta:  # the tail: what this piece may complete (O(1) a piece)
                            head, tail = text[:-STREAM_WINDOW], text[-STREAM_WINDOW:]
                            (verdict,) = await self._verdicts([tail])
                            if verdict.flagged and (self.safety.action == "block" or not verdict.spans):
                                blocked = True  # nothing to mask (the classifier's flag): the stream ends here
                                break
                            delta = (head + redact(tail, verdict))[len(sent) :] if verdict.flagged else delta
                        if "finish_reason" in piece:
                            break
                        if delta:
                            sent += delta
                            yield sse(chunk(delta, None, None))
                        piece = await asyncio.wait_for(pieces.__anext__(), deadline - time.monotonic())
                    if self.moderator is not None:  # the decision on the whole text, once
                        await self._audited(rid, route, "output", [text])
                finished = True
                if blocked:
                    if "finish_reason" not in piece:
                        pieces.cancel()  # the rest of the decode would not be sent
                    remember(sent)
                    yield sse(chunk("", "content_filter", None))
                else:
                    remember(sent + delta)  # before the last events: a client may hang up once it has the text
                    usage = usage_of(piece)
                    yield sse(chunk(delta, piece["finish_reason"], None if usage_chunk else usage))
                    if usage_chunk:
                        yield sse(chunk("", None, usage, choices=False))
            except HTTPException as e:
                yield sse(error_body(e.status_code, str(e.detail)))
            finally:
                if not finished:
                    pieces.cancel()  # the client hung up or the stream failed: stop the decode
            yield "data: [DONE]\n\n"

        return StreamingResponse(events(), media_type="text/event-stream", headers=SSE_HEADERS)

    @api.post(
        "/v1/responses",
        response_model=ResponseObject,
        responses={**ERROR_RESPONSES, 200: streamed(ResponseObject)},
        dependencies=[Depends(require_token)],
        description="OpenAI's Responses API (client.responses.create): the conversation in input, answered by the "
        "language model as one assistant message (response.output_text).",
    )
    async def responses(self, req: ResponsesRequest) -> ResponseObject | StreamingResponse:
        limit = self._lm_limit(req.model, req.max_output_tokens or self.max_tokens)
        rid, created = new_id("resp"), int(time.time())
        prompt, stops = await self._conversation(rid, "/v1/responses", req.messages(), "input")
        args = (prompt, limit, req.temperature, req.top_p, stops, None)

        def remember(text: str) -> None:
            self._remember(rid, "completion", {"text": text}, input_text=prompt)

        if req.stream:  # the chat route's guarded stream, told as the Responses API's events
            call = partial(self.lm.options(stream=True).stream.remote, *args)
            chat = await self._streamed(
                call, chat_chunker(rid, created), remember, False, lstrip=True, route="/v1/responses", rid=rid
            )
            events = response_events(chat.body_iterator, rid, new_id("msg"), created, req)
            return StreamingResponse(events, media_type="text/event-stream", headers=SSE_HEADERS)
        (done,) = await self._call(partial(self.lm.complete.remote, *args))
        text, withheld = await self._guard_output(rid, "/v1/responses", done.text.lstrip())
        remember(text)
        finish = "content_filter" if withheld else done.finish_reason
        return response_object(rid, new_id("msg"), created, req, text, finish, vars(done))

    @api.post(
        "/v1/explain",
        response_model=ExplainResponse,
        responses=ERROR_RESPONSES,
        dependencies=[Depends(require_token)],
    )
    async def explain(self, req: ExplainRequest) -> ExplainResponse:
        """Integrated Gradients on the pixels and the caption's tokens, and the exact Shapley
        modality shares, for the ensemble's answer (or ``target``), from the explainer deployment."""
        if self.explainer is None:
            raise HTTPException(404, "this app serves no explainer")
        _, image = self._model_image(req.image)
        try:
            target = resolve_target(self.classes, req.target)
        except ValueError as e:
            raise HTTPException(422, f"target: {e}") from None
        (doc,) = await self._call(partial(self.explainer.explain.remote, image, req.text, target, req.steps))
        return ExplainResponse(id=new_id("expl"), model=f"{ENSEMBLE_MODEL_ID}@{self.version}", **doc)

    @api.post(
        "/v1/moderations",
        response_model=ModerationResponse,
        responses=ERROR_RESPONSES,
        dependencies=[Depends(require_token)],
    )
    async def moderations(self, req: ModerationRequest) -> ModerationResponse:
        """The safety filter's verdict on each text, in OpenAI's shape (the client's moderations.create)."""
        if req.model not in (None, MODERATION_MODEL_ID, "omni-moderation-latest", "text-moderation-latest"):
            raise HTTPException(
                404, f"model {req.model!r} not found; this server moderates with {MODERATION_MODEL_ID!r}"
            )
        if self.moderator is None:
            raise HTTPException(404, "the safety filter is off on this server (safety.enabled: false)")
        verdicts = await self._verdicts(req.texts)
        return ModerationResponse(
            id=new_id("modr"), model=MODERATION_MODEL_ID, results=[openai_result(v) for v in verdicts]
        )

    @api.post(
        "/v1/feedback",
        response_model=FeedbackResponse,
        responses=ERROR_RESPONSES,
        dependencies=[Depends(require_token)],
    )
    async def feedback(self, req: FeedbackRequest) -> FeedbackResponse:
        record = self.responses.get(req.response_id)
        if record is None:
            raise HTTPException(404, f"unknown response_id {req.response_id!r} (answers are remembered per replica)")
        if req.correct_label is not None and record["kind"] != "classify":
            raise HTTPException(422, "correct_label applies to classifications only")
        try:  # a class the members were not trained on would become a row no model can learn
            label = resolve_target(self.classes, req.correct_label)
        except ValueError as e:
            raise HTTPException(422, f"correct_label: {e}") from None
        if req.correct_text is not None and record["kind"] != "completion":
            raise HTTPException(422, "correct_text applies to completions only")
        fid = uuid.uuid4().hex
        row = feedback_row(fid, req, record, self.version, correct_label=label)
        uri = await asyncio.to_thread(write_feedback, self.storage, self.feedback_uri, row)
        return FeedbackResponse(id=fid, stored=uri, note=INPUTS_EVICTED_NOTE if record.get("inputs_evicted") else None)

    @api.get("/v1/models", response_model=ModelList, responses=ERROR_RESPONSES, dependencies=[Depends(require_token)])
    async def models(self) -> ModelList:
        return ModelList(data=self._model_cards())

    @api.get(
        "/v1/models/{model_id}",
        response_model=ModelCard,
        responses=ERROR_RESPONSES,
        dependencies=[Depends(require_token)],
        description="One model's card, as OpenAI's client.models.retrieve(id) asks for it.",
    )
    async def model(self, model_id: str) -> ModelCard:
        cards = {card.id: card for card in self._model_cards()}
        if model_id not in cards:
            raise HTTPException(404, f"model {model_id!r} not found; this server has {', '.join(cards)}")
        return cards[model_id]

    def _model_cards(self) -> list[ModelCard]:
        created = int(time.time())
        weights = dict(zip(self.names, self.combiner.weights, strict=True))
        cards = [
            ModelCard(
                id=ENSEMBLE_MODEL_ID,
                created=created,
                kind="classifier-ensemble",
                details={
                    "version": self.version,
                    "artifact": self.uri,
                    "strategy": self.combiner.strategy,
                    "weights": weights,
                    "members": self.doc["members"],
                    "metrics": self.doc["metrics"],
                    "classes": self.classes,
                    "image_shape": self.image_shape,  # height, width, channels
                    # accuracy under attack per member and the ensemble, when `aigc robustness` ran
                    "robustness": self.robustness,
                    "refuses_out_of_range": self.refuse_out_of_range and self.input_range is not None,
                },
            )
        ]
        if self.generator is not None:
            details = {**self.doc["generator"], "config": self.generator_config}
            cards.append(ModelCard(id=GENERATOR_MODEL_ID, created=created, kind="gan-generator", details=details))
        if self.video is not None:
            cards.append(
                ModelCard(
                    id=VIDEO_MODEL_ID, created=created, kind="video-gan-generator", details=self.doc["video_generator"]
                )
            )
        if self.lm is not None:
            cards.append(
                ModelCard(
                    id=LM_MODEL_ID,
                    created=created,
                    kind="lm-ensemble",
                    details={"members": self.doc["language_models"]},
                )
            )
        return cards

    @api.get("/v1/members/stats", responses=ERROR_RESPONSES, dependencies=[Depends(require_token)])
    async def member_stats(self) -> dict:
        """Per member, summed over its live replicas: how many batches of each size have run."""
        out = {}
        for n in self.names:
            per_replica = await self.members[n].broadcast("batch_stats").results_async(timeout_s=self.timeout)
            total: dict[str, int] = {}
            for stats in per_replica:
                for size, count in stats.items():
                    total[str(size)] = total.get(str(size), 0) + count
            out[n] = {"replicas": len(per_replica), "batches": total}
        return out

    @api.get("/v1/feedback/memory", responses=ERROR_RESPONSES, dependencies=[Depends(require_token)])
    async def feedback_memory(self) -> dict:
        """This ingress replica's remembered answers: how many, how many still hold their inputs,
        the inputs' bytes against ``serve.feedback_memory_mb``, and how many lost them so far."""
        return self.responses.stats()


def _versioned(deployment, *inputs):
    """``deployment`` with a code version derived from what its replicas are built from.

    Serve gives each deployment of a ``serve.run`` call a random code version when none is set,
    so every call restarted every replica of every deployment: a weights change (user_config) was
    a rolling redeploy of the whole app, not the in-place reconfigure it is with ``serve deploy``
    (which versions by the config's hash). With a version from the package's sources and the
    replica's inputs, a call whose inputs are unchanged leaves those replicas running and only
    reconfigures (user_config) or rescales them; changed inputs or code (committed or not) still
    redeploy. ``Deployment.options`` takes ``version`` only with ``_internal`` since Ray removed
    it from the public options; Serve's own builders pass it the same way."""
    text = json.dumps([_source_digest(), *inputs], sort_keys=True, default=repr)
    return deployment.options(version=hashlib.sha256(text.encode()).hexdigest()[:16], _internal=True)


@functools.cache
def _source_digest() -> str:
    """sha256 of the package's Python sources: what the replicas run, edited or committed."""
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    h = hashlib.sha256()
    for path in sorted(root.rglob("*.py")):
        h.update(str(path.relative_to(root)).encode() + b"\0" + path.read_bytes())
    return h.hexdigest()


def build_app(args: dict):
    """The application builder: ``{"spec": <experiment spec as a dict>, "user_config": <optional
    {"strategy", "weights"}; default: the ensemble's own>}`` -> the Serve app."""
    spec = ExperimentSpec(**args["spec"])
    s = spec.serve
    storage = Storage.from_spec(spec.storage)
    uri = ensemble_dir(spec)
    if read_manifest(storage, uri) is None:
        raise FileNotFoundError(f"no committed ensemble at {uri}: run `aigc ensemble build` first")
    doc = json.loads(storage.read_bytes(join(uri, ENSEMBLE_FILE)))
    version = read_manifest(storage, uri).fingerprint
    common = {
        "ray_actor_options": {"num_cpus": s.cpus_per_replica, "num_gpus": s.gpus_per_replica},
        "max_ongoing_requests": s.max_ongoing_requests,
        "max_queued_requests": s.max_queued_requests,
        "graceful_shutdown_wait_loop_s": s.drain_check_s,
    }
    scaling = (
        {"autoscaling_config": {"min_replicas": s.replicas, "max_replicas": s.autoscale_max_replicas}}
        if s.autoscale_max_replicas
        else {"num_replicas": s.replicas}
    )
    member_args = {m["name"]: (uri, m["name"], storage.s3, version) for m in doc["members"]}
    members = {
        name: _versioned(ClassifierMember, *a).options(name=f"member-{name}", **common, **scaling).bind(*a)
        for name, a in member_args.items()
    }
    generator = (
        _versioned(GeneratorDeployment, uri, storage.s3, version)
        .options(name="generator", **common)
        .bind(uri, storage.s3)
        if doc["generator"]
        else None
    )
    video = (
        _versioned(VideoGeneratorDeployment, uri, storage.s3, version)
        .options(name="video-generator", **common)
        .bind(uri, storage.s3)
        if doc.get("video_generator")
        else None
    )
    explainer = (
        _versioned(ExplainerDeployment, uri, storage.s3, version)
        .options(name="explainer", **common)
        .bind(uri, storage.s3)
    )
    lm_uris = [lm["uri"] for lm in doc["language_models"]]
    # the language models live outside the ensemble's folder: their own fingerprints version them
    lm = (
        _versioned(LanguageModelDeployment, lm_uris, storage.s3, [folder_fingerprint(storage, u) for u in lm_uris])
        .options(name="language-model", **common)
        .bind(lm_uris, storage.s3)
        if lm_uris
        else None
    )
    placed = {
        "s3": storage.s3,
        "ensemble_uri": uri,
        "feedback_uri": feedback_uri(spec),
        "audit_uri": safety_audit_uri(spec),
        "robustness_uri": robustness_dir(spec),
        "name": spec.name,
        "version": version,  # a new artifact version redeploys the ingress too
        # and so do new robustness results (/v1/models shows them)
        "robustness_version": getattr(read_manifest(storage, robustness_dir(spec)), "fingerprint", None),
    }
    ingress = _versioned(
        EnsembleIngress, placed, s, sorted(members), bool(generator), bool(lm), bool(video), spec.safety
    ).options(
        name="ingress",
        num_replicas=s.ingress_replicas,
        ray_actor_options={"num_cpus": s.cpus_per_replica},
        # Serve's limit sits above the replica's own (``admit``), so excess requests reach the app
        # and get its JSON 503; the proxy's plain-text one is only a last resort
        # (its router also queues requests for a moment while it picks a replica: room for that too)
        max_ongoing_requests=s.ingress_capacity(len(members)) + REJECTION_HEADROOM,
        max_queued_requests=REJECTION_HEADROOM,
        graceful_shutdown_wait_loop_s=s.drain_check_s,
        user_config=args.get("user_config") or {"strategy": doc["strategy"], "weights": doc["weights"]},
    )
    return ingress.bind(placed, s, members, generator, lm, video, spec.safety, explainer)
