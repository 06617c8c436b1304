"""Where artifacts live, how Ray runs, and the multimodal data."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator

from .base import Section, absolute_local


class StorageSpec(Section):
    """Where artifacts live. Credentials never appear here: they come from the standard AWS chain."""

    root: str = Field("./runs", description="Local path or s3://bucket/prefix under which every artifact is written.")
    endpoint_url: str | None = Field(
        None, description="S3-compatible endpoint (e.g. http://127.0.0.1:9000); default: AWS_ENDPOINT_URL or AWS."
    )
    region: str | None = Field(None, description="S3 region; default: AWS_REGION / AWS_DEFAULT_REGION or us-east-1.")

    @field_validator("root")
    @classmethod
    def _root_not_empty(cls, v: str) -> str:
        if not v.strip():
            raise ValueError("must be a local path or an s3://bucket/prefix URI, not empty")
        return absolute_local(v)

    @field_validator("endpoint_url")
    @classmethod
    def _endpoint_has_scheme(cls, v: str | None) -> str | None:
        if v is not None and not v.startswith(("http://", "https://")):
            raise ValueError("must start with http:// or https://")
        return v


class RaySpec(Section):
    """How to reach Ray, and the environment every worker gets."""

    address: str | None = Field(
        None,
        description="Cluster to join ('auto', 'ray://host:10001', host:port); default: RAY_ADDRESS or an embedded local Ray.",
    )
    num_cpus: int | None = Field(None, ge=1, description="CPUs for an embedded local Ray (default: all).")
    data_cpus: float = Field(
        1.0,
        ge=0,
        description="CPUs kept free of training workers so Ray Data's read/decode tasks always run (2-core deadlock otherwise).",
    )
    env_vars: dict[str, str] = Field(
        default_factory=lambda: {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"},
        description="Environment for every Ray worker (runtime_env). Threads pinned: oversubscribed BLAS collapses throughput.",
    )

    @field_validator("env_vars")
    @classmethod
    def _no_secrets(cls, v: dict[str, str]) -> dict[str, str]:
        secret_words = {"SECRET", "PASSWORD", "PASSWD", "TOKEN", "CREDENTIALS", "APIKEY"}
        secret_like = [
            k
            for k in v
            if secret_words & set(k.upper().split("_")) or "ACCESS_KEY" in k.upper() or "API_KEY" in k.upper()
        ]
        if secret_like:
            raise ValueError(
                f"looks like a secret ({', '.join(secret_like)}); secrets never go in the spec — "
                "use the standard AWS chain, Ray's token file or the environment of the process"
            )
        return v


class SplitFractions(Section):
    train: float = Field(0.8, gt=0, lt=1)
    val: float = Field(0.1, ge=0, lt=1)
    test: float = Field(0.1, ge=0, lt=1)

    @model_validator(mode="after")
    def _sum_to_one(self) -> SplitFractions:
        total = self.train + self.val + self.test
        if abs(total - 1.0) > 1e-6:
            raise ValueError(f"train + val + test must sum to 1.0, got {total:g}")
        return self


class CaptionNoise(Section):
    """Fractions of captions that are deliberately unhelpful, so a model must use the image too."""

    vague: float = Field(0.15, ge=0, le=1, description="Captions that name no digit ('a handwritten digit').")
    wrong: float = Field(0.10, ge=0, le=1, description="Captions that name a different digit than the label.")

    @model_validator(mode="after")
    def _at_most_one(self) -> CaptionNoise:
        if self.vague + self.wrong > 1:
            raise ValueError(f"vague + wrong must be at most 1, got {self.vague + self.wrong:g}")
        return self


IMAGE_FORMATS = ("imagefolder", "webdataset", "parquet")


class SourceColumns(Section):
    """What the data calls the image, the caption and the label: Parquet column names, the keys
    of a WebDataset sample's KEY.json (KEY.txt and KEY.cls still win), the caption column of an
    ImageFolder's metadata file."""

    image: str = Field(
        "image",
        min_length=1,
        description="The image column (Parquet); for an ImageFolder, the metadata column naming each file "
        "(default: file_name).",
    )
    text: str | None = Field(
        "text",
        description="The caption column or key; null when the data has no captions: each is then written from "
        "data.prompt_template with the row's class name, vague and wrong in data.caption_noise's fractions "
        "(an ImageFolder without any metadata file is read so without it).",
    )
    label: str = Field("label", min_length=1, description="The label column or key (an index or a class name).")


class SourceSpec(Section):
    """The user's own image–caption–label data, imported into multimodal shards."""

    format: Literal["imagefolder", "webdataset", "parquet"] = Field(
        description="imagefolder: class folders (+ metadata.jsonl/csv/parquet captions, optional train/validation/test "
        "folders); webdataset: tar shards of KEY.png|jpg|jpeg|webp + KEY.txt + KEY.cls|KEY.json; parquet: "
        "columns image (bytes or {bytes, path}), text, label (int or class name)."
    )
    uri: str = Field(description="Local folder or s3://bucket/prefix holding the data.")
    columns: SourceColumns = Field(default_factory=SourceColumns)

    @field_validator("uri")
    @classmethod
    def _uri(cls, v: str) -> str:
        if not v.strip():
            raise ValueError("must be a local path or an s3://bucket/prefix URI, not empty")
        return absolute_local(v)


class CorpusSpec(Section):
    """The user's own pretraining text."""

    uri: str = Field(
        description="A file, folder or glob (local or s3://) of .txt (one document per file), .jsonl or .json "
        "(JSON lines: a 'text' field per line) or .parquet (a 'text' column) files; text files may be compressed "
        "(.gz, .zst)."
    )
    text_field: str = Field("text", min_length=1, description="The JSON field or Parquet column holding the text.")

    @field_validator("uri")
    @classmethod
    def _uri(cls, v: str) -> str:
        if not v.strip():
            raise ValueError("must be a local path, folder, glob or s3:// URI, not empty")
        return absolute_local(v)


class DataSpec(Section):
    """The multimodal data (embedded or imported), the corpus, and how Ray Data streams them."""

    dataset: Literal["digits", "shapes"] = Field(
        "digits",
        description="Embedded multimodal dataset to build when no source is given (no network needed): digits "
        "(8x8 grey handwritten digits, 10 classes) or shapes (32x32 RGB drawn shapes, 6 classes).",
    )
    source: SourceSpec | None = Field(None, description="Import your own multimodal data instead of an embedded set.")
    image_size: int | None = Field(
        None,
        ge=8,
        le=512,
        description="Imported images are resized (shorter side) and cropped (seeded) to this square size; "
        "default 32. The embedded sets keep their own size.",
    )
    on_bad_row: Literal["error", "skip"] = Field(
        "error",
        description="An undecodable image, unknown label or missing caption in imported data: error (naming the "
        "file) or skip (counted in the manifest and printed).",
    )
    corpus: CorpusSpec | None = Field(None, description="Your own pretraining text instead of the embedded corpus.")
    prompt_template: str | None = Field(
        None,
        description="How a class is asked for in words ({name}: its class name): the text-to-image GAN's "
        "evaluation prompts and the served demo's. Default: 'a handwritten {name}' for the digits, 'a {name}' "
        "for other data.",
    )

    @field_validator("prompt_template")
    @classmethod
    def _names_the_class(cls, v: str | None) -> str | None:
        if v is not None and "{name}" not in v:
            raise ValueError("must contain {name} (where the class name goes), e.g. 'a photo of a {name}'")
        return v

    uri: str | None = Field(None, description="Where shards live; default: <storage.root>/data.")

    @field_validator("uri")
    @classmethod
    def _absolute_uri(cls, v: str | None) -> str | None:
        return absolute_local(v) if v else v

    seed: int = Field(0, description="Seed for captions, splits and shuffling.")
    rows_per_shard: int = Field(256, ge=1, description="Rows per Parquet shard.")
    repeat: int = Field(1, ge=1, description="Write the embedded dataset this many times (bigger data for benchmarks).")
    splits: SplitFractions = Field(default_factory=SplitFractions)
    caption_noise: CaptionNoise = Field(default_factory=CaptionNoise)
    corpus_max_chars: int = Field(2_000_000, ge=10_000, description="Upper bound on the pretraining text corpus size.")
    vocab_size: int = Field(4096, ge=300, le=200_000, description="Byte-level BPE tokenizer vocabulary size.")
    max_seq_len: int = Field(32, ge=4, description="Tokens per caption after padding/truncation.")
    batch_size: int = Field(64, ge=1, description="Rows per batch streamed to a worker.")
    shuffle: Literal["none", "files", "global"] = Field(
        "global", description="none: file order; files: shuffle shard order; global: full seeded row shuffle."
    )
    read_unit_mb: float = Field(
        4.0,
        gt=0,
        description="Target size of one Ray Data read task: MiB of shard files (v1), in-memory MiB (v2). "
        "Ray v2 packs small shards into 128 MiB units by default: one task, no parallelism, for a "
        "dataset of small shards.",
    )
    footer_readers: int = Field(
        2,
        ge=1,
        description="Actors Ray Data starts to read Parquet footers per epoch (its default, 32, "
        "costs seconds and dozens of processes on a small machine). Read by parquet_reader v2 only.",
    )
    parquet_reader: Literal["v1", "v2"] = Field(
        "v1",
        description="Ray Data's Parquet reader. v1: planned in the driver, footers read inside its read "
        "tasks (one task per read_unit_mb of files, at least one per CPU, at most one per file): a pass "
        "over one shard starts in ~0.15 s. v2 (Ray 2.60's own default): footers read on footer_readers "
        "actors started afresh for every pass (~1.4 s before the first row on 2 cores), row groups "
        "packed into read_unit_mb units; for shard sets of many thousands of files.",
    )
    equal_shards: bool = Field(
        True,
        description="Every training worker sees the same row count (synchronous training needs it; "
        "drops fewer than num_workers rows per epoch). false: every row exactly once.",
    )
