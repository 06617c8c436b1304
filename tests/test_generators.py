"""The generator factory, the style-based generator, projection conditioning and the
text-to-image (caption-conditioned) GAN: unit checks, a short direct training run, and one
real Tune sweep whose exported generator reproduces its reported cond_accuracy."""

from __future__ import annotations

import json
import time

import numpy as np
import pytest
import torch

from aigc_ray.models.gan import Discriminator, Generator, sample
from aigc_ray.models.generators import (
    build_discriminator,
    build_generator,
    generate,
    generate_for_prompts,
    is_conditional,
    load_generator_export,
)
from aigc_ray.models.style_gan import StyleGenerator

# State-dict keys of the unconditional networks as they were before conditioning existed:
# old best/ folders and served generators load with exactly these.
OLD_G_KEYS = {
    "project.0.weight",
    *(f"project.1.{k}" for k in ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")),
    "up.0.weight",
    *(f"up.1.{k}" for k in ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")),
    "up.3.weight",
    "up.3.bias",
}
OLD_D_KEYS = {
    "net.0.weight",
    "net.0.bias",
    "net.2.weight",
    *(f"net.3.{k}" for k in ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")),
    "net.6.weight",
    "net.6.bias",
}


@pytest.fixture
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _style(cond_dim: int = 0) -> StyleGenerator:
    torch.manual_seed(0)
    g = StyleGenerator(z_dim=8, width=4, style_dim=8, mapping_layers=2, cond_dim=cond_dim).eval()
    with torch.no_grad():  # noise strengths start at 0: make the noise matter for the determinism checks
        for conv in g.convs:
            conv.noise_strength.fill_(0.3)
    return g


@pytest.mark.parametrize("demodulate", [True, False])
def test_a_modulated_convolution_is_each_samples_own_modulated_kernel(demodulate):
    """StyleGAN2's definition, written out per sample: the kernel scaled by the sample's style on
    its input channels, each output filter renormalised to unit norm. The layer computes it as one
    shared convolution; the images must be the same ones (old exports load and draw the same)."""
    import torch.nn.functional as F

    from aigc_ray.models.style_gan import ModulatedConv2d

    torch.manual_seed(0)
    conv = ModulatedConv2d(in_ch=5, out_ch=7, kernel=3, style_dim=6, demodulate=demodulate)
    x, w = torch.randn(4, 5, 8, 8), torch.randn(4, 6)
    style = conv.affine(w)
    expected = []
    for i in range(4):
        kernel = conv.scale * conv.weight * style[i][None, :, None, None]
        if demodulate:
            kernel = kernel / kernel.pow(2).sum(dim=(1, 2, 3), keepdim=True).add(1e-8).sqrt()
        expected.append(F.conv2d(x[i : i + 1], kernel, padding=1))
    torch.testing.assert_close(conv(x, w), torch.cat(expected), rtol=1e-5, atol=1e-5)
    assert not torch.allclose(conv(x, w)[0], conv(x, w.roll(1, dims=0))[0])  # the style matters


def test_style_mixing_changes_the_output_and_the_crossover_selects_the_styles():
    g = _style()
    z1, z2 = torch.randn(4, 8, generator=torch.Generator().manual_seed(1)), torch.randn(4, 8)
    with torch.no_grad():
        unmixed, only_z2 = g(z1), g(z2)
        mixed = g(z1, z2=z2, crossover=3)
        assert unmixed.shape == (4, 1, 16, 16) and unmixed.abs().max() <= 1
        assert (mixed - unmixed).abs().max() > 1e-3 and (mixed - only_z2).abs().max() > 1e-3
        assert torch.equal(g(z1, z2=z1, crossover=3), unmixed)  # w2 == w1: no mixing at all
        assert torch.equal(g(z1, z2=z2, crossover=0), only_z2)  # every slot from z2
        assert torch.equal(g(z1, z2=z2, crossover=g.num_styles), unmixed)  # every slot from z1
        ws = [g.map(z1)] * 3 + [g.map(z2)] * (g.num_styles - 3)
        assert torch.equal(g.synthesis(ws), mixed)
    with pytest.raises(ValueError, match="crossover"):
        g(z1, z2=z2, crossover=g.num_styles + 1)


def test_generate_is_reproducible_from_its_seeds_and_mix_seed_mixes():
    g = _style()
    a, b = generate(g, 6, seed=5, mix_seed=9), generate(g, 6, seed=5, mix_seed=9)
    assert torch.equal(a, b)  # latents and noise both come from the seeds
    plain = generate(g, 6, seed=5)
    assert torch.equal(plain, generate(g, 6, seed=5))
    assert (a - plain).abs().max() > 1e-3
    assert (generate(g, 6, seed=5, mix_seed=10) - a).abs().max() > 1e-3
    assert torch.equal(generate(g, 6, seed=5, mix_seed=9, crossover=g.num_styles), plain)
    g.train()
    generate(g, 2, seed=0)
    assert g.training  # generate restores the module's mode


def test_conditional_style_generator_mixes_under_one_condition():
    g = _style(cond_dim=4)
    cond = torch.nn.functional.normalize(torch.randn(3, 384), dim=1)
    z1, z2 = torch.randn(3, 8), torch.randn(3, 8)
    with torch.no_grad():
        assert torch.equal(g(z1, cond, z2=z1, crossover=2), g(z1, cond))
        assert (g(z1, cond, z2=z2, crossover=2) - g(z1, cond)).abs().max() > 1e-3
        assert (g(z1, cond.flip(0)) - g(z1, cond)).abs().max() > 1e-3  # the condition flows through w
    with pytest.raises(ValueError, match="conditional"):
        g(z1)


def test_style_mixing_is_used_in_training_with_mixing_prob(monkeypatch):
    from aigc_ray.models.gan_training import TrainData, build_gan, train_step

    calls = []
    forward = StyleGenerator.forward

    def spy(self, z, cond=None, z2=None, crossover=None, noise_gen=None):
        calls.append(crossover if z2 is not None else None)
        return forward(self, z, cond, z2=z2, crossover=crossover, noise_gen=noise_gen)

    monkeypatch.setattr(StyleGenerator, "forward", spy)
    config = {"seed": 0, "generator": "style", "z_dim": 8, "width": 4, "style_dim": 8, "mapping_layers": 1}
    config |= {"g_lr": 1e-3, "d_lr": 1e-3, "lr_ratio": None, "beta1": 0.5, "batch_size": 4}
    g, d, opt_g, opt_d = build_gan(config)
    data = TrainData.make(np.zeros((8, 1, 16, 16), dtype=np.float32))
    for prob in (0.0, 1.0, 0.5):
        calls.clear()
        gen = torch.Generator().manual_seed(0)
        for _ in range(20):
            train_step(g, d, opt_g, opt_d, data, {**config, "mixing_prob": prob}, gen)
        mixed = [c for c in calls if c is not None]
        if prob == 0.0:
            assert not mixed
        elif prob == 1.0:
            assert len(mixed) == 20 and all(1 <= c < g.num_styles for c in mixed)
        else:
            assert 0 < len(mixed) < 20


def test_projection_discriminator_depends_on_the_condition():
    torch.manual_seed(0)
    d = Discriminator(8, cond_dim=4).eval()
    x = torch.rand(5, 1, 16, 16) * 2 - 1
    c1 = torch.nn.functional.normalize(torch.randn(5, 384), dim=1)
    c2 = torch.nn.functional.normalize(torch.randn(5, 384), dim=1)
    with torch.no_grad():
        base = d.net(x).squeeze(1)  # linear(φ(x)): the unconditional part
        l1, l2 = d(x, c1), d(x, c2)
        phi = d.net[:-1](x)
        assert torch.allclose(l1 - base, (d.cond_embed(d.cond_proj(c1)) * phi).sum(1), atol=1e-5)
    assert l1.shape == (5,) and (l1 - l2).abs().max() > 1e-4
    with pytest.raises(ValueError, match="conditional"):
        d(x)


def test_the_class_head_is_there_only_for_a_conditional_gan_with_a_class_weight():
    from aigc_ray.models.generators import build_discriminator

    base = {"condition": "caption", "width": 4, "num_classes": 6, "image_size": 32, "channels": 3}
    d = build_discriminator({**base, "class_weight": 1.0})
    logit, classes = d(torch.rand(2, 3, 32, 32), torch.randn(2, 384), classes=True)
    assert logit.shape == (2,) and classes.shape == (2, 6)
    # off, or a config written before it existed: D as it was (its checkpoints load)
    for config in ({**base, "class_weight": 0.0}, base, {**base, "condition": "none", "class_weight": 1.0}):
        assert not any(k.startswith("class_head") for k in build_discriminator(config).state_dict())
    with pytest.raises(ValueError, match="no class head"):
        build_discriminator(base)(torch.rand(2, 3, 32, 32), torch.randn(2, 384), classes=True)
    with pytest.raises(ValueError, match="needs a conditional discriminator"):
        Discriminator(4, num_classes=3)


def test_with_a_class_weight_d_learns_to_name_the_class_of_real_images():
    """The auxiliary classifier's half in D: trained through ``train_step`` on two classes that
    differ in brightness, D names the class of real images it never saw; without the weight D has
    no class head to train."""
    from aigc_ray.models.gan_training import TrainData, build_gan, train_step

    rng = np.random.default_rng(0)
    labels = np.arange(64) % 2
    images = (np.where(labels[:, None, None, None] == 1, 0.6, -0.6) + rng.normal(0, 0.2, (64, 1, 16, 16))).astype(
        np.float32
    )
    captions = {"embedding": rng.normal(size=(64, 384)).astype(np.float32), "label": labels, "named": labels}
    config = {"seed": 0, "generator": "dcgan", "condition": "caption", "z_dim": 8, "width": 4, "cond_dim": 8}
    config |= {"g_lr": 1e-3, "d_lr": 1e-3, "lr_ratio": None, "beta1": 0.5, "batch_size": 16, "num_classes": 2}
    config |= {"class_weight": 1.0, "mismatch_weight": 1.0}
    g, d, opt_g, opt_d = build_gan(config)
    data = TrainData.make(images, captions, 2)
    gen = torch.Generator().manual_seed(0)
    for _ in range(60):
        train_step(g, d, opt_g, opt_d, data, config, gen)
    fresh = np.where(np.arange(20) % 2 == 1, 0.6, -0.6)[:, None, None, None] + rng.normal(0, 0.2, (20, 1, 16, 16))
    with torch.no_grad():
        _, classes = d.eval()(torch.tensor(fresh, dtype=torch.float32), torch.randn(20, 384), classes=True)
    assert (classes.argmax(1).numpy() == np.arange(20) % 2).mean() >= 0.9


def test_unconditional_networks_keep_their_old_state_dict_keys():
    assert set(Generator(16, 8).state_dict()) == OLD_G_KEYS
    assert set(Discriminator(8).state_dict()) == OLD_D_KEYS
    assert set(Discriminator(8, cond_dim=0).state_dict()) == OLD_D_KEYS
    # an old best/config.json (no generator/condition keys) rebuilds the plain DCGAN
    old = {"z_dim": 16, "width": 8, "g_lr": 1e-3}
    assert not is_conditional(old)
    g = build_generator(old)
    assert type(g) is Generator and set(g.state_dict()) == OLD_G_KEYS
    assert set(build_discriminator(old).state_dict()) == OLD_D_KEYS
    # cond_dim only matters with condition: caption
    assert set(build_generator({**old, "condition": "none", "cond_dim": 32}).state_dict()) == OLD_G_KEYS
    loaded = load_generator_export(g.state_dict(), old)
    assert torch.equal(generate(loaded, 4, seed=3), sample(g, 4, seed=3))  # generate == sample for DCGAN
    assert set(build_generator({**old, "condition": "caption"}).state_dict()) > OLD_G_KEYS
    with pytest.raises(ValueError, match="mix_seed"):
        generate(g, 2, seed=0, mix_seed=1)


def test_factory_builds_conditional_style_and_dcgan():
    config = {"generator": "style", "condition": "caption", "cond_dim": 6, "style_dim": 8, "mapping_layers": 2}
    config |= {"z_dim": 8, "width": 4}
    g = build_generator(config)
    assert isinstance(g, StyleGenerator) and g.cond_dim == 6 and g.style_dim == 8 and len(g.mapping.net) == 2
    assert build_discriminator(config).cond_dim == 6
    cond = np.random.default_rng(0).normal(size=(384,)).astype(np.float32)
    out = generate(g, 3, seed=1, cond=cond)  # one embedding for every sample
    assert out.shape == (3, 1, 16, 16) and torch.equal(out, generate(g, 3, seed=1, cond=np.tile(cond, (3, 1))))
    with pytest.raises(ValueError, match="conditional"):
        generate(g, 3, seed=1)
    dc = build_generator({**config, "generator": "dcgan"})
    assert type(dc) is Generator and generate(dc, 2, seed=0, cond=cond).shape == (2, 1, 16, 16)
    with pytest.raises(ValueError, match="unknown generator"):
        build_generator({"generator": "vae"})


def test_cond_accuracy_metric_needs_a_conditional_sweep(tmp_path):
    from aigc_ray.spec import load_spec
    from aigc_ray.storage import Storage
    from aigc_ray.tune.gan_sweep import run_gan_sweep

    spec = load_spec(None, [f"storage.root={tmp_path}", "gan.sweep.metric=cond_accuracy", "gan.sweep.mode=max"])
    with pytest.raises(ValueError, match="condition: caption"):
        run_gan_sweep(spec, Storage.from_spec(spec.storage), log=lambda *_: None)


@pytest.mark.slow
@pytest.mark.timeout(180)
@pytest.mark.parametrize(("kind", "steps"), [("dcgan", 300), ("style", 500)])
def test_text_to_image_training_beats_chance(local_data, one_thread, kind, steps):
    """A few hundred direct train_step calls (no Tune): the samples for "a handwritten <digit>"
    are classified as that digit far above chance (10 %). Measured on 5 seeds (2 cores):
    dcgan 300 steps 0.76–0.92 in ~2 s, style 500 steps 0.81–0.90 in ~7 s."""
    from aigc_ray.models.classifier import load_or_train_classifier
    from aigc_ray.models.gan_training import TrainData, build_gan, cond_accuracy, train_step
    from aigc_ray.models.text_condition import digit_prompts, embed_texts
    from aigc_ray.tune.gan_sweep import caption_training_rows

    spec, storage = local_data
    classifier = load_or_train_classifier(spec, storage)
    images, captions = caption_training_rows(spec, storage)
    assert len(images) == len(captions["embedding"]) and captions["embedding"].shape[1] == 384
    config = {**spec.gan.trial_config(), "generator": kind, "condition": "caption", "width": 8, "z_dim": 16}
    config |= {"batch_size": 32, "g_lr": 1e-3, "lr_ratio": 1.0, "cond_dim": 32, "style_dim": 32, "mapping_layers": 2}
    g, d, opt_g, opt_d = build_gan(config)
    data = TrainData.make(images, captions)
    prompts = embed_texts(digit_prompts())
    chance_before = cond_accuracy(g, classifier, prompts, 200)
    gen = torch.Generator().manual_seed(0)
    started = time.perf_counter()
    for _ in range(steps):
        train_step(g, d, opt_g, opt_d, data, config, gen)
    seconds = time.perf_counter() - started
    accuracy = cond_accuracy(g, classifier, prompts, 200)
    print(f"{kind}: cond_accuracy {chance_before:.3f} -> {accuracy:.3f} after {steps} steps in {seconds:.1f} s")
    assert accuracy >= 0.5


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_style_caption_sweep_exports_a_generator_that_reproduces_cond_accuracy(ray_local, local_data, one_thread):
    from safetensors.torch import load

    from aigc_ray.models.classifier import load_or_train_classifier
    from aigc_ray.models.gan import EVAL_SEED
    from aigc_ray.models.text_condition import digit_prompts
    from aigc_ray.spec import load_spec
    from aigc_ray.tune.gan_sweep import run_gan_sweep

    base, storage = local_data
    spec = load_spec(
        None,
        [
            f"storage.root={base.storage.root}",
            "name=t2i",
            "data.rows_per_shard=300",
            "gan.generator=style",
            "gan.condition=caption",
            "gan.width=8",
            "gan.z_dim=16",
            "gan.style_dim=16",
            "gan.mapping_layers=2",
            "gan.cond_dim=16",
            "gan.batch_size=32",
            "gan.eval_samples=100",
            "gan.lr_ratio=1.0",
            "gan.sweep.scheduler=fifo",
            "gan.sweep.metric=cond_accuracy",
            "gan.sweep.mode=max",
            "gan.sweep.num_samples=2",
            "gan.sweep.max_concurrent_trials=2",
            "gan.sweep.max_iterations=2",
            "gan.sweep.steps_per_iteration=150",
            "gan.sweep.search_space.g_lr={type: loguniform, low: 0.001, high: 0.002}",
        ],
    )
    result = run_gan_sweep(spec, storage, log=lambda *_: None)
    assert result.trials == 2
    accs = [t["cond_accuracy"] for t in result.top_k]
    assert accs == sorted(accs, reverse=True)
    uri = result.uri
    config = json.loads(storage.read_bytes(uri + "/best/config.json"))
    for key in ("generator", "condition", "cond_dim", "style_dim", "mapping_layers", "z_dim", "width"):
        assert key in config, key
    assert config["generator"] == "style" and is_conditional(config)
    metrics = json.loads(storage.read_bytes(uri + "/best/metrics.json"))
    assert {"cond_accuracy", "fid"} <= set(metrics) and metrics["cond_accuracy"] == result.best["cond_accuracy"]
    assert result.best_extra["cond_accuracy"] == metrics["cond_accuracy"]
    assert storage.read_bytes(uri + "/samples.png")[:8] == b"\x89PNG\r\n\x1a\n"

    g = load_generator_export(load(storage.read_bytes(uri + "/best/generator.safetensors")), config)
    assert isinstance(g, StyleGenerator) and g.cond_dim == 16
    d = build_discriminator(config)
    d.load_state_dict(load(storage.read_bytes(uri + "/best/discriminator.safetensors")))
    # regenerate the trial's evaluation: the ten digit prompts, ceil(eval_samples / 10) each, EVAL_SEED
    per_prompt = -(-config["eval_samples"] // 10)
    images = generate_for_prompts(g, config, digit_prompts(), per_prompt, seed=EVAL_SEED)
    assert torch.equal(images, generate_for_prompts(g, config, digit_prompts(), per_prompt, seed=EVAL_SEED))
    classifier = load_or_train_classifier(spec, storage)
    with torch.no_grad():
        predicted = classifier(images).argmax(1).numpy()
    regenerated = float((predicted == np.repeat(np.arange(10), per_prompt)).mean())
    print(f"sweep best cond_accuracy {metrics['cond_accuracy']:.3f}, regenerated from safetensors {regenerated:.3f}")
    assert regenerated == pytest.approx(metrics["cond_accuracy"], abs=1.5 / len(images))  # at most one flip
