"""The listening report a person acts on: title, gate decision, scores, reference audio, thresholds;
and `wavenet generate`'s everyday flags."""

import base64
import json
import re

import mlflow
import soundfile as sf
from conftest import EVAL_LABELS, tiny_config

from wavenet.cli import main
from wavenet.context import RunContext
from wavenet.edges import tracking
from wavenet.evaluate import evaluate
from wavenet.generation.verb import generate_samples, reference_clips
from wavenet.model import load_model


def _log_as_training_run(path, uri, run_name):
    mlflow.set_tracking_uri(uri)
    mlflow.set_experiment("report-test")
    with mlflow.start_run(run_name=run_name) as run:
        tracking.log_model(load_model(path), name="model")
    return f"runs:/{run.info.run_id}/model"


def test_reference_clips_take_the_middle_of_each_labels_longest_example():
    import numpy as np

    examples = [(np.arange(10, dtype=np.uint8), 0), (np.arange(30, dtype=np.uint8), 0),
                (np.arange(4, dtype=np.uint8), 1)]
    refs = reference_clips(examples, 10, [0, 1, 2])
    assert set(refs) == {0, 1}  # label 2 has no example
    assert refs[0][0].tolist() == list(range(10, 20)) and refs[0][1] == 10
    assert refs[1][0].tolist() == [0, 1, 2, 3]


def test_a_rejected_models_report_says_so_with_numbers_references_and_thresholds(
        eval_data, trained_model_path, untrained_model_path, tmp_path, monkeypatch, mlflow_db):
    monkeypatch.chdir(tmp_path)
    uri = mlflow_db
    name = "wavenet-report-test"
    cfg = tiny_config().with_overrides({"evaluate.registered_model_name": name, "generate.num_clips": 2,
                                        "generate.seconds": 0.1})
    good = _log_as_training_run(trained_model_path, uri, "good-run")
    assert evaluate(good, eval_data, cfg, gate=True, ctx=RunContext.create(uri))["promoted"]
    bad = _log_as_training_run(untrained_model_path, uri, "bad-run")
    evaluation = evaluate(bad, eval_data, cfg, RunContext.create(uri), gate=True,
                          out_dir=str(tmp_path / "e"))
    assert evaluation["promoted"] is False

    result = generate_samples(bad, str(tmp_path / "s"), cfg, data_dir=eval_data, ctx=RunContext.create(uri),
                              progress=False, evaluation=evaluation)
    html = (tmp_path / "s" / "report.html").read_text()
    title = re.search(r"<title>(.*)</title>", html).group(1)
    assert title == "WaveNet samples: bad-run · not registered" and "models:/m-" not in title
    gate = evaluation["gate"]
    assert "class='gate rejected'" in html and ">rejected</b>" in html
    assert f"rejected: {gate['new_bits']:.4f} bits/sample vs champion {gate['champion_bits']:.4f}" in html
    assert "not better than the champion by the margin" in html  # the reason
    for row in (f"{evaluation['bits_per_sample']:.4g}", f"{gate['champion_bits']:.4g}",
                f"champion ({name} version 1)", "uniform baseline", "unigram baseline", "bigram baseline"):
        assert row in html, row
    # One validation clip per label, playable next to that label's samples.
    refs = result["reference_clips"]
    assert sorted(r["label"] for r in refs) == sorted(EVAL_LABELS)
    for ref in refs:
        data, sr = sf.read(ref["wav"])
        assert sr == 16000 and len(data) == 1600
        assert base64.b64encode(open(ref["wav"], "rb").read()).decode() in html
    assert html.index("reference</b>: 0.1 s of validation audio of low") < html.index("clip-00-low")
    # Every calibrated check shows the clip's value next to its range; the absolute thresholds too.
    checks = result["clips"][0]["checks"]
    assert checks and html.count("range of real audio") == len(result["clips"])
    c = checks[0]
    assert f"{c['high']:.4g}" in html and c["name"] in html
    assert "spectral_flatness_above 0.35" in html
    summary = json.loads((tmp_path / "s" / "samples.json").read_text())
    assert summary["evaluation"]["gate"]["promoted"] is False and summary["title"] == "bad-run · not registered"

    # The champion's report is titled with its run and registered version.
    champ = generate_samples(f"models:/{name}@champion", str(tmp_path / "c"), cfg, ctx=RunContext.create(uri),
                             progress=False)
    assert champ["title"] == f"good-run · {name} version 1 (champion)"
    assert "no gate decision" in (tmp_path / "c" / "report.html").read_text()


def test_cli_generate_everyday_flags_win_over_set(trained_model_path, tmp_path, monkeypatch, capsys, mlflow_db):
    monkeypatch.chdir(tmp_path)
    common = ["generate", trained_model_path, "--preset", "tiny", "--no-progress",
              "--tracking-uri", mlflow_db]
    rc = main([*common, "--out", str(tmp_path / "s"), "--set", "generate.num_clips=4",
               "--set", "generate.seconds=1", "--clips", "2", "--seconds", "0.1",
               "--temperature", "0.5", "--seed", "7", "--weights", "float32"])
    assert rc == 0
    printed = json.loads(capsys.readouterr().out)
    assert len(printed["clips"]) == 2 and printed["num_samples"] == 1600
    assert printed["temperature"] == 0.5 and printed["seed"] == 7 and printed["weights"] == "float32"
    # --set still works where no flag is given.
    assert main([*common, "--out", str(tmp_path / "t"), "--set", "generate.num_clips=3",
                 "--seconds", "0.05"]) == 0
    assert len(json.loads(capsys.readouterr().out)["clips"]) == 3
    # The config validates the flags: one line naming the field.
    for flag, value, field in (("--temperature", "0", "generate.temperature"),
                               ("--clips", "two", "generate.num_clips"),
                               ("--seed", "-1", "generate.seed")):
        assert main([*common, "--out", str(tmp_path / "u"), flag, value]) == 2
        err = capsys.readouterr().err
        assert err.startswith(f"error: {field}") and err.count("\n") == 1, err


def test_cli_generate_reads_the_evaluation_file_in_one_line_when_bad(trained_model_path, tmp_path,
                                                                     monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    bad = tmp_path / "metrics.json"
    bad.write_text("[1, 2]")
    rc = main(["generate", trained_model_path, "--out", str(tmp_path / "s"), "--preset", "tiny",
               "--no-progress", "--evaluation", str(bad)])
    assert rc == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --evaluation:") and err.count("\n") == 1
