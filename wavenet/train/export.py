"""A run's outputs: the generation model, its config, the summary, and their MLflow records.

The file names and :class:`~wavenet.train.outputs.TrainResult` are in
:mod:`wavenet.train.outputs`.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import keras
import numpy as np

from wavenet.config import ExperimentConfig
from wavenet.edges import storage, tracking
from wavenet.errors import ServiceUnavailable, TrackingError, TrackingUnavailable, one_line, redact
from wavenet.memory import peak_rss_bytes
from wavenet.model import WaveNet, build_model, save_model
from wavenet.train.loop import LoopStats
from wavenet.train.outputs import (
    CONFIG_FILE,
    MODEL_FILE,
    PENDING_FILE,
    SUMMARY_FILE,
    TrainResult,
    read_result,
)
from wavenet.train.setup import Trainer
from wavenet.train.step import Validation, bits_fn

__all__ = ["TrackedRun", "export_run"]


@dataclass
class TrackedRun:
    """The chief's open MLflow run: its id and the buffer its metrics go through."""

    run_id: str
    buffer: tracking.MetricsBuffer
    data_version: str  # Manifest.data_version of the shards it trained on


def _finished(out: str, step: int, run_id: str) -> TrainResult | None:
    """The earlier result when this run had nothing left to train and everything was logged."""
    summary_path = storage.join(out, SUMMARY_FILE)
    if not storage.exists(summary_path) or storage.exists(storage.join(out, PENDING_FILE)):
        return None
    done = read_result(out)
    if done.summary.get("steps") == step and done.summary.get("model_uri") and done.run_id == run_id:
        return done
    return None


def _generation_model(cfg: ExperimentConfig, weights: list[np.ndarray],
                      labels: Sequence[str] | None) -> WaveNet:
    # float32 whatever the training precision: a bfloat16 policy saved with the
    # model would slow generation on CPU.
    keras.mixed_precision.set_global_policy("float32")
    model = build_model(cfg, labels=labels)
    model.set_weights(weights)
    return model


def _summary(trainer: Trainer, stats: LoopStats, final_val: float | None, wall: float,
             run: TrackedRun, model_path: str) -> dict[str, Any]:
    t = trainer.cfg.train
    return {
        "steps": stats.step,
        "start_step": trainer.start_step,
        # The same window as MLflow's last train_bits_per_sample (MetricsReporter).
        "train_bits_per_sample": stats.window_bits,
        "grad_norm": stats.last.grad_norm if stats.last else None,
        "val_bits_per_sample": final_val,
        "samples_per_s": stats.samples_per_s,
        "wall_time_s": round(wall, 3),
        "workers": trainer.role.workers,
        "replicas": trainer.replicas,
        "global_batch_size": t.global_batch_size,
        "precision": trainer.precision,
        "jit_compile": trainer.jit,
        "ema": t.ema_decay > 0,
        "run_id": run.run_id,
        "model_path": model_path,
        "data_version": run.data_version,
        # This worker's own peak (VmHWM): ru_maxrss would also hold the launcher's, the
        # process a worker replaces at exec under Python's vfork-based subprocess.
        "peak_rss_mb": round(peak_rss_bytes() / (1 << 20), 1),
    }


def _log_outputs(model: WaveNet, summary: dict[str, Any], out: str, buffer: tracking.MetricsBuffer) -> None:
    """Send metrics, the model and the files to MLflow; keep what fails for the next run.

    The summary is written (with ``model_uri``) whatever MLflow does: an outage
    must never lose the local results. An outage that outlasts the retries ends in
    :class:`~wavenet.errors.TrackingUnavailable` (exit 138: the operator's restart logs
    the rest); a refusal in :class:`~wavenet.errors.TrackingError` (exit 2).
    """
    summary_path, pending_path = storage.join(out, SUMMARY_FILE), storage.join(out, PENDING_FILE)
    sent = buffer.drain()
    failure: Exception | None = None
    try:
        summary["model_uri"] = tracking.log_model(model, name="model")
    except Exception as e:  # noqa: BLE001 - any MLflow failure: keep the local results
        summary["model_uri"], failure = None, e
    storage.write_text_atomic(summary_path, json.dumps(summary, indent=2, sort_keys=True) + "\n")
    if sent and failure is None:
        try:
            tracking.set_tags({"model_path": summary["model_path"],
                               **({"model.labels": json.dumps(summary["labels"])}
                                  if summary.get("labels") is not None else {})})
            tracking.log_artifacts([storage.join(out, CONFIG_FILE), summary_path])
        except Exception as e:  # noqa: BLE001
            failure = e
    if not sent or failure is not None:
        storage.write_text_atomic(pending_path, buffer.to_json())
        outage = isinstance(failure, ServiceUnavailable) if failure is not None else buffer.outage
        raise (TrackingUnavailable if outage else TrackingError)(
            f"training finished ({summary['model_path']} saved) but MLflow at {redact(buffer.tracking_uri)} "
            f"failed: {len(buffer.pending)} metrics queued in {pending_path}"
            + (f", model not logged ({one_line(failure)})" if failure is not None else "")
            + "; re-run the same command to log them")
    storage.remove(pending_path)  # logged: a re-run must not log it again (local or gs://)


def export_run(trainer: Trainer, out: str, stats: LoopStats, validation: Validation,
               run: TrackedRun | None, labels: Sequence[str] | None = None) -> TrainResult:
    """After the last step: the generation model, its final validation score, the records.

    Every worker finalises its weights (EMA); only the chief (``run`` given)
    writes and logs anything. ``labels`` (the data's vocabulary, id order) is
    recorded with a conditioned model (``model.keras``, the MLflow model, the
    run's ``model.labels`` tag and the summary).
    """
    trainer.optimizer.finalize_variable_values(trainer.model.trainable_variables)
    weights = [v.numpy() for v in trainer.model.weights]
    wall = time.time() - trainer.started
    if run is None:
        return TrainResult(model_path=storage.join(out, MODEL_FILE),
                           summary={"worker": True, "steps": stats.step}, run_id=None, out_dir=out)
    if stats.step == trainer.start_step:
        done = _finished(out, stats.step, run.run_id)
        if done is not None:  # a re-run of a finished, fully logged run: nothing more to do
            return done
    model = _generation_model(trainer.cfg, weights, labels)
    final_val = validation(bits_fn(model))
    model_path = storage.join(out, MODEL_FILE)
    save_model(model, model_path)
    trainer.cfg.save(storage.join(out, CONFIG_FILE))
    summary = _summary(trainer, stats, final_val, wall, run, model_path)
    summary["labels"] = None if labels is None else list(labels)
    if final_val is not None:
        run.buffer.log({"val_bits_per_sample": final_val}, stats.step, flush=False)
    _log_outputs(model, summary, out, run.buffer)
    return TrainResult(model_path=model_path, summary=summary, run_id=run.run_id, out_dir=out)
