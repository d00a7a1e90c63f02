"""The MLflow model registry edge: model URIs in, WaveNets out; versions and the champion.

A model can be named three ways anywhere the CLI or a component takes one:

* a ``.keras`` file (local or ``gs://``), saved by :func:`wavenet.model.save_model`;
* an MLflow model URI, e.g. ``runs:/<run_id>/model`` (training logs its model
  with :func:`wavenet.tracking.log_model`, ``name="model"``) or ``models:/m-<id>``;
* a registry URI, ``models:/<name>/<version>`` or ``models:/<name>@champion``.

The registered model's ``champion`` alias marks the model that generation and
serving use; :mod:`wavenet.evaluate` moves it only when a new model is better.
Runs, metrics, artifacts and logging models are :mod:`wavenet.tracking`'s;
together the two are the only core modules that import mlflow.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import mlflow
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from wavenet.errors import TrackingError, WavenetError, one_line
from wavenet.model import WaveNet, load_model
from wavenet.tracking import MLFLOW_SCHEMES, is_mlflow_uri, registry_version, use_tracking_uri

__all__ = [
    "CHAMPION",
    "MLFLOW_SCHEMES",  # from wavenet.tracking, with is_mlflow_uri
    "ModelRef",
    "is_mlflow_uri",
    "load_wavenet",
    "get_champion",
    "register",
    "set_champion",
    "champion_lock",
    "ModelInfo",
    "describe_model",
    "TRAIN_KEY_TAG",
    "find_by_train_key",
    "download_keras",
    "input_example",
    "record_train_key",
    "train_key_of",
]

# The registry version tag (and training-run tag) that says which data, config and seed
# trained a model (wavenet.reuse.train_key): a later identical run reuses that version.
TRAIN_KEY_TAG = "wavenet.train_key"

CHAMPION = "champion"


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


def load_wavenet(uri: str, tracking_uri: str | None = None) -> WaveNet:
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
    if not is_mlflow_uri(uri):
        return load_model(uri)
    with tempfile.TemporaryDirectory() as tmp:
        return load_model(download_keras(uri, os.path.join(tmp, "model.keras"), tracking_uri))


def download_keras(uri: str, dest: str, tracking_uri: str | None = None) -> str:
    """Download the ``.keras`` file of MLflow model ``uri`` to the local path ``dest``; returns ``dest``.

    No TensorFlow is loaded (a launcher that only hands the model on stays light).
    """
    use_tracking_uri(tracking_uri)
    with tempfile.TemporaryDirectory() as tmp:
        try:
            local = mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=tmp)
        except (MlflowException, OSError) as e:
            raise TrackingError(f"cannot download model {uri}: "
                                f"{one_line(e, with_type=False)}") from None
        files = sorted(os.path.join(d, f) for d, _, fs in os.walk(local) for f in fs
                       if f.endswith(".keras"))
        if not files:
            raise WavenetError(f"model {uri} holds no .keras file (is it a Keras MLflow model?)")
        os.makedirs(os.path.dirname(os.path.abspath(dest)), exist_ok=True)
        shutil.copyfile(files[0], dest)
    return dest


def input_example(uri: str, tracking_uri: str | None = None) -> dict[str, Any]:
    """The input example logged with MLflow model ``uri`` (a served WaveNet's: one request,
    :func:`wavenet.serving.input_example`), as columns; {} when it has none."""
    use_tracking_uri(tracking_uri)
    with tempfile.TemporaryDirectory() as tmp:
        try:
            local = mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=tmp)
            from mlflow.models import Model

            example = Model.load(local).load_input_example(local)
        except (MlflowException, OSError) as e:
            raise TrackingError(f"cannot read the input example of {uri}: "
                                f"{one_line(e, with_type=False)}") from None
    if example is None:
        return {}
    return example.to_dict(orient="list") if hasattr(example, "to_dict") else dict(example)


def _client() -> MlflowClient:
    return MlflowClient()


def get_champion(name: str) -> ModelRef | None:
    """The version that the ``champion`` alias of registered model ``name`` points to, if any."""
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
                            f"{one_line(e, with_type=False)}") from None
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
    try:
        mv = mlflow.register_model(model_uri, name,
                                   tags={k: str(v) for k, v in (tags or {}).items()} or None)
    except MlflowException as e:
        raise TrackingError(f"cannot register {model_uri} as {name!r}: "
                            f"{one_line(e, with_type=False)}") from None
    return ModelRef(name=name, version=str(mv.version), run_id=mv.run_id, source=mv.source)


def set_champion(name: str, version: str) -> None:
    """Point the ``champion`` alias of ``name`` at ``version``."""
    try:
        _client().set_registered_model_alias(name, CHAMPION, str(version))
    except MlflowException as e:
        raise TrackingError(f"cannot set {CHAMPION} of {name!r} to version {version}: "
                            f"{one_line(e, with_type=False)}") from None


# -- one gate at a time ------------------------------------------------------------
#
# MLflow's registry has no compare-and-set on an alias, but creating a registered
# model is atomic: the tracking store refuses a second model of the same name
# (RESOURCE_ALREADY_EXISTS, a unique key in the SQL stores). The lock is therefore a
# registered model named ``<name>.gate-lock``, created to acquire and deleted to
# release; its tags name the owner and when the lease expires. The gate holds it only
# to re-read the champion, register and move the alias (seconds), so the lease is
# short; a holder that died (SIGKILL) blocks others at most until its lease expires.
#
# Limits: taking over an expired lease is a delete then a create, and two waiters
# could both see the same expired lease: the second's delete can remove the first's
# fresh lock. That needs a holder dead past its lease *and* two contenders within one
# round trip; a holder that outlives its lease (a stall longer than LOCK_LEASE_S) can
# also overlap with a new one. The lock model shows in the registry while held.

LOCK_SUFFIX = ".gate-lock"
LOCK_LEASE_S = 120.0
LOCK_WAIT_S = 300.0


def _lock_name(name: str) -> str:
    return f"{name}{LOCK_SUFFIX}"


def _try_acquire(client: MlflowClient, lock: str, owner: str, lease_s: float) -> bool:
    try:
        client.create_registered_model(lock, tags={"owner": owner,
                                                   "expires_at": f"{time.time() + lease_s:.3f}"},
                                       description="wavenet gate lock: one champion at a time")
        return True
    except MlflowException as e:
        if getattr(e, "error_code", "") != "RESOURCE_ALREADY_EXISTS":
            raise TrackingError(f"cannot take the gate lock {lock!r}: "
                                f"{one_line(e, with_type=False)}") from None
    return False


def _expired_holder(client: MlflowClient, lock: str) -> str | None:
    """The owner of ``lock`` when its lease has expired (None: held, or already gone)."""
    try:
        tags = client.get_registered_model(lock).tags
    except MlflowException:
        return None
    try:
        expires_at = float(tags.get("expires_at", "0"))
    except ValueError:
        expires_at = 0.0
    return tags.get("owner", "?") if time.time() > expires_at else None


def _release(client: MlflowClient, lock: str, owner: str) -> None:
    with contextlib.suppress(MlflowException):
        if client.get_registered_model(lock).tags.get("owner") == owner:
            client.delete_registered_model(lock)


@contextlib.contextmanager
def champion_lock(name: str, *, lease_s: float = LOCK_LEASE_S,
                  wait_s: float = LOCK_WAIT_S) -> Iterator[str]:
    """Hold the gate lock of registered model ``name`` (see the comment above).

    Yields:
        This holder's owner id (host, pid and a random part).

    Raises:
        TrackingError: the lock stayed held for ``wait_s`` seconds, or the server failed.
    """
    client = _client()
    lock = _lock_name(name)
    owner = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
    deadline = time.monotonic() + wait_s
    delay = 0.05
    while not _try_acquire(client, lock, owner, lease_s):
        stale = _expired_holder(client, lock)
        if stale is not None:
            with contextlib.suppress(MlflowException):
                client.delete_registered_model(lock)  # a dead holder's lease
            continue
        if time.monotonic() > deadline:
            raise TrackingError(f"the gate lock {lock!r} stayed held for {wait_s:.0f} s; if no "
                                f"gate is running, delete registered model {lock!r}")
        time.sleep(delay)
        delay = min(delay * 2, 1.0)
    try:
        yield owner
    finally:
        _release(client, lock, owner)


@dataclass(frozen=True)
class ModelInfo:
    """What a model URI stands for: the run that trained it and its registered version, if any."""

    uri: str
    run_id: str | None
    run_name: str | None
    version: ModelRef | None
    champion: bool

    def to_dict(self) -> dict[str, Any]:
        """``{"run_id", "run_name", "registered_model", "registered_version", "champion"}``."""
        return {"run_id": self.run_id, "run_name": self.run_name,
                "registered_model": self.version.name if self.version else None,
                "registered_version": self.version.version if self.version else None,
                "champion": self.champion}

    @property
    def title(self) -> str:
        """``<run name> · <name> version <v> (champion)``; plain words for what is not known."""
        who = self.run_name or self.uri
        if self.version is None:
            return f"{who} · not registered"
        return f"{who} · {self.version.name} version {self.version.version}" + \
            (" (champion)" if self.champion else "")


def _ref(mv) -> ModelRef:
    return ModelRef(name=mv.name, version=str(mv.version), run_id=mv.run_id, source=mv.source)


def _registry_version(client: MlflowClient, uri: str) -> ModelRef | None:
    """The version a ``models:/NAME/VERSION`` or ``models:/NAME@ALIAS`` URI names (None otherwise)."""
    version = registry_version(client, uri)
    return _ref(version) if version else None


def describe_model(uri: str, name: str, tracking_uri: str | None = None) -> ModelInfo:
    """The training run and registered version (of registered model ``name``) behind ``uri``.

    A ``.keras`` path, or a store that does not know the model, gives what it can
    (the URI alone); this never fails a caller that only wants a title.
    """
    from wavenet.tracking import model_run_id

    if not is_mlflow_uri(uri):
        return ModelInfo(uri=uri, run_id=None, run_name=None, version=None, champion=False)
    use_tracking_uri(tracking_uri)
    client = _client()
    try:
        version = _registry_version(client, uri)
        run_id = version.run_id if version else model_run_id(uri)
        if version is None and run_id:
            found = [mv for mv in client.search_model_versions(f"run_id = '{run_id}'")
                     if mv.name == name]
            version = _ref(max(found, key=lambda mv: int(mv.version))) if found else None
        run_name = client.get_run(run_id).info.run_name if run_id else None
    except MlflowException:
        return ModelInfo(uri=uri, run_id=None, run_name=None, version=None, champion=False)
    champion = get_champion(version.name) if version else None
    return ModelInfo(uri=uri, run_id=run_id, run_name=run_name, version=version,
                     champion=champion is not None and champion.version == version.version)


def find_by_train_key(name: str, key: str) -> ModelRef | None:
    """The newest version of registered model ``name`` tagged with train key ``key``, if any."""
    try:
        found = _client().search_model_versions(
            f"name = '{name}' and tags.`{TRAIN_KEY_TAG}` = '{key}'")
    except MlflowException as e:
        raise TrackingError(f"cannot search registered model {name!r} for {TRAIN_KEY_TAG}: "
                            f"{one_line(e, with_type=False)}") from None
    return _ref(max(found, key=lambda mv: int(mv.version))) if found else None


def record_train_key(run_id: str, key: str) -> None:
    """Tag training run ``run_id`` with its train key (the gate copies it onto the version it registers)."""
    try:
        _client().set_tag(run_id, TRAIN_KEY_TAG, key)
    except MlflowException as e:
        raise TrackingError(f"cannot tag run {run_id} with {TRAIN_KEY_TAG}: "
                            f"{one_line(e, with_type=False)}") from None


def train_key_of(run_id: str | None) -> str | None:
    """The train key tagged on training run ``run_id``, if any."""
    if not run_id:
        return None
    try:
        return _client().get_run(run_id).data.tags.get(TRAIN_KEY_TAG)
    except MlflowException:
        return None
