"""The step loop, and the callbacks that report on it.

:func:`run_steps` trains from the trainer's current step to ``train.steps``,
checkpointing every ``train.checkpoint_every`` steps and always at the end,
and hands a :class:`StepReport` to a callback after every step. It knows
nothing about progress bars or MLflow: the displays of :mod:`wavenet.train.progress`
and :class:`MetricsReporter` are such callbacks, combined by :class:`Callbacks`.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from wavenet.edges.tracking import MetricsBuffer
from wavenet.errors import WavenetError
from wavenet.train.setup import Trainer
from wavenet.train.stopping import StopSignals, TrainingStopped

__all__ = ["StepReport", "LoopStats", "Callback", "Callbacks", "MetricsReporter", "run_steps"]


@dataclass(frozen=True)
class StepReport:
    """What one training step did."""

    step: int  # updates done, this one included
    bits: float  # training loss, bits per sample (mean over the global batch)
    grad_norm: float  # global gradient norm before clipping
    learning_rate: float  # the rate this update used
    seconds: float | None  # wall time of the step; None for a run's first (it traces and compiles)


@dataclass
class LoopStats:
    """Totals of a run of :func:`run_steps`."""

    samples_per_step: int
    step: int
    log_every: int = 1
    last: StepReport | None = None
    timed_steps: int = 0
    timed_seconds: float = 0.0
    window: list[float] = field(default_factory=list)  # bits since the last log_every multiple

    def add(self, report: StepReport) -> None:
        self.step, self.last = report.step, report
        if (report.step - 1) % self.log_every == 0:
            self.window = []
        self.window.append(report.bits)
        if report.seconds is not None:
            self.timed_steps += 1
            self.timed_seconds += report.seconds

    @property
    def window_bits(self) -> float | None:
        """Mean training bits over the last log window: MLflow's last ``train_bits_per_sample``."""
        return sum(self.window) / len(self.window) if self.window else None

    @property
    def samples_per_s(self) -> float | None:
        """Predicted samples per second over the timed steps."""
        if not self.timed_seconds:
            return None
        return self.samples_per_step * self.timed_steps / self.timed_seconds


class Callback(Protocol):
    def on_step(self, report: StepReport, stats: LoopStats) -> None: ...

    def close(self) -> None: ...


@dataclass
class Callbacks:
    """Several callbacks called in order."""

    callbacks: Sequence[Callback] = field(default_factory=list)

    def on_step(self, report: StepReport, stats: LoopStats) -> None:
        for c in self.callbacks:
            c.on_step(report, stats)

    def close(self) -> None:
        for c in self.callbacks:
            c.close()


class MetricsReporter:
    """Training metrics to MLflow (through a :class:`~wavenet.edges.tracking.MetricsBuffer`).

    Every ``train.log_every`` steps and at the last step: the interval's mean
    ``train_bits_per_sample`` and ``grad_norm``, the ``learning_rate`` of its
    last update, and ``step_time_s``/``samples_per_s`` over its timed steps.
    Every ``train.validate_every`` steps (not the last: the final model is
    scored at export): ``val_bits_per_sample`` from ``validate()``.
    """

    def __init__(self, buffer: MetricsBuffer, total_steps: int, log_every: int, validate_every: int,
                 validate: Callable[[], float | None]):
        self.buffer, self.total_steps = buffer, total_steps
        self.log_every, self.validate_every, self.validate = log_every, validate_every, validate
        self._reset()

    def _reset(self) -> None:
        self.bits: list[float] = []
        self.norms: list[float] = []
        self.seconds, self.timed = 0.0, 0

    def on_step(self, report: StepReport, stats: LoopStats) -> None:
        step = report.step
        self.bits.append(report.bits)
        self.norms.append(report.grad_norm)
        if report.seconds is not None:
            self.seconds += report.seconds
            self.timed += 1
        if step % self.log_every == 0 or step == self.total_steps:
            metrics = {"train_bits_per_sample": sum(self.bits) / len(self.bits),
                       "grad_norm": sum(self.norms) / len(self.norms),
                       "learning_rate": report.learning_rate}
            if self.timed:
                metrics["step_time_s"] = self.seconds / self.timed
                metrics["samples_per_s"] = stats.samples_per_step * self.timed / self.seconds
            self.buffer.log(metrics, step, flush=False)
            self._reset()
        if self.validate_every and step % self.validate_every == 0 and step < self.total_steps:
            val = self.validate()
            if val is not None:
                self.buffer.log({"val_bits_per_sample": val}, step, flush=False)
        if step % self.log_every == 0:
            self.buffer.flush()

    def close(self) -> None:
        pass


def run_steps(trainer: Trainer, train_step: Callable[[Iterator, bool], tuple], iterator: Iterator,
              callback: Callback, stop: StopSignals | None = None) -> LoopStats:
    """Train from ``trainer.step`` to ``train.steps``; report each step to ``callback``.

    Checkpoints every ``train.checkpoint_every`` steps and always leaves one of
    the final step, so re-running a finished run trains nothing more. When
    ``stop`` records a signal here, or any other worker's step reports one, every
    worker saves a checkpoint after the same step and raises
    :class:`~wavenet.train.stopping.TrainingStopped` (:mod:`wavenet.train.stopping`).

    Raises:
        WavenetError: the loss is not finite (except under mixed_float16, whose
            loss scaling skips such steps by design).
        TrainingStopped: a stop was requested; its checkpoint is saved.
    """
    t = trainer.cfg.train
    step = trainer.start_step
    saved = step if trainer.resumed else -1
    stats = LoopStats(samples_per_step=t.samples_per_step, step=step,
                      log_every=max(1, t.log_every))
    try:
        while step < t.steps:
            t0 = time.perf_counter()
            loss, norm, lr, stops = train_step(iterator, stop is not None and stop.requested)
            bits, grad_norm = float(loss.numpy()), float(norm.numpy())
            seconds = time.perf_counter() - t0
            step += 1
            trainer.step.assign(step)
            if not math.isfinite(bits) and trainer.precision != "mixed_float16":
                raise WavenetError(f"training diverged at step {step}: loss is {bits} "
                                   "(lower train.learning_rate or train.gradient_clip_norm)")
            report = StepReport(step=step, bits=bits, grad_norm=grad_norm,
                                learning_rate=float(lr.numpy()),
                                seconds=seconds if step > trainer.start_step + 1 else None)
            stats.add(report)
            if step % t.checkpoint_every == 0:
                trainer.checkpoints.save(step)
                saved = step
            callback.on_step(report, stats)
            if float(stops.numpy()) > 0:  # the same sum on every worker: all stop here
                if saved != step:
                    trainer.checkpoints.save(step)
                raise TrainingStopped(step, t.steps, trainer.checkpoints.store.directory,
                                      stop.signum if stop is not None else None)
        if saved != step:
            trainer.checkpoints.save(step)
    finally:
        callback.close()
    return stats
