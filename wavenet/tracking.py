"""The MLflow edge: the only module of the core that imports mlflow.

Every stage logs through here so runs from a laptop and from a cluster share
one experiment with identical param and metric names.
"""

from __future__ import annotations

import os
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

from wavenet.errors import TrackingError

__all__ = [
    "DEFAULT_STORE",
    "resolve_tracking_uri",
    "check_tracking_server",
    "start_run",
]

DEFAULT_STORE = "mlflow.db"


def resolve_tracking_uri(uri: str | None = None, environ: Mapping[str, str] | None = None) -> str:
    """The tracking URI: the argument, else ``MLFLOW_TRACKING_URI``, else local SQLite."""
    env = os.environ if environ is None else environ
    uri = uri or env.get("MLFLOW_TRACKING_URI")
    if uri:
        return uri
    return "sqlite:///" + os.path.abspath(DEFAULT_STORE)


def check_tracking_server(uri: str, timeout: float = 5.0) -> None:
    """Fail fast, in one line, when an HTTP tracking server cannot be reached."""
    if not uri.startswith(("http://", "https://")):
        return
    url = uri.rstrip("/") + "/health"
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:  # noqa: S310 - user's server
            if r.status != 200:
                raise TrackingError(f"MLflow tracking server at {uri} answered {r.status} on /health")
    except urllib.error.HTTPError as e:
        raise TrackingError(f"MLflow tracking server at {uri} answered {e.code} on /health") from None
    except (urllib.error.URLError, OSError) as e:
        reason = getattr(e, "reason", e)
        raise TrackingError(f"cannot reach MLflow tracking server at {uri}: {reason}") from None


@contextmanager
def start_run(experiment: str, run_name: str | None = None, tracking_uri: str | None = None,
              tags: Mapping[str, str] | None = None, params: Mapping[str, Any] | None = None,
              run_id: str | None = None, environ: Mapping[str, str] | None = None) -> Iterator[Any]:
    """Open an MLflow run (a new one, or ``run_id`` to continue one).

    When Kubeflow Pipelines injected ``MLFLOW_RUN_ID`` (its MLflow integration
    creates one run per pipeline run), the stage's run is nested under it.
    """
    import mlflow

    env = os.environ if environ is None else environ
    uri = resolve_tracking_uri(tracking_uri, env)
    check_tracking_server(uri)
    mlflow.set_tracking_uri(uri)
    parent = env.get("MLFLOW_RUN_ID")
    if run_id is None:
        mlflow.set_experiment(experiment) if not env.get("MLFLOW_EXPERIMENT_ID") else \
            mlflow.set_experiment(experiment_id=env["MLFLOW_EXPERIMENT_ID"])
    all_tags = dict(tags or {})
    if parent and run_id is None:
        all_tags["mlflow.parentRunId"] = parent
    run = mlflow.start_run(run_id=run_id, run_name=None if run_id else run_name,
                           tags=all_tags or None)
    try:
        if params and run_id is None:
            mlflow.log_params({k: ("" if v is None else v) for k, v in params.items()})
        yield run
    except BaseException:
        mlflow.end_run(status="FAILED")
        raise
    else:
        mlflow.end_run()
