"""GAN data augmentation for the fusion classifier: ratio 0 is plain training bit for bit,
batches really mix in the synthetic pool, the real-data subset is stratified and seeded, the
generator loader refuses what cannot make labelled samples, and a real (tiny) fusion sweep with
augment_ratio as a search dimension records the generator among its inputs."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch import nn

from aigc_ray.layout import augment_generator_uri
from aigc_ray.manifest import publish_directory, read_manifest
from aigc_ray.models.augment import (
    load_augmenter,
    max_augment_ratio,
    pool_per_class,
    real_subset,
    synthetic_pool,
    to_real_space,
)
from aigc_ray.models.fusion_training import build_model, build_optimizer, draw_batch, set_text_frozen, train_iteration
from aigc_ray.spec import load_spec
from aigc_ray.storage import Storage, join

CONFIG = {
    "seed": 3,
    "operator": "gated",
    "text_encoder": "tiny",
    "dim": 16,
    "max_text_tokens": 16,
    "image_lr": 3e-3,
    "text_lr": 3e-3,
    "head_lr": 3e-3,
    "freeze_text_iterations": 1,
    "batch_size": 16,
    "steps_per_iteration": 6,
}
VOCAB = 40
COND_GAN = {"generator": "dcgan", "condition": "caption", "cond_dim": 8, "z_dim": 8, "width": 4}


@pytest.fixture
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def arrays(n: int, width: int, seed: int, image_value: float | None = None) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    mask = torch.ones(n, width, dtype=torch.long)
    mask[:, width // 2 :] = (torch.rand(n, width - width // 2, generator=g) < 0.5).long()
    image = torch.rand(n, 1, 8, 8, generator=g) if image_value is None else torch.full((n, 1, 8, 8), image_value)
    return {
        "image": image,
        "input_ids": torch.randint(1, VOCAB, (n, width), generator=g) * mask,
        "attention_mask": mask,
        "label": torch.randint(0, 10, (n,), generator=g),
    }


def plain_iteration(model, optimizer, x, config, iteration) -> float:
    """``train_iteration`` as it was before augmentation existed: the reference for ratio 0."""
    set_text_frozen(model, iteration < config["freeze_text_iterations"])
    model.train()
    gen = torch.Generator().manual_seed(config["seed"] * 1000 + iteration)
    batch = int(config["batch_size"])
    for _ in range(config["steps_per_iteration"]):
        idx = torch.randint(0, len(x["label"]), (batch,), generator=gen)
        logits = model(x["image"][idx], x["input_ids"][idx], x["attention_mask"][idx])
        loss = nn.functional.cross_entropy(logits, x["label"][idx])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return loss.item()


def run(config: dict, x, pool=None, iterations: int = 2, reference: bool = False):
    model = build_model(config, VOCAB)
    opt = build_optimizer(model, config)
    losses = []
    for it in range(iterations):
        if reference:
            losses.append(plain_iteration(model, opt, x, config, it))
        else:
            losses.append(train_iteration(model, opt, x, config, it, pool))
    return model.state_dict(), losses


def same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_ratio_zero_is_plain_training_bit_for_bit(one_thread):
    x, pool = arrays(50, 7, seed=0), arrays(30, 9, seed=1, image_value=0.0)
    before, before_losses = run(CONFIG, x, reference=True)  # no augment_ratio key at all
    for config, p in (({**CONFIG, "augment_ratio": 0.0}, pool), ({**CONFIG, "augment_ratio": 0}, None)):
        weights, losses = run(config, x, p)
        assert same(weights, before) and losses == before_losses
    # a ratio without a pool (e.g. bagged ensemble members from a sweep's best config): real rows only
    weights, _ = run({**CONFIG, "augment_ratio": 1.5}, x, None)
    assert same(weights, before)


def test_positive_ratio_mixes_the_pool_into_every_batch(one_thread):
    x = arrays(50, 7, seed=0)
    pool = arrays(30, 9, seed=1, image_value=-1.0)  # no real image has a -1 pixel: the rows are recognisable
    gen = torch.Generator().manual_seed(0)
    for ratio, batch in ((1.0, 16), (0.5, 8), (4.0, 10), (0.1, 16)):
        counts = []
        for _ in range(400):
            b, n_syn = draw_batch(x, pool, batch, ratio, gen)
            assert len(b["label"]) == batch and b["input_ids"].shape == b["attention_mask"].shape
            assert b["input_ids"].shape[1] == 9  # padded to the wider part
            assert int((b["image"].flatten(1).min(1).values < 0).sum()) == n_syn  # the synthetic rows are pool rows
            assert bool((b["attention_mask"][: batch - n_syn, 7:] == 0).all())  # real rows' padding is masked
            counts.append(n_syn)
        share = np.mean(counts) / batch
        assert share == pytest.approx(ratio / (1 + ratio), abs=0.02), (ratio, share)
    # and it changes training: a pool of blank images all labelled 3
    blank = {**arrays(30, 7, seed=2, image_value=0.0), "label": torch.full((30,), 3)}
    plain, _ = run({**CONFIG, "augment_ratio": 0.0}, x, blank)
    mixed, _ = run({**CONFIG, "augment_ratio": 1.0}, x, blank)
    assert not same(plain, mixed)
    model = build_model(CONFIG, VOCAB)
    opt = build_optimizer(model, CONFIG)
    for it in range(4):
        train_iteration(model, opt, x, {**CONFIG, "augment_ratio": 2.0}, it, blank)
    with torch.no_grad():
        pred = model(blank["image"], blank["input_ids"], blank["attention_mask"]).argmax(1)
    assert (pred == 3).float().mean() > 0.9  # it learned the synthetic rows


def test_real_subset_is_stratified_seeded_nested_and_sized():
    rng = np.random.default_rng(0)
    labels = rng.choice(10, size=1000, p=np.linspace(1, 3, 10) / np.linspace(1, 3, 10).sum())
    data = {"label": labels, "row": np.arange(1000), "text": np.array([f"t{i}" for i in range(1000)], dtype=object)}
    counts = np.bincount(labels, minlength=10)
    sub = real_subset(data, 0.25, seed=7)
    assert len(sub["label"]) == 250 and set(sub) == set(data)
    assert np.array_equal(sub["label"], labels[sub["row"]]) and np.all(np.diff(sub["row"]) > 0)
    assert np.all(np.abs(np.bincount(sub["label"], minlength=10) - 0.25 * counts) < 1)  # stratified
    assert np.array_equal(real_subset(data, 0.25, seed=7)["row"], sub["row"])  # seeded
    assert not np.array_equal(real_subset(data, 0.25, seed=8)["row"], sub["row"])
    assert set(real_subset(data, 0.1, seed=7)["row"]) <= set(sub["row"])  # nested
    tiny = real_subset(data, 0.001, seed=0)
    assert sorted(tiny["label"]) == list(range(10))  # at least one per label
    assert real_subset(data, 1.0, seed=0)["row"] is data["row"]


def _publish_generator(storage: Storage, uri: str, config: dict, generator: nn.Module | None = None):
    """A generator folder like a GAN sweep's results/ (best/ inside, committed by a manifest)."""
    import tempfile
    from pathlib import Path

    from safetensors.torch import save_file

    from aigc_ray.models.generators import build_generator

    if generator is None:
        torch.manual_seed(0)
        generator = build_generator(config)
    state = {k: v.contiguous() for k, v in generator.state_dict().items()}
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "best").mkdir()
        save_file(state, Path(tmp) / "best" / "generator.safetensors")
        (Path(tmp) / "best" / "config.json").write_text(json.dumps(config))
        return publish_directory(storage, Path(tmp), uri, kind="sweep/gan", spec_hash="test", inputs={})


def test_load_augmenter_refuses_a_missing_or_unconditional_generator(tmp_path):
    storage = Storage()
    spec = load_spec(None, [f"storage.root={tmp_path}", "name=aug"])
    with pytest.raises(FileNotFoundError, match="aigc sweep gan` with gan.condition=caption first"):
        load_augmenter(spec, storage)
    plain = join(str(tmp_path), "plain-gan")
    _publish_generator(storage, plain, {"generator": "dcgan", "condition": "none", "z_dim": 8, "width": 4})
    other = load_spec(None, [f"storage.root={tmp_path}", "name=aug", f"fusion.augment_generator={plain}/best"])
    with pytest.raises(ValueError, match="unconditional.*cannot make labelled samples"):
        load_augmenter(other, storage)

    _publish_generator(storage, join(str(tmp_path), "aug", "sweeps", "gan", "results"), COND_GAN)
    aug = load_augmenter(spec, storage)
    results = join(str(tmp_path), "aug", "sweeps", "gan", "results")
    assert aug.uri == augment_generator_uri(spec) == results + "/best" and aug.source_uri == results
    assert aug.fingerprint == read_manifest(storage, results).fingerprint and aug.generator.cond_dim == 8
    # a bare folder (no manifest): the folder and a hash of its files
    bare = tmp_path / "bare"
    bare.mkdir()
    for name in ("generator.safetensors", "config.json"):
        (bare / name).write_bytes(storage.read_bytes(join(results, "best", name)))
    loose = load_augmenter(load_spec(None, [f"storage.root={tmp_path}", f"fusion.augment_generator={bare}"]), storage)
    assert loose.source_uri == str(bare) and loose.fingerprint.startswith("sha256:")

    pool = synthetic_pool(aug.generator, aug.config, per_class=3, seed=0, caption_seed=0)
    assert pool["image"].shape == (30, 1, 8, 8) and pool["image"].dtype == np.float32
    assert 0 <= pool["image"].min() and pool["image"].max() <= 1
    assert list(pool["label"]) == [k for k in range(10) for _ in range(3)]
    from aigc_ray.data.digits import EXACT_TEMPLATES, WORDS

    for text, k in zip(pool["text"], pool["label"], strict=True):  # an exact caption for its own label
        assert text in {t.format(word=WORDS[k], d=k) for t in EXACT_TEMPLATES}
    again = synthetic_pool(aug.generator, aug.config, per_class=3, seed=0, caption_seed=0)
    assert np.array_equal(pool["image"], again["image"]) and list(pool["text"]) == list(again["text"])
    assert list(synthetic_pool(aug.generator, aug.config, 3, seed=0, caption_seed=1)["text"]) != list(pool["text"])
    assert set(pool["caption_kind"]) == {"exact"}
    # GAN space -> 8x8: area pooling undoes to_gan_space up to a [1/8, 3/4, 1/8] blur; "inverse" exactly
    from aigc_ray.models.gan import to_gan_space

    real = torch.rand(2, 1, 8, 8)
    blur = torch.tensor([[1 / 8, 3 / 4, 1 / 8]])
    kernel = (blur.T @ blur).reshape(1, 1, 3, 3)
    blurred = torch.nn.functional.conv2d(real, kernel)  # interior pixels
    assert torch.allclose(to_real_space(to_gan_space(real))[..., 1:-1, 1:-1], blurred, atol=1e-6)
    assert torch.allclose(to_real_space(to_gan_space(real), method="inverse"), real, atol=1e-5)


def test_pool_captions_can_be_as_noisy_as_the_data():
    from aigc_ray.data.digits import VAGUE_TEMPLATES, WORDS
    from aigc_ray.models.augment import pool_captions, shown_captions

    labels, exact = pool_captions(200, caption_seed=0)
    assert shown_captions(labels, exact, 0.0, 0.0, 0)[0] == exact
    texts, kinds = shown_captions(labels, exact, 0.15, 0.10, caption_seed=0)
    assert shown_captions(labels, exact, 0.15, 0.10, caption_seed=0)[0] == texts  # seeded
    share = {k: float(np.mean(kinds == k)) for k in ("exact", "vague", "wrong")}
    assert share == pytest.approx({"exact": 0.75, "vague": 0.15, "wrong": 0.10}, abs=0.03)
    for text, original, kind, y in zip(texts, exact, kinds, labels, strict=True):
        if kind == "exact":
            assert text == original
        elif kind == "vague":
            assert text in VAGUE_TEMPLATES
        else:  # names another digit than the label
            assert WORDS[y] not in text.split() and str(y) not in text.split()
    with pytest.raises(ValueError, match="vague"):
        shown_captions(labels, exact, 0.7, 0.5, 0)


def test_pool_size_follows_the_largest_ratio_in_the_search_space(tmp_path):
    spec = load_spec(
        None,
        [
            f"storage.root={tmp_path}",
            "gan.condition=caption",
            "fusion.augment_ratio=0.5",
            "fusion.sweep.search_space={augment_ratio: {type: choice, values: [0, 2]}}",
        ],
    )
    assert max_augment_ratio(spec) == 2.0 and pool_per_class(2.0, 1001) == 201 and pool_per_class(0, 1000) == 0
    ranged = load_spec(
        None,
        [
            f"storage.root={tmp_path}",
            "gan.condition=caption",
            "fusion.sweep.search_space={augment_ratio: {type: uniform, low: 0, high: 3}}",
        ],
    )
    assert max_augment_ratio(ranged) == 3.0 and max_augment_ratio(load_spec(None, [])) == 0.0


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_fusion_sweep_with_augment_ratio_searched_records_the_generator(ray_local, local_data, one_thread):
    from aigc_ray.models.gan_training import TrainData, build_gan, train_step
    from aigc_ray.tune.fusion_sweep import run_fusion_sweep
    from aigc_ray.tune.gan_sweep import caption_training_rows

    base, storage = local_data
    name = "augmented"
    # a tiny text-to-image GAN, trained briefly here and published where the GAN sweep would
    config = {**COND_GAN, "seed": 0, "g_lr": 2e-3, "d_lr": 2e-3, "lr_ratio": None, "beta1": 0.5, "batch_size": 32}
    g, d, opt_g, opt_d = build_gan(config)
    images, captions = caption_training_rows(base, storage)
    data, gen = TrainData.make(images, captions), torch.Generator().manual_seed(0)
    for _ in range(30):
        train_step(g, d, opt_g, opt_d, data, config, gen)
    results = join(base.storage.root, name, "sweeps", "gan", "results")
    gan = _publish_generator(storage, results, config, g)

    spec = load_spec(
        None,
        [
            f"storage.root={base.storage.root}",
            f"name={name}",
            "data.rows_per_shard=300",
            "fusion.dim=16",
            "fusion.batch_size=32",
            "gan.condition=caption",
            "fusion.real_fraction=0.5",
            "fusion.sweep.scheduler=pbt",
            "fusion.sweep.perturbation_interval=1",
            "fusion.sweep.num_samples=2",
            "fusion.sweep.max_concurrent_trials=2",
            "fusion.sweep.max_iterations=3",
            "fusion.sweep.steps_per_iteration=10",
            "fusion.sweep.search_space={augment_ratio: {type: choice, values: [0, 1]}}",
        ],
    )
    logs: list[str] = []
    result = run_fusion_sweep(spec, storage, progress=False, log=logs.append)
    assert result.trials == 2
    manifest = read_manifest(storage, result.uri)
    assert manifest.inputs[results] == gan.fingerprint  # lineage: fusion sweep -> the GAN's results
    assert any("augmentation:" in line for line in logs)
    metrics = json.loads(storage.read_bytes(result.uri + "/best/metrics.json"))
    assert metrics["real_fraction"] == 0.5 and metrics["augment_ratio"] in (0.0, 1.0)
    assert metrics["augment_ratio"] == result.best["config"]["augment_ratio"]
    info = json.loads(storage.read_bytes(result.uri + "/augmentation.json"))
    assert info["generator_source"] == results and info["generator_fingerprint"] == gan.fingerprint
    assert info["real_rows"] == pytest.approx(info["real_rows_all"] / 2, abs=1)
    assert info["pool_rows"] == 10 * pool_per_class(1.0, info["real_rows"])
    for t in result.top_k:
        assert t["config"]["augment_ratio"] in (0, 1)
