"""Experiments in MLflow: runs nest the way `aigc run` nests its stages, read back with MLflow's
own client from a real SQLite store. (A sweep's trial runs and a 2-worker pretraining job's one
run are checked in test_sweep.py and test_pretrain.py, beside the runs they come from.)"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from aigc_ray.spec import SpecError, load_spec
from aigc_ray.tracking import param_values, tracked_run, tracking_uri


def _store(tmp_path):
    from mlflow import MlflowClient

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    return uri, MlflowClient(uri)


def _runs(client, experiment: str) -> dict:
    found = client.get_experiment_by_name(experiment)
    assert found is not None, f"no MLflow experiment {experiment!r}"
    return {r.info.run_name: r for r in client.search_runs([found.experiment_id])}


def test_a_run_with_stages_is_a_parent_with_children_and_a_failed_stage_is_failed(tmp_path):
    uri, client = _store(tmp_path)
    spec = load_spec(None, ["name=nested", f"tracking.mlflow_uri={uri}"])
    with tracked_run(spec, "run") as parent:
        with tracked_run(spec, "pretrain", params={"lr": 0.003, "model": {"preset": "tiny"}}) as stage:
            with tracked_run(spec, "pretrain") as again:  # the stage's own function, inside the pipeline's
                assert again == stage
            stage.log_metrics({"loss": 2.5, "note": "not a number", "eval": {"loss": 2.0}}, step=3)
        with pytest.raises(RuntimeError), tracked_run(spec, "sweep_gan"):
            raise RuntimeError("a trial crashed")
    runs = _runs(client, "nested")
    assert set(runs) == {"run", "pretrain", "sweep_gan"}
    assert runs["pretrain"].data.tags["mlflow.parentRunId"] == parent.run_id
    assert runs["sweep_gan"].data.tags["mlflow.parentRunId"] == parent.run_id
    assert "mlflow.parentRunId" not in runs["run"].data.tags
    assert runs["pretrain"].data.params == {"lr": "0.003", "model.preset": "tiny"}
    assert runs["pretrain"].data.metrics == {"loss": 2.5, "eval.loss": 2.0}
    assert [m.step for m in client.get_metric_history(stage.run_id, "loss")] == [3]
    assert runs["sweep_gan"].info.status == "FAILED" and runs["run"].info.status == "FINISHED"
    tags = runs["pretrain"].data.tags
    assert len(tags["aigc.spec_hash"]) == 64 and tags["aigc.code_version"] and tags["aigc.storage_root"]


def test_buffered_steps_are_written_each_at_its_own_step_even_past_one_batchs_limit(tmp_path):
    """A training loop writes its steps in one call per log_every: every step keeps its own point,
    in order, and more metrics than MLflow takes in one batch (1,000) all arrive."""
    uri, client = _store(tmp_path)
    spec = load_spec(None, ["name=buffered", f"tracking.mlflow_uri={uri}"])
    with tracked_run(spec, "pretrain") as stage:
        stage.log_steps([({"loss": 1.0 / s, "lr": 0.1, "tokens_per_s": 100.0 * s}, s) for s in range(1, 401)])
    loss = client.get_metric_history(stage.run_id, "loss")
    assert [m.step for m in loss] == list(range(1, 401))
    assert [m.value for m in loss] == pytest.approx([1.0 / s for s in range(1, 401)])
    assert len(client.get_metric_history(stage.run_id, "tokens_per_s")) == 400  # 1,200 metrics in all


def test_a_stage_alone_is_a_top_level_run_and_tracking_off_writes_nothing(tmp_path):
    uri, client = _store(tmp_path)
    spec = load_spec(None, ["name=alone", f"tracking.mlflow_uri={uri}"])
    with tracked_run(spec, "finetune"):
        pass
    assert "mlflow.parentRunId" not in _runs(client, "alone")["finetune"].data.tags

    off = load_spec(None, ["tracking.enabled=false", f"tracking.mlflow_uri=sqlite:///{tmp_path}/off.db"])
    assert tracking_uri(off) is None
    with tracked_run(off, "pretrain") as run:
        assert run is None
    assert not (tmp_path / "off.db").exists()


def test_the_store_defaults_to_the_environment_then_runs_mlflow_db(tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5000")
    assert tracking_uri(load_spec(None, [])) == "http://127.0.0.1:5000"
    monkeypatch.delenv("MLFLOW_TRACKING_URI")
    monkeypatch.chdir(tmp_path)
    assert tracking_uri(load_spec(None, [])) == f"sqlite:///{tmp_path}/runs/mlflow.db"
    # relative SQLite paths are the command's directory's, wherever a Ray worker runs
    assert (
        load_spec(None, ["tracking.mlflow_uri=sqlite:///x/m.db"]).tracking.mlflow_uri == f"sqlite:///{tmp_path}/x/m.db"
    )


def test_a_path_that_is_not_a_tracking_uri_is_refused_by_name():
    with pytest.raises(SpecError, match=r"tracking\.mlflow_uri.*not an MLflow tracking URI"):
        load_spec(None, ["tracking.mlflow_uri=./runs/mlflow.db"])


def test_params_are_strings_mlflow_accepts():
    long = "x" * 10_000
    assert param_values({"a": {"b": 1, "c": [1, 2]}, "d": long, "e": None}) == {
        "a.b": "1",
        "d": "x" * 500,
        "e": "None",
    }


def test_mlflow_telemetry_is_off_without_the_user_asking(tmp_path):
    ci_markers = ("PYTEST_CURRENT_TEST", "CI", "GITHUB_ACTIONS", "MLFLOW_DISABLE_TELEMETRY", "DO_NOT_TRACK")
    env = {k: v for k, v in os.environ.items() if k not in ci_markers}
    check = "from mlflow.telemetry.utils import is_telemetry_disabled; print(is_telemetry_disabled())"
    ours = (
        "from aigc_ray.spec import load_spec; from aigc_ray.tracking import tracked_run;"
        f"spec = load_spec(None, ['tracking.mlflow_uri=sqlite:///{tmp_path}/t.db']);"
        "ctx = tracked_run(spec, 'run'); ctx.__enter__();"
    )

    def disabled(code: str) -> str:
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
        return out.stdout.strip().splitlines()[-1] if out.stdout.strip() else out.stderr

    assert disabled("import mlflow;" + check) == "False"  # MLflow alone would send usage data
    assert disabled(ours + check) == "True"


def test_every_stage_that_runs_leaves_tensorboard_events_of_its_numbers_beside_the_run(tmp_path):
    from conftest import tensorboard_scalars_in

    from aigc_ray.layout import stage_events_uri
    from aigc_ray.pipeline import RunContext, RunOptions, Stage, _run_stage
    from aigc_ray.storage import Storage

    uri, client = _store(tmp_path)
    spec = load_spec(None, ["name=events", f"storage.root={tmp_path}/runs", f"tracking.mlflow_uri={uri}"])
    storage = Storage.from_spec(spec.storage)

    def stream(spec, storage, ctx):  # a stage as the pipeline runs it: what it returns is its summary
        return {"rows": 1437, "rows_per_s": 188.5, "note": "not a number", "nested": {"batches": 23}}

    results: list = []
    ctx = RunContext(RunOptions(), data_written=True, log=lambda *_: None)  # new data: the check runs
    _run_stage(spec, storage, Stage("stream", (), stream), "[2/9] stream", ctx, results, None)
    assert results[0].status == "ran"
    events = tensorboard_scalars_in(Path(stage_events_uri(spec, "stream")))
    assert events == {"rows": 1437.0, "rows_per_s": 188.5, "nested.batches": 23.0}
    assert _runs(client, "events")["stream"].data.metrics == events  # the same numbers in MLflow


def test_the_store_opens_on_a_thread_and_the_stages_run_goes_into_it(tmp_path):
    """A command opens its MLflow store on a thread while Ray starts: the thread leaves the store
    ready (MLflow's schema in the SQLite file) and the client it made is the one the stage's
    run uses; with tracking off it starts nothing."""
    from aigc_ray import tracking

    uri, client = f"sqlite:///{tmp_path}/early/mlflow.db", None
    spec = load_spec(None, ["name=early", f"tracking.mlflow_uri={uri}"])
    thread = tracking.open_store_early(spec)
    thread.join(timeout=120)
    assert not thread.is_alive()
    assert (tmp_path / "early" / "mlflow.db").stat().st_size > 0  # the schema, written by the thread
    made = tracking._client(uri)
    with tracked_run(spec, "pretrain") as run:
        assert tracking._client(run.uri) is made
    _, client = _store(tmp_path / "early")
    assert set(_runs(client, "early")) == {"pretrain"}
    assert tracking.open_store_early(load_spec(None, ["tracking.enabled=false"])) is None


def test_a_store_that_cannot_open_fails_the_stage_by_name_not_the_thread(tmp_path):
    """The thread keeps quiet about a store it cannot open (here a text file where the SQLite
    database would be); the stage's own call names it, with what the thread met. (A store MLflow
    retries, such as a folder in the file's place, ~100 s, is not waited for a second time.)"""
    import threading

    from aigc_ray import tracking

    (tmp_path / "store.db").write_text("notes, not a database " * 20)
    uri = f"sqlite:///{tmp_path}/store.db"
    spec = load_spec(None, ["name=broken", f"tracking.mlflow_uri={uri}"])
    raised = []
    previous, threading.excepthook = threading.excepthook, raised.append
    try:
        thread = tracking.open_store_early(spec)
        thread.join(timeout=120)
    finally:
        threading.excepthook = previous
    assert not thread.is_alive() and raised == []
    assert uri in tracking._OPEN_ERRORS  # kept for the stage's first call
    with (
        pytest.raises(RuntimeError, match=r"MLflow at sqlite:///.*store\.db refused to open a run \(DatabaseError"),
        tracked_run(spec, "pretrain"),
    ):
        pass
