"""The shard format and the tf.data input pipeline.

A shard is a TFRecord file of examples, one per track chunk (written by
`wavenet.preprocess` without TensorFlow: :func:`serialize_example` and
:class:`TFRecordWriter` produce the bytes TensorFlow reads):

    codes  bytes   uint8 mu-law codes of the chunk
    label  int64   index of the track's label in the manifest's vocabulary
    track  bytes   the track's id (content hash)

Shards live in ``DATA/train/*.tfrecord`` and ``DATA/validation/*.tfrecord``
next to ``DATA/manifest.json``. Training reads random crops of
``receptive_field + window`` codes, so every predicted sample has full context.
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
import tempfile
from typing import Any, BinaryIO

import numpy as np

from wavenet import storage
from wavenet.config import ExperimentConfig
from wavenet.errors import DataError

__all__ = [
    "MANIFEST",
    "serialize_example",
    "parse_example",
    "TFRecordWriter",
    "shard_paths",
    "local_shard_paths",
    "default_cache_dir",
    "read_manifest",
    "data_version",
    "train_dataset",
    "validation_dataset",
]

MANIFEST = "manifest.json"


# -- writing without TensorFlow ------------------------------------------------
# Preprocessing workers write shards without importing TensorFlow (its import
# costs seconds and hundreds of MB per process). Both the tf.train.Example
# protobuf and the TFRecord framing are small enough to write by hand; tests
# check that TensorFlow reads the result back.

def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def _field(number: int, payload: bytes) -> bytes:
    # Wire type 2 (length-delimited): tag, length, bytes.
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


def _bytes_feature(value: bytes) -> bytes:
    # Feature.bytes_list (field 1) -> BytesList.value (field 1).
    return _field(1, _field(1, value))


def _int64_feature(value: int) -> bytes:
    # Feature.int64_list (field 3) -> Int64List.value (field 1, packed varints);
    # negative int64 values are written as their 64-bit two's complement.
    return _field(3, _field(1, _varint(value & 0xFFFFFFFFFFFFFFFF)))


def serialize_example(codes: np.ndarray, label: int, track: str) -> bytes:
    """One chunk of a track as a serialized ``tf.train.Example`` (no TensorFlow needed).

    Args:
        codes: uint8 mu-law codes, shape (T,).
        label: index of the track's label in the manifest's vocabulary.
        track: the track's id (content hash).

    Returns:
        The protobuf wire bytes of an Example with features ``codes`` (bytes),
        ``label`` (int64) and ``track`` (bytes).
    """
    features = {
        "codes": _bytes_feature(np.ascontiguousarray(codes, dtype=np.uint8).tobytes()),
        "label": _int64_feature(int(label)),
        "track": _bytes_feature(track.encode("utf-8")),
    }
    # Example.features (field 1) -> Features.feature (field 1, a map: entries
    # with key = field 1, value = field 2).
    entries = b"".join(_field(1, _field(1, k.encode()) + _field(2, v)) for k, v in features.items())
    return _field(1, entries)


def _masked_crc32c(data: bytes) -> int:
    import google_crc32c

    crc = google_crc32c.value(data)
    # TFRecord's masking (tensorflow.org/tutorials/load_data/tfrecord, "TFRecord
    # format details"): rotate right by 15 bits and add a constant.
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


class TFRecordWriter:
    """Appends TFRecord records to an open binary file, hashing what it writes.

    Each record is ``uint64 length, uint32 masked_crc32c(length), data,
    uint32 masked_crc32c(data)`` (little-endian), the framing that
    ``tf.data.TFRecordDataset`` reads.
    """

    def __init__(self, f: BinaryIO):
        self._f = f
        self._sha = hashlib.sha256()
        self.records = 0

    def write(self, record: bytes) -> None:
        header = struct.pack("<Q", len(record))
        chunk = b"".join((header, struct.pack("<I", _masked_crc32c(header)), record,
                          struct.pack("<I", _masked_crc32c(record))))
        self._f.write(chunk)
        self._sha.update(chunk)
        self.records += 1

    @property
    def sha256(self) -> str:
        """Hex sha256 of everything written so far."""
        return self._sha.hexdigest()


def parse_example(record):
    """A serialized example -> ``(codes int32 (T,), label int32 ())``."""
    import tensorflow as tf

    parsed = tf.io.parse_single_example(record, {
        "codes": tf.io.FixedLenFeature([], tf.string),
        "label": tf.io.FixedLenFeature([], tf.int64),
        "track": tf.io.FixedLenFeature([], tf.string),
    })
    codes = tf.cast(tf.io.decode_raw(parsed["codes"], tf.uint8), tf.int32)
    return codes, tf.cast(parsed["label"], tf.int32)


def _parse_uint8(record):
    import tensorflow as tf

    parsed = tf.io.parse_single_example(record, {
        "codes": tf.io.FixedLenFeature([], tf.string),
        "label": tf.io.FixedLenFeature([], tf.int64),
    })
    # Codes stay uint8 until cropped: a 30 s chunk is 480 kB, not 1.9 MB.
    return tf.io.decode_raw(parsed["codes"], tf.uint8), tf.cast(parsed["label"], tf.int32)


def read_manifest(data_dir: str) -> dict[str, Any]:
    """The ``manifest.json`` of a preprocessed data folder (local or ``gs://``)."""
    path = storage.join(data_dir, MANIFEST)
    if not storage.exists(path):
        raise DataError(f"no {MANIFEST} in {data_dir}: run `wavenet preprocess` first")
    try:
        manifest = json.loads(storage.read_text(path))
    except json.JSONDecodeError as e:
        raise DataError(f"{path} is not valid JSON: {e}") from None
    if not isinstance(manifest, dict) or not isinstance(manifest.get("shards"), list):
        raise DataError(f"{path} has no 'shards' list: not a manifest written by `wavenet preprocess`")
    return manifest


def data_version(manifest: dict[str, Any]) -> str:
    """Short content version of a shard set: a digest of its shards' sha256s (and sizes).

    Identical shards give the same version whichever run or machine wrote them.
    """
    key = sorted((s["path"], s["sha256"], s.get("examples")) for s in manifest["shards"])
    return hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:10]


def _shards(manifest: dict[str, Any], split: str) -> list[dict[str, Any]]:
    return [s for s in manifest["shards"] if s["split"] == split and s["examples"] > 0]


def _longest_example(manifest: dict[str, Any], split: str, shards: list[dict[str, Any]]) -> int:
    files = [f for f in manifest.get("files", []) if f.get("split") == split and f.get("chunks")]
    if files:
        # Tracks are cut into `chunks` near-equal pieces: the longest is ceil(samples / chunks).
        return max(-(-int(f["samples"]) // int(f["chunks"])) for f in files)
    return max((int(s["samples"]) for s in shards), default=0)


def shard_paths(data_dir: str, split: str) -> list[str]:
    """Shard files of ``split`` ("train" or "validation") that hold examples, as listed in the manifest.

    Returns:
        Paths joined onto ``data_dir`` (``gs://`` URIs when it is a bucket).
    """
    manifest = read_manifest(data_dir)
    return [storage.join(data_dir, s["path"]) for s in _shards(manifest, split)]


def default_cache_dir() -> str:
    return os.path.join(tempfile.gettempdir(), "wavenet-shard-cache")


def _file_sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _localise(data_dir: str, shards: list[dict[str, Any]], cache_dir: str | None) -> list[str]:
    """Local paths TensorFlow can read for ``shards``; bucket shards are downloaded first.

    TensorFlow's own ``gs://`` file system ignores ``STORAGE_EMULATOR_HOST``, so
    bucket shards always go through google-cloud-storage into a local cache,
    named by their sha256 (checked on download), so a shard is fetched once.
    """
    if not storage.is_gcs(data_dir):
        return [os.path.join(data_dir, s["path"]) for s in shards]
    cache_dir = cache_dir or default_cache_dir()
    out = []
    for s in shards:
        local = os.path.join(cache_dir, f"{s['sha256']}.tfrecord")
        if not os.path.exists(local):
            tmp = local + f".{os.getpid()}.part"
            storage.download_file(storage.join(data_dir, s["path"]), tmp)
            got = _file_sha256(tmp)
            if got != s["sha256"]:
                os.unlink(tmp)
                raise DataError(f"{storage.join(data_dir, s['path'])} does not match its manifest "
                                f"checksum (sha256 {got[:12]}..., manifest {s['sha256'][:12]}...): "
                                f"re-run `wavenet preprocess`")
            os.replace(tmp, local)
        out.append(local)
    return out


def local_shard_paths(data_dir: str, split: str, cache_dir: str | None = None) -> list[str]:
    """Like :func:`shard_paths`, but local files (bucket shards are fetched into ``cache_dir``)."""
    return _localise(data_dir, _shards(read_manifest(data_dir), split), cache_dir)


def train_dataset(data_dir: str, config: ExperimentConfig, batch_size: int,
                  input_context=None, seed: int = 0, cache_dir: str | None = None):
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
        cache_dir: where shards of a ``gs://`` data_dir are cached (default: a
            folder in the system temp dir).

    Returns:
        A dataset of ``(crops (B, receptive_field + window) int32, labels (B,) int32)``.

    Raises:
        DataError: no training shards, or fewer shards than input pipelines.
    """
    manifest = read_manifest(data_dir)
    shards = _shards(manifest, "train")
    num_pipelines = input_context.num_input_pipelines if input_context else 1
    pipeline_id = input_context.input_pipeline_id if input_context else 0
    if not shards:
        raise DataError(f"{data_dir} has no training shards with examples")
    if len(shards) < num_pipelines:
        raise DataError(
            f"{data_dir} has {len(shards)} training shards but training uses {num_pipelines} "
            f"workers: each worker needs at least one shard (re-run preprocess with "
            f"data.num_shards >= {num_pipelines})")
    crop = config.crop_length
    # Examples shorter than a crop are dropped; if all were, the endless
    # dataset would read forever without yielding, so refuse up front.
    if _longest_example(manifest, "train", shards) < crop:
        raise DataError(f"{data_dir} has no training example of at least {crop} codes "
                        f"(receptive_field + train.window): use longer tracks, a larger "
                        f"data.chunk_seconds or a smaller train.window")
    # FILE sharding, done before any download so a worker fetches only its own files.
    files = _localise(data_dir, shards[pipeline_id::num_pipelines], cache_dir)

    import tensorflow as tf

    ds = tf.data.Dataset.from_tensor_slices(files)
    ds = ds.shuffle(len(files), seed=seed, reshuffle_each_iteration=True).repeat()
    ds = ds.interleave(tf.data.TFRecordDataset, cycle_length=min(4, len(files)), block_length=1,
                       num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    ds = ds.map(_parse_uint8, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    ds = ds.filter(lambda codes, label: tf.shape(codes)[0] >= crop)
    # One int64 per example from a seeded stream: crops are reproducible without global state.
    ds = tf.data.Dataset.zip((ds, tf.data.Dataset.random(seed=seed + 2)))

    def random_crops(example, crop_seed):
        codes, label = example
        n = tf.shape(codes)[0]
        k = tf.maximum(1, n // crop)
        starts = tf.random.stateless_uniform(
            [k], seed=tf.stack([crop_seed, tf.constant(seed, tf.int64)]), minval=0,
            maxval=n - crop + 1, dtype=tf.int32)
        idx = starts[:, None] + tf.range(crop)[None, :]
        crops = tf.cast(tf.gather(codes, idx), tf.int32)
        return tf.data.Dataset.from_tensor_slices((crops, tf.fill([k], label)))

    ds = ds.flat_map(random_crops)
    ds = ds.shuffle(1024, seed=seed + 1).batch(batch_size, drop_remainder=True)
    options = tf.data.Options()
    # Sharding is done above by file; tell tf.distribute not to shard again.
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.OFF
    return ds.with_options(options).prefetch(tf.data.AUTOTUNE)


def validation_dataset(data_dir: str, config: ExperimentConfig, batch_size: int,
                       window: int | None = None, cache_dir: str | None = None):
    """Deterministic, finite batches covering the validation split.

    Each validation example is cut into consecutive, non-overlapping windows of
    ``window`` predicted samples, each with ``receptive_field`` codes of context
    in front, so every validation sample after the first receptive field is
    scored exactly once. Shards and examples are read in manifest order, so two
    calls give identical batches.

    Args:
        data_dir: folder (local or gs://) with manifest.json and shards.
        config: the experiment config (receptive field; default window).
        batch_size: crops per batch (the last batch may be smaller).
        window: predicted samples per crop (default ``config.evaluate.window``).
        cache_dir: where shards of a ``gs://`` data_dir are cached.

    Returns:
        A dataset of ``(crops (B, receptive_field + window) int32, labels (B,) int32)``.
    """
    manifest = read_manifest(data_dir)
    shards = _shards(manifest, "validation")
    if not shards:
        raise DataError(f"{data_dir} has no validation shards with examples "
                        f"(data.validation_fraction is 0, or there was only one track)")
    rf = config.model.receptive_field
    window = window or config.evaluate.window
    longest = _longest_example(manifest, "validation", shards)
    if longest < rf + window:
        raise DataError(f"{data_dir}: every validation example is shorter than receptive_field + "
                        f"window = {rf} + {window} codes (longest {longest}): use a smaller window")
    files = _localise(data_dir, shards, cache_dir)

    import tensorflow as tf

    def windows(codes, label):
        n = tf.maximum(0, (tf.shape(codes)[0] - rf) // window)
        starts = tf.range(n) * window
        idx = starts[:, None] + tf.range(rf + window)[None, :]
        crops = tf.cast(tf.gather(codes, idx), tf.int32)
        return tf.data.Dataset.from_tensor_slices((crops, tf.fill([n], label)))

    ds = tf.data.TFRecordDataset(files).map(_parse_uint8).flat_map(windows)
    return ds.batch(batch_size).prefetch(tf.data.AUTOTUNE)
