"""Distributed training: a custom loop under MultiWorkerMirroredStrategy.

Keras 3 ``model.fit`` does not run under ``tf.distribute.MultiWorkerMirroredStrategy``
(keras-team/keras#20585), so the loop is written out with ``strategy.run``.
One code path serves three set-ups:

* one process (``wavenet train DATA --out RUN``): a one-worker strategy;
* N local processes (``--workers N``): :mod:`wavenet.launch` starts N copies of
  the worker command on 127.0.0.1, each with its own ``TF_CONFIG``;
* N pods of a Kubeflow TFJob: the operator sets ``TF_CONFIG`` and every pod runs
  ``wavenet train DATA --out RUN_DIR --config CFG --worker``.

The maths does not depend on the number of workers: the global batch is fixed
(each of R replicas computes ``global_batch / R`` examples), per-example
bits/sample are summed and divided by the *global* batch size, gradients are
all-reduced (summed) once, then clipped by their global norm, then applied
identically on every replica. Learning rate: linear warm-up then cosine decay
to ``learning_rate * min_lr_ratio``.

Fault tolerance: the chief checkpoints (model, optimizer, step) to
``RUN_DIR/checkpoints`` every ``train.checkpoint_every`` steps; re-running the
same command resumes from the latest one, with a fresh data order
(seed + step) and the same MLflow run (its id is kept in
``RUN_DIR/mlflow_run_id``).
"""

from __future__ import annotations

import dataclasses
import datetime
import hashlib
import json
import math
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from wavenet import storage
from wavenet.config import ExperimentConfig, TrainConfig
from wavenet.errors import ConfigError, DataError, TrackingError, WavenetError

__all__ = [
    "TrainResult",
    "learning_rate_at",
    "resolve_precision",
    "resolve_jit_compile",
    "manifest_sha256",
    "default_run_name",
    "worker_role",
    "train",
    "train_worker",
]

RUN_ID_FILE = "mlflow_run_id"
PENDING_FILE = "mlflow_pending_metrics.json"
SUMMARY_FILE = "train_summary.json"
MODEL_FILE = "model.keras"
CONFIG_FILE = "config.yaml"
CHECKPOINTS = "checkpoints"


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


# -- pure helpers ---------------------------------------------------------------

def learning_rate_at(step: int, train_cfg: TrainConfig) -> float:
    """Learning rate of update number ``step`` (0-based).

    Linear warm-up over ``warmup_steps`` (update 0 uses lr / warmup_steps),
    then half a cosine from ``learning_rate`` down to
    ``learning_rate * min_lr_ratio`` at ``steps``; constant after that.
    """
    lr, warm, total = train_cfg.learning_rate, train_cfg.warmup_steps, train_cfg.steps
    if warm > 0 and step < warm:
        return lr * (step + 1) / warm
    progress = min(1.0, max(0.0, (step - warm) / max(1, total - warm)))
    floor = train_cfg.min_lr_ratio
    return lr * (floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * progress)))


def resolve_precision(train_cfg: TrainConfig, has_gpu: bool) -> str:
    """The Keras dtype policy: ``auto`` is mixed_bfloat16 on GPU, float32 on CPU."""
    if train_cfg.precision == "auto":
        return "mixed_bfloat16" if has_gpu else "float32"
    return train_cfg.precision


def resolve_jit_compile(train_cfg: TrainConfig, has_gpu: bool) -> bool:
    """Whether the forward/backward pass is XLA-compiled.

    ``auto`` is on for GPU and for CPU alike: on CPU, XLA fuses the gate's
    element-wise ops and the causal shifts around the matmuls, and a training
    step of the bench and demo models ran 1.3-1.5x faster on one core
    (``wavenet bench train`` reports both). ``has_gpu`` is kept so a device
    where it does not pay can be excluded here.
    """
    if train_cfg.jit_compile == "auto":
        return True
    return train_cfg.jit_compile == "on"


def manifest_sha256(data_dir: str) -> str:
    """sha256 of the data's manifest.json bytes: the data version tag of a run."""
    from wavenet.data import MANIFEST, read_manifest

    read_manifest(data_dir)  # a clear DataError when it is missing or broken
    return hashlib.sha256(storage.read_bytes(storage.join(data_dir, MANIFEST))).hexdigest()


def default_run_name(cfg: ExperimentConfig, data_hash: str, now: datetime.datetime) -> str:
    """``<preset>-<data hash[:8]>-<UTC start time>``: runs tell themselves apart."""
    return f"{cfg.preset}-{data_hash[:8]}-{now.strftime('%Y%m%d-%H%M%S')}"


def worker_role(tf_config: Mapping[str, Any] | None) -> tuple[int, int, bool]:
    """``(index, number of workers, is_chief)`` from a TF_CONFIG dict (None: one process).

    The chief is the ``chief`` task when the cluster has one, else worker 0
    (the Kubeflow training operator and :mod:`wavenet.launch` both use the latter).
    """
    if not tf_config:
        return 0, 1, True
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
    workers = list(cluster.get("worker", []))
    n = len(chiefs) + len(workers)
    if task_type == "chief":
        return 0, n, True
    index = task_index + len(chiefs)
    return index, n, index == 0


def _check_data(data_dir: str, cfg: ExperimentConfig, workers: int) -> bool:
    """Fail in one line before training; returns whether a validation split exists."""
    from wavenet.data import shard_paths

    train_files = shard_paths(data_dir, "train")
    if not train_files:
        raise DataError(f"{data_dir} has no training shards with examples")
    if cfg.train.input_sharding == "file" and len(train_files) < workers:
        raise DataError(
            f"{data_dir} has {len(train_files)} training shards but training uses {workers} "
            f"workers: each worker needs at least one shard (re-run preprocess with "
            f"data.num_shards >= {workers}, or set train.input_sharding=batch)")
    return bool(shard_paths(data_dir, "validation"))


def _check_batch(cfg: ExperimentConfig, replicas: int) -> None:
    g = cfg.train.global_batch_size
    if g % replicas:
        raise ConfigError(
            f"train.global_batch_size must be divisible by the number of replicas ({replicas}). "
            f"Received: train.global_batch_size={g}")


# -- the command ---------------------------------------------------------------

def train(data: str, out: str, cfg: ExperimentConfig, *, workers: int = 1, steps: int | None = None,
          tracking_uri: str | None = None, experiment: str | None = None,
          run_name: str | None = None, progress: bool = True, worker: bool = False,
          threads: int = 0, init_model: str | None = None,
          environ: Mapping[str, str] | None = None) -> TrainResult:
    """Train (or resume training) a WaveNet on the shards in ``data``.

    Args:
        data: folder or gs:// prefix with manifest.json and shards.
        out: the run directory (checkpoints, model.keras, config.yaml,
            train_summary.json). Re-running with the same ``out`` resumes.
        cfg: the experiment config.
        workers: local worker processes (>1: started by :mod:`wavenet.launch`).
        steps: overrides ``train.steps``.
        tracking_uri: MLflow URI (default ``MLFLOW_TRACKING_URI`` or ./mlflow.db).
        experiment: MLflow experiment (default ``cfg.name``).
        run_name: MLflow run name (default preset-datahash-starttime).
        progress: a progress bar on the chief.
        worker: run as one worker of the cluster described by ``TF_CONFIG`` in
            ``environ`` (a TFJob pod); ``workers`` is then ignored.
        threads: TensorFlow intra/inter-op threads per worker (0: TensorFlow's
            default in one process, cores / workers for local workers).
        init_model: warm start: a ``.keras`` path or MLflow model URI (e.g.
            ``models:/wavenet@champion``) whose weights initialise a new run.
            Its architecture must equal ``cfg.model``; a run that already has
            checkpoints resumes from them instead.
        environ: environment to read ``TF_CONFIG``, ``MLFLOW_*`` and
            ``KFP_RUN_ID`` from (default ``os.environ``).

    Returns:
        A :class:`TrainResult`.

    Raises:
        ConfigError, DataError, TrackingError: bad input, found before training.
        wavenet.launch.WorkerError: a local worker failed.
    """
    env = dict(os.environ if environ is None else environ)
    if steps is not None:
        cfg = cfg.with_overrides({"train.steps": steps})
    from wavenet import tracking

    uri = tracking.resolve_tracking_uri(tracking_uri, env)
    if worker:
        raw = env.get("TF_CONFIG")
        if not raw:
            raise ConfigError("--worker needs TF_CONFIG in the environment (set by the TFJob "
                              "operator or wavenet.launch)")
        try:
            tf_config = json.loads(raw)
        except json.JSONDecodeError as e:
            raise ConfigError(f"TF_CONFIG is not valid JSON: {e}") from None
        from wavenet.registry import is_mlflow_uri

        if init_model and is_mlflow_uri(init_model):
            raise ConfigError("--worker reads --init-model as a .keras path (local or gs://) that "
                              "every worker can open; resolve MLflow URIs before starting the "
                              f"workers. Received: init_model={init_model!r}")
        return train_worker(data, out, cfg, tf_config=tf_config, tracking_uri=uri,
                            experiment=experiment, run_name=run_name, progress=progress,
                            threads=threads, kfp_run_id=env.get("KFP_RUN_ID"),
                            init_model=init_model, environ=env)
    if not isinstance(workers, int) or workers < 1:
        raise ConfigError(f"workers must be an integer >= 1. Received: workers={workers!r}")
    _check_batch(cfg, workers)
    _check_data(data, cfg, workers)
    tracking.check_tracking_server(uri)
    if init_model:
        init_model = prepare_init_model(init_model, out, cfg, uri)
    if workers == 1:
        return train_worker(data, out, cfg, tf_config=None, tracking_uri=uri,
                            experiment=experiment, run_name=run_name, progress=progress,
                            threads=threads, kfp_run_id=env.get("KFP_RUN_ID"),
                            init_model=init_model, environ=env)

    from wavenet.launch import run_local_workers

    storage.makedirs(out)
    cfg_path = storage.join(out, CONFIG_FILE)
    cfg.save(cfg_path)
    per_worker = threads or max(1, (os.cpu_count() or 1) // workers)
    base = [sys.executable, "-m", "wavenet.cli", "train", data, "--out", out, "--config", cfg_path,
            "--worker", "--tracking-uri", uri, "--threads", str(per_worker)]
    if experiment:
        base += ["--experiment", experiment]
    if run_name:
        base += ["--run-name", run_name]
    if init_model:
        base += ["--init-model", init_model]
    commands = [base + ([] if progress and i == 0 else ["--no-progress"]) for i in range(workers)]
    from wavenet.tracking import FAST_FAIL_HTTP_ENV

    child_env = {**FAST_FAIL_HTTP_ENV, **env}
    child_env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    run_local_workers(commands, child_env)
    summary = json.loads(storage.read_text(storage.join(out, SUMMARY_FILE)))
    return TrainResult(model_path=summary["model_path"], summary=summary,
                       run_id=summary.get("run_id"), out_dir=out)


INIT_MODEL_FILE = "init_model.keras"


def _check_same_architecture(source: str, found, cfg: ExperimentConfig) -> None:
    if found != cfg.model:
        raise ConfigError(f"cannot warm start from {source}: its model config differs from this "
                          f"run's. Received: {found}, expected: {cfg.model}")


def prepare_init_model(init_model: str, out: str, cfg: ExperimentConfig, tracking_uri: str) -> str:
    """Check a warm-start model and return a ``.keras`` path every worker can read.

    MLflow URIs are resolved once, here, and the model is saved into the run
    directory (workers and resumed runs then read that file).
    """
    from wavenet import registry
    from wavenet.model import save_model

    source = registry.load_wavenet(init_model, tracking_uri)
    _check_same_architecture(init_model, source.config, cfg)
    if not registry.is_mlflow_uri(init_model):
        return init_model
    path = storage.join(out, INIT_MODEL_FILE)
    storage.makedirs(out)
    save_model(source, path)
    return path


# -- one worker ----------------------------------------------------------------

def _make_optimizer(cfg: ExperimentConfig, precision: str):
    import keras
    import tensorflow as tf

    t = cfg.train

    class WarmupCosine(keras.optimizers.schedules.LearningRateSchedule):
        """:func:`learning_rate_at` in TensorFlow ops (step = optimizer.iterations)."""

        def __call__(self, step):
            step = tf.cast(step, tf.float32)
            lr = tf.constant(t.learning_rate, tf.float32)
            warm = float(t.warmup_steps)
            progress = tf.clip_by_value((step - warm) / float(max(1, t.steps - t.warmup_steps)),
                                        0.0, 1.0)
            cosine = lr * (t.min_lr_ratio + (1.0 - t.min_lr_ratio) * 0.5
                           * (1.0 + tf.cos(math.pi * progress)))
            if t.warmup_steps > 0:
                return tf.where(step < warm, lr * (step + 1.0) / warm, cosine)
            return cosine

        def get_config(self):
            return dataclasses.asdict(t)

    class PreReducedAdam(keras.optimizers.Adam):
        """Adam that trusts its gradients to be all-reduced already.

        Keras 3's TensorFlow optimizer sums gradients across replicas inside
        ``apply`` and clips them *before* that sum (per replica). The loop
        below all-reduces first and clips the global gradient by its global
        norm, as a single process would, so the optimizer must not sum again.
        """

        def _all_reduce_sum_gradients(self, grads_and_vars):
            return list(grads_and_vars)

    opt = PreReducedAdam(learning_rate=WarmupCosine(), use_ema=t.ema_decay > 0,
                         ema_momentum=t.ema_decay or 0.99)
    if precision == "mixed_float16":
        opt = keras.optimizers.LossScaleOptimizer(opt)
    return opt


def _strategy(tf_config: Mapping[str, Any] | None):
    import tensorflow as tf

    if tf_config:
        cluster = tf.train.ClusterSpec(dict(tf_config["cluster"]))
        resolver = tf.distribute.cluster_resolver.SimpleClusterResolver(
            cluster, task_type=tf_config["task"]["type"], task_id=int(tf_config["task"]["index"]),
            rpc_layer=tf_config.get("rpc_layer", "grpc"))
    else:
        # Explicitly a one-worker cluster: a stray TF_CONFIG in the shell must not
        # turn a one-process run into a worker waiting for peers.
        resolver = tf.distribute.cluster_resolver.SimpleClusterResolver(
            tf.train.ClusterSpec({}), task_type="worker", task_id=0, rpc_layer="grpc")
    return tf.distribute.MultiWorkerMirroredStrategy(cluster_resolver=resolver)


def _read_optional(path: str) -> str | None:
    return storage.read_text(path).strip() if storage.exists(path) else None


def train_worker(data: str, out: str, cfg: ExperimentConfig, *, tf_config: Mapping[str, Any] | None,
                 tracking_uri: str, experiment: str | None = None, run_name: str | None = None,
                 progress: bool = True, threads: int = 0, kfp_run_id: str | None = None,
                 init_model: str | None = None,
                 environ: Mapping[str, str] | None = None) -> TrainResult:
    """Run one worker of a training cluster (or the only one when ``tf_config`` is None).

    Every worker of the cluster runs this with the same arguments and its own
    ``tf_config``; the chief also tracks to MLflow, checkpoints to
    ``out/checkpoints`` and writes the final artifacts.

    Args:
        data: shards folder.
        out: run directory, shared by all workers (a PVC or gs:// on a cluster).
        cfg: the experiment config (``train.steps`` already final).
        tf_config: the parsed ``TF_CONFIG`` of this worker, or None.
        tracking_uri: resolved MLflow URI.
        experiment: MLflow experiment (default ``cfg.name``).
        run_name: name of a new MLflow run (default :func:`default_run_name`).
        progress: show a progress bar (chief only).
        threads: TensorFlow intra/inter-op threads (0: default).
        kfp_run_id: Kubeflow Pipelines run id, tagged on the MLflow run.
        init_model: a ``.keras`` file whose weights start a new run (warm start);
            ignored when the run resumes from its own checkpoint.
        environ: environment for :func:`wavenet.tracking.start_run` (MLFLOW_RUN_ID nesting).

    Returns:
        A :class:`TrainResult` (full summary on the chief).
    """
    index, num_workers, is_chief = worker_role(tf_config)
    has_val = _check_data(data, cfg, num_workers)
    import tensorflow as tf

    if threads:
        try:
            tf.config.threading.set_intra_op_parallelism_threads(threads)
            tf.config.threading.set_inter_op_parallelism_threads(threads)
        except RuntimeError:
            pass  # TensorFlow already running in this process: keep its pools
    strategy = _strategy(tf_config)
    import keras

    from wavenet import tracking
    from wavenet.data import train_dataset, validation_dataset
    from wavenet.model import bits_per_sample, build_model

    replicas = strategy.num_replicas_in_sync
    _check_batch(cfg, replicas)
    t = cfg.train
    has_gpu = bool(tf.config.list_logical_devices("GPU"))
    precision = resolve_precision(t, has_gpu)
    jit = resolve_jit_compile(t, has_gpu)
    keras.mixed_precision.set_global_policy(precision)
    keras.utils.set_random_seed(t.seed)
    data_hash = manifest_sha256(data)
    started = time.time()

    with strategy.scope():
        model = build_model(cfg)
        optimizer = _make_optimizer(cfg, precision)
        optimizer.build(model.trainable_variables)
    step_var = tf.Variable(0, dtype=tf.int64, trainable=False, name="step")
    ckpt = tf.train.Checkpoint(model=model, optimizer=optimizer, step=step_var)
    chief_dir = storage.join(out, CHECKPOINTS)
    # MultiWorkerMirroredStrategy needs every worker to save (saving may run
    # collectives); only the chief's copy is kept, the others write to
    # private temporary folders deleted at the end.
    write_dir = chief_dir if is_chief else tempfile.mkdtemp(prefix=f"wavenet-worker{index}-ckpt-")
    manager = tf.train.CheckpointManager(ckpt, write_dir, max_to_keep=t.keep_checkpoints)
    latest = tf.train.latest_checkpoint(chief_dir)
    if latest:
        try:
            ckpt.restore(latest).assert_existing_objects_matched()
        except (AssertionError, ValueError, tf.errors.OpError) as e:
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise ConfigError(f"cannot resume from {latest}: it does not match this config "
                              f"({first[:200]}); use a new --out or the run's own "
                              f"{CONFIG_FILE}") from None
    start_step = int(step_var.numpy())
    if init_model and not latest:
        from wavenet.model import load_model

        # Every worker reads the same file, so replicas start identical.
        source = load_model(init_model)
        _check_same_architecture(init_model, source.config, cfg)
        model.set_weights(source.get_weights())

    # A fresh data order per resume: the same seed would replay the batches
    # already trained on; seed + step continues with new ones.
    data_seed = t.seed + start_step
    tf.random.set_seed(data_seed)
    g = t.global_batch_size

    def dataset_fn(ctx: tf.distribute.InputContext):
        per_replica = ctx.get_per_replica_batch_size(g)
        if t.input_sharding == "file":
            return train_dataset(data, cfg, per_replica, input_context=ctx, seed=data_seed)
        per_pipeline = g // ctx.num_input_pipelines
        lo = ctx.input_pipeline_id * per_pipeline
        ds = train_dataset(data, cfg, g, input_context=None, seed=data_seed)
        ds = ds.map(lambda c, lab: (c[lo:lo + per_pipeline], lab[lo:lo + per_pipeline]))
        if per_pipeline != per_replica:
            ds = ds.unbatch().batch(per_replica, drop_remainder=True)
        return ds

    dist_ds = strategy.distribute_datasets_from_function(dataset_fn)
    iterator = iter(dist_ds)
    conditioned = cfg.model.conditioned
    loss_scaled = isinstance(optimizer, keras.optimizers.LossScaleOptimizer)

    def forward_backward(crops, labels):
        with tf.GradientTape() as tape:
            bits = bits_per_sample(model, crops, labels if conditioned else None, training=True)
            # Sum over this replica's examples / global batch: after the
            # all-reduce sum this is the mean over the global batch.
            loss = tf.nn.compute_average_loss(bits, global_batch_size=g)
            scaled = optimizer.scale_loss(loss) if loss_scaled else loss
        return loss, tape.gradient(scaled, model.trainable_variables)

    if jit:
        forward_backward = tf.function(forward_backward, jit_compile=True)

    # The last block's residual output feeds nothing (only its skip does), so
    # its residual weights get no gradient; leave them out of the update.
    trained = [v for v, gr in zip(model.trainable_variables, _probe_gradients(model, cfg))
               if gr is not None]

    def replica_step(crops, labels):
        loss, grads = forward_backward(crops, labels)
        # Dense gradients (the embedding's arrive as IndexedSlices): one fixed
        # all-reduce layout, and the same summation whatever the batch holds.
        grads = [tf.convert_to_tensor(gr) for gr in grads if gr is not None]
        ctx = tf.distribute.get_replica_context()
        reduced = ctx.all_reduce(tf.distribute.ReduceOp.SUM, [loss] + grads)
        loss, grads = reduced[0], reduced[1:]
        scale = tf.cast(optimizer.dynamic_scale, tf.float32) if loss_scaled else 1.0
        norm = tf.linalg.global_norm(grads)
        if t.gradient_clip_norm > 0:
            # Under float16 loss scaling the gradients are scaled by `scale`;
            # clipping them at clip * scale is clipping the true ones at clip.
            grads, _ = tf.clip_by_global_norm(grads, t.gradient_clip_norm * scale, use_norm=norm)
        optimizer.apply(grads, trained)
        return loss, norm / scale

    @tf.function
    def train_step(it):
        crops, labels = next(it)
        loss, norm = strategy.run(replica_step, args=(crops, labels))
        local = strategy.experimental_local_results
        return local(loss)[0], local(norm)[0]

    val_fn = tf_function_for(model, cfg)

    if has_val:
        try:
            validation_dataset(data, cfg, g, window=t.window)
        except DataError as e:
            # Training can still go on; validation metrics are what is lost.
            if is_chief:
                print(f"warning: no validation metrics: {e}", file=sys.stderr)
            has_val = False

    def validate(fn) -> float | None:
        if not has_val:
            return None
        ds = validation_dataset(data, cfg, g, window=t.window)
        total, count = 0.0, 0
        for crops, labels in ds.take(t.validation_batches or -1):
            bits = fn(crops, labels).numpy()
            total += float(bits.sum())
            count += len(bits)
        return total / count if count else None

    run_id: str | None = None
    buffer: tracking.MetricsBuffer | None = None
    run_ctx = None
    if is_chief:
        storage.makedirs(out)
        prior = _read_optional(storage.join(out, RUN_ID_FILE))
        if prior and not tracking.run_exists(prior, tracking_uri):
            print(f"warning: MLflow run {prior} from {out}/{RUN_ID_FILE} is not in {tracking_uri}; "
                  "starting a new run", file=sys.stderr)
            prior = None
        tags = {"wavenet.stage": "train", "data.manifest_sha256": data_hash, "preset": cfg.preset,
                "workers": str(num_workers), "replicas": str(replicas), "precision": precision}
        if kfp_run_id:
            tags["kfp.run_id"] = kfp_run_id
        if init_model and not latest:
            tags["warm_start"] = init_model
        name = run_name or default_run_name(cfg, data_hash, datetime.datetime.now(datetime.UTC))
        run_ctx = tracking.start_run(experiment or cfg.name, run_name=name, tracking_uri=tracking_uri,
                                     tags=tags, params=cfg.flat(), run_id=prior, environ=environ,
                                     log_system_metrics=True)
        run = run_ctx.__enter__()
        run_id = run.info.run_id
        if run_id != prior:
            storage.write_text_atomic(storage.join(out, RUN_ID_FILE), run_id + "\n")
        pending_path = storage.join(out, PENDING_FILE)
        pending = json.loads(storage.read_text(pending_path)) if storage.exists(pending_path) else []
        buffer = tracking.MetricsBuffer(run_id, tracking_uri, pending=pending)
        if pending:
            buffer.flush(force=True)

    try:
        result = _loop(t, cfg, out, train_step, iterator, manager, step_var, start_step,
                       start_step if latest else -1, validate, val_fn, optimizer, model, is_chief,
                       progress, buffer, num_workers, replicas, precision, jit, started, run_id,
                       data_hash)
    except BaseException as e:
        if run_ctx is not None:
            run_ctx.__exit__(type(e), e, e.__traceback__)
        raise
    finally:
        if not is_chief:
            shutil.rmtree(write_dir, ignore_errors=True)
    if run_ctx is not None:
        run_ctx.__exit__(None, None, None)
    return result


def _loop(t: TrainConfig, cfg: ExperimentConfig, out: str, train_step, iterator, manager,
          step_var, start_step: int, saved_step: int, validate, val_fn, optimizer, model,
          is_chief: bool, progress: bool, buffer, num_workers: int, replicas: int, precision: str,
          jit: bool, started: float, run_id: str | None, data_hash: str) -> TrainResult:
    """The step loop and the final artifacts (split from train_worker for readability)."""
    import keras
    from tqdm import tqdm

    from wavenet import tracking
    from wavenet.model import build_model, save_model

    samples_per_step = t.global_batch_size * t.window
    bar = tqdm(total=t.steps, initial=start_step, unit="step", dynamic_ncols=True,
               disable=not (progress and is_chief), file=sys.stderr)
    step = start_step
    interval_bits: list[float] = []
    interval_norms: list[float] = []
    interval_time, interval_timed = 0.0, 0
    timed_steps, timed_seconds = 0, 0.0
    last_bits = last_norm = None
    try:
        while step < t.steps:
            t0 = time.perf_counter()
            loss, norm = train_step(iterator)
            bits, gnorm = float(loss.numpy()), float(norm.numpy())
            dt = time.perf_counter() - t0
            step += 1
            step_var.assign(step)
            if step > start_step + 1:  # the first step traces and compiles
                timed_steps += 1
                timed_seconds += dt
                interval_time += dt
                interval_timed += 1
            interval_bits.append(bits)
            interval_norms.append(gnorm)
            last_bits, last_norm = bits, gnorm
            if not math.isfinite(bits) and precision != "mixed_float16":
                raise WavenetError(f"training diverged at step {step}: loss is {bits} "
                                   "(lower train.learning_rate or train.gradient_clip_norm)")
            sps = samples_per_step * timed_steps / timed_seconds if timed_seconds else 0.0
            bar.set_postfix_str(f"bits={bits:.3f} samples/s={sps:,.0f}", refresh=False)
            bar.update(1)
            if step % t.checkpoint_every == 0:
                manager.save(checkpoint_number=step)
                saved_step = step
            if is_chief and (step % t.log_every == 0 or step == t.steps):
                metrics = {
                    "train_bits_per_sample": sum(interval_bits) / len(interval_bits),
                    "grad_norm": sum(interval_norms) / len(interval_norms),
                    "learning_rate": learning_rate_at(step - 1, t),
                }
                if interval_timed:
                    metrics["step_time_s"] = interval_time / interval_timed
                    metrics["samples_per_s"] = samples_per_step * interval_timed / interval_time
                buffer.log(metrics, step, flush=False)
                interval_bits, interval_norms = [], []
                interval_time, interval_timed = 0.0, 0
            if is_chief and t.validate_every and step % t.validate_every == 0 and step < t.steps:
                val = validate(val_fn)
                if val is not None:
                    buffer.log({"val_bits_per_sample": val}, step, flush=False)
            if is_chief and step % t.log_every == 0:
                buffer.flush()
        if saved_step != step:
            # Always leave a checkpoint of the final step: a re-run of a finished
            # run then trains nothing more and only redoes the final artifacts.
            manager.save(checkpoint_number=step)
    finally:
        bar.close()

    # The generation model: float32 whatever the training precision (a
    # bfloat16 policy saved with it would slow generation on CPU), and the
    # EMA weights when train.ema_decay > 0 (the raw ones stay in the checkpoint).
    optimizer.finalize_variable_values(model.trainable_variables)
    weights = [v.numpy() for v in model.weights]
    wall = time.time() - started
    if not is_chief:
        return TrainResult(model_path=storage.join(out, MODEL_FILE),
                           summary={"worker": True, "steps": step}, run_id=None, out_dir=out)
    summary_path = storage.join(out, SUMMARY_FILE)
    pending_path = storage.join(out, PENDING_FILE)
    if step == start_step and storage.exists(summary_path) and not storage.exists(pending_path):
        done = json.loads(storage.read_text(summary_path))
        if done.get("steps") == step and done.get("model_uri") and done.get("run_id") == run_id:
            # Re-running a finished, fully logged run: nothing to train or log again.
            return TrainResult(model_path=done["model_path"], summary=done, run_id=run_id,
                               out_dir=out)
    keras.mixed_precision.set_global_policy("float32")
    export = build_model(cfg)
    export.set_weights(weights)
    final_val = validate(tf_function_for(export, cfg))
    model_path = storage.join(out, MODEL_FILE)
    save_model(export, model_path)
    cfg.save(storage.join(out, CONFIG_FILE))
    summary = {
        "steps": step,
        "start_step": start_step,
        "train_bits_per_sample": last_bits,
        "grad_norm": last_norm,
        "val_bits_per_sample": final_val,
        "samples_per_s": (samples_per_step * timed_steps / timed_seconds) if timed_seconds else None,
        "wall_time_s": round(wall, 3),
        "workers": num_workers,
        "replicas": replicas,
        "global_batch_size": t.global_batch_size,
        "precision": precision,
        "jit_compile": jit,
        "ema": t.ema_decay > 0,
        "run_id": run_id,
        "model_path": model_path,
        "data_manifest_sha256": data_hash,
        "peak_rss_mb": round(_peak_rss_mb(), 1),
    }
    if final_val is not None:
        buffer.log({"val_bits_per_sample": final_val}, step, flush=False)
    ok = buffer.flush(force=True)
    model_uri = None
    error = None
    try:
        model_uri = tracking.log_keras_model(export, name="model")
    except Exception as e:  # noqa: BLE001 - an outage must not lose the local results
        error = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
    summary["model_uri"] = model_uri
    storage.write_text_atomic(summary_path, json.dumps(summary, indent=2, sort_keys=True) + "\n")
    if ok and error is None:
        try:
            tracking.set_tags({"model_path": model_path})
            tracking.log_artifacts([storage.join(out, CONFIG_FILE), summary_path])
        except Exception as e:  # noqa: BLE001
            error = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
    if not ok or error:
        storage.write_text_atomic(pending_path, buffer.to_json())
        raise TrackingError(
            f"training finished ({model_path} saved) but MLflow at {buffer.tracking_uri} failed: "
            f"{len(buffer.pending)} metrics queued in {pending_path}"
            + (f", model not logged ({error})" if error else "")
            + "; re-run the same command to log them")
    if storage.exists(pending_path) and not storage.is_gcs(pending_path):
        os.remove(pending_path)
    return TrainResult(model_path=model_path, summary=summary, run_id=run_id, out_dir=out)


def _peak_rss_mb() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux: KiB


def _probe_gradients(model, cfg: ExperimentConfig) -> list:
    """Gradients of a one-example loss (to find variables that never get one)."""
    import tensorflow as tf

    from wavenet.model import bits_per_sample

    crops = tf.zeros((1, cfg.crop_length), tf.int32)
    labels = tf.zeros((1,), tf.int32) if cfg.model.conditioned else None
    with tf.GradientTape() as tape:
        loss = tf.reduce_sum(bits_per_sample(model, crops, labels))
    return tape.gradient(loss, model.trainable_variables)


def tf_function_for(model, cfg: ExperimentConfig):
    """A compiled ``(crops, labels) -> (B,) bits`` for ``model``."""
    import tensorflow as tf

    from wavenet.model import bits_per_sample

    conditioned = cfg.model.conditioned
    return tf.function(lambda c, lab: bits_per_sample(model, c, lab if conditioned else None),
                       reduce_retracing=True)
