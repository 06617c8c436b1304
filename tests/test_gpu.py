"""Models follow the device they were placed on (``models.device``): a trial, bagging task or Serve
replica given a GPU trains and answers there, and the same seed gives the same batches on either
device (random draws stay on the CPU and are moved). The ``cuda`` cases run on a GPU machine
(``pytest tests/test_gpu.py`` there, see the README); here the CPU cases check the same code path
and that nothing assumes a GPU."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

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


@pytest.mark.parametrize("device", DEVICES)
def test_a_language_model_answers_the_same_where_it_is_placed(device, tmp_path):
    """What a Serve text replica given ``gpus_per_replica`` does: the export on its GPU, the
    next-token distribution back on the CPU, the same greedy completion as on the CPU."""
    from transformers import GPT2Config, GPT2LMHeadModel

    from aigc_ray.data.tokenizer import train_tokenizer
    from aigc_ray.ensemble.lm import LMEnsemble

    tok = train_tokenizer(["Caption for a seven: a handwritten seven. Caption for a three: a three."] * 20, 120)
    torch.manual_seed(0)
    config = GPT2Config(vocab_size=len(tok), n_positions=64, n_layer=2, n_head=2, n_embd=32)
    GPT2LMHeadModel(config).save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    on_cpu, placed = LMEnsemble([str(tmp_path)]), LMEnsemble([str(tmp_path)], device=device)
    assert {str(next(m.parameters()).device) for m in placed.models} == {
        str(torch.device(device, 0) if device == "cuda" else device)
    }
    ids = torch.tensor([tok("Caption for a seven:")["input_ids"]])
    np.testing.assert_allclose(placed.next_log_probs(ids), on_cpu.next_log_probs(ids), atol=1e-4)
    prompt = "Caption for a three:"
    assert placed.complete(prompt, max_tokens=12, temperature=0).text == on_cpu.complete(prompt, 12, 0).text


def test_without_a_gpu_assigned_work_runs_on_the_cpu(ray_local):
    import ray

    assert worker_device().type == "cpu"  # the driver
    on_worker = ray.get(ray.remote(num_cpus=0.1)(lambda: str(worker_device())).remote())
    assert on_worker == "cpu"


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device here")
def test_a_task_given_a_gpu_gets_cuda(ray_local):
    import ray

    assert ray.get(ray.remote(num_cpus=0.1, num_gpus=1)(lambda: str(worker_device())).remote()) == "cuda:0"


def test_training_on_gpus_asks_for_torchs_fused_adamw_and_only_there():
    """The optimizer step of GPT-2-XL on an H200 took 0.12 s with torch's multi-pass AdamW
    (BENCHMARKS.md); on GPUs DeepSpeed is told to build the fused one. The CPU path and CPU
    offload (DeepSpeed's own CPU Adam) keep theirs."""
    from aigc_ray.spec.sections import PretrainSpec
    from aigc_ray.train.ds_config import deepspeed_config

    def adam(**fields) -> dict:
        return deepspeed_config(PretrainSpec(num_workers=1, global_batch_size=8, micro_batch_size=8, **fields), 1)[
            "optimizer"
        ]["params"]

    assert adam(use_gpu=True)["fused"] is True and adam(use_gpu=True)["torch_adam"] is True
    assert "fused" not in adam(use_gpu=False)
    assert "fused" not in adam(use_gpu=True, offload_optimizer=True, zero_stage=2)
    # what DeepSpeed then builds with these parameters (its torch_adam path), where one runs
    device = "cuda" if torch.cuda.is_available() else "cpu"
    params = {k: v for k, v in adam(use_gpu=device == "cuda").items() if k != "torch_adam"}
    optimizer = torch.optim.AdamW([torch.zeros(4, device=device, requires_grad=True)], **params)
    assert optimizer.defaults["fused"] is (True if device == "cuda" else None)


BENCH = Path(__file__).resolve().parent.parent / "bench"


def _gpu_mfu_on_cpu(out: Path, *flags: str) -> subprocess.CompletedProcess:
    args = ["--device", "cpu", "--preset", "tiny", "--zero", "2", "--micro", "2", "--seq", "16"]
    args += ["--steps", "2", "--warmup", "1", "--out", str(out), *flags]
    env = os.environ | {"MASTER_PORT": "29531", "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, str(BENCH / "gpu_mfu.py"), *args]
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)


def test_the_mfu_benchmark_accumulates_and_drops_the_overflow_scan_when_asked(tmp_path):
    """bench/gpu_mfu.py's flags for the GPU lease (here on the CPU, tiny model): ``--accum 3``
    makes each optimizer step three micro-batches (tokens/s counts all of them),
    ``--no-overflow-check`` reaches DeepSpeed's ZeRO optimizer, and the line names both."""
    done = _gpu_mfu_on_cpu(tmp_path, "--accum", "3", "--no-overflow-check")
    assert done.returncode == 0, done.stderr[-3000:]
    assert "micro 2x16 x1, accum 3, no overflow check:" in done.stdout and "mfu ratio" in done.stdout
    (result,) = json.loads((tmp_path / "gpu_mfu.json").read_text())["results"]
    assert result["accum"] == 3 and result["overflow_check"] is False
    assert result["optimizer_steps"] == 3  # one warm-up and two timed steps, of three micro-batches each
    assert result["tokens_per_s"] > 0

    default = _gpu_mfu_on_cpu(tmp_path)
    assert default.returncode == 0, default.stderr[-3000:]
    (result,) = json.loads((tmp_path / "gpu_mfu.json").read_text())["results"]
    assert result["accum"] == 1 and result["overflow_check"] is True and result["optimizer_steps"] == 3

    refused = _gpu_mfu_on_cpu(tmp_path, "--accum", "2", "--breakdown")
    assert refused.returncode == 2 and "--breakdown and --profile-step" in refused.stderr


@pytest.mark.slow
def test_the_prepared_gpu_session_runs_every_variant_and_compares_it_with_the_baseline(tmp_path):
    """bench/gpu_session.sh is what a short device lease runs in one call: here with the tiny model
    on the CPU, each variant (accumulation, no overflow scan, compiled) writes its figures and the
    summary prints its tokens/s against the same run's baseline with ``ratio``."""
    env = os.environ | {
        "OUT": str(tmp_path),
        "PYTHON": sys.executable,
        "GPU_MFU_ARGS": "--device cpu --preset tiny --zero 2 --micro 2 --seq 16 --warmup 1",
        "OMP_NUM_THREADS": "1",
    }
    done = subprocess.run(["bash", str(BENCH / "gpu_session.sh")], capture_output=True, text=True, env=env, timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    for name in ("accum4", "accum4_nocheck", "accum4_nocheck_compiled"):
        (line,) = [x for x in done.stdout.splitlines() if x.startswith(f"{name} vs baseline:")]
        assert float(line.split("ratio ")[1].split()[0]) > 0
    compiled = json.loads((tmp_path / "accum4_nocheck_compiled" / "gpu_mfu.json").read_text())["results"][0]
    assert compiled["compile_s"] > 0 and compiled["accum"] == 4 and compiled["overflow_check"] is False
