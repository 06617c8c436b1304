"""Training precision: ``auto`` picks bf16 only where the hardware computes it natively, and the
sweeps' trials really train their steps in bf16 under it (weights stay float32, metrics are
measured in float32)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from aigc_ray.models.precision import autocast, native_bf16, resolve_precision
from aigc_ray.spec import load_spec
from aigc_ray.train.ds_config import deepspeed_config

CPU = torch.device("cpu")


def test_auto_is_bf16_exactly_where_the_cpu_has_it():
    native = torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()
    assert native_bf16(CPU) is native
    assert resolve_precision("auto", CPU) == ("bf16" if native else "fp32")
    for fixed in ("fp32", "bf16"):  # what a user names is what they get, on any hardware
        assert resolve_precision(fixed, CPU) == fixed
    with pytest.raises(ValueError, match="unknown precision 'fp16'.*fp32, bf16, auto"):
        resolve_precision("fp16", CPU)


def test_bf16_autocast_runs_matmuls_in_bf16_and_fp32_leaves_them_alone():
    layer = torch.nn.Linear(8, 4)
    x = torch.randn(2, 8)
    with autocast("bf16", CPU):
        assert layer(x).dtype == torch.bfloat16
    with autocast("fp32", CPU):
        assert layer(x).dtype == torch.float32
    with autocast("auto", CPU):
        assert layer(x).dtype == (torch.bfloat16 if native_bf16(CPU) else torch.float32)


def test_a_step_under_autocast_sees_the_weights_the_last_step_wrote():
    """A sweep's whole iteration runs in one autocast context: after an optimizer step, the next
    forward must use the updated weights, not a bf16 copy cached before the update."""
    layer = torch.nn.Linear(8, 4)
    optimizer = torch.optim.SGD(layer.parameters(), lr=0.5)
    x = torch.randn(2, 8)
    with autocast("bf16", CPU):
        before = layer(x)
        before.float().square().sum().backward()
        optimizer.step()
        after = layer(x)
    expected = torch.nn.functional.linear(x, layer.weight, layer.bias)  # float32, the new weights
    assert not torch.equal(before, after)
    torch.testing.assert_close(after.float(), expected, atol=0.05, rtol=0.02)


def test_the_spec_takes_auto_everywhere_and_names_a_wrong_precision():
    sections = ("pretrain", "finetune", "gan", "video", "fusion")
    spec = load_spec(None, [f"{s}.precision=auto" for s in sections])
    assert all(getattr(spec, s).precision == "auto" for s in sections)
    assert spec.gan.trial_config()["precision"] == "auto"  # what each trial reads
    with pytest.raises(ValueError, match="gan.precision"):
        load_spec(None, ["gan.precision=fp16"])


def test_deepspeed_gets_the_precision_auto_resolves_to_on_this_worker():
    spec = load_spec(None, ["pretrain.precision=auto"])
    enabled = deepspeed_config(spec.pretrain, 2)["bf16"]["enabled"]
    assert enabled is native_bf16(CPU)
    assert deepspeed_config(load_spec(None, ["pretrain.precision=bf16"]).pretrain, 2)["bf16"]["enabled"] is True
    assert deepspeed_config(load_spec(None, []).pretrain, 2)["bf16"]["enabled"] is False


def _fusion_trial(precision: str):
    """A fusion trial on rows whose image says its label (a bright pixel at the label's place)."""
    from aigc_ray.tune.fusion_trainable import FusionTrial

    rng = np.random.default_rng(0)
    label = rng.integers(0, 10, 200)
    image = rng.random((200, 1, 8, 8), dtype=np.float32) * 0.3
    image[np.arange(200), 0, label // 8 + 2, label % 8] = 1.0
    rows = {
        "image": image,
        "input_ids": rng.integers(1, 30, (200, 5)),
        "attention_mask": np.ones((200, 5), dtype=np.int64),
        "label": label,
    }
    config = load_spec(None, ["fusion.dim=16", f"fusion.precision={precision}"]).fusion.trial_config()
    config |= {"vocab_size": 30, "num_classes": 10, "channels": 1, "image_side": 8, "image_encoder": 2}
    config |= {"steps_per_iteration": 20, "batch_size": 32, "image_lr": 0.01, "head_lr": 0.01}
    torch.manual_seed(0)
    return FusionTrial(config, rows, rows, 30, None)


def test_a_fusion_trial_learns_as_well_in_bf16_and_keeps_float32_weights():
    accuracy = {}
    for precision in ("fp32", "bf16"):
        trial = _fusion_trial(precision)
        for iteration in range(3):
            metrics, steps = trial.iterate(iteration)
        assert steps == 20 and np.isfinite(metrics["train_loss"])
        assert all(p.dtype == torch.float32 for p in trial.model.parameters())
        accuracy[precision] = metrics["accuracy"]
    # 60 steps learn the pixel in float32; bf16 arithmetic must learn it too (a stale-weight
    # autocast learned nothing: chance is 0.1)
    assert accuracy["fp32"] > 0.6, accuracy
    assert accuracy["bf16"] > accuracy["fp32"] - 0.1, accuracy


def test_a_video_gan_trial_trains_in_bf16_and_scores_in_float32():
    from aigc_ray.models.classifier import ImageClassifier
    from aigc_ray.tune.video_trainable import VideoTrial

    real = torch.rand(40, 1, 8, 16, 16) * 2 - 1
    stats = {"mu": np.zeros(64), "sigma": np.eye(64), "consistency": 0.5, "motion": 0.05}
    dtypes = {}
    for precision in ("fp32", "bf16"):
        config = load_spec(None, [f"video.precision={precision}"]).video.trial_config()
        config |= {"steps_per_iteration": 2, "batch_size": 8, "eval_samples": 16}
        trial = VideoTrial(config, real, ImageClassifier().eval(), stats)
        seen_d, seen_g = [], []
        trial.d.net[0].register_forward_hook(lambda _m, _i, out, seen=seen_d: seen.append(out.dtype))
        trial.g.up[-2].register_forward_hook(lambda _m, _i, out, seen=seen_g: seen.append(out.dtype))
        metrics, _ = trial.iterate(0)
        assert np.isfinite(metrics["frame_fid"]) and np.isfinite(metrics["loss_d"])
        assert all(p.dtype == torch.float32 for p in [*trial.g.parameters(), *trial.d.parameters()])
        dtypes[precision] = (set(seen_d), seen_g[:-1], seen_g[-1])
    # D only trains: every one of its passes in the precision asked for
    assert dtypes["fp32"][0] == {torch.float32} and dtypes["bf16"][0] == {torch.bfloat16}
    # G's training passes in bf16 too; its last pass, the clips the trial is scored on, in float32
    assert set(dtypes["bf16"][1]) == {torch.bfloat16} and dtypes["bf16"][2] == torch.float32
    assert set(dtypes["fp32"][1]) == {torch.float32} and dtypes["fp32"][2] == torch.float32
