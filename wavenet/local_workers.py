"""Local worker processes for multi-worker training on one machine.

`wavenet train --workers N` runs N copies of the worker command
(``python -m wavenet.cli train ... --worker``) on 127.0.0.1, each with its own
``TF_CONFIG`` naming all N addresses, exactly as the Kubeflow training
operator does for the pods of a TFJob. Worker 0 is the chief: its output
(progress bar, warnings) streams to our stderr; the others stay quiet and only
the tail of their output is kept, to be shown if they fail.

When any worker fails, the others are stopped (MultiWorkerMirroredStrategy
cannot continue without a peer; they would block in the next all-reduce) and
the command fails with that worker's error. Ctrl-C (or SIGTERM to this
process) stops all of them, after they save a checkpoint at an agreed step
(:mod:`wavenet.train.stopping`), and workers die with this process (Linux
parent-death signal) even when it is killed outright.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from typing import IO

from wavenet.errors import WavenetError

__all__ = ["WorkerError", "free_ports", "pid_alive", "tf_config", "run_local_workers"]

_TAIL_BYTES = 16384
_TAIL_LINES = 20


class WorkerError(WavenetError):
    """A training worker process failed.

    Attributes:
        worker: index of the worker that failed first (None if unknown).
        returncode: its ``Popen.returncode`` (negative: killed by that signal).
    """

    def __init__(self, message: str, *, worker: int | None = None, returncode: int | None = None):
        super().__init__(message)
        self.worker = worker
        self.returncode = returncode


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` of this machine (this pid namespace) still runs.

    A dead run's leftovers (preprocess work folders, containers) carry its pid; a pid is not
    reused while its process lives, so a live owner is never taken for a dead one.
    """
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True


def free_ports(n: int, host: str = "127.0.0.1") -> list[int]:
    """``n`` distinct TCP ports free on ``host`` right now (the OS picks them)."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind((host, 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def tf_config(addresses: Sequence[str], index: int) -> dict:
    """The ``TF_CONFIG`` of worker ``index`` in a cluster of ``addresses`` (worker 0 is chief)."""
    return {"cluster": {"worker": list(addresses)}, "task": {"type": "worker", "index": index}}


def _die_with_parent() -> None:  # pragma: no cover - runs in the child before exec
    # PR_SET_PDEATHSIG (1): the kernel sends SIGKILL to the worker when the
    # launcher dies, so a killed launcher never leaves orphans holding ports.
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)
    except (OSError, AttributeError):
        pass


class _Pump(threading.Thread):
    """Reads one worker's stderr: keeps its tail, optionally forwards it live.

    Forwarded output holds back complete lines that start with ``error: ``
    (the worker's own one-line error), because the launcher re-raises that
    message itself; everything else (progress bars, warnings) passes through.
    """

    def __init__(self, stream: IO[bytes], forward: IO[bytes] | None):
        super().__init__(daemon=True)
        self.stream = stream
        self.forward = forward
        self.tail = bytearray()

    def run(self) -> None:
        held = b""
        fd = self.stream.fileno()
        while True:
            try:
                chunk = os.read(fd, 4096)
            except OSError:
                break
            if not chunk:
                break
            self.tail += chunk
            del self.tail[:-_TAIL_BYTES]
            if self.forward is None:
                continue
            held += chunk
            out = bytearray()
            while b"\n" in held:
                line, held = held.split(b"\n", 1)
                if not line.lstrip(b"\r").startswith(b"error: "):
                    out += line + b"\n"
            if held and not b"error: ".startswith(held.lstrip(b"\r")[:7]):
                out += held
                held = b""
            if out:
                try:
                    self.forward.write(bytes(out))
                    self.forward.flush()
                except (OSError, ValueError):
                    self.forward = None
        if held and self.forward is not None and not held.startswith(b"error: "):
            try:
                self.forward.write(held)
                self.forward.flush()
            except (OSError, ValueError):
                pass

    def lines(self) -> list[str]:
        text = self.tail.decode("utf-8", "replace").replace("\r", "\n")
        return [ln for ln in text.splitlines() if ln.strip()]


# How long stopped workers get to save their checkpoint and leave before SIGKILL: after
# SIGTERM or SIGINT they finish a step or two, save, send their metrics and meet at a
# barrier (wavenet.train.stopping). A worker blocked on a dead peer never leaves by itself,
# so after any other failure the wait is short.
SAVE_GRACE_S = 60.0
FAILURE_GRACE_S = 5.0
_SAVED_STOP_CODES = (128 + signal.SIGTERM, 128 + signal.SIGINT)


def _stop(procs: Sequence[subprocess.Popen], grace_s: float, *, agreed: bool = False,
          poll_s: float = 0.2) -> None:
    """SIGTERM the running workers, SIGKILL those still there after ``grace_s``.

    With ``agreed`` (they are to stop together at a step, wavenet.train.stopping) the wait
    also ends once a worker has ended otherwise (killed by the signal before it could hold
    it, or failed): the rest can no longer agree and would wait for it in a collective.
    A KeyboardInterrupt meanwhile (a second Ctrl-C) cuts the wait short: the rest are killed.
    """
    for p in procs:
        if p.poll() is None:
            try:
                p.send_signal(signal.SIGTERM)
            except ProcessLookupError:
                pass
    deadline = time.monotonic() + grace_s
    try:
        while time.monotonic() < deadline:
            # Every worker each time: `any(p.poll() is None ...)` stopped at the first one still
            # running, so a second worker killed by the signal before it could hold it was never
            # polled, and the first waited for it in the cluster's start-up until the SIGKILL
            # (Ctrl-C at start-up: 1 run in 5 to 15 here; tests/test_distributed.py).
            codes = [p.poll() for p in procs]
            if all(rc is not None for rc in codes):
                break
            if agreed and any(rc not in (None, 0, *_SAVED_STOP_CODES) for rc in codes):
                break
            time.sleep(poll_s)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()


def _describe(rc: int) -> str:
    if rc < 0:
        try:
            return f"was killed by {signal.Signals(-rc).name}"
        except ValueError:
            return f"was killed by signal {-rc}"
    return f"exited with status {rc}"


def run_local_workers(commands: Sequence[Sequence[str]], environ: Mapping[str, str],
                      host: str = "127.0.0.1", poll_s: float = 0.2,
                      stderr: IO[bytes] | None = None) -> None:
    """Run one worker process per command as a MultiWorkerMirroredStrategy cluster.

    Args:
        commands: argv of worker 0 (the chief), worker 1, ...; each gets
            ``TF_CONFIG`` for its index in its environment.
        environ: the environment the workers start from.
        host: address the workers listen on.
        poll_s: how often worker exit codes are checked.
        stderr: where the chief's output goes (default: this process's stderr).

    Raises:
        WorkerError: a worker failed; its one-line ``error:`` message, or a
            note that its last output was printed above. The other workers
            have been stopped by then.
    """
    forward = stderr if stderr is not None else sys.stderr.buffer
    addresses = [f"{host}:{p}" for p in free_ports(len(commands), host)]
    procs: list[subprocess.Popen] = []
    pumps: list[_Pump] = []
    try:
        for i, argv in enumerate(commands):
            _start(argv, {**environ, "TF_CONFIG": json.dumps(tf_config(addresses, i))},
                   forward if i == 0 else None, procs, pumps)
        failed: int | None = None
        while failed is None:
            codes = [p.poll() for p in procs]
            bad = [i for i, rc in enumerate(codes) if rc not in (None, 0)]
            if bad:
                failed = bad[0]
            elif all(rc == 0 for rc in codes):
                break
            else:
                time.sleep(poll_s)
    except BaseException:  # Ctrl-C or SIGTERM here: the workers save and stop too
        _stop(procs, grace_s=SAVE_GRACE_S, agreed=True)
        raise
    if failed is None:
        for pump in pumps:
            pump.join(timeout=5)
        return
    stopped = procs[failed].returncode in _SAVED_STOP_CODES
    _stop(procs, grace_s=SAVE_GRACE_S if stopped else FAILURE_GRACE_S, agreed=stopped)
    for pump in pumps:
        pump.join(timeout=5)
    raise _failure(failed, procs[failed].returncode, pumps[failed].lines())


def _start(argv: Sequence[str], env: Mapping[str, str], forward: IO[bytes] | None,
           procs: list[subprocess.Popen], pumps: list[_Pump]) -> None:
    """Start one worker (appended to ``procs``) and the pump of its stderr (to ``pumps``)."""
    p = subprocess.Popen(list(argv), env=dict(env), stdin=subprocess.DEVNULL,
                         stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                         preexec_fn=_die_with_parent if sys.platform == "linux" else None)
    procs.append(p)
    pump = _Pump(p.stderr, forward)
    pump.start()
    pumps.append(pump)


def _failure(failed: int, rc: int, lines: list[str]) -> WorkerError:
    """The error of worker ``failed``: its one-line ``error:``, else its last output printed."""
    errors = [ln for ln in lines if ln.startswith("error: ")]
    if errors:
        return WorkerError(f"worker {failed} {_describe(rc)}: {errors[-1][len('error: '):]}",
                           worker=failed, returncode=rc)
    if lines and failed != 0:
        print(f"--- last output of worker {failed} ---", file=sys.stderr)
        for ln in lines[-_TAIL_LINES:]:
            print(f"worker {failed}| {ln}", file=sys.stderr)
    return WorkerError(f"worker {failed} {_describe(rc)}"
                       + (" (its last output is above)" if lines else ""),
                       worker=failed, returncode=rc)
