"""The shard format and the tf.data input pipeline.

A shard is a TFRecord file of examples, one per track chunk:

    codes  bytes   uint8 mu-law codes of the chunk
    label  int64   index of the track's label in the manifest's vocabulary
    track  bytes   the track's id (content hash)

Shards live in ``DATA/train/*.tfrecord`` and ``DATA/validation/*.tfrecord``
next to ``DATA/manifest.json``. Training reads random crops of
``receptive_field + window`` codes, so every predicted sample has full context.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np

from wavenet import storage
from wavenet.config import ExperimentConfig
from wavenet.errors import DataError

__all__ = [
    "MANIFEST",
    "serialize_example",
    "parse_example",
    "shard_paths",
    "read_manifest",
    "train_dataset",
    "validation_dataset",
]

MANIFEST = "manifest.json"


def serialize_example(codes: np.ndarray, label: int, track: str) -> bytes:
    import tensorflow as tf

    feature = {
        "codes": tf.train.Feature(bytes_list=tf.train.BytesList(
            value=[np.asarray(codes, dtype=np.uint8).tobytes()])),
        "label": tf.train.Feature(int64_list=tf.train.Int64List(value=[int(label)])),
        "track": tf.train.Feature(bytes_list=tf.train.BytesList(value=[track.encode()])),
    }
    return tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString()


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


def read_manifest(data_dir: str) -> dict[str, Any]:
    path = storage.join(data_dir, MANIFEST)
    if not storage.exists(path):
        raise DataError(f"no {MANIFEST} in {data_dir}: run `wavenet preprocess` first")
    try:
        return json.loads(storage.read_text(path))
    except json.JSONDecodeError as e:
        raise DataError(f"{path} is not valid JSON: {e}") from None


def shard_paths(data_dir: str, split: str) -> list[str]:
    """Shard files of ``split`` ("train" or "validation") listed in the manifest."""
    manifest = read_manifest(data_dir)
    shards = [s for s in manifest.get("shards", []) if s["split"] == split and s["examples"] > 0]
    return [storage.join(data_dir, s["path"]) for s in shards]


def train_dataset(data_dir: str, config: ExperimentConfig, batch_size: int,
                  input_context=None, seed: int = 0):
    """Endless shuffled batches of random crops for training.

    Args:
        data_dir: folder (local or gs://) with manifest.json and shards.
        config: the experiment config (crop length from model and train).
        batch_size: examples per batch (per replica under a distribution strategy).
        input_context: a ``tf.distribute.InputContext``; each input pipeline
            reads its own subset of shard files (FILE auto-shard policy).
        seed: shuffle and crop seed.

    Returns:
        A dataset of ``(crops (B, receptive_field + window) int32, labels (B,) int32)``.
    """
    import tensorflow as tf

    files = shard_paths(data_dir, "train")
    num_pipelines = input_context.num_input_pipelines if input_context else 1
    if not files:
        raise DataError(f"{data_dir} has no training shards with examples")
    if len(files) < num_pipelines:
        raise DataError(
            f"{data_dir} has {len(files)} training shards but training uses {num_pipelines} "
            f"workers: each worker needs at least one shard (re-run preprocess with "
            f"data.num_shards >= {num_pipelines})")
    crop = config.crop_length
    ds = tf.data.Dataset.from_tensor_slices(files)
    if input_context:
        ds = ds.shard(input_context.num_input_pipelines, input_context.input_pipeline_id)
    ds = ds.shuffle(len(files), seed=seed, reshuffle_each_iteration=True).repeat()
    ds = ds.interleave(tf.data.TFRecordDataset, cycle_length=min(4, len(files)),
                       num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    ds = ds.map(parse_example, num_parallel_calls=tf.data.AUTOTUNE)
    ds = ds.filter(lambda codes, label: tf.shape(codes)[0] >= crop)

    def random_crop(index, example):
        # Stateless: the start depends only on (seed, element index), so crops
        # are reproducible even though the map runs in parallel (a stateful
        # tf.random op would hand out its numbers in thread order).
        codes, label = example
        start = tf.random.stateless_uniform(
            [], seed=tf.stack([tf.cast(seed, tf.int64), index]), minval=0,
            maxval=tf.shape(codes)[0] - crop + 1, dtype=tf.int32)
        return codes[start:start + crop], label

    ds = ds.shuffle(256, seed=seed + 1).enumerate().map(
        random_crop, num_parallel_calls=tf.data.AUTOTUNE)
    ds = ds.batch(batch_size, drop_remainder=True)
    options = tf.data.Options()
    # Sharding is done above by file; tell tf.distribute not to shard again.
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.OFF
    return ds.with_options(options).prefetch(tf.data.AUTOTUNE)


def validation_dataset(data_dir: str, config: ExperimentConfig, batch_size: int,
                       window: int | None = None):
    """Deterministic, finite batches covering the validation split.

    Each validation example is cut into consecutive, non-overlapping windows of
    ``window`` predicted samples, each with ``receptive_field`` codes of context
    in front, so every validation sample after the first receptive field is
    scored exactly once.

    Returns:
        A dataset of ``(crops (B, receptive_field + window) int32, labels (B,) int32)``.
    """
    import tensorflow as tf

    files = shard_paths(data_dir, "validation")
    if not files:
        raise DataError(f"{data_dir} has no validation shards with examples")
    rf = config.model.receptive_field
    window = window or config.evaluate.window

    def windows(codes, label):
        n = (tf.shape(codes)[0] - rf) // window
        starts = tf.range(n) * window
        idx = starts[:, None] + tf.range(rf + window)[None, :]
        crops = tf.gather(codes, idx)
        return tf.data.Dataset.from_tensor_slices((crops, tf.fill([n], label)))

    ds = tf.data.TFRecordDataset(files).map(parse_example).flat_map(windows)
    return ds.batch(batch_size).prefetch(tf.data.AUTOTUNE)
