"""Ensembles: the combination rules on known predictions, and a real build from a fusion sweep's
top-k plus bagged members trained on Ray, re-scored from its committed artifact."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from conftest import tensorboard_scalars_in

from aigc_ray.ensemble.combine import Combiner, average_log_probs, fit_combiner
from aigc_ray.layout import data_root

RNG = np.random.default_rng(0)


def confident(pred: np.ndarray, classes: int = 10, p: float = 0.8) -> np.ndarray:
    out = np.full((len(pred), classes), (1 - p) / (classes - 1))
    out[np.arange(len(pred)), pred] = p
    return out


LABELS = RNG.integers(0, 10, 400)
GOOD = confident(np.where(RNG.random(400) < 0.9, LABELS, RNG.integers(0, 10, 400)))  # ~91 % right
NOISE = confident(RNG.integers(0, 10, 400))  # chance
SHIFTED = confident((LABELS + 1) % 10)  # always wrong, but in a learnable way


def accuracy(probs):
    return float((probs.argmax(1) == LABELS).mean())


def test_mean_is_the_average_of_member_probabilities():
    combined = fit_combiner("mean", np.stack([GOOD, NOISE]), LABELS)(np.stack([GOOD, NOISE]))
    np.testing.assert_allclose(combined, (GOOD + NOISE) / 2)


def test_weighted_fits_weight_onto_the_member_that_is_right():
    probs = np.stack([NOISE, GOOD, NOISE[::-1]])
    combiner = fit_combiner("weighted", probs, LABELS)
    assert sum(combiner.weights) == pytest.approx(1) and min(combiner.weights) >= 0
    assert combiner.weights[1] > 0.8
    mean = fit_combiner("mean", probs, LABELS)
    assert accuracy(combiner(probs)) > accuracy(mean(probs)) + 0.1


def test_vote_takes_the_majority_and_breaks_ties_by_probability():
    # example 1: votes 3, 3, 5 (the 5 very sure) -> 3; example 2: votes 3, 5, 7 -> a tie, the surest (7) wins
    a, b = confident(np.array([3, 3])), confident(np.array([3, 5]))
    c = confident(np.array([5, 7]), p=0.99)
    combined = Combiner("vote", [1 / 3] * 3)(np.stack([a, b, c]))
    assert combined.argmax(1).tolist() == [3, 7]
    np.testing.assert_allclose(combined.sum(1), 1)


def test_stacking_learns_what_members_mean_and_reports_out_of_fold_scores():
    probs = np.stack([SHIFTED, NOISE])
    stacking = fit_combiner("stacking", probs, LABELS)
    assert accuracy(fit_combiner("mean", probs, LABELS)(probs)) < 0.2
    assert accuracy(stacking(probs)) > 0.95  # it learned "class k means k-1"
    assert stacking.info["out_of_fold"]["accuracy"] > 0.9  # and held out, too
    assert stacking.info["out_of_fold"]["macro_f1"] > 0.9  # every class, not only the frequent ones


def test_averaged_log_probabilities_are_the_renormalised_geometric_mean():
    p = np.array([0.7, 0.2, 0.1])
    q = np.array([0.1, 0.6, 0.3])
    mixed = np.exp(average_log_probs([np.log(p), np.log(q)]))
    expected = np.sqrt(p * q) / np.sqrt(p * q).sum()
    np.testing.assert_allclose(mixed, expected)
    np.testing.assert_allclose(np.exp(average_log_probs([np.log(p), np.log(p)])), p)


def test_reweighting_is_checked():
    combiner = Combiner("weighted", [0.5, 0.5])
    assert combiner.with_weights([3, 1]).weights == [0.75, 0.25]
    for bad in ([1], [-1, 2], [0, 0]):
        with pytest.raises(ValueError, match="non-negative weights"):
            combiner.with_weights(bad)


@pytest.mark.slow
@pytest.mark.timeout(400)
def test_ensemble_from_sweep_top_k_and_bagging_is_committed_with_lineage(ray_local, local_data, capsys):
    from aigc_ray.ensemble.build import build_ensemble, evaluate_ensemble
    from aigc_ray.layout import ensemble_dir
    from aigc_ray.manifest import read_manifest
    from aigc_ray.spec import load_spec
    from aigc_ray.tune.fusion_sweep import run_fusion_sweep

    base, storage = local_data
    spec = load_spec(
        None,
        [
            f"storage.root={base.storage.root}",
            "name=ensemble",
            "data.rows_per_shard=300",
            "fusion.dim=16",
            "fusion.sweep.scheduler=fifo",
            "fusion.sweep.num_samples=2",
            "fusion.sweep.max_iterations=2",
            "fusion.sweep.steps_per_iteration=20",
            "ensemble.top_k=2",
            "ensemble.bagging=2",
            "ensemble.bagging_iterations=2",
            "ensemble.strategy=weighted",
        ],
    )
    sweep = run_fusion_sweep(spec, storage, progress=False, log=lambda *_: None)
    spec.ensemble.members = [sweep.uri + "/best"]  # an exported model, listed by URI
    report = build_ensemble(spec, storage, log=lambda *_: None)
    doc = json.loads(storage.read_bytes(ensemble_dir(spec) + "/ensemble.json"))
    scalars = tensorboard_scalars_in(Path(ensemble_dir(spec), "tensorboard"))  # TensorBoard reads the same
    assert scalars == {
        f"{split}/{metric}/{who}": pytest.approx(value, abs=1e-6)
        for split, by_member in report.metrics.items()
        for who, values in by_member.items()
        for metric, value in values.items()
    }
    assert [m["name"] for m in doc["members"]] == ["sweep-1", "sweep-2", "listed-1", "bagged-1", "bagged-2"]
    assert doc["members"][2]["lineage"]["checkpoint"] == sweep.uri + "/best"
    assert sum(doc["weights"].values()) == pytest.approx(1)
    shards = read_manifest(storage, data_root(base) + "/multimodal").fingerprint
    top = doc["members"][0]["lineage"]
    assert top["sweep_trial"] == sweep.top_k[0]["trial_id"] and top["checkpoint"] == sweep.top_k[0]["checkpoint"]
    assert top["data"][data_root(base) + "/multimodal"] == shards
    assert doc["members"][3]["lineage"]["data"][data_root(base) + "/multimodal"] == shards
    assert doc["members"][3]["lineage"]["bootstrap_seed"] != doc["members"][4]["lineage"]["bootstrap_seed"]
    manifest = read_manifest(storage, ensemble_dir(spec))
    assert (
        manifest.kind == "ensemble/fusion"
        and manifest.inputs[sweep.uri] == read_manifest(storage, sweep.uri).fingerprint
    )
    # the two bagged members saw different resamples: they disagree somewhere
    val = report.metrics["val"]
    assert val["bagged-1"] != val["bagged-2"]
    assert val["listed-1"] == val["sweep-1"]  # the sweep's best, exported: the same model
    # `aigc lineage` follows the manifests from the ensemble to the sweep and on to the shards
    from aigc_ray.cli import main
    from aigc_ray.lineage import lineage

    def kinds(node):
        return {node.kind} | {k for p in node.parents for k in kinds(p)}

    assert {"ensemble/fusion", "sweep/fusion", "shards/multimodal/v1"} <= kinds(lineage(storage, ensemble_dir(spec)))
    assert main(["lineage", ensemble_dir(spec)]) == 0
    printed = capsys.readouterr().out
    assert f"member sweep-1 (sweep trial {sweep.top_k[0]['trial_id']}" in printed and "CHANGED" not in printed
    # the committed artifact, loaded from its safetensors, scores exactly what the build reported
    again = evaluate_ensemble(spec, storage, log=lambda *_: None)
    assert again.metrics == report.metrics


def test_only_causal_language_models_serve_completions(tmp_path):
    """A fine-tuning to classify (or a masked pretraining) has no next-token head: served as the
    completions model it answered noise. The default (``[finetune]``) then serves the causal
    pretraining and says why; a listed export that cannot complete text is a named error."""
    from aigc_ray.ensemble.build import resolve_language_models
    from aigc_ray.layout import finetune_export, pretrain_export
    from aigc_ray.manifest import publish_directory
    from aigc_ray.spec import load_spec
    from aigc_ray.storage import Storage

    def spec(*overrides):
        return load_spec(None, [f"storage.root={tmp_path / 'runs'}", *overrides])

    storage = Storage()
    (tmp_path / "weights").mkdir()
    (tmp_path / "weights" / "config.json").write_text("{}")

    def export(uri, kind):
        publish_directory(storage, tmp_path / "weights", uri, kind=kind, spec_hash="h")

    base = spec()
    export(pretrain_export(base), "model/hf-causal-lm")
    export(finetune_export(base), "model/hf-classify")
    said: list[str] = []
    assert [lm["name"] for lm in resolve_language_models(base, storage, said.append)] == ["pretrain"]
    assert said == ["[ensemble] language models: finetune (model/hf-classify) cannot complete text; serving pretrain"]

    said.clear()  # listed on purpose: no stand-in
    assert resolve_language_models(spec("ensemble.language_models=[finetune]"), storage, said.append) == []
    assert said[0].endswith("serving none: /v1/completions answers 404")
    with pytest.raises(ValueError, match=r"is a model/hf-classify export, not a causal language model"):
        resolve_language_models(spec(f"ensemble.language_models=[{finetune_export(base)}]"), storage)

    export(pretrain_export(base), "model/hf-masked-lm")  # nothing generative left: nothing served
    assert resolve_language_models(base, storage, said.append) == []
    export(finetune_export(base), "model/hf-caption")
    said.clear()
    assert [lm["name"] for lm in resolve_language_models(base, storage, said.append)] == ["finetune"] and not said

    # what the export's config.json says it is wins over the manifest's kind: another tool's
    # GPT-2 export completes text, a sequence classifier does not, whatever their kinds say
    other = str(tmp_path / "elsewhere")
    (tmp_path / "weights" / "config.json").write_text(json.dumps({"architectures": ["GPT2LMHeadModel"]}))
    export(other, "model/causal-lm")
    assert [lm["uri"] for lm in resolve_language_models(spec(f"ensemble.language_models=[{other}]"), storage)] == [
        other
    ]
    (tmp_path / "weights" / "config.json").write_text(json.dumps({"architectures": ["GPT2ForSequenceClassification"]}))
    export(other, "model/hf-causal-lm")
    with pytest.raises(ValueError, match=r"not a causal language model"):
        resolve_language_models(spec(f"ensemble.language_models=[{other}]"), storage)


def test_building_without_a_sweep_names_what_is_missing(tmp_path, capsys):
    from aigc_ray.cli import main

    assert main(["ensemble", "build", "-c", "examples/quickstart.yaml", "--set", f"storage.root={tmp_path}"]) == 1
    err = capsys.readouterr().err
    assert "no fusion sweep results" in err and "aigc sweep fusion" in err
    assert not (tmp_path / "quickstart" / "ensemble").exists()  # nothing half-written


def test_boosted_members_share_one_weight_in_proportion_to_their_alphas():
    probs = np.stack([GOOD, NOISE, SHIFTED])
    mean = fit_combiner("mean", probs, LABELS, committee={1: 2.0, 2: 1.0})
    np.testing.assert_allclose(mean.weights, [0.5, 0.5 * 2 / 3, 0.5 / 3])  # the committee counts as one member
    weighted = fit_combiner("weighted", probs, LABELS, committee={1: 2.0, 2: 1.0})
    w = np.asarray(weighted.weights)
    assert w.sum() == pytest.approx(1) and w[1] == pytest.approx(2 * w[2])
    assert weighted.info["boosted_committee_weight"] == pytest.approx(w[1] + w[2])
    assert w[0] > 0.5  # the good member outweighs a committee of noise


def test_boosting_is_refused_where_it_cannot_work(tmp_path):
    from aigc_ray.ensemble.members import boosted_members
    from aigc_ray.spec import SpecError, load_spec

    with pytest.raises(SpecError, match="boosting with strategy 'vote'"):
        load_spec(None, ["ensemble.boosting=3", "ensemble.strategy=vote"])
    with pytest.raises(SpecError, match=r"ensemble.boosting = -1: Input should be greater than or equal to 0"):
        load_spec(None, ["ensemble.boosting=-1"])
    spec = load_spec(None, ["ensemble.boosting=3", f"storage.root={tmp_path}"])
    few = {"label": np.repeat(np.arange(10), 4)}  # 4 rows of each class
    with pytest.raises(SpecError, match="class 0 has 4 training rows; boosting needs at least 10 of every class"):
        boosted_members(spec, None, {"num_classes": 10}, few, {})


@pytest.mark.slow
@pytest.mark.timeout(400)
@pytest.mark.parametrize("weighting", ["resample", "loss"])
def test_boosted_members_train_in_sequence_on_ray_and_combine_with_their_alphas(ray_local, local_data, weighting):
    from aigc_ray.ensemble.build import build_ensemble, evaluate_ensemble
    from aigc_ray.layout import ensemble_dir
    from aigc_ray.spec import load_spec

    base, storage = local_data
    spec = load_spec(
        None,
        [
            f"storage.root={base.storage.root}",
            f"name=boosted-{weighting}",
            "fusion.dim=16",
            "fusion.sweep.steps_per_iteration=15",
            "ensemble.top_k=0",
            "ensemble.boosting=3",
            "ensemble.boosting_candidates=2",
            "ensemble.boosting_iterations=2",
            f"ensemble.boosting_weighting={weighting}",
            "ensemble.strategy=weighted",
            "ensemble.language_models=[]",
        ],
    )
    logged: list[str] = []
    report = build_ensemble(spec, storage, log=logged.append)
    doc = json.loads(storage.read_bytes(ensemble_dir(spec) + "/ensemble.json"))
    lineage = [m["lineage"] for m in doc["members"]]
    assert [m["name"] for m in doc["members"]][:1] == ["boosted-1"] and all(
        m["source"] == "boosting" for m in doc["members"]
    )
    assert [x["boosting_round"] for x in lineage] == list(range(1, len(lineage) + 1))
    assert all(x["alpha"] > 0 and 0 <= x["weighted_error"] < 0.9 and x["weighting"] == weighting for x in lineage)
    assert len({x["sample_weights"] for x in lineage}) == len(lineage)  # each round trained on other weights
    assert sum("boosting round" in line for line in logged) == len(lineage)
    # boosted members alone: the ensemble's weights are their alphas, normalised
    alphas = np.array([x["alpha"] for x in lineage])
    np.testing.assert_allclose([doc["weights"][m["name"]] for m in doc["members"]], alphas / alphas.sum(), atol=1e-9)
    test = report.metrics["test"]
    assert test["ensemble"]["accuracy"] > 0.25  # weak members (30 steps each), well above chance (0.1)
    assert test["ensemble"]["accuracy"] >= min(test[m["name"]]["accuracy"] for m in doc["members"])
    assert evaluate_ensemble(spec, storage, log=lambda *_: None).metrics == report.metrics
