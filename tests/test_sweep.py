"""GAN sweeps on real Ray Tune (2 CPUs, tiny models): ASHA and PBT from the spec."""

from __future__ import annotations

import json
import time

import pytest
import torch

from aigc_ray.cli import main
from aigc_ray.spec import load_spec
from aigc_ray.tune.gan_sweep import _CollapseRule, run_gan_sweep

TINY = [
    "gan.width=8",
    "gan.z_dim=16",
    "gan.batch_size=32",
    "gan.eval_samples=64",
    "gan.sweep.num_samples=4",
    "gan.sweep.max_concurrent_trials=4",
    "gan.sweep.max_iterations=4",
    "gan.sweep.steps_per_iteration=10",
]


def sweep_spec(base, name, *overrides):
    return load_spec(
        None, [f"storage.root={base.storage.root}", f"name={name}", "data.rows_per_shard=300", *TINY, *overrides]
    )


@pytest.mark.slow
@pytest.mark.timeout(400)
def test_asha_sweep_runs_and_publishes_results(ray_local, local_data):
    from safetensors.torch import load

    from aigc_ray.models.gan import Generator, sample

    base, storage = local_data
    result = run_gan_sweep(sweep_spec(base, "asha", "gan.sweep.scheduler=asha"), storage, log=lambda *_: None)
    assert result.trials == 4 and len(result.top_k) == 3
    fids = [t["fid"] for t in result.top_k]
    assert fids == sorted(fids) and result.best["fid"] == fids[0]
    files = storage.list_files(result.uri)
    names = {f.rsplit("/", 1)[1] for f in files}
    assert {
        "topk.json",
        "results.csv",
        "curves.png",
        "samples.png",
        "generator.safetensors",
        "discriminator.safetensors",
    } <= names
    assert storage.read_bytes(result.uri + "/samples.png")[:8] == b"\x89PNG\r\n\x1a\n"
    rows = storage.read_bytes(result.uri + "/results.csv").decode().splitlines()
    assert len(rows) == 5 and rows[0].startswith("rank,trial_id,fid")
    config = json.loads(storage.read_bytes(result.uri + "/best/config.json"))
    g = Generator(config["z_dim"], config["width"])
    g.load_state_dict(load(storage.read_bytes(result.uri + "/best/generator.safetensors")))
    assert sample(g, 4, seed=0).shape == (4, 1, 16, 16)
    for t in result.top_k:  # each listed checkpoint exists for the ensemble to load
        assert storage.exists(t["checkpoint"] + "/gan_state.pt")


@pytest.mark.slow
@pytest.mark.timeout(400)
def test_pbt_exploits_copy_generator_and_discriminator_from_one_donor(ray_local, local_data):
    base, storage = local_data
    spec = sweep_spec(
        base,
        "pbt",
        "gan.sweep.scheduler=pbt",
        "gan.sweep.perturbation_interval=1",
        "gan.sweep.max_iterations=8",
        "gan.collapse_patience=99",
    )
    result = run_gan_sweep(spec, storage, log=lambda *_: None)
    assert result.trials == 4
    assert result.exploits, "PBT made no exploit in 8 iterations of 4 trials"
    assert all(e["pair_matches"] for e in result.exploits)  # G and D both from the donor's checkpoint
    assert all(e["donor"] != e["trial_id"] for e in result.exploits)


def test_collapse_rule():
    rule = _CollapseRule(min_diversity=0.3, d_win_accuracy=0.99, patience=2, grace=1)
    ok, collapsed, d_wins = (
        {"diversity": 0.8, "d_accuracy": 0.7},
        {"diversity": 0.1, "d_accuracy": 0.6},
        {"diversity": 0.9, "d_accuracy": 1.0},
    )
    assert not rule("a", {**collapsed, "training_iteration": 1})  # within the grace period
    assert not rule("a", {**collapsed, "training_iteration": 2})
    assert rule("a", {**collapsed, "training_iteration": 3})
    assert not rule("b", {**d_wins, "training_iteration": 2})
    assert not rule("b", {**ok, "training_iteration": 3})  # a good report resets the count
    assert not rule("b", {**d_wins, "training_iteration": 4})
    assert rule("b", {**d_wins, "training_iteration": 5})


@pytest.mark.parametrize(
    ("override", "message"),
    [
        (
            "gan.sweep.scheduler=hyperband",
            "gan.sweep.scheduler = \"hyperband\": Input should be 'fifo', 'asha' or 'pbt'",
        ),
        ("gan.sweep.search_space.gamma={type: uniform, low: 0, high: 1}", "the GAN sweep cannot search gamma"),
        ("gan.sweep.search_space.g_lr={type: loguniform, low: 0.1, high: 0.01}", "needs low < high"),
        ("gan.sweep.search_space.width={type: choice, values: []}", "needs a non-empty 'values' list"),
    ],
)
def test_bad_sweeps_are_refused_before_any_trial(tmp_path, capsys, override, message):
    started = time.perf_counter()
    assert (
        main(["sweep", "gan", "-c", "examples/quickstart.yaml", "--set", f"storage.root={tmp_path}", "--set", override])
        == 1
    )
    assert message in capsys.readouterr().err
    assert time.perf_counter() - started < 5 and not (tmp_path / "quickstart").exists()


def test_generator_weights_round_trip_through_the_checkpoint_format(tmp_path):
    from aigc_ray.tune.gan_pair import weights_hash
    from aigc_ray.tune.gan_trainable import build

    g, d, opt_g, opt_d = build(
        {"seed": 1, "z_dim": 8, "width": 8, "g_lr": 1e-3, "lr_ratio": 2.0, "d_lr": 0.0, "beta1": 0.5}
    )
    assert opt_d.param_groups[0]["lr"] == pytest.approx(2e-3)  # TTUR: d_lr = g_lr × lr_ratio
    torch.save({"g": g.state_dict(), "d": d.state_dict()}, tmp_path / "s.pt")
    state = torch.load(tmp_path / "s.pt", weights_only=True)
    g2, d2, *_ = build({"seed": 2, "z_dim": 8, "width": 8, "g_lr": 1e-3, "lr_ratio": None, "d_lr": 1e-3, "beta1": 0.5})
    assert weights_hash(g2) != weights_hash(g)
    g2.load_state_dict(state["g"])
    assert weights_hash(g2) == weights_hash(g)


def _finished_trials(tune_dir, iterations: int) -> dict[str, int]:
    """Trial folder -> reported rows, for trials that reported their last iteration."""
    done = {}
    for result in tune_dir.glob("sweep/gan_trainable_*/result.json"):
        lines = result.read_text().splitlines()
        if lines and json.loads(lines[-1]).get("training_iteration") == iterations:
            done[result.parent.name] = len(lines)
    return done


@pytest.mark.slow
@pytest.mark.timeout(500)
def test_a_killed_sweep_driver_resumes_without_rerunning_finished_trials(ray_local, local_data):
    import os
    import signal
    import subprocess
    import sys
    from pathlib import Path

    from aigc_ray.tune.sweep import sweep_dir

    base, storage = local_data
    args = [
        f"storage.root={base.storage.root}",
        "name=restore",
        "data.rows_per_shard=300",
        *TINY,
        "gan.sweep.scheduler=fifo",
        "gan.sweep.max_concurrent_trials=1",
        "gan.sweep.max_iterations=6",
        "gan.sweep.steps_per_iteration=40",
        "gan.sweep.search_space={g_lr: {type: loguniform, low: 0.0001, high: 0.002}}",  # not the quickstart's grid
        "gan.collapse_patience=99",
    ]
    spec = sweep_spec(base, "restore", *args[3:])
    tune_dir = Path(sweep_dir(spec, "gan")) / "tune"
    address = ray_local.get_runtime_context().gcs_address
    cmd = [
        str(Path(sys.executable).parent / "aigc"),
        "sweep",
        "gan",
        "-c",
        "examples/quickstart.yaml",
        "--address",
        address,
    ]
    cmd += [x for a in args for x in ("--set", a)]
    driver = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 300
    while len(_finished_trials(tune_dir, 6)) < 2:
        assert driver.poll() is None, f"the sweep ended before it could be interrupted: {_finished_trials(tune_dir, 6)}"
        assert time.time() < deadline, "trials did not finish in time"
        time.sleep(0.2)
    os.killpg(driver.pid, signal.SIGKILL)  # the driver dies mid-sweep
    driver.wait()
    before = _finished_trials(tune_dir, 6)

    resumed = subprocess.run([*cmd, "--resume"], capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stdout[-2000:] + resumed.stderr[-2000:]
    assert "[sweep] resuming" in resumed.stdout
    after = _finished_trials(tune_dir, 6)
    assert len(after) == 4  # the sweep finished
    for trial, rows in before.items():  # and no finished trial ran again
        assert after[trial] == rows, f"{trial} was re-run"
