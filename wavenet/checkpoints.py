"""Training checkpoints in a local folder or a ``gs://`` bucket, through :mod:`wavenet.edges.storage`.

TensorFlow's ``tf.train.CheckpointManager`` writes to a local folder here. For a run
directory in a bucket (TFJob pods), the checkpoints are mirrored to and restored from
``gs://.../checkpoints`` with google-cloud-storage, the tested storage layer that honours
``STORAGE_EMULATOR_HOST``, instead of TensorFlow's own GCS file system (which ignores it and
has never run here).

Layout in the bucket, the same as TensorFlow's in a folder: ``ckpt-N.index``,
``ckpt-N.data-XXXXX-of-YYYYY`` and the state file ``checkpoint`` naming the latest one.

Crash safety: a checkpoint's files are uploaded before the state file names it (each
object upload is atomic), and older checkpoints are deleted only after the new state file
is in place; a run killed at any point leaves a state file whose checkpoint is whole.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
import weakref
from typing import Any

from wavenet.edges import storage

__all__ = ["STATE_FILE", "CheckpointStore", "MirroringManager", "latest_in_state"]

# TensorFlow's checkpoint state file (a text proto naming the latest checkpoint first).
STATE_FILE = "checkpoint"
_LATEST_RE = re.compile(r'^model_checkpoint_path:\s*"([^"]+)"\s*$', re.MULTILINE)
_ALL_RE = re.compile(r'^all_model_checkpoint_paths:\s*"([^"]+)"\s*$', re.MULTILINE)


def latest_in_state(text: str) -> str | None:
    """The latest checkpoint's name (e.g. ``ckpt-30``) from a state file's text, or None."""
    m = _LATEST_RE.search(text)
    return os.path.basename(m.group(1)) if m else None


def _prefix_of(filename: str) -> str:
    """``ckpt-30.data-00000-of-00001`` -> ``ckpt-30`` (the checkpoint a file belongs to)."""
    return filename.split(".", 1)[0]


class CheckpointStore:
    """Where one run's checkpoints live: ``RUN_DIR/checkpoints``, local or in a bucket.

    Args:
        directory: the checkpoint folder (a local path or ``gs://bucket/.../checkpoints``).

    Attributes:
        directory: as given.
        local_dir: the folder TensorFlow reads and writes: ``directory`` itself when it is
            local, else a private temporary folder (removed when the store is collected
            or at exit) that mirrors the bucket.
    """

    def __init__(self, directory: str):
        self.directory = directory
        self.remote = storage.is_gcs(directory)
        if self.remote:
            self.local_dir = tempfile.mkdtemp(prefix="wavenet-ckpt-")
            self._cleanup = weakref.finalize(self, shutil.rmtree, self.local_dir, True)
        else:
            self.local_dir = directory
        self._uploaded: set[str] = set()

    def fetch_latest(self) -> str | None:
        """The latest checkpoint as a local path prefix for ``Checkpoint.restore``, or None.

        From a bucket, the state file and the latest checkpoint's files are downloaded
        into ``local_dir`` first (older checkpoints stay in the bucket only).
        """
        if not self.remote:
            state = os.path.join(self.directory, STATE_FILE)
            if not os.path.exists(state):
                return None
            with open(state) as f:
                name = latest_in_state(f.read())
            path = os.path.join(self.directory, name) if name else None
            # As tf.train.latest_checkpoint: a state file naming a missing checkpoint is none.
            return path if path and os.path.exists(path + ".index") else None
        state = storage.join(self.directory, STATE_FILE)
        if not storage.exists(state):
            return None
        text = storage.read_text(state)
        name = latest_in_state(text)
        if not name:
            return None
        files = [f for f in storage.list_files(self.directory)
                 if _prefix_of(f.rsplit("/", 1)[-1]) == name]
        if not any(f.endswith(".index") for f in files):
            return None
        for f in files:
            storage.download_file(f, os.path.join(self.local_dir, f.rsplit("/", 1)[-1]))
        self._uploaded.update(f.rsplit("/", 1)[-1] for f in files)
        # The state file as it is (relative names, timestamps): the manager then keeps
        # counting the older checkpoints, which stay in the bucket until it drops them.
        storage.write_text_atomic(os.path.join(self.local_dir, STATE_FILE), text)
        return os.path.join(self.local_dir, name)

    def publish(self) -> None:
        """Mirror ``local_dir`` to the bucket: new checkpoint files, the state file, clean-up.

        A no-op for a local directory. Only the files of checkpoints the local state file
        names are uploaded; bucket objects of checkpoints it no longer names are deleted
        after the new state file is in place.
        """
        if not self.remote:
            return
        state_path = os.path.join(self.local_dir, STATE_FILE)
        with open(state_path) as f:
            state = f.read()
        kept = {os.path.basename(p) for p in _ALL_RE.findall(state)}
        latest = latest_in_state(state)
        if latest:
            kept.add(latest)
        for name in sorted(os.listdir(self.local_dir)):
            if name == STATE_FILE or name.startswith(".") or _prefix_of(name) not in kept:
                continue
            if name not in self._uploaded:
                storage.upload_file_copy(os.path.join(self.local_dir, name),
                                         storage.join(self.directory, name))
                self._uploaded.add(name)
        storage.write_text_atomic(storage.join(self.directory, STATE_FILE), state)
        for uri in list(storage.list_files(self.directory)):
            name = uri.rsplit("/", 1)[-1]
            if name != STATE_FILE and _prefix_of(name) not in kept:
                storage.remove(uri)
                self._uploaded.discard(name)


class MirroringManager:
    """A ``tf.train.CheckpointManager`` whose saves are mirrored by a :class:`CheckpointStore`.

    Only the chief mirrors (``publish=True``); other workers save to private folders, as
    ``MultiWorkerMirroredStrategy`` requires every worker to take part in a save.
    """

    def __init__(self, manager: Any, store: CheckpointStore, publish: bool):
        self.manager = manager
        self.store = store
        self.publish = publish

    def save(self, checkpoint_number: int | None = None) -> str:
        path = self.manager.save(checkpoint_number=checkpoint_number)
        if self.publish:
            self.store.publish()
        return path

    def __getattr__(self, name: str) -> Any:
        return getattr(self.manager, name)
