"""Memory estimated before a size from the config is allocated.

Each config field has an upper bound (:data:`wavenet.config.UPPER_BOUNDS`), but
fields within their bounds can multiply into terabytes (clips x seconds x
sample rate, or layers x channels x channels). Where such a product is about
to be allocated, the caller estimates its bytes and calls :func:`check_fits`,
which refuses with one line naming the fields and the estimate instead of
letting NumPy or TensorFlow fail deep inside with a traceback.
"""

from __future__ import annotations

import os

from wavenet.errors import ConfigError

__all__ = ["available_bytes", "check_fits", "human_bytes"]


def available_bytes() -> int:
    """Physical memory of this machine (or of its cgroup, when that is smaller)."""
    total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    for path in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        try:
            with open(path) as f:
                text = f.read().strip()
        except OSError:
            continue
        if text.isdigit():
            total = min(total, int(text))
    return total


def human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if n < 1024 or unit == "PiB":
            return f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} PiB"  # pragma: no cover


def check_fits(estimate: float, what: str, fields: str, *, limit: float | None = None) -> None:
    """Refuse ``estimate`` bytes when they exceed the machine's memory.

    Args:
        estimate: bytes the allocation will need.
        what: what is allocated ("the generated clips").
        fields: the config fields that set the size ("generate.num_clips x generate.seconds").
        limit: bytes allowed (default: :func:`available_bytes`).

    Raises:
        ConfigError: one line with the fields, the estimate and the limit.
    """
    limit = available_bytes() if limit is None else limit
    if estimate > limit:
        raise ConfigError(f"{what} would need about {human_bytes(estimate)} of memory, more than "
                          f"the {human_bytes(limit)} this machine has; reduce {fields}")
