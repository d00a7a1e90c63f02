"""The production MLflow set-up of k8s/mlflow.yaml, run for real (issue 10, Found 1 and 10,
Deliver 1): PostgreSQL for the tracking and user stores, the GCS emulator for the artifact
bucket, and `mlflow server` with the Deployment's own container args and environment (read from
the manifest, secrets replaced by test values; tests/production_mlflow.py says exactly what is
substituted), in the MLflow image as uid 1000 on a read-only root where containers run.

Without a container engine the server runs from .venv instead (skipped nowhere: the venv has the
server's dependency group), unless WAVENET_REQUIRE_CONTAINERS=1 (CI), where that is a failure.
"""

import json
import os
import subprocess
import sys
import time

import pytest
from conftest import free_port
from production_mlflow import (
    ADMIN,
    ADMIN_PASSWORD,
    AUTH_CACHE_TTL_S,
    DB_USER,
    PIPELINE_PASSWORD,
    PIPELINE_USER,
    request,
    run_manifest_mlflow,
    secrets_for,
)

pytestmark = pytest.mark.slow

SEARCH = "/api/2.0/mlflow/experiments/search?max_results=5"


def test_the_server_runs_the_manifests_args_on_postgres_as_the_pod_runs(production):
    s = production.server
    # Read from k8s/mlflow.yaml, not retyped here: the production set-up as committed.
    assert "--app-name=basic-auth" in s.args and "--serve-artifacts" in s.args
    assert f"--artifacts-destination=gs://{production.bucket}/{production.prefix}" in s.args
    assert s.env["MLFLOW_AUTH_CONFIG_PATH"].endswith("basic_auth.ini")
    assert s.env["MLFLOW_BACKEND_STORE_URI"].startswith(f"postgresql://{DB_USER}:")
    if s.container is not None:
        assert s.container.attrs["HostConfig"]["ReadonlyRootfs"] is True
        # The server process itself: uid/gid 1000 (runAsUser/runAsGroup), no capabilities
        # (drop ALL), no new privileges, and the root filesystem refuses writes.
        code, out = s.container.exec_run(["sh", "-c", "grep -E '^(Uid|Gid|CapEff|NoNewPrivs)' /proc/1/status; "
                                          "touch /opt/venv/x 2>/dev/null || echo read-only-root"])
        status = dict(line.split(":", 1) for line in out.decode().splitlines() if ":" in line)
        assert status["Uid"].split()[:2] == ["1000", "1000"] and status["Gid"].split()[0] == "1000", out
        assert int(status["CapEff"], 16) == 0 and status["NoNewPrivs"].strip() == "1", out
        assert out.decode().splitlines()[-1] == "read-only-root", out
    # Both stores live in PostgreSQL: MLflow created its tables and the seeded admin.
    assert production.pg.sql("SELECT count(*) FROM information_schema.tables "
                              "WHERE table_name IN ('experiments', 'runs', 'registered_models')",
                              "mlflow") == "3"
    assert production.pg.sql("SELECT username || ':' || is_admin::text FROM users ORDER BY id",
                             "mlflow_auth").splitlines() == [f"{ADMIN}:true", f"{PIPELINE_USER}:false"]


def test_anonymous_and_wrong_password_requests_get_401(production):
    uri = production.server.uri
    status, body = request(uri + SEARCH)
    assert status == 401, body
    assert request(uri + SEARCH, auth=(PIPELINE_USER, "not-the-password"))[0] == 401
    assert request(uri + SEARCH, auth=("nobody", PIPELINE_PASSWORD))[0] == 401
    assert request(uri + SEARCH, auth=(PIPELINE_USER, PIPELINE_PASSWORD))[0] == 200
    # The artifact proxy is behind the same authentication.
    assert request(uri + "/api/2.0/mlflow-artifacts/artifacts")[0] == 401
    # /health stays open for the kubelet's probes (readinessProbe, livenessProbe).
    assert request(uri + "/health")[0] == 200


def test_the_allowed_hosts_of_the_manifest_refuse_an_attackers_name(production):
    """The DNS-rebinding guard, on the real server: the Service's names pass, a look-alike of the
    old `mlflow.*:5000` pattern does not (issue 10, Found 9)."""
    s = production.server
    creds = (PIPELINE_USER, PIPELINE_PASSWORD)
    for host in ("mlflow", "mlflow.wavenet.svc", "mlflow.team-a.svc.cluster.local", "localhost"):
        assert request(s.uri + SEARCH, auth=creds, host=f"{host}:{s.port}")[0] == 200, host
    for host in ("mlflow.attacker.com", "mlflow.svc.attacker.com", "attacker.com",
                 "mlflow.wavenet.svc.cluster.local.attacker.com"):
        status, body = request(s.uri + SEARCH, auth=creds, host=f"{host}:{s.port}")
        assert status == 403 and "Invalid Host header" in body, (host, status, body)


def test_a_client_logs_params_metrics_and_an_artifact_into_the_bucket(production, tmp_path, monkeypatch):
    import mlflow
    from google.cloud import storage
    from mlflow import MlflowClient

    from wavenet.edges import tracking

    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", PIPELINE_USER)
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", PIPELINE_PASSWORD)
    uri = production.server.uri
    artifact = tmp_path / "listening-notes.txt"
    artifact.write_text("logged through the production server " + os.urandom(8).hex())
    # The project's own tracking path: start_run (params), the metrics buffer, log_artifacts.
    with tracking.start_run("production-check", run_name="client", tracking_uri=uri,
                            params={"model.stacks": 2, "train.steps": 10}) as run:
        buf = tracking.MetricsBuffer(run.info.run_id, uri)
        assert buf.log({"loss_bits": 5.5}, step=1) and buf.log({"loss_bits": 4.25}, step=2)
        tracking.log_artifacts([str(artifact)], artifact_path="notes")
    run_id = run.info.run_id
    got = MlflowClient(uri).get_run(run_id)
    assert got.data.params == {"model.stacks": "2", "train.steps": "10"}
    history = MlflowClient(uri).get_metric_history(run_id, "loss_bits")
    assert [(m.step, m.value) for m in history] == [(1, 5.5), (2, 4.25)]
    assert got.info.artifact_uri.startswith("mlflow-artifacts:/")  # proxied: no bucket for clients
    assert mlflow.artifacts.load_text(f"runs:/{run_id}/notes/{artifact.name}") == artifact.read_text()
    # ... and the bytes are in the bucket the manifest names, on the emulator.
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", production.emulator)
    blobs = {b.name: b for b in storage.Client(project="test").list_blobs(production.bucket)}
    (name,) = [n for n in blobs if n.endswith(f"{run_id}/artifacts/notes/{artifact.name}")]
    assert name.startswith(production.prefix + "/")
    assert blobs[name].download_as_bytes() == artifact.read_bytes()


def _cli(args, env_extra, timeout=600):
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_TRACKING_")}
    env.update(env_extra)
    return subprocess.run([sys.executable, "-m", "wavenet.cli", *args], capture_output=True, text=True,
                          env=env, timeout=timeout)


def test_a_wrong_database_password_fails_at_once_in_one_line(production, untrained_model_path, eval_data):
    """A database store that refuses the password: one line at once (exit 2), not retried,
    neither by us (it is an answer, not an outage) nor by MLflow (10 tries over 101 s)."""
    secret = "not-the-db-password"
    uri = f"postgresql://{DB_USER}:{secret}@127.0.0.1:{production.pg.port}/mlflow"
    r = _cli(["evaluate", untrained_model_path, eval_data, "--preset", "tiny", "--tracking-uri", uri], {})
    assert r.returncode == 2, r.stderr[-3000:]
    assert "Traceback" not in r.stderr and secret not in r.stderr + r.stdout, r.stderr[-3000:]
    assert "retrying" not in r.stderr and "Operation will be retried" not in r.stderr, r.stderr[-3000:]
    errors = [ln for ln in r.stderr.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1, r.stderr[-3000:]
    assert errors[0].startswith(f"error: cannot connect to MLflow's database at postgresql://{DB_USER}:***@"), errors
    assert f'password authentication failed for user "{DB_USER}"' in errors[0], errors


@pytest.mark.parametrize("who", ["anonymous", "wrong password"])
def test_a_step_refused_by_the_server_fails_in_one_line_naming_it(production, who, untrained_model_path,
                                                                 eval_data):
    uri = production.server.uri
    creds = {} if who == "anonymous" else {"MLFLOW_TRACKING_USERNAME": PIPELINE_USER,
                                           "MLFLOW_TRACKING_PASSWORD": "not-the-password"}
    r = _cli(["evaluate", untrained_model_path, eval_data, "--preset", "tiny", "--tracking-uri", uri], creds)
    assert r.returncode == 2, r.stderr[-3000:]
    assert "Traceback" not in r.stderr, r.stderr[-3000:]
    errors = [ln for ln in r.stderr.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1, r.stderr[-3000:]
    expected = (f"error: MLflow tracking server at {uri} requires authentication (HTTP 401): set "
                "MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD" if who == "anonymous" else
                f"error: MLflow tracking server at {uri} refused the credentials of user "
                f"'{PIPELINE_USER}' (HTTP 401): check MLFLOW_TRACKING_PASSWORD")
    assert errors[0] == expected, r.stderr[-3000:]


def test_an_evaluation_gate_logs_and_registers_through_the_server(production, untrained_model_path,
                                                                  eval_data, tmp_path, monkeypatch):
    """A pipeline stage (`wavenet evaluate --gate`, what the evaluate component calls) with the
    pipeline user's credentials: a run, a registered champion, the model's files in the bucket."""
    from google.cloud import storage
    from mlflow import MlflowClient

    uri = production.server.uri
    creds = {"MLFLOW_TRACKING_USERNAME": PIPELINE_USER, "MLFLOW_TRACKING_PASSWORD": PIPELINE_PASSWORD}
    started = time.monotonic()
    r = _cli(["evaluate", untrained_model_path, eval_data, "--preset", "tiny", "--gate", "--tracking-uri", uri,
              "--experiment", "production-gate", "--out", str(tmp_path / "eval")], creds)
    assert r.returncode == 0, r.stderr[-3000:]
    print(f"wavenet evaluate --gate through the production server: {time.monotonic() - started:.1f} s")
    result = json.loads(r.stdout)
    assert result["promoted"] is True and result["run_id"]
    for k, v in creds.items():
        monkeypatch.setenv(k, v)
    client = MlflowClient(uri)
    champion = client.get_model_version_by_alias("wavenet", "champion")
    assert client.get_run(result["run_id"]).data.metrics["eval/bits_per_sample"] == pytest.approx(
        result["bits_per_sample"])
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", production.emulator)
    names = [b.name for b in storage.Client(project="test").list_blobs(production.bucket,
                                                                        prefix=production.prefix + "/")]
    assert any(n.endswith(".keras") for n in names), names
    assert champion.version == "1"


def test_the_admin_password_secret_only_seeds_the_first_start(production, tmp_path):
    """MLflow creates the admin from MLFLOW_AUTH_ADMIN_PASSWORD only when the user store has no
    admin yet (mlflow/server/auth/__init__.py, create_admin_user): a changed Secret does not
    change the password; the update-password API does (docs/mlflow.md: rotating the admin password)."""
    new_password = "test-only-Rotated-Pw-6603"
    with run_manifest_mlflow(free_port(), secrets_for(production.pg, admin_password=new_password),
                             tmp_path / "server-2", extra_env={"STORAGE_EMULATOR_HOST": production.emulator},
                             engine=production.engine, image=production.image) as s2:
        print(f"second start on the same stores ({s2.how}): healthy in {s2.start_seconds:.1f} s")
        assert request(s2.uri + SEARCH, auth=(ADMIN, new_password))[0] == 401
        assert request(s2.uri + SEARCH, auth=(ADMIN, ADMIN_PASSWORD))[0] == 200
        # Rotation as docs/mlflow.md says: the admin changes it through the API.
        status, body = request(s2.uri + "/api/2.0/mlflow/users/update-password", method="PATCH",
                               auth=(ADMIN, ADMIN_PASSWORD),
                               data={"username": ADMIN, "password": new_password,
                                     "current_password": ADMIN_PASSWORD})
        assert status == 200, body
        assert request(s2.uri + SEARCH, auth=(ADMIN, new_password))[0] == 200
        # The old password is refused at once by the worker that took the rotation, and by the
        # other within the credential cache's TTL (it may have verified the old one just before).
        deadline = time.monotonic() + AUTH_CACHE_TTL_S + 30
        while (status := request(s2.uri + SEARCH, auth=(ADMIN, ADMIN_PASSWORD))[0]) != 401:
            assert status == 200 and time.monotonic() < deadline, status
            time.sleep(0.5)
    # The first server shares the user store: it sees the rotation too.
    assert request(production.server.uri + SEARCH, auth=(ADMIN, new_password))[0] == 200
    # Rotated back, for the later tests of this module's server (they sign in as the admin).
    status, body = request(production.server.uri + "/api/2.0/mlflow/users/update-password",
                           method="PATCH", auth=(ADMIN, new_password),
                           data={"username": ADMIN, "password": ADMIN_PASSWORD, "current_password": new_password})
    assert status == 200, body


def test_another_users_dead_gate_lock_ends_the_gate_in_one_line(production, untrained_model_path,
                                                                eval_data, monkeypatch):
    """A gate lock that the pipeline's user may not delete (issue 19, Found 3a): another MLflow
    user's gate died holding it. The gate waits one lease of silence, tries to delete it once
    (HTTP 403 from the basic-auth app), and ends in one line that names the lock and how an admin
    removes it: no get/delete/create cycle past its deadline."""
    import mlflow
    from mlflow import MlflowClient

    from wavenet.edges import registry

    uri = production.server.uri
    other, other_password = "other-team", "test-only-Other-Pw-4471"
    status, body = request(uri + "/api/2.0/mlflow/users/create", auth=(ADMIN, ADMIN_PASSWORD),
                           data={"username": other, "password": other_password})
    assert status == 200, body
    name = "wavenet-stale-lock"
    lock = f"{name}.gate-lock"
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", other)
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", other_password)
    # Its lease ran out an hour ago (by its own clock too, for gates of earlier releases).
    MlflowClient(uri).create_registered_model(lock, tags={
        "owner": "other-host:4242:deadbeef", "lease_s": "2", "expires_at": f"{time.time() - 3600:.3f}"})

    def deletes():
        return production.server.logs().count("/api/2.0/mlflow/registered-models/delete")

    before = deletes()
    r = _cli(["evaluate", untrained_model_path, eval_data, "--preset", "tiny", "--gate", "--tracking-uri", uri,
              "--experiment", "production-stale-lock", "--set", f"evaluate.registered_model_name={name}"],
             {"MLFLOW_TRACKING_USERNAME": PIPELINE_USER, "MLFLOW_TRACKING_PASSWORD": PIPELINE_PASSWORD},
             timeout=registry.LOCK_WAIT_S + 120)  # ended within the gate's deadline, with margin
    errors = [ln for ln in r.stderr.splitlines() if ln.startswith("error:")]
    assert r.returncode == 2 and "Traceback" not in r.stderr and len(errors) == 1, r.stderr[-3000:]
    assert errors[0].startswith(f"error: the gate lock {lock!r} of other-host:4242:deadbeef has not "
                                "been renewed for "), errors[0]
    assert errors[0].endswith(f"(its lease: 2 s), and this MLflow user may not delete it (HTTP 403): an "
                              f"MLflow admin or its owner deletes registered model {lock!r} (MLflow UI > "
                              f"Models, or MlflowClient().delete_registered_model({lock!r}))"), errors[0]
    assert deletes() - before == 1, "one delete tried, not a loop"
    # The admin removes it as the line says; the next gate takes the lock at once.
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", ADMIN)
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", ADMIN_PASSWORD)
    MlflowClient(uri).delete_registered_model(lock)
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", PIPELINE_USER)
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", PIPELINE_PASSWORD)
    mlflow.set_tracking_uri(uri)
    with registry.champion_lock(name, wait_s=30, tracking_uri=uri) as held:
        assert MlflowClient(uri).get_registered_model(lock).tags["owner"] == held.owner
    assert lock not in [m.name for m in MlflowClient(uri).search_registered_models()]
