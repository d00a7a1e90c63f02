"""Local folders and ``gs://`` buckets behind one small interface.

Bucket I/O goes through google-cloud-storage, which honours
``STORAGE_EMULATOR_HOST`` (tests run a real emulator on 127.0.0.1). Local
writes are atomic: a temporary file in the same folder, then ``os.replace``.
A GCS object upload is atomic by itself (the object appears whole or not at all).

Every bucket call goes through :func:`_gcs`, the edge where google-cloud-storage's
errors become one-line errors: missing credentials (naming the bucket and what to
set) a :class:`StorageError` (exit 2); an outage, :class:`StorageUnavailable` (exit
138, which the Training Operator retries). Outages are what the library's own retry
predicate retries (refused or reset connections, timeouts, HTTP 408, 429 and 5xx;
``google/cloud/storage/retry.py``, ``_should_retry``): each call retries them with the
library's exponential backoff for the budget of :mod:`wavenet.retry`
(``$WAVENET_SERVICE_RETRY_S``), then gives up.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import sys
import tempfile
from collections.abc import Iterable, Iterator
from functools import lru_cache
from typing import Any

from wavenet import retry
from wavenet.errors import StorageError, StorageUnavailable, one_line, redact

__all__ = [
    "is_gcs",
    "join",
    "split_gcs",
    "read_bytes",
    "read_text",
    "write_bytes_atomic",
    "write_text_atomic",
    "exists",
    "list_files",
    "makedirs",
    "local_copy",
    "remove",
    "upload_file",
    "upload_file_copy",
    "download_file",
    "reset_clients",
    "require_folder",
]


# mkstemp creates 0600 files; results are meant to be read by other users and pods.
_FILE_MODE = 0o644


def is_gcs(path: str) -> bool:
    return str(path).startswith("gs://")


def split_gcs(uri: str) -> tuple[str, str]:
    """``gs://bucket/a/b`` -> ``("bucket", "a/b")``."""
    rest = uri[len("gs://"):]
    bucket, _, blob = rest.partition("/")
    return bucket, blob


def join(base: str, *parts: str) -> str:
    if is_gcs(base):
        return "/".join([base.rstrip("/"), *[p.strip("/") for p in parts]])
    return os.path.join(base, *parts)


# Seconds to open a connection, and to wait for each answer.
TIMEOUT = (10.0, 120.0)


def _endpoint() -> str:
    return os.environ.get("STORAGE_EMULATOR_HOST") or "https://storage.googleapis.com"


def _retry():
    """The library's default retry (its predicate and backoff) for the outage budget, saying
    once per call on stderr that it waits (none with a budget of 0: it fails at once)."""
    from google.api_core.retry import Retry
    from google.cloud.storage.retry import DEFAULT_RETRY

    budget = retry.budget_s()
    warned = []

    def on_error(exc: Exception) -> None:
        if budget > 0 and not warned:
            warned.append(exc)
            print(f"warning: the storage endpoint {redact(_endpoint())} is unavailable "
                  f"({one_line(exc)[:200]}); retrying for up to {budget:g} s ({retry.BUDGET_ENV})",
                  file=sys.stderr, flush=True)

    return Retry(predicate=DEFAULT_RETRY._predicate, timeout=budget, on_error=on_error)


def _call_kwargs() -> dict[str, Any]:
    return {"retry": _retry(), "timeout": TIMEOUT}


@contextlib.contextmanager
def _gcs(uri: str) -> Iterator[None]:
    """Translate credential and connection failures of a bucket call into StorageError."""
    from google.api_core.exceptions import RetryError
    from google.auth.exceptions import DefaultCredentialsError
    from google.cloud.storage.retry import DEFAULT_RETRY

    bucket = split_gcs(uri)[0] if is_gcs(uri) else uri
    try:
        yield
    except DefaultCredentialsError:
        raise StorageError(
            f"no Google Cloud credentials for gs://{bucket}: set GOOGLE_APPLICATION_CREDENTIALS "
            "to a service-account key file (or run `gcloud auth application-default login`; "
            "on GKE use Workload Identity), or STORAGE_EMULATOR_HOST for an emulator") from None
    except Exception as e:
        # RetryError: the library's retries ran out of the budget; an outage seen without
        # a retry (a call that takes none) is classified by the library's own predicate.
        if not isinstance(e, RetryError) and not DEFAULT_RETRY._predicate(e):
            raise
        cause = getattr(e, "cause", None) or e
        raise StorageUnavailable(f"the storage endpoint {redact(_endpoint())} for gs://{bucket} "
                                 f"is unavailable: {one_line(cause)}"[:400]) from None


def _client():
    # One client per emulator address: tests start emulators on fresh ports,
    # and a client built for an old address must not be reused.
    return _client_for(os.environ.get("STORAGE_EMULATOR_HOST") or None,
                       os.environ.get("GOOGLE_CLOUD_PROJECT") or None)


@lru_cache(maxsize=4)
def _client_for(emulator_host: str | None, project: str | None):
    from google.cloud import storage

    if emulator_host:
        from google.auth.credentials import AnonymousCredentials

        return storage.Client(project=project or "test", credentials=AnonymousCredentials())
    return storage.Client(project=project) if project else storage.Client()


def reset_clients() -> None:
    """Forget cached bucket clients (call first thing in a forked worker process)."""
    _client_for.cache_clear()


def _blob(uri: str):
    bucket, name = split_gcs(uri)
    with _gcs(uri):
        return _client().bucket(bucket).blob(name)


def read_bytes(path: str) -> bytes:
    if is_gcs(path):
        with _gcs(path):
            return _blob(path).download_as_bytes(**_call_kwargs())
    with open(path, "rb") as f:
        return f.read()


def read_text(path: str) -> str:
    return read_bytes(path).decode("utf-8")


@contextlib.contextmanager
def _staged(path: str) -> Iterator[str]:
    """A temporary file beside local ``path``, renamed onto it when the block succeeds.

    Yields the temporary path (an empty file); on any error it is removed and
    ``path`` is left as it was.
    """
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix="-" + os.path.basename(path), dir=folder)
    os.close(fd)
    try:
        yield tmp
        os.chmod(tmp, _FILE_MODE)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def _write_synced(dst: str, chunks: Iterable[bytes]) -> None:
    with open(dst, "wb") as f:
        for chunk in chunks:
            f.write(chunk)
        f.flush()
        os.fsync(f.fileno())


def write_bytes_atomic(path: str, data: bytes) -> None:
    """Write ``data`` so that readers see the old file or the new one, never half."""
    if is_gcs(path):
        with _gcs(path):
            _blob(path).upload_from_string(data, **_call_kwargs())
        return
    with _staged(path) as tmp:
        _write_synced(tmp, [data])


def write_text_atomic(path: str, text: str) -> None:
    write_bytes_atomic(path, text.encode("utf-8"))


def exists(path: str) -> bool:
    if is_gcs(path):
        with _gcs(path):
            return _blob(path).exists(**_call_kwargs())
    return os.path.exists(path)


def makedirs(path: str) -> None:
    if not is_gcs(path):
        os.makedirs(path, exist_ok=True)


def list_files(root: str) -> Iterator[str]:
    """Every file under ``root``, recursively, in sorted order.

    Local symlinks to folders are followed once; a symlink loop is not entered
    twice (each real folder is visited at most once).
    """
    if is_gcs(root):
        bucket, prefix = split_gcs(root)
        if prefix and not prefix.endswith("/"):
            prefix += "/"
        with _gcs(root):
            names = sorted(b.name for b in _client().list_blobs(bucket, prefix=prefix,
                                                                 **_call_kwargs()))
        for name in names:
            if not name.endswith("/"):
                yield f"gs://{bucket}/{name}"
        return
    seen: set[str] = set()
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        real = os.path.realpath(dirpath)
        if real in seen:
            dirnames[:] = []
            continue
        seen.add(real)
        dirnames.sort()
        for name in sorted(filenames):
            yield os.path.join(dirpath, name)


def remove(path: str) -> None:
    """Delete a file or object; a missing one is not an error."""
    if is_gcs(path):
        from google.api_core.exceptions import NotFound

        try:
            with _gcs(path):
                _blob(path).delete(**_call_kwargs())
        except NotFound:
            pass
        return
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def upload_file(local_path: str, path: str) -> None:
    """Put the local file ``local_path`` at ``path`` atomically; the local file is consumed.

    A local destination is reached by ``os.replace`` (a copy first when the two
    are on different file systems); a ``gs://`` object upload is atomic by itself.
    """
    if is_gcs(path):
        with _gcs(path):
            _blob(path).upload_from_filename(local_path, **_call_kwargs())
        os.unlink(local_path)
        return
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    os.chmod(local_path, _FILE_MODE)
    try:
        os.replace(local_path, path)
    except OSError:
        # Different file systems: copy to a temporary name beside the target, then rename.
        with _staged(path) as tmp, open(local_path, "rb") as src:
            _write_synced(tmp, iter(lambda: src.read(1 << 20), b""))
        os.unlink(local_path)


def upload_file_copy(local_path: str, path: str) -> None:
    """Copy the local file ``local_path`` to ``path`` atomically; the local file stays."""
    if is_gcs(path):
        with _gcs(path):
            _blob(path).upload_from_filename(local_path, **_call_kwargs())
        return
    with _staged(path) as tmp, open(local_path, "rb") as src:
        _write_synced(tmp, iter(lambda: src.read(1 << 20), b""))


def download_file(path: str, local_path: str) -> None:
    """Copy ``path`` (local or ``gs://``) to ``local_path`` atomically."""
    with _staged(local_path) as tmp:
        if is_gcs(path):
            with _gcs(path):
                _blob(path).download_to_filename(tmp, **_call_kwargs())
        else:
            shutil.copyfile(path, tmp)


def local_copy(path: str, folder: str) -> str:
    """A local path with the content of ``path`` (downloaded when it is ``gs://``)."""
    if not is_gcs(path):
        return path
    dst = os.path.join(folder, os.path.basename(split_gcs(path)[1]) or "object")
    with _gcs(path):
        _blob(path).download_to_filename(dst, **_call_kwargs())
    return dst


def require_folder(path: str, what: str) -> None:
    """Refuse a local ``path`` that is a file, or lies under one, before anything is written.

    Args:
        path: a local folder (created later) or a ``gs://`` prefix (not checked:
            a bucket has no files that block a prefix).
        what: how the folder is named in the message ("output folder").

    Raises:
        StorageError: one line naming the file in the way.
    """
    if is_gcs(path):
        return
    p = os.path.abspath(path)
    while True:
        if os.path.exists(p) and not os.path.isdir(p):
            where = "is" if p == os.path.abspath(path) else f"lies under {p}, which is"
            raise StorageError(f"{what} {path} {where} a file, not a folder")
        parent = os.path.dirname(p)
        if parent == p:
            return
        p = parent
