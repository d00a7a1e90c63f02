"""Bounded retries of calls to a service (MLflow, a bucket) that may be away for a while.

A server restarting (a rollout, a pod rescheduled) refuses connections or answers 5xx for
seconds to minutes. The edges (:mod:`wavenet.edges.tracking`, :mod:`wavenet.edges.storage`) decide
which failures are such outages; this module waits them out with exponential backoff
within one total deadline, then gives up with the edge's
:class:`~wavenet.errors.ServiceUnavailable`, whose exit status (138) the Training
Operator and our local launcher retry. Refusals (401, 403, 404) and bad input are not
retried here: they are raised at once.

The deadline is ``$WAVENET_SERVICE_RETRY_S`` seconds (default :data:`DEFAULT_BUDGET_S`;
0 fails at the first outage), read at each call like MLflow's own ``MLFLOW_HTTP_*``
settings, so a worker process, a pod and a test set it the same way.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable, Mapping
from typing import TypeVar

from wavenet.errors import ConfigError, ServiceUnavailable

__all__ = ["BUDGET_ENV", "DEFAULT_BUDGET_S", "budget_s", "with_retries"]

T = TypeVar("T")

BUDGET_ENV = "WAVENET_SERVICE_RETRY_S"
# Long enough for an MLflow server Deployment to roll over (a new pod's start and readiness
# probe: about a minute), short enough that a service that is really gone ends the
# process soon and the operator's own restart budget takes over.
DEFAULT_BUDGET_S = 180.0
FIRST_DELAY_S = 1.0
MAX_DELAY_S = 15.0


def budget_s(environ: Mapping[str, str] | None = None) -> float:
    """Seconds a call may keep retrying an outage: ``$WAVENET_SERVICE_RETRY_S`` or the default.

    Raises:
        ConfigError: the variable is not a number >= 0.
    """
    env = os.environ if environ is None else environ
    raw = env.get(BUDGET_ENV, "").strip()
    if not raw:
        return DEFAULT_BUDGET_S
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not value >= 0:  # also NaN
        raise ConfigError(f"{BUDGET_ENV} must be a number of seconds >= 0. Received: {raw!r}")
    return value


def _warn(msg: str) -> None:
    print(f"warning: {msg}", file=sys.stderr, flush=True)


def with_retries(call: Callable[[], T], outage: Callable[[Exception], ServiceUnavailable | None], *,
                 budget: float | None = None, warn: Callable[[str], None] = _warn,
                 sleep: Callable[[float], None] = time.sleep,
                 clock: Callable[[], float] = time.monotonic) -> T:
    """``call()``, retried while it fails with an outage, for at most ``budget`` seconds.

    Args:
        call: the request (or requests) to make; must be safe to repeat.
        outage: the edge's classifier: the :class:`ServiceUnavailable` to raise for an
            outage (connection refused, timeout, 5xx), None for any other failure, which
            propagates unchanged at once.
        budget: total seconds (default :func:`budget_s`).
        warn: where the one line about waiting goes (once per call).
        sleep, clock: for tests.

    Returns:
        What ``call`` returns.

    Raises:
        ServiceUnavailable: the outage lasted longer than ``budget``.
    """
    budget = budget_s() if budget is None else budget
    deadline = clock() + budget
    delay = FIRST_DELAY_S
    warned = False
    while True:
        try:
            return call()
        except Exception as e:
            unavailable = outage(e)
            if unavailable is None:
                raise
            left = deadline - clock()
            if left <= 0:
                raise unavailable from None
            if not warned:
                warn(f"{unavailable}; retrying for up to {budget:g} s ({BUDGET_ENV})")
                warned = True
            sleep(min(delay, left))
            delay = min(delay * 2, MAX_DELAY_S)
