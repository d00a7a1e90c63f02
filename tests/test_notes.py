"""A track's score (wavenet.data.notes), the demo corpus's, and a WaveNet that plays one."""

from __future__ import annotations

import io
import os

import numpy as np
import pytest

from wavenet.data.demo import GENRES, make_demo_corpus, synthesize, synthesize_with_score
from wavenet.data.notes import NUM_TOKENS, Score, midi_bytes, pack_scores, read_midi
from wavenet.errors import DataError


def reference_rows(score: Score, length: int, onset: int) -> np.ndarray:
    """(length, 2 * NUM_TOKENS) 0/1, sample by sample."""
    out = np.zeros((length, 2 * NUM_TOKENS), np.float32)
    for s, e, tok in zip(score.start, score.end, score.token):
        out[max(s, 0):min(e, length), tok] = 1
        out[max(s, 0):min(s + onset, e, length), NUM_TOKENS + tok] = 1
    return out


def test_score_vectors_say_what_sounds_and_what_began_at_each_sample():
    """wavenet.model.score_vectors, the model's and the generator's one definition, against a
    sample-by-sample reference: with an identity embedding its vectors are the rows themselves."""
    from wavenet.model import score_vectors

    score = Score.from_notes([(30, 40, 60, False), (5, 50, 64, False), (20, 22, 36, True),
                              (45, 90, 60, False)])
    rows = np.asarray(score_vectors(pack_scores([score, Score.from_notes([])], 6), np.arange(70),
                                    np.eye(2 * NUM_TOKENS, dtype=np.float32), 4))
    np.testing.assert_array_equal(rows[0], reference_rows(score, 70, 4))
    assert not rows[1].any()  # padding rows say nothing
    assert rows[0, 21, NUM_TOKENS + 128 + 36] == 1  # the drum's onset, a token of its own
    assert rows[0, 21, 36] == 0  # not the pitched key 36


def test_each_crop_hears_what_its_samples_of_the_example_hear():
    """wavenet.data.dataset.crop_scores: a crop's rows say, at each of its samples, what the
    example's score says at that sample (notes begun before the crop keep their onset), and a
    crop with more notes than its rows keeps the first ones."""
    import tensorflow as tf

    from wavenet.data.dataset import crop_scores
    from wavenet.model import score_vectors

    score = Score.from_notes([(0, 300, 60, False), (95, 120, 36, True), (98, 99, 42, True),
                              (150, 400, 64, False), (390, 410, 38, True), (500, 520, 67, False)])
    example = pack_scores([score])[0]
    starts, length, onset = np.array([0, 96, 100, 380, 420, 450]), 64, 6
    crops = crop_scores(tf.constant(example), tf.constant(starts, tf.int32), length, 8).numpy()
    assert crops.shape == (6, 8, 3)
    table = np.eye(2 * NUM_TOKENS, dtype=np.float32)
    heard = np.asarray(score_vectors(crops, np.arange(length), table, onset))
    for k, s in enumerate(starts):
        whole = np.asarray(score_vectors(example[None], s + np.arange(length), table, onset))[0]
        np.testing.assert_array_equal(heard[k], whole, err_msg=f"crop at {s}")
    assert (crops[4, :, 2] == -1).all() and crops[5, 0, 2] == 67  # nothing in 420-484; 500 in 450-514
    assert crops[1, :3, 2].tolist() == [60, 128 + 36, 128 + 42] and crops[1, 1, 0] == -1  # began before
    few = crop_scores(tf.constant(example), tf.constant([90], tf.int32), 100, 2).numpy()[0]
    assert few[:, 2].tolist() == [60, 128 + 36]  # three notes sound in 90-190: the first two kept
    assert crop_scores(tf.zeros([0, 3], tf.int32), tf.constant([0, 5], tf.int32), 10, 4).numpy()[
        :, :, 2].tolist() == [[-1] * 4] * 2  # a track without a score


def test_score_shifted_cuts_to_the_window_and_bad_notes_are_refused():
    score = Score.from_notes([(0, 10, 60, False), (8, 30, 62, False), (40, 50, 64, True)])
    s = score.shifted(-9, 25)
    assert s.start.tolist() == [0, 0] and s.end.tolist() == [1, 21] and s.key.tolist() == [60, 62]
    with pytest.raises(ValueError, match="end > start"):
        Score.from_notes([(5, 5, 60, False)])
    with pytest.raises(ValueError, match="key in 0-127"):
        Score.from_notes([(5, 9, 128, False)])


@pytest.mark.parametrize("genre", GENRES)
def test_demo_score_is_what_the_track_plays(genre):
    sr = 8000
    x, score = synthesize_with_score(genre, 12.0, seed=2, track=1, sample_rate=sr)
    np.testing.assert_array_equal(x, synthesize(genre, 12.0, seed=2, track=1, sample_rate=sr))
    assert len(score) > 10 and score.start.min() >= int(0.2 * sr) and score.end.max() <= x.size
    drums = genre == "drums"
    assert score.percussion.any() == drums
    if drums:
        assert set(score.key[score.percussion].tolist()) == {36, 38, 42}
    # Each pitched note sounds at its key: over its first 0.25 s, more energy at its
    # fundamental than a whole tone above it.
    w = int(0.25 * sr)
    pitched = ~score.percussion & (score.start + w <= x.size)
    on, off = [], []
    for s, k in zip(score.start[pitched], score.key[pitched]):
        seg = x[s:s + w] * np.hanning(w)
        f0 = 440.0 * 2 ** ((k - 69) / 12)
        t = np.arange(w) / sr
        on.append(abs(seg @ np.exp(-2j * np.pi * f0 * t)))
        off.append(abs(seg @ np.exp(-2j * np.pi * f0 * 2 ** (2 / 12) * t)))
    assert len(on) > 5 and np.mean(np.array(on) > np.array(off)) > 0.8
    if drums:  # and each kick starts where the score says: the 10 ms after louder than before
        w = int(0.01 * sr)
        kicks = score.start[(score.key == 36) & score.percussion]
        after = np.array([np.abs(x[s:s + w]).mean() for s in kicks])
        before = np.array([np.abs(x[s - w:s]).mean() for s in kicks])
        assert len(kicks) > 5 and np.mean(after > before) > 0.8


def test_demo_corpus_writes_each_tracks_score_as_midi(tmp_path):
    """The .mid beside each track reads back as its score, at the file's rate and at another."""
    paths = make_demo_corpus(str(tmp_path), seconds_per_genre=5.0, seed=4)
    for path in paths:
        genre = os.path.basename(os.path.dirname(path))
        data = open(os.path.splitext(path)[0] + ".mid", "rb").read()
        _, score = synthesize_with_score(genre, 5.0, seed=4, track=0, sample_rate=22050)
        back = read_midi(data, 22050)
        assert len(back) == len(score) > 0
        for field in ("start", "end"):
            assert np.abs(getattr(back, field) - getattr(score, field)).max() <= 1
        np.testing.assert_array_equal(back.key, score.key)
        np.testing.assert_array_equal(back.percussion, score.percussion)
        at8k = read_midi(data, 8000)
        assert np.abs(at8k.start - score.start * 8000 / 22050).max() <= 1


def test_read_midi_follows_tempo_changes_channels_and_repeated_keys():
    import mido

    track = mido.MidiTrack([
        mido.MetaMessage("set_tempo", tempo=1_000_000, time=0),  # 60 bpm: a beat is 1 s
        mido.Message("note_on", note=60, velocity=90, time=0),
        mido.Message("note_on", note=60, velocity=90, time=240),  # the same key again at 0.5 s
        mido.Message("note_on", channel=9, note=38, velocity=90, time=0),
        mido.Message("note_on", note=60, velocity=0, time=240),  # ends the first one, at 1 s
        mido.MetaMessage("set_tempo", tempo=500_000, time=0),  # 120 bpm from here
        mido.Message("note_off", channel=9, note=38, time=480),  # 1.5 s
        mido.Message("note_on", note=64, velocity=90, time=0),  # never ended: to the file's end
        mido.Message("note_off", note=60, time=480),  # 2 s
    ])
    buf = io.BytesIO()
    mido.MidiFile(type=0, ticks_per_beat=480, tracks=[track]).save(file=buf)
    s = read_midi(buf.getvalue(), 1000)
    assert list(zip(s.start.tolist(), s.end.tolist(), s.key.tolist(), s.percussion.tolist())) == [
        (0, 1000, 60, False), (500, 2000, 60, False), (500, 1500, 38, True), (1500, 2000, 64, False)]
    assert len(midi_bytes(s, 1000)) > 0


def test_a_file_that_is_not_midi_is_refused_in_one_line_naming_it():
    with pytest.raises(DataError, match=r"^a/b\.mid: not a readable MIDI file") as e:
        read_midi(b"RIFF\x00\x00 not midi at all", 8000, name="a/b.mid")
    assert "\n" not in str(e.value)
    with pytest.raises(DataError, match="not a readable MIDI file"):
        read_midi(midi_bytes(Score.from_notes([(0, 9, 60, False)]), 8000)[:20], 8000)


def scored_model(num_classes=3):
    from tests.test_generate import make_model

    model = make_model(2, num_classes, stacks=2, score_channels=5)
    model.score_embedding.assign(model.score_embedding.numpy() * 10)  # scores that move the logits
    return model


SCORES = [Score.from_notes([(3, 40, 60, False), (25, 70, 38, True), (50, 90, 67, False)]),
          Score.from_notes([(-4, 12, 48, False), (30, 31, 42, True)])]


def test_a_scored_model_hears_a_note_from_its_first_sample_on():
    """Logits at position t (predicting sample t + 1) change with a note only once it sounds."""
    model = scored_model()
    codes = np.random.default_rng(1).integers(0, 256, (1, 80))
    x = {"codes": codes, "labels": np.array([1])}
    base = model({**x, "notes": pack_scores([Score.from_notes([(5, 20, 60, False)])], 2)}).numpy()
    more = model({**x, "notes": pack_scores([Score.from_notes([(5, 20, 60, False),
                                                              (50, 60, 72, False)])])}).numpy()
    changed = np.flatnonzero(np.abs(base - more).max(axis=(0, 2)) > 1e-6)
    assert changed.min() == 49  # position 49 predicts sample 50
    assert np.abs(base - more).max() > 0.1
    with pytest.raises(ValueError, match="plays a score"):
        model(x)


def test_fast_generator_plays_the_score_as_the_network_does():
    """Teacher forcing through the kernel, the score's biases set stretch by stretch, equals
    the network; generation with a prime equals the reference generator's."""
    from wavenet.generation.fast import FastGenerator, GenerateArgumentError, naive_generate

    model = scored_model()
    notes, labels = pack_scores(SCORES), np.array([0, 2])
    codes = np.random.default_rng(2).integers(0, 256, (2, 100))
    gen = FastGenerator(model, 2)
    fast = gen.teacher_forced_logits(codes, labels, notes)
    net = model({"codes": codes, "labels": labels, "notes": notes}).numpy()
    np.testing.assert_allclose(fast, net, atol=2e-4, rtol=0)
    prime = np.random.default_rng(3).integers(0, 256, (2, 9))
    a = gen.generate(60, prime=prime, labels=labels, seed=5, notes=notes)
    b = naive_generate(model, 60, batch_size=2, prime=prime, labels=labels, seed=5, notes=notes)
    np.testing.assert_array_equal(a[:, :30], b[:, :30])
    assert (a == b).mean() > 0.95
    silent = pack_scores([Score.from_notes([]), Score.from_notes([])])
    assert not np.array_equal(a, gen.generate(60, prime=prime, labels=labels, seed=5, notes=silent))
    for call, pattern in [(lambda: gen.generate(5, labels=labels), "plays a score"),
                          (lambda: gen.open_streams(labels), "does not take a score"),
                          (lambda: gen.generate(5, labels=labels, notes=notes[:1]), r"shape \(2, E, 3\)")]:
        with pytest.raises(GenerateArgumentError, match=pattern):
            call()


def lagged_model():
    """A scored model with score_lag whose receptive field (127) holds the periods of
    LAG_SCORES' notes at 16 kHz (C6: 15 samples, C5: 30, C7: 7)."""
    from tests.test_generate import make_model

    model = make_model(2, 3, stacks=2, layers=6, score_channels=5, score_lag=True)
    model.score_embedding.assign(model.score_embedding.numpy() * 10)
    model.lag_embedding.assign(model.lag_embedding.numpy() * 10)  # lags that move the logits
    return model


LAG_SCORES = [Score.from_notes([(3, 60, 84, False), (20, 45, 38, True), (40, 90, 72, False)]),
              Score.from_notes([(-4, 70, 96, False), (30, 31, 42, True), (50, 51, 72, False)])]


def test_the_lag_hears_the_codes_a_period_back_of_the_latest_pitched_note():
    """lag_vectors at each sample: the codes P and P + 1 samples back, P the period of the
    pitched note begun last (percussion has none), nothing before the codes or past reach."""
    from wavenet.model import lag_vectors, note_periods

    sr = 16000
    notes = pack_scores([Score.from_notes([(-5, 8, 96, False), (10, 50, 84, False), (20, 30, 38, True),
                                           (30, 40, 72, False), (30, 40, 60, False)])])
    period = np.asarray(note_periods(notes, np.arange(60), sr))[0]
    c7, c6, c5, c4 = (int(sr // (440 * 2 ** ((k - 69) / 12))) for k in (96, 84, 72, 60))
    assert (c7, c6, c5, c4) == (7, 15, 30, 61)
    # C7 began before the codes; C6 from 10 (the snare has no pitch); C4 and C5 both begin
    # at 30: the lower (first in the score's order) wins; after them C6 again.
    np.testing.assert_array_equal(period, [c7] * 8 + [0] * 2 + [c6] * 20 + [c4] * 10 + [c6] * 10 + [0] * 10)
    emb = np.random.default_rng(0).normal(size=(2, 256, 4)).astype("float32")
    codes = np.random.default_rng(1).integers(0, 256, (1, 80))
    got = np.asarray(lag_vectors(codes, notes, emb, sr, reach=61))[0]  # (80, 4)
    for t in range(80):  # position t predicts sample t + 1
        p = period[t + 1] if t + 1 < 60 else 0
        want = sum(emb[k, codes[0, t + 1 - p - k]] for k in (0, 1)
                   if p > 0 and t + 1 - p - k >= 0 and p + k <= 61)
        np.testing.assert_allclose(got[t], want if np.ndim(want) else np.zeros(4), atol=1e-6,
                                   err_msg=f"position {t}")
    # C4's period (61) is at reach: only its first tap (61 back) is heard.
    np.testing.assert_allclose(got[35], emb[0, codes[0, 36 - 61]] if 36 - 61 >= 0 else 0.0, atol=1e-6)


def test_a_lagged_model_generates_and_teacher_forces_as_the_network_does(tmp_path):
    """With score_lag, the kernel's per-sample biases (the codes a period back) give the
    network's logits, generation with a prime equals the reference generator's, and the
    model round-trips; the lag changes what is generated."""
    from wavenet.generation.fast import FastGenerator, naive_generate
    from wavenet.model import load_model, save_model

    model = lagged_model()
    notes, labels = pack_scores(LAG_SCORES), np.array([0, 2])
    codes = np.random.default_rng(2).integers(0, 256, (2, 100))
    gen = FastGenerator(model, 2)
    net = model({"codes": codes, "labels": labels, "notes": notes}).numpy()
    np.testing.assert_allclose(gen.teacher_forced_logits(codes, labels, notes), net, atol=2e-4, rtol=0)
    first = model.receptive_field - 1  # the valid path's score comes from every code
    crop = np.random.default_rng(6).integers(0, 256, (2, first + 40))
    x = {"codes": crop, "labels": labels, "notes": notes}
    np.testing.assert_allclose(model.logits_from(x, first + 5).numpy(), model(x).numpy()[:, first + 5:],
                               atol=2e-4, rtol=0)
    prime = np.random.default_rng(3).integers(0, 256, (2, 9))
    a = gen.generate(80, prime=prime, labels=labels, seed=5, notes=notes)
    b = naive_generate(model, 80, batch_size=2, prime=prime, labels=labels, seed=5, notes=notes)
    np.testing.assert_array_equal(a[:, :30], b[:, :30])
    assert (a == b).mean() > 0.95
    model.lag_embedding.assign(np.zeros(model.lag_embedding.shape, "float32"))
    assert not np.array_equal(a, FastGenerator(model, 2).generate(80, prime=prime, labels=labels, seed=5,
                                                                  notes=notes))
    path = str(tmp_path / "m.keras")
    save_model(model, path)
    np.testing.assert_array_equal(load_model(path)({"codes": codes, "labels": labels, "notes": notes}).numpy(),
                                  model({"codes": codes, "labels": labels, "notes": notes}).numpy())


def test_a_scored_model_round_trips_and_an_unscored_one_refuses_notes(tmp_path):
    from tests.test_generate import make_model
    from wavenet.generation.fast import FastGenerator, GenerateArgumentError
    from wavenet.model import load_model, save_model

    model = scored_model()
    path = str(tmp_path / "m.keras")
    save_model(model, path)
    x = {"codes": np.random.default_rng(4).integers(0, 256, (2, 50)), "labels": np.array([0, 1]),
         "notes": pack_scores(SCORES)}
    np.testing.assert_array_equal(load_model(path)(x).numpy(), model(x).numpy())
    with pytest.raises(GenerateArgumentError, match="plays no score"):
        FastGenerator(make_model(2, 0), 2).generate(5, notes=pack_scores(SCORES))


def _examples_with_scores(data: str, split: str) -> list[tuple[int, np.ndarray]]:
    import tensorflow as tf

    from wavenet.data.dataset import parse_example, shard_paths

    ds = tf.data.TFRecordDataset(shard_paths(data, split)).map(parse_example)
    return [(int(lab), notes) for _, lab, notes in ds.as_numpy_iterator()]


@pytest.mark.training
def test_a_scored_corpus_trains_and_its_clips_play_its_scores(tmp_path, capsys, mlflow_db):
    """From the MIDI beside each track to clips that play it: preprocessing reads the scores,
    a model that plays them trains and validates on them, evaluation scores it, and each clip
    plays the score of an example of its label (written beside it as MIDI), or a given file."""
    import json
    import math

    from wavenet.cli import main
    from wavenet.data.manifest import read_manifest

    sr, src, data = 8000, tmp_path / "src", str(tmp_path / "data")
    make_demo_corpus(str(src), seconds_per_genre=6.0, sample_rate=sr, genres=("drums", "organ"))
    common = ["--preset", "tiny", "--set", f"audio.sample_rate={sr}"]
    assert main(["preprocess", str(src), data, *common]) == 0
    assert all(t.score for t in read_manifest(data).files)
    scored = [*common, "--set", "model.score_channels=4", "--set", "model.num_classes=2",
              "--tracking-uri", mlflow_db]
    capsys.readouterr()
    assert main(["train", data, "--out", str(tmp_path / "run"), *scored, "--no-progress", "--steps", "4"]) == 0
    assert math.isfinite(json.loads(capsys.readouterr().out)["val_bits_per_sample"])
    model = str(tmp_path / "run" / "model.keras")
    assert main(["evaluate", model, data, *scored]) == 0
    capsys.readouterr()

    assert main(["generate", model, "--out", str(tmp_path / "clips"), "--data", data, *scored,
                 "--no-progress", "--seconds", "0.5"]) == 0
    result = json.loads(capsys.readouterr().out)
    n = result["num_samples"]
    examples = _examples_with_scores(data, "validation") + _examples_with_scores(data, "train")
    assert {c["label"] for c in result["clips"]} == {"drums", "organ"}
    for clip in result["clips"]:
        assert clip["score"]["source"].split(" of ")[1].startswith(clip["label"] + "/")
        with open(clip["score"]["mid"], "rb") as f:
            played = read_midi(f.read(), sr)
        assert len(played) == clip["score"]["notes"] > 0
        got = np.stack([played.start, played.end, played.token], axis=1)
        # The notes of an example of the clip's label, cut to the clip (within a sample: MIDI ticks).
        cut = [Score.from_rows(r).shifted(0, n)
               for lab, r in examples if lab == clip["label_id"] and len(r)]
        assert any(len(c) == len(played) and np.abs(
            np.stack([c.start, c.end, c.token], axis=1) - got).max() <= 1 for c in cut), clip["name"]

    mid = tmp_path / "tune.mid"
    mid.write_bytes(midi_bytes(Score.from_notes([(800, 2400, 60, False), (1600, 1700, 36, True)]), sr))
    assert main(["generate", model, "--out", str(tmp_path / "tune"), "--score", str(mid), *scored,
                 "--no-progress", "--seconds", "0.5"]) == 0
    for clip in json.loads(capsys.readouterr().out)["clips"]:
        with open(clip["score"]["mid"], "rb") as f:
            played = read_midi(f.read(), sr)
        assert played.start.tolist() == [0, 800] and played.end.tolist() == [1600, 900]
        assert played.percussion.tolist() == [False, True] and clip["score"]["source"] == str(mid)

    assert main(["generate", model, "--out", str(tmp_path / "none"), *scored, "--no-progress"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "this model plays a score: pass the data folder" in err[0]

    # A label whose tracks have no score: refused from the manifest, before any shard is read.
    import shutil

    shutil.copytree(src, tmp_path / "src2")
    for f in (tmp_path / "src2" / "organ").glob("*.mid"):
        f.unlink()
    assert main(["preprocess", str(tmp_path / "src2"), str(tmp_path / "data2"), *common]) == 0
    capsys.readouterr()
    assert main(["generate", model, "--out", str(tmp_path / "no-organ"), "--data", str(tmp_path / "data2"),
                 *scored, "--no-progress", "--seconds", "0.5"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no track of organ has a score to play" in err[0]
