import base64
import json
from html import escape as html_escape

import numpy as np
import pytest
import soundfile as sf
from conftest import EVAL_LABELS, tiny_config, train_briefly

from wavenet.context import RunContext
from wavenet.errors import ConfigError, DataError
from wavenet.evaluate import evaluate
from wavenet.generation.verb import clip_labels, generate_samples, prime_codes


def test_clip_labels_cycle_through_the_vocabulary():
    clip = clip_labels(5, 2, ["low", "high"])
    assert clip.model_ids.tolist() == clip.data_ids.tolist() == [0, 1, 0, 1, 0]
    assert clip.names == ["low", "high", "low", "high", "low"]
    clip = clip_labels(3, 4)
    assert clip.model_ids.tolist() == [0, 1, 2] and clip.names == ["0", "1", "2"]
    assert clip_labels(2, 0) == (None, None, [None, None], [])


def test_prime_codes_take_same_label_examples():
    examples = [(np.full(10, 1, np.uint8), 0), (np.full(10, 2, np.uint8), 1),
                (np.full(3, 9, np.uint8), 1), (np.full(10, 3, np.uint8), 0)]
    p = prime_codes(examples, 5, np.array([0, 1, 0, 1]), 4)
    assert p.shape == (4, 5) and p[:, 0].tolist() == [1, 2, 3, 2]
    assert prime_codes(examples, 5, None, 2)[:, 0].tolist() == [1, 2]
    with pytest.raises(DataError, match="no validation example has the 11 codes"):
        prime_codes(examples, 11, None, 1)


def test_calibrate_labels_per_label_and_all_labels_only_where_needed():
    from wavenet.data.audio import mu_law_encode
    from wavenet.generation.verb import calibrate_labels

    t = np.arange(8000) / 16000
    examples = [(mu_law_encode(0.3 * np.sin(2 * np.pi * f * t)), label)
                for label, f in ((0, 220.0), (0, 230.0), (1, 880.0))]
    cals = calibrate_labels(examples, 16000, 256, window=4000, max_windows=8, names=["low", "high"])
    assert set(cals) == {0, 1, None} and cals[0]["label"] == "low" and cals[None]["label"] is None
    assert cals[0]["windows"] == 6 and cals[1]["windows"] == 3 and cals[None]["windows"] == 8
    # A label without examples is judged against every label together.
    assert set(calibrate_labels(examples, 16000, 256, 4000, 8, wanted=[1, 2])) == {1, None}
    assert set(calibrate_labels(examples, 16000, 256, 4000, 8, wanted=[0, 1])) == {0, 1}


def test_generate_from_the_champion_writes_wavs_pngs_and_a_self_contained_report(
        eval_data, trained_model_path, mlflow_server, tmp_path, monkeypatch):
    import mlflow

    server_uri = getattr(mlflow_server, "uri", mlflow_server)  # the URI, or an object carrying it
    monkeypatch.chdir(tmp_path)
    name = "wavenet-samples-test"
    cfg = tiny_config().with_overrides({
        "evaluate.registered_model_name": name, "generate.num_clips": 3,
        "generate.seconds": 0.25, "generate.prime_seconds": 0.01, "generate.seed": 3,
        "generate.weights": "bfloat16"})
    assert evaluate(trained_model_path, eval_data, cfg,
                    RunContext.create(server_uri, experiment="samples-test"), gate=True)["promoted"]

    out = tmp_path / "samples"
    result = generate_samples(f"models:/{name}@champion", str(out), cfg, data_dir=eval_data,
                              ctx=RunContext.create(server_uri, experiment="samples-test"), progress=False)

    assert result["num_samples"] == 4000 and result["prime_samples"] == 160
    assert result["samples_per_second"] > 0
    assert [c["label"] for c in result["clips"]] == [EVAL_LABELS[0], EVAL_LABELS[1], EVAL_LABELS[0]]
    html = (out / "report.html").read_text()
    for clip in result["clips"]:
        audio, rate = sf.read(clip["wav"], dtype="int16")
        info = sf.info(clip["wav"])
        assert rate == 16000 and audio.shape == (4000,) and info.subtype == "PCM_16"
        assert np.abs(audio).max() > 0
        png = (out / (clip["name"] + ".png")).read_bytes()
        assert png.startswith(b"\x89PNG\r\n\x1a\n")
        wav = (out / (clip["name"] + ".wav")).read_bytes()
        assert base64.b64encode(wav).decode() in html and base64.b64encode(png).decode() in html
        assert f"href='{clip['name']}.wav'" in html and f"href='{clip['name']}.png'" in html
        assert set(clip["metrics"]) >= {"rms_dbfs", "silent_fraction", "spectral_flatness",
                                        "distinct_codes", "clipped_fraction", "log_mel_distance_db"}
        for w in clip["warnings"]:
            assert html_escape(w) in html
    assert f"models:/{name}@champion" in html and "temperature" in html
    summary = json.loads((out / "samples.json").read_text())
    assert summary["clips"][1]["metrics"] == result["clips"][1]["metrics"]
    assert summary["weights"] == result["weights"] == "bfloat16" and "bfloat16 weights" in html

    client = mlflow.MlflowClient(server_uri)
    logged = {f.path for f in client.list_artifacts(result["run_id"], "samples")}
    assert {"samples/report.html", "samples/samples.json",
            f"samples/{result['clips'][0]['name']}.wav"} <= logged
    run = client.get_run(result["run_id"])
    assert run.data.params["generate.weights"] == "bfloat16"
    metrics = run.data.metrics
    assert metrics["quality/mean/rms_dbfs"] == pytest.approx(
        np.mean([c["metrics"]["rms_dbfs"] for c in result["clips"]]))


def test_priming_needs_data_and_cli_reports_it_in_one_line(trained_model_path, tmp_path,
                                                             monkeypatch, capsys, mlflow_db):
    from wavenet.cli import main

    monkeypatch.chdir(tmp_path)
    cfg = tiny_config().with_overrides({"generate.prime_seconds": 0.1})
    with pytest.raises(ConfigError, match="generate.prime_seconds=0.1 primes with validation audio"):
        generate_samples(trained_model_path, str(tmp_path / "s"), cfg, progress=False)
    rc = main(["generate", trained_model_path, "--out", str(tmp_path / "s"), "--preset", "tiny",
               "--set", "generate.prime_seconds=0.1", "--no-progress",
               "--tracking-uri", mlflow_db])
    err = capsys.readouterr().err
    assert rc == 2 and err.startswith("error: generate.prime_seconds") and err.count("\n") == 1


def test_cli_generate_unprimed_from_a_keras_file(trained_model_path, tmp_path, monkeypatch, capsys, mlflow_db):
    from wavenet.cli import main

    monkeypatch.chdir(tmp_path)
    rc = main(["generate", trained_model_path, "--out", str(tmp_path / "s"), "--preset", "tiny",
               "--set", "generate.num_clips=2", "--no-progress",
               "--tracking-uri", mlflow_db])
    assert rc == 0
    printed = json.loads(capsys.readouterr().out)
    assert [c["label"] for c in printed["clips"]] == ["0", "1"]  # no data: label ids
    assert all(sf.info(c["wav"]).frames == 4000 for c in printed["clips"])
    assert "log_mel_distance_db" not in printed["clips"][0]["metrics"]  # no reference without data


def test_a_conditioned_model_gets_one_clip_per_label_whatever_num_clips_says(
        eval_data, trained_model_path, tmp_path, monkeypatch, capsys, mlflow_db):
    monkeypatch.chdir(tmp_path)
    cfg = tiny_config().with_overrides({"generate.num_clips": 1, "generate.seconds": 0.1})
    result = generate_samples(trained_model_path, str(tmp_path / "s"), cfg, data_dir=eval_data,
                              ctx=RunContext.create(mlflow_db), progress=False)
    assert [c["label"] for c in result["clips"]] == EVAL_LABELS
    assert "2 clips, one per label (generate.num_clips=1)" in capsys.readouterr().err
    summary = json.loads((tmp_path / "s" / "samples.json").read_text())
    assert [c["label"] for c in summary["clips"]] == EVAL_LABELS
    # How the clips sound, in MLflow: the share of calibrated checks passed, overall and per label.
    from mlflow import MlflowClient

    logged = MlflowClient(mlflow_db).get_run(result["run_id"]).data.metrics
    expected = {"samples/checks_passed_fraction", "samples/clips_passed_fraction",
                *(f"samples/checks_passed_fraction/{label}" for label in EVAL_LABELS)}
    assert expected <= set(logged) and set(summary["checks_passed"]) == expected
    for key in expected:
        assert logged[key] == pytest.approx(summary["checks_passed"][key])
    per_label = [c for c in result["clips"] if c["label"] == EVAL_LABELS[1]]
    assert logged[f"samples/checks_passed_fraction/{EVAL_LABELS[1]}"] == pytest.approx(
        np.mean([k["passed"] for c in per_label for k in c["checks"]]))


def test_checks_passed_counts_checks_overall_and_per_label_and_whole_clips():
    from wavenet.generation.verb import checks_passed

    def clip(label, *verdicts):
        return {"label": label, "checks": [{"passed": v} for v in verdicts]}

    got = checks_passed([clip("organ", True, True, False, True), clip("drums", False, False, False, False),
                         clip("organ", True, True, True, True)])
    assert got == {"samples/checks_passed_fraction": pytest.approx(7 / 12),
                   "samples/clips_passed_fraction": pytest.approx(1 / 3),
                   "samples/checks_passed_fraction/drums": 0.0,
                   "samples/checks_passed_fraction/organ": pytest.approx(7 / 8)}
    assert checks_passed([{"label": None, "checks": []}]) == {}  # nothing calibrated: nothing to log


@pytest.fixture(scope="module")
def demo_shards(tmp_path_factory):
    """The demo corpus (one 12 s track per genre) preprocessed with the tiny preset."""
    from wavenet.data.demo import make_demo_corpus
    from wavenet.data.preprocess import preprocess

    root = tmp_path_factory.mktemp("demo-shards")
    make_demo_corpus(str(root / "src"), seconds_per_genre=12.0)
    preprocess(str(root / "src"), str(root / "out"), tiny_config(3), processes=1, progress=False)
    return str(root / "out")


@pytest.mark.training
def test_a_briefly_trained_models_noise_is_flagged_and_real_audio_of_each_label_is_not(
        demo_shards, tmp_path, monkeypatch, mlflow_db):
    from wavenet.data.audio import mu_law_decode
    from wavenet.generation.quality import CHECKS, analyze
    from wavenet.generation.verb import read_validation_codes

    monkeypatch.chdir(tmp_path)
    # 1.5 s clips: the tiny preset cuts tracks into examples of at most 2 s (data.chunk_seconds).
    cfg = tiny_config(3).with_overrides({"generate.num_clips": 3, "generate.seconds": 1.5})
    model = train_briefly(demo_shards, cfg, steps=60)
    result = generate_samples(model, str(tmp_path / "s"), cfg, data_dir=demo_shards,
                              ctx=RunContext.create(mlflow_db), progress=False)
    labels = ["drums", "organ", "strings"]
    assert [c["label"] for c in result["clips"]] == labels
    for clip in result["clips"]:
        # Each clip is judged against training audio of its own label, on every calibrated check.
        assert clip["reference"] == clip["label"]
        assert [c["metric"] for c in clip["checks"]] == [c.metric for c in CHECKS]
        failed = [c for c in clip["checks"] if not c["passed"]]
        assert failed, (clip["label"], clip["metrics"])
        assert {c["name"] for c in failed} <= {w.split(":")[0] for w in clip["warnings"]}
    # The same ranges pass real audio the calibration never saw: each label's held-out validation tail.
    n = result["num_samples"]
    tails = read_validation_codes(demo_shards)
    assert sorted({label for _, label in tails}) == [0, 1, 2]
    for codes, label in tails:
        for i in range(0, len(codes) - n + 1, n // 2):
            r = analyze(mu_law_decode(codes[i:i + n]), 16000, codes=codes[i:i + n],
                        calibration=result["reference"][labels[label]])
            assert r["warnings"] == [], (labels[label], r["warnings"])
    # samples.json shows each range, its tolerance and the thresholds that need no data.
    summary = json.loads((tmp_path / "s" / "samples.json").read_text())
    assert set(summary["reference"]) == set(labels)  # no clip needed all labels together
    organ = summary["reference"]["organ"]
    assert organ["windows"] >= 4 and organ["window_seconds"] == 1.5 and organ["percentiles"] == [2.5, 97.5]
    assert organ["ranges"]["harmonicity"]["tolerance"] == "+-0.15"
    assert summary["thresholds"]["white noise"] == {"spectral_flatness_above": 0.35}
    assert summary["clips"][0]["checks"] == result["clips"][0]["checks"]
