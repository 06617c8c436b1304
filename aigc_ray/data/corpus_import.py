"""Importing the user's pretraining text (``data.corpus``) as a text/v1 shard set.

Files by URI, folder or glob, local or S3: ``.txt`` (the file is the document; long files are
cut at paragraph breaks into documents of at most ``MAX_DOC_CHARS``), ``.jsonl`` or ``.json``
(JSON lines, as C4 and The Pile ship them: one document per line, its ``text`` field; or one
JSON array of such objects, as many exports write a whole file) and
``.parquet`` (a ``text`` column); ``data.corpus.text_field`` renames the field. Text files may be
compressed (``.gz``, ``.zst``: ``train.jsonl.zst``). Files are read one at a time
and streamed to the shard writer, so a corpus larger than memory imports. Splits are seeded by
document id (``corpus.split_of``), as for the embedded corpus.
"""

from __future__ import annotations

import io
import json
import posixpath
from collections.abc import Iterator

import pyarrow as pa

from ..storage import Storage
from .corpus import split_of
from .image_sources import SourceError
from .schema import TEXT_SCHEMA, record_batches

PLAIN_SUFFIXES = (".txt", ".jsonl", ".json")
COMPRESSIONS = {".gz": "gzip", ".zst": "zstd"}
TEXT_SUFFIXES = (
    *PLAIN_SUFFIXES,
    ".parquet",
    *(s + c for s in PLAIN_SUFFIXES for c in COMPRESSIONS),
)
MAX_DOC_CHARS = 20_000


class CorpusError(SourceError):
    """A corpus file cannot be read as text; the message names it."""


def _paragraph_chunks(text: str) -> Iterator[str]:
    """``text`` in pieces of at most ``MAX_DOC_CHARS``, cut at blank lines where possible."""
    piece: list[str] = []
    size = 0
    for para in text.split("\n\n"):
        while len(para) > MAX_DOC_CHARS:  # one huge paragraph: cut it hard
            if piece:
                yield "\n\n".join(piece)
                piece, size = [], 0
            yield para[:MAX_DOC_CHARS]
            para = para[MAX_DOC_CHARS:]
        if size + len(para) > MAX_DOC_CHARS and piece:
            yield "\n\n".join(piece)
            piece, size = [], 0
        piece.append(para)
        size += len(para) + 2
    if any(p.strip() for p in piece):
        yield "\n\n".join(piece)


def _file_bytes(storage: Storage, uri: str) -> tuple[bytes, str]:
    """A corpus file's bytes, decompressed, and its name without the compression suffix."""
    name = posixpath.basename(uri)
    codec = next((c for suffix, c in COMPRESSIONS.items() if name.endswith(suffix)), None)
    data = storage.read_bytes(uri)
    if codec is None:
        return data, name
    try:
        data = pa.CompressedInputStream(pa.BufferReader(data), codec).read()
    except (pa.ArrowException, OSError) as exc:
        raise CorpusError(f"{uri}: not a readable {codec} file ({exc})") from None
    return data, name.rsplit(".", 1)[0]


def file_documents(storage: Storage, uri: str, text_field: str = "text") -> Iterator[tuple[str, str]]:
    """(document id, text) of one corpus file (``text_field``: the JSON field or Parquet column)."""
    name = posixpath.basename(uri)
    if uri.endswith(".parquet"):
        yield from _parquet_documents(storage, uri, name, text_field)
        return
    data, inner = _file_bytes(storage, uri)
    try:
        content = data.decode("utf-8-sig")  # a byte-order mark (Windows editors write one) is not text
    except UnicodeDecodeError as exc:
        raise CorpusError(f"{uri}: not UTF-8 text (byte {exc.start})") from None
    if inner.endswith(".txt"):
        for i, chunk in enumerate(_paragraph_chunks(content)):
            if chunk.strip():
                yield f"{name}#{i}", chunk
        return
    if content.lstrip().startswith("["):  # one JSON array of documents, not JSON lines
        yield from _json_array_documents(uri, name, content, text_field)
        return
    for n, line in enumerate(content.splitlines(), 1):  # JSON lines (.jsonl, or .json as C4 names them)
        if not line.strip():
            continue
        try:
            text = json.loads(line)[text_field]
        except (json.JSONDecodeError, KeyError, TypeError):
            raise CorpusError(
                f"{uri} line {n}: expected a JSON object with a {text_field!r} field (data.corpus.text_field)"
            ) from None
        if isinstance(text, str) and text.strip():
            yield f"{name}#{n}", text


def _json_array_documents(uri: str, name: str, content: str, text_field: str) -> Iterator[tuple[str, str]]:
    try:
        items = json.loads(content)
    except json.JSONDecodeError as exc:
        raise CorpusError(f"{uri}: not valid JSON (line {exc.lineno}: {exc.msg})") from None
    for n, item in enumerate(items):
        if not isinstance(item, dict) or text_field not in item:
            raise CorpusError(
                f"{uri} item {n}: expected a JSON object with a {text_field!r} field (data.corpus.text_field)"
            )
        text = item[text_field]
        if isinstance(text, str) and text.strip():
            yield f"{name}#{n}", text


def _parquet_documents(storage: Storage, uri: str, name: str, text_field: str) -> Iterator[tuple[str, str]]:
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(io.BytesIO(storage.read_bytes(uri)), columns=[text_field])
    except (pa.ArrowException, OSError) as exc:
        raise CorpusError(f"{uri}: not a Parquet file with a {text_field!r} column ({exc})") from None
    for n, text in enumerate(table.column(text_field).to_pylist()):
        if isinstance(text, str) and text.strip():
            yield f"{name}#{n}", text


def import_corpus_batches(
    storage: Storage,
    files: list[str],
    seed: int,
    fractions: dict[str, float],
    max_chars: int,
    batch_rows: int = 256,
    text_field: str = "text",
) -> Iterator[pa.RecordBatch]:
    """The documents of ``files`` (those with a known suffix) as text/v1 record batches, at most
    ``max_chars`` characters in all, ids unique (``file#n``, the path kept where names repeat)."""
    # hidden files skipped, as for images: a Mac's ._notes.txt is a resource fork, not text
    usable = [f for f in files if f.endswith(TEXT_SUFFIXES) and not posixpath.basename(f).startswith((".", "__"))]
    if not usable:
        raise CorpusError(f"no {', '.join(TEXT_SUFFIXES)} files among the {len(files)} matched")
    names = [posixpath.basename(f) for f in usable]
    unique = len(set(names)) == len(names)

    def rows() -> Iterator[dict]:
        total = 0
        for f in usable:
            prefix = "" if unique else posixpath.dirname(f).lstrip("/") + "/"
            for doc_id, text in file_documents(storage, f, text_field):
                if total + len(text) > max_chars:
                    break  # the rest of this file; a later file's documents may still fit
                total += len(text)
                yield {
                    "id": prefix + doc_id,
                    "text": text,
                    "split": split_of(prefix + doc_id, seed, fractions),
                    "source": f,
                }
            if total >= max_chars:
                return

    yield from record_batches(rows(), TEXT_SCHEMA, batch_rows)
