import mlflow
import mlflow.models
import pytest
from conftest import tiny_config

from wavenet.context import RunContext
from wavenet.data.manifest import read_manifest
from wavenet.edges import registry, tracking
from wavenet.errors import TrackingError, WavenetError
from wavenet.evaluate import evaluate
from wavenet.model import load_model


@pytest.fixture(params=["sqlite", "server"])
def tracking_uri(request, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # a SQLite store keeps artifacts in ./mlruns
    if request.param == "sqlite":
        return request.getfixturevalue("mlflow_db")
    server = request.getfixturevalue("mlflow_server")
    return getattr(server, "uri", server)  # the URI, or a server object carrying it


def champion_version(uri, name):
    return str(mlflow.MlflowClient(uri).get_model_version_by_alias(name, "champion").version)


def test_gate_promotes_a_better_model_and_keeps_the_champion_against_a_worse_one(
        eval_data, trained_model_path, untrained_model_path, tracking_uri, tmp_path, request):
    name = f"wavenet-gate-{request.node.callspec.id}"
    cfg = tiny_config().with_overrides({"evaluate.registered_model_name": name,
                                        "evaluate.promotion_margin_bits": 0.05})
    kw = dict(gate=True, ctx=RunContext.create(tracking_uri, experiment="gate-test"))

    # 1. No champion yet: the (untrained) model becomes champion, logged to MLflow first.
    first = evaluate(untrained_model_path, eval_data, cfg, out_dir=str(tmp_path / "e1"), **kw)
    g1 = first["gate"]
    assert first["promoted"] is True and g1["champion_bits"] is None and g1["new_version"] == "1"
    assert g1["new_bits"] == pytest.approx(first["bits_per_sample"])
    assert champion_version(tracking_uri, name) == "1"

    # 2. A trained model, logged by a "training" run as runs:/ID/model, beats it.
    mlflow.set_tracking_uri(tracking_uri)
    mlflow.set_experiment("train-test")
    with mlflow.start_run() as train_run:
        logged_uri = tracking.log_model(load_model(trained_model_path), name="model")
    assert logged_uri.startswith("models:/m-")
    assert tracking.model_run_id(logged_uri, tracking_uri) == train_run.info.run_id
    runs_uri = f"runs:/{train_run.info.run_id}/model"
    second = evaluate(runs_uri, eval_data, cfg, **kw)
    g2 = second["gate"]
    assert g2["promoted"] is True and g2["champion_version"] == "1" and g2["new_version"] == "2"
    assert g2["champion_bits"] == pytest.approx(g1["new_bits"])  # same samples, same model
    assert g2["new_bits"] < g2["champion_bits"] - 0.05
    assert champion_version(tracking_uri, name) == "2"
    client = mlflow.MlflowClient(tracking_uri)
    assert client.get_model_version(name, "2").run_id == train_run.info.run_id
    for uri in (f"models:/{name}/2", f"models:/{name}@champion"):
        assert tracking.model_run_id(uri, tracking_uri) == train_run.info.run_id, uri
    assert tracking.model_run_id(f"models:/{name}/99", tracking_uri) is None
    assert tracking.model_run_id(f"models:/{name}@nosuchalias", tracking_uri) is None
    eval_run = client.get_run(second["run_id"])
    assert eval_run.data.tags["mlflow.parentRunId"] == train_run.info.run_id  # nested
    assert eval_run.data.tags["gate.decision"] == "promoted"
    assert eval_run.data.metrics["gate/promoted"] == 1.0
    assert g2["registered_uri"] == runs_uri
    # Each metric on one run: a training run's model has its held-out score on the training
    # run (compared there, next to val_bits_per_sample), not again on the evaluation run.
    train_metrics = client.get_run(train_run.info.run_id).data.metrics
    assert train_metrics["eval/bits_per_sample"] == pytest.approx(second["bits_per_sample"])
    assert train_metrics["eval/baseline_bigram_bits"] == pytest.approx(second["baselines"]["bigram"])
    assert not [k for k in eval_run.data.metrics if k.startswith("eval/")]
    assert "gate/new_bits" not in eval_run.data.metrics  # that number is eval/bits_per_sample
    assert eval_run.data.tags["eval.metrics_run_id"] == train_run.info.run_id
    # The version carries its lineage in MLflow's terms, and its signature.
    version = client.get_model_version(name, "2")
    assert version.tags["data.version"] == read_manifest(eval_data).data_version
    assert version.tags["train.run_id"] == train_run.info.run_id
    assert float(version.tags["eval/bits_per_sample"]) == pytest.approx(g2["new_bits"], abs=1e-6)
    assert "validation_bits_per_sample" not in version.tags
    # The registered version serves music (wavenet.serving): rows of label, seconds, ... -> WAV.
    signature = mlflow.models.get_model_info(f"models:/{name}/2").signature.to_dict()
    assert '"name": "seconds"' in signature["inputs"] and '"name": "audio"' in signature["outputs"]
    assert '"name": "label"' in signature["inputs"]

    # 3. The untrained model again: worse than the champion, nothing registered.
    third = evaluate(untrained_model_path, eval_data, cfg, **kw)
    g3 = third["gate"]
    assert g3["promoted"] is False and g3["new_version"] is None and g3["champion_version"] == "2"
    assert g3["registered_uri"] is None
    assert "margin" in g3["reason"]
    assert g3["champion_bits"] == pytest.approx(g2["new_bits"])
    assert champion_version(tracking_uri, name) == "2"
    assert len(client.search_model_versions(f"name='{name}'")) == 2
    run3 = client.get_run(third["run_id"])
    # A .keras file has no training run: its evaluation run holds its eval metrics.
    assert run3.data.metrics["eval/bits_per_sample"] == pytest.approx(third["bits_per_sample"])
    assert run3.data.tags["gate.decision"] == "kept"
    assert run3.data.metrics["gate/champion_bits"] == pytest.approx(g3["champion_bits"])

    # 4. The champion, by its alias, evaluates like the model it was registered from.
    champ = evaluate(f"models:/{name}@champion", eval_data, cfg, **kw)
    assert champ["bits_per_sample"] == pytest.approx(g2["new_bits"])
    assert champ["promoted"] is False and "is the champion" in champ["gate"]["reason"]
    # A registry URI leads to the version's training run too: nested there, its numbers there
    # (a reused model's second pipeline run shows no second row of eval metrics).
    champ_run = client.get_run(champ["run_id"])
    assert champ_run.data.tags["mlflow.parentRunId"] == train_run.info.run_id
    assert not [k for k in champ_run.data.metrics if k.startswith("eval/")]
    assert champ_run.data.tags["eval.metrics_run_id"] == train_run.info.run_id

    # 5. Every example of the folder (--split all) is not the validation score: its numbers stay
    # on its own run, and the training run keeps its eval/bits_per_sample.
    whole = evaluate(f"models:/{name}@champion", eval_data, cfg, split="all",
                     ctx=RunContext.create(tracking_uri, experiment="gate-test"))
    whole_run = client.get_run(whole["run_id"])
    assert whole_run.data.metrics["eval/bits_per_sample"] == pytest.approx(whole["bits_per_sample"])
    assert whole_run.data.tags["eval.metrics_run_id"] == whole["run_id"]
    assert client.get_run(train_run.info.run_id).data.metrics["eval/bits_per_sample"] == \
        pytest.approx(second["bits_per_sample"])


def test_load_wavenet_errors_are_one_line(tmp_path, monkeypatch, mlflow_db):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("WAVENET_SERVICE_RETRY_S", "0")  # the closed port below: no retries
    uri = mlflow_db
    with pytest.raises(TrackingError, match="cannot download model models:/nothing@champion") as e:
        registry.load_wavenet("models:/nothing@champion", uri)
    assert "\n" not in str(e.value)
    with pytest.raises(WavenetError, match="model file not found"):
        registry.load_wavenet(str(tmp_path / "none.keras"))
    with pytest.raises(TrackingError, match="cannot reach MLflow tracking server"):
        registry.load_wavenet("models:/x@champion", "http://127.0.0.1:9")


def test_uri_helpers():
    assert registry.is_mlflow_uri("runs:/abc/model") and registry.is_mlflow_uri("models:/n@champion")
    assert not registry.is_mlflow_uri("/tmp/model.keras")
    assert not registry.is_mlflow_uri("gs://bucket/model.keras")
    assert tracking.source_run_id("runs:/abc123/model") == "abc123"
    assert tracking.source_run_id("models:/x/1") is None
    assert tracking.metric_key("eval", "label", "jazz & blues?") == "eval/label/jazz _ blues_"
