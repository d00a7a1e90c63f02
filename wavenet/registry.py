"""The MLflow model registry edge: model URIs in, WaveNets out; versions and the champion.

A model can be named three ways anywhere the CLI or a component takes one:

* a ``.keras`` file (local or ``gs://``), saved by :func:`wavenet.model.save_model`;
* an MLflow model URI, e.g. ``runs:/<run_id>/model`` (training logs its model
  with ``mlflow.keras.log_model(..., name="model")``) or ``models:/m-<id>``;
* a registry URI, ``models:/<name>/<version>`` or ``models:/<name>@champion``.

The registered model's ``champion`` alias marks the model that generation and
serving use; :mod:`wavenet.evaluate` moves it only when a new model is better.
Like :mod:`wavenet.tracking`, this module may import mlflow; the rest of the
core does not.
"""

from __future__ import annotations

import os
import re
import tempfile
from dataclasses import dataclass
from typing import Any

from wavenet.errors import TrackingError, WavenetError

__all__ = [
    "CHAMPION",
    "MLFLOW_SCHEMES",
    "ModelRef",
    "is_mlflow_uri",
    "source_run_id",
    "model_run_id",
    "use_tracking_uri",
    "load_wavenet",
    "log_wavenet",
    "get_champion",
    "register",
    "set_champion",
    "run_experiment_name",
    "run_placement",
    "active_run_id",
    "log_metrics",
    "log_metrics_to_run",
    "log_params",
    "set_tags",
    "log_dict",
    "log_artifacts",
    "log_artifact_files",
    "metric_key",
]

CHAMPION = "champion"
MLFLOW_SCHEMES = ("runs:/", "models:/", "mlflow-artifacts:/")


@dataclass(frozen=True)
class ModelRef:
    """A registered model version."""

    name: str
    version: str
    run_id: str | None
    source: str

    @property
    def uri(self) -> str:
        return f"models:/{self.name}/{self.version}"


def is_mlflow_uri(uri: str) -> bool:
    """True for URIs MLflow resolves (``runs:/``, ``models:/``, ``mlflow-artifacts:/``)."""
    return str(uri).startswith(MLFLOW_SCHEMES)


def source_run_id(uri: str) -> str | None:
    """The run id of a ``runs:/<id>/...`` URI, else None."""
    if not str(uri).startswith("runs:/"):
        return None
    run_id = uri[len("runs:/"):].split("/", 1)[0]
    return run_id or None


def model_run_id(uri: str) -> str | None:
    """The run that logged a model: from ``runs:/<id>/...``, or looked up for ``models:/m-<id>``.

    Registry URIs (``models:/NAME/...``) and files give None. Needs the tracking
    URI set (:func:`use_tracking_uri`) for the lookup.
    """
    run_id = source_run_id(uri)
    if run_id or not str(uri).startswith("models:/m-"):
        return run_id
    import mlflow
    from mlflow.exceptions import MlflowException

    try:
        return mlflow.get_logged_model(uri[len("models:/"):].split("/", 1)[0]).source_run_id
    except MlflowException:
        return None


def _one_line(e: BaseException) -> str:
    text = str(getattr(e, "message", None) or e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def use_tracking_uri(tracking_uri: str | None = None) -> str:
    """Point mlflow at the tracking (and registry) store; returns the URI used."""
    import mlflow

    from wavenet.tracking import check_tracking_server, resolve_tracking_uri

    uri = resolve_tracking_uri(tracking_uri)
    check_tracking_server(uri)
    mlflow.set_tracking_uri(uri)
    return uri


def load_wavenet(uri: str, tracking_uri: str | None = None):
    """Load a WaveNet from a ``.keras`` path or an MLflow model URI.

    MLflow models are downloaded with ``mlflow.artifacts.download_artifacts``
    and their ``.keras`` file is loaded with :func:`wavenet.model.load_model`
    (Keras safe mode: no arbitrary code runs from the artifact).

    Args:
        uri: see the module docstring.
        tracking_uri: MLflow tracking URI (default: $MLFLOW_TRACKING_URI, else ./mlflow.db).

    Returns:
        The :class:`wavenet.model.WaveNet`.

    Raises:
        TrackingError: the URI cannot be resolved or downloaded.
        WavenetError: the file is missing or is not a WaveNet.
    """
    from wavenet.model import load_model

    if not is_mlflow_uri(uri):
        return load_model(uri)
    import mlflow
    from mlflow.exceptions import MlflowException

    use_tracking_uri(tracking_uri)
    with tempfile.TemporaryDirectory() as tmp:
        try:
            local = mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=tmp)
        except (MlflowException, OSError) as e:
            raise TrackingError(f"cannot download model {uri}: {_one_line(e)}") from None
        files = sorted(os.path.join(d, f) for d, _, fs in os.walk(local) for f in fs
                       if f.endswith(".keras"))
        if not files:
            raise WavenetError(f"model {uri} holds no .keras file (is it a Keras MLflow model?)")
        return load_model(files[0])


def log_wavenet(model, name: str = "model") -> str:
    """Log a WaveNet as an MLflow Keras model in the active run.

    Requirements are written out (TensorFlow and Keras as installed) instead
    of inferred, which would load the model again in a subprocess.

    Returns:
        The logged model's URI (``models:/m-<id>``; ``runs:/<run_id>/<name>``
        resolves to the same model).
    """
    import keras
    import mlflow
    import tensorflow as tf

    run = mlflow.active_run()
    if run is None:
        raise TrackingError("log_wavenet needs an active MLflow run")
    info = mlflow.keras.log_model(model, name=name, pip_requirements=[
        f"tensorflow=={tf.__version__}", f"keras=={keras.__version__}"])
    # MLflow 3 stores logged models as their own entities (models:/m-<id>);
    # registering that URI avoids the runs:/ indirection.
    return info.model_uri


def _client():
    from mlflow import MlflowClient

    return MlflowClient()


def get_champion(name: str) -> ModelRef | None:
    """The version that the ``champion`` alias of registered model ``name`` points to, if any."""
    from mlflow.exceptions import MlflowException

    client = _client()
    try:
        mv = client.get_model_version_by_alias(name, CHAMPION)
    except MlflowException as e:
        code = getattr(e, "error_code", "")
        if code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE", "NOT_FOUND"):
            return None
        if _model_absent_behind_auth(client, name, e):
            return None
        from wavenet.tracking import credentials_error

        refused = credentials_error(e, str(client.tracking_uri))
        if refused is not None:
            raise refused from None
        raise TrackingError(f"cannot read the {CHAMPION} of registered model {name!r}: "
                            f"{_one_line(e)}") from None
    return ModelRef(name=name, version=str(mv.version), run_id=mv.run_id, source=mv.source)


def _model_absent_behind_auth(client: Any, name: str, e: BaseException) -> bool:
    """Whether a 403 on the alias lookup only means that no model ``name`` exists yet.

    MLflow's basic-auth app answers 403, not 404, to an alias lookup on a registered model that
    does not exist (MLflow 3.17, mlflow/server/auth/__init__.py,
    validate_can_read_model_or_prompt_version: no model, no permission), so the first gate
    against the production server (k8s/mlflow.yaml) looked like a permission error.
    """
    from wavenet.tracking import http_status

    if http_status(e) != 403:
        return False
    escaped = name.replace("\\", "\\\\").replace("'", "\\'")
    try:
        return not client.search_registered_models(filter_string=f"name = '{escaped}'", max_results=1)
    except Exception:  # noqa: BLE001 - cannot tell: report the original error
        return False


def register(model_uri: str, name: str, tags: dict[str, Any] | None = None) -> ModelRef:
    """Register ``model_uri`` as a new version of ``name`` (created if needed)."""
    import mlflow
    from mlflow.exceptions import MlflowException

    try:
        mv = mlflow.register_model(model_uri, name,
                                   tags={k: str(v) for k, v in (tags or {}).items()} or None)
    except MlflowException as e:
        raise TrackingError(f"cannot register {model_uri} as {name!r}: {_one_line(e)}") from None
    return ModelRef(name=name, version=str(mv.version), run_id=mv.run_id, source=mv.source)


def set_champion(name: str, version: str) -> None:
    """Point the ``champion`` alias of ``name`` at ``version``."""
    from mlflow.exceptions import MlflowException

    try:
        _client().set_registered_model_alias(name, CHAMPION, str(version))
    except MlflowException as e:
        raise TrackingError(f"cannot set {CHAMPION} of {name!r} to version {version}: "
                            f"{_one_line(e)}") from None


def run_experiment_name(run_id: str) -> str | None:
    """The experiment name of run ``run_id``, or None when it cannot be read."""
    from mlflow.exceptions import MlflowException

    client = _client()
    try:
        return client.get_experiment(client.get_run(run_id).info.experiment_id).name
    except MlflowException:
        return None


def run_placement(model_uri: str | None, experiment: str | None,
                  default_experiment: str) -> tuple[str, dict[str, str]]:
    """Where a stage run about ``model_uri`` goes: ``(experiment, tags)``.

    A model logged by a run (``runs:/<id>/...`` or that run's ``models:/m-<id>``)
    has its evaluation or samples nested under that training run (tag ``mlflow.parentRunId``), in its experiment unless
    ``experiment`` is given; :func:`wavenet.tracking.start_run` lets a
    KFP-injected ``MLFLOW_RUN_ID`` take precedence as the parent.
    """
    src = model_run_id(model_uri) if model_uri else None
    tags: dict[str, str] = {}
    exp = experiment
    if src:
        tags["mlflow.parentRunId"] = src
        exp = exp or run_experiment_name(src)
    return exp or default_experiment, tags


# -- run logging for evaluation and generation -------------------------------
# evaluate.py and samples.py stay free of mlflow imports; they log through these.

_KEY_CHARS = re.compile(r"[^A-Za-z0-9_\-. /]")


def metric_key(*parts: str) -> str:
    """A metric or param name from parts; characters MLflow rejects become ``_``."""
    return "/".join(_KEY_CHARS.sub("_", str(p)) for p in parts)


def active_run_id() -> str | None:
    import mlflow

    run = mlflow.active_run()
    return run.info.run_id if run else None


def log_metrics(metrics: dict[str, float], step: int | None = None) -> None:
    import mlflow

    mlflow.log_metrics({k: float(v) for k, v in metrics.items() if v is not None}, step=step)


def log_metrics_to_run(run_id: str, metrics: dict[str, float]) -> None:
    """Log metrics to another (possibly finished) run, e.g. the training run of a model."""
    import time

    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    _client().log_batch(run_id, metrics=[Metric(k, float(v), now, 0) for k, v in metrics.items()])


def log_params(params: dict[str, Any]) -> None:
    import mlflow

    mlflow.log_params({k: ("" if v is None else v) for k, v in params.items()})


def set_tags(tags: dict[str, Any]) -> None:
    import mlflow

    mlflow.set_tags({k: str(v) for k, v in tags.items()})


def log_dict(obj: dict[str, Any], artifact_file: str) -> None:
    import mlflow

    mlflow.log_dict(obj, artifact_file)


def log_artifacts(local_dir: str, artifact_path: str | None = None) -> None:
    import mlflow

    mlflow.log_artifacts(local_dir, artifact_path)


def log_artifact_files(paths: list[str], artifact_path: str | None = None) -> None:
    import mlflow

    for path in paths:
        mlflow.log_artifact(path, artifact_path)
