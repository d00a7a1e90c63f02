"""Training as a Kubeflow TFJob: every pod runs :func:`~wavenet.train.launch.train_command`.

:func:`train_on_cluster` renders the job (:func:`training_tfjob`, from the
template of :mod:`wavenet.edges.tfjob`), runs it to its end, and copies the model,
config and summary back from the bucket. The Training Operator writes each
pod's ``TF_CONFIG``; the config reaches the pods as ``cfg.to_yaml()`` in their
arguments, so no file has to be in place before they start.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from wavenet.config import ExperimentConfig
from wavenet.context import RunContext
from wavenet.edges import storage, tfjob
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


def training_tfjob(cfg: ExperimentConfig, name: str, data: str, out: str, cluster: ClusterSettings,
                   ctx: RunContext, *, labels: Mapping[str, str] | None = None) -> dict[str, Any]:
    """The TFJob that trains ``cfg``: ``wavenet train --worker`` on every pod.

    Args:
        cfg: the experiment config (in the pods' arguments as YAML).
        name: the job's name (:func:`wavenet.edges.tfjob.job_name`).
        data: the shards, a gs:// prefix the pods can read.
        out: the run directory, a gs:// prefix.
        cluster: where the pods run.
        ctx: the run's settings: experiment, run name and ``init_model`` (a ``.keras`` file
            every pod starts from) in the pods' arguments; the tracking URI, KFP run id and
            the caller's MLflow variables in their environment (:meth:`RunContext.pod_env`).
        labels: extra labels on the job and its pods.
    """
    # Worker 0's log is streamed to the launcher: progress as lines, not a bar. Threads are
    # the pod's own business.
    argv = train_command(data, out, cfg, ctx.replace(progress="lines", threads=0), worker=True,
                         program=POD_PROGRAM)
    pods = tfjob.Pods(cluster.image, list(POD_PROGRAM), argv[len(POD_PROGRAM):],
                      workers=cluster.workers, gpus_per_worker=cluster.gpus_per_worker,
                      accelerator=cluster.accelerator, env=ctx.pod_env())
    return tfjob.render_tfjob(name, cluster.namespace, pods, labels=labels, template=cluster.template)


def train_on_cluster(data: str, cfg: ExperimentConfig, cluster: ClusterSettings, ctx: RunContext, *,
                     local_dir: str, labels: Mapping[str, str] | None = None,
                     job_key: Sequence[str] = (), log: Callable[[str], None] = print) -> TrainResult:
    """Train as a TFJob and bring the model, config and summary back into ``local_dir``.

    Args:
        data: the shards, a gs:// prefix.
        cfg: the experiment config.
        cluster: where the pods run; ``cluster.run_root`` must be a gs:// prefix.
        ctx: the run's settings; ``ctx.run_name`` (required) also names the job, and an MLflow
            ``ctx.init_model`` is resolved here, once, against ``ctx.tracking_uri``.
        local_dir: where ``model.keras``, ``config.yaml`` and ``train_summary.json`` are copied.
        labels: extra labels on the job and its pods.
        job_key: what makes two attempts the same job: the KFP run id and task name. The
            job's name and run folder derive from it alone (:func:`wavenet.edges.tfjob.stable_job_name`),
            so a retried step adopts the job still running or, after it failed or was deleted,
            creates it again on the same run folder and resumes from its checkpoint
            (:func:`wavenet.edges.tfjob.run_tfjob`). Empty: a new job (and folder) named after
            ``ctx.run_name``, which carries the start time.
        log: where the job's progress and worker 0's log go.

    Returns:
        The run's :class:`~wavenet.train.export.TrainResult`, ``out_dir`` the bucket run directory.

    Raises:
        ConfigError: ``run_root`` is not a bucket, no run name, or the warm-start model does not fit.
        wavenet.edges.tfjob.TFJobError: the job could not be created, failed or timed out.
        wavenet.errors.Interrupted: SIGTERM arrived while waiting (the job was deleted).
    """
    if not cluster.run_root.startswith("gs://"):
        raise ConfigError(f"cluster_run_root must be a gs:// prefix for TFJob pods. "
                          f"Received: {cluster.run_root!r}")
    if not ctx.run_name:
        raise ConfigError("training on the cluster needs a run name (it names the TFJob)")
    name = tfjob.stable_job_name("wavenet", *job_key) if job_key else tfjob.job_name("wavenet", ctx.run_name)
    out = storage.join(cluster.run_root, name)
    if ctx.init_model:
        # Pods open a file, not a registry URI: resolve the model once, here (this
        # loads Keras, which the launcher otherwise never needs).
        from wavenet.train.warm_start import prepare_init_model

        ctx = ctx.replace(init_model=prepare_init_model(ctx.init_model, out, cfg, ctx.tracking_uri))
    job = training_tfjob(cfg, name, data, out, cluster, ctx, labels=labels)
    tfjob.run_tfjob(job, log=log)
    return collect_run(out, local_dir)
