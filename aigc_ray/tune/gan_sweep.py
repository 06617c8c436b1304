"""``aigc sweep gan``: the GAN sweep (DCGAN or style-based generator, unconditional or
text-to-image). Beyond the shared results it writes the best generator and discriminator
(safetensors), ``samples.png`` (a grid from the best generator; for a caption-conditioned GAN one
row per digit prompt, "a handwritten zero" ... "nine") and ``exploits.json`` (PBT: which trial
took whose (G, D) pair, and whether the pair matched). ``best/config.json`` holds every key
``models.generators.build_generator`` needs to rebuild the generator."""

from __future__ import annotations

import json
import shutil
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch

from ..data.arrays import digit_arrays
from ..data.build import build_data
from ..data.images import encode_png
from ..data.info import dataset_info, prompt_template
from ..data.shards import split_table
from ..layout import classifier_uri, multimodal_uri, sweep_dir, sweep_events
from ..manifest import read_manifest
from ..models.classifier import load_or_train_classifier
from ..models.gan import from_gan_space, sample, to_gan_space
from ..models.generators import generate_for_embeddings
from ..models.text_condition import class_prompts, embed_texts
from ..spec import ExperimentSpec
from ..spec.sections import GAN_STRUCTURAL
from ..storage import Storage
from .gan_trainable import META_FILE, STATE_FILE, gan_trainable, load_generator
from .tuner import SweepResult, publish_sweep, run_tuner


def collapse_stopper(min_diversity: float, d_win_accuracy: float, patience: int, grace: int):
    """A Tune ``Stopper`` that ends GAN trials whose samples lose diversity or whose
    discriminator wins outright, for ``patience`` consecutive reports."""
    from ray.tune import Stopper

    class CollapseStopper(_CollapseRule, Stopper):
        pass

    return CollapseStopper(min_diversity, d_win_accuracy, patience, grace)


class _CollapseRule:
    """The stopping rule itself (plain Python, so it is testable without Tune)."""

    def __init__(self, min_diversity: float, d_win_accuracy: float, patience: int, grace: int):
        self.min_diversity, self.d_win_accuracy, self.patience = min_diversity, d_win_accuracy, patience
        self.grace = grace  # early on D always wins: judge only after this many iterations
        self.strikes: dict[str, int] = defaultdict(int)

    def __call__(self, trial_id: str, result: dict) -> bool:
        if result.get("training_iteration", 0) <= self.grace:
            return False
        collapsed = (
            result.get("diversity", 1.0) < self.min_diversity or result.get("d_accuracy", 0.0) >= self.d_win_accuracy
        )
        self.strikes[trial_id] = self.strikes[trial_id] + 1 if collapsed else 0
        return self.strikes[trial_id] >= self.patience

    def stop_all(self) -> bool:
        return False


def caption_training_rows(spec: ExperimentSpec, storage: Storage, size: int = 16) -> tuple[np.ndarray, dict]:
    """The training rows of a caption-conditioned GAN: (images in GAN space, captions) with
    captions = {"embedding": (N, 384) MiniLM embeddings, "label": true digits, "named": the digit
    each caption names, -1 for a vague one}.

    Rows whose caption_kind is 'wrong' are left out: those captions deliberately name another
    digit than the image shows (a test for the fusion classifier), and training a text-to-image
    GAN on them would teach it to draw a 3 for "a handwritten seven"."""
    train = digit_arrays(spec, storage, "train")
    kinds = np.array(split_table(storage, multimodal_uri(spec), "train", ["caption_kind"])["caption_kind"])
    if len(kinds) != len(train["label"]):  # both read the split in shard order
        raise RuntimeError(f"caption kinds ({len(kinds)}) and rows ({len(train['label'])}) disagree")
    keep = kinds != "wrong"
    images = to_gan_space(torch.from_numpy(train["image"][keep]), size).numpy()
    labels = train["label"][keep]
    named = np.where(kinds[keep] == "exact", labels, -1)
    embedding = embed_texts(list(train["text"][keep]))
    return images, {"embedding": embedding, "label": labels, "named": named}


def run_gan_sweep(
    spec: ExperimentSpec, storage: Storage, resume: bool = False, progress: bool = True, log=print
) -> SweepResult:
    """Run (or, with ``resume``, finish) the GAN sweep and publish its results."""
    from ray import tune

    conditional = spec.gan.condition == "caption"
    if spec.gan.sweep.metric == "cond_accuracy" and not conditional:
        raise ValueError("gan.sweep.metric cond_accuracy needs gan.condition: caption")
    built = build_data(spec, storage, log=log, say_up_to_date=False)
    info = dataset_info(spec, storage)
    classifier = load_or_train_classifier(spec, storage)
    size = classifier.config["size"]
    real = to_gan_space(torch.from_numpy(digit_arrays(spec, storage, "train")["image"]), size)
    with torch.no_grad():
        feats = classifier.features(real).numpy()  # the Fréchet reference: every training image
    events = sweep_events(spec, "gan")
    extra_inputs: dict = {}
    prompt_embeddings = None
    if conditional:  # MiniLM runs here, once: the trials get its embeddings, not the model
        train_images, captions = caption_training_rows(spec, storage, size)
        prompt_embeddings = embed_texts(class_prompts(info.classes, prompt_template(spec, info)))
        extra_inputs = {"captions": captions, "prompt_embeddings": prompt_embeddings}
    trainable = tune.with_resources(
        tune.with_parameters(
            gan_trainable,
            real=train_images if conditional else real.numpy(),
            classifier=classifier,
            real_mu=feats.mean(0),
            real_sigma=np.cov(feats, rowvar=False),
            real_spread=float(np.linalg.norm(feats - feats.mean(0), axis=1).mean()),
            events_uri=events,
            s3=storage.s3,
            **extra_inputs,
        ),
        {"cpu": spec.gan.sweep.cpus_per_trial, "gpu": spec.gan.sweep.gpus_per_trial},
    )

    def forget_old_exploits() -> None:  # events of an earlier sweep in the same place
        for stale in storage.list_files(events):
            storage.delete(stale)

    s = spec.gan.sweep
    grid = run_tuner(
        s,
        trainable,
        {
            **spec.gan.trial_config(),
            "image_size": size,
            "channels": info.channels,
            "num_classes": info.num_classes,
            "prompt_template": prompt_template(spec, info),  # published in best/config.json: how to ask
        },
        sweep_dir(spec, "gan"),
        storage,
        structural=GAN_STRUCTURAL,
        stop=collapse_stopper(
            spec.gan.collapse_diversity, spec.gan.d_win_accuracy, spec.gan.collapse_patience, s.grace_period
        ),
        resume=resume,
        progress=progress,
        on_fresh_start=forget_old_exploits,
        log=log,
    )
    inputs = {
        multimodal_uri(spec): built.multimodal.fingerprint,
        classifier_uri(spec): read_manifest(storage, classifier_uri(spec)).fingerprint,
    }
    exploits = _exploits(storage, events)

    def write_best(out: Path, best: dict) -> dict:
        from safetensors.torch import save_file

        ckpt = best["checkpoint_ref"].to_directory(str(out / ".ckpt"))
        state = torch.load(Path(ckpt, STATE_FILE), map_location="cpu", weights_only=True)
        meta_path = Path(ckpt, META_FILE)
        reported = json.loads(meta_path.read_text()).get("metrics", {}) if meta_path.exists() else {}
        save_file(state["g"], out / "best" / "generator.safetensors")
        save_file(state["d"], out / "best" / "discriminator.safetensors")
        _samples_png(load_generator(ckpt, best["config"]), out / "samples.png", prompt_embeddings)
        shutil.rmtree(out / ".ckpt")
        (out / "exploits.json").write_text(json.dumps(exploits, indent=2))
        if not conditional:
            return {}
        # the best checkpoint's own report: best/metrics.json has both, whichever is the sweep's metric
        return {k: reported[k] for k in ("cond_accuracy", "fid") if k in reported}

    result = publish_sweep(spec, storage, "gan", s, grid, inputs, write_best, log)
    result.exploits = exploits
    return result


def _exploits(storage: Storage, events_uri: str) -> list[dict]:
    """PBT exploits, as the trials recorded them when they restored a donor's checkpoint."""
    events = [storage.read_json(f) for f in storage.list_files(events_uri, ".json")]
    return sorted(events, key=lambda e: (e["trial_id"], e["at_iteration"]))


def _samples_png(generator, path: Path, prompt_embeddings: np.ndarray | None = None, n: int = 64) -> None:
    """A grid of samples (seed 0), 1 pixel apart; with ``prompt_embeddings`` (conditional) one
    row per prompt."""
    if prompt_embeddings is None:
        images = from_gan_space(sample(generator, n, seed=0)).numpy()
        rows = cols = int(np.ceil(np.sqrt(n)))
    else:
        rows, cols = len(prompt_embeddings), 8
        images = from_gan_space(generate_for_embeddings(generator, prompt_embeddings, cols, seed=0)).numpy()
    _, channels, side, _ = images.shape
    grid = np.ones((rows * (side + 1), cols * (side + 1), channels), dtype=np.float32)
    for i, img in enumerate(images):
        r, c = divmod(i, cols)
        grid[r * (side + 1) : r * (side + 1) + side, c * (side + 1) : c * (side + 1) + side] = img.transpose(1, 2, 0)
    path.write_bytes(encode_png(grid))
