"""One worker's set-up: threads, strategy, precision, model and optimizer, checkpoints, input.

:func:`make_strategy` joins the cluster; :func:`set_up_worker` does the rest in the order that makes a run reproducible
(seed, then model, then optimizer, then restore) and returns a :class:`Trainer`,
the state the step loop works on. :class:`Checkpoints` is the one place where
checkpoint storage is decided.
"""

from __future__ import annotations

import shutil
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import keras
import tensorflow as tf

from wavenet.checkpoints import CheckpointStore, MirroringManager
from wavenet.config import ExperimentConfig, TrainConfig
from wavenet.data.dataset import train_dataset
from wavenet.data.manifest import Manifest
from wavenet.edges import storage
from wavenet.errors import ConfigError, one_line
from wavenet.model import WaveNet, build_model
from wavenet.train.checks import WorkerRole, check_batch
from wavenet.train.schedule import WarmupCosine
from wavenet.train.stopping import reclaim_sigterm
from wavenet.train.warm_start import load_init_weights

__all__ = [
    "CHECKPOINTS",
    "resolve_precision",
    "resolve_jit_compile",
    "make_strategy",
    "PreReducedAdam",
    "make_optimizer",
    "Checkpoints",
    "open_checkpoints",
    "Trainer",
    "set_up_worker",
    "distributed_batches",
]

CHECKPOINTS = "checkpoints"


def resolve_precision(train_cfg: TrainConfig, has_gpu: bool) -> str:
    """The Keras dtype policy: ``auto`` is mixed_bfloat16 on GPU, float32 on CPU."""
    if train_cfg.precision == "auto":
        return "mixed_bfloat16" if has_gpu else "float32"
    return train_cfg.precision


def resolve_jit_compile(train_cfg: TrainConfig) -> bool:
    """Whether the forward/backward pass is XLA-compiled.

    ``auto`` is on for GPU and for CPU alike: on CPU, XLA fuses the gate's
    element-wise ops and the causal shifts around the matmuls, and a training
    step of the bench and demo models ran 1.3-1.5x faster on one core
    (``wavenet bench train`` reports both).
    """
    return train_cfg.jit_compile in ("auto", "on")


def _set_threads(threads: int) -> None:
    if threads:
        try:
            tf.config.threading.set_intra_op_parallelism_threads(threads)
            tf.config.threading.set_inter_op_parallelism_threads(threads)
        except RuntimeError:
            pass  # TensorFlow already running in this process: keep its pools


def make_strategy(tf_config: Mapping[str, Any] | None,
                  threads: int = 0) -> tf.distribute.MultiWorkerMirroredStrategy:
    """MultiWorkerMirroredStrategy for the cluster in ``tf_config`` (None: this process alone).

    ``threads``: TensorFlow intra/inter-op threads (0: TensorFlow's default), set first.
    """
    _set_threads(threads)
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
    strategy = tf.distribute.MultiWorkerMirroredStrategy(cluster_resolver=resolver)
    reclaim_sigterm()  # TensorFlow's cluster set-up took SIGTERM (wavenet.train.stopping)
    return strategy


class PreReducedAdam(keras.optimizers.Adam):
    """Adam that trusts its gradients to be all-reduced already.

    Keras 3's TensorFlow optimizer sums gradients across replicas inside
    ``apply`` (``_all_reduce_sum_gradients``, in a replica context). The step
    (:mod:`wavenet.train.step`) all-reduces first and clips the global
    gradient by its global norm, as a single process would, so the optimizer
    must not sum again. This overrides a private Keras method: the test
    ``test_pre_reduced_adam_does_not_sum_again`` fails loudly when Keras
    renames it or stops summing there. (Applying in a cross-replica context
    would avoid the override for Adam, but Keras's LossScaleOptimizer, used for
    mixed_float16, must be applied in a replica context.)
    """

    def _all_reduce_sum_gradients(self, grads_and_vars):
        return list(grads_and_vars)


def make_optimizer(train_cfg: TrainConfig, precision: str) -> keras.optimizers.Optimizer:
    """Adam on the :class:`WarmupCosine` schedule, with EMA and loss scaling when configured."""
    t = train_cfg
    opt = PreReducedAdam(learning_rate=WarmupCosine.from_train_config(t), use_ema=t.ema_decay > 0,
                         ema_momentum=t.ema_decay or 0.99)
    if precision == "mixed_float16":
        opt = keras.optimizers.LossScaleOptimizer(opt)
    return opt


@dataclass
class Checkpoints:
    """Where one worker's checkpoints go.

    The chief writes ``RUN_DIR/checkpoints``, local or ``gs://`` (a bucket is
    mirrored through :mod:`wavenet.checkpoints` with the tested storage layer,
    not TensorFlow's own GCS file system). MultiWorkerMirroredStrategy needs
    every worker to save (saving may run collectives), so the others write to
    private scratch folders, deleted by :meth:`close`. Every worker restores
    from the chief's checkpoints.
    """

    manager: MirroringManager
    store: CheckpointStore
    scratch_dir: str | None

    def latest(self) -> str | None:
        """The chief's latest checkpoint as a local path (downloaded from a bucket), or None."""
        return self.store.fetch_latest()

    def save(self, step: int) -> None:
        self.manager.save(checkpoint_number=step)

    def close(self) -> None:
        if self.scratch_dir:
            shutil.rmtree(self.scratch_dir, ignore_errors=True)


def open_checkpoints(checkpoint: tf.train.Checkpoint, out: str, role: WorkerRole,
                     keep: int) -> Checkpoints:
    """The checkpoint set-up of one worker (the place to change where checkpoints live)."""
    store = CheckpointStore(storage.join(out, CHECKPOINTS))
    scratch = None if role.is_chief else tempfile.mkdtemp(prefix=f"wavenet-worker{role.index}-ckpt-")
    manager = MirroringManager(tf.train.CheckpointManager(checkpoint, scratch or store.local_dir,
                                                          max_to_keep=keep),
                               store, publish=role.is_chief)
    return Checkpoints(manager=manager, store=store, scratch_dir=scratch)


def _restore(checkpoint: tf.train.Checkpoint, latest: str | None) -> None:
    if not latest:
        return
    try:
        checkpoint.restore(latest).assert_existing_objects_matched()
    except (AssertionError, ValueError, tf.errors.OpError) as e:
        raise ConfigError(f"cannot resume from {latest}: it does not match this config "
                          f"({one_line(e, with_type=False)[:200]}); use a new --out or the run's "
                          "own config.yaml") from None


@dataclass
class Trainer:
    """What one worker trains with: built by :func:`set_up_worker`, used by the step loop."""

    cfg: ExperimentConfig
    role: WorkerRole
    strategy: tf.distribute.Strategy
    model: WaveNet
    optimizer: keras.optimizers.Optimizer
    checkpoints: Checkpoints
    step: tf.Variable  # updates done; saved with the checkpoint
    start_step: int  # where this run began (> 0 when resumed)
    resumed: bool
    precision: str
    jit: bool
    started: float  # time.time() at set-up
    warm_start: str = ""  # what a warm start copied (load_init_weights), "" without one

    @property
    def replicas(self) -> int:
        return self.strategy.num_replicas_in_sync


def set_up_worker(out: str, cfg: ExperimentConfig, *, strategy: tf.distribute.Strategy,
                  role: WorkerRole, init_model: str | None = None,
                  labels: Sequence[str] | None = None) -> Trainer:
    """Precision, seeded model and optimizer, restored or warm-started, under ``strategy``.

    Args:
        out: the run directory (checkpoints under ``out/checkpoints``).
        cfg: the experiment config.
        strategy: this worker's :func:`make_strategy`.
        role: this worker's place in the cluster.
        init_model: a ``.keras`` file whose weights start a new run; ignored
            when the run resumes from its own checkpoint.
        labels: the data's label vocabulary (id order): a warm start copies label
            embedding rows by name onto these ids.
    """
    check_batch(cfg, strategy.num_replicas_in_sync)
    precision = resolve_precision(cfg.train, bool(tf.config.list_logical_devices("GPU")))
    keras.mixed_precision.set_global_policy(precision)
    keras.utils.set_random_seed(cfg.train.seed)
    started = time.time()
    with strategy.scope():
        model = build_model(cfg)
        optimizer = make_optimizer(cfg.train, precision)
        optimizer.build(model.trainable_variables)
    step = tf.Variable(0, dtype=tf.int64, trainable=False, name="step")
    checkpoint = tf.train.Checkpoint(model=model, optimizer=optimizer, step=step)
    checkpoints = open_checkpoints(checkpoint, out, role, cfg.train.keep_checkpoints)
    latest = checkpoints.latest()
    _restore(checkpoint, latest)
    warm = ""
    if init_model and not latest:
        # The same file on every worker: replicas agree.
        warm = load_init_weights(model, init_model, cfg, labels)
        if role.is_chief:
            # stderr: `wavenet train` prints its summary as JSON on stdout.
            print(f"warm start from {init_model}: {warm}", file=sys.stderr, flush=True)
    return Trainer(cfg=cfg, role=role, strategy=strategy, model=model, optimizer=optimizer,
                   checkpoints=checkpoints, step=step, start_step=int(step.numpy()),
                   resumed=bool(latest), precision=precision, jit=resolve_jit_compile(cfg.train),
                   started=started, warm_start=warm)


def distributed_batches(trainer: Trainer, data: str, manifest: Manifest) -> Iterator:
    """The endless training input, split across replicas as ``train.input_sharding`` says."""
    cfg, t = trainer.cfg, trainer.cfg.train
    # A fresh data order per resume: the same seed would replay the batches
    # already trained on; seed + step continues with new ones.
    data_seed = t.seed + trainer.start_step
    tf.random.set_seed(data_seed)
    g = t.global_batch_size

    def dataset_fn(ctx: tf.distribute.InputContext):
        per_replica = ctx.get_per_replica_batch_size(g)
        if t.input_sharding == "file":
            return train_dataset(data, cfg, per_replica, input_context=ctx, seed=data_seed,
                                 manifest=manifest)
        per_pipeline = g // ctx.num_input_pipelines
        lo = ctx.input_pipeline_id * per_pipeline
        ds = train_dataset(data, cfg, g, input_context=None, seed=data_seed, manifest=manifest)
        ds = ds.map(lambda *batch: tuple(x[lo:lo + per_pipeline] for x in batch))  # crops, labels, notes
        if per_pipeline != per_replica:
            ds = ds.unbatch().batch(per_replica, drop_remainder=True)
        return ds

    return iter(trainer.strategy.distribute_datasets_from_function(dataset_fn))
