"""The shard format (written without TensorFlow, read with it) and the tf.data pipelines."""

from __future__ import annotations

import io
import os

import numpy as np
import pytest
import tensorflow as tf

from wavenet.config import preset
from wavenet.data.dataset import parse_example, shard_paths, train_dataset, validation_dataset
from wavenet.data.demo import make_demo_corpus
from wavenet.data.manifest import read_manifest
from wavenet.data.preprocess import preprocess
from wavenet.data.shards import TFRecordWriter, serialize_example
from wavenet.errors import DataError

CFG = preset("tiny")


def test_examples_written_without_tensorflow_parse_with_it():
    codes = np.arange(300, dtype=np.int64) % 256
    for label, track in [(0, "a" * 64), (7, "ü-track"), (2**40, "")]:
        record = serialize_example(codes.astype(np.uint8), label, track)
        ex = tf.train.Example.FromString(record)
        assert ex.features.feature["codes"].bytes_list.value[0] == codes.astype(np.uint8).tobytes()
        assert list(ex.features.feature["label"].int64_list.value) == [label]
        assert ex.features.feature["track"].bytes_list.value[0].decode() == track
    parsed_codes, parsed_label, parsed_notes = parse_example(tf.constant(serialize_example(codes, 3, "t")))
    assert parsed_codes.dtype == tf.int32 and parsed_label.numpy() == 3
    assert parsed_notes.shape == (0, 3)  # a track without a score
    np.testing.assert_array_equal(parsed_codes.numpy(), codes)


def test_tfrecord_framing_is_read_and_checked_by_tensorflow(tmp_path):
    path = str(tmp_path / "x.tfrecord")
    records = [serialize_example(np.full(n, n % 256, np.uint8), n, f"t{n}") for n in (1, 200, 70000)]
    buf = io.BytesIO()
    w = TFRecordWriter(buf)
    for r in records:
        w.write(r)
    with open(path, "wb") as f:
        f.write(buf.getvalue())
    assert w.records == 3
    assert [r.numpy() for r in tf.data.TFRecordDataset(path)] == records
    # TensorFlow verifies our CRCs: a flipped byte in the payload is data loss.
    bad = bytearray(buf.getvalue())
    bad[40] ^= 0xFF
    with open(path, "wb") as f:
        f.write(bytes(bad))
    with pytest.raises(tf.errors.DataLossError):
        list(tf.data.TFRecordDataset(path))


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    make_demo_corpus(str(root / "src"), seconds_per_genre=4.0)
    cfg = CFG.with_overrides({"data.num_shards": 3, "data.validation_fraction": 0.3})
    preprocess(str(root / "src"), str(root / "out"), cfg, processes=1, progress=False)
    return str(root / "out")


def track_codes(data_dir: str, split: str) -> dict[str, tuple[np.ndarray, int]]:
    """The codes each track has in ``split`` (a held-out tail's track: its head or its tail)."""
    m = read_manifest(data_dir)
    return {f.sha256: (np.load(os.path.join(data_dir, f.codes)).astype(np.int32)[a:b], f.label_id)
            for f in m.files for s, a, b in f.ranges() if s == split}


def split_examples(data_dir: str, split: str) -> list[tuple[bytes, np.ndarray, int]]:
    m = read_manifest(data_dir)
    out = []
    for s in m.shards:
        if s.split == split and s.examples:
            for r in tf.data.TFRecordDataset(os.path.join(data_dir, s.path)):
                ex = tf.train.Example.FromString(r.numpy()).features.feature
                out.append((ex["track"].bytes_list.value[0].decode(), parse_example(r)[0].numpy(),
                            int(ex["label"].int64_list.value[0])))
    return out


def test_single_track_labels_hold_out_their_tails_and_no_sample_is_on_both_sides(data_dir):
    # The demo corpus at 4 s per genre has one track per label: each holds out its tail.
    m = read_manifest(data_dir)
    assert {f.split for f in m.files} == {"tail"} and m.summary.labels_without_validation == ()
    for split in ("train", "validation"):
        expected = track_codes(data_dir, split)
        got = {}
        for track, codes, label in split_examples(data_dir, split):
            part = expected[track][0]
            assert label == expected[track][1]
            # Chunks of a track are spread over shards: place each by where it matches.
            at = [i for i in np.flatnonzero(part[: part.size - codes.size + 1] == codes[0])
                  if np.array_equal(part[i:i + codes.size], codes)]
            got.setdefault(track, []).append((at[0], codes))
        # The examples of a split are exactly the track's part in it, each sample once.
        assert {t: np.concatenate([c for _, c in sorted(v, key=lambda x: x[0])]).tolist()
                for t, v in got.items()} == {t: c.tolist() for t, (c, _) in expected.items()}
    labels = {lab for _, _, lab in split_examples(data_dir, "validation")}
    assert labels == set(range(len(m.labels)))


def test_train_batches_are_crops_of_training_tracks_with_their_labels(data_dir):
    tracks = track_codes(data_dir, "train")
    ds = train_dataset(data_dir, CFG, batch_size=4, seed=3)
    batches = list(ds.take(6))
    for crops, labels, notes in batches:
        assert crops.shape == (4, CFG.crop_length) and crops.dtype == tf.int32
        assert notes.shape == (4, 0, 3)  # the model plays no score
        for crop, label in zip(crops.numpy(), labels.numpy()):
            # Every crop is a contiguous piece of one training track, labelled as that track.
            hits = [lab for codes, lab in tracks.values()
                    if any(np.array_equal(codes[i:i + crop.size], crop)
                           for i in np.flatnonzero(codes[: codes.size - crop.size + 1] == crop[0]))]
            assert hits and label in hits
    again = list(train_dataset(data_dir, CFG, batch_size=4, seed=3).take(6))
    assert all(np.array_equal(a[0], b[0]) for a, b in zip(batches, again))
    other = next(iter(train_dataset(data_dir, CFG, batch_size=4, seed=4)))
    assert not np.array_equal(other[0], batches[0][0])


def test_validation_is_deterministic_and_covers_every_window(data_dir):
    rf, window = CFG.model.receptive_field, 512
    batches = list(validation_dataset(data_dir, CFG, batch_size=5, window=window))
    again = list(validation_dataset(data_dir, CFG, batch_size=5, window=window))
    assert len(batches) == len(again) > 0
    assert all(np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1]) for a, b in zip(batches, again))
    m = read_manifest(data_dir)
    expected = 0
    for s in m.shards:
        if s.split == "validation" and s.examples:
            for r in tf.data.TFRecordDataset(os.path.join(data_dir, s.path)):
                expected += (parse_example(r)[0].shape[0] - rf) // window
    crops = np.concatenate([b[0].numpy() for b in batches])
    assert crops.shape == (expected, rf + window)
    labels = {lab for _, lab in track_codes(data_dir, "validation").values()}
    assert set(np.concatenate([b[1].numpy() for b in batches]).tolist()) == labels
    # split="all": the windows of every example of both splits, train shards first.
    every = list(validation_dataset(data_dir, CFG, batch_size=5, window=window, split="all"))
    all_crops = np.concatenate([b[0].numpy() for b in every])
    train_windows = sum((len(c) - rf) // window for _, c, _ in split_examples(data_dir, "train"))
    assert all_crops.shape == (train_windows + expected, rf + window)
    np.testing.assert_array_equal(all_crops[train_windows:], crops)
    with pytest.raises(DataError, match="split must be one of validation, all. Received: split='test'"):
        validation_dataset(data_dir, CFG, batch_size=5, split="test")


def test_workers_read_disjoint_shards_and_too_few_shards_is_a_clear_error(data_dir):
    assert len(shard_paths(data_dir, "train")) == 3
    ctx = tf.distribute.InputContext(num_input_pipelines=4, input_pipeline_id=0)
    with pytest.raises(DataError, match=r"has 3 training shards but training uses 4 workers.*"
                                        r"data.num_shards >= 4"):
        train_dataset(data_dir, CFG, batch_size=2, input_context=ctx)
    # FILE sharding: pipeline i reads only shard i, so its crops come from tracks with a chunk there.
    tracks = track_codes(data_dir, "train")
    m = read_manifest(data_dir)
    files = [s.path for s in m.shards if s.split == "train" and s.examples]
    for i in range(3):
        ctx = tf.distribute.InputContext(num_input_pipelines=3, input_pipeline_id=i)
        crops = next(iter(train_dataset(data_dir, CFG, batch_size=4, input_context=ctx)))[0].numpy()
        owners = {h for h, (codes, _) in tracks.items() for c in crops
                  if any(np.array_equal(codes[j:j + c.size], c) for j in np.flatnonzero(codes == c[0]))}
        allowed = {f.sha256 for f in m.files if files[i] in f.shards}
        assert owners and owners <= allowed


def test_missing_or_foreign_manifest_is_a_data_error(tmp_path):
    with pytest.raises(DataError, match="run `wavenet preprocess` first"):
        train_dataset(str(tmp_path), CFG, batch_size=2)
    (tmp_path / "manifest.json").write_text("{not json")
    with pytest.raises(DataError, match="is not valid JSON"):
        read_manifest(str(tmp_path))


def test_manifest_versions_one_and_two_are_read_and_others_refused_in_one_line(data_dir):
    """Version 2 adds scores; a version 1 manifest (none) still reads. A newer version asks
    for a newer wavenet, an unknown older one for a fresh folder."""
    import json

    from wavenet.data.manifest import MANIFEST, MANIFEST_VERSION, Manifest

    d = json.loads(open(os.path.join(data_dir, MANIFEST)).read())
    assert d["version"] == MANIFEST_VERSION == 2
    for t in d["files"]:
        for key in ("score", "score_sha256", "notes", "audio_sha256"):
            t.pop(key, None)
    d["summary"].pop("scored_tracks", None)
    old = Manifest.from_dict(dict(d, version=1))
    assert old.version == 1 and not old.scored
    assert [f.sha256 for f in old.files] == [f.sha256 for f in read_manifest(data_dir).files]
    for version, advice in [(3, "upgrade wavenet-pipelines to read it"), (0, "preprocess into a fresh folder"),
                            ("2", "preprocess into a fresh folder")]:
        with pytest.raises(DataError, match=f"is a version {version!r} manifest; this wavenet reads "
                                            f"versions 1 to 2: {advice}") as e:
            Manifest.from_dict(dict(d, version=version))
        assert "\n" not in str(e.value)


def test_a_window_longer_than_every_example_is_refused(data_dir):
    m = read_manifest(data_dir)
    longest = max(-(-(p.end - p.start) // p.chunks) for f in m.files for p in f.parts
                  if p.split == "train")
    too_long = CFG.with_overrides({"train.window": longest})  # crop = receptive field + window > longest
    with pytest.raises(DataError, match="no training example of at least"):
        train_dataset(data_dir, too_long, batch_size=2)
    fits = CFG.with_overrides({"train.window": longest - CFG.model.receptive_field})
    crops, _, _ = next(iter(train_dataset(data_dir, fits, batch_size=1)))
    assert crops.shape == (1, longest)


def test_a_validation_window_longer_than_every_example_is_refused(data_dir):
    with pytest.raises(DataError, match="every validation example is shorter"):
        validation_dataset(data_dir, CFG, batch_size=2, window=10**7)
