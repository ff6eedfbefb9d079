"""Optional experiment tracking in MLflow, through Ray Tune's own `MLflowLoggerCallback`.

`python -m search run SPACE --mlflow [URI]`: the study is one parent MLflow run; every trial is a
child run (tag `mlflow.parentRunId`) with its sampled parameters, and each epoch's report as metrics
(val_miou, peak_gb, objective, ...). Without a URI the store is `mlflow.db` in the run directory, a
local SQLite store (MLflow's recommended local backend; its directory store is in maintenance mode)
that needs no server: `mlflow ui --backend-store-uri sqlite:///runs/<run>/mlflow.db`.
MLflow is an optional install: `pip install -e '.[tracking]'`.
"""

from __future__ import annotations

from pathlib import Path

from search.errors import UserError

IN_RUN_DIRECTORY = "run-dir"  # what `--mlflow` without a URI means
LOCAL_STORE = "mlflow.db"


def tracking_uri(flag: str | None, out: Path) -> str | None:
    if flag is None:
        return None
    if flag == IN_RUN_DIRECTORY:
        return f"sqlite:///{(out / LOCAL_STORE).resolve()}"
    return flag


def mlflow_callback(uri: str, study: str, space_name: str):
    """Tune's MLflow callback, its trial runs nested under one parent run for the study."""
    try:
        import mlflow
        from ray.air.integrations.mlflow import MLflowLoggerCallback
    except ImportError:
        raise UserError("--mlflow: MLflow is not installed; pip install -e '.[tracking]'") from None
    client = mlflow.MlflowClient(tracking_uri=uri)
    experiment = client.get_experiment_by_name(study)
    experiment_id = experiment.experiment_id if experiment else client.create_experiment(study)
    parent = client.create_run(experiment_id, run_name=study, tags={"em_search.space": space_name,
                                                                   "em_search.role": "study"})
    return MLflowLoggerCallback(tracking_uri=uri, experiment_name=study, save_artifact=False,
                                tags={"mlflow.parentRunId": parent.info.run_id, "em_search.role": "trial"})


def close_study(callback) -> None:
    """Mark the study's parent run finished once the search is over."""
    if callback is None:
        return
    import mlflow

    mlflow.MlflowClient(tracking_uri=callback.tracking_uri).set_terminated(callback.tags["mlflow.parentRunId"])
