"""The embedded language-model corpus: English prose from Python's own installed documentation.

The docstrings of a fixed list of standard-library modules (module, class, function and method
docs) are available offline on every machine with Python. Documents are paragraphs-groups in a
fixed traversal order, assigned to splits by a seeded hash, so the corpus is deterministic for a
given seed and Python version (the version is recorded in the manifest).
"""

from __future__ import annotations

import hashlib
import importlib
import inspect
import sys
from collections.abc import Iterator

import pyarrow as pa

from .schema import TEXT_SCHEMA

SOURCE = f"python-{sys.version_info.major}.{sys.version_info.minor}-stdlib-docs"

MODULES = (
    "abc", "argparse", "array", "ast", "asyncio", "base64", "bisect", "calendar", "cmd", "codecs",
    "collections", "concurrent.futures", "configparser", "contextlib", "copy", "csv", "dataclasses",
    "datetime", "decimal", "difflib", "email.message", "enum", "filecmp", "fnmatch", "fractions",
    "ftplib", "functools", "getopt", "gettext", "glob", "gzip", "hashlib", "heapq", "hmac",
    "html.parser", "http.client", "http.server", "imaplib", "inspect", "io", "ipaddress",
    "itertools", "json", "logging", "lzma", "mailbox", "math", "mimetypes", "multiprocessing",
    "numbers", "operator", "optparse", "os", "pathlib", "pickle", "pkgutil", "platform", "plistlib",
    "pprint", "queue", "random", "re", "sched", "secrets", "selectors", "shelve", "shlex", "shutil",
    "signal", "smtplib", "socket", "socketserver", "sqlite3", "statistics", "string", "struct",
    "subprocess", "tarfile", "tempfile", "textwrap", "threading", "timeit", "tokenize", "traceback",
    "turtle", "typing", "unittest", "urllib.parse", "urllib.request", "uuid", "warnings", "wave",
    "weakref", "xml.dom.minidom", "zipfile", "zoneinfo",
)  # fmt: skip


def _docstrings(module_name: str) -> Iterator[tuple[str, str]]:
    """(qualified name, cleaned docstring) for a module and its public classes, functions, methods."""
    try:
        module = importlib.import_module(module_name)
    except Exception:  # noqa: BLE001 - a module missing on this platform (e.g. turtle without tk)
        return
    seen: set[int] = set()

    def emit(name: str, obj: object) -> Iterator[tuple[str, str]]:
        doc = inspect.getdoc(obj) if id(obj) not in seen else None
        seen.add(id(obj))
        if doc and len(doc) > 40:
            yield name, doc

    yield from emit(module_name, module)
    for attr in sorted(vars(module)):
        obj = getattr(module, attr)
        if attr.startswith("_") or getattr(obj, "__module__", None) != module.__name__:
            continue
        if inspect.isclass(obj) or inspect.isfunction(obj):
            yield from emit(f"{module_name}.{attr}", obj)
        if inspect.isclass(obj):
            for meth in sorted(vars(obj)):
                if not meth.startswith("_") and inspect.isfunction(vars(obj)[meth]):
                    yield from emit(f"{module_name}.{attr}.{meth}", vars(obj)[meth])


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
    docs = (item for module_name in MODULES for item in _docstrings(module_name))
    for name, doc in docs:
        if total + len(doc) > max_chars:
            break
        total += len(doc)
        rows["id"].append(name)
        rows["text"].append(doc)
        rows["split"].append(split_of(name, seed, fractions))
        rows["source"].append(SOURCE)
    table = pa.Table.from_pydict(rows, schema=TEXT_SCHEMA)
    yield from table.to_batches(max_chunksize=batch_rows)
