"""The deployments behind the ingress: one per ensemble member (a fusion classifier, fed the
batches the ingress forms), the GAN generator, and the language-model ensemble. Each loads its
weights from the committed ensemble artifact, so every replica serves exactly what
``aigc ensemble build`` wrote."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import tempfile
from collections import Counter

import numpy as np
import torch
from ray import serve

from ..data.images import png_b64
from ..runtime import worker_device
from ..storage import S3Settings, Storage, join


def _single_thread() -> None:
    # Fractional-CPU replicas share cores: more than one torch thread each only thrashes.
    torch.set_num_threads(1)
    os.environ.setdefault("OMP_NUM_THREADS", "1")


@serve.deployment
class ClassifierMember:
    """One fusion classifier. ``classify`` takes a batch of (image, caption) pairs and runs them
    as one forward pass; the ingress forms the batches (``EnsembleIngress``: one call per member
    per batch of requests, not per request)."""

    def __init__(self, ensemble_uri: str, name: str, s3: S3Settings, version: str = ""):
        # ``version`` (the artifact's fingerprint) is unused here: a new one makes Serve redeploy
        # this member when a refreshed ensemble is served, so replicas load the new weights.
        from safetensors.torch import load

        from ..models.fusion_training import build_model

        _single_thread()
        self.storage, self.name = Storage(s3), name
        folder = join(ensemble_uri, "members", name)
        self.config = json.loads(self.storage.read_bytes(join(folder, "config.json")))
        self.model = build_model(self.config, int(self.config["vocab_size"])).to(worker_device())
        self.model.load_state_dict(load(self.storage.read_bytes(join(folder, "model.safetensors"))))
        self.model.eval()
        self.batch_sizes: Counter[int] = Counter()

    async def classify(self, images: list[np.ndarray], texts: list[str]) -> list[list[float]]:
        """Class probabilities of each (image, caption) pair, in order."""
        from ..data.captions import encode_captions
        from ..models.fusion_training import predict

        self.batch_sizes[len(images)] += 1
        ids, mask, _ = encode_captions(
            texts, self.config["tokenizer"], self.storage, int(self.config["max_text_tokens"])
        )
        arrays = {"image": np.stack(images).astype(np.float32), "input_ids": ids, "attention_mask": mask}
        arrays["label"] = np.zeros(len(images), dtype=np.int64)  # predict() sizes batches by it
        return predict(self.model, arrays).tolist()

    def batch_stats(self) -> dict[int, int]:
        """How many batches of each size this replica has run (to observe dynamic batching)."""
        return dict(self.batch_sizes)

    def check_health(self) -> None:
        pass  # loaded, or __init__ would have raised


@serve.deployment
class ExplainerDeployment:
    """``/v1/explain``'s work: Integrated Gradients and Shapley values over every member
    (``ensemble.explain``). Its own deployment, with its own replicas, so hundreds of gradient
    passes never queue behind or in front of ``/v1/classify``'s batches."""

    def __init__(self, ensemble_uri: str, s3: S3Settings):
        from ..ensemble.explain import load_explainer

        _single_thread()
        self.explainer = load_explainer(Storage(s3), ensemble_uri)

    async def explain(self, image: np.ndarray, text: str, target: int | None, steps: int) -> dict:
        from ..ensemble.explain import explain_example

        # off the replica's event loop: its health checks and queue keep answering meanwhile
        return await asyncio.to_thread(explain_example, self.explainer, image, text, target, steps)

    def check_health(self) -> None:
        pass  # loaded, or __init__ would have raised


def _load_export(storage: Storage, folder: str) -> tuple[dict, dict]:
    """A served generator's (config, weights) from the ensemble artifact's ``folder``."""
    from safetensors.torch import load

    config = json.loads(storage.read_bytes(join(folder, "config.json")))
    return config, load(storage.read_bytes(join(folder, "generator.safetensors")))


@serve.deployment
class GeneratorDeployment:
    """The GAN sweep's best generator (DCGAN or style-based; text-to-image when it was trained on
    captions): seeded samples as PNG."""

    def __init__(self, ensemble_uri: str, s3: S3Settings):
        from ..models.generators import is_conditional, load_generator_export

        _single_thread()
        self.config, weights = _load_export(Storage(s3), join(ensemble_uri, "generator"))
        self.generator = load_generator_export(weights, self.config).to(worker_device())
        self.conditional = is_conditional(self.config)
        self.style = self.config.get("generator") == "style"
        if self.conditional:  # load MiniLM now, not on the first request
            from ..models.text_condition import embed_texts

            embed_texts(["a handwritten digit"])

    def describe(self) -> dict:
        return {"conditional": self.conditional, "style": self.style}

    async def generate(
        self, n: int, seed: int, side: int, prompt: str | None = None, style_seed: int | None = None
    ) -> list[str]:
        from ..models.gan import from_gan_space
        from ..models.generators import generate

        cond = None
        if self.conditional:
            from ..models.text_condition import embed_texts

            cond = embed_texts([prompt])[0]
        images = from_gan_space(generate(self.generator, n, seed, cond=cond, mix_seed=style_seed)).numpy()
        return [png_b64(img.transpose(1, 2, 0), scale=side // img.shape[-1]) for img in images]  # (H, W, C)


@serve.deployment
class VideoGeneratorDeployment:
    """The video sweep's best generator: seeded clips as animated GIF or PNG."""

    def __init__(self, ensemble_uri: str, s3: S3Settings):
        from ..models.video_gan import load_video_generator

        _single_thread()
        config, weights = _load_export(Storage(s3), join(ensemble_uri, "video_generator"))
        self.generator = load_video_generator(weights, config).to(worker_device())

    async def generate(self, n: int, seed: int, fmt: str, fps: int, scale: int) -> list[dict]:
        from ..data.animation import encode_apng, encode_gif
        from ..models.video_gan import generate_clips

        encode = encode_gif if fmt == "gif" else encode_apng
        out = []
        for clip in generate_clips(self.generator, n, seed):  # (T, H, W) in [0, 1]
            data = encode(clip, fps=fps, scale=scale)
            out.append(
                {
                    "b64_data": base64.b64encode(data).decode(),
                    "media_type": "image/gif" if fmt == "gif" else "image/apng",
                    "frames": int(clip.shape[0]),
                    "width": int(clip.shape[2] * scale),
                    "height": int(clip.shape[1] * scale),
                }
            )
        return out


@serve.deployment
class LanguageModelDeployment:
    """Language models sharing a tokenizer, decoded together (averaged next-token log-probs)."""

    def __init__(self, uris: list[str], s3: S3Settings):
        from ..ensemble.lm import LMEnsemble

        _single_thread()
        storage = Storage(s3)
        self._tmp = tempfile.TemporaryDirectory(prefix="aigc-lm-")
        folders = [str(storage.download(uri, os.path.join(self._tmp.name, str(i)))) for i, uri in enumerate(uris)]
        self.lm = LMEnsemble(folders, device=worker_device())
        self.lock = asyncio.Lock()  # one decode at a time per replica: they would only share the core

    async def complete(self, prompt: str, max_tokens: int, temperature: float, top_p: float, stop, seed):
        async with self.lock:
            return await asyncio.to_thread(self.lm.complete, prompt, max_tokens, temperature, top_p, stop, seed)

    async def complete_scored(
        self, prompt, max_tokens: int, temperature: float, top_p: float, stop, seed, logprobs: int | None, echo: bool
    ) -> dict:
        """``complete`` with log-probabilities and the echoed prompt (``scored_completion``)."""
        from .generation import scored_completion

        args = (prompt, max_tokens, temperature, top_p, stop, seed, logprobs, echo)
        async with self.lock:
            return await asyncio.to_thread(scored_completion, self.lm, *args)

    def detokenize(self, prompts: list[list[int]]) -> dict:
        """Token-id prompts as text (what the safety filter and the feedback store read), or
        {"refused": why} for an id outside the vocabulary."""
        try:
            ids = [self.lm.checked_ids(p) for p in prompts]
        except ValueError as e:
            return {"refused": str(e)}
        return {"texts": [self.lm.tokenizer.decode(i, skip_special_tokens=True) for i in ids]}

    def render(self, messages: list[dict]) -> dict:
        """A conversation as {"prompt", "stop"} (see ``render_chat``), or {"refused": why} when
        the model's chat template refuses it (a client error, answered 422)."""
        from .generation import ChatTemplateRefused, render_chat

        try:
            prompt, stop = render_chat(self.lm.tokenizer, messages)
        except ChatTemplateRefused as e:
            return {"refused": str(e)}
        return {"prompt": prompt, "stop": stop}

    async def stream(self, prompt: str, max_tokens: int, temperature: float, top_p: float, stop, seed):
        """``complete`` as a stream of pieces (``stream_completion``), each sent as it is decoded;
        call through a handle with ``.options(stream=True)``."""
        from .generation import stream_completion

        async with self.lock:
            pieces = stream_completion(self.lm, prompt, max_tokens, temperature, top_p, stop, seed)
            while (piece := await asyncio.to_thread(next, pieces, None)) is not None:
                yield piece
