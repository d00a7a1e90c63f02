"""The MLflow model registry edge: model URIs in, WaveNets out; versions and the champion.

A model can be named three ways anywhere the CLI or a component takes one:

* a ``.keras`` file (local or ``gs://``), saved by :func:`wavenet.model.save_model`;
* an MLflow model URI, e.g. ``runs:/<run_id>/model`` (training logs its model
  with :func:`wavenet.edges.tracking.log_model`, ``name="model"``) or ``models:/m-<id>``;
* a registry URI, ``models:/<name>/<version>`` or ``models:/<name>@champion``.

The registered model's ``champion`` alias marks the model that generation and
serving use; :mod:`wavenet.evaluate` moves it only when a new model is better.
Runs, metrics, artifacts and logging models are :mod:`wavenet.edges.tracking`'s;
together the two are the only core modules that import mlflow.
"""

from __future__ import annotations

import contextlib
import math
import os
import shutil
import socket
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import mlflow
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from wavenet.edges.tracking import (
    MLFLOW_SCHEMES,
    check_tracking_server,
    client,
    fluent_store,
    is_mlflow_uri,
    registry_version,
    store_uri,
)
from wavenet.errors import TrackingError, WavenetError, one_line

if TYPE_CHECKING:  # TensorFlow loads only with a model: a gate lock or a download needs none
    from wavenet.model import WaveNet

__all__ = [
    "CHAMPION",
    "MLFLOW_SCHEMES",  # from wavenet.edges.tracking, with is_mlflow_uri
    "ModelRef",
    "is_mlflow_uri",
    "load_wavenet",
    "get_champion",
    "register",
    "set_champion",
    "champion_lock",
    "GateLock",
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
    from wavenet.model import load_model

    if not is_mlflow_uri(uri):
        return load_model(uri)
    with tempfile.TemporaryDirectory() as tmp:
        return load_model(download_keras(uri, os.path.join(tmp, "model.keras"), tracking_uri))


def download_keras(uri: str, dest: str, tracking_uri: str | None = None) -> str:
    """Download the ``.keras`` file of MLflow model ``uri`` to the local path ``dest``; returns ``dest``.

    No TensorFlow is loaded (a launcher that only hands the model on stays light).
    """
    local_dir = _download(uri, tracking_uri)
    with tempfile.TemporaryDirectory() as tmp:
        try:
            local = local_dir(tmp)
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
    local_dir = _download(uri, tracking_uri)
    with tempfile.TemporaryDirectory() as tmp:
        try:
            local = local_dir(tmp)
            from mlflow.models import Model

            example = Model.load(local).load_input_example(local)
        except (MlflowException, OSError) as e:
            raise TrackingError(f"cannot read the input example of {uri}: "
                                f"{one_line(e, with_type=False)}") from None
    if example is None:
        return {}
    return example.to_dict(orient="list") if hasattr(example, "to_dict") else dict(example)


def _download(uri: str, tracking_uri: str | None) -> Any:
    """A function that downloads MLflow model ``uri`` from the store of ``tracking_uri`` into a
    folder; the store is checked first (an outage: one line, exit 138)."""
    store = store_uri(tracking_uri)
    check_tracking_server(store)

    def fetch(dst: str) -> str:
        # download_artifacts resolves models:/m-<id> with MlflowClient(registry_uri=...) and no
        # tracking URI (mlflow 3, mlflow/store/artifact/models_artifact_repo.py
        # _get_model_uri_infos): that reads mlflow's process-wide store, which a step whose store
        # comes as a parameter (no MLFLOW_TRACKING_URI) does not have ("Logged model ... not
        # found" from a new ./mlflow.db, seen in the container pipeline).
        with fluent_store(store):
            return mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=dst,
                                                       tracking_uri=store, registry_uri=store)
    return fetch


def _client(tracking_uri: str | None = None) -> MlflowClient:
    return client(tracking_uri)


def get_champion(name: str, tracking_uri: str | None = None) -> ModelRef | None:
    """The version that the ``champion`` alias of registered model ``name`` points to, if any.

    ``tracking_uri``: the store (here and below: :func:`wavenet.edges.tracking.store_uri`).
    """
    client = _client(tracking_uri)
    try:
        mv = client.get_model_version_by_alias(name, CHAMPION)
    except MlflowException as e:
        code = getattr(e, "error_code", "")
        if code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE", "NOT_FOUND"):
            return None
        if _model_absent_behind_auth(client, name, e):
            return None
        from wavenet.edges.tracking import credentials_error

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
    from wavenet.edges.tracking import http_status

    if http_status(e) != 403:
        return False
    try:
        found = client.search_registered_models(filter_string=_name_filter(name), max_results=100)
    except Exception:  # noqa: BLE001 - cannot tell: report the original error
        return False
    return not any(m.name == name for m in found)


def _name_filter(name: str) -> str:
    """A search filter clause that matches registered model ``name`` (and maybe others: check).

    MLflow's filter strings have no escape for quotes: a value is the text between its quotes,
    taken as it is (mlflow/utils/search_utils.py, SearchUtils._strip_quotes; ``'it\\'s'``
    searches for ``it\\'s``). So the name goes inside the quote it does not contain; a name
    holding both kinds is matched with LIKE, each ``'`` a ``_`` wildcard, and the caller keeps
    the results of exactly that name.
    """
    if "'" not in name:
        return f"name = '{name}'"
    if '"' not in name:
        return f'name = "{name}"'
    return "name LIKE '" + name.replace("'", "_") + "'"


def register(model_uri: str, name: str, tags: dict[str, Any] | None = None,
             tracking_uri: str | None = None) -> ModelRef:
    """Register ``model_uri`` as a new version of ``name`` (created if needed)."""
    try:
        # mlflow.register_model takes no URI: it resolves runs:/ and models:/m- sources and
        # registers through MlflowClient() (mlflow/mlflow, mlflow/tracking/_model_registry/
        # fluent.py, _register_model). Inside the gate's run nothing changes.
        with fluent_store(store_uri(tracking_uri)):
            mv = mlflow.register_model(model_uri, name,
                                       tags={k: str(v) for k, v in (tags or {}).items()} or None)
    except MlflowException as e:
        raise TrackingError(f"cannot register {model_uri} as {name!r}: "
                            f"{one_line(e, with_type=False)}") from None
    return ModelRef(name=name, version=str(mv.version), run_id=mv.run_id, source=mv.source)


def set_champion(name: str, version: str, tracking_uri: str | None = None) -> None:
    """Point the ``champion`` alias of ``name`` at ``version``."""
    try:
        _client(tracking_uri).set_registered_model_alias(name, CHAMPION, str(version))
    except MlflowException as e:
        raise TrackingError(f"cannot set {CHAMPION} of {name!r} to version {version}: "
                            f"{one_line(e, with_type=False)}") from None


# -- one gate at a time ------------------------------------------------------------
#
# MLflow's registry has no compare-and-set on an alias and no conditional update or
# delete of anything. What it guarantees is that creating a registered model is atomic:
# the store refuses a second model of the same name (RESOURCE_ALREADY_EXISTS; (workspace,
# name) is the primary key of registered_models in the SQL stores,
# mlflow/store/model_registry/dbmodels/models.py). That unique-name creation is the one
# compare-and-swap the lock is built on: the lock is a registered model named
# ``<name>.gate-lock``, created to acquire and deleted to release; its tags name the
# owner and the lease (``lease_s``) it holds.
#
# Time: no machine's clock is compared with another's. The holder renews its lease by
# updating the lock model's description, which the server stamps with its own clock
# (``last_updated_timestamp``, mlflow/store/model_registry/sqlalchemy_store.py,
# update_registered_model). A contender treats the lock as dead when nothing about it
# (owner, the server's creation and update stamps, description) has changed for one
# declared lease on the contender's own monotonic clock, as Kubernetes' leader election
# does (kubernetes/kubernetes, staging/src/k8s.io/client-go/tools/leaderelection/doc.go:
# timestamps "captured locally", tolerant of clock skew, not of skew rate). A dead holder
# costs a new contender one lease of waiting. A lease tag that is not a number of seconds
# in (0, LOCK_MAX_LEASE_S] (inf, nan, text) is ignored: the contender's own lease applies.
#
# Holding: a heartbeat thread renews every lease/3. The holder counts its lease from when
# it *sent* its last renewal that finished within LOCK_GUARD of the lease, and once less
# than that is left the lock is lost for good (a stalled process, an unreachable server):
# a contender may already have seen the lease expire, so it is never revived.
#
# Fencing: MLflow cannot check a token on the alias write, which is what makes a lease a
# lock (Kleppmann, "How to do distributed locking",
# https://martin.kleppmann.com/2016/02/08/how-to-do-distributed-locking.html). The nearest
# thing, :meth:`GateLock.set_champion`: right before the alias moves it re-reads the lock,
# checks that it is still this holder's instance (owner tag and the server's creation
# stamp: the token), renews it, and aborts in one line otherwise; the alias write then
# has a fresh lease to land in.
#
# Release reads the owner, then deletes (two calls: MLflow has no conditional delete). It
# deletes only while this holder's lease has at least LOCK_GUARD left, so no contender can
# have replaced the lock in between (a contender first waits a whole lease of silence); a
# holder whose lease ran out leaves the lock to expire. What remains is the limit of an
# API without conditional writes: a delete, renewal or alias write that takes longer than
# the rest of the lease; and two contenders removing one dead lock within one round trip,
# where the second's delete removes the first's fresh lock (the first then finds its lock
# gone at the re-check and aborts). A lock this user may not delete (another MLflow user's,
# HTTP 403) ends the wait in one line that names it.

LOCK_SUFFIX = ".gate-lock"
LOCK_LEASE_S = 120.0
LOCK_WAIT_S = 300.0
# A declared lease longer than this is a malformed tag, not a lease.
LOCK_MAX_LEASE_S = 3600.0
# The share of the lease a renewal (or the release's delete) must finish within.
LOCK_GUARD = 0.25
_LOCK_DESCRIPTION = "wavenet gate lock: one champion at a time"


def _lock_name(name: str) -> str:
    return f"{name}{LOCK_SUFFIX}"


def _declared_lease(tags: dict[str, str], default: float) -> float:
    """The lease a lock's ``lease_s`` tag declares; ``default`` for a missing or malformed one."""
    try:
        lease = float(tags.get("lease_s", ""))
    except ValueError:
        return default
    return lease if math.isfinite(lease) and 0 < lease <= LOCK_MAX_LEASE_S else default


def _gone(e: MlflowException) -> bool:
    """Whether a failed call on a lock model means that it no longer exists.

    MLflow's basic-auth app answers 403 where a model is missing and the default
    permission does not allow the call (mlflow/server/auth/__init__.py): to a holder,
    which may edit its own lock, a 403 also means that the lock is gone.
    """
    from wavenet.edges.tracking import http_status

    return getattr(e, "error_code", "") == "RESOURCE_DOES_NOT_EXIST" or http_status(e) in (403, 404)


class GateLock:
    """A held gate lock (yielded by :func:`champion_lock`), renewed while held.

    Attributes:
        name: the registered model whose champion the lock guards.
        lock: the lock model's name, ``<name>.gate-lock``.
        owner: this holder's id (host, pid and a random part).
        lease_s: the lease, in seconds.
    """

    def __init__(self, client: MlflowClient, name: str, owner: str, lease_s: float,
                 created_ms: int, sent: float):
        self.name, self.lock, self.owner, self.lease_s = name, _lock_name(name), owner, lease_s
        self._client = client
        self._created_ms = created_ms  # with the owner: this instance of the lock model
        self._renewed_at = sent  # monotonic; when the last counted renewal was sent
        self._renewals = 0
        self._lost: str | None = None
        self._mutex = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._heartbeat, name=f"renew {self.lock}", daemon=True)
        self._thread.start()

    def _check(self) -> None:
        """Raise TrackingError unless the lock is still this holder's (call under the mutex)."""
        left = self._renewed_at + self.lease_s - time.monotonic()
        if self._lost is None and left <= LOCK_GUARD * self.lease_s:
            self._lost = (f"its {self.lease_s:g} s lease was not renewed in time "
                          "(a stalled process or an unreachable server)")
        if self._lost is None:
            try:
                rm = self._client.get_registered_model(self.lock)
            except MlflowException as e:
                if not _gone(e):
                    raise
                self._lost = "the lock model was deleted"
            else:
                if (rm.tags.get("owner"), rm.creation_timestamp) != (self.owner, self._created_ms):
                    self._lost = f"gate {rm.tags.get('owner', '?')} holds it now"
        if self._lost is not None:
            raise TrackingError(f"lost the gate lock {self.lock!r} of {self.owner}: {self._lost}; "
                                f"{CHAMPION} of {self.name!r} was not moved, run the gate again")

    def renew(self) -> None:
        """Re-check that the lock is this holder's and extend its lease.

        Raises:
            TrackingError: the lock is lost (see :meth:`_check`).
            MlflowException: the server failed (the lease runs out on its own).
        """
        with self._mutex:
            self._check()
            self._renewals += 1
            sent = time.monotonic()
            self._client.update_registered_model(
                self.lock, description=f"{_LOCK_DESCRIPTION} (renewal {self._renewals})")
            if time.monotonic() - sent < LOCK_GUARD * self.lease_s:
                self._renewed_at = sent

    def set_champion(self, version: str) -> None:
        """Point the ``champion`` alias at ``version``, only while this lock is held.

        Raises:
            TrackingError: the lock is lost (nothing moved), or the server failed.
        """
        try:
            self.renew()  # the fencing check: this holder's lock, with a fresh lease
        except MlflowException as e:
            raise TrackingError(f"cannot renew the gate lock {self.lock!r}: "
                                f"{one_line(e, with_type=False)}") from None
        set_champion(self.name, version)

    def _heartbeat(self) -> None:
        while not self._stop.wait(self.lease_s / 3):
            try:
                self.renew()
            except TrackingError:
                return  # lost: set_champion says so before the alias could move
            except Exception:  # noqa: BLE001, S112 - a blip: the next beat tries again
                continue

    def release(self) -> None:
        """Delete the lock if it is still this holder's with time to spare; else leave it to expire."""
        self._stop.set()
        self._thread.join(timeout=self.lease_s)
        if not self._mutex.acquire(timeout=LOCK_GUARD * self.lease_s):
            return  # a renewal is stuck on the server: the lease runs out on its own
        try:
            self._check()
            self._client.delete_registered_model(self.lock)
        except Exception:  # noqa: BLE001 - lost or unreachable: the lease expires
            pass
        finally:
            self._mutex.release()


@dataclass(frozen=True)
class _Sighting:
    """A lock model as a contender saw it: what identifies its state, and since when (monotonic)."""

    token: tuple
    since: float
    owner: str
    lease_s: float


def _try_create(client: MlflowClient, lock: str, owner: str, lease_s: float) -> Any | None:
    """The lock model, created now; None when it exists already."""
    try:
        return client.create_registered_model(
            lock, description=_LOCK_DESCRIPTION,
            # expires_at: the holder's wall clock, read by nothing here; gates of earlier
            # releases wait for it (they delete a lock without one at once).
            tags={"owner": owner, "lease_s": f"{lease_s:g}",
                  "expires_at": f"{time.time() + lease_s:.3f}"})
    except MlflowException as e:
        if getattr(e, "error_code", "") == "RESOURCE_ALREADY_EXISTS":
            return None
        raise TrackingError(f"cannot take the gate lock {lock!r}: "
                            f"{one_line(e, with_type=False)}") from None


def _look(client: MlflowClient, lock: str, last: _Sighting | None, lease_s: float) -> _Sighting | None:
    """The lock as it is now; ``last`` when unchanged since then; None when gone or unreadable."""
    try:
        rm = client.get_registered_model(lock)
    except MlflowException:
        return None  # gone, or cannot tell: the next create attempt decides
    token = (rm.tags.get("owner"), rm.creation_timestamp, rm.last_updated_timestamp, rm.description)
    if last is not None and last.token == token:
        return last
    return _Sighting(token, time.monotonic(), str(rm.tags.get("owner", "?")),
                     _declared_lease(rm.tags, lease_s))


def _remove_dead(client: MlflowClient, lock: str, seen: _Sighting) -> bool:
    """Delete a lock whose holder stopped renewing; whether it was deleted.

    Raises:
        TrackingError: this user may not delete it (another MLflow user's lock).
    """
    from wavenet.edges.tracking import http_status

    try:
        client.delete_registered_model(lock)
        return True
    except MlflowException as e:
        status = http_status(e)
    if status not in (401, 403):
        return False  # a blip, or gone already: look again after the back-off
    # A 403 also answers a delete of a model that is gone: undeletable only if still there.
    if _look(client, lock, seen, seen.lease_s) is not seen:
        return False
    silent = time.monotonic() - seen.since
    raise TrackingError(
        f"the gate lock {lock!r} of {seen.owner} has not been renewed for {silent:.0f} s (its lease: "
        f"{seen.lease_s:g} s), and this MLflow user may not delete it (HTTP {status}): an MLflow admin "
        f"or its owner deletes registered model {lock!r} (MLflow UI > Models, or "
        f"MlflowClient().delete_registered_model({lock!r}))")


def _acquire(client: MlflowClient, name: str, lease_s: float, wait_s: float) -> GateLock:
    lock = _lock_name(name)
    owner = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
    deadline = time.monotonic() + wait_s
    delay, seen = 0.05, None
    while True:
        sent = time.monotonic()
        created = _try_create(client, lock, owner, lease_s)
        if created is not None:
            return GateLock(client, name, owner, lease_s, created.creation_timestamp, sent)
        seen = _look(client, lock, seen, lease_s)
        if seen is not None and time.monotonic() - seen.since >= seen.lease_s \
                and _remove_dead(client, lock, seen):
            seen = None
            continue  # create at once: the next look sees any lock created meanwhile
        if time.monotonic() > deadline:
            holder = f" by {seen.owner}" if seen else ""
            raise TrackingError(f"the gate lock {lock!r} stayed held{holder} for {wait_s:.0f} s; if no "
                                f"gate is running, delete registered model {lock!r}")
        time.sleep(delay)
        delay = min(delay * 2, 1.0)


@contextlib.contextmanager
def champion_lock(name: str, *, lease_s: float = LOCK_LEASE_S, wait_s: float = LOCK_WAIT_S,
                  tracking_uri: str | None = None) -> Iterator[GateLock]:
    """Hold the gate lock of registered model ``name`` (see the comment above).

    Move the alias with :meth:`GateLock.set_champion` inside the block: it re-checks
    that the lock is still held.

    Args:
        name: the registered model.
        lease_s: how long the lock stays held without a renewal (renewed every third of it).
        wait_s: how long to wait for another holder before giving up.

    Yields:
        The :class:`GateLock`.

    Raises:
        TrackingError: the lock stayed held for ``wait_s`` seconds, another user's dead lock
            cannot be deleted, or the server failed.
    """
    held = _acquire(_client(tracking_uri), name, lease_s, wait_s)
    try:
        yield held
    finally:
        held.release()


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
    from wavenet.edges.tracking import model_run_id

    if not is_mlflow_uri(uri):
        return ModelInfo(uri=uri, run_id=None, run_name=None, version=None, champion=False)
    client = _client(tracking_uri)
    try:
        version = _registry_version(client, uri)
        run_id = version.run_id if version else model_run_id(uri, tracking_uri)
        if version is None and run_id:
            found = [mv for mv in client.search_model_versions(f"run_id = '{run_id}'")
                     if mv.name == name]
            version = _ref(max(found, key=lambda mv: int(mv.version))) if found else None
        run_name = client.get_run(run_id).info.run_name if run_id else None
    except MlflowException:
        return ModelInfo(uri=uri, run_id=None, run_name=None, version=None, champion=False)
    champion = get_champion(version.name, tracking_uri) if version else None
    return ModelInfo(uri=uri, run_id=run_id, run_name=run_name, version=version,
                     champion=champion is not None and champion.version == version.version)


def find_by_train_key(name: str, key: str, tracking_uri: str | None = None) -> ModelRef | None:
    """The newest version of registered model ``name`` tagged with train key ``key``, if any."""
    try:
        found = _client(tracking_uri).search_model_versions(
            f"{_name_filter(name)} and tags.`{TRAIN_KEY_TAG}` = '{key}'")  # key: sha256 hex
    except MlflowException as e:
        raise TrackingError(f"cannot search registered model {name!r} for {TRAIN_KEY_TAG}: "
                            f"{one_line(e, with_type=False)}") from None
    found = [mv for mv in found if mv.name == name]
    return _ref(max(found, key=lambda mv: int(mv.version))) if found else None


def record_train_key(run_id: str, key: str, tracking_uri: str | None = None) -> None:
    """Tag training run ``run_id`` with its train key (the gate copies it onto the version it registers)."""
    try:
        _client(tracking_uri).set_tag(run_id, TRAIN_KEY_TAG, key)
    except MlflowException as e:
        raise TrackingError(f"cannot tag run {run_id} with {TRAIN_KEY_TAG}: "
                            f"{one_line(e, with_type=False)}") from None


def train_key_of(run_id: str | None, tracking_uri: str | None = None) -> str | None:
    """The train key tagged on training run ``run_id``, if any."""
    if not run_id:
        return None
    try:
        return _client(tracking_uri).get_run(run_id).data.tags.get(TRAIN_KEY_TAG)
    except MlflowException:
        return None
