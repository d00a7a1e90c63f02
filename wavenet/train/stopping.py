"""A graceful stop on SIGTERM or SIGINT: a checkpoint at a step every worker agrees on, then exit.

Kubernetes evicts or preempts a pod by sending SIGTERM and waiting the pod's
``terminationGracePeriodSeconds`` before SIGKILL; Ctrl-C sends SIGINT. Without
this, the work since the last periodic checkpoint is lost. With it:

1. :class:`StopSignals` (installed as soon as the worker has joined the
   cluster, until it ends) records the signal; the work goes on. A worker
   started by the CLI with ``--worker`` holds both signals pending from its
   first line until then (:mod:`wavenet.cli`), so a signal during start-up is
   neither acted on alone nor lost. Before the step loop, every worker meets
   at two stop points (after set-up, before the first step), one all-reduce of
   the flag each: if any worker was asked, all stop there together, with
   nothing new to save. A worker that left on its own would leave its peers
   waiting for it in a collective (the cluster's start, a stop point, a step,
   the final barrier), where no signal handler of theirs runs; and TensorFlow
   takes SIGTERM while it creates the strategy (below), so a SIGTERM between
   that and the step loop used to be lost: no worker stopped, and the local
   launcher waited its whole grace period before SIGKILL.
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
shared 2-core VM (docs/operations.md, "Stopping and restarts").

A second Ctrl-C while the stop is under way raises ``KeyboardInterrupt`` (for
a save that hangs, e.g. on a dead peer); a second SIGTERM changes nothing (the
local launcher's own stop sends one; the kubelet's next word is SIGKILL).

TensorFlow takes SIGTERM: with the coordination service (MultiWorkerMirroredStrategy
with a cluster), enabling collective ops creates a "sigterm" PreemptionNotifier
whose constructor calls ``std::signal(SIGTERM, ...)``, replacing Python's
handler with one that only records the signal for TensorFlow's own
PreemptionCheckpointHandler (tensorflow/tensorflow:
tensorflow/core/common_runtime/eager/context_distributed_manager.cc,
``EnableCollectiveOps``; third_party/xla/xla/tsl/distributed_runtime/preemption/
preemption_notifier.cc, ``SigtermNotifier``). Python still reports its own
handler (``signal.getsignal``), so nothing shows it: :func:`reclaim_sigterm`
puts Python's back, and entering :class:`StopSignals` installs its own.
"""

from __future__ import annotations

import signal
import threading
from types import FrameType, TracebackType

from wavenet.errors import Interrupted

__all__ = ["STOP_SIGNALS", "StopSignals", "TrainingStopped", "reclaim_sigterm", "signal_exit_code"]

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


def signal_exit_code(signum: int) -> int:
    """The exit status of a process that ends because of ``signum``: ``128 + signum``."""
    return 128 + int(signum)


def reclaim_sigterm() -> None:
    """Give SIGTERM back to Python's handler after TensorFlow took it (see above).

    Call after creating a MultiWorkerMirroredStrategy; a no-op outside the main thread or
    when no Python handler was installed.
    """
    if threading.current_thread() is not threading.main_thread():
        return
    handler = signal.getsignal(signal.SIGTERM)
    if handler is not None:  # None: not installed from Python; leave it
        signal.signal(signal.SIGTERM, handler)


class TrainingStopped(Interrupted):
    """The step loop stopped on request after saving the checkpoint of ``step``.

    Attributes:
        step: the agreed step; checkpoint ``step`` holds it (when stopped during set-up:
            the step the run is at, whose checkpoint, if any, was there before).
        signum: the signal this worker received, or None when another worker
            received it (this one stops with the cluster and exits 143).
    """

    def __init__(self, step: int, total: int, checkpoints: str | None, signum: int | None):
        if signum is None:
            why = "another worker received SIGTERM or SIGINT"
        else:
            why = signal.Signals(signum).name
        if checkpoints is None:  # during set-up: nothing trained since the last checkpoint
            what = (f"stopped by {why} during set-up, at step {step} of {total}: nothing new "
                    "to save; the same command continues from there")
        else:
            what = (f"stopped by {why} at step {step} of {total}: checkpoint saved in "
                    f"{checkpoints}; the same command resumes from it")
        super().__init__(what, signal_exit_code(signum if signum is not None else signal.SIGTERM))
        self.step = step
        self.signum = signum


class StopSignals:
    """Records SIGTERM and SIGINT for the step loop instead of dying (a context manager).

    Installs its handlers on entry (only in the main thread, where Python runs
    signal handlers; over TensorFlow's SIGTERM handler too) and then unblocks
    both signals, so one held pending since the worker started (``--worker``)
    is recorded now; puts the previous handlers back on exit, so set-up keeps
    the CLI's own handling; when the loop leaves with :class:`TrainingStopped`,
    SIGTERM stays ignored on the way out.

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
            signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        stopping = exc_type is not None and issubclass(exc_type, TrainingStopped)
        for s, handler in self._previous.items():
            # Once stopping, a later SIGTERM (the local launcher stops the workers still
            # there when the first one exits) must not cut the way out short.
            signal.signal(s, signal.SIG_IGN if stopping and s == signal.SIGTERM else handler)
        self._previous.clear()
