"""Optional experiment tracking in MLflow, through Ray Tune's own `MLflowLoggerCallback`.

`python -m search run SPACE --mlflow [URI]`: the study is one parent MLflow run; every trial is a
child run (tag `mlflow.parentRunId`) with its sampled parameters, and each epoch's report as metrics
(val_miou, peak_gb, objective, ...). Without a URI the store is `mlflow.db` in the run directory, a
local SQLite store (MLflow's recommended local backend; its directory store is in maintenance mode)
that needs no server: `mlflow ui --backend-store-uri sqlite:///runs/<run>/mlflow.db`.
MLflow is an optional install: `pip install -e '.[tracking]'`.

Tracking must never lose a search: a server URI is checked before Ray starts (one line, exit 2, when
nothing answers), MLflow's HTTP retries are shortened in this process (MLflow's own defaults retry for
about four minutes per call), and if the server goes away during the run the callback warns once and
the search finishes without it.
"""

from __future__ import annotations

import os
import sys
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, Callable
from urllib.parse import urlparse

from search.errors import UserError

IN_RUN_DIRECTORY = "run-dir"  # what `--mlflow` without a URI means
LOCAL_STORE = "mlflow.db"
CHECK_SECONDS = 5.0
# MLflow's own environment variables (mlflow/environment_variables.py); a user's own settings win.
SHORT_RETRIES = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
                 "MLFLOW_HTTP_REQUEST_TIMEOUT": "10"}


class TrackingError(UserError):
    """The tracking URI cannot be used."""


def check_reachable(uri: str, timeout: float = CHECK_SECONDS) -> None:
    """An http(s) tracking URI must answer (any HTTP status counts: a proxy may guard /health) within `timeout`."""
    if urlparse(uri).scheme not in ("http", "https"):
        return
    try:
        urllib.request.urlopen(f"{uri.rstrip('/')}/health", timeout=timeout).close()
    except urllib.error.HTTPError:
        return
    except (urllib.error.URLError, OSError) as err:
        reason = getattr(err, "reason", err)
        raise TrackingError(f"--mlflow {uri}: no tracking server answers ({reason}); start it (mlflow server) "
                            "or leave out --mlflow") from None


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
    for name, value in SHORT_RETRIES.items():
        os.environ.setdefault(name, value)
    client = mlflow.MlflowClient(tracking_uri=uri)
    experiment = client.get_experiment_by_name(study)
    experiment_id = experiment.experiment_id if experiment else client.create_experiment(study)
    parent = client.create_run(experiment_id, run_name=study, tags={"em_search.space": space_name,
                                                                   "em_search.role": "study"})

    class TrackingThatNeverStopsTheSearch(MLflowLoggerCallback):
        """Ray's callback; the first MLflow error is reported once and tracking stops for the rest of the run."""

        lost = False

        def guarded(self, call: Callable[..., Any], *args: Any, **kwargs: Any) -> None:
            if self.lost:
                return
            try:
                call(*args, **kwargs)
            except Exception as err:  # noqa: BLE001 - any tracking failure: the search goes on without it
                self.lost = True
                print(f"warning: MLflow at {self.tracking_uri} stopped answering ({type(err).__name__}); "
                      "the search goes on without tracking", file=sys.stderr, flush=True)

        def setup(self, *args, **kwargs):
            self.guarded(super().setup, *args, **kwargs)

        def log_trial_start(self, trial):
            self.guarded(super().log_trial_start, trial)

        def log_trial_result(self, iteration, trial, result):
            self.guarded(super().log_trial_result, iteration, trial, result)

        def log_trial_end(self, trial, failed=False):
            self.guarded(super().log_trial_end, trial, failed)

    return TrackingThatNeverStopsTheSearch(tracking_uri=uri, experiment_name=study, save_artifact=False,
                                tags={"mlflow.parentRunId": parent.info.run_id, "em_search.role": "trial"})


def close_study(callback) -> None:
    """Mark the study's parent run finished once the search is over (not if tracking was lost on the way)."""
    if callback is None or callback.lost:
        return
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=callback.tracking_uri)
    callback.guarded(client.set_terminated, callback.tags["mlflow.parentRunId"])
