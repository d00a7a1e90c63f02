"""gs:// end to end against a real GCS emulator process on 127.0.0.1."""

from __future__ import annotations

import io
import json
import os

import numpy as np
import soundfile as sf

from wavenet.config import preset
from wavenet.data.demo import make_demo_corpus
from wavenet.data.manifest import read_manifest, version_files
from wavenet.data.preprocess import check_dataset, list_audio, preprocess
from wavenet.edges import storage

CFG = preset("tiny")
BUCKET = "wavenet-test"


def test_storage_round_trip(gcs):
    uri = f"{gcs}/misc/a b/ü.bin"
    storage.write_bytes_atomic(uri, b"hello")
    assert storage.exists(uri) and storage.read_bytes(uri) == b"hello"
    assert list(storage.list_files(f"{gcs}/misc")) == [uri]
    storage.remove(uri)
    storage.remove(uri)  # missing is fine
    assert not storage.exists(uri)


def test_preprocess_bucket_to_bucket_and_train_from_it(gcs, tmp_path):
    import tensorflow as tf

    from wavenet.data.dataset import train_dataset, validation_dataset

    src, dst = f"{gcs}/corpus", f"{gcs}/shards"
    written = make_demo_corpus(src, seconds_per_genre=4.0)
    assert all(p.startswith(src + "/") for p in written)
    storage.write_bytes_atomic(f"{src}/drums/broken.wav", b"RIFF not really")
    buf = io.BytesIO()
    sf.write(buf, 0.3 * np.sin(np.arange(32000) * 0.1), 16000, format="FLAC")
    storage.write_bytes_atomic(f"{src}/organ/extra.flac", buf.getvalue())
    assert len(list_audio(src)) == 5

    m = preprocess(src, dst, CFG, processes=2, progress=False).to_dict()
    assert (m["summary"]["processed"], m["summary"]["skipped"]) == (4, 1)
    assert m["skipped"][0]["path"] == f"{src}/drums/broken.wav"
    assert {f["relpath"] for f in m["files"]} >= {"drums/drums-00.wav", "organ/extra.flac"}
    assert m["labels"] == ["drums", "organ", "strings"]
    assert check_dataset(dst) == []

    cache = str(tmp_path / "cache")
    crops, labels, _ = next(iter(train_dataset(dst, CFG, batch_size=4, cache_dir=cache)))
    assert crops.shape == (4, CFG.crop_length) and crops.dtype == tf.int32
    assert set(labels.numpy().tolist()) <= set(range(3))
    val = list(validation_dataset(dst, CFG, batch_size=4, window=256, cache_dir=cache))
    assert val and val[0][0].shape[1] == CFG.model.receptive_field + 256
    # Cached shards are named by checksum and match the bucket's bytes.
    names = sorted(os.listdir(cache))
    assert names and all(n.endswith(".tfrecord") for n in names)
    assert {n[:-len(".tfrecord")] for n in names} <= {s["sha256"] for s in m["shards"]}

    again = preprocess(src, dst, CFG, processes=1, progress=False).to_dict()
    assert (again["summary"]["processed"], again["summary"]["unchanged"]) == (0, 4)
    storage.remove(f"{src}/drums/broken.wav")
    make_demo_corpus(f"{src}/more", seconds_per_genre=2.0, seed=5)
    third = preprocess(src, dst, CFG, processes=2, progress=False).to_dict()
    assert (third["summary"]["processed"], third["summary"]["tracks"]) == (3, 7)
    assert check_dataset(dst) == []
    # The shards of the kept manifest versions are in the bucket (nothing else was written).
    shards = {p for sp in ("train", "validation") for p in storage.list_files(f"{dst}/{sp}")}
    versions = [read_manifest(v) for v in version_files(dst)]
    assert len(versions) == 3 and {f"{dst}/{s['path']}" for s in third["shards"]} <= shards
    assert shards == {f"{dst}/{s.path}" for v in versions for s in v.shards}


def test_fan_out_with_a_bucket_work_dir(gcs):
    """The pipeline's shape: one process_partition per pod, work in the bucket, one merge."""
    from wavenet.data.preprocess import merge_manifests, partition, process_partition

    src, work, dst = f"{gcs}/fan/src", f"{gcs}/fan/work", f"{gcs}/fan/out"
    make_demo_corpus(src, seconds_per_genre=2.0, seed=3)
    parts = partition(list_audio(src), 2)
    partials = [process_partition(files, f"{work}/{i}", CFG, src=src, dst=dst) for i, files in enumerate(parts)]
    assert all(p.startswith(f"{work}/") and storage.exists(p) for p in partials)
    m = merge_manifests(partials, dst, CFG).to_dict()
    assert (m["summary"]["processed"], m["src"]) == (3, src)
    assert check_dataset(dst) == []
    # A second fan-out over the same files finds them in DST and decodes nothing.
    again = [process_partition(files, f"{work}/again-{i}", CFG, src=src, dst=dst) for i, files in enumerate(parts)]
    assert merge_manifests(again, dst, CFG).summary.unchanged == 3


def test_a_score_beside_a_track_in_a_bucket_reaches_its_examples(gcs, tmp_path):
    import tensorflow as tf

    from wavenet.data.notes import Score, midi_bytes, read_midi
    from wavenet.data.preprocess import process_partition

    src, dst = f"{gcs}/scored/src", f"{gcs}/scored/out"
    buf = io.BytesIO()
    sf.write(buf, 0.4 * np.sin(np.arange(24000) * 0.05), 16000, format="WAV", subtype="PCM_16")
    storage.write_bytes_atomic(f"{src}/keys/a.wav", buf.getvalue())
    mid = midi_bytes(Score.from_notes([(0, 8000, 60, False), (4000, 20000, 64, False)]), 16000)
    storage.write_bytes_atomic(f"{src}/keys/a.Mid", mid)
    m = preprocess(src, dst, CFG, processes=1, progress=False)
    (t,) = m.files
    rows = read_midi(mid, 16000).shifted(0, t.samples)  # a tone from its first sample: nothing trimmed
    want = np.stack([rows.start, rows.end, rows.token], axis=1)
    assert (m.summary.scored_tracks, t.notes) == (1, 2) and check_dataset(dst) == []
    assert np.array_equal(np.load(io.BytesIO(storage.read_bytes(f"{dst}/{t.score}"))), want)
    spec = {"notes": tf.io.VarLenFeature(tf.int64)}
    got = []
    for s in m.shards_of("train") + m.shards_of("validation"):
        storage.download_file(f"{dst}/{s.path}", str(tmp_path / "shard"))
        for r in tf.data.TFRecordDataset(str(tmp_path / "shard")):
            got.append(tf.sparse.to_dense(tf.io.parse_single_example(r, spec)["notes"]).numpy().reshape(-1, 3))
    assert got and all(len(g) for g in got)  # every example of the track carries its notes
    # A partition step, given the audio's path only, finds the score in the bucket too.
    part = process_partition([f"{src}/keys/a.wav"], f"{gcs}/scored/work", CFG, src=src)
    (record,) = json.loads(storage.read_text(part))["records"]
    assert (record["sha256"], record["score_sha256"]) == (t.sha256, t.score_sha256)
