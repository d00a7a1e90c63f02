"""The MLflow edge: the only module of the core that imports mlflow.

Every stage logs through here so runs from a laptop and from a cluster share
one experiment with identical param and metric names.

Training logs metrics through :class:`MetricsBuffer`, which keeps whatever
could not be sent (server restarting, network blip) and sends it again later,
so a tracking outage never stops training and never loses a metric.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import re
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from wavenet.errors import TrackingError

__all__ = [
    "DEFAULT_STORE",
    "FAST_FAIL_HTTP_ENV",
    "resolve_tracking_uri",
    "check_tracking_server",
    "credentials_error",
    "http_status",
    "start_run",
    "run_exists",
    "set_tags",
    "log_artifacts",
    "log_keras_model",
    "MetricsBuffer",
]

DEFAULT_STORE = "mlflow.db"

# MLflow's HTTP client retries a failed request 7 times with exponential
# backoff by default (minutes of blocking). Training retries through
# MetricsBuffer instead, so the CLI edge sets these (as defaults) before any
# request is made; mlflow reads them at each request.
FAST_FAIL_HTTP_ENV: dict[str, str] = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "20",
}


def resolve_tracking_uri(uri: str | None = None, environ: Mapping[str, str] | None = None) -> str:
    """The tracking URI: the argument, else ``MLFLOW_TRACKING_URI``, else local SQLite."""
    env = os.environ if environ is None else environ
    uri = uri or env.get("MLFLOW_TRACKING_URI")
    if uri:
        return uri
    return "sqlite:///" + os.path.abspath(DEFAULT_STORE)


def check_tracking_server(uri: str, timeout: float = 5.0) -> None:
    """Fail fast, in one line, when an HTTP tracking server cannot be reached, or refuses this
    process's credentials (``MLFLOW_TRACKING_USERNAME``/``PASSWORD``; a server with MLflow's
    basic-auth app answers 401 to anonymous and wrong-password requests)."""
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
    # /health needs no credentials: one authenticated read, through MLflow's own client (which
    # also honours MLFLOW_TRACKING_TOKEN, TLS settings and auth plugins), before any work starts.
    from mlflow import MlflowClient

    try:
        MlflowClient(uri).search_experiments(max_results=1)
    except Exception as e:  # noqa: BLE001 - only an authentication answer is decided here
        refused = credentials_error(e, uri)
        if refused is not None:
            raise refused from None


_HTTP_STATUS = re.compile(r"error code (\d{3}) != 200")


def http_status(e: BaseException) -> int | None:
    """HTTP status of a failed MLflow REST call, when it was an authentication answer.

    MLflow's client puts the status in the message of answers that are not JSON (the basic-auth
    app answers 401 and 403 in plain text, mlflow/server/auth/__init__.py); JSON errors carry
    an error code.
    """
    m = _HTTP_STATUS.search(str(e))
    if m:
        return int(m.group(1))
    code = getattr(e, "error_code", None)
    return {"UNAUTHENTICATED": 401, "PERMISSION_DENIED": 403}.get(str(code))


def credentials_error(e: BaseException, uri: str,
                      environ: Mapping[str, str] | None = None) -> TrackingError | None:
    """The one-line error for an MLflow call refused with 401 or 403; None for other failures."""
    env = os.environ if environ is None else environ
    status = http_status(e)
    user = env.get("MLFLOW_TRACKING_USERNAME")
    if status == 401:
        if user:
            return TrackingError(f"MLflow tracking server at {uri} refused the credentials of user "
                                 f"{user!r} (HTTP 401): check MLFLOW_TRACKING_PASSWORD")
        return TrackingError(f"MLflow tracking server at {uri} requires authentication (HTTP 401): "
                             "set MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD")
    if status == 403:
        who = f"user {user!r}" if user else "anonymous requests"
        return TrackingError(f"MLflow tracking server at {uri} denied {who} (HTTP 403): an MLflow "
                             "admin must grant EDIT on the experiment or registered model")
    return None


def _one_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0] if text else ''}"


@contextmanager
def start_run(experiment: str, run_name: str | None = None, tracking_uri: str | None = None,
              tags: Mapping[str, str] | None = None, params: Mapping[str, Any] | None = None,
              run_id: str | None = None, environ: Mapping[str, str] | None = None,
              log_system_metrics: bool = False) -> Iterator[Any]:
    """Open an MLflow run (a new one, or ``run_id`` to continue one).

    When Kubeflow Pipelines injected ``MLFLOW_RUN_ID`` (its MLflow integration
    creates one run per pipeline run), the stage's run is nested under it.

    Args:
        experiment: experiment name (ignored when ``MLFLOW_EXPERIMENT_ID`` is set).
        run_name: name of a new run.
        tracking_uri: see :func:`resolve_tracking_uri`.
        tags: tags of a new run (set again on a continued run).
        params: params of a new run (a continued run keeps its own).
        run_id: continue this run instead of starting one.
        environ: the environment to read ``MLFLOW_*`` from (default ``os.environ``).
        log_system_metrics: sample CPU/memory with mlflow's system-metrics
            monitor (needs psutil; silently off without it).

    Yields:
        The active ``mlflow.ActiveRun``.
    """
    import mlflow
    from mlflow import MlflowClient

    env = os.environ if environ is None else environ
    uri = resolve_tracking_uri(tracking_uri, env)
    check_tracking_server(uri)
    mlflow.set_tracking_uri(uri)
    parent = env.get("MLFLOW_RUN_ID")
    all_tags = dict(tags or {})
    if parent and run_id is None:
        all_tags["mlflow.parentRunId"] = parent
    system = log_system_metrics and importlib.util.find_spec("psutil") is not None
    if system:
        # Sampling every 10 s costs well under 1% of a core.
        mlflow.set_system_metrics_sampling_interval(10)
    # The run is created through the client and only then made active: the
    # fluent mlflow.start_run() without a run id would *resume* a run named by
    # MLFLOW_RUN_ID (the KFP parent) instead of nesting under it, and
    # mlflow.set_experiment() writes MLFLOW_EXPERIMENT_ID into os.environ,
    # which would steer later runs of this process into the wrong store.
    try:
        client = MlflowClient(uri)
        if run_id is None:
            experiment_id = env.get("MLFLOW_EXPERIMENT_ID") or _experiment_id(client, experiment,
                                                                              uri)
            target = client.create_run(experiment_id, run_name=run_name,
                                       tags=all_tags or None).info.run_id
        else:
            target = run_id
        # mlflow.start_run(run_id) refuses a run outside the process's active
        # experiment (set by an earlier stage in this process): make the run's
        # own experiment active, without leaving MLFLOW_EXPERIMENT_ID behind.
        _set_active_experiment(client.get_run(target).info.experiment_id)
        run = mlflow.start_run(run_id=target, log_system_metrics=system or None)
    except TrackingError:
        raise
    except Exception as e:  # noqa: BLE001 - mlflow raises many types; report one line
        refused = credentials_error(e, uri, env)
        if refused is not None:
            raise refused from None
        what = f"continue run {run_id}" if run_id else "start a run"
        raise TrackingError(f"cannot {what} on MLflow at {uri}: {_one_line(e)}") from None
    try:
        if run_id is not None and all_tags:
            mlflow.set_tags(all_tags)
        if params and run_id is None:
            mlflow.log_params({k: ("" if v is None else v) for k, v in params.items()})
        yield run
    except BaseException:
        try:
            _end_run("FAILED")
        except Exception:  # noqa: BLE001 - the original error matters more
            pass
        raise
    else:
        try:
            _end_run("FINISHED")
        except Exception as e:  # noqa: BLE001
            raise TrackingError(f"cannot close MLflow run {run.info.run_id} at {uri}: "
                                f"{_one_line(e)}") from None


def _set_active_experiment(experiment_id: str) -> None:
    import mlflow

    # mlflow.set_experiment() also writes MLFLOW_EXPERIMENT_ID into os.environ,
    # which later runs of this process would read as a user setting: put the
    # variable back as it was.
    before = os.environ.get("MLFLOW_EXPERIMENT_ID")
    try:
        mlflow.set_experiment(experiment_id=experiment_id)
    finally:
        if before is None:
            os.environ.pop("MLFLOW_EXPERIMENT_ID", None)
        else:
            os.environ["MLFLOW_EXPERIMENT_ID"] = before


def _end_run(status: str) -> None:
    import mlflow

    # mlflow.end_run() unsets MLFLOW_RUN_ID in os.environ; that variable is
    # KFP's (the parent run of every stage), so it is put back for the next
    # stage in this process. And mlflow prints "View run ... at: URL" on
    # stdout, where commands print their JSON results: it goes to stderr.
    parent = os.environ.get("MLFLOW_RUN_ID")
    try:
        with contextlib.redirect_stdout(sys.stderr):
            mlflow.end_run(status=status)
    finally:
        if parent is not None:
            os.environ["MLFLOW_RUN_ID"] = parent


def _artifact_location(uri: str) -> str | None:
    """Artifacts of a SQLite store go next to its file (mlflow's default is ./mlruns of the cwd)."""
    if not uri.startswith("sqlite:///"):
        return None
    db = uri[len("sqlite:///"):]
    if not os.path.isabs(db):
        return None
    return Path(os.path.dirname(db), "mlruns").as_uri()


def _experiment_id(client: Any, name: str, uri: str) -> str:
    from mlflow.exceptions import MlflowException

    exp = client.get_experiment_by_name(name)
    if exp is None:
        try:
            return client.create_experiment(name, artifact_location=_artifact_location(uri))
        except MlflowException:  # created concurrently by another process
            exp = client.get_experiment_by_name(name)
            if exp is None:
                raise
    if exp.lifecycle_stage == "deleted":
        raise TrackingError(f"MLflow experiment {name!r} is deleted: restore it or use another name")
    return exp.experiment_id


def run_exists(run_id: str, tracking_uri: str) -> bool:
    """Whether ``run_id`` exists (and is not deleted) in the store at ``tracking_uri``."""
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    try:
        run = MlflowClient(tracking_uri).get_run(run_id)
    except MlflowException:
        return False
    return run.info.lifecycle_stage != "deleted"


def set_tags(tags: Mapping[str, Any]) -> None:
    """Set tags on the active run."""
    import mlflow

    mlflow.set_tags({k: str(v) for k, v in tags.items()})


def log_artifacts(paths: Sequence[str], artifact_path: str | None = None) -> None:
    """Log files to the active run; ``gs://`` ones (a TFJob's run directory) are downloaded first."""
    import tempfile

    import mlflow

    from wavenet import storage

    with tempfile.TemporaryDirectory(prefix="wavenet-artifacts-") as tmp:
        for p in paths:
            mlflow.log_artifact(storage.local_copy(p, tmp), artifact_path=artifact_path)


def log_keras_model(model: Any, name: str = "model") -> str:
    """Log a Keras 3 model with the ``mlflow.keras`` flavour; returns its model URI.

    ``mlflow.keras.load_model(uri)`` loads it back once the module defining its
    custom layers (``wavenet.model``) has been imported.
    """
    from importlib.metadata import PackageNotFoundError, version

    import mlflow.keras

    # Naming the requirements skips mlflow's inference, which reloads the
    # model in a subprocess (about 20 s) and cannot resolve our custom layers.
    reqs = []
    for pkg in ("keras", "tensorflow", "wavenet-pipelines"):
        try:
            reqs.append(f"{pkg}=={version(pkg)}")
        except PackageNotFoundError:
            pass
    info = mlflow.keras.log_model(model, name=name, pip_requirements=reqs)
    return info.model_uri


class MetricsBuffer:
    """Metrics waiting to be sent to an MLflow run; survives tracking outages.

    ``log`` queues values with their step and wall-clock time; ``flush`` sends
    everything queued in one ``log_batch`` call per 1000 metrics. When sending
    fails the metrics stay queued and the next flush (at most every
    ``retry_after_s`` seconds unless forced) tries again, so training never
    waits long on a dead server and nothing logged is lost. What is still
    queued at the end can be saved with :meth:`to_json` and reloaded.

    Args:
        run_id: the MLflow run to log to.
        tracking_uri: its tracking URI.
        retry_after_s: after a failed send, skip unforced flushes this long.
        pending: metrics saved by a previous :meth:`to_json`, to send first.
        clock: seconds, monotonic (tests may pass their own).
        warn: where one-line warnings go (default: stderr).
    """

    BATCH = 1000  # MLflow's log_batch limit on metrics per request

    def __init__(self, run_id: str, tracking_uri: str, retry_after_s: float = 30.0,
                 pending: Sequence[Mapping[str, Any]] = (),
                 clock: Callable[[], float] = time.monotonic,
                 warn: Callable[[str], None] | None = None):
        self.run_id = run_id
        self.tracking_uri = tracking_uri
        self.retry_after_s = retry_after_s
        self._pending: list[dict[str, Any]] = [dict(m) for m in pending]
        self._clock = clock
        self._failed_at: float | None = None
        self._warn = warn or (lambda msg: print(f"warning: {msg}", file=sys.stderr))
        self._client = None
        self.sent = 0
        self.failures = 0

    @property
    def pending(self) -> list[dict[str, Any]]:
        """Metrics not yet sent: dicts with key, value, step, timestamp (ms)."""
        return list(self._pending)

    def log(self, metrics: Mapping[str, float], step: int, flush: bool = True) -> bool:
        """Queue ``metrics`` at ``step``; send now unless in a retry pause. True if all sent."""
        now_ms = int(time.time() * 1000)
        for k, v in metrics.items():
            self._pending.append({"key": k, "value": float(v), "step": int(step),
                                  "timestamp": now_ms})
        return self.flush() if flush else not self._pending

    def flush(self, force: bool = False) -> bool:
        """Send queued metrics. Returns True when nothing is left queued."""
        if not self._pending:
            return True
        if (not force and self._failed_at is not None
                and self._clock() - self._failed_at < self.retry_after_s):
            return False
        from mlflow import MlflowClient
        from mlflow.entities import Metric

        if self._client is None:
            self._client = MlflowClient(self.tracking_uri)
        while self._pending:
            chunk = self._pending[:self.BATCH]
            try:
                self._client.log_batch(self.run_id, metrics=[
                    Metric(m["key"], m["value"], m["timestamp"], m["step"]) for m in chunk])
            except Exception as e:  # noqa: BLE001 - any failure: keep the metrics, retry later
                self.failures += 1
                if self._failed_at is None:
                    self._warn(f"MLflow at {self.tracking_uri} unreachable ({_one_line(e)}); "
                               f"{len(self._pending)} metrics kept, retrying every "
                               f"{self.retry_after_s:g} s")
                self._failed_at = self._clock()
                return False
            del self._pending[:len(chunk)]
            self.sent += len(chunk)
        if self._failed_at is not None:
            self._warn(f"MLflow at {self.tracking_uri} reachable again; queued metrics sent")
        self._failed_at = None
        return True

    def to_json(self) -> str:
        """The queued metrics as JSON (for ``pending=json.loads(...)`` later)."""
        return json.dumps(self._pending)
