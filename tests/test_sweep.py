"""GAN sweeps on real Ray Tune (2 CPUs, tiny models): ASHA and PBT from the spec."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from aigc_ray import progress
from aigc_ray.cli import main
from aigc_ray.layout import sweep_dir
from aigc_ray.spec import load_spec
from aigc_ray.tune.gan_sweep import _CollapseRule, run_gan_sweep
from aigc_ray.tune.sweep import run_sweep

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
def test_asha_sweep_runs_and_publishes_results(ray_local, local_data, tmp_path):
    from safetensors.torch import load

    from aigc_ray.models.gan import Generator, sample

    base, storage = local_data
    store = f"sqlite:///{tmp_path}/mlflow.db"
    spec = sweep_spec(base, "asha", "gan.sweep.scheduler=asha", f"tracking.mlflow_uri={store}")
    lines: list[str] = []
    with progress.sink(lines.append):  # what the live line shows
        result = run_sweep("gan", spec, storage, log=lambda *_: None)  # the CLI's entry: tracked in MLflow
    assert result.trials == 4 and len(result.top_k) == 3
    fids = [t["fid"] for t in result.top_k]
    assert fids == sorted(fids) and result.best["fid"] == fids[0]
    done = re.fullmatch(r"sweep gan 4/4: 0 running, (\d) finished, (\d) stopped early · best fid (\S+)", lines[-1])
    assert done and int(done[1]) + int(done[2]) == 4, lines[-1]
    assert float(done[3]) == pytest.approx(result.best["fid"], rel=1e-3)
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
    _assert_trials_tracked(spec, store, result)


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_a_sweeps_last_trial_takes_the_threads_its_ended_trials_ran_on(ray_local, tmp_path):
    """Two trials at once on one node, one of a single iteration and one of sixteen: once the
    short one has ended nothing is left to start, and the long one runs its later iterations on
    its own thread plus the ended trial's (torch's thread count inside the iteration says so)."""
    from aigc_ray.spec import load_spec
    from aigc_ray.spec.sweeps import SweepSpec
    from aigc_ray.storage import Storage
    from aigc_ray.tune.tuner import run_tuner

    def trainable(config):  # defined here: the trial processes cannot import a test module
        import time

        import torch

        from aigc_ray.tune.trial import run_trial

        class Waits:
            def restore(self, folder, trial_id):
                return 0, 0, {}

            def iterate(self, iteration):
                time.sleep(0.25)  # long enough for the driver to see the short trial end
                return {"score": float(iteration), "torch_threads": torch.get_num_threads()}, 1

            def save(self, folder, step, iteration, metrics):
                pass

        run_trial(config, Waits())

    from ray import tune

    sweep = SweepSpec(
        scheduler="fifo",
        num_samples=1,
        max_concurrent_trials=2,
        metric="score",
        search_space={"max_iterations": {"type": "grid", "values": [1, 16]}},
    )
    storage = Storage.from_spec(load_spec(None, [f"storage.root={tmp_path}"]).storage)
    grid = run_tuner(
        sweep,
        tune.with_resources(trainable, {"cpu": 0.5}),
        {},
        str(tmp_path / "share"),
        storage,
        progress=False,
        log=lambda *_: None,
    )
    runs = {r.config["max_iterations"]: r.metrics_dataframe for r in grid}
    short, long = runs[1], runs[16]
    assert list(short["threads"]) == [1] == list(short["torch_threads"])
    assert long["threads"].iloc[-1] == 2 and long["torch_threads"].iloc[-1] == 2, long[["threads", "torch_threads"]]
    assert (long["threads"] == long["torch_threads"]).all() and long["threads"].max() == 2


def test_threads_are_shared_on_a_node_only_when_nothing_is_left_to_start():
    from aigc_ray.tune.cpu_share import thread_shares

    peak: dict[str, int] = {}
    # four one-thread trials over two nodes, a fifth still to come: nothing shared
    four = {"a": ("n1", 1), "b": ("n1", 1), "c": ("n1", 1), "d": ("n2", 1)}
    assert thread_shares(four, peak, more_to_come=True) == {}
    assert peak == {"n1": 3, "n2": 1}
    # nothing left to start; b and c ended: a takes their two threads, d (alone all along) none
    assert thread_shares({"a": ("n1", 1), "d": ("n2", 1)}, peak, more_to_come=False) == {"a": 2}
    # three free threads over two trials: an even split, the remainder to the first by id
    peak = {"n1": 5}
    assert thread_shares({"y": ("n1", 1), "x": ("n1", 1)}, peak, more_to_come=False) == {"x": 2, "y": 1}
    # a trial whose node is not known yet neither takes nor counts
    assert thread_shares({"x": ("n1", 1), "z": (None, 1)}, peak, more_to_come=False) == {"x": 4}
    # a trial of two CPUs runs two threads of its own: the peak is in threads
    peak = {}
    assert thread_shares({"p": ("n1", 2), "q": ("n1", 1)}, peak, more_to_come=False) == {}
    assert thread_shares({"q": ("n1", 1)}, peak, more_to_come=False) == {"q": 2}


def _assert_trials_tracked(spec, store: str, result) -> None:
    """Read back with MLflow's own client: one run for the sweep, one child run per trial whose
    params are the trial's config and whose final metrics are Tune's last result of the trial."""
    from mlflow import MlflowClient

    client = MlflowClient(store)
    runs = client.search_runs([client.get_experiment_by_name("asha").experiment_id])
    (sweep,) = [r for r in runs if r.info.run_name == "sweep_gan"]
    assert sweep.info.status == "FINISHED" and sweep.data.tags["aigc.artifact"] == result.uri
    assert sweep.data.metrics["best.fid"] == result.best["fid"]
    trials = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == sweep.info.run_id]
    assert len(trials) == 4
    folders = {d.name.split("_")[2] + "_" + d.name.split("_")[3]: d for d in _trial_dirs(spec)}
    for run in trials:
        folder = folders[run.data.tags["aigc.trial_id"]]
        config = json.loads((folder / "params.json").read_text())
        expected = {k: str(v) for k, v in config.items() if isinstance(v, (bool, int, float, str))}
        assert {k: run.data.params[k] for k in expected} == expected
        assert list(folder.glob("events.out.tfevents.*")), "no TensorBoard events beside the trial"
        last = _trial_rows(folder)[-1]
        for metric in ("fid", "diversity", "d_accuracy"):
            assert run.data.metrics[metric] == pytest.approx(last[metric], rel=1e-12), (run.info.run_name, metric)
        steps = [m.step for m in client.get_metric_history(run.info.run_id, "fid")]
        assert steps == list(range(1, last["training_iteration"] + 1))  # one point per iteration


def _trial_dirs(spec) -> list:
    return sorted((Path(sweep_dir(spec, "gan")) / "tune" / "sweep").glob("gan_trainable_*"))


def _trial_rows(trial_dir) -> list[dict]:
    return [json.loads(line) for line in (trial_dir / "result.json").read_text().splitlines() if line.strip()]


def _checkpoints(trial_dir) -> dict[int, list]:
    """iteration -> the trial's checkpoint folders holding it (read from the files themselves)."""
    found: dict[int, list] = {}
    for folder in sorted(trial_dir.glob("checkpoint_*")):
        state = torch.load(folder / "gan_state.pt", weights_only=True)
        found.setdefault(int(state["iteration"]), []).append(folder)
    return found


def _replay_one_iteration(spec, storage, donor_folder, config: dict, iteration: int) -> dict:
    """What a trial with ``config`` holds after one iteration from the donor's checkpoint files,
    loaded here by hand (not through the code under test's restore or its hashes)."""
    from aigc_ray.data.arrays import digit_arrays
    from aigc_ray.models.classifier import load_or_train_classifier
    from aigc_ray.models.gan import d_lr_of, to_gan_space
    from aigc_ray.models.gan_training import TrainData
    from aigc_ray.tune.gan_trainable import GanTrial

    torch.set_num_threads(1)
    real = to_gan_space(torch.from_numpy(digit_arrays(spec, storage, "train")["image"])).numpy()
    stats = {"mu": np.zeros(64), "sigma": np.eye(64), "spread": 1.0}
    trial = GanTrial(config, TrainData.make(real), load_or_train_classifier(spec, storage), stats)
    state = torch.load(donor_folder / "gan_state.pt", weights_only=True)
    for part in ("g", "d", "opt_g", "opt_d"):
        getattr(trial, part).load_state_dict(state[part])
    for group in trial.opt_g.param_groups:  # the explored learning rates, not the donor's
        group["lr"] = config["g_lr"]
    for group in trial.opt_d.param_groups:
        group["lr"] = d_lr_of(config)
    trial.iterate(iteration)
    return {"g": trial.g.state_dict(), "d": trial.d.state_dict()}


@pytest.mark.slow
@pytest.mark.timeout(500)
def test_pbt_exploits_copy_generator_and_discriminator_from_one_donor(ray_local, local_data):

    base, storage = local_data
    spec = sweep_spec(
        base,
        "pbt",
        "gan.sweep.scheduler=pbt",
        "gan.sweep.perturbation_interval=1",
        "gan.sweep.max_iterations=8",
        "gan.collapse_patience=99",
        "gan.sweep.search_space.g_lr={type: loguniform, low: 0.0001, high: 0.002}",
        "gan.sweep.search_space.lr_ratio={type: choice, values: [0.5, 1.0, 2.0]}",
        "gan.sweep.search_space.width={type: choice, values: [8, 12]}",  # shapes: PBT must never mutate them
        "gan.sweep.search_space.z_dim={type: choice, values: [8, 16]}",
    )
    result = run_gan_sweep(spec, storage, log=lambda *_: None)
    assert result.trials == 4
    assert result.exploits, "PBT made no exploit in 8 iterations of 4 trials"
    assert all(e["donor"] != e["trial_id"] for e in result.exploits)
    published = json.loads(storage.read_bytes(result.uri + "/exploits.json"))
    assert published == result.exploits and {"trial_id", "donor", "at_iteration", "pair_matches"} <= set(published[0])

    trials = {d.name.split("_")[2] + "_" + d.name.split("_")[3]: d for d in _trial_dirs(spec)}
    rows = {t: _trial_rows(d) for t, d in trials.items()}
    replayed = 0
    for e in result.exploits:
        recipient, donor, k = e["trial_id"], e["donor"], e["at_iteration"]
        if k >= spec.gan.sweep.max_iterations:  # the donor had finished: the recipient ends with its copy
            continue
        donor_folders = _checkpoints(trials[donor]).get(k, [])
        taken = [  # Tune may drop a recipient's checkpoints on a later exploit: check those that remain
            f for f in _checkpoints(trials[recipient]).get(k + 1, []) if _meta(f).get("restored_from") == donor
        ]
        if not (donor_folders and taken):
            continue
        config = _meta(taken[0])["config"]  # the recipient's config after PBT's explore
        # an exploit copies the donor's shapes; PBT's explore never changes them. The donor may
        # hold iteration k twice, from two lineages of other shapes (it was itself restored):
        # only a folder of the recipient's shapes can be what it took.
        same_shape = [f for f in donor_folders if _shape(config) == _shape(_meta(f)["config"])]
        assert same_shape, f"{recipient} took shapes {_shape(config)} that {donor} never had at {k}"
        # Independently of the trial's own restore and hashes: one iteration from the donor's
        # files gives exactly the recipient's next checkpoint (G and D both the donor's).
        expected = [_replay_one_iteration(spec, storage, f, config, k) for f in same_shape]
        got = [torch.load(f / "gan_state.pt", weights_only=True) for f in taken]
        assert any(
            all(torch.equal(x[net][n], y[net][n]) for net in ("g", "d") for n in x[net]) for x in expected for y in got
        ), f"{recipient}'s checkpoint after the exploit is not one iteration from {donor}'s (G, D) at {k}"
        replayed += 1
    assert replayed, "no exploit could be replayed from the donor's checkpoint files"
    assert {row["threads"] for trial_rows in rows.values() for row in trial_rows} == {1}  # PBT shares none
    for trial, trial_rows in rows.items():  # within one lineage, a trial keeps its shapes
        for prev, row in zip(trial_rows, trial_rows[1:], strict=False):
            lineage = ("restored_from", "restored_at_iteration")
            same_lineage = all(row.get(k) == prev.get(k) for k in lineage)
            if same_lineage and row["training_iteration"] == prev["training_iteration"] + 1:
                assert _shape(row["config"]) == _shape(prev["config"]), trial


def _meta(folder) -> dict:
    return json.loads((folder / "gan_meta.json").read_text())


def _shape(config: dict) -> tuple[int, int]:
    return int(config["width"]), int(config["z_dim"])


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
    assert (
        main(["sweep", "gan", "-c", "examples/quickstart.yaml", "--set", f"storage.root={tmp_path}", "--set", override])
        == 1
    )
    assert message in capsys.readouterr().err
    assert not (tmp_path / "quickstart").exists()  # refused before anything was written


def test_generator_weights_round_trip_through_the_checkpoint_format(tmp_path):
    from aigc_ray.models.gan_training import build_gan
    from aigc_ray.tune.gan_pair import weights_hash

    g, d, opt_g, opt_d = build_gan(
        {"seed": 1, "z_dim": 8, "width": 8, "g_lr": 1e-3, "lr_ratio": 2.0, "d_lr": 0.0, "beta1": 0.5}
    )
    assert opt_d.param_groups[0]["lr"] == pytest.approx(2e-3)  # TTUR: d_lr = g_lr × lr_ratio
    torch.save({"g": g.state_dict(), "d": d.state_dict()}, tmp_path / "s.pt")
    state = torch.load(tmp_path / "s.pt", weights_only=True)
    g2, d2, *_ = build_gan(
        {"seed": 2, "z_dim": 8, "width": 8, "g_lr": 1e-3, "lr_ratio": None, "d_lr": 1e-3, "beta1": 0.5}
    )
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


def _recorded_finished(tune_dir) -> set[str]:
    """Trial folder prefixes (``gan_trainable_<trial_id>``) that the newest experiment snapshot
    records as finished: what ``Tuner.restore`` will not run again."""
    snapshots = sorted(tune_dir.glob("sweep/experiment_state-*.json"))
    if not snapshots:
        return set()
    try:
        trials = json.loads(snapshots[-1].read_text())["trial_data"]
    except (ValueError, KeyError, OSError):  # read while the driver rewrites it: look again
        return set()
    states = [json.loads(state) for state, _ in trials]
    return {f"gan_trainable_{s['trial_id']}" for s in states if s.get("status") == "TERMINATED"}


@pytest.mark.slow
@pytest.mark.timeout(500)
def test_a_killed_sweep_driver_resumes_without_rerunning_finished_trials(ray_local, local_data):
    import os
    import signal
    import subprocess
    import sys

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
    # Killed once the sweep's own snapshot records two trials finished: Tune snapshots the
    # experiment at most every 10 s, and a trial that finished after the last snapshot re-runs its
    # last iteration on resume (the README says so); what is promised is the recorded ones.
    while len(recorded := _recorded_finished(tune_dir)) < 2:
        assert driver.poll() is None, f"the sweep ended before it could be interrupted: {recorded}"
        assert time.time() < deadline, "trials did not finish in time"
        time.sleep(0.2)
    os.killpg(driver.pid, signal.SIGKILL)  # the driver dies mid-sweep
    driver.wait()
    before = {t: n for t, n in _finished_trials(tune_dir, 6).items() if any(t.startswith(f"{r}_") for r in recorded)}
    assert len(before) >= 2, (recorded, _finished_trials(tune_dir, 6))

    resumed = subprocess.run([*cmd, "--resume"], capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stdout[-2000:] + resumed.stderr[-2000:]
    assert "[sweep] resuming" in resumed.stdout
    after = _finished_trials(tune_dir, 6)
    assert len(after) == 4  # the sweep finished
    for trial, rows in before.items():  # and no finished trial ran again
        assert after[trial] == rows, f"{trial} was re-run"


@pytest.mark.parametrize(
    ("family", "shapes", "others"),
    [("fusion", ("operator", "dim"), ("image_lr", "head_lr")), ("gan", ("width", "z_dim"), ("g_lr",))],
)
def test_pbt_never_mutates_what_shapes_the_network(family, shapes, others):
    """An exploit copies the donor's whole config; PBT's explore must leave shape dimensions
    alone (a new width would not fit the donor's checkpoint) and may perturb the rest."""
    from aigc_ray.spec.sections import FUSION_STRUCTURAL, GAN_STRUCTURAL
    from aigc_ray.tune.space import pbt_mutations

    space = {
        "operator": "{type: choice, values: [concat, gated]}",
        "dim": "{type: choice, values: [16, 32]}",
        "width": "{type: choice, values: [8, 12]}",
        "z_dim": "{type: choice, values: [8, 16]}",
        "image_lr": "{type: loguniform, low: 0.001, high: 0.01}",
        "head_lr": "{type: loguniform, low: 0.001, high: 0.01}",
        "g_lr": "{type: loguniform, low: 0.0001, high: 0.002}",
    }
    overrides = [f"{family}.sweep.scheduler=pbt"]
    overrides += [f"{family}.sweep.search_space.{k}={space[k]}" for k in (*shapes, *others)]
    spec = load_spec(None, overrides)
    structural = {"fusion": FUSION_STRUCTURAL, "gan": GAN_STRUCTURAL}[family]
    mutated = pbt_mutations(getattr(spec, family).sweep, structural)
    assert set(mutated) == set(others) and not set(shapes) & set(mutated)


def test_the_live_line_counts_every_trial_of_a_grid():
    """The quickstart's GAN sweep: 2 samples x a grid of 2 generators = 4 trials; the line said
    "3/2" once two trials had ended early before the count learned of grids."""
    from aigc_ray.spec.cost import sweep_trials
    from aigc_ray.tune.sweep_progress import SweepProgress

    spec = load_spec("examples/quickstart.yaml", [])
    assert sweep_trials(spec.gan.sweep) == 4 and sweep_trials(spec.fusion.sweep) == 6
    line = SweepProgress("gan", "cond_accuracy", "max", 6, sweep_trials(spec.gan.sweep)).line([])
    assert line.startswith("sweep gan 0/4: 0 running"), line
