"""Components: the helpers their bodies call, and real kfp.local runs of the data stages."""

import datetime as dt
import json
import os

import numpy as np
import pytest
import yaml
from kfp import dsl, local

from components import runtime
from wavenet import cli
from wavenet.config import overrides_from_yaml, preset, resolve_config
from wavenet.context import RunContext
from wavenet.data.manifest import Shard, data_root, read_manifest, shards_version
from wavenet.data.preprocess import known_tracks
from wavenet.data.shards import dataset_from_codes
from wavenet.edges.tracking import child_run_name, run_name
from wavenet.errors import ConfigError
from wavenet.train import train_command
from wavenet.train.warm_start import champion_init_model


def build_config(preset_name, text):
    """What the first pipeline step does with its ``preset`` and ``overrides_yaml`` parameters."""
    return resolve_config(preset_name, overrides=overrides_from_yaml(text))


# -- helpers -------------------------------------------------------------------------------


def test_config_from_preset_and_nested_or_dotted_yaml_overrides():
    cfg = build_config("tiny", "train:\n  steps: 7\nmodel.stacks: 2\n")
    assert cfg.preset == "tiny" and cfg.train.steps == 7 and cfg.model.stacks == 2
    assert cfg.train.window == preset("tiny").train.window
    assert build_config("demo", "") == preset("demo")
    assert build_config("demo", "  \n") == preset("demo")


@pytest.mark.parametrize("preset_name, text, match", [
    ("nope", "", "unknown preset"),
    ("tiny", "train: [1, 2", "not valid YAML"),
    ("tiny", "- 1\n- 2\n", "must be a YAML mapping"),
    ("tiny", "train: {stepz: 3}", "stepz"),
    ("tiny", "preset: demo", "must not set preset"),
    ("tiny", "train: {steps: -1}", "train.steps"),
])
def test_bad_config_parameters_are_one_line_config_errors(preset_name, text, match):
    with pytest.raises(ConfigError, match=match):
        build_config(preset_name, text)


@pytest.mark.parametrize("overrides", [
    {},
    {"train.steps": 1234, "model.stacks": 3, "train.learning_rate": 0.00025},
    {"train.precision": "mixed_bfloat16", "generate.temperature": 0.9, "evaluate.registered_model_name": "w 2"},
])
def test_worker_commands_rebuild_the_same_config_in_the_wavenet_cli(overrides):
    cfg = preset("demo").with_overrides(overrides)
    argv = train_command("shards", "run", cfg, worker=True, program=("train",))
    args = cli.build_parser().parse_args(argv)
    assert cli._config(args) == cfg
    assert argv[argv.index("--config-yaml") + 1] == cfg.to_yaml()  # the one form that crosses
    assert "--set" not in argv and "--preset" not in argv


def test_relative_names_and_join_root_round_trip_for_folders_and_buckets(tmp_path):
    root = str(tmp_path)
    files = [os.path.join(root, "b", "x.wav"), os.path.join(root, "a.flac")]
    names = runtime.relative_names(root, files)
    assert names == ["a.flac", os.path.join("b", "x.wav")]
    assert sorted(runtime.join_root(root, n) for n in names) == sorted(files)
    gs = ["gs://bkt/music/a.wav", "gs://bkt/music/sub/b.wav"]
    assert runtime.relative_names("gs://bkt/music/", gs) == ["a.wav", "sub/b.wav"]
    assert runtime.join_root("gs://bkt/music", "sub/b.wav") == "gs://bkt/music/sub/b.wav"


def test_data_version_follows_shard_content_only():
    shards = [Shard("train/shard-a", "train", 3, 900, "1" * 64),
              Shard("validation/shard-b", "validation", 1, 300, "2" * 64)]
    v = shards_version(shards)
    assert len(v) == 10
    assert shards_version(shards[::-1]) == v  # order (and anything but the shards) does not count
    changed = [Shard("train/shard-a", "train", 3, 900, "3" * 64), shards[1]]
    assert shards_version(changed) != v


def test_known_tracks_count_only_when_the_audio_settings_match(tmp_path):
    cfg = preset("tiny")
    assert frozenset(known_tracks(str(tmp_path / "none"), cfg)) == frozenset()
    m = dataset_from_codes(str(tmp_path), cfg, [(np.full(4000, 7, np.uint8), "g", "train")])
    (track,) = m.files
    assert frozenset(known_tracks(str(tmp_path), cfg)) == {track.sha256}
    other = cfg.with_overrides({"audio.sample_rate": 8000})
    assert frozenset(known_tracks(str(tmp_path), other)) == frozenset()


def test_run_names_tell_preset_data_version_and_start_time_apart():
    when = dt.datetime(2026, 11, 25, 1, 2, 3, tzinfo=dt.UTC)
    assert run_name("demo", "dabcdef01", when) == "demo-dabcdef01-1125T010203"
    # Children are short (the UI nests them under the training run) and keep its time.
    assert child_run_name("evaluate", "demo-dabcdef01-1125T010203") == "evaluate-1125T010203"
    assert child_run_name("generate", None) == "generate"


def test_evaluate_and_generate_steps_build_their_context_once_from_parameters_and_environment(
        monkeypatch):
    meta = {"run_name": "demo-dabcdef01-1125T010203"}
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://env-store:5000")
    # Empty pipeline parameters mean "not given": the step's environment, the model's experiment.
    ctx = runtime.stage_context("evaluate", "", "", meta)
    assert (ctx.tracking_uri, ctx.experiment, ctx.run_name) == (
        "http://env-store:5000", None, "evaluate-1125T010203")
    ctx = runtime.stage_context("generate", "sqlite:///m.db", "exp", {})
    assert (ctx.tracking_uri, ctx.experiment, ctx.run_name) == ("sqlite:///m.db", "exp", "generate")


def test_experiment_links_open_the_comparison_view_in_the_model_training_view(tmp_path, mlflow_db):
    from wavenet.edges.tracking import experiment_id, experiment_page

    uri = mlflow_db
    import mlflow

    made = mlflow.MlflowClient(uri).create_experiment("links")
    assert experiment_id("links", uri) == made and experiment_id("absent", uri) is None
    assert experiment_page("http://mlflow:5000/", made) == (
        f"http://mlflow:5000/#/experiments/{made}/runs?viewStateShareKey=wavenet-compare"
        "&workflowType=machine_learning")
    assert experiment_page("http://127.0.0.1:5000", None) == "http://127.0.0.1:5000"


def test_every_experiment_we_use_gets_the_comparison_view(tmp_path, mlflow_db):
    import mlflow

    from wavenet.edges import tracking

    uri = mlflow_db
    client = mlflow.MlflowClient(uri)
    # One made by us, one made elsewhere before (tagged on first use), one whose view a user
    # changed (left as it is).
    mine = tracking._experiment_id(client, "new", uri)
    before = client.create_experiment("before")
    edited = client.create_experiment("edited", tags={tracking.COMPARE_VIEW_TAG: '{"name": "mine"}'})
    for name in ("before", "edited"):
        tracking._experiment_id(client, name, uri)
    tags = {e: client.get_experiment(e).tags for e in (mine, before, edited)}
    assert tags[edited][tracking.COMPARE_VIEW_TAG] == '{"name": "mine"}'
    for exp in (mine, before):
        assert tags[exp]["mlflow.experimentKind"] == "custom_model_development"
        envelope = json.loads(tags[exp][tracking.COMPARE_VIEW_TAG])
        assert envelope["name"] == "WaveNet: compare models" and isinstance(envelope["createdAt"], int)
        state = json.loads(envelope["state"])
        # The table: key metrics first, in their order, then the key parameters.
        order = state["columnOrder"]
        assert order[0] == "attributes.`Run Name`"
        assert order[1:7] == [f"metrics.`{m}`" for m in tracking.KEY_METRICS]
        # How a model sounds, beside how it scores.
        assert order[1:3] == ["metrics.`eval/bits_per_sample`", "metrics.`samples/checks_passed_fraction`"]
        assert set(order[1:]) <= set(state["selectedColumns"])
        # The charts: one section first, its cards on the key metrics and parameters.
        (section,) = state["compareRunSections"]
        assert section["name"] == "Compare models" and state["isAccordionReordered"] is True
        cards = state["compareRunCharts"]
        assert {c["metricSectionId"] for c in cards} == {section["uuid"]}
        assert cards[0]["type"] == "PARALLEL" and cards[0]["selectedMetrics"] == ["eval/bits_per_sample"]
        assert cards[0]["selectedParams"] == list(tracking.KEY_PARAMS)
        assert [c.get("metricKey") for c in cards[1:]] == \
            [tracking.KEY_METRICS[i] for i in (0, 1, 2, 4, 5)]


def test_data_location_prefers_persistent_shards_and_needs_a_bucket_for_pods():
    assert runtime.data_location("/local/p", "/local/p", {}) == "/local/p"
    assert runtime.data_location("/gcs/b/p", "gs://b/p", {}, for_pods=True) == "gs://b/p"
    assert runtime.data_location("/x", "/x", {"data_dir": "gs://b/shards"}, for_pods=True) == "gs://b/shards"
    with pytest.raises(ConfigError, match="gs://"):
        runtime.data_location("/x", "/x", {}, for_pods=True)


def test_mlflow_env_passes_kfp_run_tracking_settings_and_credentials_only():
    env = {"MLFLOW_RUN_ID": "r1", "MLFLOW_EXPERIMENT_ID": "7", "MLFLOW_TRACKING_URI": "http://a",
           "HOME": "/root", "MLFLOW_TRACKING_USERNAME": "alice", "MLFLOW_TRACKING_PASSWORD": "s3cret",
           "MLFLOW_EXPERIMENT_NAME": "", "AWS_SECRET_ACCESS_KEY": "x"}
    # The credentials go on too (issue 10, Found 2: dropping them made training against an
    # authenticated server fail at once); a TFJob takes them by Secret reference (test_tfjob.py).
    assert runtime.mlflow_env(env) == {"MLFLOW_RUN_ID": "r1", "MLFLOW_EXPERIMENT_ID": "7",
                                       "MLFLOW_TRACKING_URI": "http://a",
                                       "MLFLOW_TRACKING_USERNAME": "alice",
                                       "MLFLOW_TRACKING_PASSWORD": "s3cret"}
    assert runtime.mlflow_env(env, "http://b")["MLFLOW_TRACKING_URI"] == "http://b"


def test_numeric_metrics_flatten_and_drop_what_kfp_cannot_show():
    got = runtime.numeric_metrics({"bits": 3.5, "n": 2, "ok": True, "name": "x", "nan": float("nan"),
                                   "base": {"unigram": 7.0, "tag": "t"}})
    assert got == {"bits": 3.5, "n": 2.0, "ok": 1.0, "base.unigram": 7.0}


# -- the data stages, run by kfp.local ------------------------------------------------------

from components.stages import list_partitions, merge_shards, preprocess_partition  # noqa: E402


@dsl.pipeline(name="data-stages")
def data_stages(source_uri: str, shards_uri: str, demo_seconds: float) -> dsl.Dataset:
    listed = list_partitions(source_uri=source_uri, preset="tiny", overrides_yaml="", partitions=2,
                             demo_seconds=demo_seconds)
    with dsl.ParallelFor(listed.outputs["Output"]) as part:
        pre = preprocess_partition(audio=listed.outputs["audio"], partition=part,
                                   config=listed.outputs["config"], shards_uri=shards_uri)
    merged = merge_shards(partials=dsl.Collected(pre.outputs["partial"]),
                          config=listed.outputs["config"], shards_uri=shards_uri)
    return merged.outputs["shards"]


@pytest.fixture
def local_root(tmp_path):
    root = tmp_path / "pipeline-root"
    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(root),
               raise_on_error=True)
    return root


def test_demo_corpus_is_listed_preprocessed_in_parallel_and_merged(local_root):
    shards = data_stages(source_uri="", shards_uri="", demo_seconds=2.0).outputs["Output"]
    manifest = json.loads(open(os.path.join(shards.path, "manifest.json")).read())
    assert manifest["summary"]["processed"] == 3 and manifest["summary"]["skipped"] == 0
    for s in manifest["shards"]:
        assert os.path.exists(os.path.join(shards.path, s["path"]))
    assert sum(s["examples"] for s in manifest["shards"] if s["split"] == "train") > 0
    assert shards.metadata["data_version"] == read_manifest(shards.path).data_version
    # Two partitions ran as two ParallelFor iterations.
    iterations = [p for p in local_root.rglob("preprocess-partition") if p.is_dir()]
    assert len(iterations) == 2


def test_persistent_shards_uri_reuses_earlier_preprocessing(local_root, tmp_path):
    audio = tmp_path / "music"
    from wavenet.data.demo import make_demo_corpus

    make_demo_corpus(str(audio), seconds_per_genre=2.0)
    store = str(tmp_path / "shards")
    first = data_stages(source_uri=str(audio), shards_uri=store, demo_seconds=0.0).outputs["Output"]
    # Later steps get the manifest version this run committed, not the live one.
    assert first.metadata["data_dir"].startswith(os.path.join(store, "manifests") + "/")
    assert data_root(first.metadata["data_dir"]) == store
    assert first.metadata["summary.processed"] == 3
    # The partition steps get audio paths only, and find each track's .mid beside it.
    assert first.metadata["summary.scored_tracks"] == 3
    second = data_stages(source_uri=str(audio), shards_uri=store, demo_seconds=0.0).outputs["Output"]
    assert second.metadata["summary.processed"] == 0 and second.metadata["summary.unchanged"] == 3
    assert second.metadata["data_version"] == first.metadata["data_version"]
    assert read_manifest(store).data_version == second.metadata["data_version"]
    assert second.metadata["data_dir"] != first.metadata["data_dir"]
    assert read_manifest(first.metadata["data_dir"]).data_version == first.metadata["data_version"]


def test_empty_source_folder_fails_the_list_step_with_a_clear_message(local_root, tmp_path, capfd):
    (tmp_path / "empty").mkdir()
    with pytest.raises(RuntimeError, match="list-partitions"):
        data_stages(source_uri=str(tmp_path / "empty"), shards_uri="", demo_seconds=0.0)
    assert "no audio files found under" in capfd.readouterr().out


def _one_partition(overrides: dict, output: str):
    """The data stages on the demo corpus with these YAML overrides; the merge step's ``output``."""
    @dsl.pipeline(name="one-partition")
    def p() -> dsl.Artifact:
        listed = list_partitions(source_uri="", preset="tiny", overrides_yaml=yaml.safe_dump(overrides),
                                 partitions=1, demo_seconds=2.0)
        with dsl.ParallelFor(listed.outputs["Output"]) as part:
            pre = preprocess_partition(audio=listed.outputs["audio"], partition=part,
                                       config=listed.outputs["config"], shards_uri="")
        return merge_shards(partials=dsl.Collected(pre.outputs["partial"]),
                            config=listed.outputs["config"], shards_uri="").outputs[output]

    return p().outputs["Output"]


def test_overrides_reach_the_components(local_root):
    # num_shards from the YAML overrides decides how many shards the merge writes.
    shards = _one_partition({"data": {"num_shards": 1}}, "shards")
    manifest = json.loads(open(os.path.join(shards.path, "manifest.json")).read())
    assert {s["split"] for s in manifest["shards"]} == {"train", "validation"}
    assert len(manifest["shards"]) == 2


def test_the_merge_step_resolves_num_classes_auto_against_the_datas_labels(local_root):
    # The first step that knows the labels hands every later step the resolved config.
    resolved = runtime.load_config(_one_partition({"model": {"num_classes": "auto"}}, "data_config").path)
    assert resolved.model.num_classes == 3  # the demo corpus: drums, organ, strings
    assert resolved == preset("tiny").with_overrides({"model.num_classes": 3})


# -- the same stages on gs:// (a real GCS emulator process on 127.0.0.1) ----------------------

@pytest.fixture
def gcs_bucket(monkeypatch):
    from conftest import run_gcs_emulator

    with run_gcs_emulator("pipe-test") as url:
        # Pipeline steps are subprocesses: they inherit these.
        monkeypatch.setenv("STORAGE_EMULATOR_HOST", url)
        monkeypatch.setenv("GOOGLE_CLOUD_PROJECT", "test")
        yield "gs://pipe-test"


def test_bucket_source_and_persistent_bucket_shards(local_root, gcs_bucket):
    from wavenet.data.demo import make_demo_corpus
    from wavenet.edges import storage

    make_demo_corpus(f"{gcs_bucket}/music", seconds_per_genre=2.0)
    store = f"{gcs_bucket}/shards/v1"
    first = data_stages(source_uri=f"{gcs_bucket}/music", shards_uri=store, demo_seconds=0.0).outputs["Output"]
    pinned = first.metadata["data_dir"]
    assert pinned.startswith(f"{store}/manifests/") and first.metadata["summary.processed"] == 3
    manifest = json.loads(storage.read_text(f"{store}/manifest.json"))
    assert all(storage.exists(f"{store}/{s['path']}") for s in manifest["shards"])
    assert runtime.data_location(first.path, first.uri, first.metadata, for_pods=True) == pinned
    second = data_stages(source_uri=f"{gcs_bucket}/music", shards_uri=store, demo_seconds=0.0).outputs["Output"]
    assert second.metadata["summary.unchanged"] == 3 and second.metadata["summary.processed"] == 0


def test_warm_start_takes_the_champion_only_when_it_fits(eval_data, untrained_model_path, tmp_path,
                                                         monkeypatch, capsys, mlflow_db):
    from conftest import tiny_config

    from wavenet.evaluate import evaluate

    monkeypatch.chdir(tmp_path)  # a SQLite store keeps artifacts in ./mlruns
    db = mlflow_db
    cfg = tiny_config().with_overrides({"evaluate.registered_model_name": "warm-test"})
    # The first scheduled run: no champion yet, so training starts from scratch.
    assert champion_init_model(cfg, db)[0] is None
    assert "no champion of 'warm-test' yet" in capsys.readouterr().out
    gate = evaluate(untrained_model_path, str(eval_data), cfg,
                    RunContext.create(db, experiment="warm-test"), gate=True)
    assert gate["promoted"]
    uri, line = champion_init_model(cfg, db, str(eval_data))
    assert uri == "models:/warm-test/1"
    # Saved without a vocabulary (the fixture): its label rows go by id, and the line says so.
    assert line == ("warm start: from champion warm-test version 1; labels by id (it records no "
                    "label vocabulary): low, high copied")
    # One more label: its rows start fresh, every other weight still comes from the champion.
    assert champion_init_model(cfg.with_overrides({"model.num_classes": 3}), db)[0] == uri
    # A changed architecture cannot reuse the champion's weights: one line says why.
    wider = cfg.with_overrides({"model.residual_channels": 16})
    assert champion_init_model(wider, db)[0] is None
    assert ("not from champion warm-test version 1: its model config differs from this run's "
            "(model.residual_channels 8 != 16); training from scratch") in capsys.readouterr().out
