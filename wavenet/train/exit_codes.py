"""The one exit-code policy of a training worker: exception -> process exit status.

The Kubeflow Training Operator v1 under ``restartPolicy: ExitCode`` restarts a
replica only for exit codes 130, 137, 143 (killed by SIGINT, SIGKILL, SIGTERM)
and 138 (SIGUSR1, reserved for "the user says retry"); 1, 2, 126, 127, 128, 139
and every other code are permanent (kubeflow/training-operator
``pkg/util/train/train_util.go``, ``IsRetryableExitCode``). A worker therefore
exits 143 (or 130) when SIGTERM (or SIGINT) stopped it, after the checkpoint
of :mod:`wavenet.train.stopping`; 138 when a peer or the coordination service
is lost (the run can resume from its last checkpoint), or when MLflow or the
bucket stayed unavailable past the in-process retries
(:class:`~wavenet.errors.ServiceUnavailable`, :mod:`wavenet.retry`); 2 on bad
input or config, refused credentials and "not found" included; and 1 on anything else. Nothing here imports TensorFlow: errors are
recognised by class name, so the policy stays a pure, cheap function.
"""

from wavenet.errors import Busy, Interrupted, ServiceUnavailable

RETRY = 138            # SIGUSR1's code: the operator's "user says retry"
BAD_INPUT = 2          # WavenetError: one-line error, fixing the input is the cure
BUG = 1                # anything else: retrying would fail the same way

# Codes the operator retries (train_util.go IsRetryableExitCode).
RETRYABLE_CODES = frozenset({130, 137, 138, 143})

# tf.errors raised by collective ops and the coordination service when a peer
# dies or stops answering; a restart of the whole worker set cures them.
_RETRYABLE_TF_ERRORS = frozenset({"UnavailableError", "DeadlineExceededError",
                                  "CancelledError", "AbortedError"})


class PeerLost(Exception):
    """Raised by our own code when a collective times out or a peer is gone."""


def _class_names(e: BaseException) -> set[str]:
    return {cls.__name__ for cls in type(e).__mro__}


def exit_code(e: BaseException) -> int:
    """The exit status a worker ends with after ``e``.

    Args:
        e: the exception that ended the worker.

    Returns:
        ``e.exit_code`` for an :class:`~wavenet.errors.Interrupted` (143 after
        SIGTERM, 130 after SIGINT), 138 for other retryable failures (lost peer,
        collective error or timeout, a service unavailable past its retries, a data
        folder another run holds (:class:`~wavenet.errors.Busy`), a
        launcher's worker that ended retryably after the launcher's own restarts),
        2 for a ``WavenetError`` (bad input or config), 1 otherwise.
    """
    if isinstance(e, Interrupted):
        return e.exit_code
    names = _class_names(e)
    if (isinstance(e, (PeerLost, ServiceUnavailable, Busy)) or names & _RETRYABLE_TF_ERRORS
            or "TimeoutError" in names):
        return RETRY
    worker_code = getattr(e, "returncode", None) if "WorkerError" in names else None
    if worker_code is not None and is_retryable(worker_code):
        return RETRY
    if "WavenetError" in names:
        return BAD_INPUT
    return BUG


def is_retryable(returncode: int) -> bool:
    """Whether the operator (and our local launcher) restarts after this process status.

    Args:
        returncode: ``Popen.returncode``; negative when killed by a signal.
    """
    if returncode < 0:  # killed by a signal: what a container reports as 128 + n
        return 128 - returncode in RETRYABLE_CODES
    return returncode in RETRYABLE_CODES
