"""A small style-based generator (after StyleGAN / StyleGAN2, Karras et al. 2019, 2020) for GAN
space (``size`` x ``size``, a power of two from 16, C channels, [-1, 1]); below, size 16.

    z ──pixel-norm──┐
                    ├─ concat ─ mapping MLP (``mapping_layers`` × Linear + LeakyReLU) ─ w
    caption emb ─ Linear(384 → cond_dim) ─ pixel-norm ┘            (only when cond_dim > 0)

    learned constant (2w, 4, 4)
      → styled conv 4x4            (style 0)
      → up → styled conv 8x8 ×2    (styles 1, 2)
      → up → styled conv 16x16 ×2  (styles 3, 4)       (two more per doubling beyond 16)
      → toRGB 1x1 (style 5, modulated, not demodulated) → tanh

Every styled conv is a modulated convolution with weight demodulation: an affine map of w
scales the kernel's input channels per sample, then each output filter is renormalised to unit
norm. Optional per-pixel noise (a learned strength per layer, starting at zero) is drawn from a
``torch.Generator`` passed to ``forward``; in eval mode without one no noise is added, so eval
output is a pure function of the inputs.

Style mixing: ``forward(z, cond, z2=z2, crossover=k)`` uses w(z) for style slots < k and w(z2)
for the rest (``crossover`` 0: all from z2; ``num_styles``: all from z).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

MAPPING_LR_MUL = 0.1  # the mapping network learns slower (StyleGAN: 0.01, for far longer runs)


def pixel_norm(x: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Each row scaled to unit root-mean-square."""
    return x * torch.rsqrt(x.pow(2).mean(dim=1, keepdim=True) + eps)


class EqualLinear(nn.Module):
    """A linear layer with StyleGAN's equalised learning rate: N(0, 1) weights scaled by
    ``lr_mul / sqrt(in)`` at run time (so activations keep their variance through the layers),
    optionally followed by LeakyReLU(0.2) × sqrt(2)."""

    def __init__(self, in_dim: int, out_dim: int, bias_init: float = 0.0, lr_mul: float = 1.0, act: bool = False):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(out_dim, in_dim) / lr_mul)
        self.bias = nn.Parameter(torch.full((out_dim,), float(bias_init) / lr_mul))
        self.scale, self.lr_mul, self.act = lr_mul / math.sqrt(in_dim), lr_mul, act

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.linear(x, self.weight * self.scale, self.bias * self.lr_mul)
        return F.leaky_relu(out, 0.2) * math.sqrt(2) if self.act else out


class MappingNetwork(nn.Module):
    """(pixel-normed z [; pixel-normed projected condition]) -> w (N, style_dim)."""

    def __init__(self, in_dim: int, style_dim: int, layers: int, lr_mul: float = MAPPING_LR_MUL):
        super().__init__()
        self.net = nn.Sequential(
            *(EqualLinear(in_dim if i == 0 else style_dim, style_dim, lr_mul=lr_mul, act=True) for i in range(layers))
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class ModulatedConv2d(nn.Module):
    """Per-sample modulated convolution (StyleGAN2): kernel × affine(w) on input channels,
    then (``demodulate``) each output filter renormalised to unit L2 norm."""

    def __init__(self, in_ch: int, out_ch: int, kernel: int, style_dim: int, demodulate: bool = True):
        super().__init__()
        self.kernel, self.demodulate = kernel, demodulate
        self.weight = nn.Parameter(torch.randn(out_ch, in_ch, kernel, kernel))
        self.scale = 1.0 / math.sqrt(in_ch * kernel * kernel)  # equalised learning rate
        self.affine = EqualLinear(style_dim, in_ch, bias_init=1.0)  # styles start around 1

    def forward(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        # The same arithmetic as modulating each sample's kernel (a grouped convolution, one group
        # per sample), done as StyleGAN2's "non-fused" path: scale the input channels by the style,
        # one shared convolution, then scale each output filter by its demodulation factor. On
        # CPU the grouped form ran the generator's forward and backward 2.4x slower.
        style = self.affine(w)  # (N, in)
        weight = self.scale * self.weight  # (out, in, k, k)
        out = F.conv2d(x * style[:, :, None, None], weight, padding=self.kernel // 2)
        if self.demodulate:  # 1 / ||kernel x style|| per sample and output filter: (N, out)
            demod = torch.rsqrt(style.pow(2) @ weight.pow(2).sum(dim=(2, 3)).t() + 1e-8)
            out = out * demod[:, :, None, None]
        return out


class StyledConv(nn.Module):
    """(optional 2x upsample) -> modulated 3x3 conv -> + noise -> + bias -> LeakyReLU."""

    def __init__(self, in_ch: int, out_ch: int, style_dim: int, upsample: bool = False, noise: bool = True):
        super().__init__()
        self.upsample = upsample
        self.conv = ModulatedConv2d(in_ch, out_ch, 3, style_dim)
        self.noise_strength = nn.Parameter(torch.zeros(())) if noise else None
        self.bias = nn.Parameter(torch.zeros(1, out_ch, 1, 1))
        self.act = nn.LeakyReLU(0.2, True)

    def forward(self, x: torch.Tensor, w: torch.Tensor, noise_gen: torch.Generator | None = None) -> torch.Tensor:
        if self.upsample:
            x = F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)
        x = self.conv(x, w)
        if self.noise_strength is not None and (noise_gen is not None or self.training):
            n, _, h, wd = x.shape
            noise = torch.randn(n, 1, h, wd, generator=noise_gen).to(x.device)
            x = x + self.noise_strength * noise
        return self.act(x + self.bias)


class StyleGenerator(nn.Module):
    """z (N, z_dim) [, caption embedding (N, embed_dim)] -> image (N, C, size, size) in [-1, 1]."""

    def __init__(
        self,
        z_dim: int = 32,
        width: int = 32,
        style_dim: int = 64,
        mapping_layers: int = 3,
        cond_dim: int = 0,
        embed_dim: int = 384,
        channels: int = 1,
        noise: bool = True,
        size: int = 16,
    ):
        super().__init__()
        self.z_dim, self.style_dim, self.cond_dim = z_dim, style_dim, cond_dim
        if cond_dim:
            self.cond_proj = nn.Linear(embed_dim, cond_dim)
        self.mapping = MappingNetwork(z_dim + cond_dim, style_dim, mapping_layers)
        from .gan import up_layers

        stages = up_layers(size)
        # 2·width channels down to the last doubling, width at full size (16x16: 2w, 2w, w)
        widths = [2 * width] * stages + [width]
        self.const = nn.Parameter(torch.randn(1, widths[0], 4, 4))
        convs = [StyledConv(widths[0], widths[0], style_dim, noise=noise)]  # 4x4
        for i in range(1, stages + 1):  # each doubling: an upsampling styled conv, then a plain one
            convs += [StyledConv(widths[i - 1], widths[i], style_dim, upsample=True, noise=noise)]
            convs += [StyledConv(widths[i], widths[i], style_dim, noise=noise)]
        self.convs = nn.ModuleList(convs)
        self.to_rgb = ModulatedConv2d(widths[-1], channels, 1, style_dim, demodulate=False)
        self.rgb_bias = nn.Parameter(torch.zeros(1, channels, 1, 1))

    @property
    def num_styles(self) -> int:
        """Style slots (one per styled conv, plus toRGB): crossover indices run 0..num_styles."""
        return len(self.convs) + 1

    def map(self, z: torch.Tensor, cond: torch.Tensor | None = None) -> torch.Tensor:
        """z (and the caption embedding, when conditional) -> w (N, style_dim)."""
        x = pixel_norm(z)
        if self.cond_dim:
            if cond is None:
                raise ValueError("this generator is conditional: pass the caption embeddings as cond")
            x = torch.cat([x, pixel_norm(self.cond_proj(cond))], dim=1)
        elif cond is not None:
            raise ValueError("this generator is unconditional: it takes no cond")
        return self.mapping(x)

    def synthesis(self, ws: list[torch.Tensor], noise_gen: torch.Generator | None = None) -> torch.Tensor:
        """One w (N, style_dim) per style slot -> images."""
        if len(ws) != self.num_styles:
            raise ValueError(f"need {self.num_styles} styles, got {len(ws)}")
        x = self.const.expand(len(ws[0]), -1, -1, -1)
        for conv, w in zip(self.convs, ws[:-1], strict=True):
            x = conv(x, w, noise_gen)
        return torch.tanh(self.to_rgb(x, ws[-1]) + self.rgb_bias)

    def forward(
        self,
        z: torch.Tensor,
        cond: torch.Tensor | None = None,
        z2: torch.Tensor | None = None,
        crossover: int | None = None,
        noise_gen: torch.Generator | None = None,
    ) -> torch.Tensor:
        """Images from z; with ``z2``, style mixing: slots < ``crossover`` (default: half) use
        w(z), the rest w(z2) (both under the same condition)."""
        w1 = self.map(z, cond)
        ws = [w1] * self.num_styles
        if z2 is not None:
            k = self.num_styles // 2 if crossover is None else int(crossover)
            if not 0 <= k <= self.num_styles:
                raise ValueError(f"crossover must be in 0..{self.num_styles}, got {k}")
            w2 = self.map(z2, cond)
            ws = [w1 if i < k else w2 for i in range(self.num_styles)]
        return self.synthesis(ws, noise_gen)
