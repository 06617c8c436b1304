"""Reading the user's own image–caption–label data in the three layouts people keep it in.

Each format is listed cheaply in the driver as *units* (a batch of image files, one tar shard,
one Parquet file) and each unit is read where Ray Data runs it, yielding ``Example``s: the raw
image bytes with their caption, label and split as the data states them. Nothing here decodes
pixels or decides class indices (``image_import`` does, once it knows every class).

- ``imagefolder`` (Hugging Face's ImageFolder): ``[split/]class/file.png``; captions in a
  ``metadata.jsonl``, ``metadata.csv`` or ``metadata.parquet`` (``file_name`` + ``text``) in the
  split or root folder, whose ``label`` column, where a row has one, names the class instead of a
  class folder.
- ``webdataset``: ``*.tar`` shards of ``KEY.<image>`` + ``KEY.txt`` + ``KEY.cls`` (class index;
  names from a ``classes.txt`` beside the shards) or ``KEY.json`` (``{"label": name}``).
- ``parquet``: columns ``image`` (bytes, ``{bytes, path}`` as ``datasets`` writes it, or a path
  or URI of the image file, relative to the Parquet file's folder), ``text``,
  ``label`` (int, named by a ``datasets`` ClassLabel in the file's metadata, or a class name).

``data.source.columns`` renames the three (CIFAR's ``img``, a LAION shard's ``caption`` key in
KEY.json) or says the data has no captions at all (``text: null``; an ImageFolder without any
metadata file is taken as such).
"""

from __future__ import annotations

import csv
import io
import json
import posixpath
import re
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass, field

from ..storage import Storage, StorageError, join

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff")
TAR_SUFFIXES = (".tar", ".tar.gz", ".tgz")
IMAGE_MEMBERS = tuple(e.lstrip(".") for e in IMAGE_EXTENSIONS)  # a WebDataset sample's image: KEY.jpg, ...
SPLIT_FOLDERS = {"train": "train", "validation": "val", "val": "val", "valid": "val", "dev": "val", "test": "test"}
FILES_PER_UNIT = 64
METADATA_FILES = ("metadata.jsonl", "metadata.csv", "metadata.parquet")  # as datasets' ImageFolder reads
# What the data calls each part (``data.source.columns``): Parquet columns, the keys of a
# WebDataset sample's KEY.json, the caption column of an ImageFolder's metadata file. A text of
# None: the data has no captions (the import writes them from the class names).
DEFAULT_COLUMNS = {"image": "image", "text": "text", "label": "label"}


class SourceError(ValueError):
    """The user's data (images or corpus) cannot be imported as it is; the message names the file
    and the problem (the CLI prints it as one line)."""


@dataclass
class Example:
    key: str  # unique within the source, stable across imports (becomes the row id)
    origin: str  # the file (and member) it came from, for error messages
    image: bytes | None
    text: str | None
    label: int | str | None  # a class index or a class name, as the data gives it
    split: str | None = None  # from the data's own layout; None: the spec's fractions decide
    problem: str | None = None  # why the image could not be had (a path naming no file)


@dataclass
class Unit:
    """One piece of import work: a batch of image files, a tar shard or a Parquet file."""

    kind: str
    uris: list[str]
    # imagefolder: per file, what the listing already knows (class, split, caption)
    known: list[dict] = field(default_factory=list)
    columns: dict = field(default_factory=lambda: dict(DEFAULT_COLUMNS))
    split: str | None = None  # a shard's split from its path (train-00000-of-00001.parquet, test/x.tar)


@dataclass
class Listing:
    units: list[Unit]
    class_names: list[str] | None  # known from the layout (imagefolder folders, classes.txt, ClassLabel)
    files: int  # data files found
    # False where nothing in the data could hold a caption (an ImageFolder with no metadata file):
    # the import then writes them from the class names, as with ``data.source.columns.text: null``
    captioned: bool = True


def _rel(uri: str, root: str) -> str:
    return uri[len(root.rstrip("/")) + 1 :]


def split_of_path(rel: str) -> str | None:
    """The split a shard's path names, as the Hugging Face Hub lays out Parquet and WebDataset
    files: a folder (``test/part-0.parquet``) or the file name's first word
    (``train-00000-of-00004.parquet``, ``validation_0.tar``); None when it names none."""
    *folders, name = rel.split("/")
    words = [*folders, re.split(r"[-_.]", name, maxsplit=1)[0]]
    return next((SPLIT_FOLDERS[w.lower()] for w in words if w.lower() in SPLIT_FOLDERS), None)


# --------------------------------------------------------------------------- imagefolder


def _metadata_rows(storage: Storage, uri: str) -> list:
    """The rows of one metadata.jsonl / metadata.csv / metadata.parquet, as dicts."""
    if uri.endswith(".parquet"):
        import pyarrow as pa
        import pyarrow.parquet as pq

        try:
            return pq.read_table(io.BytesIO(storage.read_bytes(uri))).to_pylist()
        except pa.ArrowException as exc:
            raise SourceError(f"{uri}: not a readable Parquet file ({exc})") from None
    raw = storage.read_bytes(uri).decode("utf-8-sig")
    if uri.endswith(".csv"):
        return list(csv.DictReader(io.StringIO(raw)))
    rows = []
    for n, line in enumerate(raw.splitlines(), 1):
        if line.strip():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as exc:
                raise SourceError(f"{uri} line {n}: not JSON ({exc.msg})") from None
    return rows


def _file_name_key(row: dict, image_column: str) -> str | None:
    """The column naming the image: ``columns.image`` where the spec renames it (a labelling
    tool's ``filename``), else ``file_name`` or ``<feature>_file_name`` (``image_file_name``), as
    ``datasets`` accepts."""
    if image_column != DEFAULT_COLUMNS["image"]:
        return image_column if image_column in row else None
    return "file_name" if "file_name" in row else next((k for k in row if str(k).endswith("_file_name")), None)


def _read_metadata(storage: Storage, uri: str, columns: dict) -> dict[str, tuple[str | None, int | str | None]]:
    """file_name -> (caption, label) of one metadata file: the ``columns``' text and label; a label
    left out or empty is None (the class folder names it then)."""
    text_column, label_column = columns["text"], columns["label"]
    out = {}
    for n, row in enumerate(_metadata_rows(storage, uri), 1):
        key = _file_name_key(row, columns["image"]) if isinstance(row, dict) else None
        if key is None or row[key] is None:
            named = "file_name" if columns["image"] == DEFAULT_COLUMNS["image"] else columns["image"]
            raise SourceError(f"{uri} row {n}: needs a {named!r} column (and {text_column!r} for the caption)")
        text = row.get(text_column) if text_column else None
        label = row.get(label_column) if label_column else None  # judged with every format's (scan_example)
        out[str(row[key])] = (None if text is None else str(text), label if label != "" else None)
    return out


def _hidden(rel: str) -> bool:
    """A path under a hidden folder or file, as Hugging Face's data files skip them: macOS's
    ``._photo.jpg`` resource forks and ``__MACOSX/`` copies are named like images but are not."""
    return any(part.startswith((".", "__")) for part in rel.split("/"))


def list_imagefolder(storage: Storage, root: str, columns: dict | None = None) -> Listing:
    columns = columns or DEFAULT_COLUMNS
    files = [f for f in storage.list_files(root) if not _hidden(_rel(f, root))]
    images = [f for f in files if f.lower().endswith(IMAGE_EXTENSIONS)]
    if not images:
        raise SourceError(f"{root}: no images here ({', '.join(IMAGE_EXTENSIONS)} files under class folders)")
    firsts = {_rel(f, root).split("/")[0] for f in images}
    split_layout = bool(firsts) and firsts <= set(SPLIT_FOLDERS)
    # captions (and labels, for data laid out without class folders): metadata files in the root
    # or a split folder, file_name relative to that folder
    described: dict[str, tuple[str | None, int | str | None]] = {}
    metadata_files = [f for f in files if posixpath.basename(f) in METADATA_FILES]
    by_folder: dict[str, list[str]] = {}
    for meta in metadata_files:
        by_folder.setdefault(posixpath.dirname(meta), []).append(posixpath.basename(meta))
    for folder, names in by_folder.items():
        if len(names) > 1:  # which one describes the images? datasets refuses this too
            raise SourceError(f"{folder}: holds {' and '.join(sorted(names))}; keep one metadata file per folder")
    image_set = set(images)
    for meta in metadata_files:
        folder = posixpath.dirname(meta)
        for name, row in _read_metadata(storage, meta, columns).items():
            target = join(folder, name)
            if target not in image_set:
                raise SourceError(f"{meta}: names {name!r}, which is not an image under {folder}")
            described[target] = row
    known, folder_names, labelled_by_metadata = [], set(), False
    for f in images:
        parts = _rel(f, root).split("/")
        split = SPLIT_FOLDERS[parts[0]] if split_layout else None
        class_parts = parts[1:] if split_layout else parts
        text, label = described.get(f, (None, None))
        if label is not None:  # the metadata's label column names the class: no class folder needed
            labelled_by_metadata = True
        elif len(class_parts) < 2:
            where = "a split folder's class folder" if split_layout else "a class folder"
            raise SourceError(
                f"{f}: every image must sit in {where} (the folder name is its label) "
                f"or have a {columns['label']!r} in its metadata file ({' / '.join(METADATA_FILES)})"
            )
        else:
            label = class_parts[0]
            folder_names.add(label)
        known.append({"label": label, "split": split, "text": text, "key": _rel(f, root)})
    units = [
        Unit("imagefolder", images[i : i + FILES_PER_UNIT], known[i : i + FILES_PER_UNIT], columns)
        for i in range(0, len(images), FILES_PER_UNIT)
    ]
    # labels from metadata: the class names are what the rows name (decided after the scan)
    classes = None if labelled_by_metadata else sorted(folder_names)
    return Listing(units, classes, len(images), captioned=bool(metadata_files))


def read_imagefolder(storage: Storage, unit: Unit) -> Iterator[Example]:
    for uri, k in zip(unit.uris, unit.known, strict=True):
        yield Example(k["key"], uri, storage.read_bytes(uri), k["text"], k["label"], k["split"])


# --------------------------------------------------------------------------- webdataset


def _classes_txt(storage: Storage, root: str) -> list[str] | None:
    uri = join(root, "classes.txt")
    if not storage.exists(uri):
        return None
    return [line.strip() for line in storage.read_bytes(uri).decode().splitlines() if line.strip()]


def list_webdataset(storage: Storage, root: str, columns: dict | None = None) -> Listing:
    columns = columns or DEFAULT_COLUMNS
    # read with tarfile's "r:*": gzip or not
    tars = [t for t in storage.list_files(root, suffix=TAR_SUFFIXES) if not _hidden(_rel(t, root))]
    if not tars:
        raise SourceError(f"{root}: no .tar shards here (webdataset: KEY.png + KEY.txt + KEY.cls or KEY.json)")
    units = [Unit("webdataset", [t], columns=columns, split=split_of_path(_rel(t, root))) for t in tars]
    return Listing(units, _classes_txt(storage, root), len(tars))


def _member_key(name: str) -> tuple[str, str]:
    """webdataset's convention: the key is the path up to the first dot of the file name."""
    folder, base = posixpath.split(name)
    stem, _, ext = base.partition(".")
    return posixpath.join(folder, stem), ext.lower()


def read_webdataset(storage: Storage, unit: Unit) -> Iterator[Example]:
    (uri,) = unit.uris
    data = storage.read_bytes(uri)
    groups: dict[str, dict[str, bytes]] = {}
    try:
        with tarfile.open(fileobj=io.BytesIO(data), mode="r:*") as tar:
            for member in tar:
                if member.isfile():
                    key, ext = _member_key(member.name)
                    # "KEY.seg.png" is an image of KEY too: the last suffix says what a member is
                    groups.setdefault(key, {})[ext.rsplit(".", 1)[-1]] = tar.extractfile(member).read()
    except tarfile.TarError as exc:
        raise SourceError(f"{uri}: not a readable tar shard ({exc})") from None
    shard = posixpath.basename(uri)
    for key, parts in groups.items():
        origin = f"{uri}:{key}"
        image = next((parts[ext] for ext in IMAGE_MEMBERS if ext in parts), None)
        meta = _sample_json(parts.get("json"))
        text_key, label_key = unit.columns["text"], unit.columns["label"]
        text = None
        if text_key and "txt" in parts:
            text = parts["txt"].decode("utf-8", errors="replace").strip()
        elif text_key and meta.get(text_key) is not None:  # LAION-style: the caption in KEY.json
            text = str(meta[text_key])
        label: int | str | None = None
        if "cls" in parts:
            raw = parts["cls"].decode().strip()
            label = int(raw) if raw.lstrip("-").isdigit() else raw
        elif isinstance(meta.get(label_key), int | str):
            label = meta[label_key]
        yield Example(f"{shard}/{key}", origin, image, text, label, unit.split)


def _sample_json(raw: bytes | None) -> dict:
    """A sample's KEY.json as a dict ({} when absent or not a JSON object)."""
    try:
        meta = json.loads(raw) if raw else {}
    except (json.JSONDecodeError, UnicodeDecodeError):
        return {}
    return meta if isinstance(meta, dict) else {}


# --------------------------------------------------------------------------- parquet


def _classlabel_names(schema, label_column: str) -> list[str] | None:
    """The class names of the label column's ClassLabel feature, as ``datasets`` records them."""
    meta = (schema.metadata or {}).get(b"huggingface")
    if not meta:
        return None
    try:
        feature = json.loads(meta)["info"]["features"][label_column]
    except (KeyError, TypeError, json.JSONDecodeError):
        return None
    names = feature.get("names") if isinstance(feature, dict) else None
    return [str(n) for n in names] if names else None


def list_parquet(storage: Storage, root: str, columns: dict | None = None) -> Listing:
    import pyarrow.parquet as pq

    columns = columns or DEFAULT_COLUMNS
    wanted = [c for c in (columns["image"], columns["text"], columns["label"]) if c]
    files = [f for f in storage.list_files(root, suffix=".parquet") if not _hidden(_rel(f, root))]
    if not files:
        raise SourceError(f"{root}: no .parquet files here (columns {', '.join(wanted)})")
    names = None
    for f in files:
        fs, path = storage.filesystem(f)
        try:
            schema = pq.read_schema(path, filesystem=fs)
        except Exception as exc:  # pyarrow raises several types for a bad footer
            raise SourceError(f"{f}: not a readable Parquet file ({exc})") from None
        missing = [c for c in wanted if c not in schema.names]
        if missing:
            raise SourceError(
                f"{f}: missing column(s) {', '.join(missing)} (it has {', '.join(schema.names)}; "
                "data.source.columns names the image, text and label columns)"
            )
        names = names or _classlabel_names(schema, columns["label"])
    units = [Unit("parquet", [f], columns=columns, split=split_of_path(_rel(f, root))) for f in files]
    return Listing(units, names, len(files))


def read_parquet(storage: Storage, unit: Unit) -> Iterator[Example]:
    import pyarrow.parquet as pq

    (uri,) = unit.uris
    fs, path = storage.filesystem(uri)
    image_col, text_col, label_col = unit.columns["image"], unit.columns["text"], unit.columns["label"]
    columns = [c for c in (image_col, text_col, label_col) if c]
    try:
        pf = pq.ParquetFile(path, filesystem=fs)
        if "split" in pf.schema_arrow.names and "split" not in columns:
            columns.append("split")
    except Exception as exc:  # pyarrow raises several types for a bad file
        raise SourceError(f"{uri}: not a readable Parquet file ({exc})") from None
    name = posixpath.basename(uri)
    row = 0
    for batch in _parquet_batches(pf, uri, columns):
        for item in batch.to_pylist():
            image, problem = _parquet_image(storage, uri, item[image_col])
            split = item.get("split")  # a row's own split column wins over its file's name
            split = SPLIT_FOLDERS.get(str(split)) if split is not None else unit.split
            text = item[text_col] if text_col else None
            yield Example(f"{name}/{row}", f"{uri} row {row}", image, text, item[label_col], split, problem)
            row += 1


def _parquet_image(storage: Storage, uri: str, cell) -> tuple[bytes | None, str | None]:
    """(image bytes, problem) of a Parquet cell: the bytes themselves, ``datasets``' ``{bytes,
    path}`` struct, or a path alone (a table indexing images kept beside it or on S3: a URI, an
    absolute path, or a path relative to the Parquet file's folder), read from storage."""
    if isinstance(cell, dict):  # datasets' Image feature: bytes, else the path it was loaded from
        cell = cell.get("bytes") or cell.get("path")
    if not isinstance(cell, str):
        return cell, None
    ref = cell if "://" in cell or cell.startswith("/") else join(posixpath.dirname(uri), cell)
    try:
        return storage.read_bytes(ref), None
    except StorageError as exc:
        return None, f"unreadable image file ({exc})"  # counted by the words before the bracket


def _parquet_batches(pf, uri: str, columns: list[str]):
    try:
        yield from pf.iter_batches(batch_size=256, columns=columns)
    except Exception as exc:  # a corrupt page or row group
        raise SourceError(f"{uri}: not a readable Parquet file ({exc})") from None


LISTERS = {"imagefolder": list_imagefolder, "webdataset": list_webdataset, "parquet": list_parquet}
READERS = {"imagefolder": read_imagefolder, "webdataset": read_webdataset, "parquet": read_parquet}
