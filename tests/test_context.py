"""One RunContext per run: resolved once, carried whole across the process boundary, and the
library's MLflow calls go to its store, never to whatever mlflow's process-wide URI says."""

import os

import mlflow
import pytest
from conftest import new_mlflow_store
from mlflow import MlflowClient

from wavenet import cli
from wavenet.context import RunContext
from wavenet.edges import registry, tracking
from wavenet.errors import TrackingError


def test_create_resolves_the_tracking_uri_once_and_keeps_secrets_out_of_its_repr():
    env = {"MLFLOW_TRACKING_URI": "postgresql://alice:s3cret@db/mlflow"}
    ctx = RunContext.create(environ=env, experiment="", run_name="r")
    assert ctx.tracking_uri == env["MLFLOW_TRACKING_URI"] and ctx.experiment is None
    assert RunContext.create("http://x:5000", environ=env).tracking_uri == "http://x:5000"
    assert "s3cret" not in repr(ctx) and "run_name='r'" in repr(ctx)
    with pytest.raises(TrackingError, match="carries credentials"):  # issue 19 point 7
        RunContext.create("http://alice:pw@mlflow:5000", environ={})


def test_a_worker_rebuilds_the_launchers_context_from_its_flags_and_environment(monkeypatch):
    ctx = RunContext("postgresql://u:pw@db/m", experiment="e", run_name="r", kfp_run_id="k1",
                     init_model="gs://b/init.keras", progress="lines", threads=3)
    argv = ["train", "data", "--out", "run", "--worker", *ctx.worker_args()]
    assert "postgresql://u:pw@db/m" not in argv  # the URI travels in the environment only
    for key, value in ctx.worker_env().items():
        monkeypatch.setenv(key, value)
    assert cli._train_context(cli.build_parser().parse_args(argv)) == ctx


def _store(template, tmp_path, name):
    uri = new_mlflow_store(template, tmp_path / f"{name}.db")
    tracking.check_tracking_server(uri)
    return uri


def test_registry_and_tracking_calls_go_to_the_given_store_not_mlflows_global_one(tmp_path, monkeypatch,
                                                                                 mlflow_store_template):
    """Two stores in one process: a run open in A, the registry read in B; each call lands in
    its own store, and the run's own logging still lands in A afterwards."""
    monkeypatch.chdir(tmp_path)  # artifacts of SQLite stores
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    a, b = _store(mlflow_store_template, tmp_path, "a"), _store(mlflow_store_template, tmp_path, "b")
    name, key = "ctx-model", "ab" * 32
    with tracking.start_run("exp-b", run_name="trained-in-b", tracking_uri=b) as trained:
        b_run = trained.info.run_id
    store_b = MlflowClient(b)
    store_b.create_registered_model(name)
    version = str(store_b.create_model_version(name, "file:///nowhere/model", run_id=b_run).version)
    registry.set_champion(name, version, b)
    registry.record_train_key(b_run, key, b)
    store_b.set_model_version_tag(name, version, registry.TRAIN_KEY_TAG, key)

    with tracking.start_run("exp-a", run_name="open-in-a", tracking_uri=a) as run:
        assert mlflow.get_tracking_uri() == a
        assert registry.get_champion(name, b).version == version
        assert registry.get_champion(name, a) is None
        info = registry.describe_model(f"models:/{name}@{registry.CHAMPION}", name, b)
        assert (info.run_id, info.run_name, info.champion) == (b_run, "trained-in-b", True)
        assert registry.train_key_of(b_run, b) == key and registry.train_key_of(b_run, a) is None
        assert registry.find_by_train_key(name, key, b).version == version
        assert tracking.run_placement(f"models:/{name}/{version}", None, "x", b) == (
            "exp-b", {"mlflow.parentRunId": b_run})
        tracking.log_metrics({"after": 1.0})  # the open run's own logging: still store A
        tracking.log_metrics_to_run(b_run, {"eval/bits": 2.0}, b)
    assert MlflowClient(a).get_run(run.info.run_id).data.metrics == {"after": 1.0}
    assert store_b.get_run(b_run).data.metrics == {"eval/bits": 2.0}
    # mlflow.set_tracking_uri writes MLFLOW_TRACKING_URI into os.environ: start_run takes it
    # back, or the next RunContext.create() of this process would read store A as the user's.
    assert "MLFLOW_TRACKING_URI" not in os.environ
    assert RunContext.create().tracking_uri.endswith("/mlflow.db")


def test_a_logged_model_downloads_from_the_given_store_with_no_process_wide_one(
        tmp_path, monkeypatch, mlflow_store_template, untrained_model_path):
    """A step whose store comes as a parameter (no MLFLOW_TRACKING_URI, as in a container)
    loads the training run's models:/m-<id> from that store, not from a new ./mlflow.db."""
    from wavenet.model import load_model

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    store = _store(mlflow_store_template, tmp_path, "store")
    with tracking.start_run("download-test", tracking_uri=store):
        uri = tracking.log_model(load_model(untrained_model_path))
    assert uri.startswith("models:/m-"), uri
    # A new step process: mlflow's process-wide store never set.
    from mlflow.tracking._tracking_service import utils as tracking_utils

    monkeypatch.setattr(tracking_utils, "_tracking_uri", None)
    net = registry.load_wavenet(uri, store)
    assert net.config == load_model(untrained_model_path).config
    assert not (tmp_path / "mlflow.db").exists()
