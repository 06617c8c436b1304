"""Where every artifact lives, named once: the pipeline, the report, the jobs and every stage
find their inputs and outputs here rather than building paths themselves.

Two trees under ``storage.root`` (a local path or ``s3://bucket/prefix``):

    <root>/data/                 shared by every experiment with the same data settings
        multimodal/  corpus/  tokenizer/  video/      (data.uri moves this tree elsewhere)
    <root>/classifier/           the digit classifier behind the GAN metrics, keyed by the shards
    <root>/<name>/               one experiment (the spec's ``name``)
        pretrain/{ray,export}/   finetune/{ray,export}/
        sweeps/<family>/{tune,results,events}/       family: gan, fusion, video
        ensemble/  feedback/  feedback-shards/  report/
"""

from __future__ import annotations

from .spec import ExperimentSpec
from .storage import join

SWEEP_FAMILIES = ("gan", "fusion", "video")


# --- data: <root>/data (or data.uri) --------------------------------------------------------


def data_root(spec: ExperimentSpec) -> str:
    """The shard sets' folder: ``data.uri``, else ``<root>/data``."""
    return spec.data.uri or join(spec.storage.root, "data")


def multimodal_uri(spec: ExperimentSpec) -> str:
    """Image + caption + label shards (``multimodal/v1``)."""
    return join(data_root(spec), "multimodal")


def corpus_uri(spec: ExperimentSpec) -> str:
    """The pretraining text (``corpus/v1`` shards)."""
    return join(data_root(spec), "corpus")


def tokenizer_uri(spec: ExperimentSpec) -> str:
    """Our BPE tokenizer, trained on the corpus and the captions."""
    return join(data_root(spec), "tokenizer")


def pretrain_tokenizer_uri(spec: ExperimentSpec) -> str:
    """The tokenizer pretraining encodes the corpus with: ``pretrain.init``'s own when it
    continues a model, else ours."""
    return spec.pretrain.init or tokenizer_uri(spec)


def video_uri(spec: ExperimentSpec) -> str:
    """Moving-digit clips (``video/v1`` shards)."""
    return join(data_root(spec), "video")


def classifier_uri(spec: ExperimentSpec) -> str:
    """The digit classifier that scores generated images (shared by experiments on one root)."""
    return join(spec.storage.root, "classifier")


def stream_check_uri(spec: ExperimentSpec) -> str:
    """Scratch space where ``aigc data stream --workers N`` collects what each worker saw."""
    return join(spec.storage.root, "_streamcheck")


# --- one experiment: <root>/<name> ----------------------------------------------------------


def experiment_uri(spec: ExperimentSpec) -> str:
    return join(spec.storage.root, spec.name)


def pretrain_dir(spec: ExperimentSpec) -> str:
    return join(experiment_uri(spec), "pretrain")


def pretrain_export(spec: ExperimentSpec) -> str:
    """The pretrained model as a plain Hugging Face folder."""
    return join(pretrain_dir(spec), "export")


def finetune_dir(spec: ExperimentSpec) -> str:
    return join(experiment_uri(spec), "finetune")


def finetune_export(spec: ExperimentSpec) -> str:
    """The fine-tuned (LoRA-merged) model as a plain Hugging Face folder."""
    return join(finetune_dir(spec), "export")


def ray_runs(stage_dir: str) -> str:
    """Ray Train's runs (checkpoints, resumable) of a training stage's folder."""
    return join(stage_dir, "ray")


def sweep_dir(spec: ExperimentSpec, family: str) -> str:
    """A sweep's folder: ``tune/`` (Tune's experiment), ``results/``, ``events/``."""
    if family not in SWEEP_FAMILIES:
        raise ValueError(f"unknown sweep family {family!r}; allowed: {', '.join(SWEEP_FAMILIES)}")
    return join(experiment_uri(spec), "sweeps", family)


def sweep_results(spec: ExperimentSpec, family: str) -> str:
    """A sweep's committed results: ``best/``, ``topk.json``, ``results.csv``, plots."""
    return join(sweep_dir(spec, family), "results")


def sweep_best(spec: ExperimentSpec, family: str) -> str:
    """The best trial's exported model (weights and config) of a sweep."""
    return join(sweep_results(spec, family), "best")


def sweep_events(spec: ExperimentSpec, family: str) -> str:
    """Where trials record PBT exploits for the driver (the GAN sweep's ``exploits.json``)."""
    return join(sweep_dir(spec, family), "events")


def augment_generator_uri(spec: ExperimentSpec) -> str:
    """The generator fusion augmentation reads: ``fusion.augment_generator``, else the GAN sweep's best."""
    return spec.fusion.augment_generator or sweep_best(spec, "gan")


def ensemble_dir(spec: ExperimentSpec) -> str:
    return join(experiment_uri(spec), "ensemble")


def logs_uri(spec: ExperimentSpec, stage: str) -> str:
    """A stage's log (``aigc_ray.console``): everything it printed, Ray's and the libraries' output too."""
    return join(experiment_uri(spec), "logs", f"{stage}.log")


def stage_events_uri(spec: ExperimentSpec, stage: str) -> str:
    """TensorBoard events of a pipeline stage's summary numbers (``tensorboard --logdir`` the experiment)."""
    return join(experiment_uri(spec), "tensorboard", stage)


def safety_audit_uri(spec: ExperimentSpec) -> str:
    """Where the server's safety filter writes its decisions (``aigc_ray.safety.audit``)."""
    return join(experiment_uri(spec), "safety", "audit")


def feedback_uri(spec: ExperimentSpec) -> str:
    """Where the server writes feedback shards: ``serve.feedback_uri``, else ``<root>/<name>/feedback``."""
    return spec.serve.feedback_uri or join(experiment_uri(spec), "feedback")


def feedback_shards_uri(spec: ExperimentSpec) -> str:
    """Feedback turned into training shards (``multimodal/v1``) by ``aigc feedback ingest``."""
    return join(experiment_uri(spec), "feedback-shards")


def robustness_dir(spec: ExperimentSpec) -> str:
    """The ensemble's accuracy under adversarial attacks (``aigc_ray.ensemble.robustness``)."""
    return join(experiment_uri(spec), "robustness")


def report_dir(spec: ExperimentSpec) -> str:
    """The run report (HTML + Markdown)."""
    return join(experiment_uri(spec), "report")
