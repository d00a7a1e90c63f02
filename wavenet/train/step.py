"""The distributed training step and the validation score.

The maths does not depend on the number of workers: the global batch is fixed
(each of R replicas computes ``global_batch / R`` examples), per-example
bits/sample are summed and divided by the *global* batch size, gradients are
all-reduced (summed) once, then clipped by their global norm, then applied
identically on every replica.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator

import keras
import tensorflow as tf

from wavenet.config import ExperimentConfig
from wavenet.data.dataset import validation_dataset
from wavenet.data.manifest import Manifest
from wavenet.errors import DataError
from wavenet.model import WaveNet, bits_per_sample
from wavenet.train.setup import Trainer

__all__ = ["make_train_step", "bits_fn", "injected_noise", "Validation"]


def make_train_step(
        trainer: Trainer) -> Callable[[Iterator, bool], tuple[tf.Tensor, tf.Tensor, tf.Tensor, tf.Tensor]]:
    """A compiled step: ``(iterator, stop) -> (bits per sample, gradient norm, learning rate, stops)``.

    The learning rate is the one the optimizer applied in this update (read
    from the optimizer, i.e. from its :class:`~wavenet.train.schedule.WarmupCosine`).
    ``stop`` is this worker's stop request (:mod:`wavenet.train.stopping`);
    ``stops`` is its sum over all replicas, the same on every worker: > 0 means
    the cluster stops after this step. The flag travels in the loss's
    all-reduce, packed with the loss into one 2-vector, so it adds no collective.
    """
    model, optimizer, t = trainer.model, trainer.optimizer, trainer.cfg.train
    g = t.global_batch_size
    loss_scaled = isinstance(optimizer, keras.optimizers.LossScaleOptimizer)

    top = model.config.quantization_channels - 1

    def forward_backward(crops, labels, notes, seed):
        read = None
        if t.input_noise > 0:  # the same noise for the same step, replica and train.seed
            read = injected_noise(crops, seed, t.input_noise, top)
        with tf.GradientTape() as tape:
            bits = bits_per_sample(model, crops, labels, training=True, read=read, notes=notes)
            # Sum over this replica's examples / global batch: after the
            # all-reduce sum this is the mean over the global batch.
            loss = tf.nn.compute_average_loss(bits, global_batch_size=g)
            scaled = optimizer.scale_loss(loss) if loss_scaled else loss
        return loss, tape.gradient(scaled, model.trainable_variables)

    if trainer.jit:
        forward_backward = tf.function(forward_backward, jit_compile=True)

    def replica_step(crops, labels, notes, stop):
        replica = tf.distribute.get_replica_context().replica_id_in_sync_group
        seed = tf.stack([tf.cast(optimizer.iterations, tf.int64),
                         tf.cast(replica, tf.int64) + 65_536 * t.seed])
        loss, grads = forward_backward(crops, labels, notes, seed)
        # Dense gradients (the embedding's arrive as IndexedSlices): one fixed
        # all-reduce layout, and the same summation whatever the batch holds.
        grads = [tf.convert_to_tensor(gr) for gr in grads]
        ctx = tf.distribute.get_replica_context()
        loss_and_stop = tf.stack([loss, tf.cast(stop, loss.dtype)])
        reduced = ctx.all_reduce(tf.distribute.ReduceOp.SUM, [loss_and_stop] + grads)
        loss, stops, grads = reduced[0][0], reduced[0][1], reduced[1:]
        scale = tf.cast(optimizer.dynamic_scale, tf.float32) if loss_scaled else 1.0
        norm = tf.linalg.global_norm(grads)
        if t.gradient_clip_norm > 0:
            # Under float16 loss scaling the gradients are scaled by `scale`;
            # clipping them at clip * scale is clipping the true ones at clip.
            grads, _ = tf.clip_by_global_norm(grads, t.gradient_clip_norm * scale, use_norm=norm)
        learning_rate = tf.cast(optimizer.learning_rate, tf.float32)  # for this update
        optimizer.apply(grads, model.trainable_variables)
        return loss, norm / scale, learning_rate, stops

    @tf.function
    def compiled_step(iterator, stop):
        crops, labels, notes = next(iterator)
        results = trainer.strategy.run(replica_step, args=(crops, labels, notes, stop))
        return tuple(trainer.strategy.experimental_local_results(r)[0] for r in results)

    # The flag as one of two ready tensors: a Python value would retrace the step.
    flags = (tf.constant(0.0), tf.constant(1.0))

    def train_step(iterator, stop: bool = False):
        return compiled_step(iterator, flags[bool(stop)])

    return train_step


def injected_noise(codes: tf.Tensor, seed: tf.Tensor, stddev: float, top: int) -> tf.Tensor:
    """``codes`` plus Gaussian noise of ``stddev`` code steps, rounded and kept in [0, top]:
    what the network reads under ``train.input_noise`` (the targets stay ``codes``)."""
    noise = tf.random.stateless_normal(tf.shape(codes), seed, stddev=stddev)
    return tf.cast(tf.clip_by_value(tf.round(tf.cast(codes, tf.float32) + noise), 0.0, top), codes.dtype)


def bits_fn(model: WaveNet) -> Callable[[tf.Tensor, tf.Tensor, tf.Tensor], tf.Tensor]:
    """A compiled ``(crops, labels, notes) -> (B,)`` bits per sample of ``model``."""
    return tf.function(lambda crops, labels, notes: bits_per_sample(model, crops, labels, notes=notes),
                       reduce_retracing=True)


class Validation:
    """Mean bits per sample over the first ``train.validation_batches`` validation batches.

    Deterministic (the same windows every time). When the data has no usable
    validation split, calling it returns None: training goes on, only the
    validation metrics are lost (the chief says so once).
    """

    def __init__(self, data: str, manifest: Manifest, cfg: ExperimentConfig, *, has_split: bool,
                 warn: bool):
        self.data, self.manifest, self.cfg = data, manifest, cfg
        self.available = has_split
        if has_split:
            try:
                self._dataset()
            except DataError as e:
                if warn:
                    print(f"warning: no validation metrics: {e}", file=sys.stderr)
                self.available = False

    def _dataset(self):
        t = self.cfg.train
        return validation_dataset(self.data, self.cfg, t.global_batch_size, window=t.window,
                                  manifest=self.manifest)

    def __call__(self, fn: Callable[[tf.Tensor, tf.Tensor, tf.Tensor], tf.Tensor]) -> float | None:
        """Score with ``fn`` (from :func:`bits_fn`); None without a validation split."""
        if not self.available:
            return None
        total, count = 0.0, 0
        for crops, labels, notes in self._dataset().take(self.cfg.train.validation_batches or -1):
            bits = fn(crops, labels, notes).numpy()
            total += float(bits.sum())
            count += len(bits)
        return total / count if count else None

