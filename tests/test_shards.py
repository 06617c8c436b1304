"""Shards: the embedded dataset's content, build on disk and S3, validation naming file and row."""

from __future__ import annotations

import collections
import io
import re

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from aigc_ray.cli import main
from aigc_ray.data.build import build_data
from aigc_ray.data.digits import WORDS, digit_batches
from aigc_ray.data.images import decode_png, encode_png
from aigc_ray.data.schema import MULTIMODAL_SCHEMA
from aigc_ray.data.shards import validate_shards
from aigc_ray.data.tokenizer import download_tokenizer
from aigc_ray.layout import data_root
from aigc_ray.manifest import read_manifest
from aigc_ray.spec import load_spec
from aigc_ray.storage import Storage, join

FRACTIONS = {"train": 0.8, "val": 0.1, "test": 0.1}


def digits_table(seed=0, vague=0.15, wrong=0.10) -> pa.Table:
    return pa.Table.from_batches(list(digit_batches(seed, FRACTIONS, vague, wrong)))


def test_embedded_digits_are_real_captioned_and_deterministic():
    t = digits_table()
    assert t.num_rows == 1797 and t.schema.equals(MULTIMODAL_SCHEMA, check_metadata=True)
    assert collections.Counter(t["split"].to_pylist()) == {"train": 1437, "val": 180, "test": 180}
    assert set(t["label"].to_pylist()) == set(range(10))
    kinds = collections.Counter(t["caption_kind"].to_pylist())
    assert 0.12 < kinds["vague"] / 1797 < 0.18 and 0.07 < kinds["wrong"] / 1797 < 0.13
    for row in t.slice(0, 300).to_pylist():
        words = re.findall(r"[a-z0-9]+", row["text"])
        named = {d for d in range(10) if WORDS[d] in words or str(d) in words}
        if row["caption_kind"] == "exact":
            assert named == {row["label"]}, row
        elif row["caption_kind"] == "wrong":
            assert named and row["label"] not in named, row
        else:
            assert not named, row
        assert decode_png(row["image"]).shape == (8, 8, 1) == tuple(row["image_shape"])
    assert len(set(t["text"].to_pylist())) > 100  # varied wording
    assert digits_table().equals(t)
    assert not digits_table(seed=1).equals(t)


def test_png_round_trip_and_bad_bytes():
    import numpy as np

    pixels = (np.arange(64, dtype=np.uint8) * 4).reshape(8, 8)
    assert (decode_png(encode_png(pixels))[:, :, 0] == pixels).all()
    with pytest.raises(ValueError, match="not a decodable PNG"):
        decode_png(b"\x89PNG garbage")


def test_local_build_validates_and_is_idempotent(local_data, capsys):
    spec, storage = local_data
    root = data_root(spec)
    report = validate_shards(storage, join(root, "multimodal"))
    assert report.ok, report.faults
    assert report.rows == 1797 and report.files == 6 and report.splits == {"train": 1437, "val": 180, "test": 180}
    corpus = validate_shards(storage, join(root, "corpus"))
    assert corpus.ok and corpus.kind == "text/v1" and corpus.rows > 1000
    again = build_data(spec, storage, log=lambda *_: None)
    assert again.written == []
    assert main(["data", "validate", join(root, "multimodal"), join(root, "corpus")]) == 0
    out = capsys.readouterr().out
    assert "multimodal/v1, 6 file(s), 1797 rows (test 180, train 1437, val 180)" in out and out.strip().endswith("ok")


def test_s3_build_matches_local_byte_for_byte(local_data, s3_data):
    (lspec, lstore), (sspec, sstore) = local_data, s3_data
    for part in ("multimodal", "corpus", "tokenizer"):
        local = read_manifest(lstore, join(data_root(lspec), part))
        remote = read_manifest(sstore, join(data_root(sspec), part))
        assert local.fingerprint == remote.fingerprint, part
    report = validate_shards(sstore, join(data_root(sspec), "multimodal"))
    assert report.ok and report.rows == 1797
    assert data_root(sspec).startswith("s3://") and sstore.list_files(join(data_root(sspec), "multimodal"), ".parquet")


def test_rebuild_with_other_shard_size_replaces_the_set(tmp_path):
    spec = load_spec(None, [f"storage.root={tmp_path}", "data.rows_per_shard=1000", "data.corpus_max_chars=20000"])
    storage = Storage()
    first = build_data(spec, storage, log=lambda *_: None)
    assert len(first.multimodal.files) == 2
    spec.data.rows_per_shard = 500
    second = build_data(spec, storage, log=lambda *_: None)
    assert second.written == ["multimodal", "corpus", "tokenizer"]
    files = storage.list_files(join(data_root(spec), "multimodal"), ".parquet")
    assert [f.rsplit("/", 1)[1] for f in files] == sorted(second.multimodal.files) and len(files) == 4
    assert validate_shards(storage, join(data_root(spec), "multimodal")).rows == 1797


@pytest.fixture
def copy_of_shards(local_data, tmp_path):
    """A private copy of the local multimodal shard set, to damage."""
    spec, storage = local_data
    src = join(data_root(spec), "multimodal")
    dst = str(tmp_path / "multimodal")
    for f in storage.list_files(src):
        storage.write_bytes(join(dst, f.rsplit("/", 1)[1]), storage.read_bytes(f))
    names = sorted(read_manifest(storage, dst).files)
    return storage, dst, names


def test_corrupt_parquet_file_is_named(copy_of_shards, capsys):
    storage, uri, names = copy_of_shards
    storage.write_bytes(join(uri, names[2]), b"PAR1 this is not parquet")
    report = validate_shards(storage, uri)
    assert not report.ok
    assert any(f.startswith(join(uri, names[2])) and "not a readable Parquet file" in f for f in report.faults)
    assert main(["data", "validate", uri]) == 1
    out = capsys.readouterr().out
    assert f"FAULT {join(uri, names[2])}: not a readable Parquet file" in out and "FAILED" in out


def test_wrong_schema_is_named(copy_of_shards):
    storage, uri, names = copy_of_shards
    table = pq.read_table(join(uri, names[0])).drop_columns(["label"])
    table = table.set_column(
        table.schema.get_field_index("image_shape"), "image_shape", pa.array(["8x8"] * table.num_rows)
    )
    buf = io.BytesIO()
    pq.write_table(table, buf)
    storage.write_bytes(join(uri, names[0]), buf.getvalue())
    faults = validate_shards(storage, uri).faults
    assert f"{join(uri, names[0])}: wrong schema: missing column 'label' (int32)" in faults
    assert (
        f"{join(uri, names[0])}: wrong schema: column 'image_shape' has type string, expected list<item: int32>"
        in faults
    )


def test_undecodable_image_and_bad_values_name_the_row(copy_of_shards):
    storage, uri, names = copy_of_shards
    table = pq.read_table(join(uri, names[1]))
    images = table["image"].to_pylist()
    images[17] = b"not a png"
    splits = table["split"].to_pylist()
    splits[5] = "training"
    table = table.set_column(
        table.schema.get_field_index("image"), table.schema.field("image"), pa.array(images, pa.binary())
    )
    table = table.set_column(table.schema.get_field_index("split"), table.schema.field("split"), pa.array(splits))
    buf = io.BytesIO()
    pq.write_table(table, buf)
    storage.write_bytes(join(uri, names[1]), buf.getvalue())
    faults = validate_shards(storage, uri).faults
    assert any(f.startswith(f"{join(uri, names[1])} row 17: image: not a decodable PNG") for f in faults)
    assert f"{join(uri, names[1])} row 5: split 'training' is not one of train, val, test" in faults
    assert f"{join(uri, names[1])}: content hash differs from the manifest (modified after build)" in faults


def test_validate_missing_location_is_a_clear_error(tmp_path, capsys):
    assert main(["data", "validate", str(tmp_path / "nothing")]) == 1
    assert "no shard set here" in capsys.readouterr().err


def test_tokenizer_loads_with_plain_transformers(local_data, tmp_path):
    from transformers import AutoTokenizer

    spec, storage = local_data
    folder = download_tokenizer(storage, join(data_root(spec), "tokenizer"), tmp_path / "tok")
    tok = AutoTokenizer.from_pretrained(folder)
    assert len(tok) == spec.data.vocab_size and tok.pad_token == "<pad>" and tok.mask_token == "<mask>"
    text = "a handwritten seven, written by hand"
    ids = tok(text)["input_ids"]
    assert tok.decode(ids) == text and len(ids) < len(text) // 2  # BPE merges, not bytes


def test_a_write_that_fails_part_way_leaves_the_previous_set_and_nothing_else(tmp_path):
    from aigc_ray.data.schema import MULTIMODAL_V1
    from aigc_ray.data.shards import write_shards

    storage, uri = Storage(), str(tmp_path / "set")
    batches = list(digit_batches(0, {"train": 0.8, "val": 0.1, "test": 0.1}, 0.1, 0.1, batch_rows=100))
    first = write_shards(storage, uri, iter(batches[:3]), MULTIMODAL_V1, 100, "h1")

    def failing():
        yield from batches[5:9]  # new content: new file names
        raise RuntimeError("the source broke")

    with pytest.raises(RuntimeError, match="the source broke"):
        write_shards(storage, uri, failing(), MULTIMODAL_V1, 100, "h2")
    assert read_manifest(storage, uri).files == first.files
    assert {f.rsplit("/", 1)[-1] for f in storage.list_files(uri, suffix=".parquet")} == set(first.files)


def _copy_set(storage, src: str, dst: str) -> list[str]:
    for f in storage.list_files(src):
        storage.write_bytes(join(dst, f.rsplit("/", 1)[1]), storage.read_bytes(f))
    return sorted(read_manifest(storage, dst).files)


def _same_size_edit(storage, uri: str) -> None:
    """Overwrite a shard with a file that still parses and has the same length: one caption changed."""
    data = bytearray(storage.read_bytes(uri))
    table = pq.read_table(io.BytesIO(bytes(data)))
    texts = table["text"].to_pylist()
    texts[0] = texts[0][::-1]  # same characters, same compressed size most of the time
    edited = table.set_column(table.schema.get_field_index("text"), table.schema.field("text"), pa.array(texts))
    buf = io.BytesIO()
    pq.write_table(edited, buf, compression="zstd")
    storage.write_bytes(uri, buf.getvalue())


def test_data_build_checks_what_it_would_skip_and_rebuilds_a_damaged_set(tmp_path, local_data):
    base, storage = local_data
    spec = load_spec(None, [f"storage.root={tmp_path}", "data.rows_per_shard=300"])
    for part in ("multimodal", "corpus", "tokenizer"):
        _copy_set(storage, join(data_root(base), part), join(data_root(spec), part))
    names = sorted(read_manifest(storage, join(data_root(spec), "multimodal")).files)
    damaged = join(data_root(spec), "multimodal", names[1])
    storage.write_bytes(damaged, storage.read_bytes(damaged)[:-100])  # truncated
    logged: list[str] = []
    built = build_data(spec, storage, log=logged.append)
    assert "multimodal" in built.written and "corpus" not in built.written, logged  # the intact part is kept
    assert any(names[1] in line and "truncated or overwritten" in line and "rebuilding" in line for line in logged)
    assert validate_shards(storage, join(data_root(spec), "multimodal")).ok


@pytest.mark.parametrize("damage", ["truncate", "same-size edit", "delete"])
def test_readers_refuse_a_shard_that_is_not_what_its_manifest_says(copy_of_shards, damage):
    from aigc_ray.data import shards

    storage, uri, names = copy_of_shards
    target = join(uri, names[2])
    shards._VERIFIED.clear()  # another test of this process may have read the original
    if damage == "truncate":
        storage.write_bytes(target, storage.read_bytes(target)[:-7])
        expected = "truncated or overwritten"
    elif damage == "delete":
        storage.delete(target)
        expected = "missing"
    else:
        _same_size_edit(storage, target)
        expected = "since it was built"
    with pytest.raises(shards.ShardError, match=rf"{names[2]}: .*{expected}.*run `aigc data build`"):
        shards.split_table(storage, uri, "train", ["text"])


@pytest.mark.slow
def test_aigc_data_stream_on_a_damaged_shard_is_one_line_naming_it(ray_local, local_data, tmp_path, capsys):
    base, storage = local_data
    spec_args = ["--set", f"storage.root={tmp_path}", "--set", "data.rows_per_shard=300"]
    names = _copy_set(storage, join(data_root(base), "multimodal"), join(str(tmp_path), "data", "multimodal"))
    _same_size_edit(storage, join(str(tmp_path), "data", "multimodal", names[0]))
    assert main(["data", "stream", "-c", "examples/quickstart.yaml", *spec_args]) == 1
    err = capsys.readouterr().err.strip()
    assert names[0] in err and "Traceback" not in err and len(err.splitlines()) == 1, err
