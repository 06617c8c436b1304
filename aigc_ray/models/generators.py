"""One place that turns a GAN trial config (the GanSpec fields, as in a sweep's
``best/config.json``) into networks, and samples from them: used by the GAN sweep, serving and
data augmentation.

Keys read: ``generator`` (dcgan | style), ``condition`` (none | caption), ``cond_dim``,
``style_dim``, ``mapping_layers``, ``z_dim``, ``width``, and the data's ``image_size`` (the GAN
space's side, see ``gan.gan_size``) and ``channels``. Missing keys take the defaults of a plain
unconditional DCGAN on the digits (16x16, grey), so configs written before these keys existed
still load.
Conditional generators take the raw 384-d MiniLM caption embedding (``text_condition``); the
projection to ``cond_dim`` lives inside the generator.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from .device import module_device, on
from .gan import Discriminator, Generator
from .style_gan import StyleGenerator
from .text_condition import EMBED_DIM

DEFAULTS = {
    "generator": "dcgan",
    "condition": "none",
    "cond_dim": 32,
    "style_dim": 64,
    "mapping_layers": 3,
    "z_dim": 32,
    "width": 32,
    "image_size": 16,
    "channels": 1,
}


def _get(config: dict, key: str):
    value = config.get(key)
    return DEFAULTS[key] if value is None else value


def is_conditional(config: dict) -> bool:
    """Whether the config describes a caption-conditioned (text-to-image) GAN."""
    condition = _get(config, "condition")
    if condition not in ("none", "caption"):
        raise ValueError(f"unknown condition {condition!r}; allowed: none, caption")
    return condition == "caption"


def _cond_dim(config: dict) -> int:
    return int(_get(config, "cond_dim")) if is_conditional(config) else 0


def build_generator(config: dict) -> nn.Module:
    """A freshly initialised generator (uses the global torch RNG, seed it first)."""
    kind = _get(config, "generator")
    z_dim, width, cond_dim = int(_get(config, "z_dim")), int(_get(config, "width")), _cond_dim(config)
    shape = {"channels": int(_get(config, "channels")), "size": int(_get(config, "image_size"))}
    if kind == "dcgan":
        return Generator(z_dim, width, cond_dim=cond_dim, embed_dim=EMBED_DIM, **shape)
    if kind == "style":
        return StyleGenerator(
            z_dim,
            width,
            style_dim=int(_get(config, "style_dim")),
            mapping_layers=int(_get(config, "mapping_layers")),
            cond_dim=cond_dim,
            embed_dim=EMBED_DIM,
            **shape,
        )
    raise ValueError(f"unknown generator {kind!r}; allowed: dcgan, style")


def build_discriminator(config: dict) -> Discriminator:
    """The (projection-conditional, when the config is conditional) discriminator; both generator kinds share it."""
    return Discriminator(
        int(_get(config, "width")),
        channels=int(_get(config, "channels")),
        cond_dim=_cond_dim(config),
        embed_dim=EMBED_DIM,
        size=int(_get(config, "image_size")),
        # configs written before the class count was recorded are the digits'
        num_classes=int(config.get("num_classes") or 10) if class_weight(config) > 0 else 0,
    )


def class_weight(config: dict) -> float:
    """The auxiliary classification loss's weight: 0 for an unconditional GAN, and for configs
    written before it existed (their D has no class head)."""
    return float(config.get("class_weight") or 0.0) if is_conditional(config) else 0.0


def _as_cond(cond, n: int, conditional: bool) -> torch.Tensor | None:
    if not conditional:
        if cond is not None:
            raise ValueError("this generator is unconditional: it takes no cond")
        return None
    if cond is None:
        raise ValueError("this generator is conditional: pass caption embeddings (see generate_for_prompts)")
    c = torch.as_tensor(np.asarray(cond, dtype=np.float32))
    if c.ndim == 1:
        c = c.unsqueeze(0)
    if c.ndim != 2 or c.shape[1] != EMBED_DIM or len(c) not in (1, n):
        raise ValueError(f"cond must be ({n} or 1, {EMBED_DIM}), got {tuple(c.shape)}")
    return c.expand(n, -1) if len(c) == 1 else c


def generate(
    generator: nn.Module,
    n: int,
    seed: int,
    cond: np.ndarray | None = None,
    mix_seed: int | None = None,
    crossover: int | None = None,
) -> torch.Tensor:
    """``n`` images in GAN space (N, C, size, size) on the CPU, a pure function of the weights and
    arguments (eval mode, no grad; the module's train/eval mode is restored; the model may be on
    any device).

    z comes from ``seed`` (for an unconditional DCGAN exactly as ``gan.sample``). ``cond``: the
    caption embeddings, (n, 384) or one (384,) row for all. ``mix_seed`` (style generator only):
    the styles of a second latent drawn from ``mix_seed`` replace those from slot ``crossover``
    (default: half the slots) on. The style generator's noise is drawn from ``seed`` too.
    """
    device = module_device(generator)
    gen = torch.Generator().manual_seed(int(seed))
    z = on(device, torch.randn(n, generator.z_dim, generator=gen))
    c = _as_cond(cond, n, bool(getattr(generator, "cond_dim", 0)))
    c = None if c is None else on(device, c)
    was_training = generator.training
    generator.eval()
    try:
        with torch.no_grad():
            if isinstance(generator, StyleGenerator):
                z2 = None
                if mix_seed is not None:
                    z2 = torch.randn(n, generator.z_dim, generator=torch.Generator().manual_seed(int(mix_seed)))
                    z2 = on(device, z2)
                return generator(z, c, z2=z2, crossover=crossover, noise_gen=gen).cpu()
            if mix_seed is not None:
                raise ValueError("style mixing (mix_seed) needs the style generator")
            return (generator(z) if c is None else generator(z, c)).cpu()
    finally:
        generator.train(was_training)


def generate_for_embeddings(generator: nn.Module, embeddings: np.ndarray, n_per_prompt: int, seed: int) -> torch.Tensor:
    """``n_per_prompt`` images for each row of ``embeddings`` (P, 384), prompt-major:
    (P · n_per_prompt, C, size, size). One seeded batch, so the result is deterministic in ``seed``."""
    emb = np.asarray(embeddings, dtype=np.float32)
    cond = np.repeat(emb, n_per_prompt, axis=0)
    return generate(generator, len(cond), seed, cond=cond)


def generate_for_prompts(
    generator: nn.Module, config: dict, prompts: list[str], n_per_prompt: int, seed: int
) -> torch.Tensor:
    """``n_per_prompt`` images per prompt, prompt-major: (len(prompts) · n_per_prompt, 1, 16, 16)
    in GAN space. The prompts are embedded with MiniLM (loaded once per process)."""
    if not is_conditional(config):
        raise ValueError("generate_for_prompts needs a caption-conditioned generator (condition: caption)")
    from .text_condition import embed_texts

    return generate_for_embeddings(generator, embed_texts(list(prompts)), n_per_prompt, seed)


def load_generator_export(state_dict: dict, config: dict) -> nn.Module:
    """The generator of ``config`` with exported weights (e.g. ``best/generator.safetensors``), in eval mode."""
    g = build_generator(config)
    g.load_state_dict(state_dict)
    return g.eval()
