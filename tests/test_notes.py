"""A track's score (wavenet.data.notes) and the demo corpus's, and devtools/notes_probe.py's
two implementations of a score-conditioned WaveNet agreeing."""

from __future__ import annotations

import io
import os

import numpy as np
import pytest

from wavenet.data.demo import GENRES, make_demo_corpus, synthesize, synthesize_with_score
from wavenet.data.notes import NUM_TOKENS, Score, midi_bytes, note_rows, read_midi
from wavenet.errors import DataError


def reference_rows(score: Score, length: int, onset: int) -> np.ndarray:
    """(length, 2 * NUM_TOKENS) 0/1, sample by sample."""
    out = np.zeros((length, 2 * NUM_TOKENS), np.float32)
    for s, e, tok in zip(score.start, score.end, score.token):
        out[max(s, 0):min(e, length), tok] = 1
        out[max(s, 0):min(s + onset, e, length), NUM_TOKENS + tok] = 1
    return out


def test_note_rows_say_what_sounds_and_what_began_at_each_sample():
    score = Score.from_notes([(30, 40, 60, False), (5, 50, 64, False), (20, 22, 36, True),
                              (45, 90, 60, False)])
    ids, table = note_rows(score, 70, onset=4)
    np.testing.assert_array_equal(table[ids], reference_rows(score, 70, 4))
    assert not table[0].any() and ids[0] == 0  # row 0 is silence
    assert len(np.unique(table, axis=0)) == len(table)  # each distinct set once
    assert table[ids[21], NUM_TOKENS + 128 + 36] == 1  # the drum's onset, a token of its own
    assert table[ids[21], 36] == 0  # not the pitched key 36


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


def test_probe_kernel_with_a_score_matches_the_network_and_without_one_generate():
    """notes_probe: the kernel driven stretch by stretch with the score's biases gives the TF
    network's teacher-forced logits; with an empty score it samples what generate samples."""
    import tensorflow as tf

    from devtools.notes_probe import NoteConditioned, generate, teacher_forced_logits
    from tests.test_generate import make_model
    from wavenet.generation.fast import FastGenerator

    model = make_model(2, 3, stacks=2)
    score = Score.from_notes([(3, 40, 60, False), (25, 70, 38, True), (50, 90, 67, False)])
    rng = np.random.default_rng(0)
    t, rf = 100, model.receptive_field
    ids, table = note_rows(score, t + 1, onset=5)
    nc = NoteConditioned(model, table, dim=8, seed=1)
    nc.local.assign(nc.local.numpy() * 5)  # a score that moves the logits well past rounding
    labels = np.array([1, 2])
    codes = rng.integers(0, 256, (2, t + 1)).astype(np.int32)
    row_ids = np.stack([ids, np.roll(ids, 17)])
    gen = FastGenerator(model, 2)
    kernel = teacher_forced_logits(gen, nc, codes[:, :-1], row_ids[:, 1:], labels)
    net = nc.logits(tf.constant(codes[:, :-1]), tf.constant(labels), tf.constant(row_ids[:, 1:])).numpy()
    np.testing.assert_allclose(kernel[:, rf - 1:], net, atol=2e-4, rtol=0)
    plain = gen.teacher_forced_logits(codes[:, :-1], labels)
    assert np.abs(kernel - plain).max() > 0.1  # the score does move them

    silent = np.zeros((2, t), np.int32)
    np.testing.assert_array_equal(generate(gen, nc, silent, labels, seed=4),
                                  gen.generate(t, labels=labels, seed=4))
    assert not np.array_equal(generate(gen, nc, row_ids[:, :t], labels, seed=4),
                              gen.generate(t, labels=labels, seed=4))
