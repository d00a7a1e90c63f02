"""Reusing a registered model trained on the same data, config and seed; the gate's one line."""

import json

import mlflow
import pytest
from conftest import tiny_config

from wavenet.context import RunContext
from wavenet.data.manifest import read_manifest
from wavenet.decision import gate_line, reuse_line, verdict
from wavenet.edges import registry
from wavenet.evaluate import evaluate
from wavenet.reuse import train_key, train_or_reuse
from wavenet.train import train


def test_train_key_names_data_weights_config_seed_and_warm_start_only():
    cfg = tiny_config()
    key = train_key("v1", cfg)
    assert len(key) == 64 and key == train_key("v1", cfg)
    # What only changes logging, naming, generation or evaluation keeps the key.
    for field, value in (("train.log_every", 7), ("train.checkpoint_every", 3), ("name", "x"),
                         ("preset", "demo"), ("generate.seconds", 9.0),
                         ("evaluate.promotion_margin_bits", 0.5)):
        assert train_key("v1", cfg.with_overrides({field: value})) == key, field
    # What changes the weights changes it.
    for field, value in (("train.seed", 1), ("train.steps", 31), ("model.residual_channels", 16),
                         ("train.learning_rate", 0.01)):
        assert train_key("v1", cfg.with_overrides({field: value})) != key, field
    assert train_key("v2", cfg) != key
    assert train_key("v1", cfg, "models:/wavenet/3") != key


def test_gate_line_gives_the_numbers_of_each_decision():
    rejected = {"promoted": False, "new_bits": 4.12, "champion_bits": 3.80, "margin": 0.01,
                "registered_model": "wavenet", "champion_version": "2", "new_version": None,
                "reason": "not better than the champion by the margin"}
    assert verdict(rejected) == "rejected"
    assert gate_line(rejected) == ("rejected: 4.1200 bits/sample vs champion 3.8000 (needs <= 3.7900 "
                                   "= champion - margin 0.01); wavenet version 2 stays the champion")
    promoted = dict(rejected, promoted=True, new_bits=3.5, new_version="3")
    assert gate_line(promoted).startswith("promoted: 3.5000 bits/sample vs champion 3.8000")
    assert gate_line(promoted).endswith("now wavenet version 3, the champion")
    first = dict(promoted, champion_bits=None, champion_version=None, new_version="1")
    assert gate_line(first) == ("promoted: 3.5000 bits/sample, no champion yet; now wavenet "
                                "version 1, the champion")
    assert verdict(dict(rejected, already_champion=False)) == "rejected"
    kept = dict(rejected, new_bits=3.8, already_champion=True,
                reason="the evaluated model is the champion (version 2)")
    assert verdict(kept) == "kept" and gate_line(kept).startswith("kept: this model is already wavenet version 2")


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_an_identical_run_reuses_the_registered_model_and_force_or_a_new_seed_trains(
        eval_data, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    name = "wavenet-reuse-test"
    cfg = tiny_config().with_overrides({"evaluate.registered_model_name": name, "train.steps": 20})
    trained = []

    def run(out, config, force=False):
        def train_fn():
            trained.append(out)
            return train(eval_data, str(tmp_path / out), config,
                         RunContext(uri, experiment="reuse-test", run_name=out, progress=False))
        return train_or_reuse(train_fn, eval_data, str(tmp_path / out), config, force=force,
                              tracking_uri=uri)

    first = run("first", cfg)
    assert trained == ["first"] and first.summary["reused"] is False
    key = first.summary["train_key"]
    assert key == train_key(read_manifest(eval_data).data_version, cfg)
    client = mlflow.MlflowClient(uri)
    assert client.get_run(first.run_id).data.tags[registry.TRAIN_KEY_TAG] == key
    # The gate registers the model; the version carries the training run's key.
    assert evaluate(first.summary["model_uri"], eval_data, cfg,
                    RunContext.create(uri, experiment="reuse-test"), gate=True)["promoted"]
    assert client.get_model_version(name, "1").tags[registry.TRAIN_KEY_TAG] == key

    capsys.readouterr()
    second = run("second", cfg.with_overrides({"train.log_every": 5}))  # logging only: same key
    assert trained == ["first"], "an identical run trained again"
    assert second.summary["reused"] is True and second.summary["registered_version"] == "1"
    assert second.run_id == first.run_id and second.summary["model_uri"] == f"models:/{name}/1"
    line = capsys.readouterr().out.strip()
    assert line == reuse_line(second.summary) and line.count("\n") == 0
    assert f"{name} version 1 (run first ({first.run_id}))" in line and "FORCE=1" in line
    assert (tmp_path / "second" / "model.keras").stat().st_size > 0
    assert json.loads((tmp_path / "second" / "train_summary.json").read_text())["reused"] is True
    # No new training run was made.
    exp = client.get_experiment_by_name("reuse-test")
    train_runs = [r for r in client.search_runs([exp.experiment_id])
                  if r.data.tags.get("wavenet.stage") == "train"]
    assert len(train_runs) == 1
    # The gate on the reused version says it already is the champion, and registers nothing.
    again = evaluate(second.summary["model_uri"], eval_data, cfg,
                     RunContext.create(uri, experiment="reuse-test"), gate=True)["gate"]
    assert verdict(again) == "kept" and len(client.search_model_versions(f"name='{name}'")) == 1

    forced = run("forced", cfg, force=True)
    assert trained == ["first", "forced"] and forced.summary["reused"] is False
    assert forced.run_id != first.run_id
    reseeded = run("reseeded", cfg.with_overrides({"train.seed": 1}))
    assert trained[-1] == "reseeded" and reseeded.summary["train_key"] != key
