"""What a run directory holds, by name, and the result a finished run reports: no TensorFlow here.

``RUN_DIR`` holds ``model.keras`` (float32 and, with ``train.ema_decay > 0``,
the averaged weights; the raw ones stay in the checkpoints), ``config.yaml``,
``train_summary.json``, ``mlflow_run_id`` (so a re-run continues the same
MLflow run) and, when MLflow was unreachable at the end,
``mlflow_pending_metrics.json`` (sent by the next run of the same command).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from wavenet.edges import storage

__all__ = ["RUN_ID_FILE", "PENDING_FILE", "SUMMARY_FILE", "MODEL_FILE", "CONFIG_FILE",
           "RUN_OUTPUTS", "TrainResult", "read_result", "collect_run"]

RUN_ID_FILE = "mlflow_run_id"
PENDING_FILE = "mlflow_pending_metrics.json"
SUMMARY_FILE = "train_summary.json"
MODEL_FILE = "model.keras"
CONFIG_FILE = "config.yaml"
# What a finished run hands on: the launcher of a TFJob copies these out of the bucket.
RUN_OUTPUTS = (MODEL_FILE, CONFIG_FILE, SUMMARY_FILE)


@dataclass
class TrainResult:
    """What a training run produced.

    Attributes:
        model_path: the saved generation model (``RUN_DIR/model.keras``).
        summary: steps, final train/validation bits per sample, samples/s,
            wall time, workers, MLflow run id, model path (also in
            ``RUN_DIR/train_summary.json``).
        run_id: the MLflow run (None on non-chief workers).
        out_dir: the run directory.
    """

    model_path: str
    summary: dict[str, Any]
    run_id: str | None
    out_dir: str


def read_result(out: str) -> TrainResult:
    """The result of a finished run, from ``RUN_DIR/train_summary.json``."""
    summary = json.loads(storage.read_text(storage.join(out, SUMMARY_FILE)))
    return TrainResult(model_path=summary["model_path"], summary=summary,
                       run_id=summary.get("run_id"), out_dir=out)


def collect_run(run_dir: str, dest: str) -> TrainResult:
    """Copy a finished run's :data:`RUN_OUTPUTS` from ``run_dir`` (a TFJob's, gs://) into ``dest``.

    Returns:
        The run's result, ``model_path`` in ``dest`` and ``out_dir`` the run directory.
    """
    storage.makedirs(dest)
    for fname in RUN_OUTPUTS:
        storage.write_bytes_atomic(storage.join(dest, fname), storage.read_bytes(storage.join(run_dir, fname)))
    result = read_result(dest)
    return TrainResult(model_path=storage.join(dest, MODEL_FILE), summary=result.summary,
                       run_id=result.run_id, out_dir=run_dir)
