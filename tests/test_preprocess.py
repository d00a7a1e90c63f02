"""Preprocessing: bad input, incremental runs, crash safety, splits, signal quality."""

from __future__ import annotations

import hashlib
import json
import math
import os
import random
import shutil
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import soundfile as sf

from wavenet.bench.preprocess import preprocess_peak_rss_mb, write_multichannel_flac
from wavenet.cli import main
from wavenet.config import preset
from wavenet.data.audio import mu_law_decode, mu_law_encode, peak_normalize, resample, to_mono, trim_silence
from wavenet.data.demo import make_demo_corpus
from wavenet.data.manifest import read_manifest, split_ranges, track_id
from wavenet.data.preprocess import (
    assign_splits,
    check_dataset,
    list_audio,
    merge_manifests,
    partition,
    preprocess,
    process_partition,
    split_of,
)
from wavenet.errors import DataError

CFG = preset("tiny")  # crop_length 272 samples at 16 kHz


def tone(seconds: float, sr: int, freq: float = 440.0, amp: float = 0.5, channels: int = 1) -> np.ndarray:
    t = np.arange(int(seconds * sr)) / sr
    x = amp * np.sin(2 * np.pi * freq * t)
    return np.stack([x * (1 - 0.1 * c) for c in range(channels)], axis=1) if channels > 1 else x


def write(path, x, sr, **kw) -> str:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    sf.write(path, x, sr, **kw)
    return str(path)


def load_codes(dst: str, entry: dict) -> np.ndarray:
    return np.load(os.path.join(dst, entry["codes"]))


# -- bad input ----------------------------------------------------------------------

@pytest.fixture(scope="module")
def messy(tmp_path_factory):
    """A folder with good files, every kind of bad file, and non-audio files; preprocessed once."""
    root = tmp_path_factory.mktemp("messy")
    src, dst = root / "src", str(root / "out")
    write(src / "good" / "a.wav", tone(1.0, 22050), 22050)
    write(src / "good" / "b.flac", tone(1.0, 44100, 330), 44100)
    good = (src / "good" / "a.wav").read_bytes()
    bad = src / "bad"
    bad.mkdir()
    (bad / "truncated.wav").write_bytes(good[: len(good) // 2])
    write(bad / "whole.flac", tone(1.0, 22050, 550), 22050)
    flac = (bad / "whole.flac").read_bytes()
    (bad / "whole.flac").unlink()
    rng = np.random.default_rng(0)
    (bad / "corrupt.flac").write_bytes(flac[:64] + rng.integers(0, 256, 4000, dtype=np.uint8).tobytes())
    (bad / "empty.wav").write_bytes(b"")
    (bad / "text.wav").write_text("this is not audio\n" * 20)
    write(bad / "silent.wav", np.zeros(22050), 22050)
    write(bad / "short.wav", tone(0.01, 16000), 16000)  # 160 samples < crop_length 272
    nan = tone(1.0, 16000).astype(np.float32)
    nan[100] = np.nan
    write(bad / "nan.wav", nan, 16000, subtype="FLOAT")
    os.symlink("does-not-exist.wav", bad / "dangling.wav")  # a file gone before it is read
    os.symlink("self.wav", bad / "self.wav")  # a symlink loop: ELOOP
    os.mkfifo(bad / "fifo.wav")  # reading would block forever
    write(src / "surround" / "six.wav", tone(1.0, 96000, channels=6), 96000, subtype="PCM_24")
    write(src / "formats" / "u8.wav", tone(1.0, 8000), 8000, subtype="PCM_U8")
    write(src / "formats" / "f32.wav", tone(1.0, 48000, amp=1.5), 48000, subtype="FLOAT")
    write(src / "dir with spaces" / "ñandú é.wav", tone(1.0, 16000), 16000)
    os.symlink("..", src / "formats" / "loop")  # a folder loop: must not recurse forever
    (src / "good" / "notes.txt").write_text("not audio")
    (src / "good" / "cover.jpg").write_bytes(b"\xff\xd8\xff")
    manifest = preprocess(str(src), dst, CFG, processes=2, progress=False).to_dict()
    return src, dst, manifest


def test_bad_files_are_skipped_with_reasons_and_good_ones_kept(messy):
    src, dst, m = messy
    done = {f["relpath"]: f for f in m["files"]}
    skipped = {os.path.relpath(s["path"], src): s["reason"] for s in m["skipped"]}
    for rel in ("good/a.wav", "good/b.flac", "surround/six.wav", "formats/u8.wav", "formats/f32.wav",
                "dir with spaces/ñandú é.wav"):
        assert rel in done, (rel, skipped.get(rel))
    assert skipped["bad/empty.wav"] == "empty file (0 bytes)"
    assert skipped["bad/text.wav"].startswith("not decodable audio")
    assert skipped["bad/corrupt.flac"].startswith("not decodable audio")
    assert skipped["bad/silent.wav"].startswith("silent")
    assert skipped["bad/short.wav"].startswith("too short: 160 samples")
    assert skipped["bad/nan.wav"] == "contains NaN or infinite samples"
    assert skipped["bad/dangling.wav"] == "cannot read: No such file or directory"
    assert skipped["bad/self.wav"] == "cannot read: Too many levels of symbolic links"
    assert skipped["bad/fifo.wav"].startswith("not a regular file")
    # A truncated WAV holds half its frames: libsndfile decodes what is there.
    assert done["bad/truncated.wav"]["duration_in_s"] == pytest.approx(0.5, abs=0.01)
    # Every reason is one line; non-audio files are ignored, not skipped.
    assert all("\n" not in r for r in skipped.values())
    assert not any(p.endswith((".txt", ".jpg")) for p in skipped)
    assert m["summary"]["processed"] == len(done) == 7
    assert m["summary"]["skipped"] == len(skipped) == 9
    assert check_dataset(dst) == []


def test_decoded_properties_are_recorded(messy):
    _, dst, m = messy
    done = {f["relpath"]: f for f in m["files"]}
    six = done["surround/six.wav"]
    assert (six["channels_in"], six["sample_rate_in"]) == (6, 96000)
    assert six["duration_in_s"] == pytest.approx(1.0)
    assert six["samples"] == pytest.approx(16000, abs=200)
    assert done["formats/u8.wav"]["subtype"] == "PCM_U8"
    # A float WAV beyond full scale is peak-normalised, not clipped.
    codes = load_codes(dst, done["formats/f32.wav"])
    peak = np.abs(mu_law_decode(codes)).max()
    assert 20 * np.log10(peak) == pytest.approx(CFG.audio.normalize_peak_db, abs=0.2)
    assert done["dir with spaces/ñandú é.wav"]["label"] == "dir with spaces"
    assert m["labels"] == sorted({f["label"] for f in m["files"]})


def test_the_cli_fails_with_one_line_only_when_nothing_is_usable(tmp_path, capsys):
    (tmp_path / "src" / "x").mkdir(parents=True)
    (tmp_path / "src" / "x" / "text.wav").write_text("nope")
    (tmp_path / "src" / "x" / "empty.flac").write_bytes(b"")
    assert main(["preprocess", str(tmp_path / "src"), str(tmp_path / "out"), "--preset", "tiny",
                 "--processes", "1", "--no-progress"]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("error: no usable audio in ") and "2 file(s) skipped" in err
    assert not (tmp_path / "out" / "manifest.json").exists()
    (tmp_path / "src" / "x" / "text.wav").unlink()
    (tmp_path / "src" / "x" / "empty.flac").unlink()
    (tmp_path / "src" / "x" / "readme.txt").write_text("no audio here")
    assert main(["preprocess", str(tmp_path / "src"), str(tmp_path / "out"), "--preset", "tiny"]) == 2
    assert "error: no audio files" in capsys.readouterr().err
    assert main(["preprocess", str(tmp_path / "missing"), str(tmp_path / "out"), "--preset", "tiny"]) == 2
    assert "is not a folder" in capsys.readouterr().err


def test_a_file_removed_after_listing_is_skipped(tmp_path):
    write(tmp_path / "src" / "g" / "a.wav", tone(1.0, 16000), 16000)
    files = list_audio(str(tmp_path / "src")) + [str(tmp_path / "src" / "g" / "gone.wav")]
    part = process_partition(files, str(tmp_path / "work"), CFG, src=str(tmp_path / "src"))
    m = merge_manifests([part], str(tmp_path / "out"), CFG).to_dict()
    assert [f["relpath"] for f in m["files"]] == ["g/a.wav"]
    assert m["skipped"] == [{"path": files[1], "reason": "cannot read: No such file or directory"}]


# -- the data version --------------------------------------------------------------------

def test_the_same_audio_in_other_folders_gives_the_same_data_version(tmp_path):
    """The data version (MLflow's dataset digest, the runs' data.version tag) is a digest of the
    shards' content: another source folder, another output folder, another time give the same."""
    src_a, src_b = str(tmp_path / "a" / "music"), str(tmp_path / "elsewhere" / "music")
    make_demo_corpus(src_a, seconds_per_genre=2.0)
    shutil.copytree(src_a, src_b)
    first = preprocess(src_a, str(tmp_path / "out1"), CFG, processes=1, progress=False)
    second = preprocess(src_b, str(tmp_path / "x" / "out2"), CFG, processes=2, progress=False)
    assert first.src != second.src and first.data_version == second.data_version
    assert read_manifest(str(tmp_path / "out1")).data_version == first.data_version
    write(os.path.join(src_b, "organ", "extra.wav"), tone(1.5, 22050, 262), 22050)
    third = preprocess(src_b, str(tmp_path / "x" / "out2"), CFG, processes=1, progress=False)
    assert third.data_version != first.data_version  # new audio, new version


# -- incremental runs and crash safety ------------------------------------------------

def test_rerun_processes_only_new_files(tmp_path):
    src, dst = str(tmp_path / "src"), str(tmp_path / "out")
    make_demo_corpus(src, seconds_per_genre=2.0)
    first = preprocess(src, dst, CFG, processes=2, progress=False).to_dict()
    assert first["summary"]["processed"] == 3
    again = preprocess(src, dst, CFG, processes=1, progress=False).to_dict()
    assert (again["summary"]["processed"], again["summary"]["unchanged"]) == (0, 3)
    assert [s["sha256"] for s in again["shards"]] == [s["sha256"] for s in first["shards"]]
    write(os.path.join(src, "organ", "extra.wav"), tone(1.5, 22050, 262), 22050)
    # A copy with its score: the same track (a copy of the audio alone, without the score,
    # would be another track: a track's id covers its score).
    for ext in ("wav", "mid"):
        shutil.copy(os.path.join(src, "drums", f"drums-00.{ext}"), os.path.join(src, "drums", f"copy.{ext}"))
    third = preprocess(src, dst, CFG, processes=2, progress=False).to_dict()
    s = third["summary"]
    assert (s["processed"], s["unchanged"], s["tracks"]) == (1, 3, 4)
    assert third["skipped"] == [{"path": os.path.join(src, "drums", "copy.wav"),
                                 "reason": f"same content as {os.path.join(src, 'drums', 'drums-00.wav')}"}]
    # Old tracks keep their split; shards hold every track's codes exactly once.
    old_split = {f["sha256"]: (f["split"], f.get("validation_start")) for f in first["files"]}
    assert all((f["split"], f.get("validation_start")) == old_split[f["sha256"]]
               for f in third["files"] if f["sha256"] in old_split)
    assert third["summary"]["labels_without_validation"] == [] and third["summary"]["tail_tracks"] == 3
    assert sum(sh["samples"] for sh in third["shards"]) == sum(f["samples"] for f in third["files"])
    assert check_dataset(dst) == []
    # Shards that no kept manifest version names are gone; those the versions name remain.
    on_disk = {f"{sp}/{n}" for sp in ("train", "validation") for n in os.listdir(os.path.join(dst, sp))}
    versions = [json.load(open(os.path.join(dst, "manifests", n))) for n in os.listdir(os.path.join(dst, "manifests"))]
    assert len(versions) == 3 and third["shards"] in [v["shards"] for v in versions]
    assert on_disk == {sh["path"] for v in versions for sh in v["shards"]}
    # Tracks are known by content and path relative to SRC: a moved SRC is still the same corpus.
    moved = str(tmp_path / "moved")
    os.rename(src, moved)
    fourth = preprocess(moved, dst, CFG, processes=1, progress=False).to_dict()
    assert (fourth["summary"]["processed"], fourth["summary"]["unchanged"]) == (0, 4)


CRASH = textwrap.dedent("""
    import os, signal, sys
    from wavenet.edges import storage
    from wavenet.config import preset
    from wavenet.data.preprocess import preprocess

    point, calls = sys.argv[3], []
    real_upload, real_write = storage.upload_file, storage.write_bytes_atomic

    def upload(local, path):
        real_upload(local, path)
        if point == "shard":  # one new shard renamed into place, the others not yet
            os.kill(os.getpid(), signal.SIGKILL)

    def write(path, data):
        if point == "track" and "/tracks/" in path:
            calls.append(path)
            if len(calls) == 2:  # a crash with one new track's codes half-written
                tmp = os.path.join(os.path.dirname(path), ".tmp-crash-" + os.path.basename(path))
                with open(tmp, "wb") as f:
                    f.write(data[: len(data) // 2])
                os.kill(os.getpid(), signal.SIGKILL)
        real_write(path, data)

    storage.upload_file, storage.write_bytes_atomic = upload, write
    preprocess(sys.argv[1], sys.argv[2], preset("tiny"), processes=1, progress=False)
""")


@pytest.mark.parametrize("point", ["track", "shard"])
def test_a_killed_run_leaves_a_consistent_dataset(tmp_path, point):
    src, dst = str(tmp_path / "src"), str(tmp_path / "out")
    make_demo_corpus(src, seconds_per_genre=2.0)
    before = preprocess(src, dst, CFG, processes=1, progress=False).to_dict()
    for i in range(3):
        write(os.path.join(src, "new", f"n{i}.wav"), tone(1.0, 16000, 200 + 100 * i), 16000)
    # The killed run's scratch folder lands in tmp_path, not the system temp dir.
    env = {**os.environ, "TMPDIR": str(tmp_path)}
    proc = subprocess.run([sys.executable, "-c", CRASH, src, dst, point], capture_output=True, text=True,
                          timeout=120, env=env)
    assert proc.returncode == -9, proc.stderr
    # The old manifest still describes complete shards with matching checksums.
    assert json.load(open(os.path.join(dst, "manifest.json")))["shards"] == before["shards"]
    assert check_dataset(dst) == []
    after = preprocess(src, dst, CFG, processes=1, progress=False).to_dict()
    assert (after["summary"]["processed"], after["summary"]["tracks"]) == (3, 6)
    assert check_dataset(dst) == []
    leftovers = [n for _, _, names in os.walk(dst) for n in names if n.startswith(".tmp-")]
    assert leftovers == []


# -- splits ---------------------------------------------------------------------------

def test_split_is_a_deterministic_function_of_the_relative_path(tmp_path):
    names = [f"g{i % 3}/track-{i}.wav" for i in range(400)]
    splits = [split_of(n, 0.25) for n in names]
    assert splits == [split_of(n, 0.25) for n in names]
    assert 0.18 < splits.count("validation") / len(names) < 0.32
    assert all(split_of(n, 0.0) == "train" for n in names)
    # Same corpus, two destinations and worker counts: identical splits and shard bytes.
    src = str(tmp_path / "src")
    make_demo_corpus(src, seconds_per_genre=4.0)
    a = preprocess(src, str(tmp_path / "a"), CFG, processes=1, progress=False).to_dict()
    b = preprocess(src, str(tmp_path / "b"), CFG, processes=2, progress=False).to_dict()
    assert [(f["relpath"], f["split"]) for f in a["files"]] == [(f["relpath"], f["split"]) for f in b["files"]]
    assert [s["sha256"] for s in a["shards"]] == [s["sha256"] for s in b["shards"]]
    # One track per genre: each holds out its tail, so every label is in both splits.
    assert {f["split"] for f in a["files"]} == {"tail"}
    for f in a["files"]:
        assert {p.split("/")[0] for p in f["shards"]} == {"train", "validation"}


def entries(spec):
    """Manifest-like track entries (label = folder), not yet split."""
    return [{"relpath": r, "sha256": hashlib.sha256(r.encode()).hexdigest(), "label": r.split("/")[0],
             "samples": n, "split": None} for r, n in spec]


def splits_by_label(tracks):
    out = {}
    for t in tracks:
        out.setdefault(t["label"], []).append(t["split"])
    return {k: sorted(v) for k, v in out.items()}


def test_every_label_gets_whole_validation_tracks_or_a_held_out_tail():
    spec = ([(f"many/t{i:02d}.wav", 10_000) for i in range(30)] + [("pair/a.wav", 10_000), ("pair/b.wav", 10_000)]
            + [("solo/only.wav", 10_000), ("short/only.wav", 1_200)])
    tracks = entries(spec)
    assign_splits(tracks, 0.1, min_tail=800, min_head=500)
    by = splits_by_label(tracks)
    # Several tracks: whole tracks, at least one on each side, the hash rule moved at most one.
    assert "validation" in by["many"] and "train" in by["many"] and "tail" not in by["many"]
    moved = [t for t in tracks if t["label"] == "many" and t["split"] != split_of(t["relpath"], 0.1)]
    assert len(moved) <= 1
    assert by["pair"] == ["train", "validation"]
    # One track: its last max(ceil(0.1 * n), min_tail) samples are held out.
    solo = next(t for t in tracks if t["label"] == "solo")
    assert solo["split"] == "tail" and solo["validation_start"] == 10_000 - 1_000
    assert split_ranges(solo["split"], solo["samples"], solo["validation_start"]) == [("train", 0, 9_000), ("validation", 9_000, 10_000)]
    # Too short for a head of min_head after a tail of min_tail: it trains, the label has no validation.
    assert by["short"] == ["train"]
    longer = entries([("solo/only.wav", 10_000)])
    assign_splits(longer, 0.02, min_tail=800, min_head=500)
    assert longer[0]["validation_start"] == 10_000 - 800  # min_tail wins over 2%
    # Deterministic: the order tracks come in does not matter.
    shuffled = entries(spec)
    random.Random(1).shuffle(shuffled)
    assign_splits(shuffled, 0.1, min_tail=800, min_head=500)
    assert {t["relpath"]: t["split"] for t in shuffled} == {t["relpath"]: t["split"] for t in tracks}
    # No validation wanted: everything trains.
    none = entries(spec)
    assign_splits(none, 0.0, min_tail=800, min_head=500)
    assert {t["split"] for t in none} == {"train"}


def test_tracks_keep_their_split_when_new_tracks_and_labels_arrive():
    first = entries([("solo/a.wav", 10_000), ("pair/x.wav", 10_000), ("pair/y.wav", 10_000)])
    assign_splits(first, 0.1, min_tail=800, min_head=500)
    before = {t["relpath"]: (t["split"], t.get("validation_start")) for t in first}
    # A label whose tracks all trained in an earlier run (e.g. a manifest from before this rule).
    legacy = [{**t, "split": "train"} for t in entries([("legacy/p.wav", 10_000), ("legacy/q.wav", 10_000)])]
    later = [dict(t) for t in first] + legacy + entries(
        [("solo/b.wav", 10_000), ("pair/z.wav", 10_000), ("legacy/r.wav", 10_000), ("fresh/c.wav", 10_000)])
    assign_splits(later, 0.1, min_tail=800, min_head=500)
    after = {t["relpath"]: (t["split"], t.get("validation_start")) for t in later}
    assert all(after[r] == v for r, v in before.items())  # old tracks never move
    assert after["legacy/p.wav"][0] == after["legacy/q.wav"][0] == "train"
    assert after["legacy/r.wav"][0] == "validation"  # the label's validation comes from its new track
    assert after["fresh/c.wav"] == ("tail", 9_000)  # a new label of one track
    assert after["solo/a.wav"][0] == "tail"  # solo gained a track; its tail stays held out


def test_at_least_one_validation_track_when_possible(tmp_path):
    src = tmp_path / "src"
    write(src / "x" / "one.wav", tone(1.0, 16000), 16000)
    write(src / "x" / "two.wav", tone(1.0, 16000, 300), 16000)
    cfg = CFG.with_overrides({"data.validation_fraction": 0.001})
    assert all(split_of(r, 0.001) == "train" for r in ("x/one.wav", "x/two.wav"))
    m = preprocess(str(src), str(tmp_path / "out"), cfg, processes=1, progress=False).to_dict()
    assert sorted(f["split"] for f in m["files"]) == ["train", "validation"]
    alone = preprocess(str(src / "x"), str(tmp_path / "out1"),
                       CFG.with_overrides({"data.validation_fraction": 0.0}), processes=1, progress=False).to_dict()
    assert [f["split"] for f in alone["files"]] == ["train", "train"]


def test_partition_is_deterministic_and_complete():
    files = [f"f{i:03d}.wav" for i in range(10)]
    parts = partition(list(reversed(files)), 3)
    assert parts == partition(files, 3)
    assert sorted(sum(parts, [])) == files and len(parts) == 3
    assert partition(files[:2], 5) == [["f000.wav"], ["f001.wav"]]


# -- signal quality and statistics ----------------------------------------------------

def test_resampling_keeps_frequency_and_level(tmp_path):
    src = tmp_path / "src"
    write(src / "sine" / "a.wav", tone(2.0, 44100, freq=1000.0, amp=0.5, channels=2), 44100,
          subtype="PCM_24")
    cfg = CFG.with_overrides({"audio.normalize_peak_db": -6.0})
    m = preprocess(str(src), str(tmp_path / "out"), cfg, processes=1, progress=False).to_dict()
    (f,) = m["files"]
    x = mu_law_decode(load_codes(str(tmp_path / "out"), f)).astype(np.float64)
    assert x.size == pytest.approx(32000, abs=16)
    spectrum = np.abs(np.fft.rfft(x * np.hanning(x.size)))
    freqs = np.fft.rfftfreq(x.size, 1 / 16000)
    assert freqs[np.argmax(spectrum)] == pytest.approx(1000.0, abs=1.0)
    near = np.abs(freqs - 1000.0) < 20
    purity_db = 10 * np.log10((spectrum[~near] ** 2).sum() / (spectrum[near] ** 2).sum())
    assert purity_db < -30  # mu-law quantisation noise, no aliasing or images
    # Level: peak at the configured -6 dBFS, a sine's RMS 3 dB below its peak.
    rms_db = 20 * np.log10(np.sqrt(np.mean(x[1000:-1000] ** 2)))
    assert rms_db == pytest.approx(-6.0 - 3.01, abs=0.3)


def _whole_file_codes(path: str, cfg) -> np.ndarray:
    """The former whole-file path: decode all, then mono, resample, trim, normalise, mu-law."""
    x, sr = sf.read(path, dtype="float32", always_2d=True)
    a = cfg.audio
    mono = resample(to_mono(x), sr, a.sample_rate)
    return mu_law_encode(peak_normalize(trim_silence(mono, a.sample_rate, a.silence_threshold_db),
                                        a.normalize_peak_db), a.quantization_channels)


def test_block_by_block_codes_equal_the_whole_file_path(tmp_path):
    src, dst = tmp_path / "src", str(tmp_path / "out")
    rng = np.random.default_rng(5)

    def music(seconds, sr, channels):  # quiet lead-in and tail around a noisy chord
        x = tone(seconds, sr, 330.0, 0.4, channels) + 0.05 * rng.normal(size=(int(seconds * sr), channels)).squeeze()
        edge = int(0.3 * sr)
        x[:edge] *= 1e-4
        x[-edge:] *= 1e-4
        return x

    # Stereo 44.1 kHz for 15 s is 661,500 frames: more than one decoded block (524,288 frames).
    write(src / "g" / "stereo.wav", music(15.0, 44100, 2), 44100)
    write(src / "g" / "eight.flac", music(2.0, 48000, 8), 48000, subtype="PCM_24")
    write(src / "g" / "mono16k.wav", music(3.0, 16000, 1), 16000)
    write(src / "g" / "up.ogg", music(2.0, 8000, 1), 8000)
    m = preprocess(str(src), dst, CFG, processes=1, progress=False).to_dict()
    assert m["summary"]["processed"] == 4, m["skipped"]
    for f in m["files"]:
        np.testing.assert_array_equal(load_codes(dst, f), _whole_file_codes(f["path"], CFG),
                                      err_msg=f["relpath"])


def test_a_file_longer_than_max_track_seconds_is_skipped_before_decoding(tmp_path):
    src = tmp_path / "src"
    long = write(src / "g" / "long.flac", tone(3.0, 48000, channels=4), 48000)
    write(src / "g" / "ok.wav", tone(1.0, 16000), 16000)
    cfg = CFG.with_overrides({"data.max_track_seconds": 2.5})
    m = preprocess(str(src), str(tmp_path / "out"), cfg, processes=1, progress=False).to_dict()
    assert [f["relpath"] for f in m["files"]] == ["g/ok.wav"]
    assert m["skipped"] == [{"path": long, "reason": "too long: 3.0 s (144000 frames of 4 channels at "
                                                   "48000 Hz) exceeds data.max_track_seconds=2.5"}]


def test_a_flac_whose_header_gives_no_length_is_skipped_with_that_reason(tmp_path):
    src = tmp_path / "src"
    path = write(src / "g" / "nolength.flac", tone(1.0, 48000), 48000)
    write(src / "g" / "ok.wav", tone(1.0, 16000), 16000)
    data = bytearray(open(path, "rb").read())
    # STREAMINFO follows "fLaC" and a 4-byte block header; its 36-bit total sample count is the
    # low 4 bits of its byte 13 and bytes 14-17 (https://xiph.org/flac/format.html#metadata_block_streaminfo).
    data[21] &= 0xF0
    data[22:26] = bytes(4)
    open(path, "wb").write(bytes(data))
    m = preprocess(str(src), str(tmp_path / "out"), CFG, processes=1, progress=False).to_dict()
    assert [f["relpath"] for f in m["files"]] == ["g/ok.wav"]
    assert m["skipped"] == [{"path": path, "reason": "not decodable audio: its header gives no length "
                                                   "(an unfinished or streamed recording?); re-encode it"}]


@pytest.mark.subprocess
def test_peak_memory_follows_the_output_not_the_file(tmp_path):
    # A real `wavenet preprocess` process per file: 90 s of 8 channels at 192 kHz (1.1 GB of
    # float32 when decoded whole) against 3 s of the same, each process's own peak (VmHWM).
    peaks = {}
    for name, seconds in (("short", 3.0), ("long", 90.0)):
        src = tmp_path / name / "src"
        write_multichannel_flac(str(src / "g" / f"{name}.flac"), seconds)
        peaks[name] = preprocess_peak_rss_mb(str(src), str(tmp_path / name / "out"), CFG)
        assert read_manifest(str(tmp_path / name / "out")).summary.processed == 1
    # Measured 2026-12-07 (AMD EPYC, 2 cores, a training run beside it): 52 and 58 MB (1.11x).
    # What the long file adds is its output, 1.44M samples at 16 kHz: 5.5 MB of float32, held
    # twice while the decoded blocks are joined. Decoding the file whole read 701 against 64 MB
    # (10.9x); mu-law encoding 2**20 samples at a time (36 MB of float64 temporaries, the block
    # size until 2026-12-07) 89 against 52 MB (1.71x). Both fail here; the output's growth fits.
    assert peaks["long"] < 1.5 * peaks["short"], peaks


@pytest.mark.subprocess
def test_the_preprocess_peak_is_the_process_own_not_the_callers(tmp_path):
    # The regression test for ru_maxrss: it kept the caller's high-water mark across exec
    # (a 3 s file read 2,006 MB from a 2 GB pytest), so the test above could not fail late
    # in the suite. Here the caller holds 1 GiB more while the same file is measured again.
    src = tmp_path / "src"
    write_multichannel_flac(str(src / "g" / "short.flac"), 3.0)
    alone = preprocess_peak_rss_mb(str(src), str(tmp_path / "out1"), CFG)
    ballast = np.ones(1 << 27)  # 1 GiB of float64, every page written
    held = preprocess_peak_rss_mb(str(src), str(tmp_path / "out2"), CFG)
    assert ballast[-1] == 1.0
    assert held < 256 and held == pytest.approx(alone, rel=0.1), (alone, held)


def test_trim_and_normalize():
    sr = 1000
    x = np.concatenate([np.zeros(500), 0.1 * np.ones(300), 1e-4 * np.ones(200)])
    y = trim_silence(x, sr, -50.0)
    assert y.size == 300 and np.all(y == 0.1)
    assert trim_silence(np.zeros(100), sr, -50.0).size == 0
    assert np.abs(peak_normalize(np.array([0.1, -0.2]), -6.0)).max() == pytest.approx(10 ** (-6 / 20), rel=1e-6)


def test_manifest_records_codes_histogram_and_checksums(tmp_path):
    src, dst = str(tmp_path / "src"), str(tmp_path / "out")
    make_demo_corpus(src, seconds_per_genre=4.0)
    m = preprocess(src, dst, CFG, processes=2, progress=False).to_dict()
    assert m == json.load(open(os.path.join(dst, "manifest.json")))
    assert m["audio"] == CFG.to_dict()["audio"] and m["labels"] == ["drums", "organ", "strings"]
    for split in ("train", "validation"):
        stats = m["code_stats"][split]
        assert len(stats["histogram"]) == 256
        assert stats["samples"] == sum(stats["histogram"]) == m["summary"][f"{split}_samples"] > 0
        codes = np.concatenate([load_codes(dst, f)[a:b] for f in m["files"]
                                for s, a, b in split_ranges(f["split"], f["samples"], f.get("validation_start"))
                                if s == split])
        assert stats["histogram"] == np.bincount(codes, minlength=256).tolist()
        assert 0 < stats["entropy_bits"] <= 8
    assert len(m["shards"]) == 2 * CFG.data.num_shards
    for s in m["shards"]:
        data = open(os.path.join(dst, s["path"]), "rb").read()
        assert hashlib.sha256(data).hexdigest() == s["sha256"]
    for f in m["files"]:
        # Examples: at most chunk_seconds, never shorter than one crop.
        assert [(p["split"], p["start"], p["end"]) for p in f["parts"]] == split_ranges(
            f["split"], f["samples"], f["validation_start"])
        assert f["chunks"] == sum(p["chunks"] for p in f["parts"])
        for p in f["parts"]:
            assert (p["end"] - p["start"]) / p["chunks"] <= CFG.data.chunk_seconds * CFG.audio.sample_rate
            assert (p["end"] - p["start"]) // p["chunks"] >= CFG.crop_length
        # One track per genre: the tail is max(ceil(fraction * n), receptive_field + evaluate.window).
        tail = max(math.ceil(CFG.data.validation_fraction * f["samples"]),
                   CFG.model.receptive_field + CFG.evaluate.window)
        assert f["split"] == "tail" and f["validation_start"] == f["samples"] - tail
        assert f["duration_in_s"] == pytest.approx(4.0, abs=1e-3)
        assert 0 < f["duration_out_s"] < f["duration_in_s"]  # silence trimmed at both ends
        # The demo's tracks have scores: the id covers the audio and its MIDI file.
        with open(f["path"], "rb") as fh, open(f["path"].rsplit(".", 1)[0] + ".mid", "rb") as mid:
            assert f["score_sha256"] == hashlib.sha256(mid.read()).hexdigest()
            assert track_id(hashlib.sha256(fh.read()).hexdigest(), f["score_sha256"]) == f["sha256"]
    with pytest.raises(DataError, match="not a folder"):
        list_audio(os.path.join(src, "drums", "drums-00.wav"))


def test_a_new_audio_config_reprocesses_everything(tmp_path):
    src, dst = str(tmp_path / "src"), str(tmp_path / "out")
    make_demo_corpus(src, seconds_per_genre=2.0)
    preprocess(src, dst, CFG, processes=1, progress=False)
    cfg = CFG.with_overrides({"audio.sample_rate": 8000})
    m = preprocess(src, dst, cfg, processes=1, progress=False).to_dict()
    assert (m["summary"]["processed"], m["summary"]["tracks"]) == (3, 3)
    assert m["audio"]["sample_rate"] == 8000
    assert all(f["samples"] == pytest.approx(f["duration_out_s"] * 8000, abs=1) for f in m["files"])
    # The 8 kHz codes and scores, and the 16 kHz ones the earlier (kept) manifest version still names.
    assert len(os.listdir(os.path.join(dst, "tracks"))) == 12 and check_dataset(dst) == []
    assert all(f["score"] == f["codes"][:-len(".npy")] + ".score.npy" for f in m["files"])


UNREADABLE = textwrap.dedent("""
    import json, os, sys
    import soundfile, soxr  # imported while the interpreter's files are readable
    from wavenet.config import preset
    from wavenet.data.preprocess import process_partition
    if os.getuid() == 0:
        os.setgid(65534)
        os.setuid(65534)  # root reads anything: drop to nobody for an honest permission error
    part = process_partition(sys.argv[2:], sys.argv[1], preset("tiny"))
    print(json.dumps(json.load(open(part))["records"]))
""")


def test_an_unreadable_file_is_skipped_with_permission_denied(tmp_path):
    import tempfile

    root = tempfile.mkdtemp(prefix="wavenet-perm-")  # outside pytest's 0700 tmp dirs
    try:
        os.chmod(root, 0o777)
        ok = write(os.path.join(root, "g", "ok.wav"), tone(1.0, 16000), 16000)
        locked = write(os.path.join(root, "g", "locked.wav"), tone(1.0, 16000), 16000)
        os.chmod(os.path.dirname(ok), 0o755)
        os.chmod(ok, 0o644)
        os.chmod(locked, 0o000)
        work = os.path.join(root, "work")
        os.mkdir(work)
        os.chmod(work, 0o777)
        proc = subprocess.run([sys.executable, "-c", UNREADABLE, work, ok, locked], capture_output=True,
                              text=True, timeout=60, cwd=root)
        assert proc.returncode == 0, proc.stderr
        records = {os.path.basename(r["path"]): r for r in json.loads(proc.stdout)}
        assert records["ok.wav"]["status"] == "processed"
        assert records["locked.wav"] == {"path": locked, "relpath": locked, "status": "skipped",
                                         "reason": "cannot read: Permission denied"}
    finally:
        shutil.rmtree(root, ignore_errors=True)


DECODER_CRASH = textwrap.dedent("""
    import json, os, signal, sys
    import wavenet.data.preprocess as P

    real_decode = P._decode

    def decode(fd, config):  # stands in for a native decoder that segfaults on one file
        data = os.pread(fd, os.fstat(fd).st_size, 0)
        if data.startswith(b"RIFF") and b"CRASHME" in data:
            os.kill(os.getpid(), signal.SIGSEGV)
        return real_decode(fd, config)

    P._decode = decode  # forked workers inherit it
    from wavenet.config import preset
    m = P.preprocess(sys.argv[1], sys.argv[2], preset("tiny"), processes=2, progress=False).to_dict()
    print(json.dumps(m["summary"]), json.dumps(m["skipped"]), sep="\\n")
""")


def test_a_file_that_kills_its_worker_is_skipped_and_the_rest_kept(tmp_path):
    src = tmp_path / "src"
    for i in range(6):
        write(src / "g" / f"t{i}.wav", tone(0.5, 16000, 200 + 50 * i), 16000)
    with open(src / "g" / "t3.wav", "ab") as f:
        f.write(b"CRASHME")  # trailing bytes after the data chunk: still a valid WAV
    proc = subprocess.run([sys.executable, "-c", DECODER_CRASH, str(src), str(tmp_path / "out")],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    summary, skipped = (json.loads(line) for line in proc.stdout.strip().splitlines())
    assert (summary["processed"], summary["skipped"]) == (5, 1)
    assert skipped == [{"path": str(src / "g" / "t3.wav"), "reason": "decoder crashed (its worker process died)"}]
    assert "worker process died on" in proc.stderr
    assert check_dataset(str(tmp_path / "out")) == []


def test_preprocessing_never_imports_tensorflow(tmp_path):
    # Workers stay light: shards are written by wavenet.data.shards' TF-free writer.
    src = str(tmp_path / "src")
    make_demo_corpus(src, seconds_per_genre=1.0)
    code = ("import sys; from wavenet.config import preset; from wavenet.data.preprocess import preprocess; "
            f"preprocess({src!r}, {str(tmp_path / 'out')!r}, preset('tiny'), processes=1, progress=False); "
            "print('tensorflow' in sys.modules)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "False"
