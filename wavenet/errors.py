"""Errors a user can act on, and the one helper that turns any exception into one line.

Raised at the boundary (configs, files, servers) with a one-line message that
names the field, file or address and what was received. The CLI prints them as
``error: <message>`` and exits with status 2; nothing deeper is shown.
"""


class WavenetError(Exception):
    """Base class for errors whose message is meant for the user."""


class ConfigError(WavenetError, ValueError):
    """A configuration field has an invalid value."""


class DataError(WavenetError):
    """Input data (audio, shards, manifest) is missing or unusable."""


class StorageError(WavenetError):
    """A bucket cannot be reached or used (credentials, endpoint)."""


class Busy(WavenetError):
    """Another run holds what this run must write (a data folder); running again later succeeds.

    Not bad input: the CLI exits with :attr:`exit_code` 138, the code the
    Training Operator and our launcher treat as "retry" (not 2, which is permanent).
    """

    exit_code = 138


class TrackingError(WavenetError):
    """The MLflow tracking server cannot be used."""


class Interrupted(BaseException):
    """Work stopped on request (SIGTERM, SIGINT) after saving what it could.

    Not a :class:`WavenetError`: nothing is wrong with the input, and the same
    command resumes. A ``BaseException``, as ``KeyboardInterrupt`` is, so that
    no ``except Exception`` on the way out swallows it. The CLI prints the
    message as one line and exits with :attr:`exit_code`.

    Attributes:
        exit_code: the process's exit status: ``128 + signal``, as a shell and
            a container runtime report a process killed by that signal.
    """

    def __init__(self, message: str, exit_code: int):
        super().__init__(message)
        self.exit_code = exit_code


def one_line(e: BaseException, *, with_type: bool = True) -> str:
    """The first line of an exception's message, for a one-line error that wraps it.

    Libraries put the useful text in different places (MLflow and TensorFlow
    errors carry a ``message`` attribute); this reads that first, then ``str(e)``.

    Args:
        e: any exception.
        with_type: prefix the exception's type name (``"OSError: ..."``).

    Returns:
        One line, never empty: the type name stands in for an empty message.
    """
    text = str(getattr(e, "message", None) or e).strip()
    first = text.splitlines()[0] if text else ""
    if not with_type:
        return first or type(e).__name__
    return f"{type(e).__name__}: {first}" if first else type(e).__name__
