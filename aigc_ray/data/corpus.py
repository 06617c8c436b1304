"""The embedded language-model corpus: English prose from Python's own installed documentation.

The docstrings of a fixed list of standard-library modules (module, class, function and method
docs) are available offline on every machine with Python. Each docstring is one document, in a
fixed traversal order, assigned to splits by a seeded hash, so the corpus is deterministic for a
given seed and Python version (the version is recorded in the manifest).
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pyarrow as pa

from .schema import TEXT_SCHEMA

SOURCE = f"python-{sys.version_info.major}.{sys.version_info.minor}-stdlib-docs"


def stdlib_docs() -> Iterator[tuple[str, str]]:
    """(qualified name, docstring) pairs, extracted in a clean interpreter (see stdlib_docs.py)."""
    script = Path(__file__).with_name("stdlib_docs.py")
    out = subprocess.run(
        [sys.executable, "-I", "-S", str(script)], capture_output=True, text=True, check=True, timeout=120
    )
    for line in out.stdout.splitlines():
        name, doc = json.loads(line)
        yield name, doc


def split_of(doc_id: str, seed: int, fractions: dict[str, float]) -> str:
    """Seeded, stable split assignment by hashing the document id."""
    h = int.from_bytes(hashlib.sha256(f"{seed}:{doc_id}".encode()).digest()[:8], "big") / 2**64
    if h < fractions["train"]:
        return "train"
    return "val" if h < fractions["train"] + fractions["val"] else "test"


def corpus_batches(
    seed: int, fractions: dict[str, float], max_chars: int, batch_rows: int = 512
) -> Iterator[pa.RecordBatch]:
    """The corpus in the text/v1 schema, at most ``max_chars`` characters of text in total."""
    rows: dict[str, list] = {name: [] for name in TEXT_SCHEMA.names}
    total = 0
    for name, doc in stdlib_docs():
        if total + len(doc) > max_chars:
            break
        total += len(doc)
        rows["id"].append(name)
        rows["text"].append(doc)
        rows["split"].append(split_of(name, seed, fractions))
        rows["source"].append(SOURCE)
    table = pa.Table.from_pydict(rows, schema=TEXT_SCHEMA)
    yield from table.to_batches(max_chunksize=batch_rows)
