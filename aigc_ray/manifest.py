"""Artifact manifests: what an artifact holds and what it was made from.

Every artifact (a shard set, a tokenizer, a model export, a sweep's results, an ensemble) is a folder with a
``_manifest.json`` written last: the manifest is the commit marker, so an artifact without one
is incomplete and is never read. The manifest records the spec hash, the fingerprints of its
inputs, the code version and the time, so any served answer can be traced to its data.
"""

from __future__ import annotations

import functools
import hashlib
import json
import subprocess
import time
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from . import __version__
from .storage import Storage, StorageError, join

MANIFEST_NAME = "_manifest.json"


class FileEntry(BaseModel):
    model_config = ConfigDict(extra="forbid")

    sha256: str
    bytes: int
    rows: int | None = None


class Manifest(BaseModel):
    """The contents and lineage of one artifact folder."""

    model_config = ConfigDict(extra="forbid")

    kind: str = Field(description="What the artifact is, e.g. 'shards/multimodal-v1', 'tokenizer'.")
    spec_hash: str = Field(description="Hash of the spec sections that produced it.")
    inputs: dict[str, str] = Field(default_factory=dict, description="Input URI -> its fingerprint.")
    code_version: str = Field(default_factory=lambda: code_version())
    created_at: str = Field(default_factory=lambda: time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
    files: dict[str, FileEntry] = Field(default_factory=dict, description="Relative path -> content hash.")
    meta: dict[str, Any] = Field(default_factory=dict)

    @property
    def fingerprint(self) -> str:
        """Content fingerprint: the kind and every file's hash (not the time, so rebuilds agree)."""
        content = {"kind": self.kind, "files": {k: v.sha256 for k, v in sorted(self.files.items())}}
        return hashlib.sha256(json.dumps(content, sort_keys=True).encode()).hexdigest()


@functools.cache
def code_version() -> str:
    """Package version plus the git commit of the checkout it runs from (``-dirty`` if modified)."""
    repo = Path(__file__).resolve().parent.parent
    try:
        sha = subprocess.run(
            ["git", "-C", str(repo), "rev-parse", "--short=12", "HEAD"], capture_output=True, text=True, timeout=5
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(repo), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=5,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        sha, dirty = "", ""
    return f"{__version__}+g{sha}{'-dirty' if dirty else ''}" if sha else __version__


def folder_fingerprint(storage: Storage, uri: str) -> str:
    """sha256 over a model folder's config.json and its files' names and sizes (weights are not
    re-read: a changed weight file changes its size or the user replaced the folder)."""
    h = hashlib.sha256(storage.read_bytes(join(uri, "config.json")))
    for f in sorted(storage.list_files(uri)):
        h.update(f"{f.rsplit('/', 1)[-1]}:{storage.size(f)}".encode())
    return "sha256:" + h.hexdigest()


def manifest_uri(artifact_uri: str) -> str:
    return join(artifact_uri, MANIFEST_NAME)


def write_manifest(storage: Storage, artifact_uri: str, manifest: Manifest) -> None:
    """Commit an artifact by writing its manifest (atomically, last)."""
    storage.write_bytes(manifest_uri(artifact_uri), (manifest.model_dump_json(indent=2) + "\n").encode())


def read_manifest(storage: Storage, artifact_uri: str) -> Manifest | None:
    """The artifact's manifest, or None when it was never committed; raises StorageError if corrupt."""
    uri = manifest_uri(artifact_uri)
    if not storage.exists(uri):
        return None
    try:
        return Manifest.model_validate_json(storage.read_bytes(uri))
    except ValidationError as exc:
        raise StorageError(f"{uri}: corrupt manifest: {exc.errors(include_url=False)[0]['msg']}") from None


def publish_directory(storage: Storage, local_dir: Path, uri: str, **manifest_fields) -> Manifest:
    """Upload every file of ``local_dir`` to ``uri``, commit a manifest listing them (written
    last), then delete files an earlier version listed that this one does not."""
    files: dict[str, FileEntry] = {}
    for path in sorted(p for p in Path(local_dir).rglob("*") if p.is_file()):
        data = path.read_bytes()
        rel = path.relative_to(local_dir).as_posix()
        files[rel] = FileEntry(sha256=storage.write_bytes(join(uri, rel), data), bytes=len(data))
    previous = read_manifest(storage, uri)
    manifest = Manifest(files=files, **manifest_fields)
    write_manifest(storage, uri, manifest)
    for stale in set(previous.files) - set(files) if previous else ():
        storage.delete(join(uri, stale))
    return manifest
