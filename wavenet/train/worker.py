"""One training worker, start to finish: set-up, the step loop inside the MLflow run, export.

Every worker of a cluster runs :func:`train_worker` with the same arguments and
its own ``TF_CONFIG``; the chief (worker 0) also tracks to MLflow and writes
the run's outputs.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import sys
from collections.abc import Iterator, Mapping
from typing import Any

import tensorflow as tf

from wavenet.config import ExperimentConfig, resolve_auto
from wavenet.context import RunContext
from wavenet.data.manifest import Manifest, read_manifest
from wavenet.edges import storage, tracking
from wavenet.errors import Interrupted, redact
from wavenet.train.checks import check_data, worker_role
from wavenet.train.export import TrackedRun, export_run
from wavenet.train.loop import Callbacks, MetricsReporter, run_steps
from wavenet.train.outputs import PENDING_FILE, RUN_ID_FILE, TrainResult
from wavenet.train.progress import progress_callback, progress_mode
from wavenet.train.setup import Trainer, distributed_batches, make_strategy, set_up_worker
from wavenet.train.step import Validation, bits_fn, make_train_step
from wavenet.train.stopping import StopSignals, TrainingStopped

__all__ = ["train_worker"]


def _read_optional(path: str) -> str | None:
    return storage.read_text(path).strip() if storage.exists(path) else None


@contextlib.contextmanager
def _tracked_run(trainer: Trainer, out: str, data: str, manifest: Manifest,
                 ctx: RunContext) -> Iterator[TrackedRun | None]:
    """The chief's MLflow run (continued when ``RUN_DIR/mlflow_run_id`` names one); None elsewhere."""
    if not trainer.role.is_chief:
        yield None
        return
    cfg = trainer.cfg
    storage.makedirs(out)
    prior = _read_optional(storage.join(out, RUN_ID_FILE))
    if prior and not tracking.run_exists(prior, ctx.tracking_uri):
        print(f"warning: MLflow run {prior} from {out}/{RUN_ID_FILE} is not in {redact(ctx.tracking_uri)}; "
              "starting a new run", file=sys.stderr)
        prior = None
    version = manifest.data_version
    tags = {"wavenet.stage": "train", "data.version": version, "preset": cfg.preset,
            "workers": str(trainer.role.workers), "replicas": str(trainer.replicas),
            "precision": trainer.precision}
    if ctx.kfp_run_id:
        tags["kfp.run_id"] = ctx.kfp_run_id
    if ctx.init_model and not trainer.resumed:
        tags["warm_start"] = ctx.init_model
        tags["warm_start.weights"] = trainer.warm_start  # which label rows were copied, which are new
    name = ctx.run_name or tracking.run_name(cfg.preset, f"d{version[:8]}",
                                             datetime.datetime.now(datetime.UTC))
    with tracking.start_run(ctx.experiment or cfg.name, run_name=name, tracking_uri=ctx.tracking_uri,
                            tags=tags, params=cfg.flat(), run_id=prior, environ=ctx.environ,
                            log_system_metrics=True) as run:
        run_id = run.info.run_id
        if run_id != prior:
            storage.write_text_atomic(storage.join(out, RUN_ID_FILE), run_id + "\n")
        pending_path = storage.join(out, PENDING_FILE)
        # Sent now; the file goes when the run's outputs are logged (export), since it also
        # marks the outputs as not logged yet (export._finished).
        pending = json.loads(_read_optional(pending_path) or "[]")
        buffer = tracking.MetricsBuffer(run_id, ctx.tracking_uri, pending=pending)
        if pending:
            buffer.flush(force=True)
        if run_id != prior:  # lineage: the shards as an MLflow dataset, digest = data version
            tracking.log_dataset(data, f"shards-{version}", version, context="training",
                                 profile={"tracks": manifest.summary.tracks,
                                          "labels": manifest.summary.labels,
                                          "train_seconds": manifest.summary.train_seconds,
                                          "validation_seconds": manifest.summary.validation_seconds})
        try:
            yield TrackedRun(run_id=run_id, buffer=buffer, data_version=version)
        except Interrupted:
            # Stopped to be resumed (the run is marked KILLED): what is logged goes
            # now, or with the next start of the same command.
            if not buffer.flush(force=True):
                storage.write_text_atomic(pending_path, buffer.to_json())
            else:  # sent, those read from the file at start included: not again on resume
                storage.remove(pending_path)
            raise


def _callbacks(trainer: Trainer, run: TrackedRun | None, validation: Validation,
               progress: bool | str) -> Callbacks:
    t = trainer.cfg.train
    mode = progress_mode(progress) if run is not None else "off"
    bar = progress_callback(mode, t.steps, trainer.start_step, t.log_every)
    if run is None:
        return Callbacks([bar])
    val_fn = bits_fn(trainer.model)
    return Callbacks([bar, MetricsReporter(run.buffer, t.steps, t.log_every, t.validate_every,
                                           validate=lambda: validation(val_fn))])


def _cluster_sum(strategy: tf.distribute.Strategy, value: float) -> float:
    """``value`` summed over every replica of ``strategy``'s cluster: one all-reduce.

    Every worker must call it at the same point of its run; none returns before all got there
    (a barrier).
    """
    @tf.function
    def all_sum():
        return strategy.reduce(tf.distribute.ReduceOp.SUM,
                               strategy.run(lambda: tf.constant(value)), axis=None)

    return float(all_sum())


def _stop_point(trainer: Trainer, stop: StopSignals) -> None:
    """Before the step loop: if any worker was asked to stop, all of them stop here, together.

    Raises:
        TrainingStopped: a stop was requested (nothing new to save: no step ran yet).
    """
    requested = float(stop.requested)
    if trainer.role.workers > 1:
        requested = _cluster_sum(trainer.strategy, requested)
    if requested > 0:
        raise TrainingStopped(int(trainer.step.numpy()), trainer.cfg.train.steps, None,
                              stop.signum)


def train_worker(data: str, out: str, cfg: ExperimentConfig, ctx: RunContext, *,
                 tf_config: Mapping[str, Any] | None) -> TrainResult:
    """Run one worker of a training cluster (or the only one when ``tf_config`` is None).

    Args:
        data: shards folder.
        out: run directory, shared by all workers (a PVC or gs:// on a cluster).
        cfg: the experiment config.
        ctx: the run's settings (:class:`~wavenet.context.RunContext`); ``ctx.init_model`` is
            a ``.keras`` file whose weights start a new run (warm start), ignored when the
            run resumes from its own checkpoint.
        tf_config: the parsed ``TF_CONFIG`` of this worker, or None.

    Returns:
        A :class:`TrainResult` (full summary on the chief).
    """
    role = worker_role(tf_config)
    manifest = read_manifest(data)  # read once: the checks, the input and the run's tags use it
    cfg = resolve_auto(cfg, manifest.labels, manifest.scored)  # a TFJob pod gets the config as given
    has_validation = check_data(data, manifest, cfg, role.workers)
    strategy = make_strategy(tf_config, ctx.threads)
    # From here to the end a stop is recorded and acted on where all workers agree (two stop
    # points, then the steps): one that left alone would leave the others waiting for it in a
    # collective, deaf to their own signals. Entering takes SIGTERM back from TensorFlow, and
    # the signals a `--worker` held pending since it started (wavenet.train.stopping).
    with StopSignals() as stop:
        trainer = set_up_worker(out, cfg, strategy=strategy, role=role, init_model=ctx.init_model,
                                labels=manifest.labels)
        try:
            with contextlib.closing(trainer.checkpoints):
                result = _train_and_export(trainer, data, out, manifest, ctx, stop,
                                           has_validation=has_validation)
        except TrainingStopped:
            if role.workers > 1:
                _cluster_sum(strategy, 1.0)  # as below: no worker leaves before the chief
            raise
        if role.workers > 1:
            # The other workers leave only once the chief has written the model and logged it:
            # a worker that exits while the chief still works stops its heartbeats, and the
            # chief's coordination service then aborts the chief ("tasks have crashed"; seen
            # with a gs:// run directory and a remote MLflow server, where the chief's final
            # steps are long).
            _cluster_sum(strategy, 1.0)
        return result


def _train_and_export(trainer: Trainer, data: str, out: str, manifest: Manifest, ctx: RunContext,
                      stop: StopSignals, *, has_validation: bool) -> TrainResult:
    """The step loop inside the chief's MLflow run, then the export: between the stop points."""
    cfg = trainer.cfg
    _stop_point(trainer, stop)
    iterator = distributed_batches(trainer, data, manifest)
    train_step = make_train_step(trainer)
    validation = Validation(data, manifest, cfg, has_split=has_validation,
                            warn=trainer.role.is_chief)
    with _tracked_run(trainer, out, data, manifest, ctx) as run:
        _stop_point(trainer, stop)
        stats = run_steps(trainer, train_step, iterator,
                          _callbacks(trainer, run, validation, ctx.progress), stop)
        return export_run(trainer, out, stats, validation, run,
                          labels=manifest.labels if cfg.model.conditioned else None)
