"""How training shows progress, with no TensorFlow (launchers resolve the mode): a tqdm bar on
a terminal, one line every N steps in a log (a pipeline step's, a pod's: a bar's carriage
returns would become hundreds of lines there), or nothing.

The displays are callbacks of :func:`wavenet.train.loop.run_steps`: ``on_step(report, stats)``
gets its :class:`~wavenet.train.loop.StepReport` and :class:`~wavenet.train.loop.LoopStats`.
"""

from __future__ import annotations

import datetime
import math
import sys
import time
from collections.abc import Callable
from typing import IO, Any

from tqdm import tqdm

__all__ = ["PROGRESS_MODES", "progress_mode", "progress_interval", "ProgressBar", "ProgressLines",
           "progress_callback"]

PROGRESS_MODES = ("bar", "lines", "off")


def progress_mode(progress: bool | str, stream: IO | None = None) -> str:
    """The progress display for ``progress``: True or ``"auto"`` pick ``"bar"`` when ``stream``
    (default stderr) is a terminal and ``"lines"`` otherwise; False is ``"off"``.

    Raises:
        ValueError: an unknown mode.
    """
    if progress is False:
        return "off"
    if progress is True or progress == "auto":
        stream = sys.stderr if stream is None else stream
        return "bar" if getattr(stream, "isatty", lambda: False)() else "lines"
    if progress not in PROGRESS_MODES:
        raise ValueError(f"progress must be one of auto, {', '.join(PROGRESS_MODES)}. "
                         f"Received: progress={progress!r}")
    return progress


def progress_interval(total_steps: int, log_every: int, lines: int = 10) -> int:
    """Steps between progress lines: about ``lines`` per run, a multiple of ``log_every``."""
    per_line = max(1, math.ceil(total_steps / max(1, lines)))
    return max(1, log_every) * max(1, math.ceil(per_line / max(1, log_every)))


def _clock(seconds: float) -> str:
    return str(datetime.timedelta(seconds=int(round(seconds))))


class ProgressLines:
    """One line every ``every`` steps and at the last: step/total, bits, samples/s, ETA.

    ``bits`` is the mean training loss over the steps since the previous line;
    samples/s and the ETA come from the timed steps so far (the first step,
    which traces and compiles, is left out).
    """

    def __init__(self, total: int, every: int, stream: IO | None = None,
                 clock: Callable[[], float] = time.monotonic):
        self.total, self.every, self.stream, self.clock = total, max(1, every), stream, clock
        self.started = clock()
        self.bits: list[float] = []

    def line(self, report: Any, stats: Any) -> str:
        bits = sum(self.bits) / len(self.bits)
        rate = stats.samples_per_s
        step_s = stats.timed_seconds / stats.timed_steps if stats.timed_steps else None
        eta = "?" if step_s is None else _clock(step_s * (self.total - report.step))
        return (f"train step {report.step}/{self.total} ({100 * report.step / self.total:.0f}%) "
                f"bits {bits:.3f} samples/s {rate or 0.0:,.0f} "
                f"elapsed {_clock(self.clock() - self.started)} ETA {eta}")

    def on_step(self, report: Any, stats: Any) -> None:
        self.bits.append(report.bits)
        if report.step % self.every == 0 or report.step == self.total:
            stream = self.stream or sys.stderr
            stream.write(self.line(report, stats) + "\n")
            stream.flush()
            self.bits = []

    def close(self) -> None:
        pass


class _Off:
    def on_step(self, report: Any, stats: Any) -> None:
        pass

    def close(self) -> None:
        pass


class ProgressBar:
    """A tqdm bar on stderr: steps, bits, samples per second."""

    def __init__(self, total: int, initial: int, enabled: bool):
        self.bar = tqdm(total=total, initial=initial, unit="step", dynamic_ncols=True,
                        disable=not enabled, file=sys.stderr)

    def on_step(self, report: Any, stats: Any) -> None:
        self.bar.set_postfix_str(f"bits={report.bits:.3f} samples/s={stats.samples_per_s or 0.0:,.0f}",
                                 refresh=False)
        self.bar.update(1)

    def close(self) -> None:
        self.bar.close()


def progress_callback(mode: str, total: int, initial: int, log_every: int) -> Any:
    """The progress display of ``mode`` (see :func:`progress_mode`) for steps ``initial..total``."""
    if mode == "bar":
        return ProgressBar(total, initial, enabled=True)
    if mode == "lines":
        return ProgressLines(total, progress_interval(total, log_every))
    return _Off()
