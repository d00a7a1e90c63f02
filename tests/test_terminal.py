"""What `make run` prints: a real kfp.local run through the terminal filter, and the progress lines."""

# No `from __future__ import annotations`: kfp reads the components' annotations as types.
import io
import sys
from types import SimpleNamespace

import pytest
from kfp import dsl, local

from components.images import WAVENET_IMAGE
from pipelines.terminal import TerminalFilter, filtered_terminal
from wavenet.train.progress import ProgressLines, progress_interval, progress_mode


@dsl.component(base_image=WAVENET_IMAGE, install_kfp_package=False)
def _fails(word: str):
    print(f"step output: {word}")
    raise ValueError(f"real failure in the step: {word}")


@dsl.component(base_image=WAVENET_IMAGE, install_kfp_package=False)
def _speaks(word: str) -> str:
    print(f"step output: {word}")
    return word


@dsl.pipeline(name="terminal-test")
def _pipeline(word: str):
    first = _speaks(word=word)
    _fails(word=first.output)


@pytest.mark.pipeline
def test_a_failing_step_reaches_the_terminal_and_the_executor_dumps_only_the_log(tmp_path):
    terminal = io.StringIO()
    log = tmp_path / "run.log"
    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(tmp_path / "root"),
               raise_on_error=True)
    with pytest.raises(RuntimeError):
        with open(log, "w") as f:
            filt = TerminalFilter(terminal, f)
            real = sys.stdout, sys.stderr
            sys.stdout = sys.stderr = filt
            try:
                _pipeline(word="zebra")
            finally:
                filt.flush()
                sys.stdout, sys.stderr = real
    shown, full = terminal.getvalue(), log.read_text()
    # The step's own output and its real error reach the terminal, labelled with the task.
    assert "[speaks] step output: zebra" in shown
    assert "ValueError: real failure in the step: zebra" in shown
    assert "finished with status" in shown and "FAILURE" in shown
    # kfp.local's executor dumps and the known-harmless warnings stay in the log only.
    assert "Got executor_input:" in full and "Got executor_input:" not in shown
    assert '"executorInput"' not in shown and '"inputs": {' not in shown
    assert len(shown.splitlines()) < len(full.splitlines()) / 3


def test_the_known_harmless_warnings_leave_the_terminal_and_our_own_stay():
    kfp = "/venv/lib/python3.11/site-packages/kfp/local/"
    lines = [
        f"{kfp}orchestrator/task_executor.py:100: UserWarning: Task 'train-model': settings "
        "['display_name'] have no effect in the current local execution mode.",
        "  _warn_local_only_noops(task_name, task_spec, executor_spec.container)",
        f"{kfp}subprocess_task_handler.py:81: RuntimeWarning: You may be attemping to run a task "
        'that uses custom or non-Python base image "ghcr.io/x/wavenet:0.1.0" in a Python environment.',
        "  warnings.warn(",
        "WARNING: All log messages before absl::InitializeLog() is called are written to STDERR",
        "I0000 00:00:1796577375.062438    9660 port.cc:153] oneDNN custom operations are on. You may "
        "see slightly different numerical results due to floating-point round-off errors from "
        "different computation orders. To turn them off, set the environment variable "
        "`TF_ENABLE_ONEDNN_OPTS=0`.",
        "I0000 00:00:1795843562.079725    6738 cudart_stub.cc:31] Could not find cuda drivers on "
        "your machine, GPU will not be used.",
        "E0000 00:00:1795843616.735071    6738 cuda_platform.cc:52] failed call to cuInit: INTERNAL: "
        "CUDA error: Failed call to cuInit: UNKNOWN ERROR (303)",
        "2026/11/28 05:27:24 INFO mlflow.store.db.utils: Creating initial MLflow database tables...",
        "[KFP Executor 2026-12-06 18:06:09,841 INFO]: generated new fontManager",
        "2026/12/06 21:18:16 INFO mlflow.store.model_registry.abstract_store: Waiting up to 300 "
        "seconds for model version to finish creation. Model name: wavenet, version 1",
        "warning: skipped drums/bad.wav: not decodable audio",
        "E0000 00:00:1795843616.735071    6738 coordination_service.cc:1] tasks have crashed",
    ]
    out, log = io.StringIO(), io.StringIO()
    TerminalFilter(out, log).write("\n".join(lines) + "\n")
    assert out.getvalue().splitlines() == lines[-2:]
    assert log.getvalue().splitlines() == lines


def test_a_thread_that_ran_a_finished_task_labels_its_later_output_with_the_task_now_running():
    import threading

    out, log = io.StringIO(), io.StringIO()
    filt = TerminalFilter(out, log)

    # One pool thread runs a ParallelFor task, then streams the next task's output.
    ready, go, done = threading.Event(), threading.Event(), threading.Event()

    def pool():
        filt.write("18:01:09.349 - INFO - Executing task 'preprocess-partition'\nshard written\n"
                   "18:01:19.461 - INFO - Task 'preprocess-partition' finished with status SUCCESS\n")
        ready.set()
        go.wait()
        filt.write("train step 5/30\n")
        done.set()

    worker = threading.Thread(target=pool)
    worker.start()
    ready.wait()
    filt.write("18:01:28.445 - INFO - Executing task 'train-model'\n")
    go.set()
    done.wait()
    worker.join()
    shown = out.getvalue().splitlines()
    assert "  [preprocess-partition] shard written" in shown
    assert "  [train-model] train step 5/30" in shown, shown


def test_a_new_thread_with_an_ended_threads_ident_does_not_take_over_its_label(monkeypatch):
    """Thread idents are reused once a thread has ended: every thread here gets the same ident,
    as a step's output thread can get that of a ParallelFor pool thread that ran a task."""
    import threading

    real, this = threading.get_ident, threading.get_ident()
    monkeypatch.setattr(threading, "get_ident", lambda: 0 if real() == this else 1)
    out, log = io.StringIO(), io.StringIO()
    filt = TerminalFilter(out, log)

    def pool():
        filt.write("18:01:09.349 - INFO - Executing task 'preprocess-partition'\nshard written\n")

    def output():
        filt.write("train step 5/30\n")

    for target in (pool, pool):
        t = threading.Thread(target=target)
        t.start()
        t.join()
    filt.write("18:01:28.445 - INFO - Executing task 'train-model'\n")
    t = threading.Thread(target=output)
    t.start()
    t.join()
    shown = out.getvalue().splitlines()
    assert "  [preprocess-partition-2] shard written" in shown
    assert "  [train-model] train step 5/30" in shown, shown


def test_filtered_terminal_restores_the_streams_and_keeps_unknown_lines(tmp_path):
    before = sys.stdout
    with filtered_terminal(str(tmp_path / "a.log")):
        print("warning: something of our own")
        print("-" * 40)
    assert sys.stdout is before
    assert "warning: something of our own" in (tmp_path / "a.log").read_text()
    assert "-" * 40 in (tmp_path / "a.log").read_text()


def test_progress_mode_picks_a_bar_on_a_terminal_and_lines_in_a_log():
    class Tty(io.StringIO):
        def isatty(self):
            return True

    assert progress_mode(True, Tty()) == "bar"
    assert progress_mode("auto", io.StringIO()) == "lines"
    assert progress_mode(False) == "off" and progress_mode("lines") == "lines"
    with pytest.raises(ValueError, match="Received: progress='loud'"):
        progress_mode("loud")


def test_progress_lines_give_step_total_bits_rate_and_eta_about_ten_times():
    assert progress_interval(300, 10) == 30 and progress_interval(30, 5) == 5
    out, now = io.StringIO(), [0.0]
    lines = ProgressLines(total=30, every=10, stream=out, clock=lambda: now[0])
    for step in range(1, 31):
        now[0] += 2.0
        stats = SimpleNamespace(samples_per_s=500.0, timed_seconds=2.0 * (step - 1),
                                timed_steps=step - 1)
        lines.on_step(SimpleNamespace(step=step, bits=float(step)), stats)
    text = out.getvalue().splitlines()
    assert len(text) == 3
    # bits: the mean over the steps since the previous line (11..20 -> 15.5)
    assert text[1] == "train step 20/30 (67%) bits 15.500 samples/s 500 elapsed 0:00:40 ETA 0:00:20"
    assert text[2].startswith("train step 30/30 (100%)") and text[2].endswith("ETA 0:00:00")
