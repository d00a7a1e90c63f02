"""A graceful stop on SIGTERM or SIGINT: a checkpoint at a step every worker agrees on, then exit.

Kubernetes evicts or preempts a pod by sending SIGTERM and waiting the pod's
``terminationGracePeriodSeconds`` before SIGKILL; Ctrl-C sends SIGINT. Without
this, the work since the last periodic checkpoint is lost. With it:

1. :class:`StopSignals` (installed around the step loop) records the signal;
   the step goes on.
2. Each training step all-reduces a stop flag (1 where a signal arrived, else
   0) in the *same* all-reduce as the loss (:func:`wavenet.train.step.make_train_step`):
   no extra collective. Every worker gets the same sum, so all of them see the
   request at the same step S, the first whose all-reduce carried a flag (at
   most two steps after the signal: the one running when it came, then one more).
3. After step S every worker saves checkpoint S through the usual
   :class:`~wavenet.train.setup.Checkpoints` (so a ``gs://`` run directory gets
   it through the same mirror; saving under MultiWorkerMirroredStrategy is a
   collective, which is why the step must be agreed) and raises
   :class:`TrainingStopped`: the chief sends its queued metrics and marks the
   MLflow run KILLED, all workers meet at a barrier, and each exits ``128 +
   signal`` (143 after SIGTERM, 130 after SIGINT; 143 on a worker that got no
   signal itself). The Training Operator retries 143 and 130 under
   ``restartPolicy: ExitCode`` (:mod:`wavenet.train.exit_codes`), as our local
   launcher does, and the restart resumes from exactly step S.

Why not ``tf.distribute.experimental.PreemptionCheckpointHandler`` (TF 2.21,
``tensorflow/python/distribute/failure_handling/failure_handling.py``)? It
agrees on a step through the coordination service's key-value store instead of
a collective, which costs nothing per step either, but in our loop it needs
work-arounds for each of: it restores at construction from its own
``tf.train.CheckpointManager`` (one local directory; the chief's checkpoints
may be in a bucket mirrored by :mod:`wavenet.checkpoints`), and adds its run
counter to the checkpoint, restored on the chief only when the other workers
read their private scratch folders, so the workers' counters, which must be
equal for the step to be agreed, would differ after a resume; it handles
SIGTERM only (SIGINT needs a ``termination_watcher_fn``, polled once a second
by a thread); its default ``exit_fn`` outside Google's platforms is
``sys.exit(42)`` (``BorgTerminationConfig``, which the exported
``TerminationConfig`` is), a permanent failure for the operator; and, given a
``tf.train.Checkpoint`` rather than a manager, it makes its own managers with
``workertemp_N`` folders next to the checkpoint folder, which it deletes
through TensorFlow's file system (our bucket I/O avoids that file system).
The flag in the step's own all-reduce does the same job in a few lines that
behave the same in one process, in local workers and in TFJob pods. Its cost
is one more float in a collective that runs anyway and one scalar read per
step: with the ``tiny`` preset (the shortest step) it measured -4% with 2
workers and +4% in one process, inside the +-20% spread of the rounds on the
shared 2-core VM (README, "Stopping and restarts").

A second Ctrl-C while the stop is under way raises ``KeyboardInterrupt`` (for
a save that hangs, e.g. on a dead peer); a second SIGTERM changes nothing (the
local launcher's own stop sends one; the kubelet's next word is SIGKILL).
"""

from __future__ import annotations

import signal
import threading
from types import FrameType, TracebackType

from wavenet.errors import Interrupted

__all__ = ["STOP_SIGNALS", "StopSignals", "TrainingStopped", "signal_exit_code"]

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


def signal_exit_code(signum: int) -> int:
    """The exit status of a process that ends because of ``signum``: ``128 + signum``."""
    return 128 + int(signum)


class TrainingStopped(Interrupted):
    """The step loop stopped on request after saving the checkpoint of ``step``.

    Attributes:
        step: the agreed step; checkpoint ``step`` holds it.
        signum: the signal this worker received, or None when another worker
            received it (this one stops with the cluster and exits 143).
    """

    def __init__(self, step: int, total: int, checkpoints: str, signum: int | None):
        if signum is None:
            why = "another worker received SIGTERM or SIGINT"
        else:
            why = signal.Signals(signum).name
        super().__init__(f"stopped by {why} at step {step} of {total}: checkpoint saved in "
                         f"{checkpoints}; the same command resumes from it",
                         signal_exit_code(signum if signum is not None else signal.SIGTERM))
        self.step = step
        self.signum = signum


class StopSignals:
    """Records SIGTERM and SIGINT for the step loop instead of dying (a context manager).

    Installs its handlers on entry (only in the main thread, where Python runs
    signal handlers) and puts the previous ones back on exit, so set-up and
    export keep the CLI's own handling; when the loop leaves with
    :class:`TrainingStopped`, SIGTERM stays ignored on the way out.

    Attributes:
        signum: the first stop signal received, or None.
    """

    def __init__(self) -> None:
        self.signum: int | None = None
        self._previous: dict[int, object] = {}

    @property
    def requested(self) -> bool:
        return self.signum is not None

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.signum is None:
            self.signum = signum
        elif signum == signal.SIGINT:
            raise KeyboardInterrupt  # a second Ctrl-C: do not wait for the save

    def __enter__(self) -> StopSignals:
        if threading.current_thread() is threading.main_thread():
            for s in STOP_SIGNALS:
                self._previous[s] = signal.signal(s, self._handle)
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        stopping = exc_type is not None and issubclass(exc_type, TrainingStopped)
        for s, handler in self._previous.items():
            # Once stopping, a later SIGTERM (the local launcher stops the workers still
            # there when the first one exits) must not cut the way out short.
            signal.signal(s, signal.SIG_IGN if stopping and s == signal.SIGTERM else handler)
        self._previous.clear()
