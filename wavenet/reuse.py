"""Reuse a registered model instead of training the same one again.

A training run is fully determined by its data, the config fields that shape
the weights, its seed and (for a warm start) the model it starts from. The
*train key* is the sha256 of exactly those:

* the data version (:attr:`wavenet.data.manifest.Manifest.data_version`, a digest of
  the shards' sha256s: identical shards give the same version on any machine);
* ``audio``, ``model`` and ``train`` of the config, ``train.seed`` included,
  minus the fields that only change logging and checkpoints
  (:data:`NON_SEMANTIC_TRAIN`); ``name``, ``preset``, ``data`` (already in the
  data version), ``generate`` and ``evaluate`` do not change the weights;
* the warm-start model's URI (``models:/NAME/VERSION``), or nothing.

The number of workers is not part of it: the global batch is fixed and the
tests hold two-worker training equal to one worker.

The training run is tagged ``wavenet.train_key``; the gate copies the tag onto the
version it registers (:func:`wavenet.evaluate.gate`). :func:`train_or_reuse`
looks the key up in the registry first and, when a registered version has it,
hands that model on instead of training (unless forced).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from typing import Any

from wavenet.config import ExperimentConfig
from wavenet.data.manifest import read_manifest
from wavenet.decision import reuse_line
from wavenet.edges import registry, storage, tracking
from wavenet.train.outputs import MODEL_FILE, SUMMARY_FILE, TrainResult

__all__ = ["NON_SEMANTIC_TRAIN", "train_key", "find_trained", "train_or_reuse"]

# train.* fields that change what is logged and kept, not the weights.
NON_SEMANTIC_TRAIN = ("checkpoint_every", "keep_checkpoints", "log_every", "validate_every",
                      "validation_batches")


def train_key(data_version: str, cfg: ExperimentConfig, init_model: str | None = None) -> str:
    """The sha256 (hex) naming what a training run would produce (module docstring)."""
    d = cfg.to_dict()
    semantic = {"audio": d["audio"], "model": d["model"],
                "train": {k: v for k, v in d["train"].items() if k not in NON_SEMANTIC_TRAIN}}
    payload = json.dumps({"data_version": data_version, "config": semantic,
                          "init_model": init_model or ""}, sort_keys=True)
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()


def find_trained(key: str, cfg: ExperimentConfig, tracking_uri: str | None = None) -> registry.ModelRef | None:
    """The newest registered version of ``cfg.evaluate.registered_model_name`` trained with ``key``."""
    uri = tracking.resolve_tracking_uri(tracking_uri)
    tracking.check_tracking_server(uri)  # an outage: one line (exit 138), before training
    return registry.find_by_train_key(cfg.evaluate.registered_model_name, key, uri)


def train_or_reuse(train_fn: Callable[[], TrainResult], data: str, out: str, cfg: ExperimentConfig, *,
                   force: bool = False, tracking_uri: str | None = None,
                   init_model: str | None = None,
                   say: Callable[[str], None] = print) -> TrainResult:
    """Train with ``train_fn``, unless a registered version already has this run's train key.

    Args:
        train_fn: trains (``wavenet.train.train`` or ``train_on_cluster`` with
            their arguments bound) and returns its result.
        data: the shards folder (its manifest gives the data version).
        out: a local folder: a reused model's ``model.keras`` and
            ``train_summary.json`` are written there.
        cfg: the run's config.
        force: train even when a registered version has the key.
        tracking_uri: the MLflow store (registry and runs).
        init_model: the warm-start model's URI (part of the key), or None.
        say: where the one-line notice of a reuse goes.

    Returns:
        The training result; ``summary`` has ``train_key`` and ``reused`` and, when
        reused, ``registered_model``, ``registered_version``, ``run_name``, ``model_uri``
        (``models:/NAME/VERSION``), with ``run_id`` the run that trained it.
    """
    data_version = read_manifest(data).data_version
    key = train_key(data_version, cfg, init_model)
    found = None if force else find_trained(key, cfg, tracking_uri)
    if found is None:
        result = train_fn()
        if result.run_id:
            registry.record_train_key(result.run_id, key, tracking.resolve_tracking_uri(tracking_uri))
        result.summary.update({"train_key": key, "reused": False})
        return result
    info = registry.describe_model(found.uri, found.name, tracking_uri)
    path = registry.download_keras(found.uri, storage.join(out, MODEL_FILE), tracking_uri)
    summary: dict[str, Any] = {"reused": True, "train_key": key, "model_uri": found.uri,
                               "registered_model": found.name, "registered_version": found.version,
                               "run_id": found.run_id,
                               "run_name": info.run_name, "model_path": path,
                               "data_version": data_version}
    storage.write_text_atomic(storage.join(out, SUMMARY_FILE), json.dumps(summary, indent=2) + "\n")
    say(reuse_line(summary))
    return TrainResult(model_path=path, summary=summary, run_id=found.run_id, out_dir=out)
