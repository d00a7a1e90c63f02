import base64
import json
from html import escape as html_escape

import numpy as np
import pytest
import soundfile as sf
from conftest import EVAL_LABELS, tiny_config

from wavenet.errors import ConfigError, DataError
from wavenet.evaluate import evaluate
from wavenet.generate_samples import clip_labels, generate_samples, prime_codes


def test_clip_labels_cycle_through_the_vocabulary():
    ids, names = clip_labels(5, 2, ["low", "high"])
    assert ids.tolist() == [0, 1, 0, 1, 0] and names == ["low", "high", "low", "high", "low"]
    ids, names = clip_labels(3, 4)
    assert ids.tolist() == [0, 1, 2] and names == ["0", "1", "2"]
    assert clip_labels(2, 0) == (None, [None, None])


def test_prime_codes_take_same_label_examples():
    examples = [(np.full(10, 1, np.uint8), 0), (np.full(10, 2, np.uint8), 1),
                (np.full(3, 9, np.uint8), 1), (np.full(10, 3, np.uint8), 0)]
    p = prime_codes(examples, 5, np.array([0, 1, 0, 1]), 4)
    assert p.shape == (4, 5) and p[:, 0].tolist() == [1, 2, 3, 2]
    assert prime_codes(examples, 5, None, 2)[:, 0].tolist() == [1, 2]
    with pytest.raises(DataError, match="no validation example has the 11 codes"):
        prime_codes(examples, 11, None, 1)


def test_generate_from_the_champion_writes_wavs_pngs_and_a_self_contained_report(
        eval_data, trained_model_path, mlflow_server, tmp_path, monkeypatch):
    import mlflow

    server_uri = getattr(mlflow_server, "uri", mlflow_server)  # the URI, or an object carrying it
    monkeypatch.chdir(tmp_path)
    name = "wavenet-samples-test"
    cfg = tiny_config().with_overrides({
        "evaluate.registered_model_name": name, "generate.num_clips": 3,
        "generate.seconds": 0.25, "generate.prime_seconds": 0.01, "generate.seed": 3})
    assert evaluate(trained_model_path, eval_data, cfg, gate=True, tracking_uri=server_uri,
                    experiment="samples-test")["promoted"]

    out = tmp_path / "samples"
    result = generate_samples(f"models:/{name}@champion", str(out), cfg, data_dir=eval_data,
                              tracking_uri=server_uri, experiment="samples-test", progress=False)

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

    client = mlflow.MlflowClient(server_uri)
    logged = {f.path for f in client.list_artifacts(result["run_id"], "samples")}
    assert {"samples/report.html", "samples/samples.json",
            f"samples/{result['clips'][0]['name']}.wav"} <= logged
    metrics = client.get_run(result["run_id"]).data.metrics
    assert metrics["quality/mean/rms_dbfs"] == pytest.approx(
        np.mean([c["metrics"]["rms_dbfs"] for c in result["clips"]]))


def test_priming_needs_data_and_cli_reports_it_in_one_line(trained_model_path, tmp_path,
                                                             monkeypatch, capsys):
    from wavenet.cli import main

    monkeypatch.chdir(tmp_path)
    cfg = tiny_config().with_overrides({"generate.prime_seconds": 0.1})
    with pytest.raises(ConfigError, match="generate.prime_seconds=0.1 primes with validation audio"):
        generate_samples(trained_model_path, str(tmp_path / "s"), cfg, progress=False)
    rc = main(["generate", trained_model_path, "--out", str(tmp_path / "s"), "--preset", "tiny",
               "--set", "generate.prime_seconds=0.1", "--no-progress",
               "--tracking-uri", f"sqlite:///{tmp_path}/m.db"])
    err = capsys.readouterr().err
    assert rc == 2 and err.startswith("error: generate.prime_seconds") and err.count("\n") == 1


def test_cli_generate_unprimed_from_a_keras_file(trained_model_path, tmp_path, monkeypatch, capsys):
    from wavenet.cli import main

    monkeypatch.chdir(tmp_path)
    rc = main(["generate", trained_model_path, "--out", str(tmp_path / "s"), "--preset", "tiny",
               "--set", "generate.num_clips=2", "--no-progress",
               "--tracking-uri", f"sqlite:///{tmp_path}/m.db"])
    assert rc == 0
    printed = json.loads(capsys.readouterr().out)
    assert [c["label"] for c in printed["clips"]] == ["0", "1"]  # no data: label ids
    assert all(sf.info(c["wav"]).frames == 4000 for c in printed["clips"])
    assert "log_mel_distance_db" not in printed["clips"][0]["metrics"]  # no reference without data
