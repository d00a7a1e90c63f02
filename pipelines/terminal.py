"""What ``make run`` shows on the terminal: each step's own output, without kfp.local's noise.

``kfp.local`` prints everything on this process's stdout: its task log, every step's
streamed output (the executor's ``Got executor_input:`` JSON dump, hundreds of lines per
run) and each task's output artifacts; Python warnings go to stderr. :class:`TerminalFilter`
replaces ``sys.stdout`` and ``sys.stderr`` while the pipeline runs: **every** line goes
to a log file unchanged, and the terminal gets the lines that are not in :data:`HARMLESS`
(nor an executor dump or an outputs listing), each step's output prefixed with its task
name (``[preprocess-partition-2] ...``), so parallel tasks stay apart. Anything not
known to be harmless (a traceback, an ``error:`` line, a warning of our own) reaches the
terminal.
"""

from __future__ import annotations

import re
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import IO

__all__ = ["HARMLESS", "TerminalFilter", "filtered_terminal"]

# Known-harmless lines, by message, and why each may leave the terminal (the log file keeps them).
HARMLESS: tuple[tuple[str, str], ...] = (
    (r"UserWarning: Task '[^']*': settings \[.*\] have no effect",
     "kfp.local ignores display_name and resource settings; a cluster honours them"),
    (r"_warn_local_only_noops\(task_name|^\s*warnings\.warn\($",
     "the source line Python prints under the warning above"),
    (r"RuntimeWarning: You may be attemping to run a task that uses custom or non-Python base image",
     "our steps are Python components over the project's own environment (use_venv=False)"),
    (r"\[KFP Executor [^\]]* INFO\]: (Looking for component|Loading KFP component|Wrote executor output)",
     "kfp's executor start-up and shut-down"),
    (r"WARNING: All log messages before absl::InitializeLog\(\) is called are written to STDERR",
     "absl's notice before TensorFlow initialises logging"),
    (r"port\.cc:\d+\] oneDNN custom operations are on\. ",
     "TensorFlow's notice that its oneDNN kernels are on (the x86 default), printed by absl "
     "before TensorFlow applies TF_CPP_MIN_LOG_LEVEL, once per TensorFlow library loaded"),
    (r"cudart_stub\.cc:\d+\] Could not find cuda drivers on your machine, GPU will not be used",
     "TensorFlow on a machine without a GPU"),
    (r"failed call to cuInit: .*(UNKNOWN ERROR \(303\)|CUDA_ERROR_NO_DEVICE)",
     "TensorFlow probing for a GPU on a machine without one"),
    (r"INFO mlflow\.store\.db\.utils: (Creating initial MLflow database tables|Updating database tables)",
     "MLflow creating or upgrading the local SQLite store"),
    (r"INFO mlflow\.system_metrics\.system_metrics_monitor: (Skip logging GPU metrics|Started monitoring"
     r"|Stopping system metrics monitoring|Successfully terminated)",
     "MLflow's CPU/memory sampler starting and stopping"),
    (r"INFO mlflow\.store\.model_registry\.abstract_store: Waiting up to \d+ seconds for model version "
     r"to finish creation",
     "MLflow waiting for a version it just registered to be ready; 'Created version' follows"),
    (r"INFO\]: generated new fontManager$",
     "matplotlib building its font cache in a container's fresh home (/scratch)"),
    (r"INFO - Streamed logs:$", "kfp.local's header before a step's output"),
    (r"^-{20,}$", "kfp.local's separators"),
)
_HARMLESS = re.compile("|".join(f"(?:{p})" for p, _ in HARMLESS))
_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_KFP_LOG = re.compile(r"^\d\d:\d\d:\d\d\.\d+ - [A-Z]+ - ")
_EXECUTING = re.compile(r"Executing task '([^']+)'")
_FINISHED = re.compile(r"Task '[^']+' finished with status")
_OUTPUTS = re.compile(r"Task '[^']+' outputs:$")
_DUMP = re.compile(r"\[KFP Executor [^\]]*\]: Got executor_input:$")
_STRING = re.compile(r'"(?:[^"\\]|\\.)*"')


@dataclass
class _Thread:
    """One kfp.local task thread: its partial line, its task's label, what it is skipping."""

    partial: str = ""
    label: str = ""
    dump_depth: int | None = None  # inside an executor_input dump: brace depth
    in_outputs: bool = False


class TerminalFilter:
    """Line filter between kfp.local and the terminal (see the module docstring).

    Args:
        terminal: where kept lines go (the real stdout).
        log: where every line goes, unfiltered.
    """

    def __init__(self, terminal: IO[str], log: IO[str]):
        self.terminal, self.log = terminal, log
        self._lock = threading.Lock()
        # Keyed by the thread itself, not threading.get_ident(): an ident is reused once its thread
        # has ended, and kfp.local's ParallelFor pool threads end before the next steps' output
        # threads start; keyed by ident, a new thread took over a finished task's label (seen:
        # make run-containers printed train-model's lines as "[preprocess-partition-2]").
        self._threads: dict[threading.Thread, _Thread] = {}
        self._labels: dict[str, int] = {}
        self._latest = ""  # the label of the task started last, in any thread

    def write(self, text: str) -> int:
        with self._lock:
            state = self._threads.setdefault(threading.current_thread(), _Thread())
            state.partial += text
            *lines, state.partial = state.partial.split("\n")
            for line in lines:
                self.log.write(line + "\n")
                shown = self.show(line, state)
                if shown is not None:
                    self.terminal.write(shown + "\n")
            self.log.flush()
            self.terminal.flush()
        return len(text)

    def flush(self) -> None:
        with self._lock:
            for state in self._threads.values():
                if state.partial:
                    self.log.write(state.partial + "\n")
                    shown = self.show(state.partial, state)
                    if shown is not None:
                        self.terminal.write(shown + "\n")
                    state.partial = ""
            self.log.flush()
            self.terminal.flush()

    def isatty(self) -> bool:
        return False

    def _label(self, task: str) -> str:
        self._labels[task] = self._labels.get(task, 0) + 1
        n = self._labels[task]
        return task if n == 1 else f"{task}-{n}"

    def show(self, raw: str, state: _Thread) -> str | None:
        """The terminal form of one line, or None to keep it only in the log."""
        line = _ANSI.sub("", raw).rstrip()
        text = line.strip()
        if state.dump_depth is not None:
            bare = _STRING.sub('""', text)
            state.dump_depth += bare.count("{") - bare.count("}")
            if state.dump_depth <= 0:
                state.dump_depth = None
            return None
        if _DUMP.search(text):
            state.dump_depth = 0
            return None
        if state.in_outputs:
            if raw[:1].isspace() and not _KFP_LOG.match(text):
                return None
            state.in_outputs = False
        if not text or _HARMLESS.search(text):
            return None
        if _OUTPUTS.search(text):
            state.in_outputs = True
            return None
        if _KFP_LOG.match(text):
            match = _EXECUTING.search(text)
            if match:
                state.label = self._latest = self._label(match.group(1))
            elif _FINISHED.search(text):
                # kfp.local's DockerRunner streams a later task's output from a pool thread that
                # ran a ParallelFor task before: a finished task's label must not stick to it.
                state.label = ""
            return text
        label = state.label or self._latest
        return f"  [{label}] {text}" if label else text


@contextmanager
def filtered_terminal(log_path: str) -> Iterator[TerminalFilter]:
    """Route ``sys.stdout`` and ``sys.stderr`` through one :class:`TerminalFilter` into
    ``log_path`` (every line) and the real stdout (the lines worth reading)."""
    real_out, real_err = sys.stdout, sys.stderr
    with open(log_path, "a", encoding="utf-8") as log:
        filt = TerminalFilter(real_out, log)
        sys.stdout = sys.stderr = filt  # type: ignore[assignment]
        try:
            yield filt
        finally:
            filt.flush()
            sys.stdout, sys.stderr = real_out, real_err
            _detach_handlers(filt)


def _detach_handlers(stream) -> None:
    """Remove logging handlers bound to ``stream``. kfp.local logs "Cleaned up workspace"
    with ``logging.info`` outside its own logger context; on a root logger without handlers
    that runs ``logging.basicConfig``, which binds a handler to the ``sys.stderr`` of the
    moment (this filter). Left attached, it writes to a closed log file on the next run in
    the same process ("--- Logging error ---")."""
    import logging

    loggers = [logging.getLogger()] + [lg for lg in logging.Logger.manager.loggerDict.values()
                                       if isinstance(lg, logging.Logger)]
    for lg in loggers:
        for h in list(lg.handlers):
            if isinstance(h, logging.StreamHandler) and getattr(h, "stream", None) is stream:
                lg.removeHandler(h)
