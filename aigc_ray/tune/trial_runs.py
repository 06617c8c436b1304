"""Each sweep trial a child MLflow run of its sweep's run (``aigc_ray.tracking``)."""

from __future__ import annotations

from ray.air.integrations.mlflow import MLflowLoggerCallback

from ..tracking import RunRef, active_run, mlflow_module, trial_params


class TrialRuns(MLflowLoggerCallback):
    """Ray Tune's MLflow callback (per-iteration results as metrics, FINISHED/FAILED at the end),
    with the trial config's scalars as params: configs also carry values MLflow refuses as
    params (nested settings, long lists). A module-level class: Tune pickles its callbacks with
    the experiment, so that ``--resume`` restores them."""

    def __init__(self, parent: RunRef):
        mlflow_module()  # telemetry off before Ray's callback imports MLflow
        experiment = mlflow_module().MlflowClient(parent.uri).get_experiment(parent.experiment_id).name
        super().__init__(parent.uri, experiment_name=experiment, tags={"mlflow.parentRunId": parent.run_id})
        self.parent = parent

    def log_trial_start(self, trial):
        if trial not in self._trial_runs:
            tags = {**self.tags, "trial_name": str(trial), "aigc.trial_id": trial.trial_id}
            self._trial_runs[trial] = self.mlflow_util.start_run(tags=tags, run_name=str(trial)).info.run_id
            run = RunRef(self.parent.uri, self.parent.experiment_id, self._trial_runs[trial], str(trial))
            run.log_params(trial_params(trial.config))


def trial_run_callbacks() -> list:
    """The callbacks for a sweep run inside an open tracked run (none when tracking is off)."""
    parent = active_run()
    return [] if parent is None else [TrialRuns(parent)]
