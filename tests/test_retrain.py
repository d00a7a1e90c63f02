"""Scheduled retraining, end to end: `make retrain-demo` (two real kfp.local pipeline runs),
logging through the production MLflow set-up of k8s/mlflow.yaml (PostgreSQL, basic auth as the
pipeline user, artifacts proxied to a bucket on the GCS emulator): the pipeline's whole MLflow
path as a cluster has it (issue 10, Deliver 1), in the same two runs."""

import json

import pytest
from mlflow import MlflowClient
from production_mlflow import PIPELINE_PASSWORD, PIPELINE_USER

from devtools import retrain_demo
from wavenet.data.manifest import read_manifest

MODEL = "retrain-test"


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_second_run_decodes_only_new_files_warm_starts_gates_every_label_and_moves_the_champion_only_when_better(
        production, tmp_path, monkeypatch, capsys):
    from google.cloud import storage

    monkeypatch.chdir(tmp_path)
    for key in ("MLFLOW_TRACKING_URI", "MLFLOW_RUN_ID", "MLFLOW_EXPERIMENT_ID", "MLFLOW_EXPERIMENT_NAME"):
        monkeypatch.delenv(key, raising=False)
    # The pipeline's own user, as the Secret mlflow-client gives it on the cluster.
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", PIPELINE_USER)
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", PIPELINE_PASSWORD)
    root = tmp_path / "demo"
    uri = production.server.uri
    # Its own registered model: the session's server holds other tests' `wavenet` champion.
    rc = retrain_demo.main(["--root", str(root), "--seconds", "5", "--tracking-uri", uri,
                            "--set", f"evaluate.registered_model_name={MODEL}"])
    out = capsys.readouterr().out
    assert rc == 0, out[-3000:]
    assert len(out.splitlines()) < 25, out
    client = MlflowClient(uri)
    # Every fact below is read again from the manifest, MLflow and the registry.
    manifest = read_manifest(str(root / "shards"))
    assert manifest.labels == ("organ", "strings", "drums")  # ids kept, the new genre appended
    assert manifest.summary.processed == 2 and manifest.summary.unchanged == 2  # only new files decoded
    by_label = {t.label: t.label_id for t in manifest.files}
    assert by_label == {"organ": 0, "strings": 1, "drums": 2}

    trains = sorted((r for r in client.search_runs([client.get_experiment_by_name("retrain-demo").experiment_id])
                     if r.data.tags.get("wavenet.stage") == "train"), key=lambda r: r.info.start_time)
    assert len(trains) == 2
    first, second = trains
    assert "warm_start" not in first.data.tags  # no champion yet: from scratch
    assert second.data.tags["warm_start"].endswith("init_model.keras")  # from the champion
    assert second.data.tags["warm_start.weights"] == (
        "every weight copied; labels by name: organ, strings copied; drums new (initialised)")
    assert json.loads(first.data.tags["model.labels"]) == ["organ", "strings"]
    assert json.loads(second.data.tags["model.labels"]) == ["organ", "strings", "drums"]

    versions = {v.version: v for v in client.search_model_versions(f"name='{MODEL}'")}
    champion = client.get_model_version_by_alias(MODEL, "champion")
    v1 = [v for v in versions.values() if v.run_id == first.info.run_id]
    assert len(v1) == 1  # run 1 became the champion
    # Run 2's gate: windows of every label; against the champion on the labels it knows.
    evals = [r for r in client.search_runs([client.get_experiment_by_name("retrain-demo").experiment_id])
             if r.data.tags.get("wavenet.stage") == "evaluate"]
    second_eval = max(evals, key=lambda r: r.info.start_time)
    metrics = json.loads(open(client.download_artifacts(second_eval.info.run_id,
                                                        "evaluation/metrics.json")).read())
    assert sorted(metrics["per_label"]) == ["drums", "organ", "strings"]
    assert metrics["labels_not_scored"] == []
    gate = metrics["gate"]
    assert gate["compared_labels"] == ["organ", "strings"] and gate["labels_champion_lacks"] == ["drums"]
    assert gate["champion_version"] == str(v1[0].version)
    better = gate["new_bits"] <= gate["champion_bits"] - gate["margin"]
    assert gate["promoted"] == better
    if better:
        assert champion.run_id == second.info.run_id and str(champion.version) == gate["new_version"]
    else:
        assert champion.version == v1[0].version and len(versions) == 1
    # The terminal tells the same story in a few lines.
    assert "run 2: " in out and "2 files decoded, 2 reused" in out and "new: drums" in out
    assert f"warm start: from champion {MODEL} version 1; labels by name: organ, strings copied; " \
           "drums new (initialised)" in out

    # Through the production server: every run's artifacts are proxied (clients never see the
    # bucket), and the registered models' files are in the bucket k8s/mlflow.yaml names.
    runs = client.search_runs([client.get_experiment_by_name("retrain-demo").experiment_id])
    assert {r.data.tags.get("wavenet.stage") for r in runs} >= {"train", "evaluate"}
    assert all(r.info.artifact_uri.startswith("mlflow-artifacts:/") for r in runs)
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", production.emulator)
    names = [b.name for b in storage.Client(project="test").list_blobs(
        production.bucket, prefix=production.prefix + "/")]
    for v in versions.values():
        model_id = v.model_id or v.source.rsplit("/", 1)[-1]
        assert any(model_id in n and n.endswith(".keras") for n in names), (model_id, names)
