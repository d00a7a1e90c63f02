"""The synthesised demo corpus."""

from __future__ import annotations

import hashlib
import os

import numpy as np
import soundfile as sf

from wavenet.cli import main
from wavenet.data.demo import GENRES, make_demo_corpus, synthesize


def digests(paths):
    return [hashlib.sha256(open(p, "rb").read()).hexdigest() for p in paths]


def test_corpus_is_deterministic_and_has_the_genres(tmp_path):
    a = make_demo_corpus(str(tmp_path / "a"), seconds_per_genre=3.0, seed=7)
    b = make_demo_corpus(str(tmp_path / "b"), seconds_per_genre=3.0, seed=7)
    c = make_demo_corpus(str(tmp_path / "c"), seconds_per_genre=3.0, seed=8)
    assert sorted(os.listdir(tmp_path / "a")) == sorted(GENRES)
    assert [os.path.relpath(p, tmp_path / "a") for p in a] == [os.path.relpath(p, tmp_path / "b") for p in b]
    assert digests(a) == digests(b)
    assert not set(digests(a)) & set(digests(c))
    scores = [os.path.splitext(p)[0] + ".mid" for p in a]
    assert digests(scores) == digests([os.path.splitext(p)[0] + ".mid" for p in b])
    for path in a:
        x, sr = sf.read(path)
        assert sr == 22050 and x.shape == (3 * 22050,)
        assert 0.5 < np.abs(x).max() <= 0.91
        assert np.sqrt(np.mean(x ** 2)) > 0.05  # music, not near silence
    assert {os.path.splitext(p)[1] for p in a} == {".wav", ".flac"}


def test_genres_sound_different():
    sr = 16000
    centroid = {}
    for g in GENRES:
        x = synthesize(g, 4.0, seed=0, sample_rate=sr).astype(np.float64)
        spec = np.abs(np.fft.rfft(x)) ** 2
        freqs = np.fft.rfftfreq(x.size, 1 / sr)
        centroid[g] = (freqs * spec).sum() / spec.sum()
        # Notes change over time: the loudness envelope of 0.25 s frames varies.
        frames = x[: x.size // 4000 * 4000].reshape(-1, 4000)
        assert np.std(np.sqrt((frames ** 2).mean(axis=1))) > 0.01
    assert len({round(c, -1) for c in centroid.values()}) == 3


def test_default_corpus_length_and_cli(tmp_path, capsys):
    assert main(["demo-data", str(tmp_path / "d"), "--seconds", "40", "--seed", "1"]) == 0
    assert "wrote 6 tracks" in capsys.readouterr().out
    audio = sorted(p for p in (tmp_path / "d").rglob("*.*") if p.suffix != ".mid")
    info = [sf.info(str(p)) for p in audio]
    assert len(info) == 6 and all(abs(i.duration - 20.0) < 1e-3 for i in info)
    assert all(p.with_suffix(".mid").is_file() for p in audio)  # each track's score beside it
