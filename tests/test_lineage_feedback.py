"""`aigc lineage` marks inputs that changed since an artifact recorded them; `aigc feedback
ingest` keeps the latest correction of an answer; the feedback commands answer clearly."""

from __future__ import annotations

import json

import numpy as np
import pytest

from aigc_ray.cli import main
from aigc_ray.data.feedback import feedback_row, write_feedback
from aigc_ray.data.images import encode_png
from aigc_ray.layout import feedback_shards_uri, feedback_uri
from aigc_ray.manifest import publish_directory
from aigc_ray.serve.schema import FeedbackRequest
from aigc_ray.spec import load_spec
from aigc_ray.storage import Storage


def _artifact(storage, tmp_path, name: str, content: str, inputs: dict | None = None):
    src = tmp_path / f"src-{name}"
    src.mkdir(exist_ok=True)
    (src / "a.txt").write_text(content)
    return publish_directory(
        storage, src, str(tmp_path / name), kind=f"test/{name}", spec_hash="s", inputs=inputs or {}
    )


def test_lineage_marks_the_input_that_changed_and_only_that_one(tmp_path, capsys):
    storage = Storage(None)
    data = _artifact(storage, tmp_path, "data", "v1")
    tokenizer = _artifact(storage, tmp_path, "tokenizer", "bpe")
    inputs = {str(tmp_path / "data"): data.fingerprint, str(tmp_path / "tokenizer"): tokenizer.fingerprint}
    _artifact(storage, tmp_path, "model", "weights", inputs)

    assert main(["lineage", str(tmp_path / "model")]) == 0
    assert "CHANGED" not in capsys.readouterr().out

    _artifact(storage, tmp_path, "data", "v2")  # the data is rebuilt after the model was trained
    assert main(["lineage", str(tmp_path / "model")]) == 0
    lines = capsys.readouterr().out.splitlines()
    data_line = next(line for line in lines if "test/data" in line)
    tokenizer_line = next(line for line in lines if "test/tokenizer" in line)
    assert f"CHANGED since (recorded {data.fingerprint[:12]})" in data_line
    assert "CHANGED" not in tokenizer_line and "CHANGED" not in lines[0]


def _correction(storage, spec, response_id: str, label: int, pixels: np.ndarray | None, caption: str) -> None:
    """Feedback as the server writes it; ``pixels`` None: the server no longer held the inputs."""
    request = FeedbackRequest(response_id=response_id, correct_label=label)
    record = {"kind": "classify", "answer": json.dumps({"label": 0}), "inputs_evicted": True}
    if pixels is not None:
        record = {**record, "input_text": caption, "input_image": encode_png(pixels)}
    write_feedback(
        storage,
        feedback_uri(spec),
        feedback_row(f"fb-{response_id}-{label}", request, record, "v1", correct_label=label),
    )


def test_feedback_shards_written_with_int8_labels_read_beside_the_new_ones(tmp_path):
    """correct_label widened from int8 (a user's data may have hundreds of classes): the shards
    written before read as the schema is now."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from aigc_ray.data.feedback import FEEDBACK_SCHEMA, read_feedback
    from aigc_ray.storage import Storage

    storage = Storage()
    record = {"kind": "classify", "answer": "{}", "input_text": "a", "input_image": b"png"}
    new = feedback_row("new", FeedbackRequest(response_id="r1", correct_label=300), record, "v1", correct_label=300)
    write_feedback(storage, str(tmp_path), new)
    old_schema = pa.schema([f.with_type(pa.int8()) if f.name == "correct_label" else f for f in FEEDBACK_SCHEMA])
    old = {**new, "id": "old", "correct_label": 7}
    pq.write_table(pa.Table.from_pylist([old], schema=old_schema), tmp_path / "part-0-old.parquet")
    table = read_feedback(storage, str(tmp_path))
    assert table.schema == FEEDBACK_SCHEMA
    assert sorted(zip(table["id"].to_pylist(), table["correct_label"].to_pylist(), strict=True)) == [
        ("new", 300),
        ("old", 7),
    ]


def test_feedback_ingest_keeps_the_latest_correction_of_an_answer(local_data, capsys):
    from aigc_ray.data.arrays import shard_arrays

    root = local_data[0].storage.root
    overrides = [f"storage.root={root}", "name=feedback-ingest"]
    spec = load_spec(None, overrides)
    storage = Storage.from_spec(spec.storage)
    pixels = (np.arange(64, dtype=np.uint8) * 4).reshape(8, 8)
    _correction(storage, spec, "clf-a", 5, pixels, "a handwritten digit")
    _correction(storage, spec, "clf-a", 3, pixels, "a handwritten digit")  # changed their mind, same second
    _correction(storage, spec, "clf-b", 7, pixels.T.copy(), "a seven")
    _correction(storage, spec, "clf-c", 1, None, "")  # its inputs were evicted: counted, not an example

    args = ["feedback", "ingest", "-c", "examples/quickstart.yaml"] + [a for o in overrides for a in ("--set", o)]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "(2 examples)" in out and "1 without their inputs, left out" in out, out
    rows = shard_arrays(storage, feedback_shards_uri(spec), "train")
    assert sorted(rows["label"].tolist()) == [3, 7]  # clf-a's latest correction, once
    assert sorted(rows["text"].tolist()) == ["a handwritten digit", "a seven"]
    np.testing.assert_allclose(rows["image"][rows["label"] == 3][0, 0], pixels / 255.0, atol=1e-6)


def test_feedback_images_become_examples_of_the_experiments_own_shape(tmp_path, capsys):
    """On RGB 32x32 data a client's 64x64 colour PNG becomes a 32x32 RGB training example."""
    from aigc_ray.data.arrays import shard_arrays
    from aigc_ray.data.build import build_data

    overrides = [f"storage.root={tmp_path}", "data.dataset=shapes"]
    spec = load_spec(None, overrides)
    storage = Storage.from_spec(spec.storage)
    build_data(spec, storage, log=lambda *_: None)
    red = np.zeros((64, 64, 3), np.uint8)
    red[..., 0] = 200
    _correction(storage, spec, "clf-rgb", 2, red, "a shape")
    args = ["feedback", "ingest", "-c", "examples/quickstart.yaml"] + [a for o in overrides for a in ("--set", o)]
    assert main(args) == 0, capsys.readouterr().err
    rows = shard_arrays(storage, feedback_shards_uri(spec), "train")
    assert rows["image"].shape == (1, 3, 32, 32)
    np.testing.assert_allclose(rows["image"][0, :, 5, 5], [200 / 255, 0, 0], atol=1e-6)


@pytest.mark.parametrize(
    ("action", "message"),
    [("ingest", "no corrected classification"), ("finetune", "aigc ensemble build")],
)
def test_feedback_commands_without_their_inputs_say_what_to_run(tmp_path, capsys, action, message):
    code = main(["feedback", action, "-c", "examples/quickstart.yaml", "--set", f"storage.root={tmp_path}"])
    err = capsys.readouterr().err
    assert code == 1 and message in err and len(err.strip().splitlines()) == 1, err
