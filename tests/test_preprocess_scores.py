"""A track's score: its MIDI sidecar read by preprocessing, into the data folder and the shards."""

from __future__ import annotations

import hashlib
import json
import os
import shutil

import numpy as np
import pytest
import soundfile as sf

from wavenet.cli import main
from wavenet.config import preset
from wavenet.data.manifest import read_manifest, track_id
from wavenet.data.notes import MAX_MIDI_BYTES, Score, midi_bytes, read_midi
from wavenet.data.preprocess import preprocess, process_partition
from wavenet.data.shards import chunk_bounds

SR = 16000
# Chunks of 0.5 s (8,000 samples): a 2.5 s track is five examples, and notes cross their bounds.
CFG = preset("tiny").with_overrides({"data.chunk_seconds": 0.5})
LEAD_SILENCE = 8000  # 0.5 s of zeros: 50 silent 10 ms frames, trimmed exactly


def write_wav(path: str, seconds: float, freq: float, silence: int = 0, seed: int = 0) -> bytes:
    """A 16-bit WAV at SR: ``silence`` zero samples, then a tone with a little noise."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * SR)) / SR
    x = 0.4 * np.sin(2 * np.pi * freq * t) + 0.05 * rng.standard_normal(t.size)
    x[:silence] = 0.0
    os.makedirs(os.path.dirname(path), exist_ok=True)
    sf.write(path, np.round(np.clip(x, -1, 1) * 32767).astype(np.int16), SR, subtype="PCM_16")
    with open(path, "rb") as f:
        return f.read()


def write_bytes(path: str, data: bytes) -> bytes:
    with open(path, "wb") as f:
        f.write(data)
    return data


# In the file's samples: one note inside the leading silence, one that begins in it, a drum
# hit, notes across chunk bounds, and one past the audio's end.
LEAD_NOTES = [(0, 4000, 60, False), (6000, 10000, 62, False), (8000, 20000, 64, False),
              (12000, 12500, 38, True), (15000, 30000, 67, False), (40000, 60000, 72, False)]
OTHER_NOTES = [(0, 16000, 48, False), (16000, 32000, 50, False), (20000, 20400, 42, True)]


def shard_examples(dst: str, manifest) -> list[tuple[dict, np.ndarray | None]]:
    """Every example of the data folder: its features as TensorFlow parses them, and ``notes``
    read the way the reader does (VarLenFeature, reshaped to (-1, 3)); None where absent."""
    import tensorflow as tf

    spec = {"codes": tf.io.FixedLenFeature([], tf.string), "track": tf.io.FixedLenFeature([], tf.string),
            "notes": tf.io.VarLenFeature(tf.int64)}
    out = []
    for s in manifest.shards:
        for record in tf.data.TFRecordDataset(os.path.join(dst, s.path)):
            keys = set(tf.train.Example.FromString(record.numpy()).features.feature.keys())
            ex = tf.io.parse_single_example(record, spec)
            notes = tf.reshape(tf.sparse.to_dense(ex["notes"]), (-1, 3)).numpy() if "notes" in keys else None
            out.append(({"codes": np.frombuffer(ex["codes"].numpy(), np.uint8), "keys": keys,
                         "track": ex["track"].numpy().decode()}, notes))
    return out


@pytest.fixture(scope="module")
def scored(tmp_path_factory):
    """A folder of scored, unscored and badly scored tracks, preprocessed once."""
    root = tmp_path_factory.mktemp("scored")
    src, dst = str(root / "src"), str(root / "out")
    files = {
        "lead": write_wav(f"{src}/keys/lead.wav", 3.0, 330, silence=LEAD_SILENCE, seed=1),
        "other": write_wav(f"{src}/keys/other.wav", 2.5, 220, seed=2),
        "plain": write_wav(f"{src}/drums/plain.wav", 2.0, 110, seed=3),
        "bad": write_wav(f"{src}/drums/bad.wav", 2.0, 140, seed=4),
        "big": write_wav(f"{src}/drums/big.wav", 2.0, 160, seed=5),
        "twice": write_wav(f"{src}/drums/twice.wav", 2.0, 180, seed=6),
    }
    mids = {
        "lead": write_bytes(f"{src}/keys/lead.mid", midi_bytes(Score.from_notes(LEAD_NOTES), SR)),
        # Another spelling of the extension: .MIDI is a score too.
        "other": write_bytes(f"{src}/keys/other.MIDI", midi_bytes(Score.from_notes(OTHER_NOTES), SR)),
        "bad": write_bytes(f"{src}/drums/bad.mid", b"MThd not really a MIDI file"),
        "big": write_bytes(f"{src}/drums/big.mid", b"\0" * (MAX_MIDI_BYTES + 1)),
    }
    write_bytes(f"{src}/drums/twice.mid", mids["lead"])
    write_bytes(f"{src}/drums/twice.midi", mids["other"])
    manifest = preprocess(src, dst, CFG, processes=2, progress=False)
    return src, dst, manifest, files, mids


def test_a_scored_track_has_its_notes_in_every_example_cut_at_the_example_bounds(scored):
    src, dst, m, files, mids = scored
    tracks = {t.relpath: t for t in m.files}
    assert set(tracks) == {"keys/lead.wav", "keys/other.wav", "drums/plain.wav"}
    # The score in the codes' samples: the sidecar's notes moved back by the trimmed silence.
    trims = {"keys/lead.wav": LEAD_SILENCE, "keys/other.wav": 0}
    mid_of = {"keys/lead.wav": mids["lead"], "keys/other.wav": mids["other"]}
    expected = {}
    for rel, trim in trims.items():
        t = tracks[rel]
        expected[t.sha256] = read_midi(mid_of[rel], SR).shifted(-trim, t.samples).rows
        saved = np.load(os.path.join(dst, t.score))
        assert saved.dtype == np.int64 and np.array_equal(saved, expected[t.sha256]) and t.notes == len(saved)
    # The note inside the leading silence is gone; the one that began in it starts at 0.
    lead = expected[tracks["keys/lead.wav"].sha256]
    assert lead[:2].tolist() == [[0, 2000, 62], [0, 12000, 64]]
    assert lead[2].tolist() == [4000, 4500, 128 + 38]  # percussion: token 128 + key

    codes = {t.sha256: np.load(os.path.join(dst, t.codes)) for t in m.files}
    chunk = max(CFG.crop_length, int(round(CFG.data.chunk_seconds * SR)))
    bounds = {t.sha256: [(p.start + x, p.start + y) for p in t.parts
                         for x, y in chunk_bounds(p.end - p.start, chunk, CFG.crop_length)] for t in m.files}
    seen = set()
    for ex, notes in shard_examples(dst, m):
        sha = ex["track"]
        (a, b), = [(a, b) for a, b in bounds[sha] if np.array_equal(codes[sha][a:b], ex["codes"])]
        seen.add((sha, a))
        if sha not in expected:
            assert notes is None and ex["keys"] == {"codes", "label", "track"}
            continue
        rows = expected[sha]
        want = rows[(rows[:, 0] < b) & (rows[:, 1] > a)] - np.array([a, a, 0])
        assert np.array_equal(notes, want), (sha, a, b)
    assert seen == {(sha, a) for sha, bs in bounds.items() for a, _ in bs}
    # A note across a chunk's start begins before it (negative) and may end after it.
    lead_sha = tracks["keys/lead.wav"].sha256
    second = [n for ex, n in shard_examples(dst, m) if ex["track"] == lead_sha
              and np.array_equal(ex["codes"], codes[lead_sha][8000:16000])][0]
    assert [-1000, 14000, 67] in second.tolist()


def test_the_track_id_covers_the_score_and_the_manifest_records_it(scored):
    src, dst, m, files, mids = scored
    tracks = {t.relpath: t for t in m.files}
    lead, plain = tracks["keys/lead.wav"], tracks["drums/plain.wav"]
    audio_sha, score_sha = hashlib.sha256(files["lead"]).hexdigest(), hashlib.sha256(mids["lead"]).hexdigest()
    assert lead.score_sha256 == score_sha
    assert lead.sha256 == hashlib.sha256(f"{audio_sha}:{score_sha}".encode()).hexdigest() == track_id(audio_sha,
                                                                                                       score_sha)
    assert lead.score == f"{lead.codes[:-len('.npy')]}.score.npy"
    assert (plain.sha256, plain.score, plain.score_sha256, plain.notes) == (
        hashlib.sha256(files["plain"]).hexdigest(), None, None, 0)
    assert m.summary.scored_tracks == 2
    assert read_manifest(dst).files == m.files  # the JSON round-trips the new fields


def test_a_bad_score_skips_its_track_with_one_line_naming_it(scored):
    src, dst, m, files, mids = scored
    reasons = {s.path: s.reason for s in m.skipped}
    assert set(reasons) == {f"{src}/drums/{n}.wav" for n in ("bad", "big", "twice")}
    assert all("\n" not in r for r in reasons.values())
    assert reasons[f"{src}/drums/bad.wav"].startswith(f"{src}/drums/bad.mid: not a readable MIDI file")
    assert reasons[f"{src}/drums/big.wav"] == (f"its score {src}/drums/big.mid is larger than "
                                               f"{MAX_MIDI_BYTES >> 20} MiB (MAX_MIDI_BYTES): not read")
    assert reasons[f"{src}/drums/twice.wav"] == (f"more than one score beside it ({src}/drums/twice.mid, "
                                                 f"{src}/drums/twice.midi): keep one")


def test_a_partition_job_given_audio_paths_only_finds_the_scores(scored, tmp_path):
    src, dst, m, files, mids = scored
    part = process_partition([f"{src}/keys/lead.wav", f"{src}/drums/plain.wav"], str(tmp_path), CFG, src=src)
    records = {r["relpath"]: r for r in json.load(open(part))["records"]}
    lead = {t.relpath: t for t in m.files}["keys/lead.wav"]
    assert (records["keys/lead.wav"]["sha256"], records["keys/lead.wav"]["notes"]) == (lead.sha256, lead.notes)
    assert np.array_equal(np.load(tmp_path / records["keys/lead.wav"]["score"]), np.load(os.path.join(dst, lead.score)))
    assert "score" not in records["drums/plain.wav"]


def test_a_changed_score_replaces_its_track_and_a_copy_of_the_audio_is_skipped(tmp_path, capsys):
    src, dst = str(tmp_path / "src"), str(tmp_path / "out")
    write_wav(f"{src}/keys/a.wav", 2.0, 330, seed=1)
    write_wav(f"{src}/keys/b.wav", 2.0, 220, seed=2)
    write_bytes(f"{src}/keys/a.mid", midi_bytes(Score.from_notes(OTHER_NOTES), SR))
    assert main(["preprocess", src, dst, "--preset", "tiny", "--no-progress", "--processes", "1"]) == 0
    assert "2 processed, 0 unchanged, 0 skipped" in capsys.readouterr().out
    first = read_manifest(dst)
    # Only the score changes (a note moves): a new track id, the audio decoded again, and the
    # new entry takes the old one's place and split (the audio is the same; its notes were fixed).
    write_bytes(f"{src}/keys/a.mid", midi_bytes(Score.from_notes([(0, 8000, 49, False)]), SR))
    # A copy of the audio under another name, without a score: the same audio, skipped.
    shutil.copy(f"{src}/keys/a.wav", f"{src}/keys/copy.wav")
    assert main(["preprocess", src, dst, "--preset", "tiny", "--no-progress", "--processes", "1"]) == 0
    out = capsys.readouterr().out
    assert "1 processed, 1 unchanged, 1 skipped" in out and "(2 tracks, 1 with a score, 1 labels;" in out
    second = read_manifest(dst)
    old = {t.relpath: t for t in first.files}["keys/a.wav"]
    new = {t.relpath: t for t in second.files}["keys/a.wav"]
    assert new.sha256 != old.sha256 and new.audio_id == old.audio_id and new.split == old.split
    assert new.notes == 1 and np.load(os.path.join(dst, new.score)).tolist() == [[0, 8000, 49]]
    assert [s.reason for s in second.skipped] == [f"same audio as {src}/keys/a.wav"]
    # The old score is no longer named by the live manifest (kept versions may still name it).
    assert old.sha256 not in {t.sha256 for t in second.files}
    # A third run changes nothing.
    third = preprocess(src, dst, preset("tiny"), processes=1, progress=False)
    assert (third.summary.processed, third.summary.unchanged) == (0, 2)
    assert [s.sha256 for s in third.shards] == [s.sha256 for s in second.shards]


def unscored_corpus(root: str) -> None:
    """Four 1 s tracks in two labels, without scores: the same bytes on every machine."""
    rng = np.random.default_rng(2026)
    for label in ("a", "b"):
        for i in range(2):
            t = np.arange(16000) / 16000
            x = (0.4 * np.sin(2 * np.pi * (200 + 150 * i + (label == "b") * 90) * t)
                 + 0.05 * rng.standard_normal(t.size))
            x[:1600] = 0.0
            pcm = np.round(np.clip(x, -1, 1) * 32767).astype(np.int16)
            os.makedirs(os.path.join(root, label), exist_ok=True)
            sf.write(os.path.join(root, label, f"{label}{i}.wav"), pcm, 16000, subtype="PCM_16")


# What preprocess(unscored_corpus, preset("tiny")) wrote before scores existed (commit 06074f5):
# tracks without a score keep their shards, byte for byte.
SHARDS_BEFORE_SCORES = [
    ("train/shard-00000-of-00002-713707648b80.tfrecord",
     "713707648b80095f1f6581eabe53d18b5c220b55111b28a071ce96bc52517149"),
    ("train/shard-00001-of-00002-599f27896a2c.tfrecord",
     "599f27896a2ceb70dac32019910577fca1e33ecab903d6ce61ad551318aa5020"),
    ("validation/shard-00000-of-00002-cfe1ccb7c2f3.tfrecord",
     "cfe1ccb7c2f3dbbca9414e1c2a282078e6ba4ea3749266b19a6f2870bf309aa3"),
    ("validation/shard-00001-of-00002-417fb55246f5.tfrecord",
     "417fb55246f5c9a294fa3f895caab86d5f6d3b9d9ae19fba9c4b982287cdfaa6"),
]


def test_a_folder_without_scores_gives_the_shards_it_gave_before_and_old_manifests_read(tmp_path):
    src, dst = str(tmp_path / "src"), str(tmp_path / "out")
    unscored_corpus(src)
    m = preprocess(src, dst, preset("tiny"), processes=1, progress=False)
    assert [(s.path, s.sha256) for s in m.shards] == SHARDS_BEFORE_SCORES
    assert m.summary.scored_tracks == 0 and all(t.score is None for t in m.files)
    # A manifest written before scores existed (no score fields) reads, and its folder is
    # still current: a new run finds every track unchanged and writes the same shards.
    path = os.path.join(dst, "manifest.json")
    d = json.load(open(path))
    for f in d["files"]:
        for key in ("score", "score_sha256", "notes"):
            del f[key]
    del d["summary"]["scored_tracks"]
    with open(path, "w") as f:
        json.dump(d, f)
    old = read_manifest(dst)
    assert [(t.score, t.score_sha256, t.notes) for t in old.files] == [(None, None, 0)] * 4
    assert old.summary.scored_tracks == 0
    again = preprocess(src, dst, preset("tiny"), processes=1, progress=False)
    assert (again.summary.processed, again.summary.unchanged) == (0, 4)
    assert [(s.path, s.sha256) for s in again.shards] == SHARDS_BEFORE_SCORES
    shutil.rmtree(dst)
