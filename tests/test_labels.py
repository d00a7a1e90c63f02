"""Models record their label vocabulary, and every stage maps labels to a model by name.

Real tiny models throughout: a model trained on one data folder is scored, gated,
warm-started and sampled on folders whose ids for the same names differ, or that
hold a label it never saw.
"""

import json
import zipfile

import numpy as np
import pytest
from conftest import EVAL_LABELS, tiny_config, write_shard_dataset
from mlflow import MlflowClient

from wavenet.cli import main
from wavenet.context import RunContext
from wavenet.data import labels as vocab
from wavenet.errors import DataError
from wavenet.evaluate import evaluate, gate, score_models, training_code_counts
from wavenet.generation.verb import clip_labels
from wavenet.model import WaveNet, build_model, load_model, save_model
from wavenet.train.warm_start import architecture_fits, load_init_weights

# The same audio per name as eval_data (low, high), under other ids, plus a label no
# model of eval_data saw.
REORDERED = ["high", "low"]
WITH_EXTRA = ["low", "high", "extra"]  # audio order (extra: a third pitch)
WITH_EXTRA_IDS = ["extra", "high", "low"]  # id order


def named(model, labels):
    """The same weights, recorded with ``labels`` (or none: None)."""
    out = WaveNet(model.config, model.audio_config, labels=labels, name="wavenet")
    out.build()
    out.set_weights(model.get_weights())
    return out


@pytest.fixture(scope="module")
def trained(trained_model_path):
    return named(load_model(trained_model_path), EVAL_LABELS)


@pytest.fixture(scope="module")
def reordered_data(tmp_path_factory):
    return write_shard_dataset(tmp_path_factory.mktemp("reordered"), tiny_config(),
                               labels=EVAL_LABELS, vocabulary=REORDERED)


@pytest.fixture(scope="module")
def extra_data(tmp_path_factory):
    return write_shard_dataset(tmp_path_factory.mktemp("extra"), tiny_config(3),
                               labels=WITH_EXTRA, vocabulary=WITH_EXTRA_IDS)


def test_the_vocabulary_round_trips_and_old_models_load_as_unknown(tmp_path):
    cfg = tiny_config(3)
    path = str(tmp_path / "m.keras")
    save_model(build_model(cfg, labels=["drums", "organ"]), path)
    assert load_model(path).labels == ("drums", "organ")
    with zipfile.ZipFile(path) as z:
        assert json.loads(z.read("config.json"))["config"]["labels"] == ["drums", "organ"]
    # A model saved before models recorded labels: its config has no "labels" key.
    old = str(tmp_path / "old.keras")
    save_model(build_model(cfg), old)
    with zipfile.ZipFile(old) as z:
        members = {n: z.read(n) for n in z.namelist()}
    config = json.loads(members["config.json"])
    del config["config"]["labels"]
    members["config.json"] = json.dumps(config).encode()
    with zipfile.ZipFile(old, "w") as z:
        for n, b in members.items():
            z.writestr(n, b)
    assert load_model(old).labels is None
    with pytest.raises(ValueError, match="unique"):
        build_model(cfg, labels=["a", "a"])
    with pytest.raises(ValueError, match="at most 3 labels"):
        build_model(cfg, labels=["a", "b", "c", "d"])


def test_model_ids_match_by_name_and_name_what_is_missing():
    assert vocab.model_ids(["b", "a"], ("a", "b"), 2, "m").tolist() == [1, 0]
    # Unknown vocabulary: the data's ids are taken as the model's.
    assert vocab.model_ids(["b", "a"], None, 2, "m").tolist() == [0, 1]
    with pytest.raises(DataError, match="data label 'c' is not one champion X was trained on "
                                        r"\(its labels: a, b\)"):
        vocab.model_ids(["a", "c"], ("a", "b"), 3, "champion X")
    with pytest.raises(DataError, match="data label 'c' has id 2 but m is conditioned on 2 labels "
                                        "and records no vocabulary"):
        vocab.model_ids(["a", "b", "c"], None, 2, "m")
    ids = vocab.model_ids(["c", "a"], ("a", "b"), 2, "m", allow_missing=True)
    assert ids.tolist() == [vocab.MISSING, 0] and vocab.missing_labels(["c", "a"], ids) == ["c"]


def test_scores_follow_the_names_not_the_ids(trained, eval_data, reordered_data):
    cfg = tiny_config()

    def per_name(model, data, names):
        counts = training_code_counts(data, 256)
        scores = score_models([model], data, cfg, counts)
        return {names[k]: t["models"][0] for k, t in scores["per_label"].items()}

    own = per_name(trained, eval_data, EVAL_LABELS)
    moved = per_name(trained, reordered_data, REORDERED)
    assert own.keys() == moved.keys() == set(EVAL_LABELS)
    for name in EVAL_LABELS:
        assert moved[name] == pytest.approx(own[name], abs=1e-6)
    # Without a vocabulary the ids are taken as they come: the labels swap, and the
    # scores change (so the comparison above can fail).
    blind = per_name(named(trained, None), reordered_data, REORDERED)
    assert max(abs(blind[n] - own[n]) for n in EVAL_LABELS) > 1e-4


def test_evaluate_refuses_a_label_the_model_never_saw(trained, extra_data, tmp_path, mlflow_db):
    path = str(tmp_path / "two.keras")
    save_model(trained, path)
    with pytest.raises(DataError, match=f"data label 'extra' is not one {path} was trained on "
                                        r"\(its labels: low, high\)"):
        evaluate(path, extra_data, tiny_config(3), ctx=RunContext.create(mlflow_db))


def test_gate_compares_on_the_labels_both_know_and_maps_each_by_name(
        trained, eval_data, extra_data, tmp_path, mlflow_db):
    import mlflow

    from wavenet.edges import registry, tracking

    cfg = tiny_config(3)
    db = mlflow_db
    tracking.use_tracking_uri(db)
    # Its own experiment: mlflow.start_run() alone would take an experiment id another test
    # made active in this process, which this fresh store does not have.
    experiment = mlflow.MlflowClient(db).create_experiment("gate-labels")
    champion_path = str(tmp_path / "champion.keras")
    save_model(trained, champion_path)
    with mlflow.start_run(experiment_id=experiment):
        first = gate(trained, eval_data, cfg, model_uri=champion_path)
    assert first["promoted"] and first["compared_labels"] == EVAL_LABELS
    # The candidate knows all three labels (its ids: the data's own).
    candidate = build_model(cfg, labels=WITH_EXTRA_IDS)
    with mlflow.start_run(experiment_id=experiment):
        decision = gate(candidate, extra_data, cfg, model_uri=str(tmp_path / "candidate.keras"))
    assert decision["compared_labels"] == ["high", "low"]
    assert decision["labels_champion_lacks"] == ["extra"]
    assert "compared on high, low only: the champion was never trained on extra" in decision["reason"]
    # low and high carry the same audio in both folders: on them the champion scores
    # exactly what it scored on its own data, although their ids differ.
    assert decision["champion_bits"] == pytest.approx(first["new_bits"], abs=1e-6)
    scores = decision["evaluation"]
    shared = [k for k in scores["per_label"] if WITH_EXTRA_IDS[k] != "extra"]
    want = (sum(scores["per_label"][k]["models"][0] * scores["per_label"][k]["samples"] for k in shared)
            / sum(scores["per_label"][k]["samples"] for k in shared))
    assert decision["new_bits"] == pytest.approx(want, abs=1e-9)
    assert scores["models"][0] != pytest.approx(want)  # the candidate's own score covers extra too
    version = registry.get_champion(cfg.evaluate.registered_model_name, db).version
    assert version == (decision["new_version"] if decision["promoted"] else first["new_version"])


def test_warm_start_copies_label_rows_by_name_and_initialises_new_ones(trained, tmp_path):
    src_path = str(tmp_path / "src.keras")
    save_model(trained, src_path)
    cfg = tiny_config(3)
    target = build_model(cfg)
    before = {v.path: v.numpy() for v in target.weights}
    text = load_init_weights(target, src_path, cfg, WITH_EXTRA_IDS)
    assert text.endswith("labels by name: high, low copied; extra new (initialised)")
    src = {v.path: v.numpy() for v in trained.weights}
    rows = {"high": 1, "low": 0}  # the source's ids
    for v in target.weights:
        if v.name == "condition_embedding":
            got = v.numpy()
            for data_id, name in enumerate(WITH_EXTRA_IDS):
                want = before[v.path][data_id] if name == "extra" else src[v.path][rows[name]]
                np.testing.assert_array_equal(got[data_id], want)
        else:
            np.testing.assert_array_equal(v.numpy(), src[v.path])
    assert architecture_fits(trained.config, cfg.model) is None
    wide = cfg.with_overrides({"model.residual_channels": 16})
    assert "model.residual_channels 8 != 16" in architecture_fits(trained.config, wide.model)
    unconditioned = tiny_config(0)
    assert "conditioned" in architecture_fits(trained.config, unconditioned.model)


def test_clip_labels_go_to_the_model_by_name():
    clip = clip_labels(4, 3, ["extra", "high", "low"], ("low", "high"), "m")
    assert clip.names == ["high", "low", "high", "low"]
    assert clip.data_ids.tolist() == [1, 2, 1, 2] and clip.model_ids.tolist() == [1, 0, 1, 0]
    assert clip.not_generated == ["extra"]
    with pytest.raises(DataError, match="m was trained on none of the data's labels"):
        clip_labels(2, 2, ["x"], ("low", "high"), "m")
    # No data: the model's own vocabulary names the clips.
    clip = clip_labels(3, 3, None, ("low", "high"))
    assert clip.names == ["low", "high", "low"] and clip.model_ids.tolist() == [0, 1, 0]


@pytest.mark.training
def test_training_records_the_data_vocabulary_and_refuses_too_few_classes(
        eval_data, tmp_path, capsys, mlflow_db):
    from wavenet.edges import registry

    db = mlflow_db
    common = ["--preset", "tiny", "--no-progress", "--tracking-uri", db, "--steps", "2"]
    rc = main(["train", eval_data, "--out", str(tmp_path / "run"), *common,
               "--set", "model.num_classes=3"])
    assert rc == 0
    summary = json.loads(capsys.readouterr().out)
    assert load_model(str(tmp_path / "run" / "model.keras")).labels == tuple(EVAL_LABELS)
    assert registry.load_wavenet(summary["model_uri"], db).labels == tuple(EVAL_LABELS)
    run = MlflowClient(db).get_run(summary["run_id"])
    assert json.loads(run.data.tags["model.labels"]) == EVAL_LABELS
    capsys.readouterr()  # MLflow's download progress
    rc = main(["train", eval_data, "--out", str(tmp_path / "few"), *common,
               "--set", "model.num_classes=1"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1
    assert "has 2 labels (low, high) but model.num_classes=1" in err[0]
    rc = main(["train", eval_data, "--out", str(tmp_path / "scored"), *common,
               "--set", "model.score_channels=8"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "model.score_channels=8 plays a score, but no track" in err[0]
