"""Who is who in a training cluster, and the checks before any training: no TensorFlow here.

The launchers (``wavenet train --workers N``, the train component, a TFJob's
launcher) use these before starting workers, so they stay free of TensorFlow;
every worker runs them again on its own ``TF_CONFIG``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any, NamedTuple

from wavenet.config import ExperimentConfig
from wavenet.data.manifest import Manifest, check_audio, check_scores, check_shards
from wavenet.errors import ConfigError, DataError

__all__ = ["WorkerRole", "parse_tf_config", "worker_role", "check_data", "check_batch"]


class WorkerRole(NamedTuple):
    """This process's place in the training cluster."""

    index: int
    workers: int
    is_chief: bool


def parse_tf_config(text: str | None) -> dict[str, Any]:
    """The ``TF_CONFIG`` that the TFJob operator or :mod:`wavenet.local_workers` set, parsed."""
    if not text:
        raise ConfigError("--worker needs TF_CONFIG in the environment (set by the TFJob "
                          "operator or wavenet.local_workers)")
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise ConfigError(f"TF_CONFIG is not valid JSON: {e}") from None


def worker_role(tf_config: Mapping[str, Any] | None) -> WorkerRole:
    """``(index, number of workers, is_chief)`` from a TF_CONFIG dict (None: one process).

    The chief is the ``chief`` task when the cluster has one, else worker 0
    (the Kubeflow training operator and :mod:`wavenet.local_workers` both use the latter).
    """
    if not tf_config:
        return WorkerRole(0, 1, True)
    try:
        cluster = tf_config["cluster"]
        task_type = tf_config["task"]["type"]
        task_index = int(tf_config["task"]["index"])
    except (KeyError, TypeError, ValueError):
        raise ConfigError("TF_CONFIG must hold cluster and task {type, index}. "
                          f"Received: {json.dumps(tf_config)[:200]}") from None
    if task_type not in ("chief", "worker"):
        raise ConfigError(f"TF_CONFIG task type must be chief or worker. Received: {task_type!r}")
    chiefs = list(cluster.get("chief", []))
    n = len(chiefs) + len(cluster.get("worker", []))
    if task_type == "chief":
        return WorkerRole(0, n, True)
    index = task_index + len(chiefs)
    return WorkerRole(index, n, index == 0)


def check_data(data_dir: str, manifest: Manifest, cfg: ExperimentConfig, workers: int) -> bool:
    """Fail in one line before training; returns whether a validation split exists.

    Checks the audio settings against the manifest's, that a model that plays a
    score has scored tracks to learn from, that a conditioned model
    has a label id for every label of the data, and every shard against
    its sha256 (local shards; bucket shards when fetched), before any run starts.
    """
    check_audio(data_dir, manifest, cfg.audio)
    check_scores(cfg.model, manifest, "train", data_dir)
    n, labels = cfg.model.num_classes, manifest.labels
    if cfg.model.conditioned and len(labels) > n:
        raise DataError(f"{data_dir} has {len(labels)} labels ({', '.join(labels)}) but model.num_classes="
                        f"{n}: use --set model.num_classes={len(labels)} (a warm start copies the "
                        "known labels' rows by name)")
    train_files = manifest.shards_of("train")
    if not train_files:
        raise DataError(f"{data_dir} has no training shards with examples")
    if cfg.train.input_sharding == "file" and len(train_files) < workers:
        raise DataError(
            f"{data_dir} has {len(train_files)} training shards but training uses {workers} "
            f"workers: each worker needs at least one shard (re-run preprocess with "
            f"data.num_shards >= {workers}, or set train.input_sharding=batch)")
    check_shards(data_dir, [s for s in manifest.shards if s.examples > 0])
    return bool(manifest.shards_of("validation"))


def check_batch(cfg: ExperimentConfig, replicas: int) -> None:
    g = cfg.train.global_batch_size
    if g % replicas:
        raise ConfigError(
            f"train.global_batch_size must be divisible by the number of replicas ({replicas}). "
            f"Received: train.global_batch_size={g}")
