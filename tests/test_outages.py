"""Outages are retryable, bad input is not; credentials never leak (issue 19: points 4, 7, 9).

Real processes and servers on 127.0.0.1: an ``mlflow server`` stopped and restarted on the
same port and store under a two-worker training run, closed ports, MLflow's basic-auth app,
a plain HTTP server that is not MLflow, and the GCS emulator.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import psutil
import pytest
from conftest import free_port, run_mlflow_server, stop_process_group, wait_healthy
from mlflow import MlflowClient

from wavenet.config import preset
from wavenet.edges import storage, tracking
from wavenet.edges.tfjob import Pods, render_tfjob
from wavenet.errors import TrackingError, TrackingUnavailable, redact

BUCKET = "wavenet-outages"
SECRET = "s3cret-Pa55"


def _wavenet(*args) -> list[str]:
    return [sys.executable, "-m", "wavenet.cli", *map(str, args)]


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("TF_CONFIG", "MLFLOW_RUN_ID")}
    return {**env, "TF_CPP_MIN_LOG_LEVEL": "2", **extra}


def _wait_for(condition, what: str, proc: subprocess.Popen, log: Path, timeout: float = 600):
    """Poll ``condition()`` until true; fail when ``proc`` ends first or time runs out."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert proc.poll() is None, f"launcher ended ({proc.returncode}) before {what}:\n" \
                                    f"{log.read_text()[-3000:]}"
        assert time.monotonic() < deadline, f"no {what} within {timeout:.0f} s:\n{log.read_text()[-3000:]}"
        time.sleep(0.2)


def _checkpoint_step(run_dir: Path) -> int:
    steps = [int(p.name[len("ckpt-"):-len(".index")]) for p in (run_dir / "checkpoints").glob("ckpt-*.index")]
    return max(steps, default=0)


def _logged_steps(uri: str, run_id: str, key: str) -> list[int]:
    with contextlib.suppress(Exception):  # the server may be down: nothing logged, as far as we know
        return [m.step for m in MlflowClient(uri).get_metric_history(run_id, key)]
    return []


# -- point 4: an MLflow restart under a two-worker run ------------------------------------------

@pytest.mark.slow
def test_two_worker_training_rides_out_an_mlflow_restart(tiny_shards, tmp_path):
    folder, port = tmp_path / "mlflow", free_port()
    out, log = tmp_path / "run", tmp_path / "launcher.err"
    steps, cfg = 200, preset("tiny")
    argv = _wavenet("train", tiny_shards, "--out", out, "--preset", "tiny", "--workers", 2,
                    "--steps", steps, "--progress", "lines", "--tracking-uri",
                    f"http://127.0.0.1:{port}", "--experiment", "outage")
    server = run_mlflow_server(folder, port=port)
    uri = server.__enter__().uri
    timeline: dict[str, float] = {}
    # Credentials as MLflow defines them (this server has no auth app and ignores them): they
    # must not show up in any output, worker command line or MLflow record.
    env = _env(MLFLOW_TRACKING_USERNAME="alice", MLFLOW_TRACKING_PASSWORD=SECRET)
    with open(log, "w") as err:
        launcher = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=err, text=True)
        try:
            start = time.monotonic()
            _wait_for(lambda: (out / "mlflow_run_id").exists(), "an MLflow run", launcher, log)
            run_id = (out / "mlflow_run_id").read_text().strip()
            workers = psutil.Process(launcher.pid).children()
            assert len(workers) == 2
            for w in workers:  # the URI travels in the environment (owner-only), not in argv
                assert "--tracking-uri" not in w.cmdline() and SECRET not in " ".join(w.cmdline())
                assert w.environ()["MLFLOW_TRACKING_URI"] == uri
            _wait_for(lambda: _logged_steps(uri, run_id, "train_bits_per_sample"), "a logged metric",
                      launcher, log)
            stopped_at_step = _checkpoint_step(out)
            timeline[f"first metric logged, stopping the server (checkpoint {stopped_at_step})"] = \
                time.monotonic() - start
            server.__exit__(None, None, None)  # the outage: SIGTERM to the server, port closed
            timeline["server stopped"] = time.monotonic() - start
            _wait_for(lambda: "unreachable" in log.read_text(), "the chief noticing the outage",
                      launcher, log)
            timeline["chief noticed"] = time.monotonic() - start
            # Training goes on without the server: a checkpoint after the stop (or, on a fast
            # machine, the end of training waiting for the server).
            _wait_for(lambda: _checkpoint_step(out) > stopped_at_step
                      or "retrying for up to" in log.read_text(),
                      "training going on during the outage", launcher, log)
            timeline[f"trained on (checkpoint {stopped_at_step} -> {_checkpoint_step(out)})"] = \
                time.monotonic() - start
            server = run_mlflow_server(folder, port=port)  # same port, same store
            server.__enter__()
            timeline["server back"] = time.monotonic() - start
            stdout, _ = launcher.communicate(timeout=900)
            timeline["run finished"] = time.monotonic() - start
        finally:
            if launcher.poll() is None:
                launcher.kill()
    try:
        text = log.read_text()
        print("\ntimeline (s since launch): " + ", ".join(f"{k} {v:.1f}" for k, v in timeline.items()))
        assert launcher.returncode == 0, text[-3000:]
        assert "restarting all" not in text  # ridden out in-process, no worker restarted
        summary = json.loads(stdout)
        assert summary["run_id"] == run_id and summary["steps"] == steps
        client = MlflowClient(uri)
        runs = client.search_runs([client.get_experiment_by_name("outage").experiment_id])
        assert [r.info.run_id for r in runs] == [run_id]  # one MLflow run
        assert runs[0].info.status == "FINISHED"
        history = client.get_metric_history(run_id, "train_bits_per_sample")
        assert sorted(m.step for m in history) == list(range(cfg.train.log_every, steps + 1,
                                                             cfg.train.log_every))  # none lost, none twice
        assert summary["model_uri"]
        assert SECRET not in text + stdout
        recorded = json.dumps([runs[0].data.params, runs[0].data.tags])
        assert SECRET not in recorded
    finally:
        server.__exit__(None, None, None)


# -- point 4: closed port -> 138 after bounded retries; refusals -> 2 ---------------------------

_ONE_WORKER = json.dumps({"cluster": {"worker": ["127.0.0.1:1"]}, "task": {"type": "worker", "index": 0}})


def _worker(tiny_shards, tmp_path, uri, *args, **env) -> tuple[subprocess.CompletedProcess, float]:
    """``wavenet train --worker ARGS`` as a TFJob pod runs it (one worker), tracking to ``uri``."""
    start = time.monotonic()
    proc = subprocess.run(_wavenet("train", tiny_shards, "--out", tmp_path / "run", "--preset", "tiny",
                                   "--worker", "--no-progress", "--tracking-uri", uri, *args),
                          capture_output=True, text=True, timeout=600,
                          env=_env(TF_CONFIG=_ONE_WORKER, **env))
    return proc, time.monotonic() - start


def _errors(stderr: str) -> list[str]:
    assert "Traceback" not in stderr, stderr
    return [line for line in stderr.splitlines() if line.startswith("error: ")]


@pytest.mark.subprocess
def test_a_worker_retries_a_closed_mlflow_port_then_exits_138(tiny_shards, tmp_path):
    port = free_port()  # nothing listens there
    proc, _ = _worker(tiny_shards, tmp_path, f"http://127.0.0.1:{port}", WAVENET_SERVICE_RETRY_S="4")
    assert proc.returncode == 138, proc.stderr[-3000:]
    assert f"cannot reach MLflow tracking server at http://127.0.0.1:{port}" in proc.stderr
    assert "retrying for up to 4 s (WAVENET_SERVICE_RETRY_S)" in proc.stderr
    [line] = _errors(proc.stderr)
    assert line.endswith("(exit 138, retryable)"), line


@pytest.mark.server
def test_the_retries_wait_out_a_server_that_comes_back(tmp_path, monkeypatch):
    """check_tracking_server, started while nothing listens, returns once the server is up."""
    import threading

    monkeypatch.setenv("WAVENET_SERVICE_RETRY_S", "600")
    folder, port = tmp_path / "mlflow", free_port()
    result: list[BaseException | None] = []
    checker = threading.Thread(target=lambda: result.append(
        _catch(lambda: tracking.check_tracking_server(f"http://127.0.0.1:{port}"))))
    checker.start()
    with run_mlflow_server(folder, port=port):
        checker.join(timeout=600)
    assert result == [None]


def _catch(fn) -> BaseException | None:
    try:
        fn()
    except BaseException as e:  # noqa: BLE001 - handed to the test thread
        return e
    return None


@contextlib.contextmanager
def _not_mlflow():
    """A real HTTP server that is not MLflow: every path answers 404."""
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1"],
                            cwd=os.path.dirname(__file__), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=1).close()
                break
            except OSError:
                assert proc.poll() is None and time.monotonic() < deadline
                time.sleep(0.1)
        yield f"http://127.0.0.1:{port}"
    finally:
        stop_process_group(proc, timeout=10)


@pytest.mark.subprocess
def test_a_server_answering_404_is_bad_input_at_once(tiny_shards, tmp_path):
    with _not_mlflow() as uri:
        proc, seconds = _worker(tiny_shards, tmp_path, uri, WAVENET_SERVICE_RETRY_S="600")
    assert proc.returncode == 2, proc.stderr[-3000:]
    [line] = _errors(proc.stderr)
    assert f"MLflow tracking server at {uri} answered 404 on /health" in line
    assert "retrying" not in proc.stderr


@contextlib.contextmanager
def _basic_auth_server(folder: Path):
    """MLflow's basic-auth app (admin/admin-pw), with user bob who may read, not write."""
    folder.mkdir(parents=True)
    ini = folder / "basic_auth.ini"
    ini.write_text(f"[mlflow]\ndefault_permission = READ\ndatabase_uri = sqlite:///{folder}/auth.db\n"
                   "admin_username = admin\nadmin_password = admin-password-1\n"
                   "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n")
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--app-name", "basic-auth", "--host", "127.0.0.1",
         "--port", str(port), "--workers", "1", "--backend-store-uri", f"sqlite:///{folder}/mlflow.db",
         "--artifacts-destination", str(folder / "artifacts")],
        stdout=open(folder / "server.log", "ab"), stderr=subprocess.STDOUT, cwd=folder,  # noqa: SIM115
        start_new_session=True,
        env={**os.environ, "MLFLOW_AUTH_CONFIG_PATH": str(ini), "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
             "MLFLOW_FLASK_SERVER_SECRET_KEY": "test-only"})
    uri = f"http://127.0.0.1:{port}"
    try:
        wait_healthy(uri, lambda: proc.poll() is None, 300,
                     lambda: (folder / "server.log").read_text(errors="replace"))
        request = urllib.request.Request(
            f"{uri}/api/2.0/mlflow/users/create", method="POST",
            data=json.dumps({"username": "bob", "password": "bob-password-1"}).encode(),
            headers={"Content-Type": "application/json",
                     "Authorization": "Basic " + __import__("base64").b64encode(
                         b"admin:admin-password-1").decode()})
        urllib.request.urlopen(request, timeout=30).close()
        yield uri
    finally:
        stop_process_group(proc, timeout=10)


@pytest.mark.slow
def test_refusals_401_and_403_are_bad_input_at_once(tiny_shards, tmp_path, monkeypatch):
    with _basic_auth_server(tmp_path / "auth") as uri:
        # 401: a wrong password.
        proc, _ = _worker(tiny_shards, tmp_path, uri, WAVENET_SERVICE_RETRY_S="600",
                          MLFLOW_TRACKING_USERNAME="bob", MLFLOW_TRACKING_PASSWORD="wrong")
        assert proc.returncode == 2, proc.stderr[-3000:]
        [line] = _errors(proc.stderr)
        assert "refused the credentials of user 'bob' (HTTP 401)" in line
        # 403: bob may read the admin's experiment, not start a run in it.
        monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "admin")
        monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", "admin-password-1")
        MlflowClient(uri).create_experiment("admins")
        proc, _ = _worker(tiny_shards, tmp_path, uri, "--experiment", "admins",
                          WAVENET_SERVICE_RETRY_S="600", MLFLOW_TRACKING_USERNAME="bob",
                          MLFLOW_TRACKING_PASSWORD="bob-password-1")
    assert proc.returncode == 2, proc.stderr[-3000:]
    [line] = _errors(proc.stderr)
    assert "denied user 'bob' (HTTP 403)" in line
    assert "retrying" not in proc.stderr


@pytest.mark.server
def test_run_exists_tells_not_found_from_an_outage(tmp_path, monkeypatch):
    for key, value in tracking.FAST_FAIL_HTTP_ENV.items():  # as `wavenet train` sets them
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("WAVENET_SERVICE_RETRY_S", "2")
    folder, port = tmp_path / "mlflow", free_port()
    with run_mlflow_server(folder, port=port) as server:
        client = MlflowClient(server.uri)
        run_id = client.create_run(client.create_experiment("e")).info.run_id
        assert tracking.run_exists(run_id, server.uri)
        assert not tracking.run_exists("0" * 32, server.uri)  # the store's 404: gone
    with pytest.raises(TrackingUnavailable, match=f"cannot reach MLflow tracking server at {server.uri}"):
        tracking.run_exists(run_id, server.uri)  # a blip is not "gone": no second run


# -- point 7: credentials stay out of URIs, messages, command lines and TFJobs ------------------

@pytest.mark.subprocess
def test_a_tracking_uri_with_a_password_is_refused_without_printing_it(tiny_shards, tmp_path):
    proc = subprocess.run(_wavenet("train", tiny_shards, "--out", tmp_path / "run", "--preset", "tiny",
                                   "--tracking-uri", f"http://alice:{SECRET}@127.0.0.1:1"),
                          capture_output=True, text=True, timeout=600, env=_env())
    assert proc.returncode == 2 and SECRET not in proc.stderr + proc.stdout
    [line] = _errors(proc.stderr)
    assert "http://alice:***@127.0.0.1:1 carries credentials" in line
    assert "MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD" in line
    assert not (tmp_path / "run").exists()
    # From the environment, the same.
    with pytest.raises(TrackingError, match="carries credentials"):
        tracking.resolve_tracking_uri(None, {"MLFLOW_TRACKING_URI": f"https://{SECRET}@mlflow:5000"})


@pytest.mark.subprocess
def test_a_database_that_does_not_answer_is_an_outage_with_its_password_masked(tiny_shards, tmp_path):
    """A database URI has no other place for its password: it is used, and masked when shown.
    A database server that does not answer is an outage like an HTTP server's: retried within
    WAVENET_SERVICE_RETRY_S, then exit 138, not MLflow's own 10 tries over 101 s, then exit 2."""
    uri = f"postgresql://alice:{SECRET}@127.0.0.1:{free_port()}/mlflow"  # nothing listens there
    assert redact(uri) == uri.replace(SECRET, "***")
    proc = subprocess.run(_wavenet("train", tiny_shards, "--out", tmp_path / "run", "--preset", "tiny",
                                   "--no-progress", "--tracking-uri", uri),
                          capture_output=True, text=True, timeout=600, env=_env(WAVENET_SERVICE_RETRY_S="1"))
    assert proc.returncode == 138 and SECRET not in proc.stderr + proc.stdout, proc.stderr[-2000:]
    assert "retrying for up to 1 s (WAVENET_SERVICE_RETRY_S)" in proc.stderr
    assert "Operation will be retried" not in proc.stderr  # MLflow's own retry never started
    [line] = _errors(proc.stderr)
    assert f"cannot reach MLflow's database at {redact(uri)}" in line and "Connection refused" in line


@pytest.mark.slow  # SQLite's busy wait, about 20 s
def test_a_locked_database_store_is_an_outage_not_a_refusal(tmp_path, monkeypatch):
    """Once a database store is open, MLflow reports a failed query (here SQLite's "database is
    locked", after its 5 s busy wait) as TEMPORARILY_UNAVAILABLE: an outage, retried, then 138."""
    import sqlite3

    monkeypatch.setenv("WAVENET_SERVICE_RETRY_S", "0")
    path = tmp_path / "mlflow.db"
    uri = f"sqlite:///{path}"
    client = MlflowClient(uri)
    client.search_experiments()  # the store exists
    lock = sqlite3.connect(path, isolation_level=None)
    lock.execute("BEGIN EXCLUSIVE")
    try:
        with pytest.raises(TrackingUnavailable, match=r"cannot reach MLflow's database .*database is locked"):
            tracking._call(uri, "create an experiment", lambda: client.create_experiment("locked"))
    finally:
        lock.execute("ROLLBACK")
        lock.close()
    assert client.create_experiment("unlocked")  # the same store, usable again


def test_a_tfjob_never_carries_a_uri_with_credentials():
    for value in (f"http://alice:{SECRET}@mlflow:5000", f"postgresql://u:{SECRET}@db/x"):
        with pytest.raises(Exception, match="would write a credential into TFJob") as e:
            render_tfjob("wavenet-x", "ns", Pods("img", ["wavenet", "train"], env={"MLFLOW_TRACKING_URI": value}))
        assert SECRET not in str(e.value)
    job = render_tfjob("wavenet-x", "ns", Pods("img", ["wavenet", "train"],
                                               env={"MLFLOW_TRACKING_URI": "http://mlflow:5000"}))
    assert SECRET not in json.dumps(job)


# -- point 9: the pending-metrics file on gs:// goes once logged --------------------------------

@pytest.mark.slow
def test_pending_metrics_on_a_bucket_are_logged_once(gcs, tiny_shards, tmp_path, mlflow_server):
    out = f"{gcs}/runs/pending"
    argv = _wavenet("train", tiny_shards, "--out", out, "--preset", "tiny", "--no-progress",
                    "--tracking-uri", mlflow_server.uri, "--experiment", "pending")
    env = _env(STORAGE_EMULATOR_HOST=os.environ["STORAGE_EMULATOR_HOST"], GOOGLE_CLOUD_PROJECT="test")
    first = subprocess.run(argv, capture_output=True, text=True, timeout=900, env=env)
    assert first.returncode == 0, first.stderr[-3000:]
    run_id = json.loads(first.stdout)["run_id"]
    # What an outage at the end of a run leaves in the run directory (export._log_outputs).
    pending = f"{out}/mlflow_pending_metrics.json"
    storage.write_text_atomic(pending, json.dumps([{"key": "late", "value": 1.5, "step": 30,
                                                    "timestamp": 1_700_000_000_000}]))
    second = subprocess.run(argv, capture_output=True, text=True, timeout=900, env=env)
    assert second.returncode == 0, second.stderr[-3000:]
    client = MlflowClient(mlflow_server.uri)
    assert [(m.step, m.value) for m in client.get_metric_history(run_id, "late")] == [(30, 1.5)]
    assert not storage.exists(pending)  # logged: gone
    third = subprocess.run(argv, capture_output=True, text=True, timeout=900, env=env)
    assert third.returncode == 0, third.stderr[-3000:]
    # Nothing logged again: the same model, no second copy of the outputs.
    assert json.loads(third.stdout) == json.loads(second.stdout)
