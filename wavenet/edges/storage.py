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
import errno
import fcntl
import logging
import os
import shutil
import socket
import sys
import tempfile
import time
from collections.abc import Iterable, Iterator
from functools import lru_cache
from typing import Any

from wavenet import retry
from wavenet.errors import Busy, StorageError, StorageUnavailable, one_line, redact

log = logging.getLogger("wavenet.edges.storage")

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
    "read_bytes_generation",
    "write_bytes_if_generation",
    "folder_lock",
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


def read_bytes(path: str, limit: int | None = None) -> bytes:
    """The bytes of ``path``; with ``limit``, at most ``limit + 1`` of them (more than ``limit``
    read means the file is larger: the caller refuses it without holding all of it)."""
    if is_gcs(path):
        with _gcs(path):
            # Blob.download_as_bytes(start, end): an inclusive byte range
            # (https://cloud.google.com/python/docs/reference/storage/latest/google.cloud.storage.blob.Blob).
            span = {} if limit is None else {"start": 0, "end": limit}
            return _blob(path).download_as_bytes(**span, **_call_kwargs())
    with open(path, "rb") as f:
        return f.read() if limit is None else f.read(limit + 1)


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


def read_bytes_generation(path: str) -> tuple[bytes | None, int]:
    """The bytes of ``path`` and its GCS generation; ``(None, 0)`` when it does not exist.

    Generation 0 is what ``if_generation_match`` takes to mean "only if absent"
    (cloud.google.com/storage/docs/request-preconditions). Local files have no
    generation (0): their writers hold :func:`folder_lock` instead.
    """
    if not is_gcs(path):
        return (read_bytes(path), 0) if os.path.exists(path) else (None, 0)
    from google.api_core.exceptions import NotFound

    blob = _blob(path)
    try:
        with _gcs(path):
            data = blob.download_as_bytes(**_call_kwargs())
    except NotFound:
        return None, 0
    # The download's x-goog-generation header sets blob.generation
    # (googleapis/python-storage google/cloud/storage/blob.py, _extract_headers_from_download).
    return data, int(blob.generation or 0)


def write_bytes_if_generation(path: str, data: bytes, generation: int) -> bool:
    """Write ``gs://`` ``path`` only if its generation is still ``generation`` (0: absent).

    GCS's compare-and-swap: the server refuses the write with 412 when another
    writer replaced the object since it was read. A refused write is not retried
    (it would fail the same way).

    Returns:
        False when the precondition failed (someone else wrote first).
    """
    from google.api_core.exceptions import PreconditionFailed

    if not is_gcs(path):
        raise ValueError(f"write_bytes_if_generation takes a gs:// URI. Received: {path!r}")
    try:
        with _gcs(path):
            # With if_generation_match the upload is idempotent, so retrying it within the
            # outage budget is safe (python-storage docs/retry_timeout.rst, "conditional
            # retries").
            _blob(path).upload_from_string(data, if_generation_match=generation, **_call_kwargs())
    except PreconditionFailed:
        # A retry whose first attempt was applied (its answer lost) is refused too: the
        # object then holds exactly our bytes, and the write was ours.
        return read_bytes_generation(path)[0] == data
    return True


LOCK_FILE = ".wavenet.lock"


@contextlib.contextmanager
def folder_lock(folder: str, wait_s: float) -> Iterator[None]:
    """Hold the one-writer lock of local ``folder``; a ``gs://`` prefix is not locked here.

    An exclusive ``flock`` on ``folder/.wavenet.lock``: the kernel drops it when
    the holder's file is closed, so a killed writer (SIGKILL, OOM) never leaves
    the folder locked. A second writer waits up to ``wait_s`` seconds (polling),
    then gives up with :class:`~wavenet.errors.Busy`. Bucket writers use
    generation preconditions instead (:func:`write_bytes_if_generation`).

    Raises:
        Busy: another process held the lock for all of ``wait_s``; names it.
    """
    if is_gcs(folder):
        yield
        return
    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, LOCK_FILE)
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, _FILE_MODE)
    except OSError as e:
        raise StorageError(f"cannot open the lock file {path}: {e.strerror or e}") from None
    try:
        _acquire(fd, path, wait_s)
        # Who holds it, for the message of a writer that waits (advisory only: on a full
        # disk it may not fit, and the run must still reach its own one-line error).
        with contextlib.suppress(OSError):
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()}\n".encode(), 0)
        yield
    finally:
        os.close(fd)  # releases the flock


def _acquire(fd: int, path: str, wait_s: float) -> None:
    deadline, waiting = time.monotonic() + wait_s, False
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except OSError as e:
            if e.errno not in (errno.EAGAIN, errno.EACCES):
                raise
        holder = os.pread(fd, 200, 0).decode(errors="replace").strip() or "another process"
        if time.monotonic() >= deadline:
            raise Busy(f"{os.path.dirname(path)} is being written by {holder} (lock {path}); "
                       f"waited {wait_s:g} s: run again when it has finished")
        if not waiting:
            log.warning("%s is being written by %s: waiting up to %g s", os.path.dirname(path),
                        holder, wait_s)
            waiting = True
        time.sleep(0.2)
