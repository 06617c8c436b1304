"""Writing, listing and validating shard sets (Parquet files plus a manifest) on any storage URI.

Shard files are content-addressed (``part-00003-1a2b3c4d.parquet``): a rebuild never overwrites
a file the current manifest points to, the new manifest replaces the old one atomically, and
only then are files that no manifest lists removed. A reader therefore always sees one complete
shard set, old or new, never a mixture.
"""

from __future__ import annotations

import collections
import io
from collections.abc import Iterable
from dataclasses import dataclass, field

import pyarrow as pa
import pyarrow.parquet as pq

from .. import progress
from ..manifest import FileEntry, Manifest, read_manifest, write_manifest
from ..storage import Storage, StorageError, join, sha256_bytes
from .images import decode_png
from .schema import CAPTION_KINDS, SCHEMAS, SPLITS, detect_kind, schema_problems


def _parquet_bytes(table: pa.Table) -> bytes:
    buf = io.BytesIO()
    pq.write_table(table, buf, compression="zstd")
    return buf.getvalue()


def _chunks(batches: Iterable[pa.RecordBatch], schema: pa.Schema, rows: int) -> Iterable[pa.Table]:
    """Regroup record batches into tables of exactly ``rows`` rows (the last may be shorter)."""
    pending: list[pa.RecordBatch] = []
    count = 0
    for batch in batches:
        while batch.num_rows:
            take = min(rows - count, batch.num_rows)
            pending.append(batch.slice(0, take))
            batch, count = batch.slice(take), count + take
            if count == rows:
                yield pa.Table.from_batches(pending, schema=schema)
                pending, count = [], 0
    if count:
        yield pa.Table.from_batches(pending, schema=schema)


def write_shards(
    storage: Storage,
    uri: str,
    batches: Iterable[pa.RecordBatch],
    kind: str,
    rows_per_shard: int,
    spec_hash: str,
    inputs: dict[str, str] | None = None,
    meta: dict | None = None,
) -> Manifest:
    """Write ``batches`` as a shard set at ``uri`` and commit it with a manifest; returns the manifest.

    All or nothing: if ``batches`` raises part-way (a bad row in an import, a crash), the files
    this call wrote are removed and the previous set, if any, stays as it was."""
    schema = SCHEMAS[kind]
    files: dict[str, FileEntry] = {}
    split_counts: collections.Counter[str] = collections.Counter()
    previous = read_manifest(storage, uri)
    keep = set(previous.files) if previous is not None else set()
    try:
        for i, table in enumerate(_chunks(batches, schema, rows_per_shard)):
            data = _parquet_bytes(table)
            digest = sha256_bytes(data)
            name = f"part-{i:05d}-{digest[:8]}.parquet"
            storage.write_bytes(join(uri, name), data)
            files[name] = FileEntry(sha256=digest, bytes=len(data), rows=table.num_rows)
            split_counts.update(table.column("split").to_pylist())
            progress.emit(f"{kind}: {sum(split_counts.values()):,} rows written in {len(files)} shard(s)")
    except BaseException:
        for name in set(files) - keep:
            storage.delete(join(uri, name))
        raise
    manifest = Manifest(
        kind=f"shards/{kind}",
        spec_hash=spec_hash,
        inputs=inputs or {},
        files=files,
        meta={"rows": sum(split_counts.values()), "splits": dict(sorted(split_counts.items())), **(meta or {})},
    )
    write_manifest(storage, uri, manifest)
    for stale in storage.list_files(uri, suffix=".parquet"):
        if stale.rsplit("/", 1)[-1] not in files:
            storage.delete(stale)
    return manifest


class ShardError(StorageError):
    """A committed shard file is missing or is not what its manifest says (truncated, overwritten);
    the message names the file and what is wrong (the CLI prints it as one line)."""

    def __init__(self, uri: str, problem: str):
        super().__init__(f"{uri}: {problem}; run `aigc data build` to rebuild it")
        self.uri, self.problem = uri, problem


# Files whose bytes were checked against their manifest in this process: (URI, sha256). Each
# file is hashed the first time a process reads its set, not on every epoch.
_VERIFIED: set[tuple[str, str]] = set()


def shard_problem(
    storage: Storage, uri: str, entry: FileEntry, size: int | None = None, data: bytes | None = None
) -> str | None:
    """What is wrong with the committed file at ``uri`` (None: it is what the manifest says).
    ``size``: its size from a listing, to skip a read when that already differs; ``data``: its
    bytes when the caller has read them anyway (then nothing is read here)."""
    if (uri, entry.sha256) in _VERIFIED:
        return None
    if data is not None:
        size = len(data)
    elif size is None:
        size = storage.size(uri)
    if size < 0:
        return "missing (the manifest lists it)"
    if size != entry.bytes:
        return f"{size} bytes, the manifest says {entry.bytes} (truncated or overwritten since it was built)"
    if sha256_bytes(storage.read_bytes(uri) if data is None else data) != entry.sha256:
        return "content differs from the manifest's hash (modified since it was built)"
    _VERIFIED.add((uri, entry.sha256))
    return None


def read_checked(storage: Storage, uri: str, entry: FileEntry | None) -> bytes:
    """A shard's bytes, checked against its manifest entry (when it has one) on this very read."""
    try:
        data = storage.read_bytes(uri)
    except StorageError:
        if entry is None:
            raise
        raise ShardError(uri, "missing (the manifest lists it)") from None
    if entry is not None and (problem := shard_problem(storage, uri, entry, data=data)):
        raise ShardError(uri, problem)
    return data


def verify_shards(storage: Storage, uri: str, manifest: Manifest) -> None:
    """Check every file of a committed set against its manifest (sizes from one listing, then
    each file's sha256 once per process); ShardError names the first bad file."""
    sizes = {u.rsplit("/", 1)[-1]: size for u, size, _ in storage.file_stats(uri)}
    for name, entry in sorted(manifest.files.items()):
        problem = shard_problem(storage, join(uri, name), entry, sizes.get(name, -1))
        if problem:
            raise ShardError(join(uri, name), problem)


def shard_files(storage: Storage, uri: str, verify: bool = True) -> list[str]:
    """The shard files of a set: those its manifest lists (checked against it, see
    ``verify_shards``), else every ``*.parquet`` under ``uri``."""
    manifest = read_manifest(storage, uri)
    if manifest is not None:
        if verify:
            verify_shards(storage, uri, manifest)
        return [join(uri, name) for name in sorted(manifest.files)]
    files = storage.list_files(uri, suffix=".parquet")
    if not files:
        raise StorageError(f"{uri}: no shard set here (no {join(uri, '_manifest.json')} and no .parquet files)")
    return files


def split_table(storage: Storage, uri: str, split: str, columns: list[str]) -> pa.Table:
    """One split of a shard set read in-process (small data: tokenizer training, evaluation,
    fine-tuning examples), rows in shard order — the deterministic order every reader agrees on."""
    import pyarrow.compute as pc

    manifest = read_manifest(storage, uri)
    tables = []
    for file_uri in shard_files(storage, uri, verify=False):  # checked on the bytes read here
        entry = manifest.files[file_uri.rsplit("/", 1)[-1]] if manifest is not None else None
        data = read_checked(storage, file_uri, entry)
        table = pq.read_table(pa.BufferReader(data), columns=[*columns, "split"])
        tables.append(table.filter(pc.equal(table["split"], split)).select(columns))
    return pa.concat_tables(tables)


@dataclass
class ValidationReport:
    """What ``aigc data validate`` found: per-split counts and every fault, by file and row."""

    uri: str
    kind: str | None = None
    files: int = 0
    rows: int = 0
    splits: collections.Counter = field(default_factory=collections.Counter)
    faults: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.faults


def _row_faults(table: pa.Table, kind: str) -> Iterable[tuple[int, str]]:
    """(row index, problem) for each row whose values break the schema's contract."""
    cols = {name: table.column(name).to_pylist() for name in SCHEMAS[kind].names}
    for i in range(table.num_rows):
        for name, values in cols.items():
            if values[i] is None:
                yield i, f"column '{name}' is null"
        if cols["split"][i] not in SPLITS:
            yield i, f"split {cols['split'][i]!r} is not one of {', '.join(SPLITS)}"
        if kind != "multimodal/v1":
            continue
        if cols["caption_kind"][i] not in CAPTION_KINDS:
            yield i, f"caption_kind {cols['caption_kind'][i]!r} is not one of {', '.join(CAPTION_KINDS)}"
        if cols["image"][i] is None:
            continue
        try:
            shape = list(decode_png(cols["image"][i]).shape)
        except ValueError as exc:
            yield i, f"image: {exc}"
            continue
        if shape != cols["image_shape"][i]:
            yield i, f"image decodes to shape {shape} but image_shape says {cols['image_shape'][i]}"


def validate_shards(storage: Storage, uri: str) -> ValidationReport:
    """Check every shard under ``uri``: readable, schema, decodable images, ids unique, counts and
    hashes against the manifest. Never raises for a bad shard: faults go in the report."""
    report = ValidationReport(uri)
    manifest = read_manifest(storage, uri)
    files = shard_files(storage, uri, verify=False)  # every fault goes in the report instead
    seen_ids: dict[str, str] = {}
    for file_uri in files:
        name = file_uri.rsplit("/", 1)[-1]
        report.files += 1
        try:
            data = storage.read_bytes(file_uri)
            table = pq.read_table(pa.BufferReader(data))
        except (StorageError, pa.ArrowException, OSError) as exc:
            report.faults.append(f"{file_uri}: not a readable Parquet file: {exc}")
            continue
        kind = detect_kind(table.schema)
        report.kind = report.kind or kind
        if kind not in SCHEMAS:
            report.faults.append(f"{file_uri}: unknown shard kind {kind!r}")
            continue
        problems = schema_problems(table.schema, kind)
        if problems:
            report.faults.extend(f"{file_uri}: wrong schema: {p}" for p in problems)
            continue
        if manifest is not None:
            entry = manifest.files[name]
            if entry.sha256 != sha256_bytes(data):
                report.faults.append(f"{file_uri}: content hash differs from the manifest (modified after build)")
            if entry.rows != table.num_rows:
                report.faults.append(f"{file_uri}: {table.num_rows} rows, manifest says {entry.rows}")
        report.faults.extend(f"{file_uri} row {i}: {msg}" for i, msg in _row_faults(table, kind))
        for i, row_id in enumerate(table.column("id").to_pylist()):
            if row_id in seen_ids:
                report.faults.append(f"{file_uri} row {i}: duplicate id {row_id!r} (also in {seen_ids[row_id]})")
            seen_ids[row_id] = name
        report.rows += table.num_rows
        report.splits.update(table.column("split").to_pylist())
    if manifest is not None and report.rows != manifest.meta.get("rows", report.rows) and not report.faults:
        report.faults.append(f"{uri}: {report.rows} rows in total, manifest says {manifest.meta['rows']}")
    return report
