"""Benchmarks (`wavenet bench ...`, `make bench`): one JSON object per run.

Shared measurements live here so every benchmark reports the machine's own
single-thread matmul speed and peak memory next to its figures, and targets
can be judged as ratios within one run.
"""

from __future__ import annotations

import os
import platform
import resource
import time

import numpy as np

from wavenet.memory import peak_rss_bytes

__all__ = ["pin_threads", "matmul_gflops", "calls_per_second", "peak_rss_mb", "machine"]


def pin_threads(n: int = 1) -> None:
    """Limit TensorFlow to ``n`` threads (call before it runs ops).

    BLAS, OpenMP and Numba read their thread counts from the environment when
    they load; the CLI (``wavenet bench``) sets those before importing a benchmark.
    TensorFlow is imported here, not at the top: the preprocessing benchmark
    shares this module and must not load it (its worker pool forks only then).
    """
    import tensorflow as tf

    try:
        tf.config.threading.set_intra_op_parallelism_threads(n)
        tf.config.threading.set_inter_op_parallelism_threads(n)
    except RuntimeError:
        pass  # already initialised: the caller pinned earlier


def matmul_gflops(n: int = 1024, seconds: float = 1.0) -> float:
    """Single-thread float32 matmul GFLOP/s, measured with TensorFlow (oneDNN/Eigen).

    TensorFlow must be pinned to one thread first (:func:`pin_threads`).
    """
    import tensorflow as tf  # see pin_threads

    a = tf.random.normal((n, n))
    b = tf.random.normal((n, n))
    return 2.0 * n**3 * calls_per_second(lambda: tf.matmul(a, b).numpy(), seconds) / 1e9


def calls_per_second(call, seconds: float) -> float:
    """How often ``call()`` runs per second: one warm-up call, then at least 3 calls and ``seconds``."""
    call()
    reps, start = 0, time.perf_counter()
    while True:
        call()
        reps += 1
        elapsed = time.perf_counter() - start
        if elapsed >= seconds and reps >= 3:
            return reps / elapsed


def peak_rss_mb() -> float:
    """Peak resident memory of this process (and of waited-for children), MiB.

    This process's own peak is VmHWM (:func:`wavenet.memory.peak_rss_bytes`), not
    ``RUSAGE_SELF``'s ``ru_maxrss``, which also holds the peak of whatever process
    exec replaced (the caller's, under Python's vfork-based ``subprocess``). A child's
    ``ru_maxrss`` holds this process's VmHWM at the time it started, never more, so the
    larger of the two is still this process's or a child's own peak.
    """
    own = peak_rss_bytes() / 1024.0
    kids = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss  # Linux: KiB
    return max(own, kids) / 1024.0


def machine() -> dict[str, object]:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "python": platform.python_version(),
            "numpy": np.__version__}
