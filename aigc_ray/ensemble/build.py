"""``aigc ensemble build`` / ``evaluate``: the ensemble artifact the Serve app loads.

Written to ``layout.ensemble_dir`` and committed by its manifest:
  ensemble.json              strategy, member weights, metrics, and each member's lineage
  members/<name>/            model.safetensors + config.json (one format, whatever the source)
  combiner.safetensors       the stacking meta-model (strategy 'stacking' only)
  generator/                 the GAN sweep's best generator (for /v1/images), when there is one
  video_generator/           the video sweep's best generator (for /v1/videos), when there is one
``ensemble.json`` also names the language models (HF exports sharing a tokenizer) whose
next-token log-probabilities the completions endpoint averages.
"""

from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..data.build import build_data
from ..data.captions import caption_tokenizer, encode_captions, fusion_arrays
from ..data.digits import IMAGE_SIDE, WORDS
from ..data.info import dataset_info
from ..layout import (
    ensemble_dir,
    finetune_export,
    multimodal_uri,
    pretrain_export,
    sweep_best,
    sweep_results,
    tokenizer_uri,
)
from ..manifest import publish_directory, read_manifest
from ..models.fusion_training import build_model, classification_metrics, fusion_config, predict
from ..spec import ExperimentSpec, spec_hash
from ..storage import Storage, join
from ..tracking import log_plots, tensorboard_scalars, tracked_run
from .combine import Combiner, fit_combiner
from .members import Member, bagged_members, boosted_members, listed_members, sweep_members

ENSEMBLE_FILE = "ensemble.json"
INPUT_RANGE_FILE = "input_range.safetensors"


@dataclass
class EnsembleReport:
    uri: str
    strategy: str
    weights: list[float]
    metrics: dict  # split -> name ("ensemble" or a member's) -> {accuracy, macro_f1}

    def table(self) -> str:
        names = [n for n in self.metrics["val"] if n != "ensemble"] + ["ensemble"]
        lines = [f"{'':14}{'val acc':>9}{'val F1':>9}{'test acc':>10}{'test F1':>9}"]
        for n in names:
            v, t = self.metrics["val"][n], self.metrics["test"][n]
            lines.append(f"{n:14}{v['accuracy']:9.4f}{v['macro_f1']:9.4f}{t['accuracy']:10.4f}{t['macro_f1']:9.4f}")
        return "\n".join(lines)


class SplitCache:
    """Each split encoded once per tokenizer (members may read different tokens)."""

    def __init__(self, spec: ExperimentSpec, storage: Storage):
        self.spec, self.storage, self.cache = spec, storage, {}

    def get(self, split: str, config: dict) -> dict:
        key = (split, config["tokenizer"], int(config["max_text_tokens"]))
        if key not in self.cache:
            self.cache[key] = fusion_arrays(self.spec, self.storage, split, *key[1:])[0]
        return self.cache[key]


def member_probs(models: list, configs: list[dict], splits: SplitCache, split: str) -> np.ndarray:
    """(M, N, C) probabilities of every member on one split."""
    return np.stack([predict(m, splits.get(split, c)) for m, c in zip(models, configs, strict=True)])


def score(probs: np.ndarray, combined: np.ndarray, labels: np.ndarray, names: list[str]) -> dict:
    out = {n: _two(classification_metrics(p, labels)) for n, p in zip(names, probs, strict=True)}
    out["ensemble"] = _two(classification_metrics(combined, labels))
    return out


def _two(m: dict) -> dict:
    return {"accuracy": m["accuracy"], "macro_f1": m["macro_f1"]}


def build_ensemble(spec: ExperimentSpec, storage: Storage, log=print) -> EnsembleReport:
    """Gather the members, fit the combination on the validation split, score both held-out
    splits, and commit the artifact."""
    members = sweep_members(spec, storage) + listed_members(spec, storage)  # fail fast on missing inputs
    built = build_data(spec, storage, log=log, say_up_to_date=False)
    data_inputs = {multimodal_uri(spec): built.multimodal.fingerprint}
    e = spec.ensemble
    if e.bagging or e.boosting:
        base = _bagging_config(spec, storage)
        train, _ = fusion_arrays(spec, storage, "train", base["tokenizer"], int(base["max_text_tokens"]))
    if e.bagging:
        log(f"[ensemble] training {e.bagging} bagged members on bootstrap resamples (Ray tasks)")
        members += bagged_members(spec, storage, base, train, data_inputs)
    if e.boosting:
        log(f"[ensemble] boosting {e.boosting} members (SAMME, {e.boosting_candidates} candidates a round, Ray tasks)")
        members += boosted_members(spec, storage, base, train, data_inputs, log)
    with tracked_run(spec, "ensemble", params=spec.ensemble.model_dump()) as run:
        report = commit_ensemble(spec, storage, members, data_inputs, log=log)
        if run is not None:  # each member's and the ensemble's accuracy and macro-F1, per split
            run.log_metrics(report.metrics)
            run.set_tags({"aigc.artifact": report.uri})
            log_plots(run, storage, report.uri)
    return report


def commit_ensemble(
    spec: ExperimentSpec, storage: Storage, members: list[Member], inputs: dict, parent: dict | None = None, log=print
) -> EnsembleReport:
    """Fit the combination on the validation split, score both held-out splits and commit the
    artifact. ``inputs``: data (and other) fingerprints for the manifest; ``parent``: what this
    version was derived from (a feedback refresh records the previous ensemble and the feedback)."""
    names = [m.name for m in members]
    models, configs = [m.model() for m in members], [m.config for m in members]
    splits = SplitCache(spec, storage)
    val_labels = splits.get("val", configs[0])["label"]
    test_labels = splits.get("test", configs[0])["label"]
    val_probs, test_probs = member_probs(models, configs, splits, "val"), member_probs(models, configs, splits, "test")
    committee = {i: m.lineage["alpha"] for i, m in enumerate(members) if m.source == "boosting"}
    combiner = fit_combiner(spec.ensemble.strategy, val_probs, val_labels, spec.ensemble.seed, committee)
    metrics = {"val": score(val_probs, combiner(val_probs), val_labels, names)}
    if combiner.strategy == "stacking":  # fitted on val: report its cross-fitted scores there instead
        metrics["val"]["ensemble"] = combiner.info["out_of_fold"]
    metrics["test"] = score(test_probs, combiner(test_probs), test_labels, names)
    uri = ensemble_dir(spec)
    info = dataset_info(spec, storage)
    language_models = resolve_language_models(spec, storage, log)
    generators = {  # artifact folder -> the sweep whose best generator it serves, if that sweep ran
        folder: (sweep_results(spec, family), manifest)
        for folder, family in (("generator", "gan"), ("video_generator", "video"))
        if (manifest := read_manifest(storage, sweep_results(spec, family))) is not None
    }
    with tempfile.TemporaryDirectory(prefix="aigc-ensemble-") as tmp:
        out = Path(tmp)
        _write_members(out, members)
        tensorboard_scalars(  # each metric: one point per member and the ensemble, on the split's chart
            out / "tensorboard",
            [
                (f"{split}/{metric}/{who}", value, 0)
                for split, by_member in metrics.items()
                for who, values in by_member.items()
                for metric, value in values.items()
            ],
        )
        from safetensors.numpy import save_file

        if combiner.coef is not None:
            save_file({"coef": combiner.coef, "intercept": combiner.intercept}, str(out / "combiner.safetensors"))
        train_images = splits.get("train", configs[0])["image"]  # what every member saw, pixel by pixel
        save_file(
            {"min": train_images.min(0).astype(np.float32), "max": train_images.max(0).astype(np.float32)},
            str(out / INPUT_RANGE_FILE),
        )
        for folder, (source, _) in generators.items():
            (out / folder).mkdir()
            for name in ("generator.safetensors", "config.json", "metrics.json"):
                (out / folder / name).write_bytes(storage.read_bytes(join(source, "best", name)))
        doc = {
            "strategy": combiner.strategy,
            "weights": dict(zip(names, combiner.weights, strict=True)),
            "combiner": combiner.info,
            "members": [{"name": m.name, "source": m.source, "lineage": m.lineage} for m in members],
            "metrics": metrics,
            "classes": list(info.classes),  # label -> name, for answers
            "image_shape": list(info.image_shape),  # what a member reads: height, width, channels
            "input_range": INPUT_RANGE_FILE,  # per pixel, the training images' min and max
            "language_models": language_models,
            "generator": _source_doc(generators.get("generator")),
            "video_generator": _source_doc(generators.get("video_generator")),
            "parent": parent,
        }
        (out / ENSEMBLE_FILE).write_text(json.dumps(doc, indent=2))
        inputs = {**inputs, **{lm["uri"]: lm["fingerprint"] for lm in language_models}}
        inputs.update({source: manifest.fingerprint for source, manifest in generators.values()})
        for m in members:  # parents: the sweep's committed results (which chain on to data), or a listed export
            if "sweep_results" in m.lineage:
                inputs[m.lineage["sweep_results"]] = m.lineage["sweep_fingerprint"]
            elif "checkpoint" in m.lineage:
                inputs[m.lineage["checkpoint"]] = m.lineage.get("fingerprint", "listed")
        publish_directory(
            storage,
            out,
            uri,
            kind="ensemble/fusion",
            spec_hash=spec_hash(spec, "data", "fusion", "ensemble"),
            inputs=inputs,
            meta={"strategy": combiner.strategy, "members": names, "test": metrics["test"]["ensemble"]},
        )
    report = EnsembleReport(uri, combiner.strategy, combiner.weights, metrics)
    log(f"[ensemble] {len(members)} members, {combiner.strategy} -> {uri}\n{report.table()}")
    return report


def _bagging_config(spec: ExperimentSpec, storage: Storage) -> dict:
    """Bagged members use the fusion sweep's best config when there is one, else the spec's defaults."""
    best = join(sweep_best(spec, "fusion"), "config.json")
    if storage.exists(best):
        return json.loads(storage.read_bytes(best))
    tok = caption_tokenizer(spec, tokenizer_uri(spec))
    vocab = encode_captions(["a"], tok, storage)[2]  # the vocabulary size: no need to read a split for it
    return fusion_config(spec, vocab, tokenizer_uri(spec), dataset_info(spec, storage))


def _source_doc(found) -> dict | None:
    """Where a served generator came from: its sweep results and their fingerprint."""
    return None if found is None else {"source": found[0], "fingerprint": found[1].fingerprint}


def _write_members(out: Path, members: list[Member]) -> None:
    from safetensors.torch import save_file

    for m in members:
        folder = out / "members" / m.name
        folder.mkdir(parents=True)
        save_file({k: v.contiguous() for k, v in m.state.items()}, str(folder / "model.safetensors"))
        (folder / "config.json").write_text(json.dumps(m.config, indent=2))


# The exports that complete text: a causal pretraining, a fine-tuning to caption. A classifier or
# a masked LM has no next-token head to sample from (served as one, it answers noise).
CAUSAL_LM_KINDS = ("model/hf-causal-lm", "model/hf-caption")
CAUSAL_ARCHITECTURES = ("ForCausalLM", "LMHeadModel")  # how transformers names the heads that generate


def completes_text(storage: Storage, uri: str, kind: str) -> bool:
    """Whether the export at ``uri`` is a causal LM: by the architectures its config.json names
    (what a loader builds), else by its manifest's kind."""
    try:
        architectures = json.loads(storage.read_bytes(join(uri, "config.json"))).get("architectures") or []
    except (OSError, ValueError, AttributeError):
        architectures = []
    if architectures:
        return any(a.endswith(CAUSAL_ARCHITECTURES) for a in architectures)
    return kind in CAUSAL_LM_KINDS


def _language_model(name: str, uri: str, manifest) -> dict:
    return {"name": name, "uri": uri, "fingerprint": manifest.fingerprint, "spec_hash": manifest.spec_hash}


def resolve_language_models(spec: ExperimentSpec, storage: Storage, log=print) -> list[dict]:
    """The spec's language models as export URIs with fingerprints; 'pretrain'/'finetune' are this
    experiment's exports and are skipped (with no error) when that stage has not run or did not
    train a causal LM (``finetune.task: classify``, ``pretrain.objective: mlm``). When the
    default (``[finetune]``) leaves none that way, the causal pretraining serves completions."""
    exports = {"pretrain": pretrain_export(spec), "finetune": finetune_export(spec)}
    found, skipped = [], []
    for name in spec.ensemble.language_models:
        uri = exports.get(name, name)
        manifest = read_manifest(storage, uri)
        if manifest is None:
            if name in exports:
                continue
            raise FileNotFoundError(f"ensemble.language_models: no committed export at {uri}")
        if not completes_text(storage, uri, manifest.kind):
            if name in exports:
                skipped.append(f"{name} ({manifest.kind})")
                continue
            raise ValueError(
                f"ensemble.language_models: {uri} is a {manifest.kind} export, not a causal language model "
                "(completions need a pretraining with objective clm or a fine-tuning with task caption)"
            )
        found.append(_language_model(name, uri, manifest))
    if not found and "language_models" not in spec.ensemble.model_fields_set:
        pretrained = read_manifest(storage, exports["pretrain"])
        if pretrained is not None and completes_text(storage, exports["pretrain"], pretrained.kind):
            found.append(_language_model("pretrain", exports["pretrain"], pretrained))
    if skipped:
        served = ", ".join(lm["name"] for lm in found) or "none: /v1/completions answers 404"
        log(f"[ensemble] language models: {', '.join(skipped)} cannot complete text; serving {served}")
    return found


@dataclass
class LoadedEnsemble:
    uri: str
    doc: dict
    names: list[str]
    models: list
    configs: list[dict]
    combiner: Combiner

    @property
    def classes(self) -> list[str]:
        """Class names by label (ensembles built before they were recorded: the digits)."""
        return list(self.doc.get("classes") or WORDS)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """(channels, height, width) the members read (the artifact records height, width, channels)."""
        height, width, channels = self.doc.get("image_shape") or [IMAGE_SIDE, IMAGE_SIDE, 1]
        return int(channels), int(height), int(width)


def load_ensemble(storage: Storage, uri: str) -> LoadedEnsemble:
    """The committed ensemble at ``uri``: member models (eval mode), configs and the combiner."""
    from safetensors.numpy import load as load_np
    from safetensors.torch import load

    if read_manifest(storage, uri) is None:
        raise FileNotFoundError(f"no committed ensemble at {uri}: run `aigc ensemble build` first")
    doc = json.loads(storage.read_bytes(join(uri, ENSEMBLE_FILE)))
    names = [m["name"] for m in doc["members"]]
    models, configs = [], []
    for name in names:
        config = json.loads(storage.read_bytes(join(uri, "members", name, "config.json")))
        model = build_model(config, int(config["vocab_size"]))
        model.load_state_dict(load(storage.read_bytes(join(uri, "members", name, "model.safetensors"))))
        models.append(model.eval())
        configs.append(config)
    coef = intercept = None
    if doc["strategy"] == "stacking":
        arrays = load_np(storage.read_bytes(join(uri, "combiner.safetensors")))
        coef, intercept = arrays["coef"], arrays["intercept"]
    combiner = Combiner(doc["strategy"], [doc["weights"][n] for n in names], coef, intercept, doc.get("combiner", {}))
    return LoadedEnsemble(uri, doc, names, models, configs, combiner)


def evaluate_ensemble(spec: ExperimentSpec, storage: Storage, log=print) -> EnsembleReport:
    """Re-score the committed artifact (members loaded from its safetensors) on val and test."""
    ens = load_ensemble(storage, ensemble_dir(spec))
    splits = SplitCache(spec, storage)
    metrics = {}
    for split in ("val", "test"):
        probs = member_probs(ens.models, ens.configs, splits, split)
        metrics[split] = score(probs, ens.combiner(probs), splits.get(split, ens.configs[0])["label"], ens.names)
    if ens.combiner.strategy == "stacking":
        metrics["val"]["ensemble"] = ens.combiner.info["out_of_fold"]
    report = EnsembleReport(ens.uri, ens.combiner.strategy, ens.combiner.weights, metrics)
    log(report.table())
    return report
