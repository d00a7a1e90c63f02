"""Training as a Kubeflow TFJob: every pod runs :func:`~wavenet.train.launch.train_command`.

:func:`train_on_cluster` renders the job (:func:`training_tfjob`, from the
template of :mod:`wavenet.tfjob`), runs it to its end, and copies the model,
config and summary back from the bucket. The Training Operator writes each
pod's ``TF_CONFIG``; the config reaches the pods as ``cfg.to_yaml()`` in their
arguments, so no file has to be in place before they start.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from wavenet import storage, tfjob
from wavenet.config import ExperimentConfig
from wavenet.errors import ConfigError
from wavenet.train.launch import POD_PROGRAM, train_command
from wavenet.train.outputs import TrainResult, collect_run

__all__ = ["ClusterSettings", "training_tfjob", "train_on_cluster"]


@dataclass(frozen=True)
class ClusterSettings:
    """Where and on what the TFJob's pods run.

    Attributes:
        namespace: the namespace of the job.
        image: the pods' image (the GPU image for GPU workers).
        workers: Worker replicas (worker 0 is the chief).
        gpus_per_worker: ``nvidia.com/gpu`` per pod (0: CPU pods).
        accelerator: node selector value for the GPU type (empty: any GPU node).
        run_root: gs:// prefix under which each job writes its run directory.
        template: the TFJob template (None: ``k8s/tfjob-template.yaml``).
    """

    namespace: str
    image: str
    workers: int = 1
    gpus_per_worker: int = 0
    accelerator: str = ""
    run_root: str = ""
    template: Mapping[str, Any] | None = None


def training_tfjob(cfg: ExperimentConfig, name: str, data: str, out: str, cluster: ClusterSettings, *,
                   run_name: str, experiment: str | None = None, init_model: str | None = None,
                   env: Mapping[str, str] | None = None,
                   labels: Mapping[str, str] | None = None) -> dict[str, Any]:
    """The TFJob that trains ``cfg``: ``wavenet train --worker`` on every pod.

    Args:
        cfg: the experiment config (in the pods' arguments as YAML).
        name: the job's name (:func:`wavenet.tfjob.job_name`).
        data: the shards, a gs:// prefix the pods can read.
        out: the run directory, a gs:// prefix.
        cluster: where the pods run.
        run_name: the MLflow run's name.
        experiment: the MLflow experiment.
        init_model: a ``.keras`` file every pod starts from (warm start).
        env: extra container environment (MLflow variables, ``KFP_RUN_ID``).
        labels: extra labels on the job and its pods.
    """
    # Worker 0's log is streamed to the launcher: progress as lines, not a bar.
    argv = train_command(data, out, cfg, worker=True, run_name=run_name, experiment=experiment,
                         init_model=init_model, program=POD_PROGRAM, progress="lines")
    return tfjob.render_tfjob(name, cluster.namespace, cluster.image, list(POD_PROGRAM),
                              argv[len(POD_PROGRAM):], workers=cluster.workers,
                              gpus_per_worker=cluster.gpus_per_worker,
                              accelerator=cluster.accelerator, env=env, labels=labels,
                              template=cluster.template)


def train_on_cluster(data: str, cfg: ExperimentConfig, cluster: ClusterSettings, *, run_name: str,
                     local_dir: str, tracking_uri: str | None = None, experiment: str | None = None,
                     init_model: str | None = None, env: Mapping[str, str] | None = None,
                     labels: Mapping[str, str] | None = None, job_key: Sequence[str] = (),
                     log: Callable[[str], None] = print) -> TrainResult:
    """Train as a TFJob and bring the model, config and summary back into ``local_dir``.

    Args:
        data: the shards, a gs:// prefix.
        cfg: the experiment config.
        cluster: where the pods run; ``cluster.run_root`` must be a gs:// prefix.
        run_name: the MLflow run's name (also names the job).
        local_dir: where ``model.keras``, ``config.yaml`` and ``train_summary.json`` are copied.
        tracking_uri: MLflow URI, for resolving an MLflow ``init_model`` here, once.
        experiment: the MLflow experiment.
        init_model: warm start from this model (a .keras path or MLflow URI).
        env: extra pod environment.
        labels: extra labels on the job and its pods.
        job_key: what makes two attempts the same job: the KFP run id and task name. The
            job's name and run folder derive from it alone (:func:`wavenet.tfjob.stable_job_name`),
            so a retried step adopts the job still running or, after it failed or was deleted,
            creates it again on the same run folder and resumes from its checkpoint
            (:func:`wavenet.tfjob.run_tfjob`). Empty: a new job (and folder) named after
            ``run_name``, which carries the start time.
        log: where the job's progress and worker 0's log go.

    Returns:
        The run's :class:`~wavenet.train.export.TrainResult`, ``out_dir`` the bucket run directory.

    Raises:
        ConfigError: ``run_root`` is not a bucket, or the warm-start model does not fit.
        wavenet.tfjob.TFJobError: the job could not be created, failed or timed out.
        wavenet.errors.Interrupted: SIGTERM arrived while waiting (the job was deleted).
    """
    if not cluster.run_root.startswith("gs://"):
        raise ConfigError(f"cluster_run_root must be a gs:// prefix for TFJob pods. "
                          f"Received: {cluster.run_root!r}")
    name = tfjob.stable_job_name("wavenet", *job_key) if job_key else tfjob.job_name("wavenet", run_name)
    out = storage.join(cluster.run_root, name)
    if init_model:
        # Pods open a file, not a registry URI: resolve the model once, here (this
        # loads Keras, which the launcher otherwise never needs).
        from wavenet.train.warm_start import prepare_init_model

        init_model = prepare_init_model(init_model, out, cfg, tracking_uri)
    job = training_tfjob(cfg, name, data, out, cluster, run_name=run_name, experiment=experiment,
                         init_model=init_model, env=env, labels=labels)
    tfjob.run_tfjob(job, log=log)
    return collect_run(out, local_dir)
