"""Errors a user can act on, and the one helper that turns any exception into one line.

Raised at the boundary (configs, files, servers) with a one-line message that
names the field, file or address and what was received. The CLI prints them as
``error: <message>`` and exits with status 2; nothing deeper is shown, except for
:class:`ServiceUnavailable` (a server that did not answer for a while), which exits
138, the code the Kubeflow Training Operator and our local launcher retry.

Messages never show a password: :func:`one_line` and the CLI pass them through
:func:`redact`, which masks the user-info of any URI in the text.
"""

import re


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


class ServiceUnavailable(WavenetError):
    """A service (MLflow, a bucket) stayed unreachable, answered 5xx or timed out for longer
    than the in-process retries waited (:mod:`wavenet.retry`).

    Nothing is wrong with the input: the same command, later, succeeds. Workers and the CLI
    exit 138 (:mod:`wavenet.train.exit_codes`), which the Training Operator retries.
    """


class TrackingUnavailable(TrackingError, ServiceUnavailable):
    """The MLflow tracking server did not answer (refused, timed out, 5xx) for the retry budget."""


class StorageUnavailable(StorageError, ServiceUnavailable):
    """The storage endpoint did not answer (refused, timed out, 5xx) for the retry budget."""


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


# scheme://user:password@ or scheme://token@ (RFC 3986 user-info) in any text.
_USERINFO = re.compile(r"(?P<scheme>\b[A-Za-z][A-Za-z0-9+.-]*://)(?P<info>[^/\s?#]+)@")


def _mask(m: re.Match) -> str:
    user, colon, _ = m.group("info").partition(":")
    # user:password keeps the user (it helps to tell which account); a lone user-info may be
    # a token (https://TOKEN@host), so it is masked whole.
    return f"{m.group('scheme')}{user}:***@" if colon else f"{m.group('scheme')}***@"


def redact(text: str) -> str:
    """``text`` with the password (or token) of every URI in it replaced by ``***``.

    ``postgresql://alice:secret@db/mlflow`` becomes ``postgresql://alice:***@db/mlflow``.
    """
    return _USERINFO.sub(_mask, text)


def has_userinfo(uri: str) -> bool:
    """Whether ``uri`` (or any URI in it) carries user-info (``user:password@``, ``token@``)."""
    return _USERINFO.search(uri) is not None


def one_line(e: BaseException, *, with_type: bool = True) -> str:
    """The first line of an exception's message, for a one-line error that wraps it.

    Libraries put the useful text in different places (MLflow and TensorFlow
    errors carry a ``message`` attribute); this reads that first, then ``str(e)``.
    A password in a URI of the message is masked (:func:`redact`).

    Args:
        e: any exception.
        with_type: prefix the exception's type name (``"OSError: ..."``).

    Returns:
        One line, never empty: the type name stands in for an empty message.
    """
    text = redact(str(getattr(e, "message", None) or e).strip())
    first = text.splitlines()[0] if text else ""
    if not with_type:
        return first or type(e).__name__
    return f"{type(e).__name__}: {first}" if first else type(e).__name__
