"""Adversarial attacks on the fusion classifier's image, checked: accuracy never rises with ε,
PGD is at least as strong as FGSM, a large ε leaves almost nothing, and our PGD agrees with an
independent implementation (torchattacks' PGD) on the same model, data and budget."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from digit_classifier import caption, trained_on_digits

from aigc_ray.models.robustness import accuracy_under_attack, attack, fgsm, pgd

EPSILONS = [0.0, 0.05, 0.1, 0.2, 0.3]


@pytest.fixture(scope="module")
def vague_model():
    """The digits model reading a caption that names nothing: only the image can carry the answer."""
    model, images, labels = trained_on_digits()
    ids = torch.tensor([caption(None, 1)])
    mask = (ids != 0).long()

    def logits(x):
        return model(x, ids.expand(len(x), -1), mask.expand(len(x), -1))

    return logits, images[:200].numpy(), labels[:200].numpy()


def bound(logits):
    return lambda rows: logits  # every row reads the same caption


def test_accuracy_falls_with_epsilon_pgd_beats_fgsm_and_a_large_budget_leaves_almost_nothing(vague_model):
    logits, images, labels = vague_model
    clean = accuracy_under_attack(bound(logits), images, labels, [0.0], "fgsm")[0.0]
    assert clean > 0.8
    by_fgsm = accuracy_under_attack(bound(logits), images, labels, EPSILONS, "fgsm")
    by_pgd = accuracy_under_attack(bound(logits), images, labels, EPSILONS, "pgd", steps=20, seed=0)
    assert by_fgsm[0.0] == by_pgd[0.0] == clean  # ε = 0 changes nothing
    for series in (by_fgsm, by_pgd):
        values = [series[e] for e in EPSILONS]
        assert all(b <= a for a, b in zip(values, values[1:], strict=False)), series
    assert all(by_pgd[e] <= by_fgsm[e] for e in EPSILONS), (by_pgd, by_fgsm)
    assert by_pgd[0.3] <= 0.02  # a third of the pixel range flips almost every answer
    assert by_pgd[0.05] < clean  # and a small budget already costs something


def test_attacks_stay_in_the_budget_and_the_pixel_range(vague_model):
    logits, images, labels = vague_model
    x, y = torch.from_numpy(images[:32]), torch.from_numpy(labels[:32])
    for adv in (fgsm(logits, x, y, 0.1), pgd(logits, x, y, 0.1, steps=5, restarts=2, seed=3)):
        assert (adv - x).abs().max() <= 0.1 + 1e-6 and adv.min() >= 0 and adv.max() <= 1
    np.testing.assert_array_equal(pgd(logits, x, y, 0.1, seed=3), pgd(logits, x, y, 0.1, seed=3))  # seeded
    with pytest.raises(ValueError, match="unknown attack 'cw'"):
        attack("cw", logits, x, y, 0.1)


def test_our_pgd_agrees_with_torchattacks_within_a_point(vague_model):
    torchattacks = pytest.importorskip("torchattacks")
    logits, images, labels = vague_model

    class Wrapped(torch.nn.Module):  # torchattacks attacks a module of the image alone
        def __init__(self):
            super().__init__()
            self.model = trained_on_digits()[0]

        def forward(self, x):
            return logits(x)

    x, y = torch.from_numpy(images), torch.from_numpy(labels)
    for eps in (0.05, 0.1):
        reference = torchattacks.PGD(Wrapped().eval(), eps=eps, alpha=2.5 * eps / 10, steps=10, random_start=True)
        torch.manual_seed(0)
        adversarial = reference(x, y)
        with torch.no_grad():
            theirs = float((logits(adversarial).argmax(1) == y).float().mean())
        ours = accuracy_under_attack(bound(logits), images, labels, [eps], "pgd", steps=10, seed=0)[eps]
        assert abs(ours - theirs) <= 0.01, (eps, ours, theirs)


@pytest.mark.slow
@pytest.mark.timeout(400)
def test_the_ensembles_robustness_is_committed_staged_and_reported(ray_local, local_data, tmp_path, capsys):
    """`aigc robustness evaluate` on a committed ensemble: accuracy per ε for each member and the
    ensemble, with the captions as given and vague; its own artifact (the ensemble it attacked as
    its input), a stage of `aigc run` when enabled, a section of the report."""
    from aigc_ray.cli import main
    from aigc_ray.data.arrays import shard_arrays
    from aigc_ray.data.captions import encode_captions
    from aigc_ray.ensemble.build import build_ensemble, load_ensemble
    from aigc_ray.ensemble.robustness import ENSEMBLE, read_robustness
    from aigc_ray.layout import ensemble_dir, multimodal_uri, robustness_dir
    from aigc_ray.manifest import read_manifest
    from aigc_ray.pipeline import plan_run
    from aigc_ray.report import write_report
    from aigc_ray.spec import load_spec, spec_to_yaml

    base, storage = local_data
    overrides = [
        f"storage.root={base.storage.root}",
        "name=robust",
        "fusion.dim=16",
        "fusion.sweep.steps_per_iteration=30",
        "ensemble.top_k=0",
        "ensemble.bagging=2",
        "ensemble.bagging_iterations=3",
        "ensemble.strategy=weighted",
        "ensemble.language_models=[]",
        "robustness.enabled=true",
        "robustness.examples=60",
        "robustness.epsilons=[0, 0.1, 0.3]",
        "robustness.pgd_steps=8",
        f"tracking.mlflow_uri=sqlite:///{tmp_path}/mlflow.db",
    ]
    spec = load_spec(None, overrides)
    build_ensemble(spec, storage, log=lambda *_: None)
    assert [p.state for p in plan_run(spec, storage) if p.name == "robustness"] == ["not built"]
    path = tmp_path / "robust.yaml"
    path.write_text(spec_to_yaml(spec))
    assert main(["robustness", "evaluate", "-c", str(path)]) == 0
    out = capsys.readouterr().out
    assert "pgd (vague captions)" in out and f"robustness: {robustness_dir(spec)}" in out
    doc = read_robustness(storage, robustness_dir(spec))
    results = doc["results"]
    assert set(results) == {"given", "vague"} and set(results["vague"]) == {"fgsm", "pgd"}
    for by_attack in results.values():
        for by_who in by_attack.values():
            assert set(by_who) == {"bagged-1", "bagged-2", ENSEMBLE}
            for accs in by_who.values():
                values = list(accs.values())
                assert all(b <= a for a, b in zip(values, values[1:], strict=False)), accs  # never rises with ε
    vague = results["vague"]
    assert all(vague["pgd"][ENSEMBLE][e] <= vague["fgsm"][ENSEMBLE][e] for e in ("0.1", "0.3"))
    # tracked beside the ensemble's metrics: one MLflow run per evaluation, every accuracy in it
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path}/mlflow.db")
    runs = client.search_runs([client.get_experiment_by_name("robust").experiment_id])
    (tracked,) = [r for r in runs if r.info.run_name == "robustness"]
    assert tracked.data.metrics["robust_accuracy.vague.pgd.ensemble.0.1"] == pytest.approx(
        vague["pgd"][ENSEMBLE]["0.1"]
    )
    assert tracked.data.tags["aigc.artifact"] == robustness_dir(spec)
    assert vague["pgd"][ENSEMBLE]["0.3"] <= 0.1
    # ε = 0 is the ensemble's own answer on those rows
    ens = load_ensemble(storage, ensemble_dir(spec))
    test = shard_arrays(storage, multimodal_uri(spec), "test")
    probs = []
    for model, config in zip(ens.models, ens.configs, strict=True):
        ids, mask, _ = encode_captions(list(test["text"][:60]), config["tokenizer"], storage, config["max_text_tokens"])
        with torch.no_grad():
            logits = model(torch.from_numpy(test["image"][:60]), torch.from_numpy(ids), torch.from_numpy(mask))
        probs.append(torch.softmax(logits, -1).numpy())
    clean = float((ens.combiner(np.stack(probs)).argmax(1) == test["label"][:60]).mean())
    assert results["given"]["pgd"][ENSEMBLE]["0.0"] == pytest.approx(clean)
    manifest = read_manifest(storage, robustness_dir(spec))
    assert manifest.kind == "robustness"
    assert manifest.inputs == {ensemble_dir(spec): read_manifest(storage, ensemble_dir(spec)).fingerprint}
    # a stage of `aigc run`: up to date now, off when disabled; the report shows it
    assert [p.state for p in plan_run(spec, storage) if p.name == "robustness"] == ["up to date"]
    off = load_spec(None, [*overrides, "robustness.enabled=false"])
    assert [p.state for p in plan_run(off, storage) if p.name == "robustness"] == ["off"]
    report = write_report(spec, storage, [])
    md = storage.read_bytes(report.replace("report.html", "report.md")).decode()
    assert "## Adversarial robustness" in md and "| pgd, vague captions |" in md and "robustness-curves.png" in md


def test_epsilons_outside_the_pixel_range_are_refused():
    from aigc_ray.spec import SpecError, load_spec

    with pytest.raises(SpecError, match=r"every epsilon must be in \[0, 1\]"):
        load_spec(None, ["robustness.epsilons=[0.1, 1.5]"])
    with pytest.raises(SpecError, match="robustness.attacks"):
        load_spec(None, ["robustness.attacks=[cw]"])


def test_adversarial_training_is_spelled_as_a_block_or_flat_and_checked(tmp_path):
    from aigc_ray.spec import SpecError, load_spec, spec_hash

    block = tmp_path / "block.yaml"
    block.write_text(
        "fusion:\n  adversarial: {epsilon: 0.1, steps: 3, fraction: 1.0}\n"
        "  sweep:\n    search_space:\n      adversarial.epsilon: {type: grid, values: [0.0, 0.1]}\n"
    )
    flat = tmp_path / "flat.yaml"
    flat.write_text(
        "fusion:\n  adversarial_epsilon: 0.1\n  adversarial_steps: 3\n  adversarial_fraction: 1.0\n"
        "  sweep:\n    search_space:\n      adversarial_epsilon: {type: grid, values: [0.0, 0.1]}\n"
    )
    spelled, plain = load_spec(block), load_spec(flat)
    assert spelled.fusion.adversarial_epsilon == 0.1 and spelled.fusion.adversarial_steps == 3
    assert spelled.fusion.adversarial_fraction == 1.0
    assert list(spelled.fusion.sweep.search_space) == ["adversarial_epsilon"]
    assert spec_hash(spelled) == spec_hash(plain)
    with pytest.raises(SpecError, match=r"adversarial_epsilon.*less than or equal to 1"):
        load_spec(None, ["fusion.adversarial={epsilon: 1.5}"])
    with pytest.raises(SpecError, match=r"unknown key\(s\) \['eps'\]; allowed: epsilon, steps, fraction"):
        load_spec(None, ["fusion.adversarial={eps: 0.1}"])
    with pytest.raises(SpecError, match="disagree"):
        load_spec(block, ["fusion.adversarial_epsilon=0.2"])


def test_adversarial_training_batches_hold_pgd_examples_within_the_budget():
    from aigc_ray.models.fusion_training import adversarial_batch

    model, images, labels = trained_on_digits()
    ids = torch.tensor([caption(None, 1)] * 16)
    x, y = images[:16], labels[:16]
    config = {"adversarial_epsilon": 0.1, "adversarial_steps": 3, "adversarial_fraction": 0.5}
    model.train()
    try:
        out = adversarial_batch(model, x, ids, (ids != 0).long(), y, config, torch.Generator().manual_seed(0))
        assert model.training  # the attack ran in eval mode; training resumes
    finally:
        model.eval()
    assert out.shape == x.shape and torch.equal(out[8:], x[8:])  # the other half as it was
    changed = (out[:8] - x[:8]).abs()
    assert changed.max() <= 0.1 + 1e-6 and changed.max() > 0.05 and out.min() >= 0 and out.max() <= 1


@pytest.mark.timeout(300)
def test_an_adversarially_trained_model_holds_up_where_the_standard_one_does_not():
    """The same digits model trained twice, same seeds and steps: plainly, and with half of every
    batch replaced by FGSM-from-a-random-start examples at ε = 0.1. Under 10-step PGD at that ε
    (caption naming nothing), the adversarially trained one keeps far more of its accuracy."""
    from digit_classifier import train_on_digits

    epsilon = 0.1
    standard = train_on_digits(steps=300)
    robust = train_on_digits(steps=300, adversarial={"adversarial_epsilon": epsilon, "adversarial_steps": 1})
    scores = {}
    ids = torch.tensor([caption(None, 1)])
    for name, (model, images, labels) in {"standard": standard, "robust": robust}.items():

        def logits(x, model=model):
            return model(x, ids.expand(len(x), -1), (ids != 0).long().expand(len(x), -1))

        scores[name] = accuracy_under_attack(
            lambda rows, f=logits: f, images.numpy(), labels.numpy(), [0.0, epsilon], "pgd", steps=10
        )
    assert scores["robust"][epsilon] >= scores["standard"][epsilon] + 0.2, scores
    assert scores["robust"][0.0] >= scores["standard"][0.0] - 0.08, scores  # at a small cost in clean accuracy
