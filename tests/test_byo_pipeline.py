"""A team's own data end to end: an ImageFolder dataset and a text corpus on S3 and a Hugging Face
GPT-2 folder of their own go through `aigc run` (data → pretrain → fine-tune → sweeps →
ensemble) and are served; the served classifier reads that data's test images, sent with
captions that give nothing away. The images are the shapes (32x32 RGB, 6 classes), stored as
the user would: PNG and JPEG files of another size, some grey, in class folders."""

from __future__ import annotations

import base64
import io
import json

import numpy as np
import pytest
import torch
from conftest import TINY_RUN, free_port
from PIL import Image

from aigc_ray.data.arrays import digit_arrays
from aigc_ray.data.images import decode_png, png_b64
from aigc_ray.data.info import dataset_info
from aigc_ray.data.shapes import CLASSES, shape_batches
from aigc_ray.pipeline import RunOptions, run_pipeline
from aigc_ray.spec import load_spec
from aigc_ray.storage import Storage

PER_CLASS = 60
GENERIC = ("a photo from the archive", "an image", "scanned from the collection", "item on file")


def _user_files(rows) -> dict[str, bytes]:
    """The ImageFolder as a user keeps it: class folders, 40x48 PNG/JPEG (every 5th grey), a
    metadata.jsonl whose captions name no class."""
    files, lines = {}, []
    for i, r in enumerate(rows):
        img = Image.fromarray(decode_png(r["image"])).resize((40, 48))
        if i % 5 == 0:
            img = img.convert("L")
        fmt = "JPEG" if i % 2 else "PNG"
        buf = io.BytesIO()
        img.save(buf, format=fmt, quality=95)
        name = f"{CLASSES[r['label']]}/img-{i:04d}.{'jpg' if fmt == 'JPEG' else 'png'}"
        files[name] = buf.getvalue()
        # captions that name no class (and no image: a unique caption per image would let the
        # text branch memorise the training labels instead of learning to see)
        lines.append(json.dumps({"file_name": name, "text": GENERIC[i % len(GENERIC)]}))
    files["metadata.jsonl"] = "\n".join(lines).encode()
    return files


def _gpt2_folder(folder, texts) -> None:
    from transformers import GPT2Config, GPT2LMHeadModel

    from aigc_ray.data.tokenizer import train_tokenizer

    tokenizer = train_tokenizer(texts, 400)
    tokenizer.pad_token = None  # like GPT-2's own
    torch.manual_seed(0)
    GPT2LMHeadModel(
        GPT2Config(vocab_size=len(tokenizer), n_positions=64, n_embd=32, n_layer=2, n_head=2)
    ).save_pretrained(folder)
    tokenizer.save_pretrained(folder)


@pytest.mark.slow
@pytest.mark.timeout(1500)
def test_own_imagefolder_corpus_and_gpt2_run_and_are_served(ray_local, s3_server, tmp_path):
    from ray import serve

    from aigc_ray.serve.app import read_token
    from aigc_ray.serve.client import AigcClient, one_of_each
    from aigc_ray.serve.deploy import base_url, start_local

    rows = [r for b in shape_batches(7, {"train": 0.8, "val": 0.1, "test": 0.1}, 0.0, 0.0) for r in b.to_pylist()]
    picked = [r for k in range(len(CLASSES)) for r in [x for x in rows if x["label"] == k][:PER_CLASS]]
    bucket = s3_server.make_bucket("team-data")
    storage = Storage.from_spec(load_spec(None, [f"storage.endpoint_url={s3_server.endpoint}"]).storage)
    for name, data in _user_files(picked).items():
        storage.write_bytes(f"s3://{bucket}/images/{name}", data)
    prose = [r["text"] for r in rows]  # the team's text: sentences about shapes, in three files
    for i in range(3):
        storage.write_bytes(f"s3://{bucket}/text/part-{i}.txt", "\n\n".join(prose[i::3]).encode())
    _gpt2_folder(tmp_path / "team-gpt2", prose)

    spec = load_spec(
        "examples/quickstart.yaml",
        [
            f"storage.root=s3://{bucket}/runs",
            f"storage.endpoint_url={s3_server.endpoint}",
            "name=team",
            f"data.source={{format: imagefolder, uri: 's3://{bucket}/images'}}",
            "data.image_size=32",
            f"data.corpus={{uri: 's3://{bucket}/text/*.txt'}}",
            "data.rows_per_shard=200",
            f"finetune.base={tmp_path / 'team-gpt2'}",
            *TINY_RUN,
            # the captions give nothing away: the image branch alone must learn the shapes
            "fusion.dim=32",
            "fusion.sweep.max_iterations=4",
            "fusion.sweep.steps_per_iteration=50",
            f"serve.port={free_port()}",
        ],
    )
    results = run_pipeline(spec, storage, RunOptions(skip_serve=True), log=lambda *_: None)
    assert {r.name: r.status for r in results} == {
        **{
            n: "ran"
            for n in ("data", "stream", "pretrain", "finetune", "sweep_gan", "sweep_video", "sweep_fusion", "ensemble")
        },
        "robustness": "skipped",  # robustness.enabled is false
    }
    info = dataset_info(spec, storage)
    assert info.classes == tuple(sorted(CLASSES)) and info.image_shape == (32, 32, 3)

    start_local(spec)
    try:
        client = AigcClient(base_url(spec), read_token(spec.serve.auth_token_env, spec.serve.auth_token_file))
        card = {c["id"]: c for c in client.models()["data"]}["aigc-ensemble"]["details"]
        assert card["classes"] == sorted(CLASSES) and card["image_shape"] == [32, 32, 3]
        test = digit_arrays(spec, storage, "test")
        right = 0
        for image, label, text in zip(test["image"], test["label"], test["text"], strict=True):
            pixels = (image.transpose(1, 2, 0) * 255).round().astype(np.uint8)
            out = client.classify(png_b64(pixels), str(text))
            assert out["label_name"] == card["classes"][out["label"]]
            right += int(out["label"] == int(label))
        accuracy = right / len(test["label"])
        print(f"served accuracy on the team's test images: {accuracy:.2f} ({len(test['label'])} images)")
        assert accuracy >= 0.6, accuracy  # chance is 1/6
        answers = one_of_each(client, png_b64(pixels), str(text), int(label), log=lambda *_: None)
        drawn = decode_png(base64.b64decode(answers["images"]["data"][0]["b64_json"]))
        assert drawn.shape == (32, 32, 3)  # the generator's own size, in colour
        assert answers["images"]["prompt"] == f"a {card['classes'][int(label)]}"
        (choice,) = answers["completion"]["choices"]
        assert isinstance(choice["text"], str)
    finally:
        serve.shutdown()
