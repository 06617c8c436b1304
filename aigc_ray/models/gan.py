"""A DCGAN-style generator and discriminator for the shard images, and the minimax losses.

Images live in GAN space: square, a power of two from 16 to 128 pixels (``gan_size``: the data's
side, rounded up; the 8x8 digits are upsampled to 16x16), C channels (grey or RGB), scaled to
[-1, 1] (the generator ends in tanh). Depth follows the size: log2(size / 4) stride-2 layers. The objective is min_G max_D E[log D(x)] + E[log(1 − D(G(z)))], with
the non-saturating generator loss −E[log D(G(z))] (Goodfellow et al. 2014, §3).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .device import module_device, on

IMAGE_SIZE = 16  # the smallest GAN space (and the digits')
MAX_IMAGE_SIZE = 128
EVAL_SEED = 12345  # the fixed latents every evaluation of a GAN (image or video) samples from


def gan_size(side: int) -> int:
    """The GAN space's side for images of ``side`` pixels: the next power of two, at least 16."""
    size = IMAGE_SIZE
    while size < side:
        size *= 2
    if size > MAX_IMAGE_SIZE:
        raise ValueError(f"images of {side} pixels are larger than the GANs take ({MAX_IMAGE_SIZE})")
    return size


def up_layers(size: int) -> int:
    """Stride-2 layers between 4x4 and ``size`` (a power of two, 16..128)."""
    if size < IMAGE_SIZE or size > MAX_IMAGE_SIZE or size & (size - 1):
        raise ValueError(f"GAN image size must be a power of two from {IMAGE_SIZE} to {MAX_IMAGE_SIZE}, got {size}")
    return int(math.log2(size // 4))


def to_gan_space(images: torch.Tensor, size: int = IMAGE_SIZE) -> torch.Tensor:
    """(N, C, H, W) images in [0, 1] -> (N, C, size, size) in [-1, 1] (bilinear when resized)."""
    if images.shape[-2:] != (size, size):
        images = F.interpolate(images, size=(size, size), mode="bilinear", align_corners=False)
    return images.clamp(0, 1) * 2 - 1


def from_gan_space(images: torch.Tensor) -> torch.Tensor:
    """[-1, 1] -> [0, 1]."""
    return (images.clamp(-1, 1) + 1) / 2


class Generator(nn.Module):
    """z (N, z_dim) -> image (N, C, size, size): project to 4x4, then log2(size / 4) stride-2
    transposed convs, halving the width from ``width`` x 2^(layers - 1) down to ``width``.

    With ``cond_dim`` > 0 it is conditional (text-to-image): ``forward(z, cond)`` takes the raw
    caption embedding (N, ``embed_dim``), projects it to ``cond_dim`` with a learned linear layer
    and concatenates it to z. With ``cond_dim`` = 0 the module (and its state-dict keys) are the
    plain unconditional DCGAN generator.
    """

    def __init__(
        self,
        z_dim: int = 32,
        width: int = 64,
        channels: int = 1,
        cond_dim: int = 0,
        embed_dim: int = 384,
        size: int = IMAGE_SIZE,
    ):
        super().__init__()
        self.z_dim = z_dim
        self.cond_dim = cond_dim
        if cond_dim:
            self.cond_proj = nn.Linear(embed_dim, cond_dim)
        layers = up_layers(size)
        self.top = width * 2 ** (layers - 1)  # channels at 4x4
        self.project = nn.Sequential(
            nn.Linear(z_dim + cond_dim, self.top * 4 * 4, bias=False),
            nn.BatchNorm1d(self.top * 4 * 4),
            nn.ReLU(True),
        )
        blocks: list[nn.Module] = []
        for k in range(layers - 1, 0, -1):  # (N, w·2^k, r, r) -> (N, w·2^(k-1), 2r, 2r)
            blocks += [nn.ConvTranspose2d(width * 2**k, width * 2 ** (k - 1), 4, 2, 1, bias=False)]
            blocks += [nn.BatchNorm2d(width * 2 ** (k - 1)), nn.ReLU(True)]
        blocks += [nn.ConvTranspose2d(width, channels, 4, 2, 1), nn.Tanh()]  # (N, C, size, size)
        self.up = nn.Sequential(*blocks)
        self.width, self.channels, self.size = width, channels, size

    def forward(self, z: torch.Tensor, cond: torch.Tensor | None = None) -> torch.Tensor:
        if self.cond_dim:
            if cond is None:
                raise ValueError("this generator is conditional: pass the caption embeddings as cond")
            z = torch.cat([z, self.cond_proj(cond)], dim=1)
        elif cond is not None:
            raise ValueError("this generator is unconditional: it takes no cond")
        return self.up(self.project(z).view(len(z), self.top, 4, 4))


class Discriminator(nn.Module):
    """image (N, C, size, size) -> logit (N,): log2(size / 4) stride-2 convs with LeakyReLU
    (doubling the width from ``width``), then linear from 4x4.

    With ``cond_dim`` > 0 it is a projection discriminator (Miyato & Koyama 2018): with φ(x) the
    features before the last linear layer, logit = linear(φ(x)) + <embed(c), φ(x)>, where embed
    maps the raw caption embedding (N, ``embed_dim``) through ``cond_dim`` to φ's width. With
    ``cond_dim`` = 0 the module (and its state-dict keys) are the plain unconditional one.
    With ``num_classes`` > 0 (conditional only) it also has a class head on φ (AC-GAN, Odena et
    al. 2017), read with ``classes=True``.
    """

    def __init__(
        self,
        width: int = 64,
        channels: int = 1,
        cond_dim: int = 0,
        embed_dim: int = 384,
        size: int = IMAGE_SIZE,
        num_classes: int = 0,
    ):
        super().__init__()
        if num_classes and not cond_dim:
            raise ValueError("a class head needs a conditional discriminator (cond_dim > 0)")
        self.cond_dim = cond_dim
        layers = up_layers(size)
        blocks: list[nn.Module] = [nn.Conv2d(channels, width, 4, 2, 1), nn.LeakyReLU(0.2, True)]  # (N, w, size/2)
        for k in range(1, layers):  # (N, w·2^(k-1), r, r) -> (N, w·2^k, r/2, r/2)
            blocks += [nn.Conv2d(width * 2 ** (k - 1), width * 2**k, 4, 2, 1, bias=False)]
            blocks += [nn.BatchNorm2d(width * 2**k), nn.LeakyReLU(0.2, True)]
        top = width * 2 ** (layers - 1)
        self.net = nn.Sequential(*blocks, nn.Flatten(), nn.Linear(top * 4 * 4, 1))
        if cond_dim:
            self.cond_proj = nn.Linear(embed_dim, cond_dim)
            self.cond_embed = nn.Linear(cond_dim, top * 4 * 4, bias=False)
        if num_classes:
            self.class_head = nn.Linear(top * 4 * 4, num_classes)

    def forward(self, x: torch.Tensor, cond: torch.Tensor | None = None, classes: bool = False):
        """The real/fake logit (N,); with ``classes``, also the class logits (N, num_classes)."""
        if not self.cond_dim:
            if cond is not None:
                raise ValueError("this discriminator is unconditional: it takes no cond")
            return self.net(x).squeeze(1)
        if cond is None:
            raise ValueError("this discriminator is conditional: pass the caption embeddings as cond")
        phi = self.net[:-1](x)  # (N, top·16)
        projection = (self.cond_embed(self.cond_proj(cond)) * phi).sum(1)
        logit = self.net[-1](phi).squeeze(1) + projection
        if not classes:
            return logit
        if not hasattr(self, "class_head"):
            raise ValueError("this discriminator has no class head (class_weight 0)")
        return logit, self.class_head(phi)


def d_lr_of(config: dict) -> float:
    """D's learning rate: g_lr × lr_ratio (TTUR) when the ratio is set, else d_lr."""
    return config["g_lr"] * config["lr_ratio"] if config.get("lr_ratio") else config["d_lr"]


def descend(optimizer: torch.optim.Optimizer, loss: torch.Tensor) -> None:
    """One optimizer step on ``loss``: D's update, then G's (against the updated D), in every GAN here."""
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()


def discriminator_loss(real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
    """−E[log D(x)] − E[log(1 − D(G(z)))]: D maximises the minimax value."""
    return F.binary_cross_entropy_with_logits(
        real_logits, torch.ones_like(real_logits)
    ) + F.binary_cross_entropy_with_logits(fake_logits, torch.zeros_like(fake_logits))


def generator_loss(fake_logits: torch.Tensor) -> torch.Tensor:
    """Non-saturating: −E[log D(G(z))] (strong gradients while D still wins easily)."""
    return F.binary_cross_entropy_with_logits(fake_logits, torch.ones_like(fake_logits))


def sample(generator: Generator, n: int, seed: int) -> torch.Tensor:
    """``n`` images from a seeded noise draw (same seed, same images), in GAN space, on the CPU
    (the noise is drawn on the CPU and moved to wherever the generator is)."""
    gen = torch.Generator().manual_seed(seed)
    z = on(module_device(generator), torch.randn(n, generator.z_dim, generator=gen))
    was_training = generator.training
    generator.eval()
    with torch.no_grad():
        out = generator(z)
    generator.train(was_training)
    return out.cpu()
