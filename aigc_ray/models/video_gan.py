"""A spatio-temporal GAN for the short moving-digit clips: 3D transposed convolutions up in time
and space for G, 3D convolutions down for D (the one-stream variant of Vondrick et al. 2016,
"Generating Videos with Scene Dynamics"; the background here is black, so no static stream).

Clips live in video space: (N, 1, T, H, W) in [-1, 1] (G ends in tanh); the stored clips are
in [0, 1]. The losses are the image GAN's (``gan.discriminator_loss``, ``gan.generator_loss``).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from .device import module_device, on
from .gan import d_lr_of, descend, discriminator_loss, generator_loss, sample

__all__ = [
    "VideoDiscriminator",
    "VideoGenerator",
    "build_video_gan",
    "check_video_shape",
    "from_video_space",
    "generate_clips",
    "generator_config",
    "load_video_generator",
    "sample_clips",
    "to_video_space",
    "video_train_step",
]


def check_video_shape(frames: int, frame_size: int) -> None:
    """G doubles time and space twice from a (T/4, S/4, S/4) volume, D halves them twice: both
    need frames and frame_size to be multiples of 4 (T >= 4, S >= 8)."""
    problems = []
    if frames < 4 or frames % 4:
        problems.append(f"frames must be a multiple of 4 and at least 4, got {frames}")
    if frame_size < 8 or frame_size % 4:
        problems.append(f"frame_size must be a multiple of 4 and at least 8, got {frame_size}")
    if problems:
        raise ValueError("unsupported clip shape for the video GAN: " + "; ".join(problems))


def to_video_space(clips: torch.Tensor) -> torch.Tensor:
    """[0, 1] -> [-1, 1]."""
    return clips.clamp(0, 1) * 2 - 1


def from_video_space(clips: torch.Tensor) -> torch.Tensor:
    """[-1, 1] -> [0, 1]."""
    return (clips.clamp(-1, 1) + 1) / 2


class VideoGenerator(nn.Module):
    """z (N, z_dim) -> clip (N, 1, T, S, S): project to a (2w, T/4, S/4, S/4) volume, then two
    stride-2 ConvTranspose3d layers that double time and space together."""

    def __init__(self, z_dim: int = 32, width: int = 32, frames: int = 8, frame_size: int = 16):
        super().__init__()
        check_video_shape(frames, frame_size)
        self.z_dim, self.width, self.frames, self.frame_size = z_dim, width, frames, frame_size
        self.base = (frames // 4, frame_size // 4, frame_size // 4)
        volume = 2 * width * int(np.prod(self.base))
        self.project = nn.Sequential(nn.Linear(z_dim, volume, bias=False), nn.BatchNorm1d(volume), nn.ReLU(True))
        self.up = nn.Sequential(
            nn.ConvTranspose3d(2 * width, width, 4, 2, 1, bias=False),  # (N, w, T/2, S/2, S/2)
            nn.BatchNorm3d(width),
            nn.ReLU(True),
            nn.ConvTranspose3d(width, 1, 4, 2, 1),  # (N, 1, T, S, S)
            nn.Tanh(),
        )

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.up(self.project(z).view(len(z), 2 * self.width, *self.base))


class VideoDiscriminator(nn.Module):
    """clip (N, 1, T, S, S) -> logit (N,): two stride-2 Conv3d layers with LeakyReLU, then linear."""

    def __init__(self, width: int = 32, frames: int = 8, frame_size: int = 16):
        super().__init__()
        check_video_shape(frames, frame_size)
        self.frames, self.frame_size = frames, frame_size
        volume = 2 * width * (frames // 4) * (frame_size // 4) ** 2
        self.net = nn.Sequential(
            nn.Conv3d(1, width, 4, 2, 1),  # (N, w, T/2, S/2, S/2)
            nn.LeakyReLU(0.2, True),
            nn.Conv3d(width, 2 * width, 4, 2, 1, bias=False),  # (N, 2w, T/4, S/4, S/4)
            nn.BatchNorm3d(2 * width),
            nn.LeakyReLU(0.2, True),
            nn.Flatten(),
            nn.Linear(volume, 1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if tuple(x.shape[1:]) != (1, self.frames, self.frame_size, self.frame_size):
            raise ValueError(
                f"expected clips (N, 1, {self.frames}, {self.frame_size}, {self.frame_size}), got {tuple(x.shape)}"
            )
        return self.net(x).squeeze(1)


def generator_config(generator: VideoGenerator) -> dict:
    """What ``load_video_generator`` needs besides the weights."""
    g = generator
    return {"z_dim": g.z_dim, "width": g.width, "frames": g.frames, "frame_size": g.frame_size}


def load_video_generator(state_dict: dict, config: dict) -> VideoGenerator:
    """A generator rebuilt from its weights and a config with z_dim, width, frames and frame_size
    (e.g. a video sweep's ``best/config.json``), in eval mode."""
    missing = [k for k in ("z_dim", "width", "frames", "frame_size") if k not in config]
    if missing:
        raise ValueError(f"generator config lacks {', '.join(missing)}")
    g = VideoGenerator(int(config["z_dim"]), int(config["width"]), int(config["frames"]), int(config["frame_size"]))
    g.load_state_dict(state_dict)
    return g.eval()


def sample_clips(generator: VideoGenerator, n: int, seed: int) -> torch.Tensor:
    """``n`` clips (n, 1, T, S, S) in video space from a seeded noise draw (same seed, same clips):
    the image GAN's ``sample``, which only needs ``z_dim`` and a forward from z."""
    return sample(generator, n, seed)


def generate_clips(generator: VideoGenerator, n: int, seed: int) -> np.ndarray:
    """``n`` clips as (n, T, S, S) float32 in [0, 1], deterministic in ``seed``."""
    return from_video_space(sample_clips(generator, n, seed))[:, 0].numpy().astype(np.float32)


def build_video_gan(config: dict):
    """G, D and their Adam optimizers for a trial's config (seeded)."""
    torch.manual_seed(config["seed"])
    shape = (int(config["frames"]), int(config["frame_size"]))
    g = VideoGenerator(int(config["z_dim"]), int(config["width"]), *shape)
    d = VideoDiscriminator(int(config["width"]), *shape)
    betas = (config["beta1"], 0.999)
    return (
        g,
        d,
        torch.optim.Adam(g.parameters(), lr=config["g_lr"], betas=betas),
        torch.optim.Adam(d.parameters(), lr=d_lr_of(config), betas=betas),
    )


def video_train_step(g, d, opt_g, opt_d, real: torch.Tensor, batch: int, gen: torch.Generator) -> dict:
    """One D update and one G update on ``batch`` clips of ``real`` (video space) drawn with ``gen``;
    returns the losses and D's logits on the real and the generated clips."""
    device = module_device(g)  # drawn on the CPU from ``gen``, then moved: same clips anywhere
    x = on(device, real[torch.randint(0, len(real), (batch,), generator=gen)])
    fake = g(on(device, torch.randn(batch, g.z_dim, generator=gen)))
    real_logits, fake_logits = d(x), d(fake.detach())
    loss_d = discriminator_loss(real_logits, fake_logits)
    descend(opt_d, loss_d)
    loss_g = generator_loss(d(fake))
    descend(opt_g, loss_g)
    return {
        "loss_d": loss_d.detach(),
        "loss_g": loss_g.detach(),
        "real_logits": real_logits,
        "fake_logits": fake_logits,
    }
