"""The Serve app for real: an ensemble of two fusion members (from a real sweep), a text-to-image
GAN and a video GAN (from real sweeps) and a small language model, on the session's Ray, over
real HTTP."""

from __future__ import annotations

import base64
import concurrent.futures
import io
import json
import os
import re
import threading
import time

import httpx
import numpy as np
import pyarrow.compute as pc
import pytest

from aigc_ray.layout import data_root
from aigc_ray.spec import load_spec

TOKEN = "test-token-1234567890"


def tiny_language_model(spec, storage, uri):
    """A small GPT-2 on our tokenizer, trained a few steps on captions, exported like a fine-tune."""
    import tempfile
    from pathlib import Path

    import torch
    from transformers import AutoConfig, PreTrainedTokenizerFast

    from aigc_ray.data.tokenizer import download_tokenizer
    from aigc_ray.manifest import publish_directory
    from aigc_ray.models.lm import build_lm
    from aigc_ray.spec import spec_hash
    from aigc_ray.train.pretrain import loop_config

    cfg = loop_config(load_spec(None, [f"storage.root={spec.storage.root}", "pretrain.model.preset=tiny"]))
    torch.manual_seed(0)
    model = build_lm(AutoConfig.for_model(**cfg.hf_config))
    with tempfile.TemporaryDirectory() as tmp:
        tok_dir = download_tokenizer(storage, data_root(spec) + "/tokenizer", Path(tmp) / "tok")
        tokenizer = PreTrainedTokenizerFast.from_pretrained(tok_dir)
        text = " ".join(f"Caption for a {w}: a handwritten {w}." for w in ["three", "seven", "zero"] * 8)
        ids = torch.tensor([tokenizer(text)["input_ids"][:64]])
        opt = torch.optim.Adam(model.parameters(), lr=3e-3)
        for _ in range(20):
            loss = model(input_ids=ids, labels=ids).loss
            opt.zero_grad()
            loss.backward()
            opt.step()
        out = Path(tmp) / "export"
        model.save_pretrained(out)
        tokenizer.save_pretrained(out)
        publish_directory(storage, out, uri, kind="model/causal-lm", spec_hash=spec_hash(spec, "pretrain"), inputs={})


@pytest.fixture(scope="module")
def served(ray_local, local_data, tmp_path_factory):
    from conftest import free_port
    from ray import serve

    from aigc_ray.ensemble.build import build_ensemble
    from aigc_ray.ensemble.robustness import evaluate_robustness
    from aigc_ray.serve.deploy import base_url, start_local
    from aigc_ray.tune.fusion_sweep import run_fusion_sweep
    from aigc_ray.tune.gan_sweep import run_gan_sweep
    from aigc_ray.tune.video_sweep import run_video_sweep

    base, storage = local_data
    token_file = tmp_path_factory.mktemp("secret") / "token"
    token_file.write_text(TOKEN + "\n")
    lm_uri = f"{base.storage.root}/serve/lm-export"
    spec = load_spec(
        None,
        [
            f"storage.root={base.storage.root}",
            "name=serve",
            "data.rows_per_shard=300",
            "fusion.dim=16",
            "fusion.sweep.scheduler=fifo",
            "fusion.sweep.num_samples=2",
            "fusion.sweep.max_iterations=3",
            "fusion.sweep.steps_per_iteration=30",
            "gan.condition=caption",  # text-to-image
            "gan.width=8",
            "gan.batch_size=32",
            "gan.lr_ratio=1.0",
            "gan.eval_samples=100",
            "gan.sweep.scheduler=fifo",
            "gan.sweep.num_samples=1",
            "gan.sweep.max_iterations=3",
            "gan.sweep.steps_per_iteration=100",
            "gan.sweep.search_space={g_lr: {type: choice, values: [0.001]}}",
            "video.clips=64",
            "video.width=4",
            "video.z_dim=8",
            "video.batch_size=8",
            "video.eval_samples=16",
            "video.sweep.num_samples=1",
            "video.sweep.max_iterations=1",
            "video.sweep.steps_per_iteration=3",
            "ensemble.top_k=2",
            "ensemble.strategy=weighted",
            f"ensemble.language_models=[{lm_uri}]",
            f"serve.port={free_port()}",
            "serve.cpus_per_replica=0.2",
            "serve.replicas=2",  # two per member, so one can die under load
            "serve.batch_wait_ms=20",
            f"serve.auth_token_file={token_file}",
            "serve.auth_token_env=AIGC_TEST_TOKEN_NOT_SET",
            "serve.max_request_bytes=20000",
            "serve.max_tokens=32",
            "serve.max_prompt_chars=100",
            "robustness.examples=40",
            "robustness.epsilons=[0, 0.1]",
            "robustness.pgd_steps=3",
        ],
    )
    quiet = {"progress": False, "log": lambda *_: None}
    run_fusion_sweep(spec, storage, **quiet)
    run_gan_sweep(spec, storage, **quiet)
    run_video_sweep(spec, storage, **quiet)
    tiny_language_model(spec, storage, lm_uri)
    build_ensemble(spec, storage, log=lambda *_: None)
    evaluate_robustness(spec, storage, log=lambda *_: None)
    start_local(spec)
    client = httpx.Client(base_url=base_url(spec), headers={"Authorization": f"Bearer {TOKEN}"}, timeout=60)
    yield spec, storage, client
    client.close()
    serve.shutdown()


def digit_request(storage, spec, i=0, members=False):
    from aigc_ray.data.arrays import digit_arrays
    from aigc_ray.data.images import png_b64

    val = digit_arrays(spec, storage, "val")
    pixels = (val["image"][i, 0] * 255).round().astype(np.uint8)
    return {"image": png_b64(pixels), "text": str(val["text"][i]), "return_members": members}, int(val["label"][i])


@pytest.mark.slow
def test_classify_answers_what_the_offline_ensemble_answers(served):
    from aigc_ray.data.captions import fusion_arrays
    from aigc_ray.ensemble.build import load_ensemble
    from aigc_ray.layout import ensemble_dir
    from aigc_ray.models.fusion_training import predict

    spec, storage, client = served
    body, _ = digit_request(storage, spec, 3, members=True)
    res = client.post("/v1/classify", json=body)
    assert res.status_code == 200, res.text
    out = res.json()
    assert out["id"].startswith("clf-") and out["strategy"] == "weighted"
    assert sum(out["probabilities"]) == pytest.approx(1, abs=1e-4) and out["label"] == int(
        np.argmax(out["probabilities"])
    )
    assert (
        out["label_name"]
        == ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")[out["label"]]
    )
    ens = load_ensemble(storage, ensemble_dir(spec))
    assert set(out["members"]) == set(ens.names)
    expected = []
    for model, config in zip(ens.models, ens.configs, strict=True):
        val, _ = fusion_arrays(spec, storage, "val", config["tokenizer"], config["max_text_tokens"])
        expected.append(predict(model, {k: v[3:4] for k, v in val.items()})[0])
    np.testing.assert_allclose(out["members"][ens.names[0]], expected[0], atol=1e-5)
    np.testing.assert_allclose(out["probabilities"], ens.combiner(np.stack(expected)[:, None])[0], atol=1e-5)


def png_to_gan_space(b64: str):
    """A served 16x16 PNG as the classifier's input (1, 1, 16, 16) in [-1, 1]."""
    import torch
    from PIL import Image

    pixels = np.asarray(Image.open(io.BytesIO(base64.b64decode(b64))).convert("L"), dtype=np.float32) / 255
    return torch.from_numpy(pixels)[None, None] * 2 - 1


@pytest.mark.slow
def test_images_are_pngs_reproducible_from_a_seed(served):
    from PIL import Image

    _, _, client = served
    body = {"prompt": "a handwritten seven", "n": 2}
    a = client.post("/v1/images", json={**body, "seed": 7}).json()
    b = client.post("/v1/images", json={**body, "seed": 7}).json()
    c = client.post("/v1/images", json={**body, "seed": 8}).json()
    assert a["seed"] == 7 and len(a["data"]) == 2 and a["prompt"] == "a handwritten seven"
    assert [d["b64_json"] for d in a["data"]] == [d["b64_json"] for d in b["data"]]
    assert a["data"] != c["data"]
    img = Image.open(io.BytesIO(base64.b64decode(a["data"][0]["b64_json"])))
    assert img.format == "PNG" and img.size == (16, 16)  # the generator's own size by default
    big = client.post("/v1/images", json={**body, "seed": 7, "size": "64x64"}).json()
    img = Image.open(io.BytesIO(base64.b64decode(big["data"][0]["b64_json"])))
    assert img.size == (64, 64)
    np.testing.assert_array_equal(  # upscaled: each pixel repeated 4x4, nothing invented
        np.asarray(img)[::4, ::4], np.asarray(Image.open(io.BytesIO(base64.b64decode(a["data"][0]["b64_json"]))))
    )
    bad = client.post("/v1/images", json={**body, "size": "40x40"})
    assert bad.status_code == 422 and "whole multiple of 16" in bad.json()["error"]["message"]


@pytest.mark.slow
def test_text_to_image_draws_the_digit_the_prompt_names(served):
    """ "a handwritten three" gets threes: the in-project digit classifier reads the served images
    as the digits their prompts name far above chance, and they are exactly what the exported
    generator draws offline for the same prompt and seed."""
    import torch
    from safetensors.torch import load

    from aigc_ray.data.digits import WORDS
    from aigc_ray.layout import ensemble_dir
    from aigc_ray.models.classifier import load_or_train_classifier
    from aigc_ray.models.gan import from_gan_space
    from aigc_ray.models.generators import generate_for_prompts, load_generator_export
    from aigc_ray.storage import join

    spec, storage, client = served
    classifier = load_or_train_classifier(spec, storage)
    hits = []
    for digit, word in enumerate(WORDS):
        out = client.post("/v1/images", json={"prompt": f"a handwritten {word}", "n": 4, "seed": 1, "size": "16x16"})
        assert out.status_code == 200, out.text
        with torch.no_grad():
            seen = classifier(torch.cat([png_to_gan_space(d["b64_json"]) for d in out.json()["data"]])).argmax(1)
        hits += (seen == digit).tolist()
    assert np.mean(hits) >= 0.4, f"conditional accuracy {np.mean(hits):.2f} (chance 0.10)"

    folder = join(ensemble_dir(spec), "generator")
    config = json.loads(storage.read_bytes(join(folder, "config.json")))
    g = load_generator_export(load(storage.read_bytes(join(folder, "generator.safetensors"))), config)
    offline = from_gan_space(generate_for_prompts(g, config, ["a handwritten three"], 4, seed=1))
    served_three = client.post("/v1/images", json={"prompt": "a handwritten three", "n": 4, "seed": 1, "size": "16x16"})
    served_pixels = torch.cat([png_to_gan_space(d["b64_json"]) for d in served_three.json()["data"]])
    np.testing.assert_allclose(((served_pixels + 1) / 2).numpy(), offline.numpy(), atol=1 / 255 + 1e-6)


@pytest.mark.slow
def _served_video_clips(spec, storage, n: int, seed: int) -> np.ndarray:
    """The clips the ensemble's video generator makes for ``seed``, as uint8 (n, T, H, W)."""
    from safetensors.torch import load

    from aigc_ray.data.images import to_uint8
    from aigc_ray.layout import ensemble_dir
    from aigc_ray.models.video_gan import generate_clips, load_video_generator
    from aigc_ray.storage import join

    folder = join(ensemble_dir(spec), "video_generator")
    config = json.loads(storage.read_bytes(join(folder, "config.json")))
    g = load_video_generator(load(storage.read_bytes(join(folder, "generator.safetensors"))), config)
    return to_uint8(generate_clips(g, n, seed))


def _merge_repeats(frames: np.ndarray) -> np.ndarray:
    """Frames as an animation stores them: a frame equal to the one before is merged into it."""
    keep = [0] + [i for i in range(1, len(frames)) if not np.array_equal(frames[i], frames[i - 1])]
    return frames[keep]


def test_videos_are_animations_reproducible_from_a_seed(served):
    from aigc_ray.data.animation import decode_gif_frames

    spec, storage, client = served
    a = client.post("/v1/videos", json={"n": 2, "seed": 3}).json()
    b = client.post("/v1/videos", json={"n": 2, "seed": 3}).json()
    assert a["model"] == "aigc-video-gan" and a["seed"] == 3 and len(a["data"]) == 2
    assert [d["b64_data"] for d in a["data"]] == [d["b64_data"] for d in b["data"]]
    clip = a["data"][0]
    assert clip["media_type"] == "image/gif" and (clip["frames"], clip["width"], clip["height"]) == (8, 64, 64)
    frames = decode_gif_frames(base64.b64decode(clip["b64_data"]))
    # the clip the served generator makes for seed 3, frame for frame (4x: 16 -> 64 pixels)
    expected = _served_video_clips(spec, storage, 2, seed=3)[0].repeat(4, axis=1).repeat(4, axis=2)
    np.testing.assert_array_equal(frames, _merge_repeats(expected))
    apng = client.post("/v1/videos", json={"n": 1, "seed": 3, "format": "apng", "scale": 2}).json()["data"][0]
    data = base64.b64decode(apng["b64_data"])
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and b"acTL" in data[:200]  # an animated PNG
    assert decode_gif_frames(data).shape[1:] == (32, 32)


@pytest.mark.slow
def test_bad_prompts_and_oversized_generation_requests_get_clear_4xx(served):
    _, _, client = served

    def error(path, body):
        r = client.post(path, json=body)
        assert r.status_code == 422, (body, r.status_code, r.text)
        return r.json()["error"]["message"]

    assert "prompt is blank" in error("/v1/images", {"prompt": "   "})
    assert "control characters (U+0007)" in error("/v1/images", {"prompt": "a three\a"})
    assert "prompt: required" in error("/v1/images", {"n": 1})
    assert "at most 100" in error("/v1/images", {"prompt": "a handwritten three " * 6})
    assert "at most 16 per request" in error("/v1/images", {"prompt": "a three", "n": 17})
    assert "style-based generator" in error("/v1/images", {"prompt": "a three", "style_seed": 1})
    assert "n" in error("/v1/images", {"prompt": "a three", "n": 0})
    assert "at most 16 per request" in error("/v1/videos", {"n": 20})
    assert "format" in error("/v1/videos", {"format": "mp4"})
    assert "scale" in error("/v1/videos", {"scale": 50})


@pytest.mark.slow
def test_the_openai_client_talks_to_completions(served):
    from openai import NotFoundError, OpenAI

    spec, _, _ = served
    from aigc_ray.serve.deploy import base_url

    client = OpenAI(base_url=base_url(spec) + "/v1", api_key=TOKEN, max_retries=0)
    first = client.completions.create(model="aigc-lm", prompt="Caption for a seven:", max_tokens=8, temperature=0)
    again = client.completions.create(model="aigc-lm", prompt="Caption for a seven:", max_tokens=8, temperature=0)
    assert first.object == "text_completion" and first.id.startswith("cmpl-")
    assert first.choices[0].text == again.choices[0].text  # greedy decoding is deterministic
    assert first.choices[0].finish_reason in ("length", "stop")
    assert 0 < first.usage.completion_tokens <= 8 and first.usage.prompt_tokens > 0
    # a list of prompts (LangChain's OpenAI LLM batches them): one choice each, in order
    prompts = ["Caption for a seven:", "Caption for a three:", "Caption for a seven:"]
    batch = client.completions.create(model="aigc-lm", prompt=prompts, max_tokens=8, temperature=0)
    alone = [client.completions.create(model="aigc-lm", prompt=p, max_tokens=8, temperature=0) for p in prompts]
    assert [c.index for c in batch.choices] == [0, 1, 2]
    assert [c.text for c in batch.choices] == [a.choices[0].text for a in alone]
    assert batch.usage.completion_tokens == sum(a.usage.completion_tokens for a in alone)
    assert batch.usage.total_tokens == sum(a.usage.total_tokens for a in alone)
    # None passed on as JSON null (code that forwards an unset setting): OpenAI reads it as the default
    unset = {"temperature": None, "top_p": None, "n": None, "stop": None, "seed": None, "stream": None}
    nulls = client.completions.create(model="aigc-lm", prompt="Caption for a seven:", max_tokens=None, **unset)
    assert nulls.usage.completion_tokens == 16 or nulls.choices[0].finish_reason == "stop"  # max_tokens' default
    chat = client.chat.completions.create(model="aigc-lm", messages=CHAT, max_tokens=None, **unset)
    assert chat.choices[0].message.role == "assistant"
    assert client.images.generate(prompt="a handwritten seven", n=None, size=None, response_format=None).data
    assert {m.id for m in client.models.list().data} == {"aigc-ensemble", "aigc-gan", "aigc-video-gan", "aigc-lm"}
    card = client.models.retrieve("aigc-lm")  # what clients check before they call a model
    assert card.id == "aigc-lm" and card.object == "model" and card.owned_by == "aigc-ray"
    with pytest.raises(NotFoundError, match="not found"):
        client.models.retrieve("gpt-4")
    with pytest.raises(NotFoundError, match="not found"):
        client.completions.create(model="gpt-4", prompt="hi", max_tokens=2)


def openai_client(spec):
    from openai import OpenAI

    from aigc_ray.serve.deploy import base_url

    return OpenAI(base_url=base_url(spec) + "/v1", api_key=TOKEN, max_retries=0)


@pytest.mark.slow
def test_the_openai_client_generates_images_at_openais_path(served):
    from openai import NotFoundError, UnprocessableEntityError
    from PIL import Image

    spec, _, client = served
    oa = openai_client(spec)
    out = oa.images.generate(
        model="aigc-gan", prompt="a handwritten seven", n=2, size="256x256", response_format="b64_json"
    )
    assert len(out.data) == 2 and out.created > 0
    img = Image.open(io.BytesIO(base64.b64decode(out.data[0].b64_json)))
    assert img.format == "PNG" and img.size == (256, 256)
    # /v1/images is the same route: the same seed draws the same images on both paths
    seeded = oa.images.generate(prompt="a handwritten seven", n=2, extra_body={"seed": 7})
    alias = client.post("/v1/images", json={"prompt": "a handwritten seven", "n": 2, "seed": 7}).json()
    assert [d.b64_json for d in seeded.data] == [d["b64_json"] for d in alias["data"]]
    assert oa.images.generate(prompt="a handwritten seven", size="auto").data[0].b64_json
    with pytest.raises(UnprocessableEntityError, match="only b64_json"):
        oa.images.generate(prompt="a handwritten seven", response_format="url")
    with pytest.raises(UnprocessableEntityError, match="quality"):  # refused, not ignored
        oa.images.generate(prompt="a handwritten seven", quality="hd")
    with pytest.raises(UnprocessableEntityError, match="up to 512"):
        oa.images.generate(prompt="a handwritten seven", size="1024x1024")
    with pytest.raises(NotFoundError, match="aigc-gan"):
        oa.images.generate(model="dall-e-3", prompt="a handwritten seven")


CHAT = [{"role": "system", "content": "Describe digits."}, {"role": "user", "content": "Caption for a seven:"}]
CHAT_PROMPT = "System: Describe digits.\nUser: Caption for a seven:\nAssistant:"  # the plain template


@pytest.mark.slow
def test_the_openai_client_chats_over_the_language_model(served):
    from openai import BadRequestError, NotFoundError, UnprocessableEntityError

    spec, _, client = served
    oa = openai_client(spec)
    first = oa.chat.completions.create(model="aigc-lm", messages=CHAT, max_tokens=8, temperature=0)
    again = oa.chat.completions.create(model="aigc-lm", messages=CHAT, max_completion_tokens=8, temperature=0)
    assert first.object == "chat.completion" and first.id.startswith("chatcmpl-")
    answer = first.choices[0]
    assert answer.message.role == "assistant" and answer.finish_reason in ("stop", "length")
    assert answer.message.content == again.choices[0].message.content
    # the answer is the completion of the rendered conversation (the export has no chat template)
    plain = oa.completions.create(model="aigc-lm", prompt=CHAT_PROMPT, max_tokens=8, temperature=0, stop=["\nUser:"])
    assert answer.message.content == plain.choices[0].text.lstrip()
    assert first.usage.model_dump() == plain.usage.model_dump()
    assert first.usage.prompt_tokens > 0 and first.usage.completion_tokens > 0
    assert first.usage.total_tokens == first.usage.prompt_tokens + first.usage.completion_tokens
    parts = [
        {"role": "user", "content": [{"type": "text", "text": "Caption for "}, {"type": "text", "text": "a seven:"}]}
    ]
    joined = oa.chat.completions.create(model="aigc-lm", messages=parts, max_tokens=4, temperature=0)
    whole = oa.chat.completions.create(
        model="aigc-lm", messages=[{"role": "user", "content": "Caption for a seven:"}], max_tokens=4, temperature=0
    )
    assert joined.choices[0].message.content == whole.choices[0].message.content
    # a chat answer can be corrected like a completion
    fb = client.post("/v1/feedback", json={"response_id": first.id, "correct_text": "a handwritten seven."})
    assert fb.status_code == 200, fb.text
    with pytest.raises(NotFoundError, match="not found"):
        oa.chat.completions.create(model="gpt-4o", messages=CHAT)
    with pytest.raises(BadRequestError, match="at most 32"):
        oa.chat.completions.create(model="aigc-lm", messages=CHAT, max_tokens=1000)
    with pytest.raises(UnprocessableEntityError, match="role"):
        oa.chat.completions.create(model="aigc-lm", messages=[{"role": "tool", "content": "x", "tool_call_id": "1"}])
    with pytest.raises(UnprocessableEntityError, match="messages"):
        oa.chat.completions.create(model="aigc-lm", messages=[])
    # what would change the answer but is not applied is refused by name, never ignored ...
    tool = {"type": "function", "function": {"name": "lookup", "parameters": {"type": "object"}}}
    for refused in (
        {"tools": [tool]},
        {"response_format": {"type": "json_object"}},
        {"presence_penalty": 0.6},
        {"logit_bias": {"7": -100}},
    ):
        field = next(iter(refused))
        with pytest.raises(UnprocessableEntityError, match=f"{field}=.*does not apply {field}"):
            oa.chat.completions.create(model="aigc-lm", messages=CHAT, max_tokens=2, **refused)
    # ... while the values that ask for nothing, as clients send them by default, pass
    noop = {"tools": [], "tool_choice": "none", "presence_penalty": 0, "frequency_penalty": 0, "logit_bias": {}}
    calm = oa.chat.completions.create(model="aigc-lm", messages=CHAT, max_tokens=8, temperature=0, **noop)
    assert calm.choices[0].message.content == answer.message.content


@pytest.mark.slow
def test_the_openai_client_talks_to_the_responses_api(served):
    """client.responses.create, as new OpenAI code and the Agents SDK call a model: the same
    answer as the chat route gives the same conversation."""
    from openai import UnprocessableEntityError

    spec, _, client = served
    oa = openai_client(spec)
    user = [{"role": "user", "content": "Caption for a seven:"}]
    chat = oa.chat.completions.create(model="aigc-lm", messages=user, max_tokens=8, temperature=0)
    answer = oa.responses.create(model="aigc-lm", input="Caption for a seven:", max_output_tokens=8, temperature=0)
    assert answer.object == "response" and answer.id.startswith("resp-") and answer.model == "aigc-lm"
    assert answer.output_text == chat.choices[0].message.content
    assert (answer.usage.input_tokens, answer.usage.output_tokens) == (
        chat.usage.prompt_tokens,
        chat.usage.completion_tokens,
    )
    cut = chat.choices[0].finish_reason == "length"
    assert answer.status == ("incomplete" if cut else "completed")
    assert (answer.incomplete_details.reason if cut else answer.incomplete_details) == (
        "max_output_tokens" if cut else None
    )
    # instructions are the system's turn; message items (an earlier answer sent back) as in chat
    system, said = CHAT
    items = [
        {"type": "message", "role": "user", "content": [{"type": "input_text", "text": said["content"]}]},
    ]
    with_items = oa.responses.create(
        model="aigc-lm", instructions=system["content"], input=items, max_output_tokens=8, temperature=0
    )
    in_chat = oa.chat.completions.create(model="aigc-lm", messages=CHAT, max_tokens=8, temperature=0)
    assert with_items.output_text == in_chat.choices[0].message.content
    # the answer can be corrected like any completion
    fb = client.post("/v1/feedback", json={"response_id": answer.id, "correct_text": "a handwritten seven."})
    assert fb.status_code == 200, fb.text
    # streamed: the Responses API's events, the same text, numbered in order
    events = list(
        oa.responses.create(
            model="aigc-lm", input="Caption for a seven:", max_output_tokens=8, temperature=0, stream=True
        )
    )
    kinds = [e.type for e in events]
    assert kinds[:4] == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
    ]
    last = "response.incomplete" if cut else "response.completed"
    assert kinds[-4:] == ["response.output_text.done", "response.content_part.done", "response.output_item.done", last]
    assert "".join(e.delta for e in events if e.type == "response.output_text.delta") == answer.output_text
    assert events[-1].response.output_text == answer.output_text and events[-1].response.id == events[0].response.id
    assert events[-1].response.usage.output_tokens == answer.usage.output_tokens
    assert [e.sequence_number for e in events] == list(range(len(events)))
    for refused, said in (
        ({"previous_response_id": "resp-1"}, "keeps no conversations"),
        ({"tools": [{"type": "function", "name": "f", "parameters": {}}]}, "does not apply tools"),
        ({"text": {"format": {"type": "json_object"}}}, "does not apply text.format"),
    ):
        with pytest.raises(UnprocessableEntityError, match=said):
            oa.responses.create(model="aigc-lm", input="Caption for a seven:", max_output_tokens=2, **refused)
    image = {"type": "input_image", "image_url": "data:image/png;base64,AAAA"}
    with pytest.raises(UnprocessableEntityError, match="input"):
        oa.responses.create(model="aigc-lm", input=[{"role": "user", "content": [image]}])


@pytest.mark.slow
def test_the_openai_client_streams_completions_and_chat_as_server_sent_events(served):
    spec, _, client = served
    oa = openai_client(spec)
    prompt = "Caption for a seven:"
    for sampling in ({"temperature": 0}, {"temperature": 1.0, "seed": 5}):
        whole = oa.completions.create(model="aigc-lm", prompt=prompt, max_tokens=12, **sampling)
        chunks = list(oa.completions.create(model="aigc-lm", prompt=prompt, max_tokens=12, stream=True, **sampling))
        pieces_sent = [c.choices[0].text for c in chunks]
        assert len(chunks) > 2, (sampling, pieces_sent, whole.choices[0])  # piece by piece, not one answer
        assert {(c.object, c.id, c.model) for c in chunks} == {("text_completion", chunks[0].id, "aigc-lm")}
        assert "".join(pieces_sent) == whole.choices[0].text, (sampling, pieces_sent, whole.choices[0])
        assert [c.choices[0].finish_reason for c in chunks] == [None] * (len(chunks) - 1) + [
            whole.choices[0].finish_reason
        ], (sampling, pieces_sent, whole.choices[0])
        assert chunks[-1].usage == whole.usage and all(c.usage is None for c in chunks[:-1])

        chat = oa.chat.completions.create(model="aigc-lm", messages=CHAT, max_tokens=12, **sampling)
        pieces = list(
            oa.chat.completions.create(model="aigc-lm", messages=CHAT, max_tokens=12, stream=True, **sampling)
        )
        assert {(c.object, c.id) for c in pieces} == {("chat.completion.chunk", pieces[0].id)}
        assert all(c.choices[0].delta.role == "assistant" for c in pieces)
        said = [c.choices[0].delta.content or "" for c in pieces]
        assert "".join(said) == chat.choices[0].message.content, (sampling, said, chat.choices[0])
        assert pieces[-1].choices[0].finish_reason == chat.choices[0].finish_reason, (sampling, said, chat.choices[0])
        assert pieces[-1].usage == chat.usage

    # stream_options.include_usage: OpenAI's last chunk, with usage and no choices
    chunks = list(
        oa.chat.completions.create(
            model="aigc-lm", messages=CHAT, max_tokens=6, stream=True, stream_options={"include_usage": True}
        )
    )
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens > 0
    assert all(c.usage is None for c in chunks[:-1])

    # on the wire: text/event-stream, "data: <json>" events, "data: [DONE]" last
    body = {"model": "aigc-lm", "prompt": prompt, "max_tokens": 6, "stream": True}
    with client.stream("POST", "/v1/completions", json=body) as res:
        assert res.status_code == 200 and res.headers["content-type"].startswith("text/event-stream")
        assert res.headers["x-accel-buffering"] == "no"  # nginx (the load balancer) passes each event on at once
        events = [line for line in res.iter_lines() if line]
    assert events[-1] == "data: [DONE]" and all(e.startswith("data: ") for e in events)
    streamed_id = json.loads(events[0][6:])["id"]
    # a streamed answer is remembered once complete: feedback can correct it
    fb = client.post("/v1/feedback", json={"response_id": streamed_id, "correct_text": "a handwritten seven."})
    assert fb.status_code == 200, fb.text
    # a request the server refuses is refused with its status before any event, streamed or not
    refused = client.post("/v1/completions", json={**body, "model": "gpt-4"})
    assert refused.status_code == 404 and refused.json()["error"]["code"] == 404
    too_many = client.post(
        "/v1/chat/completions", json={"model": "aigc-lm", "messages": CHAT, "stream": True, "max_tokens": 99}
    )
    assert too_many.status_code == 400 and "at most 32" in too_many.json()["error"]["message"]


@pytest.mark.slow
def test_a_client_that_hangs_up_on_a_stream_stops_its_decode(served):
    """A 4,000-token stream keeps the language model's replica busy while it is read; once the
    client closes the connection the decode stops: the replica's CPU use falls to idle."""
    from aigc_ray.serve.deploy import start_local

    spec, _, client = served
    start_local(_with_serve(spec, max_tokens=4000))
    try:
        lm = _replica_process("language-model")

        def cpu_seconds():
            t = lm.cpu_times()
            return t.user + t.system

        body = {"model": "aigc-lm", "prompt": "Caption for a seven:", "max_tokens": 4000, "stream": True}
        with client.stream("POST", "/v1/completions", json={**body, "temperature": 0}) as res:
            lines = res.iter_lines()
            assert next(lines).startswith("data: ")
            start, used, events = time.monotonic(), cpu_seconds(), 0
            while time.monotonic() - start < 2:
                line = next(lines)
                assert line != "data: [DONE]", "the stream ended before the client hung up"
                events += bool(line)
            busy = (cpu_seconds() - used) / (time.monotonic() - start)
        time.sleep(1.0)  # the hang-up reaches the replica
        start, used = time.monotonic(), cpu_seconds()
        time.sleep(2.0)
        idle = (cpu_seconds() - used) / (time.monotonic() - start)
        assert events > 10 and busy > 0.3, (events, busy)
        assert idle < busy / 4, f"the replica kept decoding after the client left: {idle:.2f} vs {busy:.2f} CPU"
    finally:
        start_local(spec)


@pytest.mark.slow
def test_log_probabilities_score_text_as_an_evaluation_harness_and_the_openai_client_ask(served):
    """lm-evaluation-harness's ``local-completions`` scores a continuation with exactly this body
    (context + continuation as the model's token ids, echo, logprobs 1, max_tokens 1) and reads
    ``sum(token_logprobs[len(context):-1])``: it must be the continuation's log-likelihood under
    the served model, as the export read locally gives it."""
    import tempfile

    import torch
    from openai import UnprocessableEntityError

    from aigc_ray.ensemble.lm import LMEnsemble

    spec, storage, client = served
    with tempfile.TemporaryDirectory() as tmp:
        lm = LMEnsemble([str(storage.download(f"{spec.storage.root}/serve/lm-export", tmp))])
    context = lm.prompt_ids("Caption for a seven:")
    continuation = lm.tokenizer(" a handwritten seven", add_special_tokens=False)["input_ids"]
    body = {"model": "aigc-lm", "prompt": [context + continuation], "temperature": 0, "max_tokens": 1}
    res = client.post("/v1/completions", json={**body, "logprobs": 1, "seed": 1234, "echo": True})
    assert res.status_code == 200, res.text
    (choice,) = res.json()["choices"]
    harness = sum(choice["logprobs"]["token_logprobs"][len(context) : -1])
    ids, expected = list(context), 0.0
    for token in continuation:
        expected += lm.next_log_probs(torch.tensor([ids]))[token]
        ids.append(token)
    assert harness == pytest.approx(expected, abs=1e-4)
    assert choice["text"].startswith(lm.tokenizer.decode(context + continuation, skip_special_tokens=True))
    # the openai client: a completion's tokens with their two likeliest alternatives, and chat's
    oa = openai_client(spec)
    done = oa.completions.create(
        model="aigc-lm", prompt="Caption for a seven:", max_tokens=6, temperature=0, logprobs=2
    )
    lp = done.choices[0].logprobs
    assert "".join(lp.tokens[: done.usage.completion_tokens]) == done.choices[0].text
    for _token, value, top in zip(lp.tokens, lp.token_logprobs, lp.top_logprobs, strict=True):
        assert len(top) == 2 and max(top.values()) == pytest.approx(value)  # greedy: each the likeliest
    chat = oa.chat.completions.create(
        model="aigc-lm", messages=CHAT, max_tokens=6, temperature=0, logprobs=True, top_logprobs=2
    )
    content = chat.choices[0].logprobs.content
    assert len(content) == chat.usage.completion_tokens
    assert "".join(t.token for t in content).lstrip() == chat.choices[0].message.content
    assert all(t.top_logprobs[0].logprob == pytest.approx(t.logprob) for t in content)
    plain = oa.chat.completions.create(model="aigc-lm", messages=CHAT, max_tokens=2, logprobs=False)
    assert plain.choices[0].logprobs is None  # false asks for none
    # what cannot be answered is refused by what is wrong with it
    for extra, said in [
        ({"prompt": [[1, 10**6]]}, "token id 1000000 .* not in this model's vocabulary"),
        ({"prompt": [context * 40], "echo": True, "logprobs": 0}, "scores at most"),
        ({"prompt": "Caption", "logprobs": 1, "stream": True}, "without stream"),
    ]:
        res = client.post("/v1/completions", json={**body, **extra})
        assert res.status_code == 422 and re.search(said, res.json()["error"]["message"]), res.text
    with pytest.raises(UnprocessableEntityError, match="without stream"):
        oa.chat.completions.create(model="aigc-lm", messages=CHAT, max_tokens=2, logprobs=True, stream=True)


HARNESS_TASKS = {
    # a multiple-choice task (the harness asks each choice's log-likelihood: echo + logprobs) and a
    # generation task (the harness sends token ids and stop strings); local files, no hub
    "digits_mc.yaml": """task: digits_mc
dataset_path: json
dataset_kwargs: {{data_files: {{test: {docs}}}}}
test_split: test
output_type: multiple_choice
doc_to_text: "Caption for a {{{{digit}}}}:"
doc_to_choice: "{{{{choices}}}}"
doc_to_target: "{{{{label}}}}"
metric_list: [{{metric: acc}}]
""",
    "digits_gen.yaml": """task: digits_gen
dataset_path: json
dataset_kwargs: {{data_files: {{test: {docs}}}}}
test_split: test
output_type: generate_until
doc_to_text: "Caption for a {{{{digit}}}}:"
doc_to_target: " a handwritten {{{{digit}}}}"
generation_kwargs: {{until: ["."], max_gen_toks: 8}}
metric_list: [{{metric: exact_match}}]
""",
}


@pytest.mark.slow
def test_the_lm_evaluation_harness_scores_and_generates_against_the_served_model(served, tmp_path):
    """EleutherAI's lm-evaluation-harness (``local-completions``, the model's own tokenizer from its
    export folder) runs a multiple-choice task and a generation task against the served language
    model; its accuracy and its generations are the ones the export read locally gives."""
    import subprocess
    import sys

    import torch

    from aigc_ray.ensemble.lm import LMEnsemble
    from aigc_ray.serve.deploy import base_url

    spec, storage, _ = served
    words = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
    docs = [
        {"digit": w, "choices": [f" a handwritten {c}." for c in words[:4]], "label": i % 4}
        for i, w in enumerate(words)
    ]
    (tmp_path / "docs.jsonl").write_text("".join(json.dumps(d) + "\n" for d in docs))
    tasks = tmp_path / "tasks"
    tasks.mkdir()
    for name, text in HARNESS_TASKS.items():
        (tasks / name).write_text(text.format(docs=tmp_path / "docs.jsonl"))
    folder = storage.download(f"{spec.storage.root}/serve/lm-export", tmp_path / "export")
    model_args = f"model=aigc-lm,base_url={base_url(spec)}/v1/completions,tokenizer={folder}," + (
        "tokenizer_backend=huggingface,num_concurrent=1,max_retries=1,max_length=64"
    )
    cmd = [sys.executable, "-m", "lm_eval", "--model", "local-completions", "--model_args", model_args]
    cmd += ["--tasks", "digits_mc,digits_gen", "--include_path", str(tasks), "--output_path", str(tmp_path / "out")]
    env = {**os.environ, "OPENAI_API_KEY": TOKEN, "HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1"}
    run = subprocess.run([*cmd, "--log_samples"], capture_output=True, text=True, env=env, timeout=600)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    (results,) = (tmp_path / "out").rglob("results_*.json")
    accuracy = json.loads(results.read_text())["results"]["digits_mc"]["acc,none"]
    (generated,) = (tmp_path / "out").rglob("samples_digits_gen_*.jsonl")
    answers = {
        json.loads(line)["doc"]["digit"]: json.loads(line)["resps"][0][0] for line in generated.read_text().splitlines()
    }

    lm = LMEnsemble([str(folder)])

    def log_likelihood(context: str, continuation: str) -> float:
        ids, total = lm.prompt_ids(context), 0.0
        for token in lm.tokenizer(continuation, add_special_tokens=False)["input_ids"]:
            total += lm.next_log_probs(torch.tensor([ids]))[token]
            ids.append(token)
        return total

    right = 0
    for d in docs:  # the harness joins context and choice with a space (its target delimiter)
        scores = [log_likelihood(f"Caption for a {d['digit']}:", " " + c) for c in d["choices"]]
        right += int(np.argmax(scores)) == d["label"]
    assert accuracy == pytest.approx(right / len(docs))
    for w in words:
        local = lm.complete(f"Caption for a {w}:", 8, temperature=0, stop=["."]).text
        assert answers[w] == local, (w, answers[w], local)


@pytest.mark.slow
def test_the_openapi_document_shows_the_openai_routes_and_their_error_shape(served):
    _, _, client = served
    doc = client.get("/openapi.json").json()
    schemas = doc["components"]["schemas"]
    assert set(schemas["ErrorBody"]["properties"]) == {"detail", "error"}
    assert set(schemas["ErrorInfo"]["properties"]) == {"message", "type", "code"}
    for path in (
        "/v1/images/generations",
        "/v1/images",
        "/v1/completions",
        "/v1/chat/completions",
        "/v1/responses",
        "/v1/feedback",
    ):
        responses = doc["paths"][path]["post"]["responses"]
        for status in ("400", "401", "404", "413", "422", "503", "504"):
            shape = responses[status]["content"]["application/json"]["schema"]
            assert shape == {"$ref": "#/components/schemas/ErrorBody"}, (path, status)
    chat = doc["paths"]["/v1/chat/completions"]["post"]
    assert chat["requestBody"]["content"]["application/json"]["schema"]["$ref"].endswith("/ChatCompletionRequest")
    ok = chat["responses"]["200"]["content"]
    assert ok["application/json"]["schema"] == {"$ref": "#/components/schemas/ChatCompletionResponse"}
    chunk = ok["text/event-stream"]["schema"]
    assert chunk["properties"]["object"]["const"] == "chat.completion.chunk" and "$ref" not in json.dumps(chunk)
    completion_chunk = doc["paths"]["/v1/completions"]["post"]["responses"]["200"]["content"]["text/event-stream"]
    assert completion_chunk["schema"]["properties"]["object"]["const"] == "text_completion"
    request = schemas["ChatCompletionRequest"]["properties"]
    assert {"messages", "stream", "stream_options", "max_completion_tokens", "logprobs"} <= set(request)
    assert "b64_json" in schemas["ImagesRequest"]["properties"]["response_format"]["description"]


# Text no route may answer with a 5xx: each is the raw JSON value put in place of a string field.
HOSTILE = {
    "unpaired high surrogate": b'"\\ud800"',
    "unpaired low surrogate": b'"a\\udfff b"',
    "reversed surrogate pair": b'"\\udc00\\ud800"',
    "surrogate as raw bytes (CESU-8)": b'"\xed\xa0\x80"',
    "overlong '/' as raw bytes": b'"\xc0\xaf"',
    "overlong NUL as raw bytes": b'"\xc0\x80"',
    "invalid raw bytes": b'"\xff\xfe"',
    "NUL": b'"a\\u0000b"',
    "control characters": b'"\\u0007\\u001b[31m\\u007f\\u0085\\b"',
    "right-to-left override": '"\u202egnp.exe\u202c"'.encode(),
    "combining marks, 1 MB": ('"a' + "\u0301" * 500_000 + '"').encode(),
    "combining marks within the limits": ('"a' + "\u0301" * 60 + '"').encode(),
}
# never valid text: every field answers 4xx
INVALID = {k for k in HOSTILE if "surrogate" in k or "bytes" in k or k == "NUL"}
SLOT = "__hostile__"


def hostile_bodies(storage, spec, response_id):
    """(route, field, JSON body with SLOT in place of the field's value) for every string field of
    every POST route, streamed and not, plus a top-level key."""
    classify, _ = digit_request(storage, spec)
    image = {"prompt": "a three", "n": 1, "seed": 0, "size": "16x16", "model": "aigc-gan"}
    image |= {"response_format": "b64_json", "user": "u"}
    completion = {"model": "aigc-lm", "prompt": "Caption for a seven:", "max_tokens": 2, "stop": ["\n"], "user": "u"}
    message = {"role": "user", "content": "Caption for a seven:", "name": "n"}
    chat = {"model": "aigc-lm", "messages": [message], "max_tokens": 2, "stop": ["\n"], "user": "u"}
    parts = {**chat, "messages": [{"role": "user", "content": [{"type": "text", "text": "Caption"}]}]}
    bases = [
        ("/v1/classify", classify, ["image", "text"]),
        ("/v1/images", image, ["prompt", "size", "model", "response_format", "user"]),
        ("/v1/images/generations", image, ["prompt", "size", "model", "response_format", "user"]),
        ("/v1/videos", {"n": 1, "seed": 0, "format": "gif"}, ["format"]),
        ("/v1/feedback", {"response_id": response_id, "rating": 3, "correct_text": "x", "comment": "c"}, []),
    ]
    bases[-1][2].extend(["response_id", "correct_text", "comment"])
    items = [{"type": "message", "role": "user", "content": [{"type": "input_text", "text": "Caption"}]}]
    responses = {"model": "aigc-lm", "input": "Caption for a seven:", "instructions": "i", "max_output_tokens": 2}
    bases += [
        ("/v1/responses", {**responses, "user": "u"}, ["model", "input", "instructions", "user"]),
        ("/v1/responses", {**responses, "input": items}, ["input.0.role", "input.0.content.0.text"]),
    ]
    for stream in (False, True):
        bases += [
            ("/v1/completions", {**completion, "stream": stream}, ["model", "prompt", "stop", "stop.0", "user"]),
            ("/v1/completions", {**completion, "prompt": ["x"], "stream": stream}, ["prompt.0"]),
            ("/v1/chat/completions", {**chat, "stream": stream}, ["model", "stop.0", "user"]),
            ("/v1/chat/completions", {**chat, "stream": stream}, ["messages.0.role", "messages.0.content"]),
            ("/v1/chat/completions", {**chat, "stream": stream}, ["messages.0.name"]),
            ("/v1/chat/completions", {**parts, "stream": stream}, ["messages.0.content.0.text"]),
        ]
    for route, base, fields in bases:
        for field in fields:
            body = json.loads(json.dumps(base))
            *parents, last = [int(p) if p.isdigit() else p for p in field.split(".")]
            target = body
            for p in parents:
                target = target[p]
            target[last] = SLOT
            yield route, field, body
        yield route, "a key", {**base, SLOT: 1}


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_hostile_text_in_any_field_of_any_route_gets_a_json_4xx_never_a_5xx(served):
    spec, storage, client = served
    completion = client.post("/v1/completions", json={"model": "aigc-lm", "prompt": "a", "max_tokens": 1}).json()
    answers = []
    for route, field, body in hostile_bodies(storage, spec, completion["id"]):
        for name, value in HOSTILE.items():
            raw = json.dumps(body).encode().replace(json.dumps(SLOT).encode(), value)
            res = client.post(route, content=raw, headers={"content-type": "application/json"})
            answers.append((route, field, name, res))
    # the same bytes as a body that is not JSON (undecodable bytes once made the 422 itself fail)
    for route in ("/v1/classify", "/v1/images/generations", "/v1/completions", "/v1/chat/completions", "/v1/feedback"):
        for headers in ({"content-type": "text/plain"}, {"content-type": "application/json"}, {}):
            for name in INVALID:
                res = client.post(route, content=HOSTILE[name], headers=headers)
                answers.append((route, f"the body ({headers})", name, res))

    crashed = [(r, f, n, a.status_code, a.text[:200]) for r, f, n, a in answers if a.status_code >= 500]
    assert not crashed, crashed[:10]
    for route, field, name, res in answers:
        if res.status_code >= 300:
            error = res.json()  # JSON, in the app's error shape
            assert set(error) == {"detail", "error"}, (route, field, name, res.text[:300])
            assert set(error["error"]) == {"message", "type", "code"} and error["error"]["code"] == res.status_code
        elif res.headers["content-type"].startswith("text/event-stream"):
            # no event is an error: the model's own text may well be the word "error"
            events = [json.loads(e[6:]) for e in res.text.split("\n\n") if e.startswith("data: {")]
            assert res.text.rstrip().endswith("data: [DONE]"), (route, field, name)
            assert events and not any("error" in e for e in events), (route, field, name, res.text[-300:])
        else:
            res.json()
    accepted_invalid = [
        (r, f, n, a.status_code) for r, f, n, a in answers if n in INVALID and f != "a key" and a.status_code < 400
    ]
    assert not accepted_invalid, accepted_invalid[:10]
    too_big = [a.status_code for r, f, n, a in answers if n == "combining marks, 1 MB"]
    assert set(too_big) == {413}
    assert len(answers) > 500 and sum(a.status_code == 200 for *_, a in answers) > 50  # the models answered too

    # what the 422 says: the field, the reason, and the input quoted as valid UTF-8
    raw = b'{"model": "aigc-lm", "prompt": "x\\ud800", "max_tokens": 2}'
    res = client.post("/v1/completions", content=raw, headers={"content-type": "application/json"})
    assert res.status_code == 422 and res.headers["content-type"] == "application/json"
    message = res.json()["error"]["message"]
    assert message.startswith("prompt: Value error, holds an unpaired surrogate (U+D800 at character 1)"), message
    assert any(e.get("input") == "x\\ud800" for e in res.json()["detail"])


@pytest.mark.slow
def test_feedback_lands_as_a_shard_that_reads_back_as_training_data(served):
    from aigc_ray.data.feedback import read_feedback

    spec, storage, client = served
    body, label = digit_request(storage, spec, 5)
    answer = client.post("/v1/classify", json=body).json()
    res = client.post("/v1/feedback", json={"response_id": answer["id"], "correct_label": label, "rating": 2})
    assert res.status_code == 200, res.text
    table = read_feedback(storage, f"{spec.storage.root}/serve/feedback")
    row = [r for r in table.to_pylist() if r["response_id"] == answer["id"]][0]
    assert row["kind"] == "classify" and row["correct_label"] == label and row["rating"] == 2
    assert row["input_image"] == base64.b64decode(body["image"]) and row["input_text"] == body["text"]
    # the same image as a browser's data: URL: the same answer, and feedback keeps the image itself
    as_url = client.post("/v1/classify", json={**body, "image": f"data:image/png;base64,{body['image']}"})
    assert as_url.status_code == 200 and as_url.json()["probabilities"] == answer["probabilities"], as_url.text
    assert client.post("/v1/feedback", json={"response_id": as_url.json()["id"], "rating": 1}).status_code == 200
    table = read_feedback(storage, f"{spec.storage.root}/serve/feedback")
    kept = [r for r in table.to_pylist() if r["response_id"] == as_url.json()["id"]][0]
    assert kept["input_image"] == base64.b64decode(body["image"])
    assert json.loads(row["answer"])["label"] == answer["label"] and row["model_version"]
    # the right class by name, as /v1/classify answers it (label_name) and /v1/models lists it
    classes = client.get("/v1/models/aigc-ensemble").json()["details"]["classes"]
    named = client.post("/v1/feedback", json={"response_id": answer["id"], "correct_label": classes[3]})
    assert named.status_code == 200, named.text
    table = read_feedback(storage, f"{spec.storage.root}/serve/feedback")
    assert table.filter(pc.equal(table["id"], named.json()["id"]))["correct_label"].to_pylist() == [3]
    for wrong, said in ((len(classes), f"an index in 0..{len(classes) - 1}"), ("a dog", "unknown class 'a dog'")):
        refused = client.post("/v1/feedback", json={"response_id": answer["id"], "correct_label": wrong})
        assert refused.status_code == 422 and said in refused.json()["error"]["message"], refused.text
    assert client.post("/v1/feedback", json={"response_id": "clf-nope", "rating": 1}).status_code == 404
    wrong = client.post("/v1/feedback", json={"response_id": answer["id"], "correct_text": "x"})
    assert wrong.status_code == 422 and "completions only" in wrong.text
    empty = client.post("/v1/feedback", json={"response_id": answer["id"]})
    assert empty.status_code == 422 and "needs a rating" in empty.text


def test_recent_answers_drop_the_oldest_inputs_first_and_forget_beyond_the_count():
    from aigc_ray.serve.recent import RecentAnswers

    recent = RecentAnswers(max_bytes=250, max_answers=4)
    for i in range(4):
        recent.add(f"a{i}", "classify", '{"label": 1}', input_text="t", input_image=bytes(99))
    # 4 x 100 bytes of inputs against 250: the two oldest lose theirs, and are still known
    assert [recent.get(f"a{i}").get("inputs_evicted", False) for i in range(4)] == [True, True, False, False]
    assert recent.get("a0") == {"kind": "classify", "answer": '{"label": 1}', "inputs_evicted": True}
    assert recent.get("a3")["input_image"] == bytes(99)
    assert recent.stats()["input_bytes"] == 200 and recent.stats()["inputs_evicted"] == 2
    recent.add("a4", "completion", '{"text": "x"}', input_text="prompt")
    assert recent.get("a0") is None and len(recent.records) == 4  # the count bound forgets the oldest
    recent.add("big", "classify", "{}", input_image=bytes(1000))  # larger than the whole bound
    assert recent.get("big")["inputs_evicted"] and recent.stats()["input_bytes"] <= 250


def _replica_process(deployment: str):
    """The (one) replica process of a deployment of the app, found by its Ray process title."""
    import psutil

    titles = {p.pid: (" ".join(p.info["cmdline"] or []), p) for p in psutil.process_iter(["cmdline"])}
    replicas = {pid: t for pid, (t, _) in titles.items() if "ServeReplica" in t}
    # "ray::ServeReplica:APP:DEPLOYMENT", with ".METHOD" appended while the replica runs a call
    found = [pid for pid, t in replicas.items() if t.rstrip().rsplit(":", 1)[-1].split(".")[0] == deployment]
    assert len(found) == 1, f"expected one {deployment} replica process among {sorted(replicas.values())}"
    return titles[found[0]][1]


@pytest.mark.slow
def test_large_requests_keep_the_ingress_memory_within_the_feedback_bound(served):
    """300 classifications of ~100 KB noise images (~29 MB of inputs) against a 2 MB bound: the
    ingress process grows by far less than what it was sent, the oldest answers lose their inputs
    (feedback on them is stored with a note saying so), the newest keep them."""
    from aigc_ray.data.feedback import read_feedback
    from aigc_ray.data.images import png_b64
    from aigc_ray.serve.deploy import start_local

    spec, storage, client = served
    rng = np.random.default_rng(0)
    caption = digit_request(storage, spec, 2)[0]["text"]

    def noise_body():
        return {"image": png_b64(rng.integers(0, 256, (180, 180, 3), dtype=np.uint8)), "text": caption}

    start_local(_with_serve(spec, max_request_bytes=300_000, feedback_memory_mb=2))
    try:
        with concurrent.futures.ThreadPoolExecutor(4) as pool:
            warm = list(pool.map(lambda _: client.post("/v1/classify", json=noise_body()), range(20)))
            before = _replica_process("ingress").memory_info().rss
            answers = list(pool.map(lambda _: client.post("/v1/classify", json=noise_body()), range(300)))
        grown = _replica_process("ingress").memory_info().rss - before
        assert all(a.status_code == 200 for a in warm + answers), {a.status_code for a in warm + answers}
        sent = 300 * len(base64.b64decode(noise_body()["image"]))
        assert grown < sent / 2, f"the ingress grew {grown / 2**20:.1f} MiB for {sent / 2**20:.1f} MiB sent"
        held = client.get("/v1/feedback/memory").json()
        assert held["answers"] == 320 and 0 < held["input_bytes"] <= 2 * 2**20 and held["inputs_evicted"] > 250, held

        oldest, newest = warm[0].json()["id"], answers[-1].json()["id"]
        evicted = client.post("/v1/feedback", json={"response_id": oldest, "correct_label": 1}).json()
        kept = client.post("/v1/feedback", json={"response_id": newest, "correct_label": 1}).json()
        assert "no longer held" in evicted["note"] and kept["note"] is None
        rows = {r["response_id"]: r for r in read_feedback(storage, f"{spec.storage.root}/serve/feedback").to_pylist()}
        assert rows[oldest]["input_image"] is None and rows[newest]["input_image"][:4] == b"\x89PNG"
    finally:
        start_local(spec)


@pytest.mark.slow
def test_models_show_members_weights_and_lineage(served):
    spec, storage, client = served
    cards = {c["id"]: c for c in client.get("/v1/models").json()["data"]}
    details = cards["aigc-ensemble"]["details"]
    assert details["strategy"] == "weighted" and sum(details["weights"].values()) == pytest.approx(1)
    assert details["classes"][3] == "three" and len(details["classes"]) == 10 and details["image_shape"] == [8, 8, 1]
    for m in details["members"]:
        assert storage.exists(m["lineage"]["checkpoint"] + "/fusion_state.pt")
        assert m["lineage"]["sweep_trial"] and m["lineage"]["data"] and m["lineage"]["spec_hash"]
    assert cards["aigc-lm"]["details"]["members"][0]["fingerprint"]


@pytest.mark.slow
def test_auth_limits_and_validation_answer_4xx_that_say_what_is_wrong(served):
    spec, storage, client = served
    anonymous = httpx.Client(base_url=str(client.base_url), timeout=30)
    body, _ = digit_request(storage, spec)
    assert anonymous.post("/v1/classify", json=body).status_code == 401
    assert anonymous.get("/v1/models").status_code == 401
    wrong = anonymous.post("/v1/classify", json=body, headers={"Authorization": "Bearer nope"})
    assert wrong.status_code == 401 and wrong.headers["www-authenticate"] == "Bearer"
    assert anonymous.get("/healthz").status_code == 200
    bad = client.post("/v1/classify", json={**body, "image": "not base64!"})
    assert bad.status_code == 422 and "not valid base64" in bad.text
    jpeg = client.post("/v1/classify", json={**body, "image": base64.b64encode(b"GIF89a" + b"0" * 20).decode()})
    assert jpeg.status_code == 422 and "PNG" in jpeg.text
    missing = client.post("/v1/classify", json={"image": body["image"]})
    assert missing.status_code == 422 and "text" in missing.text
    big = client.post("/v1/classify", json={**body, "text": "x" * 30000})
    assert big.status_code == 413 and "20000 bytes" in big.text
    too_long = client.post("/v1/completions", json={"model": "aigc-lm", "prompt": "a", "max_tokens": 1000})
    assert too_long.status_code == 400 and "at most 32" in too_long.text
    assert client.post("/v1/images", json={"n": 100}).status_code == 422


@pytest.mark.slow
def test_members_batch_concurrent_requests(served):
    spec, storage, client = served
    body, _ = digit_request(storage, spec)
    before = client.get("/v1/members/stats").json()
    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        codes = list(pool.map(lambda _: client.post("/v1/classify", json=body).status_code, range(64)))
    assert codes == [200] * 64
    after = client.get("/v1/members/stats").json()
    seen = {}
    for name, stats in after.items():
        assert stats["replicas"] == 2
        new = {int(k): v - before[name]["batches"].get(k, 0) for k, v in stats["batches"].items()}
        seen[name] = {k: v for k, v in new.items() if v}
        assert sum(k * v for k, v in new.items()) == 64  # every request went through a batch
        assert max(seen[name]) > 1, f"{name} never batched: {new}"
    # The ingress forms the batches and sends each whole to every member: one call per member per
    # batch, so every member ran the same batches (fewer calls than requests).
    assert len({tuple(sorted(s.items())) for s in seen.values()}) == 1, seen


@pytest.mark.slow
def test_weights_change_in_place_under_load_without_a_failed_request(served):
    from aigc_ray.serve.deploy import start_local

    spec, storage, client = served
    body, _ = digit_request(storage, spec, 2, members=True)
    names = list(client.get("/v1/models").json()["data"][0]["details"]["weights"])
    new = {"strategy": "weighted", "weights": {names[0]: 1.0, names[1]: 0.0}}
    replicas = serve_replica_actors()
    codes = steady_load(client, body, 1, lambda: start_local(spec, user_config=new), 1)
    assert len(codes) > 10 and set(codes) == {200}, f"{len(codes)} requests, codes {set(codes)}"
    assert serve_replica_actors() == replicas  # reconfigured in place: not one replica was restarted
    out = client.post("/v1/classify", json=body).json()
    np.testing.assert_allclose(out["probabilities"], out["members"][names[0]], atol=1e-5)  # only member 0 counts
    weights = client.get("/v1/models").json()["data"][0]["details"]["weights"]
    assert weights == {names[0]: 1.0, names[1]: 0.0}


def serve_replica_actors() -> set[str]:
    """The named actors of the app's replicas (a restarted replica is a new actor, a new name)."""
    import ray

    return {
        a["name"]
        for a in ray.util.list_named_actors(all_namespaces=True)
        if a["namespace"] == "serve" and "SERVE_REPLICA" in a["name"]
    }


def steady_load(client, body, seconds_before, action, seconds_after, threads=4):
    """Status codes of requests sent without pause by ``threads`` clients while ``action`` runs."""
    codes, stop = [], threading.Event()

    def load():
        with httpx.Client(base_url=str(client.base_url), headers=client.headers, timeout=60) as c:
            while not stop.is_set():
                codes.append(c.post("/v1/classify", json=body).status_code)

    workers = [threading.Thread(target=load) for _ in range(threads)]
    for t in workers:
        t.start()
    time.sleep(seconds_before)
    action()
    time.sleep(seconds_after)
    stop.set()
    for t in workers:
        t.join()
    return codes


@pytest.mark.slow
def test_a_member_replica_killed_under_load_costs_at_most_one_request_in_a_thousand(served):
    import ray

    spec, storage, client = served
    body, _ = digit_request(storage, spec, 1)
    replicas = [
        a["name"]
        for a in ray.util.list_named_actors(all_namespaces=True)
        if a["namespace"] == "serve" and "member-sweep-1" in a["name"]
    ]
    assert len(replicas) == 2, replicas

    def kill_one():
        ray.kill(ray.get_actor(replicas[0], namespace="serve"), no_restart=True)

    codes = steady_load(client, body, 1.5, kill_one, 4)
    ok = sum(c == 200 for c in codes)
    assert len(codes) > 50 and ok / len(codes) >= 0.999, f"{ok} of {len(codes)} succeeded: {set(codes)}"


def test_serve_build_writes_a_config_that_serve_accepts(served, tmp_path):
    import importlib

    import yaml
    from ray.serve import Application
    from ray.serve.schema import ServeDeploySchema

    from aigc_ray.cli import main

    spec, _, _ = served
    out = tmp_path / "serve.yaml"
    args = ["serve", "build", "-c", "examples/quickstart.yaml", "-o", str(out)]
    args += ["--set", f"storage.root={spec.storage.root}", "--set", "name=serve", "--set", "serve.host=0.0.0.0"]
    assert main(args) == 0
    config = yaml.safe_load(out.read_text())
    ServeDeploySchema.model_validate(config)  # what `serve deploy` checks first
    app = config["applications"][0]
    assert config["http_options"]["host"] == "0.0.0.0" and app["deployments"][0]["name"] == "ingress"
    assert set(app["deployments"][0]["user_config"]["weights"]) == {"sweep-1", "sweep-2"}
    module, attr = app["import_path"].split(":")
    built = getattr(importlib.import_module(module), attr)(app["args"])
    assert isinstance(built, Application)
    # every deployment a stopping replica of which waits the spec's drain check (the quickstart's 0.2 s)
    deployments, todo = {}, [built]
    while todo:
        d = todo.pop()._bound_deployment
        deployments[d.name] = d._deployment_config.graceful_shutdown_wait_loop_s
        args = [v for a in d.init_args for v in (a.values() if isinstance(a, dict) else [a])]  # members: a dict
        todo += [a for a in args if isinstance(a, Application)]
    assert len(deployments) == 7 and set(deployments.values()) == {0.2}, deployments


@pytest.mark.slow
@pytest.mark.timeout(500)
def test_fuzzing_the_openapi_schema_finds_no_server_error(served):
    """Schemathesis generates requests from the app's own OpenAPI document, valid and invalid
    ones, for every route; none may get a 5xx."""
    import schemathesis
    from hypothesis import HealthCheck, given, settings
    from hypothesis.errors import Unsatisfiable

    from aigc_ray.serve.deploy import base_url

    spec, _, client = served
    url = base_url(spec)
    schema = schemathesis.openapi.from_url(url + "/openapi.json")
    auth = {"Authorization": f"Bearer {TOKEN}"}
    failures, calls = [], 0
    for result in schema.get_all_operations():
        operation = result.ok()
        for mode in (schemathesis.GenerationMode.POSITIVE, schemathesis.GenerationMode.NEGATIVE):

            @settings(
                max_examples=20, deadline=None, derandomize=True, database=None, suppress_health_check=list(HealthCheck)
            )
            @given(case=operation.as_strategy(generation_mode=mode))
            def probe(case):
                nonlocal calls
                response = case.call(base_url=url, headers=auth, timeout=60)
                calls += 1
                if response.status_code >= 500:
                    failures.append(
                        f"{case.method} {case.formatted_path}: {response.status_code} {response.text[:200]}"
                    )

            try:
                probe()
            except Unsatisfiable:  # e.g. no invalid request exists for a GET without parameters
                continue
    assert calls > 100
    assert not failures, "\n".join(failures[:10])


def test_the_committed_nginx_config_is_the_generated_one():
    from pathlib import Path

    from aigc_ray.serve.loadbalancer import nginx_config

    committed = Path(__file__).resolve().parent.parent / "infra" / "nginx" / "aigc-serve.conf"
    assert committed.read_text() == nginx_config(), "regenerate infra/nginx/aigc-serve.conf from nginx_config()"


@pytest.mark.slow
def test_nginx_balances_across_serve_proxies_and_routes_around_a_dead_one(served, tmp_path):
    import subprocess

    from conftest import free_port

    from aigc_ray.serve.loadbalancer import nginx_config

    nginx = _nginx_or_skip()
    spec, storage, client = served
    dead, port = free_port(), free_port()  # nothing listens on `dead`: a proxy that went away
    conf = tmp_path / "nginx.conf"
    conf.write_text(
        nginx_config([f"127.0.0.1:{spec.serve.port}", f"127.0.0.1:{dead}"], f"127.0.0.1:{port}", prefix=str(tmp_path))
    )
    check = subprocess.run([nginx, "-t", "-c", str(conf), "-p", str(tmp_path)], capture_output=True, text=True)
    assert check.returncode == 0, check.stderr
    proc = subprocess.Popen([nginx, "-c", str(conf), "-p", str(tmp_path), "-g", "daemon off;"])
    try:
        lb = httpx.Client(base_url=f"http://127.0.0.1:{port}", headers=client.headers, timeout=30)
        deadline = time.time() + 20
        while True:
            try:
                if lb.get("/healthz").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.time() < deadline, "nginx did not come up"
            time.sleep(0.2)
        body, _ = digit_request(storage, spec, 4)
        codes = [lb.post("/v1/classify", json=body).status_code for _ in range(40)]
        assert codes == [200] * 40
        assert lb.post("/v1/classify", json={"image": "x"}).status_code == 422  # errors pass through as they are
        log = (tmp_path / "access.log").read_text()
        assert f"upstream=127.0.0.1:{spec.serve.port}" in log
        assert f"127.0.0.1:{dead}" in log  # it was tried, failed, and the request moved on
        lb.close()
    finally:
        proc.terminate()
        proc.wait(timeout=20)


def _nginx_or_skip() -> str:
    import shutil

    nginx = shutil.which("nginx") or shutil.which("nginx", path="/usr/sbin:/usr/local/sbin")
    if nginx is None:
        pytest.skip(
            "nginx is not installed: 'sudo apt-get install nginx' (Debian/Ubuntu; .ci/run does it) or 'brew install nginx'"
        )
    return nginx


def test_nginx_passes_the_apps_overload_answer_through_unchanged(tmp_path):
    """Two upstreams that both answer overload (the app's JSON 503 with Retry-After): every client
    gets that answer as it was sent, and nginx never takes the busy upstreams out of rotation
    (which would turn overload into its own 502 page)."""
    import http.server
    import subprocess

    from conftest import free_port

    from aigc_ray.serve.loadbalancer import nginx_config

    nginx = _nginx_or_skip()
    overloaded = json.dumps({"detail": "busy", "error": {"message": "busy: retry later", "code": 503}}).encode()
    hits = []

    class Busy(http.server.BaseHTTPRequestHandler):
        def do_POST(self):
            self.rfile.read(int(self.headers.get("content-length", 0)))
            hits.append(self.server.server_port)
            self.send_response(503)
            self.send_header("Content-Type", "application/json")
            self.send_header("Retry-After", "1")
            self.send_header("Content-Length", str(len(overloaded)))
            self.end_headers()
            self.wfile.write(overloaded)

        def log_message(self, *_):
            pass

    upstreams = [http.server.ThreadingHTTPServer(("127.0.0.1", 0), Busy) for _ in range(2)]
    for u in upstreams:
        threading.Thread(target=u.serve_forever, daemon=True).start()
    port = free_port()
    conf = tmp_path / "nginx.conf"
    addresses = [f"127.0.0.1:{u.server_port}" for u in upstreams]
    conf.write_text(nginx_config(addresses, f"127.0.0.1:{port}", prefix=str(tmp_path)))
    proc = subprocess.Popen([nginx, "-c", str(conf), "-p", str(tmp_path), "-g", "daemon off;"])
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10) as lb:
            deadline = time.time() + 20
            while True:
                try:
                    answers = [lb.post("/v1/classify", json={"text": "x"})]
                    break
                except httpx.TransportError:
                    assert time.time() < deadline, "nginx did not come up"
                    time.sleep(0.2)
            answers += [lb.post("/v1/classify", json={"text": "x"}) for _ in range(11)]
        assert [a.status_code for a in answers] == [503] * 12
        assert all(a.content == overloaded and a.headers["retry-after"] == "1" for a in answers)
        assert len(hits) == 12 and set(hits) == {u.server_port for u in upstreams}  # once each, both kept
    finally:
        proc.terminate()
        proc.wait(timeout=20)
        for u in upstreams:
            u.shutdown()


@pytest.mark.slow
def test_overload_is_answered_503_at_once_instead_of_piling_up(served):
    from aigc_ray.serve.deploy import start_local

    spec, storage, client = served
    body, _ = digit_request(storage, spec, 6)
    tight = spec.model_copy(
        update={
            "serve": spec.serve.model_copy(
                update={"max_ongoing_requests": 1, "max_queued_requests": 1, "max_batch_size": 1}
            )
        }
    )
    start_local(tight)
    try:
        with concurrent.futures.ThreadPoolExecutor(24) as pool:
            answers = list(pool.map(lambda _: client.post("/v1/classify", json=body), range(96)))
        codes = [a.status_code for a in answers]
        assert set(codes) <= {200, 503} and codes.count(503) > 0 and codes.count(200) > 0, codes
        # Every rejection is the app's JSON error with Retry-After, whichever limit was hit (the
        # ingress's own capacity or a member's queue), never the Serve proxy's plain text.
        for rejected in (a for a in answers if a.status_code == 503):
            error = rejected.json()["error"]
            assert error["code"] == 503 and "retry later" in error["message"], rejected.text
            assert rejected.headers["retry-after"] == "1"
    finally:
        start_local(spec)
    assert client.post("/v1/classify", json=body).status_code == 200


def _with_serve(spec, **settings):
    return spec.model_copy(update={"serve": spec.serve.model_copy(update=settings)})


@pytest.mark.slow
def test_a_member_slower_than_the_request_timeout_is_answered_504(served):
    from aigc_ray.serve.deploy import start_local

    spec, storage, client = served
    body, _ = digit_request(storage, spec, 4)
    start_local(_with_serve(spec, request_timeout_s=0.0005))  # no member answers this fast
    try:
        slow = client.post("/v1/classify", json=body)
        assert slow.status_code == 504, slow.text
        assert slow.json()["error"]["code"] == 504 and "no answer within" in slow.json()["error"]["message"]
    finally:
        start_local(spec)
    assert client.post("/v1/classify", json=body).status_code == 200  # and it answers again


@pytest.mark.slow
def test_every_strategy_answers_what_its_offline_combination_answers(served, tmp_path):
    """mean, vote and weighted reconfigured in place; stacking built into its own ensemble (its
    meta-model is fitted at build time) from the served members, served, and compared."""
    from aigc_ray.ensemble.build import build_ensemble, load_ensemble
    from aigc_ray.ensemble.combine import Combiner
    from aigc_ray.layout import ensemble_dir
    from aigc_ray.serve.deploy import start_local
    from aigc_ray.storage import join

    spec, storage, client = served
    body, _ = digit_request(storage, spec, 5, members=True)
    ens = load_ensemble(storage, ensemble_dir(spec))
    weights = {n: 1 / len(ens.names) for n in ens.names}
    try:
        for strategy in ("mean", "vote", "weighted"):
            start_local(spec, user_config={"strategy": strategy, "weights": weights})
            out = client.post("/v1/classify", json=body).json()
            members = np.stack([out["members"][n] for n in ens.names])[:, None]
            expected = Combiner(strategy, [weights[n] for n in ens.names])(members)[0]
            assert out["strategy"] == strategy
            np.testing.assert_allclose(out["probabilities"], expected, atol=1e-5)
            assert out["label"] == int(np.argmax(expected))

        listed = [join(ensemble_dir(spec), "members", n) for n in ens.names]
        stacked = spec.model_copy(
            update={
                "name": "serve-stacking",
                "ensemble": spec.ensemble.model_copy(
                    update={"strategy": "stacking", "top_k": 0, "members": listed, "language_models": []}
                ),
            }
        )
        report = build_ensemble(stacked, storage, log=lambda *_: None)
        assert report.strategy == "stacking"
        start_local(stacked)
        out = client.post("/v1/classify", json=body).json()
        offline = load_ensemble(storage, ensemble_dir(stacked))
        members = np.stack([out["members"][n] for n in offline.names])[:, None]
        assert out["strategy"] == "stacking"
        np.testing.assert_allclose(out["probabilities"], offline.combiner(members)[0], atol=1e-5)
    finally:
        start_local(spec)
    assert client.post("/v1/classify", json=body).json()["strategy"] == "weighted"


@pytest.mark.slow
def test_the_safety_filter_moderates_like_openai_refuses_flagged_prompts_and_audits_each_decision(served):
    import hashlib

    from openai import BadRequestError

    from aigc_ray.layout import safety_audit_uri
    from aigc_ray.safety.audit import read_audit

    spec, storage, client = served
    # the module's earlier tests leave records too (a tiny LM's gibberish can hold a flagged word)
    earlier = {json.dumps(r, sort_keys=True) for r in read_audit(storage, safety_audit_uri(spec))}
    oa = openai_client(spec)
    verdicts = oa.moderations.create(input=["I will kill you", "a handwritten seven"], model="aigc-moderation")
    threat, caption = verdicts.results
    assert threat.flagged and threat.categories.violence and threat.category_scores.violence == 1.0
    assert not threat.categories.hate and not caption.flagged  # OpenAI's fields, all present
    assert oa.moderations.create(input="sh1t").results[0].categories.model_extra["profanity"]

    hostile = "you f*cking idiot"
    refused = []
    with pytest.raises(BadRequestError) as caught:
        oa.completions.create(model="aigc-lm", prompt=hostile, max_tokens=2)
    refused.append(caught.value)
    with pytest.raises(BadRequestError) as caught:
        oa.chat.completions.create(model="aigc-lm", messages=[{"role": "user", "content": hostile}], max_tokens=2)
    refused.append(caught.value)
    with pytest.raises(BadRequestError) as caught:
        oa.images.generate(prompt=hostile, model="aigc-gan", n=1, size="16x16", response_format="b64_json")
    refused.append(caught.value)
    for error in refused:
        assert error.code == "content_policy_violation" and "harassment, profanity" in error.message, error.body
    # greedy: the untrained tiny LM samples any token of its vocabulary at temperature 1, and two
    # sampled at random can hold a word the filter flags (seen once in CI: an output-stage block)
    asked = {"model": "aigc-lm", "prompt": "Caption for a two:", "max_tokens": 2, "temperature": 0}
    ok = client.post("/v1/completions", json=asked)
    assert ok.status_code == 200

    records = [r for r in read_audit(storage, safety_audit_uri(spec)) if json.dumps(r, sort_keys=True) not in earlier]
    blocked = [r for r in records if r["action"] == "block"]
    assert {r["route"] for r in blocked} == {"/v1/completions", "/v1/chat/completions", "/v1/images/generations"}
    assert all(r["stage"] == "prompt" and r["sha256"] == hashlib.sha256(hostile.encode()).hexdigest() for r in blocked)
    assert all(r["redacted"] == "you ******* *****" for r in blocked)
    assert "idiot" not in json.dumps(records)  # never the text of what was blocked
    answered = [r for r in records if r["request_id"] == ok.json()["id"]]
    assert [(r["stage"], r["action"]) for r in answered] == [("prompt", "pass"), ("output", "pass")]
    assert {r["policy_version"] for r in records} == {blocked[0]["policy_version"]}


@pytest.mark.slow
def test_flagged_generations_are_masked_or_withheld_in_answers_and_streams(served):
    """A policy so strict (threshold 0.0001) that the classifier flags everything: prompts and
    generations are redacted, and a stream with nothing to mask ends with content_filter."""
    from aigc_ray.safety.moderator import REMOVED
    from aigc_ray.serve.deploy import start_local

    spec, _, client = served
    strict = spec.model_copy(
        update={"safety": spec.safety.model_copy(update={"threshold": 0.0001, "action": "redact"})}
    )
    start_local(strict)
    try:
        body = {"model": "aigc-lm", "prompt": "Caption for a seven:", "max_tokens": 4, "temperature": 0}
        answer = client.post("/v1/completions", json=body).json()
        assert answer["choices"][0]["text"] in (REMOVED, "")  # a classifier's flag: nothing to point at
        with client.stream("POST", "/v1/completions", json={**body, "stream": True}) as res:
            events = [json.loads(line[6:]) for line in res.iter_lines() if line.startswith("data: {")]
        assert events[-1]["choices"][0]["finish_reason"] == "content_filter"
        assert "".join(e["choices"][0]["text"] for e in events) == ""
    finally:
        start_local(spec)


@pytest.mark.slow
def test_the_closed_loop_feedback_becomes_shards_and_a_refreshed_ensemble_answers_differently(served, tmp_path, capsys):
    """Serve -> corrections -> `feedback ingest` -> `feedback finetune` -> redeploy -> new answers.
    (Runs last in this module: it replaces the served ensemble.)"""
    from aigc_ray.cli import main
    from aigc_ray.data.shards import validate_shards
    from aigc_ray.layout import feedback_shards_uri
    from aigc_ray.manifest import read_manifest
    from aigc_ray.serve.deploy import start_local
    from aigc_ray.spec import spec_to_yaml

    spec, storage, client = served
    corrected = {}
    for i in (7, 8, 9):
        body, _ = digit_request(storage, spec, i)
        answer = client.post("/v1/classify", json=body).json()
        corrected[i] = (answer["label"] + 1) % 10  # a correction the model disagrees with
        res = client.post("/v1/feedback", json={"response_id": answer["id"], "correct_label": corrected[i]})
        assert res.status_code == 200
    # the two commands, as a user runs them, on this spec written out as YAML
    spec_file = tmp_path / "spec.yaml"
    spec_file.write_text(spec_to_yaml(spec))
    assert main(["feedback", "ingest", "-c", str(spec_file)]) == 0
    assert f"feedback shards: {feedback_shards_uri(spec)}" in capsys.readouterr().out
    assert read_manifest(storage, feedback_shards_uri(spec)).meta["rows"] >= 3
    assert validate_shards(storage, feedback_shards_uri(spec)).ok
    tuned = ["--set", "feedback.steps=80", "--set", "feedback.lr=0.005"]
    assert main(["feedback", "finetune", "-c", str(spec_file), *tuned]) == 0
    assert "ensemble refreshed" in capsys.readouterr().out
    start_local(spec)  # the new artifact version redeploys the members
    for i, label in corrected.items():
        body, _ = digit_request(storage, spec, i)
        assert client.post("/v1/classify", json=body).json()["label"] == label, f"example {i}"
    details = client.get("/v1/models").json()["data"][0]["details"]
    assert all(m["lineage"]["finetuned_on_feedback"] == feedback_shards_uri(spec) for m in details["members"])


@pytest.mark.slow
def test_explain_says_why_the_ensemble_answered_from_its_own_deployment(served):
    """POST /v1/explain: the ensemble's answer as /v1/classify gives it, IG's pixel map (numbers
    and overlay) adding up to the answer's change from a black image within 1 %, per-token
    attributions on the caption's own tokens, Shapley shares that add up exactly, the method and
    baselines; served by the 'explainer' deployment, so a classify is answered while an
    explanation is still computing."""
    from PIL import Image
    from ray import serve

    from aigc_ray.serve.deploy import APP_NAME

    spec, storage, client = served
    body, _ = digit_request(storage, spec, 3)
    classified = client.post("/v1/classify", json=body).json()
    ask = {"image": body["image"], "text": body["text"]}
    res = client.post("/v1/explain", json=ask)
    assert res.status_code == 200, res.text
    why = res.json()
    assert why["id"].startswith("expl-") and why["label"] == classified["label"] == why["target"]
    assert why["probability"] == pytest.approx(max(classified["probabilities"]), abs=1e-4)
    assert why["method"]["attribution"] == "integrated_gradients" and why["method"]["steps"] == 256
    assert why["baseline"]["caption"] == "a handwritten digit" and why["attribution_of"]["image"] == "ensemble"
    shares, phi, v = why["modality_shares"], why["shapley"], why["shapley"]["values"]
    assert shares["image"] + shares["caption"] == pytest.approx(1, abs=1e-6)
    assert phi["image"] + phi["caption"] == pytest.approx(v["both"] - v["none"], abs=1e-6)  # efficiency
    # completeness on the ensemble (weighted: IG of the weighted members): the map adds up to the
    # answer's probability minus that of a black image with the same caption, within 1 % of the output
    attribution = np.asarray(why["image_attribution"])
    assert attribution.shape == (1, 8, 8)
    change = why["probability"] - np.exp(v["caption"])
    assert abs(attribution.sum() - change) <= 0.01 * why["probability"]
    assert attribution.sum() - change == pytest.approx(why["delta"]["image"], abs=1e-4)
    assert "".join(t["token"] for t in why["tokens"]).split() == body["text"].split()
    overlay = Image.open(io.BytesIO(base64.b64decode(why["overlay_png"])))
    assert overlay.format == "PNG" and overlay.size == (128, 128) and overlay.mode == "RGB"
    assert set(why["members"]) == set(classified_members(client, body))
    # another class by name; bad requests name their problem
    zero = client.post("/v1/explain", json={**ask, "target": "zero", "steps": 16}).json()
    assert zero["target"] == 0 and zero["target_name"] == "zero" and zero["method"]["steps"] == 16
    for bad, said in (({"target": "eleven"}, "unknown class 'eleven'"), ({"steps": 3}, "steps")):
        res = client.post("/v1/explain", json={**ask, **bad})
        assert res.status_code == 422 and said in res.json()["error"]["message"], res.text
    assert client.post("/v1/explain", json=ask, headers={"Authorization": ""}).status_code == 401
    # its own deployment: a classify sent after a long explanation started is answered first
    assert "explainer" in serve.status().applications[APP_NAME].deployments
    done: list[str] = []

    def explain_slowly() -> None:
        assert client.post("/v1/explain", json={**ask, "steps": 1024}).status_code == 200
        done.append("explain")

    slow = threading.Thread(target=explain_slowly)
    slow.start()
    time.sleep(0.3)
    assert client.post("/v1/classify", json=body).status_code == 200
    done.append("classify")
    slow.join()
    assert done == ["classify", "explain"]


def classified_members(client, body) -> list[str]:
    return list(client.post("/v1/classify", json={**body, "return_members": True}).json()["members"])


def test_models_show_each_members_accuracy_under_attack(served):
    """/v1/models carries the committed robustness results: per attack, each member's and the
    ensemble's accuracy per ε with a caption that names nothing (the image alone)."""
    _, _, client = served
    details = client.get("/v1/models").json()["data"][0]["details"]
    robust = details["robustness"]
    assert robust["captions"] == "a handwritten digit" and robust["examples"] == 40
    for attack in ("fgsm", "pgd"):
        assert set(robust[attack]) == set(details["weights"]) | {"ensemble"}
        for accs in robust[attack].values():
            assert set(accs) == {"0.0", "0.1"} and accs["0.1"] <= accs["0.0"]


@pytest.mark.slow
def test_images_outside_the_trained_range_are_refused_when_the_spec_says_so(served):
    """serve.refuse_out_of_range: a pixel lit where no training image ever was (a digit's empty
    corner) gets a 422 naming it, on /v1/classify and /v1/explain; in-range images pass; off by default."""
    from safetensors.numpy import load

    from aigc_ray.data.arrays import digit_arrays
    from aigc_ray.data.images import png_b64
    from aigc_ray.layout import ensemble_dir
    from aigc_ray.serve.app import out_of_range
    from aigc_ray.serve.deploy import start_local

    spec, storage, client = served
    trained = load(storage.read_bytes(ensemble_dir(spec) + "/input_range.safetensors"))
    assert trained["max"][0, 0, 0] == 0.0  # no training digit touches the top-left corner
    val = digit_arrays(spec, storage, "val")
    i = next(
        i
        for i in range(len(val["label"]))
        if out_of_range(val["image"][i], trained["min"], trained["max"], 0.1) is None
    )
    pixels = (val["image"][i, 0] * 255).round().astype(np.uint8)
    lit = pixels.copy()
    lit[0, 0] = 255
    clean, odd = (
        {"image": png_b64(pixels), "text": str(val["text"][i])},
        {"image": png_b64(lit), "text": str(val["text"][i])},
    )
    assert client.post("/v1/classify", json=odd).status_code == 200  # off by default
    start_local(_with_serve(spec, refuse_out_of_range=True))
    try:
        assert client.get("/v1/models").json()["data"][0]["details"]["refuses_out_of_range"] is True
        assert client.post("/v1/classify", json=clean).status_code == 200
        for route in ("/v1/classify", "/v1/explain"):
            res = client.post(route, json=odd)
            message = res.json()["error"]["message"]
            assert res.status_code == 422 and "row 0 column 0 is 1.00, trained 0.00-0.00" in message, (route, message)
    finally:
        start_local(spec)


def test_the_range_check_names_the_first_pixel_outside_it():
    from aigc_ray.serve.app import out_of_range

    low, high = np.zeros((1, 2, 2), np.float32), np.array([[[0.0, 1.0], [1.0, 1.0]]], np.float32)
    assert out_of_range(np.array([[[0.05, 0.9], [0.0, 1.0]]], np.float32), low, high, 0.1) is None
    said = out_of_range(np.array([[[0.5, 0.9], [0.0, 1.0]]], np.float32), low, high, 0.1)
    assert said.startswith("1 pixel(s) lie outside") and "row 0 column 0 is 0.50, trained 0.00-0.00" in said
