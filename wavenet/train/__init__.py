"""Distributed training: a custom loop under MultiWorkerMirroredStrategy.

Keras 3 ``model.fit`` does not run under ``tf.distribute.MultiWorkerMirroredStrategy``
(keras-team/keras#20585), so the loop is written out with ``strategy.run``.
One code path serves three set-ups:

* one process (``wavenet train DATA --out RUN``): a one-worker strategy;
* N local processes (``--workers N``): :mod:`wavenet.local_workers` starts N copies of
  :func:`train_command` on 127.0.0.1, each with its own ``TF_CONFIG``;
* N pods of a Kubeflow TFJob (:func:`train_on_cluster`): the operator sets
  ``TF_CONFIG`` and every pod runs the same :func:`train_command`.

The modules, in the order a run uses them:

* :mod:`~wavenet.train.launch`: :func:`train` (checks, then one of the three
  set-ups) and :func:`train_command`, the one builder of worker command lines;
* :mod:`~wavenet.train.cluster`: the TFJob set-up;
* :mod:`~wavenet.train.checks`, :mod:`~wavenet.train.outputs`: worker roles, the
  checks before training, the run directory's files and result;
* :mod:`~wavenet.train.warm_start`: starting from another model's weights;
* :mod:`~wavenet.train.worker`: :func:`~wavenet.train.worker.train_worker`, one worker
  start to finish;
* :mod:`~wavenet.train.setup`: strategy, precision, model, optimizer, checkpoints, input;
* :mod:`~wavenet.train.schedule`: the learning-rate schedule that drives the optimizer;
* :mod:`~wavenet.train.step`: the distributed step and the validation score;
* :mod:`~wavenet.train.loop`: the step loop, reporting through callbacks;
* :mod:`~wavenet.train.stopping`: SIGTERM or Ctrl-C stops every worker after a
  checkpoint at a step they agree on (exit 143 or 130, retried by the operator);
* :mod:`~wavenet.train.export`: the generation model, summary and MLflow records.

This package's namespace holds what launchers need: launch, cluster, checks
and outputs load no TensorFlow; the worker's modules do, when imported.

Fault tolerance: the chief checkpoints (model, optimizer, step) to
``RUN_DIR/checkpoints`` every ``train.checkpoint_every`` steps; re-running the
same command resumes from the latest one, with a fresh data order
(seed + step) and the same MLflow run (its id is kept in
``RUN_DIR/mlflow_run_id``).
"""

from wavenet.train.checks import worker_role
from wavenet.train.cluster import ClusterSettings, train_on_cluster, training_tfjob
from wavenet.train.launch import train, train_command
from wavenet.train.outputs import TrainResult

__all__ = [
    "ClusterSettings",
    "TrainResult",
    "train",
    "train_command",
    "train_on_cluster",
    "training_tfjob",
    "worker_role",
]
