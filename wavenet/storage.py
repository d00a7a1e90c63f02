"""Local folders and ``gs://`` buckets behind one small interface.

Bucket I/O goes through google-cloud-storage, which honours
``STORAGE_EMULATOR_HOST`` (tests run a real emulator on 127.0.0.1). Local
writes are atomic: a temporary file in the same folder, then ``os.replace``.
A GCS object upload is atomic by itself (the object appears whole or not at all).
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from functools import lru_cache

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
]


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


@lru_cache(maxsize=1)
def _client():
    from google.cloud import storage

    if os.environ.get("STORAGE_EMULATOR_HOST"):
        from google.auth.credentials import AnonymousCredentials

        project = os.environ.get("GOOGLE_CLOUD_PROJECT", "test")
        return storage.Client(project=project, credentials=AnonymousCredentials())
    return storage.Client()


def _blob(uri: str):
    bucket, name = split_gcs(uri)
    return _client().bucket(bucket).blob(name)


def read_bytes(path: str) -> bytes:
    if is_gcs(path):
        return _blob(path).download_as_bytes()
    with open(path, "rb") as f:
        return f.read()


def read_text(path: str) -> str:
    return read_bytes(path).decode("utf-8")


def write_bytes_atomic(path: str, data: bytes) -> None:
    """Write ``data`` so that readers see the old file or the new one, never half."""
    if is_gcs(path):
        _blob(path).upload_from_string(data)
        return
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix="-" + os.path.basename(path), dir=folder)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def write_text_atomic(path: str, text: str) -> None:
    write_bytes_atomic(path, text.encode("utf-8"))


def exists(path: str) -> bool:
    if is_gcs(path):
        return _blob(path).exists()
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
        names = sorted(b.name for b in _client().list_blobs(bucket, prefix=prefix))
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


def local_copy(path: str, folder: str) -> str:
    """A local path with the content of ``path`` (downloaded when it is ``gs://``)."""
    if not is_gcs(path):
        return path
    dst = os.path.join(folder, os.path.basename(split_gcs(path)[1]) or "object")
    _blob(path).download_to_filename(dst)
    return dst
