"""The MLflow edge for runs: the run itself, its params, metrics, tags, artifacts and models.

Every stage logs through here, so runs from a laptop and from a cluster share
one experiment with identical param and metric names. Registered models and
the champion alias are :mod:`wavenet.edges.registry`'s; together the two are the only
core modules that import mlflow.

Training logs metrics through :class:`MetricsBuffer`, which keeps whatever
could not be sent (server restarting, network blip) and sends it again later,
so a tracking outage never stops training and never loses a metric.

Every other request goes through :func:`_call`: an outage (connection refused or
reset, timeout, HTTP 5xx or 429) is retried within :mod:`wavenet.retry`'s budget and
then raised as :class:`~wavenet.errors.TrackingUnavailable` (exit 138, retried by the
Training Operator); refusals (401, 403), "not found" and bad requests are not retried.

Credentials travel only in the environment variables MLflow defines,
``MLFLOW_TRACKING_USERNAME``/``MLFLOW_TRACKING_PASSWORD`` (basic auth) and
``MLFLOW_TRACKING_TOKEN`` (bearer), never in the URI: an ``http(s)`` tracking URI with
user-info is refused (:func:`resolve_tracking_uri`), and the password of any other URI
(a database's) is masked wherever one is printed (:func:`wavenet.errors.redact`).
"""

from __future__ import annotations

import contextlib
import datetime
import importlib.util
import json
import os
import re
import sys
import tempfile
import time
import urllib.error
import urllib.request
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import mlflow
from mlflow import MlflowClient
from mlflow.data.meta_dataset import MetaDataset
from mlflow.entities import Metric
from mlflow.exceptions import MlflowException

from wavenet.edges import storage
from wavenet.errors import Interrupted, TrackingError, TrackingUnavailable, has_userinfo, one_line, redact
from wavenet.retry import with_retries

__all__ = [
    "DEFAULT_STORE",
    "FAST_FAIL_HTTP_ENV",
    "resolve_tracking_uri",
    "check_tracking_server",
    "wait_until_healthy",
    "use_tracking_uri",
    "store_uri",
    "client",
    "fluent_store",
    "MLFLOW_SCHEMES",
    "is_mlflow_uri",
    "run_name",
    "credentials_error",
    "http_status",
    "child_run_name",
    "experiment_page",
    "experiment_id",
    "start_run",
    "run_exists",
    "active_run_id",
    "source_run_id",
    "model_run_id",
    "registry_version",
    "run_experiment_name",
    "run_placement",
    "metric_key",
    "log_metrics",
    "log_metrics_to_run",
    "set_tags",
    "log_dict",
    "log_artifacts",
    "MODEL_REQUIREMENTS",
    "EXPERIMENT_TAGS",
    "KEY_METRICS",
    "KEY_PARAMS",
    "COMPARE_VIEW",
    "COMPARE_VIEW_TAG",
    "comparison_view",
    "comparison_view_state",
    "run_tag",
    "model_signature",
    "serving_signature",
    "log_model",
    "served_model",
    "log_dataset",
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


# -- the store -------------------------------------------------------------------

def _is_http(uri: str) -> bool:
    return uri.startswith(("http://", "https://"))


def _refuse_credentials_in(uri: str) -> None:
    """Refuse an HTTP tracking URI with user-info (``http://alice:secret@host``).

    Such a URI is printed (errors, "View run" lines), passed on (worker command lines, a
    TFJob's environment) and read by whoever may list processes or TFJobs; and urllib does
    not parse it as MLflow's client does ("Name or service not known"). MLflow defines
    variables for the credentials instead, read by its HTTP client at each request:
    https://mlflow.org/docs/latest/self-hosting/security/basic-http-auth/ (username and
    password) and mlflow/environment_variables.py in mlflow/mlflow (MLFLOW_TRACKING_TOKEN).
    """
    if _is_http(uri) and has_userinfo(uri):
        raise TrackingError(
            f"the tracking URI {redact(uri)} carries credentials: give it without them and set "
            "MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD (or MLFLOW_TRACKING_TOKEN) in "
            "the environment, which is not printed or passed on in command lines")


def resolve_tracking_uri(uri: str | None = None, environ: Mapping[str, str] | None = None) -> str:
    """The tracking URI: the argument, else ``MLFLOW_TRACKING_URI``, else local SQLite.

    Raises:
        TrackingError: an ``http(s)`` URI with credentials in it (see :func:`_refuse_credentials_in`).
    """
    env = os.environ if environ is None else environ
    uri = uri or env.get("MLFLOW_TRACKING_URI")
    if uri:
        _refuse_credentials_in(uri)
        return uri
    return "sqlite:///" + os.path.abspath(DEFAULT_STORE)


# MLflow's client turns a failed connection or a timeout into a plain MlflowException
# "API request to URL failed with [timeout ]exception ..." (mlflow/utils/rest_utils.py,
# http_request), and an answer that is not JSON into "... failed with error code N != 200".
_CONNECTION_FAILED = re.compile(r"^API request to \S+ failed with (timeout )?exception")


# A database store (postgresql://, mysql://) that did not answer: SQLAlchemy raises the
# driver's error (psycopg: 'connection to server at "H", port P failed: Connection refused';
# a server restarting: "the database system is starting up", "terminating connection due to
# administrator command"). A refused password or a missing database is an answer, not an outage.
_DATABASE_UNREACHABLE = re.compile(
    r"connection refused|connection reset|timeout expired|timed out|server closed the connection"
    r"|the database system is (starting up|shutting down|in recovery mode|not yet accepting)"
    r"|terminating connection|could not translate host name|name or service not known"
    r"|temporary failure in name resolution|no route to host|network is unreachable"
    r"|can't connect to mysql server|lost connection to mysql server", re.IGNORECASE)
_NETWORK_DATABASES = ("postgresql", "mysql", "mssql")


def _is_network_database(uri: str) -> bool:
    """A tracking URI of a database server (``postgresql+psycopg://...``, ``mysql://...``)."""
    return uri.split(":", 1)[0].split("+", 1)[0].lower() in _NETWORK_DATABASES


def _failed_status(e: BaseException) -> int | None:
    """The HTTP status a failed MLflow request answered with; 0 when no answer came (refused,
    reset, timed out; a database server's too); None when ``e`` is not a failed request."""
    if isinstance(e, urllib.error.HTTPError):
        return e.code
    if isinstance(e, (ConnectionError, TimeoutError, urllib.error.URLError)):
        return 0
    if type(e).__module__.startswith("sqlalchemy") and _DATABASE_UNREACHABLE.search(str(e)):
        return 0
    if not isinstance(e, MlflowException):
        return None
    text = str(getattr(e, "message", e))
    if _CONNECTION_FAILED.match(text):
        return 0
    m = _HTTP_STATUS.search(text)
    if m:
        return int(m.group(1))
    if hasattr(e, "json"):  # RestException: the server's JSON error; its code maps to a status
        return e.get_http_status_code()
    if getattr(e, "error_code", None) == "TEMPORARILY_UNAVAILABLE":
        # A database store's lost connection (or SQLite's "database is locked"): MLflow turns
        # SQLAlchemy's OperationalError into this (mlflow/store/db/utils.py, the session maker).
        return e.get_http_status_code()  # 503
    return None  # raised by the client itself (bad argument, ...), not by a request


def _outage(e: BaseException, uri: str, what: str) -> TrackingUnavailable | None:
    """The one classification of MLflow failures: no answer (refused, reset, timed out), 5xx
    and 429 are outages (retried, then exit 138); every other failure is not."""
    status = _failed_status(e)
    if status is None or 0 < status < 500 and status != 429:
        return None
    if not _is_http(uri):  # a database store (SQLAlchemy's error, or MLflow's 503 for it)
        return TrackingUnavailable(f"cannot reach MLflow's database at {redact(uri)} ({what}): "
                                   f"{redact(one_line(e))}"[:500])
    if status == 0:
        reason = getattr(e, "reason", None) if isinstance(e, urllib.error.URLError) else None
        return TrackingUnavailable(f"cannot reach MLflow tracking server at {redact(uri)} ({what}): "
                                   f"{redact(str(reason)) if reason else one_line(e)}"[:500])
    return TrackingUnavailable(f"MLflow tracking server at {redact(uri)} answered HTTP {status} "
                               f"({what}): {one_line(e)}"[:500])


def _call(uri: str, what: str, fn: Callable[[], Any]) -> Any:
    """``fn()``, with an outage of the server at ``uri`` retried (:func:`wavenet.retry.with_retries`)."""
    return with_retries(fn, lambda e: _outage(e, uri, what))


def _health(uri: str, timeout: float) -> None:
    url = uri.rstrip("/") + "/health"
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:  # noqa: S310 - user's server
            status = r.status
    except urllib.error.HTTPError as e:
        status = e.code
        if status >= 500 or status == 429:
            raise
    if status != 200:
        raise TrackingError(f"MLflow tracking server at {redact(uri)} answered {status} on /health")


def check_tracking_server(uri: str, timeout: float = 5.0) -> None:
    """Fail early, in one line, when an HTTP tracking server cannot be reached (after the retry
    budget: :class:`~wavenet.errors.TrackingUnavailable`), or refuses this process's credentials
    (``MLFLOW_TRACKING_USERNAME``/``PASSWORD``; a server with MLflow's basic-auth app answers
    401 to anonymous and wrong-password requests). A database URI gets one connection the
    same way: a server that does not answer is an outage (retried, then exit 138), a refused
    password or a missing database one line (exit 2), each at once. MLflow itself, creating
    its store, retries *any* failure 10 times over 101 s before it raises
    (mlflow/store/db/utils.py, ``create_sqlalchemy_engine_with_retry``, not configurable),
    so without this a wrong password took 101 s to report and an outage was never retried."""
    if _is_network_database(uri):
        _connect_database(uri, timeout)
        return
    if not _is_http(uri):
        return
    _refuse_credentials_in(uri)
    _call(uri, "GET /health", lambda: _health(uri, timeout))
    # /health needs no credentials: one authenticated read, through MLflow's own client (which
    # also honours MLFLOW_TRACKING_TOKEN, TLS settings and auth plugins), before any work starts.
    try:
        _call(uri, "search experiments", lambda: MlflowClient(uri).search_experiments(max_results=1))
    except TrackingError:
        raise
    except Exception as e:  # noqa: BLE001 - only an authentication answer is decided here
        refused = credentials_error(e, uri)
        if refused is not None:
            raise refused from None


def _connect_database(uri: str, timeout: float) -> None:
    """One connection to the database store (:func:`check_tracking_server`)."""
    import sqlalchemy

    def connect() -> None:
        # connect_timeout: libpq's (psycopg) and PyMySQL's name for it; SQL Server's drivers
        # take their own, so none is passed there.
        args = {} if uri.lower().startswith("mssql") else {"connect_timeout": max(1, int(timeout))}
        engine = sqlalchemy.create_engine(uri, poolclass=sqlalchemy.pool.NullPool, connect_args=args)
        try:
            with engine.connect():
                pass
        finally:
            engine.dispose()

    try:
        _call(uri, "connect", connect)
    except TrackingError:
        raise
    except Exception as e:  # noqa: BLE001 - drivers raise many types; report one line
        raise TrackingError(f"cannot connect to MLflow's database at {redact(uri)}: "
                            f"{redact(one_line(e))}"[:500]) from None


def wait_until_healthy(uri: str, timeout: float, alive: Callable[[], bool] = lambda: True) -> bool:
    """Poll the server's ``/health`` until it answers 200 (True), or ``timeout`` seconds pass or
    ``alive()`` turns False (False): a server this program started, coming up."""
    deadline = time.monotonic() + timeout
    url = uri.rstrip("/") + "/health"
    while time.monotonic() < deadline and alive():
        try:
            with urllib.request.urlopen(url, timeout=2) as r:  # noqa: S310 - our own server
                if r.status == 200:
                    return True
        except OSError:
            pass
        time.sleep(0.5)
    return False


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
            return TrackingError(f"MLflow tracking server at {redact(uri)} refused the credentials of user "
                                 f"{user!r} (HTTP 401): check MLFLOW_TRACKING_PASSWORD")
        return TrackingError(f"MLflow tracking server at {redact(uri)} requires authentication (HTTP 401): "
                             "set MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD")
    if status == 403:
        who = f"user {user!r}" if user else "anonymous requests"
        return TrackingError(f"MLflow tracking server at {redact(uri)} denied {who} (HTTP 403): an MLflow "
                             "admin must grant EDIT on the experiment or registered model")
    return None


def use_tracking_uri(tracking_uri: str | None = None) -> str:
    """Point mlflow's process-wide state at the tracking (and registry) store; returns the URI.

    For scripts and tests that call MLflow's fluent API themselves. The library never relies
    on it: it passes the URI (:func:`client`), and :func:`start_run` sets it for its run.
    """
    uri = resolve_tracking_uri(tracking_uri)
    check_tracking_server(uri)
    mlflow.set_tracking_uri(uri)  # and MLFLOW_TRACKING_URI: store_uri() without a URI reads it
    return uri


def store_uri(tracking_uri: str | None = None) -> str:
    """The store a call goes to: ``tracking_uri``; without one, the store of the run that
    :func:`start_run` made active (inside a stage's run); else :func:`resolve_tracking_uri`
    (``MLFLOW_TRACKING_URI``, else ./mlflow.db). Never whatever an earlier stage of this
    process pointed mlflow at."""
    if tracking_uri:
        return tracking_uri
    if mlflow.active_run() is not None:
        return mlflow.get_tracking_uri()  # set from the run's own URI by start_run
    return resolve_tracking_uri()


def client(tracking_uri: str | None = None) -> MlflowClient:
    """An MLflow client of one store (:func:`store_uri`), its model registry included.

    The registry URI is given too: without it MlflowClient takes a process-wide
    ``mlflow.set_registry_uri``/``MLFLOW_REGISTRY_URI`` first (mlflow/mlflow,
    mlflow/tracking/_model_registry/utils.py, _resolve_registry_uri).
    """
    uri = store_uri(tracking_uri)
    return MlflowClient(uri, registry_uri=uri)


def _point_mlflow_at(uri: str | None) -> None:
    """mlflow's process-wide tracking URI; ``MLFLOW_TRACKING_URI`` in os.environ stays as it was.

    mlflow.set_tracking_uri also writes the variable into os.environ (for subprocesses:
    mlflow/mlflow, mlflow/tracking/_tracking_service/utils.py), where a later
    :func:`resolve_tracking_uri` of this process would take it for the user's setting.
    """
    from mlflow.tracking._tracking_service import utils as tracking_utils

    before = os.environ.get("MLFLOW_TRACKING_URI")
    try:
        tracking_utils.set_tracking_uri(uri)
    finally:
        if before is None:
            os.environ.pop("MLFLOW_TRACKING_URI", None)
        else:
            os.environ["MLFLOW_TRACKING_URI"] = before


@contextmanager
def fluent_store(uri: str) -> Iterator[None]:
    """mlflow's process-wide tracking URI at ``uri`` for a fluent call that takes none, then
    back as it was (nothing changes inside a run of the same store)."""
    from mlflow.tracking._tracking_service import utils as tracking_utils

    before = tracking_utils._tracking_uri  # None: unset (mlflow then reads the environment)
    if before == uri:
        yield
        return
    _point_mlflow_at(uri)
    try:
        yield
    finally:
        _point_mlflow_at(before)


def _artifact_location(uri: str) -> str | None:
    """Artifacts of a SQLite store go next to its file (mlflow's default is ./mlruns of the cwd)."""
    if not uri.startswith("sqlite:///"):
        return None
    db = uri[len("sqlite:///"):]
    if not os.path.isabs(db):
        return None
    return Path(os.path.dirname(db), "mlruns").as_uri()


# MLflow 3's UI opens an experiment in its GenAI view (traces, no metric columns) or in its
# model-training view (runs, metrics, charts, compare) by the experiment tag
# `mlflow.experimentKind` (EXPERIMENT_KIND_TAG_KEY in mlflow/mlflow,
# mlflow/server/js/src/experiment-tracking/utils/ExperimentKindUtils.ts; the value
# "custom_model_development" is ExperimentKind.CUSTOM_MODEL_DEVELOPMENT, shown as
# "Machine learning"). Our experiments hold training runs: set on every experiment we use.
EXPERIMENT_TAGS = {"mlflow.experimentKind": "custom_model_development"}

# The numbers a person compares models on, in this order: the runs table's first columns and
# the first charts of the comparison view below.
# How a model scores, then how it sounds (the share of its clips' calibrated checks passed,
# wavenet.generation.verb.checks_passed), then the baselines and the training curves.
KEY_METRICS = ("eval/bits_per_sample", "samples/checks_passed_fraction", "eval/baseline_bigram_bits",
               "eval/baseline_unigram_bits", "val_bits_per_sample", "train_bits_per_sample")
# Bars compare one number per model; lines follow a metric over training steps.
_BAR_METRICS = ("eval/bits_per_sample", "samples/checks_passed_fraction", "eval/baseline_bigram_bits")
_LINE_METRICS = ("val_bits_per_sample", "train_bits_per_sample")
KEY_PARAMS = ("preset", "train.steps", "train.learning_rate")

# MLflow's UI keeps named views of an experiment's runs page (its "Views" menu, and links with
# ?viewStateShareKey=<id>) as experiment tags `mlflow.sharedViewState.<id>`, whose value is a
# JSON envelope {"name", "createdAt", "state"}; "state" is the page's serialized UI state and
# search facets, deflate-compressed or plain JSON. Read in mlflow/mlflow,
# mlflow/server/js/src/experiment-tracking/components/experiment-page/utils/savedViewEnvelope.ts
# and models/ExperimentPageUIState.tsx (the field names), and checked against the 3.17.2 UI
# bundle, whose loader reads the envelope first, a bare state second, and only on the runs
# tab's route (/experiments/<id>/runs).
COMPARE_VIEW = "wavenet-compare"
COMPARE_VIEW_TAG = f"mlflow.sharedViewState.{COMPARE_VIEW}"
COMPARE_VIEW_NAME = "WaveNet: compare models"


def _column(kind: str, key: str) -> str:
    # The UI's column ids ("canonical sort keys"): kind.`key`.
    return f"{kind}.`{key}`"


def comparison_view_state() -> dict[str, Any]:
    """The runs page as the comparison view shows it (the ``state`` of its envelope).

    Table: run names at full width, then the key metrics, then the key parameters, the dataset
    and the logged model. Charts: a "Compare models" section first, with a
    parallel-coordinates plot of the key parameters against ``eval/bits_per_sample``, bars of the
    evaluation, the share of calibrated checks the model's clips pass and the bigram baseline,
    and the training curves; the UI adds every other
    metric's chart in its own sections after it. Sorted newest first (the UI's default).
    """
    metrics = [_column("metrics", m) for m in KEY_METRICS]
    params = [_column("params", p) for p in KEY_PARAMS]
    run_name = _column("attributes", "Run Name")
    section = "wavenet-compare-models"
    charts: list[dict[str, Any]] = [
        {"uuid": "wavenet-parallel", "type": "PARALLEL", "metricSectionId": section,
         "deleted": False, "isGenerated": False, "runsCountToCompare": 100,
         "selectedParams": list(KEY_PARAMS), "selectedMetrics": [KEY_METRICS[0]], "showAllRuns": False}]
    for key in _BAR_METRICS:
        charts.append({"uuid": f"wavenet-bar-{key.replace('/', '-')}", "type": "BAR", "metricKey": key,
                       "metricSectionId": section, "deleted": False, "isGenerated": False,
                       "runsCountToCompare": 10})
    for key in _LINE_METRICS:
        charts.append({"uuid": f"wavenet-line-{key}", "type": "LINE", "metricKey": key,
                       "selectedMetricKeys": [key], "metricSectionId": section, "deleted": False,
                       "isGenerated": False, "runsCountToCompare": 10, "xAxisKey": "step",
                       "useGlobalXaxisKey": False, "lineSmoothness": 0, "scaleType": "linear"})
    return {
        "selectedColumns": metrics + params + [_column("attributes", "Dataset"),
                                               _column("attributes", "Models")],
        "columnOrder": [run_name, *metrics, *params],
        "columnWidths": {run_name: 300, **{m: 150 for m in metrics}},
        "compareRunCharts": charts,
        "compareRunSections": [{"uuid": section, "name": "Compare models", "display": True,
                                "isReordered": True, "deleted": False, "isGenerated": False}],
        "isAccordionReordered": True,
        "hideEmptyCharts": True,
        "orderByKey": "attributes.start_time",
        "orderByAsc": False,
    }


def comparison_view(created_ms: int | None = None) -> str:
    """The experiment tag value of the comparison view (the UI's saved-view envelope)."""
    created = int(time.time() * 1000) if created_ms is None else created_ms
    return json.dumps({"name": COMPARE_VIEW_NAME, "createdAt": created,
                       "state": json.dumps(comparison_view_state())})


def _experiment_tags() -> dict[str, str]:
    return {**EXPERIMENT_TAGS, COMPARE_VIEW_TAG: comparison_view()}


def _experiment_id(client: MlflowClient, name: str, uri: str) -> str:
    exp = client.get_experiment_by_name(name)
    if exp is None:
        try:
            return client.create_experiment(name, artifact_location=_artifact_location(uri),
                                            tags=_experiment_tags())
        except MlflowException:  # created concurrently by another process
            exp = client.get_experiment_by_name(name)
            if exp is None:
                raise
    if exp.lifecycle_stage == "deleted":
        raise TrackingError(f"MLflow experiment {name!r} is deleted: restore it or use another name")
    for key, value in _experiment_tags().items():
        if key not in exp.tags:  # an experiment from before, or made elsewhere: a user's choice stays
            try:
                client.set_experiment_tag(exp.experiment_id, key, value)
            except MlflowException as e:  # e.g. a shared experiment this user may only read
                print(f"warning: could not set {key} on MLflow experiment {name!r}: "
                      f"{one_line(e)}", file=sys.stderr)
    return exp.experiment_id


MLFLOW_SCHEMES = ("runs:/", "models:/", "mlflow-artifacts:/")


def is_mlflow_uri(uri: str) -> bool:
    """True for URIs MLflow resolves (``runs:/``, ``models:/``, ``mlflow-artifacts:/``)."""
    return str(uri).startswith(MLFLOW_SCHEMES)


# -- runs ----------------------------------------------------------------------------

def run_name(preset: str, data_id: str, when: datetime.datetime | None = None) -> str:
    """``<preset>-<data id>-<MMDD>T<HHMMSS>`` (UTC start): training runs tell themselves apart in
    the MLflow UI, and the name fits its run-name column (the year is in the run's start time).

    Args:
        preset: the config's preset name.
        data_id: a short name of the data (``d`` + 8 hex digits of the data version).
        when: the start time (default now).
    """
    when = when or datetime.datetime.now(datetime.UTC)
    return f"{preset}-{data_id}-{when.strftime('%m%dT%H%M%S')}"


def child_run_name(stage: str, parent: str | None) -> str:
    """``<stage>-<MMDD>T<HHMMSS>`` of the training run ``parent``: short, since the UI shows it
    nested under its parent, and still telling which training it belongs to in a comparison."""
    stamp = (parent or "").rsplit("-", 1)[-1]
    return f"{stage}-{stamp}" if parent and re.fullmatch(r"\d{4}T\d{6}", stamp) else stage


# MLflow 3.17's UI opens an experiment in its GenAI view (traces, no metric columns)
# unless the page's URL asks for the model-training view or the browser remembers the
# "Model training" toggle (localStorage ``mlflow.workflowType``): the experiment tag
# ``mlflow.experimentKind`` is not read once the new side navigation is on. Read from
# the UI bundle of mlflow 3.17.2 (server/js/build/static/js/main.*.js).
TRAINING_VIEW = "workflowType=machine_learning"


def experiment_page(ui_url: str, experiment_id: str | None) -> str:
    """The UI address of an experiment's runs in the comparison view (:func:`comparison_view`),
    in the model-training view; the UI's root if no id."""
    base = ui_url.rstrip("/")
    if not experiment_id:
        return base
    return f"{base}/#/experiments/{experiment_id}/runs?viewStateShareKey={COMPARE_VIEW}&{TRAINING_VIEW}"


def experiment_id(name: str, tracking_uri: str | None = None) -> str | None:
    """The id of experiment ``name`` (None when the store does not have it or cannot be read)."""
    try:
        exp = client(tracking_uri).get_experiment_by_name(name)
    except Exception:  # a summary line is not worth failing a finished run
        return None
    return exp.experiment_id if exp else None


def _set_active_experiment(experiment_id: str) -> None:
    # mlflow.set_experiment() also writes MLFLOW_EXPERIMENT_ID into os.environ,
    # which later runs of this process would read as a user setting: put the
    # variable back as it was (MLflow wrote it, not us).
    before = os.environ.get("MLFLOW_EXPERIMENT_ID")
    try:
        mlflow.set_experiment(experiment_id=experiment_id)
    finally:
        if before is None:
            os.environ.pop("MLFLOW_EXPERIMENT_ID", None)
        else:
            os.environ["MLFLOW_EXPERIMENT_ID"] = before


def _end_run(status: str) -> None:
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


def _open_run(uri: str, experiment: str, run_name: str | None, tags: dict[str, str],
              run_id: str | None, env: Mapping[str, str], system: bool) -> Any:
    """Create (or reopen) the run through the client, then make it mlflow's active run.

    The fluent mlflow.start_run() without a run id would *resume* a run named by
    MLFLOW_RUN_ID (the KFP parent) instead of nesting under it, so the run is
    created first and started by id.
    """
    try:
        client = MlflowClient(uri)
        target = run_id
        if target is None:
            experiment_id = env.get("MLFLOW_EXPERIMENT_ID") or _call(
                uri, f"experiment {experiment!r}", lambda: _experiment_id(client, experiment, uri))
            # Retried like the rest: a create whose answer was lost in a timeout may leave
            # an empty run behind, but the run this one trains in is the one returned here.
            target = _call(uri, "create a run", lambda: client.create_run(
                experiment_id, run_name=run_name, tags=tags or None).info.run_id)

        def start() -> Any:
            # mlflow.start_run(run_id) refuses a run outside the process's active
            # experiment (set by an earlier stage in this process): make the run's
            # own experiment active.
            _set_active_experiment(client.get_run(target).info.experiment_id)
            return mlflow.start_run(run_id=target, log_system_metrics=system or None)

        return _call(uri, f"open run {target}", start)
    except TrackingError:
        raise
    except Exception as e:  # noqa: BLE001 - mlflow raises many types; report one line
        refused = credentials_error(e, uri, env)
        if refused is not None:
            raise refused from None
        what = f"continue run {run_id}" if run_id else "start a run"
        raise TrackingError(f"cannot {what} on MLflow at {redact(uri)}: {one_line(e)}") from None


@contextmanager
def start_run(experiment: str, run_name: str | None = None, tracking_uri: str | None = None,
              tags: Mapping[str, str] | None = None, params: Mapping[str, Any] | None = None,
              run_id: str | None = None, environ: Mapping[str, str] | None = None,
              log_system_metrics: bool = False) -> Iterator[Any]:
    """Open an MLflow run (a new one, or ``run_id`` to continue one); FINISHED, FAILED or KILLED at the end.

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
    env = os.environ if environ is None else environ
    uri = resolve_tracking_uri(tracking_uri, env)
    check_tracking_server(uri)
    # The one place the library sets mlflow's process-wide URI: the fluent API that the run
    # is opened and logged through (mlflow.start_run, log_params/metrics/artifacts,
    # Model.log, log_input) reads only that. Every call outside the run takes its URI.
    _point_mlflow_at(uri)
    all_tags = dict(tags or {})
    if env.get("MLFLOW_RUN_ID") and run_id is None:
        all_tags["mlflow.parentRunId"] = env["MLFLOW_RUN_ID"]
    system = log_system_metrics and importlib.util.find_spec("psutil") is not None
    if system:
        mlflow.set_system_metrics_sampling_interval(10)  # well under 1% of a core
    run = _open_run(uri, experiment, run_name, all_tags, run_id, env, system)
    try:
        if run_id is not None and all_tags:
            _call(uri, "set tags", lambda: mlflow.set_tags(all_tags))
        if params and run_id is None:
            _call(uri, "log params", lambda: mlflow.log_params(
                {k: ("" if v is None else v) for k, v in params.items()}))
        yield run
    except BaseException as e:
        with contextlib.suppress(Exception):  # the original error matters more
            # KILLED: stopped by a signal to be resumed (the same command continues the run).
            _end_run("KILLED" if isinstance(e, Interrupted) else "FAILED")
        raise
    try:
        _call(uri, f"close run {run.info.run_id}", lambda: _end_run("FINISHED"))
    except TrackingError:
        raise
    except Exception as e:  # noqa: BLE001
        raise TrackingError(f"cannot close MLflow run {run.info.run_id} at {redact(uri)}: "
                            f"{one_line(e)}") from None


def run_exists(run_id: str, tracking_uri: str) -> bool:
    """Whether ``run_id`` exists (and is not deleted) in the store at ``tracking_uri``.

    Only the store's "not found" (RESOURCE_DOES_NOT_EXIST, HTTP 404) means no: an outage is
    retried and then raised (:class:`~wavenet.errors.TrackingUnavailable`), a refusal is
    raised (:func:`credentials_error`), so a blip at resume never starts a second run.
    """
    def get() -> Any:
        try:
            return MlflowClient(tracking_uri).get_run(run_id)
        except MlflowException as e:
            if _failed_status(e) == 404 or e.error_code == "RESOURCE_DOES_NOT_EXIST":
                return None
            raise

    try:
        run = _call(tracking_uri, f"read run {run_id}", get)
    except TrackingError:
        raise
    except MlflowException as e:
        raise (credentials_error(e, tracking_uri) or TrackingError(
            f"cannot read MLflow run {run_id} at {redact(tracking_uri)}: {one_line(e)}")) from None
    return run is not None and run.info.lifecycle_stage != "deleted"


def active_run_id() -> str | None:
    run = mlflow.active_run()
    return run.info.run_id if run else None


def source_run_id(uri: str) -> str | None:
    """The run id of a ``runs:/<id>/...`` URI, else None."""
    if not str(uri).startswith("runs:/"):
        return None
    run_id = uri[len("runs:/"):].split("/", 1)[0]
    return run_id or None


def registry_version(client: MlflowClient, uri: str) -> Any:
    """The model version (MLflow's ``ModelVersion``) a ``models:/NAME/VERSION`` or
    ``models:/NAME@ALIAS`` URI names; None for any other URI (``runs:/``, ``models:/m-<id>``,
    a file). A version or alias the registry does not have raises MlflowException."""
    rest = uri[len("models:/"):] if str(uri).startswith("models:/") else ""
    if not rest or rest.startswith("m-"):
        return None
    if "@" in rest:
        name, alias = rest.split("@", 1)
        return client.get_model_version_by_alias(name, alias.split("/", 1)[0])
    name, _, version = rest.partition("/")
    return client.get_model_version(name, version.split("/", 1)[0]) if version else None


def model_run_id(uri: str, tracking_uri: str | None = None) -> str | None:
    """The run that logged a model: from ``runs:/<id>/...``, or looked up for ``models:/m-<id>``
    and for registry URIs (``models:/NAME/VERSION``, ``models:/NAME@ALIAS``: the version's run).

    Files, and what the store (:func:`store_uri` of ``tracking_uri``) cannot resolve, give None.
    """
    run_id = source_run_id(uri)
    if run_id or not str(uri).startswith("models:/"):
        return run_id
    try:
        store = client(tracking_uri)
        if uri.startswith("models:/m-"):
            return store.get_logged_model(uri[len("models:/"):].split("/", 1)[0]).source_run_id
        version = registry_version(store, uri)
        return (version.run_id or None) if version else None
    except MlflowException:
        return None


def run_tag(run_id: str, key: str, tracking_uri: str | None = None) -> str | None:
    """Tag ``key`` of run ``run_id``, or None when absent or the run cannot be read."""
    try:
        return client(tracking_uri).get_run(run_id).data.tags.get(key)
    except MlflowException:
        return None


def run_experiment_name(run_id: str, tracking_uri: str | None = None) -> str | None:
    """The experiment name of run ``run_id``, or None when it cannot be read."""
    store = client(tracking_uri)
    try:
        return store.get_experiment(store.get_run(run_id).info.experiment_id).name
    except MlflowException:
        return None


def run_placement(model_uri: str | None, experiment: str | None, default_experiment: str,
                  tracking_uri: str | None = None) -> tuple[str, dict[str, str]]:
    """Where a stage run about ``model_uri`` goes: ``(experiment, tags)``.

    A model logged by a run (``runs:/<id>/...`` or that run's ``models:/m-<id>``)
    has its evaluation or samples nested under that training run (tag
    ``mlflow.parentRunId``), in its experiment unless ``experiment`` is given;
    :func:`start_run` lets a KFP-injected ``MLFLOW_RUN_ID`` take precedence as the parent.
    """
    src = model_run_id(model_uri, tracking_uri) if model_uri else None
    tags: dict[str, str] = {}
    exp = experiment
    if src:
        tags["mlflow.parentRunId"] = src
        exp = exp or run_experiment_name(src, tracking_uri)
    return exp or default_experiment, tags


# -- what a run holds ----------------------------------------------------------------

_KEY_CHARS = re.compile(r"[^A-Za-z0-9_\-. /]")


def metric_key(*parts: str) -> str:
    """A metric or param name from parts; characters MLflow rejects become ``_``."""
    return "/".join(_KEY_CHARS.sub("_", str(p)) for p in parts)


def log_metrics(metrics: Mapping[str, float | None], step: int | None = None) -> None:
    """Log metrics to the active run (None values are left out)."""
    mlflow.log_metrics({k: float(v) for k, v in metrics.items() if v is not None}, step=step)


def log_metrics_to_run(run_id: str, metrics: Mapping[str, float], tracking_uri: str | None = None) -> None:
    """Log metrics to another (possibly finished) run, e.g. the training run of a model."""
    now = int(time.time() * 1000)
    client(tracking_uri).log_batch(run_id, metrics=[Metric(k, float(v), now, 0) for k, v in metrics.items()])


def set_tags(tags: Mapping[str, Any]) -> None:
    """Set tags on the active run."""
    _call(mlflow.get_tracking_uri(), "set tags", lambda: mlflow.set_tags({k: str(v) for k, v in tags.items()}))


def log_dict(obj: Mapping[str, Any], artifact_file: str) -> None:
    """A JSON artifact of the active run."""
    mlflow.log_dict(dict(obj), artifact_file)


def log_artifacts(paths: Sequence[str], artifact_path: str | None = None) -> None:
    """Log files to the active run; ``gs://`` ones (a TFJob's run directory) are downloaded first."""
    with tempfile.TemporaryDirectory(prefix="wavenet-artifacts-") as tmp:
        for p in paths:
            local = storage.local_copy(p, tmp)
            _call(mlflow.get_tracking_uri(), f"log artifact {os.path.basename(local)}",
                  lambda f=local: mlflow.log_artifact(f, artifact_path=artifact_path))


# The model's pip requirements, written out rather than inferred (inference
# reloads the model in a subprocess, about 20 s, and cannot resolve our layers). The
# model carries the wavenet package itself as code (serving); these are what it imports.
MODEL_REQUIREMENTS = ("keras", "tensorflow", "numpy", "pandas", "pyyaml", "soundfile", "soxr",
                      "matplotlib")


def model_signature(quantization_channels: int, conditioned: bool) -> Any:
    """The MLflow signature of a WaveNet: codes (B, T) int32 [+ labels (B,) int32] -> logits
    (B, T, Q) float32 (the logits at position t are the distribution of code t+1)."""
    import numpy as np
    from mlflow.models import ModelSignature
    from mlflow.types.schema import Schema, TensorSpec

    inputs = [TensorSpec(np.dtype(np.int32), (-1, -1), "codes")]
    if conditioned:
        inputs.append(TensorSpec(np.dtype(np.int32), (-1,), "labels"))
    outputs = [TensorSpec(np.dtype(np.float32), (-1, -1, int(quantization_channels)), "logits")]
    return ModelSignature(inputs=Schema(inputs), outputs=Schema(outputs))


def serving_signature() -> Any:
    """The signature of the served model (:mod:`wavenet.serving`): rows of label, seconds,
    temperature, seed, an optional prime, score and sustain -> rows of a base64 WAV, its rate and length.

    Every input column is optional to MLflow, and the numbers are of any type: the model itself
    checks each row and says in one line what is wrong (a missing ``seconds``, a string for a
    number). MLflow's schema enforcement would answer with the whole request in a many-line
    message, and would refuse ``seconds=10`` from a notebook as an int64 it "can not safely
    convert" to a double (mlflow/models/utils.py ``_enforce_mlflow_datatype``).
    """
    from mlflow.models import ModelSignature
    from mlflow.types.schema import AnyType, ColSpec, Schema

    inputs = [ColSpec("string", "label", required=False), ColSpec(AnyType(), "seconds", required=False),
              ColSpec(AnyType(), "temperature", required=False), ColSpec(AnyType(), "seed", required=False),
              ColSpec("string", "prime", required=False), ColSpec("string", "score", required=False),
              ColSpec(AnyType(), "sustain", required=False)]
    outputs = [ColSpec("string", "audio"), ColSpec("long", "sample_rate"), ColSpec("double", "seconds")]
    return ModelSignature(inputs=Schema(inputs), outputs=Schema(outputs))


def _requirements() -> list[str]:
    reqs = []
    for pkg in MODEL_REQUIREMENTS:
        try:
            reqs.append(f"{pkg}=={version(pkg)}")
        except PackageNotFoundError:
            pass
    return reqs


def _conda_env() -> dict[str, Any]:
    """The model's environment, given whole: this Python, pip, and :func:`_requirements`.

    Given as ``conda_env`` rather than ``pip_requirements``, MLflow writes it as it is; from
    ``pip_requirements`` it builds one itself and pins pip to the installed version, which a
    uv-made virtualenv does not have ("Failed to resolve installed pip version", a warning on
    every log: mlflow/utils/environment.py ``_mlflow_conda_env``). requirements.txt and
    python_env.yaml say the same (mlflow/keras/save.py ``save_model`` writes all three).
    """
    import platform

    return {"name": "mlflow-env", "channels": ["conda-forge"],
            "dependencies": [f"python={platform.python_version()}", "pip", {"pip": _requirements()}]}


class _ServedWaveNet:
    """The flavor ``Model.log`` saves a WaveNet with (mlflow/models/model.py ``Model.log``
    calls ``flavor.save_model(path=..., mlflow_model=..., **kwargs)``): one MLflow model with

    * the ``keras`` flavor, written by ``mlflow.keras.save_model`` (data/model.keras);
    * a ``python_function`` flavor that generates music (:mod:`wavenet.serving` as its loader
      module, this package as its code), in place of the Keras flavor's own, which maps codes
      to logits (mlflow/keras/save.py adds ``loader_module="mlflow.keras"``).
    """

    @staticmethod
    def save_model(path: str, mlflow_model: Any, *, model: Any, **_: Any) -> None:
        import logging
        import shutil

        import mlflow.keras
        from mlflow.models.utils import _save_example
        from mlflow.pyfunc import add_to_model

        import wavenet
        from wavenet import serving

        # No signature here: mlflow.keras accepts tensor signatures only; the model's is set below.
        keras_log = logging.getLogger("mlflow.keras.save")
        level = keras_log.level
        keras_log.setLevel(logging.ERROR)  # "saving a Keras model without specifying model signature"
        try:
            mlflow.keras.save_model(model, path, mlflow_model=mlflow_model, conda_env=_conda_env())
        finally:
            keras_log.setLevel(level)
        serving.write_settings(os.path.join(path, "data"))
        shutil.copytree(os.path.dirname(wavenet.__file__), os.path.join(path, "code", "wavenet"),
                        ignore=shutil.ignore_patterns("__pycache__", "*.c", "*.h"))
        add_to_model(mlflow_model, loader_module="wavenet.serving", data="data", code="code",
                     conda_env="conda.yaml", python_env="python_env.yaml")
        mlflow_model.signature = serving_signature()
        _save_example(mlflow_model, serving.input_example(model), path)
        mlflow_model.save(os.path.join(path, "MLmodel"))


def log_model(model: Any, name: str = "model") -> str:
    """Log a WaveNet in the active run as an MLflow model that serves music; returns its URI.

    The one way models enter MLflow (training's model and the gate's alike). The model has
    two flavors (:class:`_ServedWaveNet`): ``mlflow.pyfunc.load_model(uri)`` gives the
    generator of :mod:`wavenet.serving` (what ``mlflow models serve`` serves), and
    ``mlflow.keras.load_model(uri)`` the trained network, once ``wavenet.model`` (its layers)
    is imported: Keras resolves custom classes only from its registry
    (keras/src/saving/serialization_lib.py ``_retrieve_class_or_fn`` imports keras modules
    only), and ``mlflow.pyfunc.load_model`` of the same URI imports them from the model's own
    code. MLflow 3 stores logged models as their own entities: the URI is ``models:/m-<id>``,
    and ``runs:/<run_id>/<name>`` resolves to the same model.
    """
    import mlflow.models

    if mlflow.active_run() is None:
        raise TrackingError("log_model needs an active MLflow run")
    # validate_serving_input: MLflow would load the model again and generate its example
    # (seconds of work on every log); the tests serve it for real instead.
    # MLFLOW_UV_AUTO_DETECT=false: the environment is given whole (_conda_env); left on, MLflow
    # looks for uv.lock in the working directory (this checkout, under `make run`) and logs
    # "Detected uv project" on every log, for a model saved without uv's files
    # (mlflow/models/model.py ``Model.log``: ``uses_uv``; the variable is documented in
    # mlflow/environment_variables.py ``MLFLOW_UV_AUTO_DETECT``).
    with _environ(MLFLOW_UV_AUTO_DETECT="false"):
        return _call(mlflow.get_tracking_uri(), "log the model", lambda: mlflow.models.Model.log(
            None, name=name, flavor=_ServedWaveNet, model=model, flavor_name="keras",
            validate_serving_input=False).model_uri)


@contextmanager
def _environ(**values: str) -> Iterator[None]:
    """``os.environ`` with ``values`` set for the block (MLflow reads its settings from there)."""
    saved = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


class _Served:
    """``model`` (``predict(rows)``) for MLflow's scoring server: its ``bad_request`` errors
    answer 400 and its ``busy`` errors 503, each with the error's one line as the message."""

    def __init__(self, model: Any, bad_request: type[Exception], busy: type[Exception]):
        self.model, self._bad_request, self._busy = model, bad_request, busy

    def predict(self, model_input: Any, params: Any = None) -> Any:
        from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE, TEMPORARILY_UNAVAILABLE

        try:
            return self.model.predict(model_input, params)
        except self._busy as e:
            raise _OneLineError(str(e), TEMPORARILY_UNAVAILABLE) from None
        except self._bad_request as e:
            raise _OneLineError(str(e), INVALID_PARAMETER_VALUE) from None


def served_model(model: Any, bad_request: type[Exception], busy: type[Exception]) -> Any:
    """``model`` wrapped for MLflow's scoring server (:class:`_Served`)."""
    return _Served(model, bad_request, busy)


class _OneLineError(MlflowException):
    """An MlflowException whose message stays one line: MLflow's scoring server rewrites the
    message of an error from ``predict`` as ``"Failed to predict data '<the request's
    DataFrame>'. \nError: ..."`` (mlflow/pyfunc/scoring_server/__init__.py ``invocations``),
    which would answer a bad request with the whole request, over many lines."""

    @property
    def message(self) -> str:
        return self._one_line

    @message.setter
    def message(self, value: str) -> None:
        if not hasattr(self, "_one_line"):
            self._one_line = one_line(Exception(value), with_type=False)


def log_dataset(source: str, name: str, digest: str, context: str = "training",
                profile: Mapping[str, Any] | None = None) -> None:
    """Record a data folder as an MLflow dataset input of the active run (``mlflow.log_input``).

    Args:
        source: where the data is (a local folder or ``gs://`` prefix).
        name: the dataset's name in the UI.
        digest: its content version (:attr:`wavenet.data.manifest.Manifest.data_version`): the
            same for the same data on any machine, whatever the folder.
        context: what the run used it for (MLflow's ``mlflow.data.context`` input tag).
        profile: a few numbers about it, shown with the dataset.
    """
    from mlflow.data.dataset_source_registry import resolve_dataset_source

    with warnings.catch_warnings():  # "can be interpreted in multiple ways": a local folder, either way
        warnings.simplefilter("ignore", UserWarning)
        resolved = resolve_dataset_source(source)
    _call(mlflow.get_tracking_uri(), "log the dataset",
          lambda: mlflow.log_input(_ProfiledDataset(resolved, name=name, digest=digest, profile=profile),
                                   context=context))


class _ProfiledDataset(MetaDataset):
    """A :class:`MetaDataset` with a profile (MetaDataset records no profile of its own)."""

    def __init__(self, source, name: str, digest: str, profile: Mapping[str, Any] | None):
        super().__init__(source, name=name, digest=digest)
        self._profile = profile

    def to_dict(self) -> dict[str, str]:
        profile = self._profile
        return {**super().to_dict(), **({"profile": json.dumps(dict(profile))} if profile else {})}


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
        self._pending: list[dict[str, Any]] = []
        # (key, step) pairs this buffer has sent: a value re-logged at the same step
        # (a resumed run repeating its last validation) is not sent a second time.
        self._sent_keys: set[tuple[str, int]] = set()
        for m in pending:
            self._queue(dict(m))
        self._clock = clock
        self._failed_at: float | None = None
        self._warn = warn or (lambda msg: print(f"warning: {msg}", file=sys.stderr))
        self._client = None
        self._last_error: Exception | None = None
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
            self._queue({"key": k, "value": float(v), "step": int(step), "timestamp": now_ms})
        return self.flush() if flush else not self._pending

    def _queue(self, metric: dict[str, Any]) -> None:
        """Queue one metric; one value per (key, step): a newer one replaces a queued one.

        Pending metrics reloaded after an outage and the same metric logged again
        at the same step would otherwise reach MLflow twice (two points at one step).
        """
        ident = (metric["key"], int(metric["step"]))
        if ident in self._sent_keys:
            return
        self._pending = [m for m in self._pending if (m["key"], int(m["step"])) != ident]
        self._pending.append(metric)

    def flush(self, force: bool = False) -> bool:
        """Send queued metrics. Returns True when nothing is left queued."""
        if not self._pending:
            return True
        if (not force and self._failed_at is not None
                and self._clock() - self._failed_at < self.retry_after_s):
            return False
        if self._client is None:
            self._client = MlflowClient(self.tracking_uri)
        while self._pending:
            chunk = self._pending[:self.BATCH]
            try:
                self._client.log_batch(self.run_id, metrics=[
                    Metric(m["key"], m["value"], m["timestamp"], m["step"]) for m in chunk])
            except Exception as e:  # noqa: BLE001 - any failure: keep the metrics, retry later
                self.failures += 1
                self._last_error = e
                if self._failed_at is None:
                    self._warn(f"MLflow at {redact(self.tracking_uri)} unreachable ({one_line(e)}); "
                               f"{len(self._pending)} metrics kept, retrying every "
                               f"{self.retry_after_s:g} s")
                self._failed_at = self._clock()
                return False
            del self._pending[:len(chunk)]
            self._sent_keys.update((m["key"], int(m["step"])) for m in chunk)
            self.sent += len(chunk)
        if self._failed_at is not None:
            self._warn(f"MLflow at {redact(self.tracking_uri)} reachable again; queued metrics sent")
        self._failed_at = None
        self._last_error = None
        return True

    @property
    def outage(self) -> bool:
        """Whether the last failed send was an outage (refused, timeout, 5xx), not a refusal."""
        return self._last_error is not None and _outage(self._last_error, self.tracking_uri, "") is not None

    def drain(self) -> bool:
        """Send everything queued, waiting out an outage within the retry budget
        (:mod:`wavenet.retry`); for the end of a run, when nothing else is left to do.

        Returns:
            True when nothing is left queued; False after the budget, or at once on a
            failure that is not an outage (a refusal: see :attr:`outage`).
        """
        def send() -> None:
            if not self.flush(force=True):
                raise self._last_error or RuntimeError("metrics not sent")

        try:
            _call(self.tracking_uri, "log metrics", send)
        except Exception:  # noqa: BLE001 - what is left stays queued for the caller to keep
            return False
        return True

    def to_json(self) -> str:
        """The queued metrics as JSON (for ``pending=json.loads(...)`` later)."""
        return json.dumps(self._pending)
