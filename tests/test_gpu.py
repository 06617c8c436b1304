"""Models follow the device they were placed on (``models.device``): a trial, bagging task or Serve
replica given a GPU trains and answers there, and the same seed gives the same batches on either
device (random draws stay on the CPU and are moved). The ``cuda`` cases run on a GPU machine
(``pytest tests/test_gpu.py`` there, see the README); here the CPU cases check the same code path
and that nothing assumes a GPU."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from aigc_ray.models.device import module_device
from aigc_ray.models.fusion_training import build_model, build_optimizer, predict, train_iteration
from aigc_ray.models.gan_training import TrainData, build_gan, train_step
from aigc_ray.models.generators import generate
from aigc_ray.runtime import worker_device

DEVICES = [
    "cpu",
    pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device here")),
]
STYLE_GAN = {"seed": 0, "generator": "style", "z_dim": 8, "width": 4, "style_dim": 8, "mapping_layers": 1}
STYLE_GAN |= {"g_lr": 1e-3, "d_lr": 1e-3, "lr_ratio": None, "beta1": 0.5, "batch_size": 8, "mixing_prob": 0.5}
FUSION = {"seed": 3, "operator": "gated", "text_encoder": "tiny", "dim": 16, "max_text_tokens": 8}
FUSION |= {"image_lr": 3e-3, "text_lr": 3e-3, "head_lr": 3e-3, "freeze_text_iterations": 1}
FUSION |= {"batch_size": 16, "steps_per_iteration": 5}


def _gan_after_steps(device: str, steps: int = 5) -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    g, d, opt_g, opt_d = build_gan(STYLE_GAN)
    g.to(device)
    d.to(device)
    real = np.random.default_rng(0).uniform(-1, 1, (32, 1, 16, 16)).astype(np.float32)
    data, gen = TrainData.make(real), torch.Generator().manual_seed(1)
    for _ in range(steps):
        out = train_step(g, d, opt_g, opt_d, data, STYLE_GAN, gen)
    assert out["loss_d"].device.type == device and module_device(g).type == device
    images = generate(g, 4, seed=7)
    assert images.device.type == "cpu"  # what serving encodes and metrics score
    return {k: v.detach().cpu() for k, v in g.state_dict().items()} | {"images": images}


@pytest.mark.parametrize("device", DEVICES)
def test_a_gan_trains_where_it_is_placed_on_the_same_batches(device):
    reference, placed = _gan_after_steps("cpu"), _gan_after_steps(device)
    for name, value in reference.items():
        torch.testing.assert_close(placed[name], value, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("device", DEVICES)
def test_a_fusion_classifier_trains_and_predicts_where_it_is_placed(device):
    rng = np.random.default_rng(0)
    arrays = {
        "image": rng.uniform(0, 1, (40, 1, 8, 8)).astype(np.float32),
        "input_ids": rng.integers(5, 40, (40, 8)),
        "attention_mask": np.ones((40, 8), dtype=np.int64),
        "label": np.arange(40) % 10,
    }
    x = {k: torch.from_numpy(v) for k, v in arrays.items()}

    def trained(where: str) -> np.ndarray:
        torch.manual_seed(0)
        model = build_model(FUSION, 40).to(where)
        optimizer = build_optimizer(model, FUSION)
        for iteration in range(2):
            train_iteration(model, optimizer, x, FUSION, iteration)
        return predict(model, arrays)

    np.testing.assert_allclose(trained(device), trained("cpu"), atol=1e-4)


def test_without_a_gpu_assigned_work_runs_on_the_cpu(ray_local):
    import ray

    assert worker_device().type == "cpu"  # the driver
    on_worker = ray.get(ray.remote(num_cpus=0.1)(lambda: str(worker_device())).remote())
    assert on_worker == "cpu"


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device here")
def test_a_task_given_a_gpu_gets_cuda(ray_local):
    import ray

    assert ray.get(ray.remote(num_cpus=0.1, num_gpus=1)(lambda: str(worker_device())).remote()) == "cuda:0"
