"""Bringing your own data: ImageFolder, WebDataset and Parquet image sets and a text corpus, on
disk or S3, imported into the shards every later stage reads; and the second embedded dataset."""

from __future__ import annotations

import base64
import io
import json
import tarfile

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from aigc_ray.data.build import build_data
from aigc_ray.data.corpus_import import CorpusError, import_corpus_batches
from aigc_ray.data.image_import import decide_splits, fit_square
from aigc_ray.data.image_sources import SourceError, list_imagefolder
from aigc_ray.data.images import decode_png
from aigc_ray.data.info import dataset_info
from aigc_ray.data.shapes import CLASSES, shape_batches
from aigc_ray.data.shards import split_table, validate_shards
from aigc_ray.layout import corpus_uri, multimodal_uri
from aigc_ray.manifest import read_manifest
from aigc_ray.spec import load_spec
from aigc_ray.storage import Storage

FRACTIONS = {"train": 0.8, "val": 0.1, "test": 0.1}
QUIET = {"log": lambda *_: None}


@pytest.fixture(scope="module")
def shape_rows():
    """The embedded shapes, as rows: the real images our import tests store in the user's formats."""
    return [row for batch in shape_batches(0, FRACTIONS, 0.0, 0.0) for row in batch.to_pylist()]


def _png_or_jpeg(pixels: np.ndarray, fmt: str, mode: str | None = None, size=(40, 48)) -> bytes:
    img = Image.fromarray(pixels).resize(size)
    if mode:
        img = img.convert(mode)
    buf = io.BytesIO()
    img.save(buf, format=fmt)
    return buf.getvalue()


def _picked(rows, per_class: int) -> list[dict]:
    out = []
    for k in range(len(CLASSES)):
        out += [r for r in rows if r["label"] == k][:per_class]
    return out


# --------------------------------------------------------------------------- the shapes


def test_the_shapes_are_rgb_32px_six_classes_and_a_function_of_the_seed():
    rows = [r for b in shape_batches(3, FRACTIONS, 0.15, 0.1) for r in b.to_pylist()]
    again = [r for b in shape_batches(3, FRACTIONS, 0.15, 0.1) for r in b.to_pylist()]
    assert rows == again
    other = [r for b in shape_batches(4, FRACTIONS, 0.15, 0.1) for r in b.to_pylist()]
    assert [r["image"] for r in rows] != [r["image"] for r in other]
    assert len(rows) == 1200 and {r["label"] for r in rows} == set(range(6))
    image = decode_png(rows[0]["image"])
    assert image.shape == (32, 32, 3) and rows[0]["image_shape"] == [32, 32, 3]
    assert len({decode_png(r["image"]).mean(axis=(0, 1)).round().tobytes() for r in rows[:50]}) > 40  # varied
    exact = [r for r in rows if r["caption_kind"] == "exact"]
    assert all(CLASSES[r["label"]] in r["text"] for r in exact)
    wrong = [r for r in rows if r["caption_kind"] == "wrong"]
    assert wrong and not any(CLASSES[r["label"]] in r["text"].split() for r in wrong)


def test_the_shapes_build_records_their_classes_and_shape(tmp_path):
    spec = load_spec(None, [f"storage.root={tmp_path}", "data.dataset=shapes", "data.rows_per_shard=400"])
    storage = Storage.from_spec(spec.storage)
    built = build_data(spec, storage, **QUIET)
    info = dataset_info(spec, storage)
    assert info.classes == CLASSES and info.image_shape == (32, 32, 3)
    assert built.multimodal.meta["rows"] == 1200 and validate_shards(storage, multimodal_uri(spec)).ok


# --------------------------------------------------------------------------- pure parts


def test_fit_square_resizes_the_short_side_and_crops_a_seeded_square():
    wide = np.zeros((20, 60, 3), np.uint8)
    wide[:, 30:] = 255  # right half white
    data = _png_or_jpeg(wide, "PNG", size=(60, 20))
    crops = [fit_square(data, 10, 3, np.random.default_rng(s)) for s in range(20)]
    assert all(c.shape == (10, 10, 3) for c in crops)
    assert len({c.mean().round(1) for c in crops}) > 3  # different offsets along the long side
    grey = fit_square(data, 10, 1, np.random.default_rng(0))
    assert grey.shape == (10, 10, 1)
    assert np.array_equal(fit_square(data, 10, 3, np.random.default_rng(5)), crops[5])


def _encoded(img, fmt: str = "PNG", **save) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **save)
    return buf.getvalue()


def test_images_are_read_as_a_viewer_shows_them_by_import_and_by_the_server():
    """Images users really have: a 16-bit scan (Pillow's convert clips it to white), a phone
    photo stored sideways with an EXIF orientation, a transparent PNG whose hidden pixels are
    black, a palette PNG with a transparent index. Import (``fit_square``) and the server
    (``decode_image_b64``) read each the same way."""
    from aigc_ray.data.images import decode_image_b64

    ramp = np.tile(np.linspace(0, 65535, 16), (16, 1)).astype(np.uint16)  # left dark, right bright
    scan = fit_square(_encoded(Image.fromarray(ramp)), 16, 1, np.random.default_rng(0))[:, :, 0]
    assert scan[:, 0].max() < 20 and scan[:, -1].min() > 235 and 100 < scan.mean() < 155

    tall = np.zeros((16, 8, 3), np.uint8)
    tall[:4] = 255  # stored 8 wide, 16 tall, white at the top
    photo = Image.fromarray(tall)
    exif = photo.getexif()
    exif[0x0112] = 6  # orientation: the viewer turns it 90 degrees clockwise, so it shows wide
    upright = fit_square(_encoded(photo, "JPEG", exif=exif, quality=95), 8, 3, np.random.default_rng(0))
    assert upright[:, -2:].mean() > 200 and upright[:, :2].mean() < 50  # white now on the right side

    rgba = np.zeros((8, 8, 4), np.uint8)  # transparent everywhere and black underneath
    rgba[2:6, 2:6] = (0, 0, 0, 255)  # an opaque black square
    icon = fit_square(_encoded(Image.fromarray(rgba, "RGBA")), 8, 1, np.random.default_rng(0))[:, :, 0]
    assert icon[0, 0] == 255 and icon[3, 3] == 0  # black on white, not black on black

    palette = Image.fromarray(np.array([[0, 1], [1, 0]] * 4, np.uint8).repeat(4, 1), "P")
    palette.putpalette([0, 0, 0, 200, 0, 0] + [0] * 762)
    pal = fit_square(_encoded(palette, transparency=0), 8, 3, np.random.default_rng(0))
    assert tuple(pal[0, 0]) == (255, 255, 255) and tuple(pal[0, 4]) == (200, 0, 0)

    for img, channels, imported in [(Image.fromarray(ramp), 1, scan), (Image.fromarray(rgba, "RGBA"), 1, icon)]:
        side = imported.shape[0]
        served = decode_image_b64(base64.b64encode(_encoded(img)).decode(), side, channels)
        assert np.abs(served[0] * 255 - imported).max() <= 1  # what the members are sent


def test_a_wide_or_tall_client_image_is_cropped_as_the_import_crops_not_squashed():
    """A member was trained on squares cropped from the user's photos (``fit_square``); the
    server reads a client's wide or tall image the same way, from its centred square, instead of
    stretching the whole frame into the model's square."""
    from aigc_ray.data.images import decode_image_b64, decode_image_file

    wide = np.zeros((8, 24), np.uint8)
    wide[:, 8:16] = 255  # a white square in the middle of a black strip three times as wide
    for img in (wide, wide.T.copy()):
        raw = _encoded(Image.fromarray(img))
        served = decode_image_b64(base64.b64encode(raw).decode(), 8, 1)
        assert served.shape == (1, 8, 8) and served.min() == 1.0  # squashed: two thirds black
        assert np.array_equal(decode_image_file(raw, 8, 1), served)
        imported = fit_square(raw, 8, 1, np.random.default_rng(0))[:, :, 0]
        assert imported.shape == (8, 8)  # the import crops a square of the same size from it


def test_a_clients_photo_is_read_at_a_reduced_scale_and_a_decompression_bomb_is_refused():
    """A phone photo sent to /v1/classify as it is (it was refused over 256x256, so every client
    had to resize first) is read like the import reads it: decoded at a reduced scale, its centred
    square; a file whose header claims more than 16 megapixels is refused before decoding."""
    from aigc_ray.data.images import decode_image_b64

    ramp = np.tile(np.linspace(0, 255, 3000), (2000, 1)).astype(np.uint8)  # 6 MP, dark left, bright right
    photo = base64.b64encode(_encoded(Image.fromarray(ramp).convert("RGB"), "JPEG", quality=90)).decode()
    served = decode_image_b64(photo, 16, 3)
    assert served.shape == (3, 16, 16)
    centre = np.linspace(500, 2500, 16) * 255 / 2999 / 255  # the centred 2000 px of the 3000-wide ramp
    assert np.abs(served[0].mean(0) - centre).max() < 0.03
    bomb = base64.b64encode(_encoded(Image.new("L", (4100, 4100)))).decode()  # 17 MP of zeros: a few KB
    with pytest.raises(ValueError, match=r"image is 4100x4100; at most 16,777,216 pixels"):
        decode_image_b64(bomb, 16, 1)


def test_splits_without_split_folders_are_stratified_and_seeded():
    rows = [{"key": f"k{i}", "split": ""} for i in range(300)]
    labels = [i % 3 for i in range(300)]
    splits = decide_splits(rows, labels, 0, FRACTIONS)
    assert splits == decide_splits(rows, labels, 0, FRACTIONS) != decide_splits(rows, labels, 1, FRACTIONS)
    for k in range(3):
        mine = [s for s, y in zip(splits, labels, strict=True) if y == k]
        assert (mine.count("train"), mine.count("val"), mine.count("test")) == (80, 10, 10)
    given = [{"key": "a", "split": "test"}] + rows[1:]
    assert decide_splits(given, labels, 0, FRACTIONS)[0] == "test"


def test_imagefolder_listing_reads_split_folders_and_captions(tmp_path, shape_rows):
    storage = Storage()
    for split in ("train", "validation"):
        for i, r in enumerate(_picked(shape_rows, 2)):
            folder = tmp_path / split / CLASSES[r["label"]]
            folder.mkdir(parents=True, exist_ok=True)
            (folder / f"{i}.png").write_bytes(r["image"])
        lines = [
            {"file_name": f"{CLASSES[r['label']]}/{i}.png", "text": f"cap {i}"}
            for i, r in enumerate(_picked(shape_rows, 2))
        ]
        (tmp_path / split / "metadata.jsonl").write_text("\n".join(json.dumps(x) for x in lines))
    (tmp_path / "train" / "circle" / "._0.png").write_bytes(b"\x00\x05\x16\x07 mac resource fork")
    (tmp_path / "__MACOSX" / "train" / "circle").mkdir(parents=True)  # copies a zip from a Mac holds
    (tmp_path / "__MACOSX" / "train" / "circle" / "._0.png").write_bytes(b"\x00\x05\x16\x07")
    listing = list_imagefolder(storage, str(tmp_path))  # hidden files skipped, as Hugging Face does
    assert listing.class_names == sorted(CLASSES) and listing.files == 24
    known = [k for u in listing.units for k in u.known]
    assert {k["split"] for k in known} == {"train", "val"} and all(k["text"].startswith("cap ") for k in known)

    (tmp_path / "train" / "metadata.jsonl").write_text(json.dumps({"file_name": "circle/missing.png", "text": "x"}))
    with pytest.raises(SourceError, match=r"metadata.jsonl: names 'circle/missing.png', which is not an image"):
        list_imagefolder(storage, str(tmp_path))
    with pytest.raises(SourceError, match="no images here"):
        list_imagefolder(storage, str(tmp_path / "nothing"))


def test_an_imagefolder_without_class_folders_takes_labels_from_its_metadata(tmp_path, shape_rows):
    """A flat folder of images (as Kaggle and many labelling tools export them) with a
    metadata.csv naming each file's class; split folders may be called ``dev/`` too."""
    from aigc_ray.data.image_import import scan_example
    from aigc_ray.data.image_sources import Example

    storage = Storage()
    for split in ("train", "dev"):
        (tmp_path / split).mkdir()
        lines = ["file_name,text,label"]
        for i, r in enumerate(_picked(shape_rows, 2)):
            (tmp_path / split / f"img_{i}.png").write_bytes(r["image"])
            lines.append(f"img_{i}.png,cap {i},{CLASSES[r['label']]}")
        (tmp_path / split / "metadata.csv").write_text("\n".join(lines))
    listing = list_imagefolder(storage, str(tmp_path))
    assert listing.class_names is None  # named by the rows: decided once every row is scanned
    known = [k for u in listing.units for k in u.known]
    assert len(known) == 24 and {k["split"] for k in known} == {"train", "val"}
    assert sorted(k["label"] for k in known) == sorted(CLASSES * 4)
    assert all(k["text"].startswith("cap ") for k in known)

    # labels as pandas writes an int column with a gap (3.0, null) are judged as in every format
    (tmp_path / "dev" / "metadata.csv").unlink()
    lines = [{"file_name": f"img_{i}.png", "text": "c", "label": float(i % 6)} for i in range(12)]
    (tmp_path / "dev" / "metadata.jsonl").write_text("\n".join(json.dumps(x) for x in lines))
    dev = [k for u in list_imagefolder(storage, str(tmp_path)).units for k in u.known if k["split"] == "val"]
    scanned = [scan_example(Example(k["key"], k["key"], b"", "c", k["label"])) for k in dev]
    assert sorted(r["label_int"] for r in scanned) == sorted([0, 1, 2, 3, 4, 5] * 2)

    # metadata.parquet, as datasets writes it (to_parquet), naming images by image_file_name
    (tmp_path / "dev" / "metadata.jsonl").unlink()
    lines_labels = [CLASSES[(i * 5) % 6] for i in range(12)]
    table = pa.table(
        {"image_file_name": [f"img_{i}.png" for i in range(12)], "text": ["p"] * 12, "label": lines_labels}
    )
    pq.write_table(table, tmp_path / "dev" / "metadata.parquet")
    dev = [k for u in list_imagefolder(storage, str(tmp_path)).units for k in u.known if k["split"] == "val"]
    assert sorted((k["key"], k["text"], k["label"]) for k in dev) == sorted(
        (f"dev/img_{i}.png", "p", lines_labels[i]) for i in range(12)
    )
    # a labelling tool's own column names, said in the spec's columns
    tool = {"image": "filename", "text": "caption", "label": "category"}
    renamed = table.rename_columns(["filename", "caption", "category"])
    pq.write_table(renamed, tmp_path / "dev" / "metadata.parquet")
    train_csv = (tmp_path / "train" / "metadata.csv").read_text()
    (tmp_path / "train" / "metadata.csv").write_text(
        train_csv.replace("file_name,text,label", "filename,caption,category")
    )
    dev = [k for u in list_imagefolder(storage, str(tmp_path), tool).units for k in u.known if k["split"] == "val"]
    assert sorted((k["key"], k["label"]) for k in dev) == sorted(
        (f"dev/img_{i}.png", lines_labels[i]) for i in range(12)
    )
    with pytest.raises(SourceError, match=r"metadata.parquet row 1: needs a 'file_name' column"):
        list_imagefolder(storage, str(tmp_path))  # the default names: the file column is not there
    pq.write_table(table, tmp_path / "dev" / "metadata.parquet")
    (tmp_path / "train" / "metadata.csv").write_text(train_csv)
    (tmp_path / "dev" / "metadata.csv").write_text("file_name,text\nimg_0.png,cap 0\n")
    with pytest.raises(SourceError, match=r"dev: holds metadata.csv and metadata.parquet; keep one metadata file"):
        list_imagefolder(storage, str(tmp_path))
    (tmp_path / "dev" / "metadata.csv").unlink()
    (tmp_path / "dev" / "metadata.parquet").write_bytes(b"PAR1 cut short")
    with pytest.raises(SourceError, match=r"metadata.parquet: not a readable Parquet file"):
        list_imagefolder(storage, str(tmp_path))
    pq.write_table(table, tmp_path / "dev" / "metadata.parquet")

    (tmp_path / "train" / "metadata.csv").write_text("file_name,text\nimg_0.png,cap 0\n")  # no labels here
    with pytest.raises(
        SourceError,
        match=r"train/img_0.png: every image must sit in a split folder's class folder .* or have a 'label'",
    ):
        list_imagefolder(storage, str(tmp_path))


def test_a_parquet_index_of_image_files_reads_them_from_disk_or_s3(s3_server, tmp_path, shape_rows):
    """A Parquet table whose image column holds paths (relative to the table, absolute, or a
    ``datasets`` struct with only its path) rather than bytes: each image is read from where it
    lies, on S3 beside the table too; a path naming no file is that row's problem, named."""
    from aigc_ray.data.image_import import scan_example
    from aigc_ray.data.image_sources import Unit, read_parquet
    from aigc_ray.storage import S3Settings

    rows = _picked(shape_rows, 1)
    (tmp_path / "imgs").mkdir()
    for i, r in enumerate(rows):
        (tmp_path / "imgs" / f"{i}.png").write_bytes(r["image"])
    cells = ["imgs/0.png", str(tmp_path / "imgs" / "1.png"), "imgs/2.png", "imgs/3.png", "imgs/4.png", "imgs/gone.png"]
    path_type = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
    local = Storage()
    for name, column in [
        ("paths", pa.array(cells)),
        ("structs", pa.array([{"bytes": None, "path": c} for c in cells], path_type)),
    ]:
        table = pa.table({"image": column, "text": [f"t{i}" for i in range(6)], "label": [0, 1, 2, 3, 4, 5]})
        pq.write_table(table, tmp_path / f"{name}.parquet")
        examples = list(read_parquet(local, Unit("parquet", [str(tmp_path / f"{name}.parquet")])))
        assert [e.image for e in examples[:5]] == [r["image"] for r in rows[:5]]
        scanned = scan_example(examples[5])
        assert (
            scanned["problem"].startswith("unreadable image file (")
            and "gone.png: no such object" in scanned["problem"]
        )

    s3 = Storage(S3Settings(s3_server.endpoint, s3_server.region))
    bucket = f"s3://{s3_server.make_bucket('indexed-images')}"
    for i, r in enumerate(rows[:2]):
        s3.write_bytes(f"{bucket}/data/imgs/{i}.png", r["image"])
    s3.write_bytes(f"{bucket}/data/train.parquet", (tmp_path / "paths.parquet").read_bytes())
    examples = list(read_parquet(s3, Unit("parquet", [f"{bucket}/data/train.parquet"])))
    assert examples[0].image == rows[0]["image"] and examples[0].problem is None  # beside the table on S3
    assert examples[1].image == rows[1]["image"]  # the absolute local path as written


def test_corpus_files_by_glob_become_documents_split_by_seed(tmp_path):
    storage = Storage()
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "one.txt").write_text("first paragraph\n\nsecond paragraph")
    (tmp_path / "a" / "two.jsonl").write_text('{"text": "doc one"}\n\n{"text": "doc two"}\n')
    pq.write_table(pa.table({"text": ["p1", "p2", None]}), tmp_path / "a" / "three.parquet")
    (tmp_path / "a" / "skip.md").write_text("not matched")
    (tmp_path / "a" / "._one.txt").write_bytes(b"\x00\x05\x16\x07\xff")  # a Mac's resource fork
    files = storage.glob(str(tmp_path / "a" / "*.*"))
    rows = [r for b in import_corpus_batches(storage, files, 0, FRACTIONS, 10_000) for r in b.to_pylist()]
    assert sorted(r["text"] for r in rows) == sorted(
        ["first paragraph\n\nsecond paragraph", "doc one", "doc two", "p1", "p2"]
    )
    assert len({r["id"] for r in rows}) == len(rows) and {r["split"] for r in rows} <= {"train", "val", "test"}
    (tmp_path / "c4").mkdir()  # C4's and The Pile's shapes: JSON lines, compressed, the text under another key
    lines = "".join(json.dumps({"content": f"doc {i}", "url": "x"}) + "\n" for i in range(3)).encode()
    with pa.CompressedOutputStream(str(tmp_path / "c4" / "c4-train.00000.json.gz"), "gzip") as out:
        out.write(lines)
    with pa.CompressedOutputStream(str(tmp_path / "c4" / "pile.jsonl.zst"), "zstd") as out:
        out.write(lines.replace(b"doc", b"pile"))
    with pa.CompressedOutputStream(str(tmp_path / "c4" / "notes.txt.gz"), "gzip") as out:
        out.write("déjà vu".encode())
    files = storage.glob(str(tmp_path / "c4" / "*"))
    batches = import_corpus_batches(storage, files, 0, FRACTIONS, 10_000, text_field="content")
    assert sorted(r["text"] for b in batches for r in b.to_pylist()) == sorted(
        [*(f"doc {i}" for i in range(3)), *(f"pile {i}" for i in range(3)), "déjà vu"]
    )
    (tmp_path / "c4" / "broken.jsonl.gz").write_bytes(b"not gzip at all")
    with pytest.raises(CorpusError, match=r"broken.jsonl.gz: not a readable gzip file"):
        list(import_corpus_batches(storage, storage.glob(str(tmp_path / "c4" / "*")), 0, FRACTIONS, 10_000))

    (tmp_path / "export").mkdir()  # what Windows editors and many exporters write
    (tmp_path / "export" / "notes.txt").write_bytes("\ufeffcafé notes".encode("utf-8"))  # a byte-order mark first
    (tmp_path / "export" / "dump.json").write_text(
        json.dumps([{"text": "first"}, {"text": "second", "id": 2}], indent=2)
    )
    docs = import_corpus_batches(storage, storage.glob(str(tmp_path / "export" / "*")), 0, FRACTIONS, 10_000)
    assert sorted(r["text"] for b in docs for r in b.to_pylist()) == ["café notes", "first", "second"]
    (tmp_path / "export" / "dump.json").write_text(json.dumps([{"text": "first"}, {"body": "x"}]))
    with pytest.raises(CorpusError, match=r"dump.json item 1: expected a JSON object with a 'text' field"):
        list(import_corpus_batches(storage, storage.glob(str(tmp_path / "export" / "*")), 0, FRACTIONS, 10_000))

    (tmp_path / "a" / "bad.jsonl").write_text('{"text": "ok"}\n{"no": 1}\n')
    with pytest.raises(CorpusError, match=r"bad.jsonl line 2: expected a JSON object with a 'text' field"):
        list(import_corpus_batches(storage, storage.glob(str(tmp_path / "a" / "*.jsonl")), 0, FRACTIONS, 10_000))


# --------------------------------------------------------------------------- the imports (Ray Data)


def _imagefolder(root, rows, with_metadata=True) -> None:
    lines = []
    for i, r in enumerate(rows):
        cls = CLASSES[r["label"]]
        (root / cls).mkdir(parents=True, exist_ok=True)
        pixels = decode_png(r["image"])
        fmt, mode = ("JPEG", None) if i % 3 == 0 else ("PNG", "L" if i % 5 == 0 else None)
        name = f"{cls}/{i:04d}.{'jpg' if fmt == 'JPEG' else 'png'}"
        (root / name).write_bytes(_png_or_jpeg(pixels, fmt, mode))
        lines.append({"file_name": name, "text": f"picture number {i}"})  # captions that give nothing away
    if with_metadata:
        (root / "metadata.jsonl").write_text("\n".join(json.dumps(x) for x in lines))


def _upload(storage, local_root, uri) -> None:
    for path in sorted(local_root.rglob("*")):
        if path.is_file():
            storage.write_bytes(f"{uri}/{path.relative_to(local_root).as_posix()}", path.read_bytes())


@pytest.mark.slow
def test_an_imagefolder_on_s3_imports_then_is_up_to_date_until_it_changes(ray_local, s3_server, tmp_path, shape_rows):
    bucket = s3_server.make_bucket("user-images")
    rows = _picked(shape_rows, 20)
    _imagefolder(tmp_path / "src", rows)
    storage = Storage.from_spec(load_spec(None, [f"storage.endpoint_url={s3_server.endpoint}"]).storage)
    _upload(storage, tmp_path / "src", f"s3://{bucket}/imgs")
    spec = load_spec(
        None,
        [
            f"storage.root=s3://{bucket}/runs",
            f"storage.endpoint_url={s3_server.endpoint}",
            f"data.source={{format: imagefolder, uri: 's3://{bucket}/imgs'}}",
            "data.image_size=24",
            "data.rows_per_shard=50",
        ],
    )
    built = build_data(spec, storage, **QUIET)
    meta = built.multimodal.meta
    assert meta["classes"] == sorted(CLASSES) and meta["image_shape"] == [24, 24, 3]
    assert meta["rows"] == 120 and meta["converted"] == sum(1 for i in range(120) if i % 3 and i % 5 == 0)
    assert validate_shards(storage, multimodal_uri(spec)).ok
    test = split_table(storage, multimodal_uri(spec), "train", ["id", "label", "text", "image"]).to_pylist()
    by_id = {r["id"]: r for r in test}
    some = by_id["circle/0000.jpg"] if "circle/0000.jpg" in by_id else test[0]
    assert decode_png(some["image"]).shape == (24, 24, 3)
    sorted_names = sorted(CLASSES)
    for r in test:  # the label is the class folder's index among the sorted names
        assert sorted_names[r["label"]] == r["id"].split("/")[0] and r["text"].startswith("picture number")
    assert dataset_info(spec, storage).classes == tuple(sorted_names)

    again = build_data(spec, storage, **QUIET)
    assert "multimodal" not in again.written  # unchanged source: up to date
    storage.write_bytes(f"s3://{bucket}/imgs/circle/extra.png", rows[0]["image"])
    lines = storage.read_bytes(f"s3://{bucket}/imgs/metadata.jsonl").decode()
    storage.write_bytes(
        f"s3://{bucket}/imgs/metadata.jsonl",
        (lines + "\n" + json.dumps({"file_name": "circle/extra.png", "text": "one more"})).encode(),
    )
    changed = build_data(spec, storage, **QUIET)
    assert "multimodal" in changed.written and changed.multimodal.meta["rows"] == 121


def _tar(path, members: dict[str, bytes]) -> None:
    with tarfile.open(path, "w") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


@pytest.mark.slow
def test_webdataset_shards_import_and_bad_rows_error_or_are_skipped_and_counted(ray_local, tmp_path, shape_rows):
    rows = _picked(shape_rows, 10)
    src = tmp_path / "wds"
    src.mkdir()
    for shard in range(3):
        members = {}
        for i, r in enumerate(rows[shard::3]):
            key = f"s{shard}-{i:03d}"
            members[f"{key}.png"] = r["image"]
            members[f"{key}.txt"] = f"item {key}".encode()
            members[f"{key}.json"] = json.dumps({"label": CLASSES[r["label"]]}).encode()
        _tar(src / f"shard-{shard}.tar", members)
    base = [f"storage.root={tmp_path / 'runs'}", f"data.source={{format: webdataset, uri: '{src}'}}"]
    spec = load_spec(None, base)
    storage = Storage.from_spec(spec.storage)
    built = build_data(spec, storage, **QUIET)
    assert built.multimodal.meta["classes"] == sorted(CLASSES) and built.multimodal.meta["rows"] == 60
    assert built.multimodal.meta["image_shape"] == [32, 32, 3]
    table = split_table(storage, multimodal_uri(spec), "train", ["id", "label"]).to_pylist()
    truth = {f"shard-{s}.tar/s{s}-{i:03d}": r["label"] for s in range(3) for i, r in enumerate(rows[s::3])}
    assert all(sorted(CLASSES)[r["label"]] == CLASSES[truth[r["id"]]] for r in table)

    # a corrupt image and a caption-less example in a fourth shard
    _tar(
        src / "shard-3.tar",
        {
            "bad.png": b"\x89PNG\r\n\x1a\n not really",
            "bad.txt": b"broken",
            "bad.json": b'{"label": "circle"}',
            "mute.png": rows[0]["image"],
            "mute.json": b'{"label": "circle"}',
        },
    )
    with pytest.raises(SourceError, match=r"shard-3.tar:bad: undecodable image"):
        build_data(spec, storage, **QUIET)
    standing = read_manifest(storage, multimodal_uri(spec))
    assert standing.meta["rows"] == 60  # the last good set stands, and nothing else was left behind
    on_disk = {f.rsplit("/", 1)[-1] for f in storage.list_files(multimodal_uri(spec), suffix=".parquet")}
    assert on_disk == set(standing.files)
    skipping = load_spec(None, [*base, "data.on_bad_row=skip"])
    built = build_data(skipping, storage, **QUIET)
    assert built.multimodal.meta["rows"] == 60
    assert built.multimodal.meta["skipped"] == {"undecodable image": 1, "no caption": 1}


@pytest.mark.slow
def test_a_datasets_style_parquet_with_class_label_names_imports(ray_local, tmp_path, shape_rows):
    rows = _picked(shape_rows, 8)
    features = {
        "image": {"_type": "Image"},
        "text": {"_type": "Value"},
        "label": {"_type": "ClassLabel", "names": list(CLASSES)},
    }
    image_type = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
    table = pa.table(
        {
            "image": pa.array([{"bytes": r["image"], "path": None} for r in rows], image_type),
            "text": [f"sample {i}" for i in range(len(rows))],
            "label": pa.array([r["label"] for r in rows], pa.int64()),
        }
    ).replace_schema_metadata({b"huggingface": json.dumps({"info": {"features": features}}).encode()})
    (tmp_path / "pq").mkdir()
    pq.write_table(table, tmp_path / "pq" / "train-00000-of-00001.parquet")
    spec = load_spec(
        None,
        [
            f"storage.root={tmp_path / 'runs'}",
            f"data.source={{format: parquet, uri: '{tmp_path / 'pq'}'}}",
            "data.image_size=16",
        ],
    )
    storage = Storage.from_spec(spec.storage)
    built = build_data(spec, storage, **QUIET)
    assert built.multimodal.meta["classes"] == list(CLASSES)  # the ClassLabel's order, not sorted
    assert built.multimodal.meta["image_shape"] == [16, 16, 3] and built.multimodal.meta["rows"] == 48
    got = {
        r["id"]: r["label"]
        for split in ("train", "val", "test")
        for r in split_table(storage, multimodal_uri(spec), split, ["id", "label"]).to_pylist()
    }
    assert got == {f"train-00000-of-00001.parquet/{i}": r["label"] for i, r in enumerate(rows)}
    assert read_manifest(storage, corpus_uri(spec)) is not None


@pytest.mark.slow
def test_a_plain_class_folder_imagefolder_imports_with_captions_from_its_class_names(ray_local, tmp_path, shape_rows):
    """The layout most image data comes in, class folders of images and no metadata file, needs
    no ``columns.text: null``: nothing in it could hold a caption, so the import writes them from
    the class names and says so. With a metadata file, a row it gives no caption is still refused,
    naming the setting that would write them."""
    rows = _picked(shape_rows, 4)
    _imagefolder(tmp_path / "imgs", rows, with_metadata=False)
    assert not list_imagefolder(Storage(), str(tmp_path / "imgs")).captioned
    spec = load_spec(
        None,
        [
            f"storage.root={tmp_path / 'runs'}",
            "data.image_size=16",
            f"data.source={{format: imagefolder, uri: '{tmp_path / 'imgs'}'}}",
            "data.prompt_template='a photo of a {name}'",
            "data.caption_noise={vague: 0, wrong: 0}",
        ],
    )
    said = []
    storage = Storage.from_spec(spec.storage)
    built = build_data(spec, storage, log=said.append)
    assert any("no metadata file holds captions: writing them from the class names" in line for line in said), said
    written = [
        r
        for split in ("train", "val", "test")
        for r in split_table(storage, multimodal_uri(spec), split, ["text", "label", "caption_kind"]).to_pylist()
    ]
    assert len(written) == built.multimodal.meta["rows"] == len(rows)
    classes = built.multimodal.meta["classes"]  # the folders' names, sorted
    assert sorted(classes) == sorted(CLASSES)
    assert all(r["text"] == f"a photo of a {classes[r['label']]}" and r["caption_kind"] == "exact" for r in written)

    (tmp_path / "imgs" / "metadata.jsonl").write_text(json.dumps({"file_name": "circle/0000.jpg", "text": ""}))
    assert list_imagefolder(Storage(), str(tmp_path / "imgs")).captioned
    with pytest.raises(SourceError, match=r"no caption \(data.source.columns.text: null writes every row's"):
        build_data(spec, storage, force=True, **QUIET)


@pytest.mark.slow
def test_data_with_its_own_column_names_and_without_captions_imports(ray_local, tmp_path, shape_rows):
    """A CIFAR-style Parquet (``img``, ``fine_label`` named by a ClassLabel, no captions at all)
    and a LAION-style WebDataset (the caption and the class name in KEY.json under keys of its
    own): ``data.source.columns`` names them. Captions the data lacks are written from the prompt
    template, vague and wrong in the spec's fractions, the same for the same row every time."""
    rows = _picked(shape_rows, 10)
    features = {"img": {"_type": "Image"}, "fine_label": {"_type": "ClassLabel", "names": list(CLASSES)}}
    image_type = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
    table = pa.table(
        {
            "img": pa.array([{"bytes": r["image"], "path": None} for r in rows], image_type),
            "fine_label": pa.array([r["label"] for r in rows], pa.int64()),
        }
    ).replace_schema_metadata({b"huggingface": json.dumps({"info": {"features": features}}).encode()})
    (tmp_path / "pq").mkdir()
    pq.write_table(table, tmp_path / "pq" / "train.parquet")
    base = [f"storage.root={tmp_path / 'runs'}", "data.image_size=16", "data.prompt_template='a photo of a {name}'"]
    source = f"data.source={{format: parquet, uri: '{tmp_path / 'pq'}'"

    plain = load_spec(None, [*base, source + "}"])  # the default names: refused, naming what the file has
    with pytest.raises(SourceError, match=r"missing column\(s\) image, text, label \(it has img, fine_label"):
        build_data(plain, Storage.from_spec(plain.storage), **QUIET)

    spec = load_spec(None, [*base, source + ", columns: {image: img, text: null, label: fine_label}}"])
    storage = Storage.from_spec(spec.storage)
    built = build_data(spec, storage, **QUIET)
    assert built.multimodal.meta["classes"] == list(CLASSES) and built.multimodal.meta["rows"] == 60
    written = [
        r
        for split in ("train", "val", "test")
        for r in split_table(storage, multimodal_uri(spec), split, ["id", "text", "label", "caption_kind"]).to_pylist()
    ]
    kinds = {k: sum(r["caption_kind"] == k for r in written) for k in ("exact", "vague", "wrong")}
    assert kinds["exact"] > 30 and kinds["vague"] > 0 and kinds["wrong"] > 0, kinds  # 0.7 / 0.2 / 0.1 by default
    for r in written:
        named = [c for c in CLASSES if r["text"] == f"a photo of a {c}"]
        if r["caption_kind"] == "exact":
            assert named == [CLASSES[r["label"]]], r
        elif r["caption_kind"] == "wrong":
            assert named and named != [CLASSES[r["label"]]], r
        else:
            assert not named, r
    again = build_data(spec, storage, force=True, **QUIET)
    assert again.multimodal.fingerprint == built.multimodal.fingerprint  # seeded per row: the same bytes

    members = {}
    for i, r in enumerate(rows[:12]):
        members[f"{i:03d}.jpg"] = _png_or_jpeg(np.asarray(decode_png(r["image"])), "JPEG")
        members[f"{i:03d}.json"] = json.dumps({"caption": f"picture number {i}", "class": CLASSES[r["label"]]}).encode()
    (tmp_path / "wds").mkdir()
    _tar(tmp_path / "wds" / "shard-0.tar", members)
    laion = load_spec(
        None,
        [
            f"storage.root={tmp_path / 'runs-wds'}",
            "data.image_size=16",
            f"data.source={{format: webdataset, uri: '{tmp_path / 'wds'}', columns: {{text: caption, label: class}}}}",
        ],
    )
    storage = Storage.from_spec(laion.storage)
    built = build_data(laion, storage, **QUIET)
    assert built.multimodal.meta["rows"] == 12
    texts = {
        r["id"]: (r["text"], r["label"], r["caption_kind"])
        for split in ("train", "val", "test")
        for r in split_table(storage, multimodal_uri(laion), split, ["id", "text", "label", "caption_kind"]).to_pylist()
    }
    classes = built.multimodal.meta["classes"]
    assert texts == {
        f"shard-0.tar/{i:03d}": (f"picture number {i}", classes.index(CLASSES[r["label"]]), "exact")
        for i, r in enumerate(rows[:12])
    }

    flat = tmp_path / "flat"  # an ImageFolder without class folders: metadata.jsonl's "category" names each
    flat.mkdir()
    lines = []
    for i, r in enumerate(rows[:12]):
        (flat / f"{i:03d}.png").write_bytes(r["image"])
        lines.append(
            json.dumps({"file_name": f"{i:03d}.png", "text": f"picture number {i}", "category": CLASSES[r["label"]]})
        )
    (flat / "metadata.jsonl").write_text("\n".join(lines))
    own = load_spec(
        None,
        [
            f"storage.root={tmp_path / 'runs-flat'}",
            "data.image_size=16",
            f"data.source={{format: imagefolder, uri: '{flat}', columns: {{label: category}}}}",
        ],
    )
    storage = Storage.from_spec(own.storage)
    built = build_data(own, storage, **QUIET)
    classes = built.multimodal.meta["classes"]
    assert classes == sorted({CLASSES[r["label"]] for r in rows[:12]})
    labels = {
        r["id"]: r["label"]
        for split in ("train", "val", "test")
        for r in split_table(storage, multimodal_uri(own), split, ["id", "label"]).to_pylist()
    }
    assert labels == {f"{i:03d}.png": classes.index(CLASSES[r["label"]]) for i, r in enumerate(rows[:12])}


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("data.source={format: imagefolder, uri: EMPTY}", "EMPTY: nothing here to import"),
        ("data.source={format: tfrecord, uri: EMPTY}", "data.source.format"),
        ("data.corpus={uri: 'EMPTY/*.txt'}", "data.corpus: no files match EMPTY/*.txt"),
        ("data.prompt_template='a photo'", "must contain {name}"),
        ("data.image_size=4", "data.image_size"),
    ],
)
def test_bad_sources_are_one_line_errors_before_anything_is_written(tmp_path, capsys, override, message):
    from aigc_ray.cli import main

    empty = tmp_path / "empty"
    empty.mkdir()
    override, message = override.replace("EMPTY", str(empty)), message.replace("EMPTY", str(empty))
    assert (
        main(
            [
                "data",
                "build",
                "-c",
                "examples/quickstart.yaml",
                "--set",
                f"storage.root={tmp_path / 'runs'}",
                "--set",
                override,
            ]
        )
        == 1
    )
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err and len(err.strip().splitlines()) <= 2, err
    assert not (tmp_path / "runs").exists() or not [p for p in (tmp_path / "runs").rglob("*") if p.is_file()]


def test_webdataset_class_indices_are_named_by_classes_txt(tmp_path, shape_rows):
    from aigc_ray.data.image_import import decide_classes, label_index, scan_example
    from aigc_ray.data.image_sources import list_webdataset, read_webdataset

    storage = Storage()
    rows = _picked(shape_rows, 2)
    members = {}
    for i, r in enumerate(rows):
        members[f"sub/{i:03d}.seg.png"] = r["image"]  # the key runs to the first dot of the file name
        members[f"sub/{i:03d}.seg.txt"] = b"an item"
        members[f"sub/{i:03d}.seg.cls"] = str(r["label"]).encode()
    _tar(tmp_path / "a.tar", members)
    (tmp_path / "classes.txt").write_text("\n".join(CLASSES) + "\n")
    (tmp_path / "._a.tar").write_bytes(b"\x00\x05\x16\x07")  # a Mac's resource fork: skipped
    listing = list_webdataset(storage, str(tmp_path))
    assert listing.class_names == list(CLASSES) and listing.files == 1
    examples = list(read_webdataset(storage, listing.units[0]))
    assert [e.key for e in examples] == [f"a.tar/sub/{i:03d}" for i in range(len(rows))]
    scanned = [scan_example(e) for e in examples]
    classes = decide_classes(listing, scanned)
    assert [label_index(s, classes) for s in scanned] == [r["label"] for r in rows]
    scanned[0]["label_int"] = 17  # an index past the names
    assert label_index(scanned[0], classes) is None
    with tarfile.open(tmp_path / "b.tar.gz", "w:gz") as tar:  # a gzipped shard, a TIFF sample in it
        tiff = io.BytesIO()
        Image.open(io.BytesIO(rows[0]["image"])).save(tiff, format="TIFF")
        for name, data in {"t.tif": tiff.getvalue(), "t.txt": b"an item", "t.cls": b"0"}.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    both = list_webdataset(storage, str(tmp_path))
    (gz,) = [u for u in both.units if u.uris[0].endswith("b.tar.gz")]
    (tiff_example,) = read_webdataset(storage, gz)
    assert scan_example(tiff_example)["problem"] == "" and tiff_example.label == 0
    (tmp_path / "b.tar.gz").unlink()
    (tmp_path / "classes.txt").unlink()
    unnamed = list_webdataset(storage, str(tmp_path))
    assert decide_classes(unnamed, scanned[1:]) == [str(k) for k in range(max(r["label"] for r in rows[1:]) + 1)]


def test_labels_pandas_wrote_as_floats_are_class_indices_and_others_are_named_problems(shape_rows):
    """An int label column with one missing value comes back from pandas as floats (3.0, NaN)."""
    from aigc_ray.data.image_import import scan_example
    from aigc_ray.data.image_sources import Example

    image = shape_rows[0]["image"]
    scanned = [scan_example(Example(f"k{i}", f"row {i}", image, "an item", y)) for i, y in enumerate([3.0, 2, "ring"])]
    assert [(s["label_int"], s["label_name"], s["problem"]) for s in scanned] == [
        (3, "", ""),
        (2, "", ""),
        (-1, "ring", ""),
    ]
    assert scan_example(Example("n", "row n", image, "an item", float("nan")))["problem"] == "no label"
    odd = scan_example(Example("h", "row h", image, "an item", 2.5))
    assert odd["problem"] == "label 2.5 is neither a class index nor a class name"


def test_small_data_and_data_without_a_validation_folder_still_get_every_split():
    """Per-class rounding gave 5 images a class no validation or test rows (0.5 rounds to 0 in
    every class); data with train/ and test/ folders but no validation/ had no val rows at all."""
    rows = [{"key": f"k{i}", "split": ""} for i in range(10)]
    labels = [i % 2 for i in range(10)]
    splits = decide_splits(rows, labels, 0, FRACTIONS)
    assert sorted(splits) == ["test"] + ["train"] * 8 + ["val"]  # round(0.1 x 10) each, in all
    assert all(any(s == "train" for s, y in zip(splits, labels, strict=True) if y == k) for k in (0, 1))

    stated = [{"key": f"k{i}", "split": "test" if i < 20 else "train"} for i in range(120)]
    labels = [i % 4 for i in range(120)]
    splits = decide_splits(stated, labels, 0, FRACTIONS)
    assert splits[:20] == ["test"] * 20  # the data's own test rows stay
    assert splits.count("val") == 10 and splits.count("test") == 20  # val: 0.1 of the 100 training rows
    per_class = [sum(s == "val" and y == k for s, y in zip(splits, labels, strict=True)) for k in range(4)]
    assert sorted(per_class) == [2, 2, 3, 3]  # stratified


@pytest.mark.slow
def test_too_few_examples_for_a_split_is_a_one_line_error_before_anything_is_written(ray_local, tmp_path, shape_rows):
    root = tmp_path / "imgs"
    _imagefolder(root, _picked(shape_rows, 1)[:2])  # 2 images: no val or test row can be drawn
    spec = load_spec(None, [f"storage.root={tmp_path / 'runs'}", f"data.source={{format: imagefolder, uri: '{root}'}}"])
    with pytest.raises(SourceError, match=r"the 2 usable examples leave no val rows \(data.splits.val = 0.1\)"):
        build_data(spec, Storage.from_spec(spec.storage), **QUIET)
    assert not (tmp_path / "runs").exists() or not [p for p in (tmp_path / "runs").rglob("*.parquet")]


def test_shards_named_by_split_as_the_hub_lays_them_out_keep_their_split(tmp_path, shape_rows):
    """A dataset downloaded from the Hugging Face Hub: train-00000-of-00001.parquet and
    test-00000-of-00001.parquet. Its own test rows stay test rows (they were re-split by the
    spec's fractions, mixing the published test set into training); a split column still wins."""
    from aigc_ray.data.image_sources import list_parquet, read_parquet, split_of_path

    assert [split_of_path(p) for p in ("validation/shard-0.tar", "data/test-00000-of-00001.parquet", "part-0.tar")] == [
        "val",
        "test",
        None,
    ]
    rows = _picked(shape_rows, 2)
    for split in ("train", "test"):
        table = pa.table({"image": [r["image"] for r in rows], "text": ["x"] * len(rows), "label": [0] * len(rows)})
        pq.write_table(table, tmp_path / f"{split}-00000-of-00001.parquet")
    storage = Storage()
    listing = list_parquet(storage, str(tmp_path))
    got = {u.uris[0].rsplit("/", 1)[-1]: {e.split for e in read_parquet(storage, u)} for u in listing.units}
    assert got == {"train-00000-of-00001.parquet": {"train"}, "test-00000-of-00001.parquet": {"test"}}
    table = table.append_column("split", pa.array(["validation"] * len(rows)))
    pq.write_table(table, tmp_path / "test-00000-of-00001.parquet")
    (unit,) = [
        u for u in list_parquet(storage, str(tmp_path)).units if u.uris[0].endswith("/test-00000-of-00001.parquet")
    ]
    assert {e.split for e in read_parquet(storage, unit)} == {"val"}
