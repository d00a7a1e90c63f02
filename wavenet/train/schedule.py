"""The learning-rate schedule: linear warm-up, then half a cosine down to a floor.

One definition, registered with Keras: it is the object that drives the
optimizer (:func:`wavenet.train.setup.make_optimizer`), the value logged as
``learning_rate`` is read back from that optimizer, and
:func:`learning_rate_at` evaluates the same object, so tests check the schedule
that actually trains.
"""

from __future__ import annotations

import math

import keras
import tensorflow as tf

from wavenet.config import TrainConfig

__all__ = ["WarmupCosine", "learning_rate_at"]


@keras.saving.register_keras_serializable(package="wavenet")
class WarmupCosine(keras.optimizers.schedules.LearningRateSchedule):
    """Learning rate of update number ``step`` (0-based, the optimizer's ``iterations``).

    Linear warm-up over ``warmup_steps`` (update 0 uses ``learning_rate /
    warmup_steps``), then half a cosine from ``learning_rate`` down to
    ``learning_rate * min_lr_ratio`` at ``total_steps``; constant after that.

    Args:
        learning_rate: the peak rate, reached at the end of warm-up.
        warmup_steps: updates of linear warm-up (0: none).
        total_steps: the update at which the cosine reaches the floor.
        min_lr_ratio: the floor as a fraction of ``learning_rate``.
    """

    def __init__(self, learning_rate: float, warmup_steps: int, total_steps: int,
                 min_lr_ratio: float):
        self.learning_rate = float(learning_rate)
        self.warmup_steps = int(warmup_steps)
        self.total_steps = int(total_steps)
        self.min_lr_ratio = float(min_lr_ratio)

    @classmethod
    def from_train_config(cls, t: TrainConfig) -> WarmupCosine:
        return cls(t.learning_rate, t.warmup_steps, t.steps, t.min_lr_ratio)

    def __call__(self, step):
        step = tf.cast(step, tf.float32)
        lr = tf.constant(self.learning_rate, tf.float32)
        warm = float(self.warmup_steps)
        progress = tf.clip_by_value(
            (step - warm) / float(max(1, self.total_steps - self.warmup_steps)), 0.0, 1.0)
        floor = self.min_lr_ratio
        cosine = lr * (floor + (1.0 - floor) * 0.5 * (1.0 + tf.cos(math.pi * progress)))
        if self.warmup_steps > 0:
            return tf.where(step < warm, lr * (step + 1.0) / warm, cosine)
        return cosine

    def get_config(self) -> dict:
        return {"learning_rate": self.learning_rate, "warmup_steps": self.warmup_steps,
                "total_steps": self.total_steps, "min_lr_ratio": self.min_lr_ratio}


def learning_rate_at(step: float, train_cfg: TrainConfig) -> float:
    """The schedule's rate for update ``step`` (evaluated by the same object the optimizer uses)."""
    return float(WarmupCosine.from_train_config(train_cfg)(step))
