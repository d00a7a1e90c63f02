"""The MLflow edge against real stores: fail-fast checks, run continuation, outage buffering."""

import json
import os
import time

import pytest
from conftest import run_mlflow_server
from mlflow import MlflowClient

from wavenet.edges import tracking
from wavenet.errors import TrackingUnavailable
from wavenet.local_workers import free_ports


def test_unreachable_server_is_one_line_error(monkeypatch):
    monkeypatch.setenv("WAVENET_SERVICE_RETRY_S", "0")  # no retries (tests/test_outages.py has them)
    (port,) = free_ports(1)
    with pytest.raises(TrackingUnavailable) as info:
        tracking.check_tracking_server(f"http://127.0.0.1:{port}", timeout=2)
    assert str(info.value).startswith(f"cannot reach MLflow tracking server at http://127.0.0.1:{port}")
    assert "\n" not in str(info.value)


def test_resolve_tracking_uri_order(tmp_path):
    assert tracking.resolve_tracking_uri("http://x", {"MLFLOW_TRACKING_URI": "http://y"}) == "http://x"
    assert tracking.resolve_tracking_uri(None, {"MLFLOW_TRACKING_URI": "http://y"}) == "http://y"
    assert tracking.resolve_tracking_uri(None, {}).startswith("sqlite:///")


def test_start_run_continues_a_run_and_nests_under_kfp_parent(tmp_path, monkeypatch, mlflow_db):
    uri = mlflow_db
    with tracking.start_run("exp", run_name="parent", tracking_uri=uri) as parent:
        parent_id = parent.info.run_id
    # As KFP injects it: in the real process environment (mlflow's own
    # start_run would resume this run instead of nesting under it).
    monkeypatch.setenv("MLFLOW_RUN_ID", parent_id)
    with tracking.start_run("exp", run_name="child", tracking_uri=uri,
                            params={"a": 1, "b": None}, tags={"t": "1"}) as run:
        child_id = run.info.run_id
    assert child_id != parent_id
    assert os.environ["MLFLOW_RUN_ID"] == parent_id
    assert "MLFLOW_EXPERIMENT_ID" not in os.environ  # no global state left for later runs
    with tracking.start_run("exp", tracking_uri=uri, run_id=child_id,
                            params={"a": 2}, tags={"t": "2"}) as again:
        assert again.info.run_id == child_id
    client = MlflowClient(uri)
    child = client.get_run(child_id)
    assert child.data.tags["mlflow.parentRunId"] == parent_id
    assert child.data.params == {"a": "1", "b": ""}  # a continued run keeps its params
    assert child.data.tags["t"] == "2"
    exp = client.get_experiment_by_name("exp")
    assert len(client.search_runs([exp.experiment_id])) == 2
    assert tracking.run_exists(child_id, uri)
    assert not tracking.run_exists("0" * 32, uri)


@pytest.mark.slow
def test_metrics_buffer_keeps_metrics_through_a_server_outage(tmp_path, monkeypatch):
    # Fail fast on the dead server (the CLI sets the same variables).
    for key, value in tracking.FAST_FAIL_HTTP_ENV.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    folder = tmp_path / "server"
    warnings = []
    with run_mlflow_server(folder) as server:
        client = MlflowClient(server.uri)
        run_id = client.create_run(client.create_experiment("outage")).info.run_id
        buffer = tracking.MetricsBuffer(run_id, server.uri, retry_after_s=3600,
                                        warn=warnings.append)
        assert buffer.log({"bits": 8.0, "lr": 0.1}, step=1)
        port = server.port
    start = time.monotonic()
    assert not buffer.log({"bits": 7.0}, step=2)
    assert time.monotonic() - start < 20
    assert not buffer.log({"bits": 6.0}, step=3)  # in the retry pause: queued, no request
    assert buffer.failures == 1 and len(buffer.pending) == 2
    assert len(warnings) == 1 and "unreachable" in warnings[0]
    # What is still queued survives a process restart as JSON.
    revived = tracking.MetricsBuffer(run_id, f"http://127.0.0.1:{port}",
                                     pending=json.loads(buffer.to_json()), warn=warnings.append)
    with run_mlflow_server(folder, port=port) as server:
        assert revived.flush(force=True)
        assert revived.pending == []
        history = MlflowClient(server.uri).get_metric_history(run_id, "bits")
    assert [(m.step, m.value) for m in history] == [(1, 8.0), (2, 7.0), (3, 6.0)]


def test_an_authentication_refusal_becomes_one_line_naming_the_server():
    """What MLflow's client raises for the basic-auth app's plain-text 401/403 answers
    (tests/test_mlflow_server.py gets them from a real server)."""
    from mlflow.exceptions import MlflowException

    from wavenet.edges.tracking import credentials_error

    uri = "http://mlflow.wavenet.svc:5000"
    e401 = MlflowException("API request to endpoint /api/2.0/mlflow/experiments/search failed with error "
                           "code 401 != 200. Response body: 'You are not authenticated.'")
    assert str(credentials_error(e401, uri, {})) == (
        f"MLflow tracking server at {uri} requires authentication (HTTP 401): set "
        "MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD")
    assert str(credentials_error(e401, uri, {"MLFLOW_TRACKING_USERNAME": "pipeline"})) == (
        f"MLflow tracking server at {uri} refused the credentials of user 'pipeline' (HTTP 401): "
        "check MLFLOW_TRACKING_PASSWORD")
    e403 = MlflowException("API request to endpoint /x failed with error code 403 != 200. Response "
                           "body: 'Permission denied'")
    assert "denied user 'pipeline' (HTTP 403)" in str(credentials_error(e403, uri,
                                                                       {"MLFLOW_TRACKING_USERNAME": "pipeline"}))
    assert credentials_error(MlflowException("error code 500 != 200"), uri, {}) is None
    assert credentials_error(ValueError("boom"), uri, {}) is None
