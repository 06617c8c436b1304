"""The Serve application: a FastAPI ingress that composes the member deployments.

    POST /v1/classify      image + caption -> class probabilities (the ensemble's; members' on request)
    POST /v1/images        GAN samples as base64 PNG, reproducible with a seed (text-to-image: a prompt)
    POST /v1/videos        short clips from the video GAN as animated GIF or APNG
    POST /v1/completions   OpenAI-compatible completions from the language-model ensemble
    POST /v1/feedback      a rating or correction for an earlier answer -> a feedback shard
    GET  /v1/models        members, strategy, weights, metrics and lineage
    GET  /v1/members/stats each member replica's batch sizes so far
    GET  /healthz          liveness (no auth)

``build_app(args)`` is the application builder that ``serve run``/``serve deploy`` import
(``aigc_ray.serve.app:build_app``) with ``args = {"spec": <the resolved experiment spec>}``.
Ensemble weights and strategy live in the ingress's ``user_config``: changing them reconfigures
the running replicas in place, without a restart or a dropped request.
"""

import asyncio
import base64
import hmac
import json
import os
import secrets
import time
import uuid
from collections import OrderedDict
from functools import partial

import numpy as np
from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from ray import serve
from ray.exceptions import ActorUnavailableError, RayActorError
from starlette.exceptions import HTTPException as StarletteHTTPException

from ..data.digits import IMAGE_SIDE, WORDS
from ..data.feedback import feedback_row, write_feedback
from ..data.images import decode_image_b64
from ..ensemble.build import ENSEMBLE_FILE
from ..ensemble.combine import STRATEGIES, Combiner
from ..layout import ensemble_dir, feedback_uri
from ..manifest import read_manifest
from ..spec import ExperimentSpec
from ..spec.sections import ServeSpec
from ..storage import Storage, join
from .members import ClassifierMember, GeneratorDeployment, LanguageModelDeployment, VideoGeneratorDeployment
from .schema import (
    ClassifyRequest,
    ClassifyResponse,
    CompletionChoice,
    CompletionRequest,
    CompletionResponse,
    FeedbackRequest,
    FeedbackResponse,
    ImageData,
    ImagesRequest,
    ImagesResponse,
    ModelCard,
    ModelList,
    Usage,
    VideoData,
    VideosRequest,
    VideosResponse,
)

LM_MODEL_ID = "aigc-lm"
ENSEMBLE_MODEL_ID = "aigc-ensemble"
MAX_IMAGE_SIDE = 512  # the largest /v1/images answer, in pixels per side
GENERATOR_MODEL_ID = "aigc-gan"
VIDEO_MODEL_ID = "aigc-video-gan"
REMEMBERED_RESPONSES = 10_000
REPLICA_GONE = (
    RayActorError,
    ActorUnavailableError,
)  # a replica died or restarts under the request  # answers that feedback can refer to, per ingress replica

api = FastAPI(title="aigc-ray ensemble", version="1", description=__doc__.split("\n\n")[0])


ERROR_TYPES = {
    401: "authentication_error",
    404: "not_found_error",
    413: "invalid_request_error",
    429: "rate_limit_error",
}


def error_body(status: int, message: str, detail=None) -> dict:
    """FastAPI's ``detail`` plus OpenAI's ``error`` object, so both kinds of client read the reason."""
    kind = ERROR_TYPES.get(status, "server_error" if status >= 500 else "invalid_request_error")
    return {
        "detail": detail if detail is not None else message,
        "error": {"message": message, "type": kind, "code": status},
    }


@api.exception_handler(StarletteHTTPException)
async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
    return JSONResponse(error_body(exc.status_code, str(exc.detail)), exc.status_code, headers=exc.headers)


@api.exception_handler(RequestValidationError)
async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
    problems = "; ".join(f"{'.'.join(str(p) for p in e['loc'] if p != 'body')}: {e['msg']}" for e in exc.errors())
    return JSONResponse(error_body(422, problems, jsonable_encoder(exc.errors())), 422)


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


@serve.deployment
@serve.ingress(api)
class EnsembleIngress:
    def __init__(self, placed: dict, settings: ServeSpec, members: dict, generator=None, lm=None, video=None):
        """``placed``: where this app's artifacts are (s3, ensemble_uri, feedback_uri), its name and
        the ensemble's version (a new version redeploys the ingress too); ``settings``: the spec's
        ``serve`` section."""
        self.storage = Storage(placed["s3"])
        self.uri, self.spec_name = placed["ensemble_uri"], placed["name"]
        self.doc = json.loads(self.storage.read_bytes(join(self.uri, ENSEMBLE_FILE)))
        self.version = read_manifest(self.storage, self.uri).fingerprint[:16]
        self.members, self.generator, self.lm, self.video = members, generator, lm, video
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
        self.responses: OrderedDict[str, dict] = OrderedDict()
        self.combiner = self._combiner(self.doc["strategy"], self.doc["weights"])
        api.state.token = read_token(settings.auth_token_env, settings.auth_token_file)
        api.state.max_request_bytes = settings.max_request_bytes

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

    def _remember(self, prefix: str, kind: str, answer: dict, **inputs) -> str:
        """Keep an answer (bounded, oldest dropped) so feedback can refer to it by id."""
        rid = f"{prefix}-{uuid.uuid4().hex}"
        self.responses[rid] = {"kind": kind, "answer": json.dumps(answer), **inputs}
        while len(self.responses) > REMEMBERED_RESPONSES:
            self.responses.popitem(last=False)
        return rid

    async def _call(self, *calls):
        """Run deployment calls (zero-argument functions returning a handle call) concurrently
        within the request timeout. A call whose replica died is sent again (the router moves
        it to a live replica: every member call is idempotent); overload, unavailability and
        timeouts become 503/504 answers."""
        from ray.serve.exceptions import BackPressureError, DeploymentUnavailableError

        try:
            return await asyncio.wait_for(asyncio.gather(*(self._retrying(c) for c in calls)), self.timeout)
        except BackPressureError:
            raise HTTPException(503, "overloaded: a queue is full, retry later", headers={"Retry-After": "1"}) from None
        except (DeploymentUnavailableError, *REPLICA_GONE):
            raise HTTPException(503, "a deployment is unavailable, retry later", headers={"Retry-After": "1"}) from None
        except asyncio.TimeoutError:
            raise HTTPException(504, f"no answer within {self.timeout:g} s") from None

    @staticmethod
    async def _retrying(call, attempts: int = 4):
        for attempt in range(attempts):
            try:
                return await call()
            except REPLICA_GONE:
                if attempt == attempts - 1:
                    raise
                await asyncio.sleep(0.05 * 2**attempt)  # the router learns of the death meanwhile

    @api.get("/healthz")
    async def healthz(self) -> dict:
        return {"status": "ok", "version": self.version}

    @api.post("/v1/classify", response_model=ClassifyResponse, dependencies=[Depends(require_token)])
    async def classify(self, req: ClassifyRequest) -> ClassifyResponse:
        height, _, channels = self.image_shape
        try:
            image = decode_image_b64(req.image, height, channels)
        except ValueError as e:
            raise HTTPException(422, f"image: {e}") from None
        outs = await self._call(*(partial(self.members[n].classify.remote, image, req.text) for n in self.names))
        probs = np.asarray(outs)[:, None, :]  # (M, 1, C)
        combined = self.combiner(probs)[0]
        answer = {
            "label": int(combined.argmax()),
            "label_name": self.classes[int(combined.argmax())],
            "probabilities": [round(float(p), 6) for p in combined],
            "strategy": self.combiner.strategy,
        }
        rid = self._remember("clf", "classify", answer, input_text=req.text, input_image=base64.b64decode(req.image))
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
        if size is None:
            return own
        width, height = (int(x) for x in size.split("x"))
        if width != height or width % own or width > MAX_IMAGE_SIDE:
            raise HTTPException(
                422,
                f"size: {size}; this generator draws {own}x{own} images: ask for a square whole multiple of "
                f"{own} up to {MAX_IMAGE_SIDE} (e.g. {own * 4}x{own * 4}), or leave size out",
            )
        return width

    @api.post("/v1/images", response_model=ImagesResponse, dependencies=[Depends(require_token)])
    async def images(self, req: ImagesRequest) -> ImagesResponse:
        if self.generator is None:
            raise HTTPException(404, "this ensemble has no generator: run the GAN sweep and rebuild the ensemble")
        self._check_image_request(req)
        seed = req.seed if req.seed is not None else secrets.randbelow(2**31)
        side = self._image_side(req.size)
        (pngs,) = await self._call(
            partial(self.generator.generate.remote, req.n, seed, side, req.prompt, req.style_seed)
        )
        rid = self._remember("img", "images", {"n": req.n, "seed": seed, "size": req.size}, input_text=req.prompt or "")
        return ImagesResponse(
            id=rid,
            created=int(time.time()),
            model=GENERATOR_MODEL_ID,
            seed=seed,
            prompt=req.prompt,
            data=[ImageData(b64_json=p) for p in pngs],
        )

    @api.post("/v1/videos", response_model=VideosResponse, dependencies=[Depends(require_token)])
    async def videos(self, req: VideosRequest) -> VideosResponse:
        if self.video is None:
            raise HTTPException(
                404, "this ensemble has no video generator: run the video sweep and rebuild the ensemble"
            )
        self._check_count(req.n)
        seed = req.seed if req.seed is not None else secrets.randbelow(2**31)
        (clips,) = await self._call(partial(self.video.generate.remote, req.n, seed, req.format, req.fps, req.scale))
        rid = self._remember("vid", "videos", {"n": req.n, "seed": seed, "format": req.format})
        return VideosResponse(
            id=rid, created=int(time.time()), model=VIDEO_MODEL_ID, seed=seed, data=[VideoData(**c) for c in clips]
        )

    @api.post("/v1/completions", response_model=CompletionResponse, dependencies=[Depends(require_token)])
    async def completions(self, req: CompletionRequest) -> CompletionResponse:
        if self.lm is None:
            raise HTTPException(404, "this ensemble has no language model: fine-tune one and rebuild the ensemble")
        if req.model != LM_MODEL_ID:
            raise HTTPException(404, f"model {req.model!r} not found; this server has {LM_MODEL_ID!r}")
        if req.max_tokens > self.max_tokens:
            raise HTTPException(400, f"max_tokens is {req.max_tokens}; this server allows at most {self.max_tokens}")
        (done,) = await self._call(
            partial(
                self.lm.complete.remote,
                req.prompt_text,
                req.max_tokens,
                req.temperature,
                req.top_p,
                req.stops,
                req.seed,
            )
        )
        rid = self._remember("cmpl", "completion", {"text": done.text}, input_text=req.prompt_text)
        return CompletionResponse(
            id=rid,
            created=int(time.time()),
            model=LM_MODEL_ID,
            choices=[CompletionChoice(text=done.text, index=0, finish_reason=done.finish_reason)],
            usage=Usage(
                prompt_tokens=done.prompt_tokens,
                completion_tokens=done.completion_tokens,
                total_tokens=done.prompt_tokens + done.completion_tokens,
            ),
        )

    @api.post("/v1/feedback", response_model=FeedbackResponse, dependencies=[Depends(require_token)])
    async def feedback(self, req: FeedbackRequest) -> FeedbackResponse:
        record = self.responses.get(req.response_id)
        if record is None:
            raise HTTPException(404, f"unknown response_id {req.response_id!r} (answers are remembered per replica)")
        if req.correct_label is not None and record["kind"] != "classify":
            raise HTTPException(422, "correct_label applies to classifications only")
        if req.correct_text is not None and record["kind"] != "completion":
            raise HTTPException(422, "correct_text applies to completions only")
        fid = uuid.uuid4().hex
        row = feedback_row(fid, req, record, self.version)
        uri = await asyncio.to_thread(write_feedback, self.storage, self.feedback_uri, row)
        return FeedbackResponse(id=fid, stored=uri)

    @api.get("/v1/models", response_model=ModelList, dependencies=[Depends(require_token)])
    async def models(self) -> ModelList:
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
        return ModelList(data=cards)

    @api.get("/v1/members/stats", dependencies=[Depends(require_token)])
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
        "ray_actor_options": {"num_cpus": s.cpus_per_replica},
        "max_ongoing_requests": s.max_ongoing_requests,
        "max_queued_requests": s.max_queued_requests,
    }
    scaling = (
        {"autoscaling_config": {"min_replicas": s.replicas, "max_replicas": s.autoscale_max_replicas}}
        if s.autoscale_max_replicas
        else {"num_replicas": s.replicas}
    )
    members = {
        m["name"]: ClassifierMember.options(name=f"member-{m['name']}", **common, **scaling).bind(
            uri, m["name"], storage.s3, s.max_batch_size, s.batch_wait_ms / 1000, version
        )
        for m in doc["members"]
    }
    generator = (
        GeneratorDeployment.options(name="generator", **common).bind(uri, storage.s3) if doc["generator"] else None
    )
    video = (
        VideoGeneratorDeployment.options(name="video-generator", **common).bind(uri, storage.s3)
        if doc.get("video_generator")
        else None
    )
    lm_uris = [lm["uri"] for lm in doc["language_models"]]
    lm = LanguageModelDeployment.options(name="language-model", **common).bind(lm_uris, storage.s3) if lm_uris else None
    placed = {
        "s3": storage.s3,
        "ensemble_uri": uri,
        "feedback_uri": feedback_uri(spec),
        "name": spec.name,
        "version": version,  # a new artifact version redeploys the ingress too
    }
    ingress = EnsembleIngress.options(
        name="ingress",
        num_replicas=s.ingress_replicas,
        ray_actor_options={"num_cpus": s.cpus_per_replica},
        # each ingress request waits on every member at once: it may hold as many as they serve together
        max_ongoing_requests=s.max_ongoing_requests * s.replicas * max(1, len(members)),
        max_queued_requests=s.max_queued_requests,
        user_config=args.get("user_config") or {"strategy": doc["strategy"], "weights": doc["weights"]},
    )
    return ingress.bind(placed, s, members, generator, lm, video)
