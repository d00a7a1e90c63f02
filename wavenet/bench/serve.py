"""Serving benchmark (`wavenet bench serve --model models:/wavenet@champion`): seconds of audio
served per second of wall time, for 1, 4 and 16 concurrent listeners, batched against
one-at-a-time; first-request latency; the server's peak memory; a bounded load test.

The server is the real one, ``mlflow models serve --env-manager local`` on a free 127.0.0.1
port, started by this process; the listeners are threads of this process (a second process,
as a user's app would be). One-at-a-time is the same server with ``WAVENET_SERVE_MAX_BATCH=1``
and ``WAVENET_SERVE_THREADS=1``: each clip generated on its own, in arrival order.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from wavenet.bench import machine

__all__ = ["run"]

CLIENTS = (1, 4, 16)


def _rss_kib(pid: int, field: str) -> int:
    """``VmRSS`` or ``VmHWM`` (peak) of ``pid`` and its descendants, KiB (Linux /proc)."""
    total, todo = 0, [pid]
    while todo:
        p = todo.pop()
        try:
            with open(f"/proc/{p}/status") as f:
                total += next((int(line.split()[1]) for line in f if line.startswith(field + ":")), 0)
            with open(f"/proc/{p}/task/{p}/children") as f:
                todo += [int(c) for c in f.read().split()]
        except OSError:
            continue
    return total


class _Server:
    """``mlflow models serve`` of ``model`` on a free port (stopped with its process group)."""

    def __init__(self, model: str, one_at_a_time: bool, log: str):
        from wavenet.local_workers import free_ports

        self.url = f"http://127.0.0.1:{free_ports(1)[0]}"
        env = {**os.environ, "PATH": os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", "")}
        if one_at_a_time:  # one clip at a time, on one thread
            env.update(WAVENET_SERVE_MAX_BATCH="1", WAVENET_SERVE_THREADS="1")
        self._log = open(log, "wb")  # noqa: SIM115 - closed in stop()
        self.started = time.perf_counter()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "mlflow", "models", "serve", "-m", model, "--env-manager", "local",
             "--host", "127.0.0.1", "--port", self.url.rsplit(":", 1)[1]],
            stdout=self._log, stderr=subprocess.STDOUT, env=env, start_new_session=True)

    def wait(self, timeout: float = 900.0) -> float:
        """Seconds from start until ``/ping`` answers."""
        from wavenet.edges.tracking import wait_until_healthy

        if not wait_until_healthy(self.url, timeout, lambda: self.proc.poll() is None):
            self.stop()
            raise RuntimeError(f"mlflow models serve did not come up; see {self._log.name}")
        return time.perf_counter() - self.started

    def rss_mib(self, field: str = "VmRSS") -> float:
        return _rss_kib(self.proc.pid, field) / 1024.0

    def stop(self) -> None:
        try:
            os.killpg(self.proc.pid, signal.SIGTERM)
            self.proc.wait(30)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
        self._log.close()


def _post(url: str, rows: list[dict[str, Any]]) -> int:
    req = urllib.request.Request(url + "/invocations", data=json.dumps({"dataframe_records": rows}).encode(),
                                 headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=600) as r:
            r.read()
            return r.status
    except urllib.error.HTTPError as e:
        e.read()
        return e.code


def _throughput(url: str, label: str | None, clients: int, requests: int, seconds: float) -> dict:
    """``clients`` listeners, each sending ``requests`` one-clip requests back to back."""
    row = {"seconds": seconds, **({"label": label} if label else {})}
    start = threading.Barrier(clients)

    def listener(c: int) -> list[int]:
        start.wait()
        return [_post(url, [{**row, "seed": c * requests + i}]) for i in range(requests)]

    t0 = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        statuses = [s for got in pool.map(listener, range(clients)) for s in got]
    wall = time.perf_counter() - t0
    ok = statuses.count(200)
    return {"audio_seconds_per_second": round(ok * seconds / wall, 2), "wall_s": round(wall, 2),
            "requests": len(statuses), "errors": len(statuses) - ok}


def _load_test(server: _Server, label: str | None, total: int, clients: int) -> dict:
    """``total`` requests from ``clients`` threads, one in four malformed: statuses and memory."""
    good = {"seconds": 0.25, **({"label": label} if label else {})}
    bad = [{"seconds": 1e9}, {"label": "no-such-label", "seconds": 0.1}, {"seconds": 0.1, "temperature": 0}]
    rss_before = server.rss_mib()

    def one(i: int) -> tuple[bool, int]:
        malformed = i % 4 == 3
        return malformed, _post(server.url, [bad[i % 3] if malformed else {**good, "seed": i}])

    with ThreadPoolExecutor(clients) as pool:
        results = list(pool.map(one, range(total)))
    unexpected = sum(1 for malformed, s in results if s != (400 if malformed else 200))
    return {"requests": total, "malformed": sum(m for m, _ in results), "unexpected_statuses": unexpected,
            "server_alive": server.proc.poll() is None, "rss_mib_before": round(rss_before, 1),
            "rss_mib_after": round(server.rss_mib(), 1)}


def _label(model: str) -> str | None:
    """The first label of the served model (its input example's), None if unconditioned."""
    from wavenet.edges.registry import input_example

    return (input_example(model).get("label") or [None])[0]


def run(cfg, quick: bool = False, model: str | None = None, seconds: float = 2.0) -> dict:
    """Serve ``model`` twice (one-at-a-time, then batched) and measure; returns one JSON object.

    Args:
        cfg: unused but for the CLI's uniform call (the model carries its own config).
        quick: fewer requests (a smoke run).
        model: the MLflow model URI to serve (``models:/wavenet@champion``); the tracking URI
            comes from ``MLFLOW_TRACKING_URI`` as for ``mlflow models serve``.
        seconds: audio per request.
    """
    del cfg
    if not model:
        from wavenet.errors import ConfigError

        raise ConfigError("bench serve needs --model (an MLflow model URI, e.g. models:/wavenet@champion)")
    label = _label(model)
    requests = 1 if quick else 3
    out: dict[str, Any] = {"model": model, "seconds_per_request": seconds, "requests_per_client": requests,
                           "machine": machine(), "load_average": os.getloadavg()}
    with tempfile.TemporaryDirectory(prefix="wavenet-bench-serve-") as tmp:
        for mode in ("one_at_a_time", "batched"):
            server = _Server(model, mode == "one_at_a_time", os.path.join(tmp, f"{mode}.log"))
            try:
                result: dict[str, Any] = {"start_s": round(server.wait(), 2)}
                t0 = time.perf_counter()
                result["first_request_status"] = _post(server.url, [{"seconds": seconds, "seed": 0,
                                                                     **({"label": label} if label else {})}])
                result["first_request_s"] = round(time.perf_counter() - t0, 3)
                for clients in CLIENTS:
                    result[f"clients_{clients}"] = _throughput(server.url, label, clients, requests, seconds)
                if mode == "batched":
                    result["load_test"] = _load_test(server, label, 40 if quick else 400, 8)
                result["server_peak_rss_mib"] = round(server.rss_mib("VmHWM"), 1)
            finally:
                server.stop()
            out[mode] = result
    out["load_average_after"] = os.getloadavg()
    return out
