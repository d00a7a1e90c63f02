"""The tf.data input pipeline over a data folder's shards.

The shard format and its writer are in :mod:`wavenet.data.shards`, the manifest in
:mod:`wavenet.data.manifest`. Training reads random crops of ``receptive_field +
window`` codes, so every predicted sample has full context; validation and
evaluation read every non-overlapping window, in manifest order.
"""

from __future__ import annotations

import hashlib
import logging
import os
import stat
import tempfile

import tensorflow as tf

from wavenet.config import ExperimentConfig
from wavenet.data.manifest import Manifest, Shard, check_digest, check_shard_file, data_root, read_manifest
from wavenet.data.notes import crop_notes
from wavenet.edges import storage
from wavenet.errors import DataError, StorageError

log = logging.getLogger("wavenet.data.dataset")

__all__ = [
    "parse_example",
    "crop_scores",
    "shard_paths",
    "local_shard_paths",
    "verify_shards",
    "default_cache_dir",
    "train_dataset",
    "validation_dataset",
    "EVAL_SPLITS",
    "eval_shards",
]

# What evaluation can score: the held-out split, or every example of a folder
# (a test set preprocessed on its own).
EVAL_SPLITS = ("validation", "all")


_FEATURES = {
    "codes": tf.io.FixedLenFeature([], tf.string),
    "label": tf.io.FixedLenFeature([], tf.int64),
    # A scored track's notes in the example's samples (wavenet.data.shards); absent: no score.
    "notes": tf.io.VarLenFeature(tf.int64),
}


def parse_example(record):
    """A serialized example -> ``(codes int32 (T,), label int32 (), notes int32 (N, 3))``.

    ``notes``: the track's ``(start, end, token)`` rows in the example's samples (start
    negative for a note begun before it); (0, 3) for a track without a score.
    """
    codes, label, notes = _parse_uint8(record)
    return tf.cast(codes, tf.int32), label, notes


def _parse_uint8(record):
    parsed = tf.io.parse_single_example(record, _FEATURES)
    notes = tf.reshape(tf.cast(tf.sparse.to_dense(parsed["notes"]), tf.int32), [-1, 3])
    # Codes stay uint8 until cropped: a 30 s chunk is 480 kB, not 1.9 MB.
    return tf.io.decode_raw(parsed["codes"], tf.uint8), tf.cast(parsed["label"], tf.int32), notes


def crop_scores(notes, starts, length: int, max_notes: int):
    """The notes each crop of an example hears: ``(K, max_notes, 3)`` int32 rows in the crop's samples.

    Args:
        notes: (N, 3) int32 ``(start, end, token)`` rows of the example, by start.
        starts: (K,) int32 first sample of each crop in the example.
        length: samples per crop.
        max_notes: E, rows per crop (:func:`wavenet.data.notes.crop_notes`): the notes
            sounding in a crop come first, in the example's order, then padding rows
            (token -1); a crop with more notes keeps its first E. 0: no rows (a model
            that plays no score).
    """
    if max_notes == 0:
        return tf.zeros([tf.shape(starts)[0], 0, 3], tf.int32)
    pad = tf.tile(tf.constant([[0, 0, -1]], tf.int32), [max_notes, 1])
    notes = tf.concat([notes, pad], axis=0)  # at least E rows, so every crop can take E
    n = tf.shape(notes)[0]
    start = notes[None, :, 0] - starts[:, None]  # (K, N + E)
    end = notes[None, :, 1] - starts[:, None]
    heard = (start < length) & (end > 0) & (notes[None, :, 2] >= 0)
    # The heard rows first, each group in the example's order; then the first E.
    order = tf.where(heard, 0, n) + tf.range(n)[None, :]
    pick = tf.argsort(order, axis=1, stable=True)[:, :max_notes]  # (K, E)
    kept = tf.gather(heard, pick, batch_dims=1)
    token = tf.where(kept, tf.gather(notes[:, 2], pick), -1)
    start = tf.where(kept, tf.gather(start, pick, batch_dims=1), 0)
    end = tf.where(kept, tf.gather(end, pick, batch_dims=1), 0)
    return tf.stack([start, end, token], axis=-1)


def shard_paths(data_dir: str, split: str, manifest: Manifest | None = None) -> list[str]:
    """Shard files of ``split`` ("train" or "validation") that hold examples, as listed in the manifest.

    Args:
        data_dir: the data folder.
        split: "train" or "validation".
        manifest: the folder's manifest when already read (else it is read here).

    Returns:
        Paths joined onto ``data_dir`` (``gs://`` URIs when it is a bucket).
    """
    manifest = manifest or read_manifest(data_dir)
    return [storage.join(data_root(data_dir), s.path) for s in manifest.shards_of(split)]


def default_cache_dir() -> str:
    """This user's shard cache: ``<tmp>/wavenet-shard-cache-<uid>``, a folder only the user can write.

    Per user, so another user can neither read nor plant shards in it (checked
    by :func:`_private_dir` before use).
    """
    return os.path.join(tempfile.gettempdir(), f"wavenet-shard-cache-{os.getuid()}")


def _writable_by_others(st: os.stat_result) -> bool:
    return st.st_uid != os.getuid() or bool(st.st_mode & (stat.S_IWGRP | stat.S_IWOTH))


def _private_dir(path: str, default: bool) -> str:
    """``path``, created 0700 when absent; refused when someone else could replace files in it.

    A cache entry is checked by sha256 and then opened by TensorFlow by name: that
    is safe only where no one else can swap the file in between (the folder is
    this user's and not group- or world-writable). A default folder that fails
    the check (another user made it first) is replaced by a fresh private one.
    """
    try:
        os.mkdir(path, 0o700)
    except FileExistsError:
        pass
    st = os.lstat(path)
    if stat.S_ISDIR(st.st_mode) and not _writable_by_others(st):
        return path
    if default:
        fresh = tempfile.mkdtemp(prefix=f"wavenet-shard-cache-{os.getuid()}-")  # 0700, unique
        log.warning("shard cache %s is not a private folder of this user: using %s", path, fresh)
        return fresh
    raise StorageError(f"shard cache {path} must be a folder of this user that others cannot write "
                       f"(owner uid {st.st_uid}, mode {stat.filemode(st.st_mode)}): pass another cache_dir")


def verify_shards(data_dir: str, shards: list[Shard], cache_dir: str | None = None) -> list[str]:
    """Check every shard against its manifest sha256 and return local paths TensorFlow can read.

    Local shards are hashed once per process (cached by path, size and mtime);
    bucket shards are fetched into the cache and re-hashed there (:func:`_localise`).

    Raises:
        DataError: a missing shard or a sha256 mismatch, naming the file.
    """
    return _localise(data_dir, shards, cache_dir)


def _localise(data_dir: str, shards: list[Shard], cache_dir: str | None) -> list[str]:
    """Local paths TensorFlow can read for ``shards``, each checked against its manifest sha256.

    TensorFlow's own ``gs://`` file system ignores ``STORAGE_EMULATOR_HOST``, so
    bucket shards always go through google-cloud-storage into a local cache,
    named by their sha256 (a validated hex digest, so a name never leaves the
    cache). A cache entry is re-hashed before use: a corrupted or pre-placed file
    there is fetched again, never trusted.
    """
    root = data_root(data_dir)
    if not storage.is_gcs(root):
        out = [os.path.join(root, s.path) for s in shards]
        for path, s in zip(out, shards):
            check_shard_file(path, s)
        return out
    if cache_dir:
        os.makedirs(os.path.dirname(os.path.abspath(cache_dir)), exist_ok=True)
    cache_dir = _private_dir(cache_dir or default_cache_dir(), default=not cache_dir)
    return [_cached_shard(root, s, cache_dir) for s in shards]


def _open_sha256(path: str) -> str | None:
    """sha256 of the regular file of this user at ``path``, hashed through one open handle.

    Opened without following a link, checked with ``fstat`` on the same handle
    and hashed from it: what is checked is what was opened, not whatever the name
    points at a moment later. None when it is absent, a link, not a regular file
    or not this user's.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return None
    with os.fdopen(fd, "rb") as f:
        st = os.fstat(f.fileno())
        if not stat.S_ISREG(st.st_mode) or st.st_uid != os.getuid():
            return None
        h = hashlib.sha256()
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
        return h.hexdigest()


def _cached_shard(data_dir: str, s: Shard, cache_dir: str) -> str:
    """The cache entry of bucket shard ``s``: re-hashed when present, else downloaded and checked."""
    local = os.path.join(cache_dir, f"{check_digest(s.sha256, 'shards[].sha256', data_dir)}.tfrecord")
    if _open_sha256(local) == s.sha256:
        return local
    uri = storage.join(data_dir, s.path)
    fd, tmp = tempfile.mkstemp(dir=cache_dir, suffix=".part")
    os.close(fd)
    try:
        storage.download_file(uri, tmp)
        got = _open_sha256(tmp)
        if got != s.sha256:
            raise DataError(f"{uri}: sha256 mismatch (manifest says {s.sha256}, file has {got}): "
                            f"re-run `wavenet preprocess`")
        os.replace(tmp, local)  # replaces a stale or planted entry (a link is replaced, not followed)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return local


def local_shard_paths(data_dir: str, split: str, cache_dir: str | None = None,
                      manifest: Manifest | None = None) -> list[str]:
    """Like :func:`shard_paths`, but local files (bucket shards are fetched into ``cache_dir``)."""
    return _localise(data_dir, (manifest or read_manifest(data_dir)).shards_of(split), cache_dir)


def train_dataset(data_dir: str, config: ExperimentConfig, batch_size: int,
                  input_context=None, seed: int = 0, cache_dir: str | None = None,
                  manifest: Manifest | None = None):
    """Endless shuffled batches of random crops for training.

    Shard files are split across input pipelines by file (pipeline ``i`` of
    ``n`` reads files ``i, i + n, ...``), read interleaved, and each example
    (a chunk of a track) yields ``max(1, len // crop_length)`` crops at random
    offsets, so a pass over the data sees about every sample once. Crops are
    shuffled, batched and prefetched. For a fixed ``seed`` and shard set the
    stream is reproducible.

    Args:
        data_dir: folder (local or gs://) with manifest.json and shards.
        config: the experiment config (crop length from model and train).
        batch_size: examples per batch (per replica under a distribution strategy).
        input_context: a ``tf.distribute.InputContext``; each input pipeline
            reads its own subset of shard files (FILE sharding).
        seed: shuffle and crop seed.
        cache_dir: where shards of a ``gs://`` data_dir are cached (default:
            :func:`default_cache_dir`, private to this user; a folder of the run's own works too).
        manifest: the folder's manifest when already read (else it is read here).

    Returns:
        A dataset of ``(crops (B, receptive_field + window) int32, labels (B,) int32,
        notes (B, E, 3) int32)``: each crop's score (:func:`crop_scores`) for a model that
        plays one (``model.score_channels > 0``), else E = 0.

    Raises:
        DataError: no training shards, or fewer shards than input pipelines.
    """
    manifest = manifest or read_manifest(data_dir)
    num_pipelines = input_context.num_input_pipelines if input_context else 1
    pipeline_id = input_context.input_pipeline_id if input_context else 0
    crop = config.crop_length
    shards = _training_shards(data_dir, manifest, num_pipelines, crop)
    # FILE sharding, done before any download so a worker fetches only its own files.
    files = _localise(data_dir, shards[pipeline_id::num_pipelines], cache_dir)
    ds = tf.data.Dataset.from_tensor_slices(files)
    ds = ds.shuffle(len(files), seed=seed, reshuffle_each_iteration=True).repeat()
    ds = ds.interleave(tf.data.TFRecordDataset, cycle_length=min(4, len(files)), block_length=1,
                       num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    ds = ds.map(_parse_uint8, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    ds = ds.filter(lambda codes, label, notes: tf.shape(codes)[0] >= crop)
    # One int64 per example from a seeded stream: crops are reproducible without global state.
    ds = tf.data.Dataset.zip((ds, tf.data.Dataset.random(seed=seed + 2)))
    max_notes = crop_notes(crop, config.audio.sample_rate) if config.model.scored else 0
    ds = ds.flat_map(_random_crops(crop, seed, max_notes))
    ds = ds.shuffle(1024, seed=seed + 1).batch(batch_size, drop_remainder=True)
    options = tf.data.Options()
    # Sharding is done above by file; tell tf.distribute not to shard again.
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.OFF
    return ds.with_options(options).prefetch(tf.data.AUTOTUNE)


def _training_shards(data_dir: str, manifest: Manifest, num_pipelines: int, crop: int) -> list[Shard]:
    """The training shards, or a one-line DataError when they cannot feed ``num_pipelines``."""
    shards = manifest.shards_of("train")
    if not shards:
        raise DataError(f"{data_dir} has no training shards with examples")
    if len(shards) < num_pipelines:
        raise DataError(
            f"{data_dir} has {len(shards)} training shards but training uses {num_pipelines} "
            f"workers: each worker needs at least one shard (re-run preprocess with "
            f"data.num_shards >= {num_pipelines})")
    # Examples shorter than a crop are dropped; if all were, the endless
    # dataset would read forever without yielding, so refuse up front.
    if manifest.longest_example("train") < crop:
        raise DataError(f"{data_dir} has no training example of at least {crop} codes "
                        f"(receptive_field + train.window): use longer tracks, a larger "
                        f"data.chunk_seconds or a smaller train.window")
    return shards


def _random_crops(crop: int, seed: int, max_notes: int):
    """``((codes, label, notes), crop_seed) -> max(1, len // crop)`` crops at stateless random
    offsets, each with its ``max_notes`` rows of score (none when 0)."""
    def random_crops(example, crop_seed):
        codes, label, notes = example
        n = tf.shape(codes)[0]
        k = tf.maximum(1, n // crop)
        starts = tf.random.stateless_uniform(
            [k], seed=tf.stack([crop_seed, tf.constant(seed, tf.int64)]), minval=0,
            maxval=n - crop + 1, dtype=tf.int32)
        idx = starts[:, None] + tf.range(crop)[None, :]
        crops = tf.cast(tf.gather(codes, idx), tf.int32)
        return tf.data.Dataset.from_tensor_slices((crops, tf.fill([k], label),
                                                   crop_scores(notes, starts, crop, max_notes)))

    return random_crops


def eval_shards(manifest: Manifest, data_dir: str, split: str) -> list[Shard]:
    """The manifest's shards with examples that evaluation of ``split`` (:data:`EVAL_SPLITS`) reads.

    Raises:
        DataError: an unknown split, or no such shard (the message says what to do).
    """
    if split not in EVAL_SPLITS:
        raise DataError(f"split must be one of {', '.join(EVAL_SPLITS)}. Received: split={split!r}")
    splits = ("train", "validation") if split == "all" else (split,)
    shards = [s for s in manifest.shards if s.split in splits and s.examples > 0]
    if not shards:
        raise DataError(f"{data_dir} has no {'' if split == 'all' else split + ' '}shards with examples"
                        + (" (data.validation_fraction is 0: score a test folder with --split all)"
                           if split == "validation" else ""))
    return shards


def validation_dataset(data_dir: str, config: ExperimentConfig, batch_size: int,
                       window: int | None = None, cache_dir: str | None = None,
                       split: str = "validation", manifest: Manifest | None = None,
                       scores: bool | None = None):
    """Deterministic, finite batches covering the validation split (or every example).

    Each example is cut into consecutive, non-overlapping windows of
    ``window`` predicted samples, each with ``receptive_field`` codes of context
    in front, so every sample after the first receptive field is scored
    exactly once. Shards and examples are read in manifest order, so two
    calls give identical batches.

    Args:
        data_dir: folder (local or gs://) with manifest.json and shards.
        config: the experiment config (receptive field; default window).
        batch_size: crops per batch (the last batch may be smaller).
        window: predicted samples per crop (default ``config.evaluate.window``).
        cache_dir: where shards of a ``gs://`` data_dir are cached.
        split: ``"validation"``, or ``"all"`` for the examples of both splits
            (a test folder preprocessed on its own).
        manifest: the folder's manifest when already read (else it is read here).
        scores: whether the crops carry their scores (default: ``config.model.scored``).

    Returns:
        A dataset of ``(crops (B, receptive_field + window) int32, labels (B,) int32,
        notes (B, E, 3) int32)`` (E = 0 without scores; :func:`train_dataset`).
    """
    manifest = manifest or read_manifest(data_dir)
    shards = eval_shards(manifest, data_dir, split)
    splits = ("train", "validation") if split == "all" else (split,)
    rf = config.model.receptive_field
    window = window or config.evaluate.window
    longest = max(manifest.longest_example(s) for s in splits)
    if longest < rf + window:
        raise DataError(f"{data_dir}: every {'' if split == 'all' else split + ' '}example is shorter than "
                        f"receptive_field + window = {rf} + {window} codes (longest {longest}): use a "
                        f"smaller window")
    files = _localise(data_dir, shards, cache_dir)
    scored = config.model.scored if scores is None else scores
    max_notes = crop_notes(rf + window, config.audio.sample_rate) if scored else 0

    def windows(codes, label, notes):
        n = tf.maximum(0, (tf.shape(codes)[0] - rf) // window)
        starts = tf.range(n) * window
        idx = starts[:, None] + tf.range(rf + window)[None, :]
        crops = tf.cast(tf.gather(codes, idx), tf.int32)
        return tf.data.Dataset.from_tensor_slices(
            (crops, tf.fill([n], label), crop_scores(notes, starts, rf + window, max_notes)))

    ds = tf.data.TFRecordDataset(files).map(_parse_uint8).flat_map(windows)
    return ds.batch(batch_size).prefetch(tf.data.AUTOTUNE)
