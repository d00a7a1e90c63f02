import json
import math

import numpy as np
import pytest
from conftest import EVAL_LABELS, tiny_config, write_shard_dataset

from wavenet.context import RunContext
from wavenet.errors import DataError
from wavenet.evaluate import (
    baseline_bits,
    count_codes,
    decide,
    evaluate,
    smoothed_log2_probs,
)

Q = 256

# The bucket of this module's GCS emulator (conftest.gcs_emulator).
BUCKET = "wavenet-test"


def expected_smoothed_bits(count: float, total: float, a: float, q: int = Q) -> float:
    return -math.log2((count + a) / (total + q * a))


def test_constant_signal_baselines_are_near_zero_exactly_as_smoothing_predicts():
    train = [np.full(1000, 7), np.full(500, 7)]
    counts = count_codes(train, Q)
    assert counts.unigram[7] == 1500 and counts.unigram.sum() == 1500
    assert counts.bigram[7, 7] == 999 + 499 and counts.bigram.sum() == 1498  # not joined across examples
    prev, targets = np.full(300, 7), np.full(300, 7)
    got = baseline_bits(counts, prev, targets, unigram_smoothing=0.25, bigram_smoothing=0.5)
    assert got["uniform"] == 8.0
    assert got["unigram"] == pytest.approx(expected_smoothed_bits(1500, 1500, 0.25), rel=1e-12)
    assert got["bigram"] == pytest.approx(expected_smoothed_bits(1498, 1498, 0.5), rel=1e-12)
    assert got["unigram"] < 0.2 and got["bigram"] < 0.2


def test_iid_uniform_codes_cost_about_eight_bits():
    rng = np.random.default_rng(0)
    counts = count_codes([rng.integers(0, Q, 1_000_000)], Q)
    held_out = rng.integers(0, Q, 200_001)
    got = baseline_bits(counts, held_out[:-1], held_out[1:], unigram_smoothing=0.5,
                        bigram_smoothing=0.5)
    assert got["uniform"] == 8.0
    assert got["unigram"] == pytest.approx(8.0, abs=0.01)
    # ~15 counts per bigram cell: estimation noise costs a few hundredths of a bit.
    assert got["bigram"] == pytest.approx(8.0, abs=0.1)
    assert got["bigram"] >= got["unigram"] - 1e-3


def test_alternating_signal_unigram_one_bit_bigram_near_zero():
    train = np.tile([10, 200], 2000)  # 4000 codes: 2000 each; 3999 transitions
    counts = count_codes([train], Q)
    held_out = np.tile([10, 200], 100)
    a_uni, a_bi = 0.5, 0.5
    got = baseline_bits(counts, held_out[:-1], held_out[1:], unigram_smoothing=a_uni,
                        bigram_smoothing=a_bi)
    assert got["unigram"] == pytest.approx(expected_smoothed_bits(2000, 4000, a_uni), rel=1e-12)
    assert got["unigram"] == pytest.approx(1.0, abs=0.1)
    # 10 -> 200 seen 2000 times (of 2000 transitions from 10), 200 -> 10 seen 1999 times.
    n_from_10, n_from_200 = 2000, 1999
    # held-out pairs: 100 of (10 -> 200), 99 of (200 -> 10)
    want = (100 * expected_smoothed_bits(n_from_10, n_from_10, a_bi)
            + 99 * expected_smoothed_bits(n_from_200, n_from_200, a_bi)) / 199
    assert got["bigram"] == pytest.approx(want, rel=1e-12)
    assert got["bigram"] < 0.1


def test_smoothed_probabilities_normalise_and_keep_unseen_codes_finite():
    counts = np.zeros((3, Q))
    counts[0, 5] = 10
    lp = smoothed_log2_probs(counts, 0.5)
    np.testing.assert_allclose(np.exp2(lp).sum(axis=-1), 1.0)
    assert np.all(np.isfinite(lp))
    np.testing.assert_allclose(lp[1], -8.0)  # an unseen row is uniform
    with pytest.raises(ValueError, match="smoothing"):
        smoothed_log2_probs(counts, 0)


def test_count_codes_rejects_codes_outside_the_quantisation():
    with pytest.raises(DataError, match=r"code 300 outside \[0, 256\)"):
        count_codes([np.array([1, 300])], Q)


def test_decide_needs_the_margin():
    assert decide(3.0, None, 0.01)[0] is True
    assert decide(2.9, 3.0, 0.05)[0] is True
    promoted, reason = decide(2.99, 3.0, 0.05)
    assert promoted is False and "margin" in reason
    assert decide(3.1, 3.0, 0.0)[0] is False
    assert decide(3.0, 3.0, 0.0)[0] is False  # a tie never replaces the champion


def independent_baselines(data_dir, config, receptive_field):
    """Baselines computed here from the shards directly, windows cut by hand."""
    import tensorflow as tf

    from wavenet.data.dataset import parse_example, shard_paths

    def read(split):
        ds = tf.data.TFRecordDataset(shard_paths(data_dir, split)).map(parse_example)
        return [(c, int(lab)) for c, lab, _ in ds.as_numpy_iterator()]

    counts = count_codes([c for c, _ in read("train")], Q)
    w, rf = config.evaluate.window, receptive_field
    prev, targets, per_label = [], [], {}
    for codes, label in read("validation"):
        for k in range((len(codes) - rf) // w):
            seg = codes[k * w: k * w + rf + w]
            prev.append(seg[rf - 1:-1])
            targets.append(seg[rf:])
            per_label[label] = per_label.get(label, 0) + w
    kw = dict(unigram_smoothing=config.evaluate.unigram_smoothing,
              bigram_smoothing=config.evaluate.bigram_smoothing)
    return baseline_bits(counts, np.concatenate(prev), np.concatenate(targets), **kw), per_label


def test_briefly_trained_model_beats_uniform_and_reports_everything(
        eval_data, trained_model_path, tmp_path, monkeypatch, mlflow_db):
    import mlflow

    monkeypatch.chdir(tmp_path)  # the SQLite store's artifacts land in ./mlruns
    uri = mlflow_db
    cfg = tiny_config()
    out = tmp_path / "eval"
    result = evaluate(trained_model_path, eval_data, cfg, RunContext.create(uri, experiment="eval-test"),
                      out_dir=str(out))

    assert result["bits_per_sample"] < result["baselines"]["uniform"] == 8.0
    want, label_samples = independent_baselines(eval_data, cfg, result["receptive_field"])
    for name in ("uniform", "unigram", "bigram"):
        assert result["baselines"][name] == pytest.approx(want[name], rel=1e-9)
    assert result["samples"] == sum(label_samples.values()) == 2 * 3 * cfg.evaluate.window  # 0.2 s: 3 windows per label
    assert set(result["per_label"]) == set(EVAL_LABELS)
    for i, name in enumerate(EVAL_LABELS):
        t = result["per_label"][name]
        assert t["label_id"] == i and t["samples"] == label_samples[i]
        assert 0 < t["bits_per_sample"] < 8
    weighted = sum(t["bits_per_sample"] * t["samples"] for t in result["per_label"].values())
    assert weighted / result["samples"] == pytest.approx(result["bits_per_sample"], rel=1e-9)
    assert "gate" not in result

    on_disk = json.loads((out / "metrics.json").read_text())
    assert on_disk["bits_per_sample"] == result["bits_per_sample"]
    assert not list(out.glob(".tmp-*"))

    run = mlflow.MlflowClient(uri).get_run(result["run_id"])
    assert run.data.metrics["eval/bits_per_sample"] == pytest.approx(result["bits_per_sample"])
    assert run.data.metrics["eval/baseline_bigram_bits"] == pytest.approx(want["bigram"])
    assert run.data.metrics["eval/label/high/samples"] == label_samples[1]
    assert run.data.params["model.num_classes"] == "2"


def test_evaluate_rejects_a_model_with_too_few_labels(eval_data, tmp_path, monkeypatch):
    from wavenet.model import build_model, save_model

    monkeypatch.chdir(tmp_path)
    path = str(tmp_path / "one-label.keras")
    save_model(build_model(tiny_config(num_classes=1)), path)
    # Saved without a vocabulary: its ids are the data's, and data id 1 has no row.
    with pytest.raises(DataError, match=f"data label 'high' has id 1 but {path} is conditioned on "
                                        "1 labels and records no vocabulary"):
        evaluate(path, eval_data, tiny_config(), ctx=RunContext.create(f"sqlite:///{tmp_path}/m.db"))


def test_cli_evaluate_prints_json_and_reports_bad_input_in_one_line(
        eval_data, trained_model_path, tmp_path, monkeypatch, capsys, mlflow_db):
    from wavenet.cli import main

    monkeypatch.chdir(tmp_path)
    uri = mlflow_db
    rc = main(["evaluate", trained_model_path, eval_data, "--preset", "tiny", "--tracking-uri", uri,
               "--out", str(tmp_path / "o")])
    assert rc == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["bits_per_sample"] < 8 and (tmp_path / "o" / "metrics.json").exists()

    rc = main(["evaluate", str(tmp_path / "missing.keras"), eval_data, "--tracking-uri", uri])
    err = capsys.readouterr().err
    assert rc == 2 and err.startswith("error: model file not found") and err.count("\n") == 1
    rc = main(["evaluate", trained_model_path, str(tmp_path / "nodata"), "--tracking-uri", uri])
    err = capsys.readouterr().err
    assert rc == 2 and "no manifest.json" in err and err.count("\n") == 1



def labelled_folder(root, seconds=1.0):
    """Audio files in one folder per label of the trained model (tones: real WAV files)."""
    import soundfile as sf
    from conftest import _tone

    for i, label in enumerate(EVAL_LABELS):
        for k in range(2):
            path = root / label / f"take{k}.wav"
            path.parent.mkdir(parents=True, exist_ok=True)
            sf.write(path, _tone(seconds, 220.0 * 1.5 ** i * (1 + 0.03 * k), 16000, 0.7 * k), 16000)
    return root


def test_every_label_is_scored_and_says_how_it_was_held_out(trained_model_path, tmp_path, monkeypatch, mlflow_db):
    from wavenet.data.preprocess import preprocess

    monkeypatch.chdir(tmp_path)
    src = labelled_folder(tmp_path / "src")
    (src / "high" / "take1.wav").unlink()  # "high" has one track: it holds out a tail
    cfg = tiny_config()
    m = preprocess(str(src), str(tmp_path / "data"), cfg, processes=1, progress=False)
    assert {f.relpath: f.split for f in m.files}["high/take0.wav"] == "tail"
    result = evaluate(trained_model_path, str(tmp_path / "data"), cfg,
                      ctx=RunContext.create(mlflow_db))
    assert result["split"] == "validation" and result["labels_not_scored"] == []
    assert {k: t["holdout"] for k, t in result["per_label"].items()} == {"low": "tracks", "high": "tail"}


def test_a_test_folder_is_scored_whole_with_split_all(trained_model_path, tmp_path, monkeypatch, capsys, mlflow_db):
    import tensorflow as tf

    from wavenet.cli import main
    from wavenet.data.dataset import parse_example, shard_paths
    from wavenet.data.preprocess import preprocess

    monkeypatch.chdir(tmp_path)
    uri = mlflow_db
    cfg = tiny_config().with_overrides({"data.validation_fraction": 0.0})
    preprocess(str(labelled_folder(tmp_path / "test")), str(tmp_path / "shards"), cfg, processes=1,
               progress=False)
    # Without --split all there is nothing to score, and the error says what to do.
    rc = main(["evaluate", trained_model_path, str(tmp_path / "shards"), "--preset", "tiny",
               "--tracking-uri", uri])
    err = capsys.readouterr().err
    assert rc == 2 and "score a test folder with --split all" in err and err.count("\n") == 1
    rc = main(["evaluate", trained_model_path, str(tmp_path / "shards"), "--preset", "tiny",
               "--tracking-uri", uri, "--split", "all"])
    assert rc == 0
    result = json.loads(capsys.readouterr().out)
    # Every window of every example, counted here from the shards.
    rf, w = result["receptive_field"], cfg.evaluate.window
    examples = [(c, int(lab)) for split in ("train", "validation") for path in shard_paths(str(tmp_path / "shards"), split)
                for c, lab, _ in tf.data.TFRecordDataset(path).map(parse_example).as_numpy_iterator()]
    per_label = {}
    for codes, label in examples:
        per_label[EVAL_LABELS[label]] = per_label.get(EVAL_LABELS[label], 0) + (len(codes) - rf) // w * w
    assert result["samples"] == sum(per_label.values()) > 0
    assert {k: t["samples"] for k, t in result["per_label"].items()} == per_label
    assert {t["holdout"] for t in result["per_label"].values()} == {"all"}
    assert result["split"] == "all" and result["baselines_counted_on"] == "train+validation"
    # The baselines were counted on the scored examples themselves.
    counts = count_codes([c for c, _ in examples], Q)
    segs = [c[k * w: k * w + rf + w] for c, _ in examples for k in range((len(c) - rf) // w)]
    want = baseline_bits(counts, np.concatenate([g[rf - 1:-1] for g in segs]),
                         np.concatenate([g[rf:] for g in segs]),
                         unigram_smoothing=cfg.evaluate.unigram_smoothing,
                         bigram_smoothing=cfg.evaluate.bigram_smoothing)
    assert result["baselines"] == pytest.approx(want, rel=1e-9)
    with pytest.raises(SystemExit):
        main(["evaluate", trained_model_path, str(tmp_path / "shards"), "--split", "test"])
    assert "invalid choice: 'test'" in capsys.readouterr().err


def test_evaluate_and_generate_with_data_and_outputs_in_a_bucket(
        eval_data, trained_model_path, tmp_path, monkeypatch, request, mlflow_db):
    from pathlib import Path

    from wavenet.edges import storage
    from wavenet.generation.verb import generate_samples

    monkeypatch.setenv("STORAGE_EMULATOR_HOST", request.getfixturevalue("gcs_emulator"))
    monkeypatch.setenv("GOOGLE_CLOUD_PROJECT", "test")
    monkeypatch.chdir(tmp_path)
    bucket = f"gs://{BUCKET}/eval-test"
    for f in sorted(Path(eval_data).rglob("*")):
        if f.is_file():
            storage.write_bytes_atomic(f"{bucket}/data/{f.relative_to(eval_data)}", f.read_bytes())
    uri = mlflow_db
    cfg = tiny_config().with_overrides({"generate.num_clips": 2, "generate.seconds": 0.1})

    local = evaluate(trained_model_path, eval_data, cfg, ctx=RunContext.create(uri))
    remote = evaluate(trained_model_path, f"{bucket}/data", cfg, out_dir=f"{bucket}/eval",
                      ctx=RunContext.create(uri))
    assert remote["bits_per_sample"] == pytest.approx(local["bits_per_sample"], rel=1e-9)
    assert remote["baselines"] == pytest.approx(local["baselines"])
    on_bucket = json.loads(storage.read_text(f"{bucket}/eval/metrics.json"))
    assert on_bucket["bits_per_sample"] == remote["bits_per_sample"]

    result = generate_samples(trained_model_path, f"{bucket}/samples", cfg,
                              data_dir=f"{bucket}/data", ctx=RunContext.create(uri), progress=False)
    assert storage.exists(f"{bucket}/samples/report.html")
    for clip in result["clips"]:
        assert clip["wav"].startswith(f"{bucket}/samples/")
        assert storage.read_bytes(clip["wav"])[:4] == b"RIFF"


def test_a_champion_trained_on_other_audio_is_not_compared_and_keeps_its_title(
        untrained_model_path, eval_data, tmp_path, monkeypatch, mlflow_db):
    """A champion made for other audio (here 8 kHz, the data 16 kHz) cannot be scored on these
    codes: the gate keeps it, with one reason that names the difference, instead of failing."""
    from mlflow import MlflowClient

    from wavenet.model import build_model, save_model

    monkeypatch.chdir(tmp_path)
    cfg8k = tiny_config().with_overrides({"audio.sample_rate": 8000})
    data8k = write_shard_dataset(tmp_path / "data-8k", cfg8k)
    model8k = str(tmp_path / "m8k.keras")
    save_model(build_model(cfg8k), model8k)
    assert evaluate(model8k, data8k, cfg8k, RunContext.create(mlflow_db), gate=True)["promoted"]

    second = evaluate(untrained_model_path, str(eval_data), tiny_config(), RunContext.create(mlflow_db),
                      gate=True)
    assert not second["promoted"]
    assert "sample_rate 8000 (the data: 16000)" in second["gate"]["reason"], second["gate"]["reason"]
    assert str(MlflowClient(mlflow_db).get_model_version_by_alias("wavenet", "champion").version) == "1"
