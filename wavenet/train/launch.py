"""The train verb: checks, then one process, N local worker processes, or one worker of a cluster.

:func:`train_command` is the one place a ``wavenet train`` command line is
built: for local worker processes, for the pods of a TFJob
(:mod:`wavenet.train.cluster`) and for the benchmark. The config crosses that
boundary in one form only, ``cfg.to_yaml()`` (``--config-yaml``).

A launcher of worker processes never loads TensorFlow (seconds of start-up and
hundreds of MB it would never use): this module imports none, and imports the
worker (:mod:`wavenet.train.worker`) only when it trains in this process.
"""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Mapping, Sequence
from typing import Any

from wavenet.config import ExperimentConfig, resolve_auto
from wavenet.context import RunContext
from wavenet.data.manifest import read_manifest
from wavenet.edges import storage, tracking
from wavenet.errors import ConfigError
from wavenet.local_workers import WorkerError, run_local_workers
from wavenet.memory import check_training
from wavenet.train.checks import check_batch, check_data, worker_role
from wavenet.train.exit_codes import is_retryable
from wavenet.train.outputs import TrainResult, read_result
from wavenet.train.progress import progress_mode

__all__ = ["LOCAL_PROGRAM", "POD_PROGRAM", "train_command", "train"]

# wavenet.train.setup.CHECKPOINTS, not imported: that module loads TensorFlow.
CHECKPOINTS = "checkpoints"

# How a `wavenet train` process is started: here, with this interpreter; in a pod, the image's entry point.
LOCAL_PROGRAM = (sys.executable, "-m", "wavenet.cli", "train")
POD_PROGRAM = ("wavenet", "train")


def train_command(data: str, out: str, cfg: ExperimentConfig, ctx: RunContext | None = None, *,
                  worker: bool = False, workers: int = 1,
                  program: Sequence[str] = LOCAL_PROGRAM) -> list[str]:
    """The ``wavenet train`` command line that trains ``cfg`` on ``data`` into ``out``.

    Args:
        data, out, cfg: as for :func:`train`; the whole config travels as
            ``--config-yaml <cfg.to_yaml()>``.
        ctx: the run's settings, as flags (:meth:`RunContext.worker_args`); its tracking URI
            and KFP run id travel in the environment (:meth:`RunContext.worker_env`), never here.
            None: the command's defaults.
        worker: one worker of the cluster in ``TF_CONFIG`` (``--worker``).
        workers: local worker processes (when not ``worker``).
        program: the command that starts ``wavenet train``.

    Returns:
        The argv, ``program`` first.
    """
    argv = [*program, data, "--out", out, "--config-yaml", cfg.to_yaml()]
    if worker:
        argv.append("--worker")
    elif workers != 1:
        argv += ["--workers", str(workers)]
    return argv + (ctx.worker_args() if ctx is not None else [])


def _train_local_workers(data: str, out: str, cfg: ExperimentConfig, ctx: RunContext,
                         workers: int) -> TrainResult:
    """``workers`` processes of :func:`train_command` on 127.0.0.1 (:mod:`wavenet.local_workers`)."""
    per_worker = ctx.threads or max(1, (os.cpu_count() or 1) // workers)
    # Decided here, where the terminal is: the chief's stderr is a pipe to this process.
    chief = ctx.replace(threads=per_worker, progress=progress_mode(ctx.progress))
    commands = [train_command(data, out, cfg, chief if i == 0 else chief.replace(progress="off"),
                              worker=True) for i in range(workers)]
    # Workers inherit this process's environment; MLflow requests fail fast
    # (training retries through its own metrics buffer). The tracking URI goes there too,
    # not into the command line, which any user of the machine can read (ps, /proc/PID/cmdline;
    # /proc/PID/environ is the owner's only): a database URI may hold a password.
    env = {**tracking.FAST_FAIL_HTTP_ENV, **ctx.env, **ctx.worker_env()}
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    storage.makedirs(out)
    _run_with_restarts(commands, env, cfg.train.max_restarts, out)
    return read_result(out)


def _last_checkpoint_step(out: str) -> int | None:
    """The step of the newest ``ckpt-N`` in OUT/checkpoints (local folders only)."""
    folder = os.path.join(out, CHECKPOINTS)
    if "://" in out or not os.path.isdir(folder):
        return None
    steps = [int(m.group(1)) for name in os.listdir(folder)
             if (m := re.fullmatch(r"ckpt-(\d+)\.index", name))]
    return max(steps, default=None)


def _run_with_restarts(commands: list[list[str]], env: Mapping[str, str], max_restarts: int,
                       out: str) -> None:
    """Local workers under the operator's exit-code rule, with a budget like ``backoffLimit``.

    A retryable exit (:func:`wavenet.train.exit_codes.is_retryable`) restarts the
    whole worker set on fresh ports; it resumes from OUT's last checkpoint and
    the chief continues the MLflow run named in OUT. Other exits fail at once.
    """
    for restart in range(max_restarts + 1):
        try:
            run_local_workers(commands, env)
            return
        except WorkerError as e:
            if e.returncode is None or not is_retryable(e.returncode) or restart == max_restarts:
                raise
            code = 128 - e.returncode if e.returncode < 0 else e.returncode
            step = _last_checkpoint_step(out)
            print(f"worker {e.worker} exited {code} (retryable): restarting all {len(commands)} "
                  f"workers from step {step if step is not None else 0}, "
                  f"restart {restart + 1} of {max_restarts}", file=sys.stderr, flush=True)


def train(data: str, out: str, cfg: ExperimentConfig, ctx: RunContext | None = None, *,
          workers: int = 1, tf_config: Mapping[str, Any] | None = None) -> TrainResult:
    """Train (or resume training) a WaveNet on the shards in ``data``.

    Args:
        data: folder or gs:// prefix with manifest.json and shards.
        out: the run directory (checkpoints, model.keras, config.yaml,
            train_summary.json). Re-running with the same ``out`` resumes.
        cfg: the experiment config (``train.steps`` and the rest).
        ctx: where and how the run is tracked (:class:`~wavenet.context.RunContext`: MLflow
            store, experiment, run name, KFP run id, warm start, progress, threads, the
            caller's environment). None: ``RunContext.create()`` (``MLFLOW_TRACKING_URI``,
            else ./mlflow.db). A warm start (``ctx.init_model``, a ``.keras`` path or MLflow
            model URI) must have ``cfg.model``'s architecture; a run that already has
            checkpoints resumes from them instead.
        workers: local worker processes (>1: started by :mod:`wavenet.local_workers`).
        tf_config: run as one worker of this cluster (a TFJob pod's parsed
            ``TF_CONFIG``); ``workers`` is then ignored.

    Raises:
        ConfigError, DataError, TrackingError: bad input, found before training.
        wavenet.local_workers.WorkerError: a local worker failed.
    """
    ctx = ctx if ctx is not None else RunContext.create()
    if tf_config is not None:
        if ctx.init_model and tracking.is_mlflow_uri(ctx.init_model):
            raise ConfigError("--worker reads --init-model as a .keras path (local or gs://) that "
                              "every worker can open; resolve MLflow URIs before starting the "
                              f"workers. Received: init_model={ctx.init_model!r}")
        # One worker of a cluster: its share of the batch, on its own machine (pod).
        check_training(cfg, worker_role(tf_config).workers, share=True, environ=ctx.environ)
        return _train_here(data, out, cfg, ctx, tf_config)
    if not isinstance(workers, int) or workers < 1:
        raise ConfigError(f"workers must be an integer >= 1. Received: workers={workers!r}")
    manifest = read_manifest(data)
    # The data decides model.num_classes "auto": resolved once, here, so every local worker,
    # the saved config and the MLflow params carry the number.
    cfg = resolve_auto(cfg, manifest.labels, manifest.scored)
    check_batch(cfg, workers)
    check_training(cfg, workers, environ=ctx.environ)  # every local worker runs on this machine
    check_data(data, manifest, cfg, workers)
    tracking.check_tracking_server(ctx.tracking_uri)
    if ctx.init_model:
        from wavenet.train.warm_start import prepare_init_model  # loads a Keras model

        ctx = ctx.replace(init_model=prepare_init_model(ctx.init_model, out, cfg, ctx.tracking_uri))
    if workers == 1:
        return _train_here(data, out, cfg, ctx, None)
    return _train_local_workers(data, out, cfg, ctx, workers)


def _train_here(data: str, out: str, cfg: ExperimentConfig, ctx: RunContext,
                tf_config: Mapping[str, Any] | None) -> TrainResult:
    """Train in this process (alone, or as one worker of ``tf_config``'s cluster)."""
    from wavenet.train.worker import train_worker  # this process trains: TensorFlow now

    return train_worker(data, out, cfg, ctx, tf_config=tf_config)
