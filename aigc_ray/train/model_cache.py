"""The node-local copy of a base model on S3 that fine-tuning and continued pretraining load.

Each node keeps one copy per base and content (``$AIGC_MODEL_CACHE``, else ``<tmp>/aigc-models``),
shared by the driver and every worker there. The cache is bounded: a team trying one base after
another would otherwise fill the node's disk with 14 GB copies of bases nobody uses any more. It
holds at most ``$AIGC_MODEL_CACHE_GB`` (50 by default) and, to make room for a new copy, removes
the copies used longest ago — never one used within the last hour (a process on the node may be
loading it) — and the half-made copies of processes that died while copying (older than a day).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
import time
from pathlib import Path

DEFAULT_BUDGET_GB = 50.0
IN_USE_S = 3600  # a copy used this recently may be being loaded by another process on the node
ABANDONED_S = 86400  # a half-made copy this old belongs to a process that died copying it


def cache_root() -> Path:
    return Path(os.environ.get("AIGC_MODEL_CACHE") or Path(tempfile.gettempdir(), "aigc-models"))


def cache_budget() -> int:
    """The cache's bound in bytes, from ``$AIGC_MODEL_CACHE_GB``."""
    raw = os.environ.get("AIGC_MODEL_CACHE_GB", "").strip()
    try:
        gb = float(raw) if raw else DEFAULT_BUDGET_GB
    except ValueError:
        gb = -1.0
    if not gb >= 0:
        raise ValueError(f"AIGC_MODEL_CACHE_GB={raw!r}: expected a number of GB >= 0 (the model cache's bound)")
    return int(gb * 2**30)


def _bytes(folder: Path) -> int:
    return sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())


def prune(root: Path, room: int, budget: int, now: float | None = None) -> list[str]:
    """Remove copies, least recently used first, until those left and ``room`` more bytes fit
    in ``budget``; copies used within ``IN_USE_S`` stay whatever the budget. Also removes
    half-made copies older than ``ABANDONED_S``. Returns the names removed."""
    now = time.time() if now is None else now
    removed = []
    copies = []
    for entry in root.iterdir() if root.is_dir() else []:
        if not entry.is_dir():
            continue
        mtime = entry.stat().st_mtime
        if entry.name.startswith("."):  # a copy being made (mkdtemp), or abandoned
            if now - mtime > ABANDONED_S:
                shutil.rmtree(entry, ignore_errors=True)
                removed.append(entry.name)
            continue
        copies.append((mtime, entry, _bytes(entry)))
    held = sum(size for _, _, size in copies)
    for mtime, entry, size in sorted(copies, key=lambda c: c[0]):
        if held + room <= budget:
            break
        if now - mtime < IN_USE_S:
            continue
        shutil.rmtree(entry, ignore_errors=True)
        removed.append(entry.name)
        held -= size
    return removed


def local_model_dir(init: dict) -> str:
    """A local folder holding the base model: a path as is; an S3 folder copied once per node and
    content into the model cache, keyed by its URI and fingerprint — a copy per call would leave a
    multi-GB base in /tmp for every worker of every run. The copy is renamed into place whole, so
    a process never reads a half-copied model; each use marks it recently used."""
    from ..manifest import folder_fingerprint
    from ..models.tuning import model_files
    from ..storage import Storage, parse_uri

    if init.get("path"):
        return init["path"]
    if parse_uri(init["uri"]).scheme == "file":
        return parse_uri(init["uri"]).path

    storage = Storage(init["s3"])
    uri = init["uri"]
    key = hashlib.sha256(f"{uri}\n{folder_fingerprint(storage, uri)}".encode()).hexdigest()[:24]
    root = cache_root()
    final = root / key
    if final.is_dir():
        os.utime(final)  # recently used: not what pruning removes first
        return str(final)
    budget = cache_budget()
    root.mkdir(parents=True, exist_ok=True)
    prefix = len(uri.rstrip("/")) + 1
    sizes = {f[prefix:]: size for f, size, _ in storage.file_stats(uri)}  # one listing, no request per file
    incoming = sum(sizes[n] for n in model_files(list(sizes)))
    prune(root, incoming, budget)  # room first: a full disk would fail the copy half-way
    partial = Path(tempfile.mkdtemp(prefix=f".{key}-", dir=root))
    try:
        storage.download(uri, partial, only=model_files)  # not the copies in other formats
        try:
            partial.rename(final)
        except OSError:  # another process on this node put its copy there first
            shutil.rmtree(partial, ignore_errors=True)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    return str(final)
