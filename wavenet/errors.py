"""Errors a user can act on.

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


class TrackingError(WavenetError):
    """The MLflow tracking server cannot be used."""
