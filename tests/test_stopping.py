"""SIGTERM and Ctrl-C: a checkpoint at a step the workers agree on, exit 143/130, resume from it.

The slow tests run real `wavenet train` processes (tiny preset) on 127.0.0.1 with a
SQLite MLflow store (and the GCS emulator for a bucket run directory); the others check
the signal handling and exit-code policy alone.
"""

import fcntl
import json
import os
import re
import signal
import struct
import subprocess
import sys
import termios
import threading
import time
from pathlib import Path

import psutil
import pytest
from mlflow import MlflowClient

from wavenet.checkpoints import STATE_FILE, latest_in_state
from wavenet.edges import storage
from wavenet.train.exit_codes import exit_code, is_retryable
from wavenet.train.stopping import StopSignals, TrainingStopped

# Periodic checkpoints every 20 steps, a metric at every step: a stop at step S
# between two periodic checkpoints must leave ckpt-S, and the MLflow history
# must hold every step exactly once.
_COMMON = ["--preset", "tiny", "--steps", "60", "--set", "train.checkpoint_every=20",
           "--set", "train.log_every=1"]


def _env():
    env = dict(os.environ)
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    for key in ("TF_CONFIG", "MLFLOW_RUN_ID", "MLFLOW_EXPERIMENT_ID"):
        env.pop(key, None)
    return env


def _train(data, out, db, *extra):
    return [sys.executable, "-m", "wavenet.cli", "train", str(data), "--out", str(out), *_COMMON,
            "--tracking-uri", f"sqlite:///{db}", "--experiment", "stop", *extra]


def _checkpoint_step(out) -> int:
    """The step of the latest checkpoint in OUT/checkpoints (a folder or gs://), 0 if none."""
    state = storage.join(str(out), "checkpoints", STATE_FILE)
    name = latest_in_state(storage.read_text(state)) if storage.exists(state) else None
    return int(name.rsplit("-", 1)[1]) if name else 0


def _wait_for_checkpoint(out, step: int, proc, timeout: float = 400) -> None:
    deadline = time.monotonic() + timeout
    while _checkpoint_step(out) < step:
        assert proc.poll() is None, f"exited {proc.returncode} before checkpoint {step}"
        assert time.monotonic() < deadline, f"no checkpoint {step} after {timeout} s"
        time.sleep(0.05)


def _one_finished_run_with_every_step(db: Path, run_id: str, steps: int) -> None:
    client = MlflowClient(f"sqlite:///{db}")
    runs = client.search_runs([client.get_experiment_by_name("stop").experiment_id])
    assert [(r.info.run_id, r.info.status) for r in runs] == [(run_id, "FINISHED")]
    logged = sorted(m.step for m in client.get_metric_history(run_id, "train_bits_per_sample"))
    assert logged == list(range(1, steps + 1))  # no gap, no step twice


# -- the parts ---------------------------------------------------------------------

def test_the_first_signal_is_recorded_a_second_sigterm_ignored_a_second_ctrl_c_raises():
    before = signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)
    with StopSignals() as stop:
        assert not stop.requested
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(0.01)  # Python runs the handler at the next bytecode
        assert stop.signum == signal.SIGTERM
        os.kill(os.getpid(), signal.SIGTERM)  # the launcher's own stop: nothing more
        time.sleep(0.01)
        assert stop.signum == signal.SIGTERM
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(1)
    assert (signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)) == before


def test_once_the_loop_stops_a_later_sigterm_is_ignored_on_the_way_out():
    before = signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)
    try:
        with pytest.raises(TrainingStopped):
            with StopSignals():
                raise TrainingStopped(3, 10, "ckpts", None)
        assert signal.getsignal(signal.SIGTERM) == signal.SIG_IGN
        assert signal.getsignal(signal.SIGINT) == before[1]  # a second Ctrl-C still interrupts
    finally:
        signal.signal(signal.SIGTERM, before[0])


@pytest.mark.parametrize("signum, code", [(signal.SIGTERM, 143), (signal.SIGINT, 130), (None, 143)])
def test_a_stopped_worker_exits_with_the_signals_retryable_code(signum, code):
    e = TrainingStopped(37, 120, "gs://b/run/checkpoints", signum)
    assert exit_code(e) == code and is_retryable(code)
    assert "at step 37 of 120: checkpoint saved in gs://b/run/checkpoints" in str(e)
    assert "\n" not in str(e)


# -- real training processes ---------------------------------------------------------

@pytest.mark.slow
def test_sigterm_to_one_of_two_workers_saves_an_agreed_step_and_the_launcher_resumes_there(
        tiny_shards, tmp_path):
    out, db, log = tmp_path / "run", tmp_path / "m.db", tmp_path / "launcher.err"
    with open(log, "w") as err:
        launcher = subprocess.Popen(_train(tiny_shards, out, db, "--workers", "2", "--no-progress"),
                                    env=_env(), stdout=subprocess.PIPE, stderr=err, text=True)
        try:
            _wait_for_checkpoint(out, 20, launcher)
            workers = {json.loads(p.environ()["TF_CONFIG"])["task"]["index"]: p
                       for p in psutil.Process(launcher.pid).children()}
            workers[1].send_signal(signal.SIGTERM)
            stdout, _ = launcher.communicate(timeout=600)
        finally:
            if launcher.poll() is None:
                launcher.kill()
    text = log.read_text()
    assert launcher.returncode == 0, text[-3000:]
    m = re.search(r"worker (\d) exited (\d+) \(retryable\): restarting all 2 workers from step (\d+), "
                  r"restart 1 of 3", text)
    assert m, text[-3000:]
    stopped_at = int(m.group(3))
    assert int(m.group(2)) == 143
    assert stopped_at > 20 and stopped_at % 20, stopped_at  # its own checkpoint, not a periodic one
    assert text.count("restarting all 2 workers") == 1
    summary = json.loads(stdout)
    assert summary["start_step"] == stopped_at and summary["steps"] == 60  # resumed exactly there
    _one_finished_run_with_every_step(db, (out / "mlflow_run_id").read_text().strip(), 60)


BUCKET = "wavenet-stop"  # the gcs fixture's emulator bucket


@pytest.mark.slow
def test_sigterm_to_a_single_process_saves_to_its_bucket_exits_143_and_the_same_command_resumes(
        gcs, tiny_shards, tmp_path):
    """`--out gs://...` (GCS emulator): the stop's checkpoint goes through the same mirror."""
    out, db = f"{gcs}/runs/stopped", tmp_path / "m.db"
    argv = _train(tiny_shards, out, db, "--no-progress")
    proc = subprocess.Popen(argv, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    try:
        _wait_for_checkpoint(out, 20, proc)
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 143, err[-3000:]
    stopped_at = _checkpoint_step(out)
    assert stopped_at > 20 and stopped_at % 20, stopped_at  # its own checkpoint, not a periodic one
    assert storage.exists(f"{out}/checkpoints/ckpt-{stopped_at}.index")
    assert err.strip().splitlines()[-1] == (f"stopped by SIGTERM at step {stopped_at} of 60: "
                                            f"checkpoint saved in {out}/checkpoints; the same "
                                            "command resumes from it")
    assert "Traceback" not in err
    run_id = storage.read_text(f"{out}/mlflow_run_id").strip()
    assert MlflowClient(f"sqlite:///{db}").get_run(run_id).info.status == "KILLED"

    done = subprocess.run(argv, env=_env(), capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads(done.stdout)
    assert summary["start_step"] == stopped_at and summary["steps"] == 60
    _one_finished_run_with_every_step(db, run_id, 60)


def _take_terminal() -> None:  # pragma: no cover - runs in the child: its pty becomes its terminal
    fcntl.ioctl(0, termios.TIOCSCTTY, 0)


@pytest.mark.slow
def test_ctrl_c_in_a_terminal_saves_and_ends_with_one_line(tiny_shards, tmp_path):
    """`wavenet train` on a terminal (a pty: progress bar on), Ctrl-C typed into it."""
    out = tmp_path / "run"
    master, slave = os.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))  # 24 x 100
    proc = subprocess.Popen(_train(tiny_shards, out, tmp_path / "m.db"), env=_env(), stdin=slave,
                            stdout=slave, stderr=slave, start_new_session=True,
                            preexec_fn=_take_terminal)
    os.close(slave)
    screen = bytearray()

    def read():
        while True:
            try:
                chunk = os.read(master, 4096)
            except OSError:  # EIO: the child closed the terminal
                return
            if not chunk:
                return
            screen.extend(chunk)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        _wait_for_checkpoint(out, 20, proc)
        os.write(master, b"\x03")  # the terminal turns it into SIGINT for the foreground group
        proc.wait(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
        reader.join(timeout=10)
        os.close(master)
    text = screen.decode("utf-8", "replace")
    assert proc.returncode == 130, text[-3000:]
    stopped_at = _checkpoint_step(out)
    assert stopped_at > 20 and stopped_at % 20, stopped_at
    assert "Traceback" not in text and "KeyboardInterrupt" not in text
    last = [seg for seg in re.split(r"[\r\n]+", text) if seg.strip()][-1]
    assert last == (f"stopped by SIGINT at step {stopped_at} of 60: checkpoint saved in "
                    f"{out}/checkpoints; the same command resumes from it"), text[-2000:]
    assert re.search(r"\b2\d/60 \[", text), text[-2000:]  # tqdm's bar was on screen
