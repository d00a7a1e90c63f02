"""The shard format, written without TensorFlow, and the one writer of a dataset.

A shard is a TFRecord file of examples, one per track chunk:

    codes  bytes   uint8 mu-law codes of the chunk
    label  int64   index of the track's label in the manifest's vocabulary
    track  bytes   the track's id (content hash)

Shards live in ``DATA/train/*.tfrecord`` and ``DATA/validation/*.tfrecord``
next to ``DATA/manifest.json`` and the tracks' codes in ``DATA/tracks/``.
:func:`write_dataset` writes all of it, for preprocessing, test fixtures and
benchmarks alike; :mod:`wavenet.data` reads it with tf.data.
"""

from __future__ import annotations

import hashlib
import heapq
import io
import math
import os
import shutil
import struct
import tempfile
import time
from collections.abc import Callable, Collection, Sequence
from dataclasses import replace
from typing import BinaryIO

import google_crc32c
import numpy as np

from wavenet import storage
from wavenet.config import ExperimentConfig
from wavenet.errors import DataError
from wavenet.manifest import (
    MANIFEST_VERSION,
    SPLITS,
    TRACKS,
    CodeStats,
    Manifest,
    Part,
    Shard,
    Skipped,
    Summary,
    Track,
    track_codes_path,
    write_manifest,
)

__all__ = [
    "serialize_example",
    "TFRecordWriter",
    "ShardSet",
    "chunk_bounds",
    "write_dataset",
    "dataset_from_codes",
    "collect_garbage",
]


# -- writing without TensorFlow ------------------------------------------------
# Preprocessing workers write shards without importing TensorFlow (its import
# costs seconds and hundreds of MB per process). Both the tf.train.Example
# protobuf and the TFRecord framing are small enough to write by hand; tests
# check that TensorFlow reads the result back.

def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def _field(number: int, payload: bytes) -> bytes:
    # Wire type 2 (length-delimited): tag, length, bytes.
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


def _bytes_feature(value: bytes) -> bytes:
    # Feature.bytes_list (field 1) -> BytesList.value (field 1).
    return _field(1, _field(1, value))


def _int64_feature(value: int) -> bytes:
    # Feature.int64_list (field 3) -> Int64List.value (field 1, packed varints);
    # negative int64 values are written as their 64-bit two's complement.
    return _field(3, _field(1, _varint(value & 0xFFFFFFFFFFFFFFFF)))


def serialize_example(codes: np.ndarray, label: int, track: str) -> bytes:
    """One chunk of a track as a serialized ``tf.train.Example`` (no TensorFlow needed).

    Args:
        codes: uint8 mu-law codes, shape (T,).
        label: index of the track's label in the manifest's vocabulary.
        track: the track's id (content hash).

    Returns:
        The protobuf wire bytes of an Example with features ``codes`` (bytes),
        ``label`` (int64) and ``track`` (bytes).
    """
    features = {
        "codes": _bytes_feature(np.ascontiguousarray(codes, dtype=np.uint8).tobytes()),
        "label": _int64_feature(int(label)),
        "track": _bytes_feature(track.encode("utf-8")),
    }
    # Example.features (field 1) -> Features.feature (field 1, a map: entries
    # with key = field 1, value = field 2).
    entries = b"".join(_field(1, _field(1, k.encode()) + _field(2, v)) for k, v in features.items())
    return _field(1, entries)


def _masked_crc32c(data: bytes) -> int:
    crc = google_crc32c.value(data)
    # TFRecord's masking (tensorflow.org/tutorials/load_data/tfrecord, "TFRecord
    # format details"): rotate right by 15 bits and add a constant.
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


class TFRecordWriter:
    """Appends TFRecord records to an open binary file, hashing what it writes.

    Each record is ``uint64 length, uint32 masked_crc32c(length), data,
    uint32 masked_crc32c(data)`` (little-endian), the framing that
    ``tf.data.TFRecordDataset`` reads.
    """

    def __init__(self, f: BinaryIO):
        self._f = f
        self._sha = hashlib.sha256()
        self.records = 0

    def write(self, record: bytes) -> None:
        header = struct.pack("<Q", len(record))
        chunk = b"".join((header, struct.pack("<I", _masked_crc32c(header)), record,
                          struct.pack("<I", _masked_crc32c(record))))
        self._f.write(chunk)
        self._sha.update(chunk)
        self.records += 1

    @property
    def sha256(self) -> str:
        """Hex sha256 of everything written so far."""
        return self._sha.hexdigest()


class ShardSet:
    """``n`` shards of one split, written to temporary files then renamed to their final names."""

    def __init__(self, dst: str, split: str, n: int, tmp_dir: str):
        self.dst, self.split, self.n = dst, split, n
        self.files, self.writers, self.tmp_paths = [], [], []
        local_dir = tmp_dir if storage.is_gcs(dst) else os.path.join(dst, split)
        os.makedirs(local_dir, exist_ok=True)
        for i in range(n):
            fd, tmp = tempfile.mkstemp(prefix=f".tmp-shard-{i:05d}-", suffix=".tfrecord", dir=local_dir)
            f = os.fdopen(fd, "wb")
            self.files.append(f)
            self.tmp_paths.append(tmp)
            self.writers.append(TFRecordWriter(f))
        self.samples = [0] * n
        # Greedy balance: every chunk goes to the shard with the fewest samples so far.
        self._heap = [(0, i) for i in range(n)]

    def add(self, codes: np.ndarray, label: int, track: str) -> int:
        samples, i = heapq.heappop(self._heap)
        self.writers[i].write(serialize_example(codes, label, track))
        self.samples[i] += int(codes.size)
        heapq.heappush(self._heap, (samples + int(codes.size), i))
        return i

    def final_name(self, i: int) -> str:
        # A prefix of the content hash in the name: a rewritten shard never
        # replaces a file the current manifest names.
        return f"{self.split}/shard-{i:05d}-of-{self.n:05d}-{self.writers[i].sha256[:12]}.tfrecord"

    def finish(self) -> list[Shard]:
        """Close, and move every shard to its final name (an atomic upload or rename)."""
        entries = []
        for i, (f, w, tmp) in enumerate(zip(self.files, self.writers, self.tmp_paths)):
            f.flush()
            os.fsync(f.fileno())
            f.close()
            name = self.final_name(i)
            storage.upload_file(tmp, storage.join(self.dst, name))
            entries.append(Shard(path=name, split=self.split, examples=w.records,
                                 samples=self.samples[i], sha256=w.sha256))
        return entries

    def abort(self) -> None:
        for f, tmp in zip(self.files, self.tmp_paths):
            f.close()
            try:
                os.unlink(tmp)
            except FileNotFoundError:
                pass


def chunk_bounds(n: int, chunk: int, minimum: int) -> list[tuple[int, int]]:
    """Split ``n`` samples into ``ceil(n / chunk)`` near-equal consecutive pieces.

    Fewer pieces when that would make them shorter than ``minimum`` (one crop).
    """
    k = max(1, min(math.ceil(n / chunk), n // max(1, minimum)))
    base, extra = divmod(n, k)
    bounds, start = [], 0
    for i in range(k):
        size = base + (1 if i < extra else 0)
        bounds.append((start, start + size))
        start += size
    return bounds


def _code_stats(hist: np.ndarray) -> CodeStats:
    total = int(hist.sum())
    p = hist[hist > 0] / max(total, 1)
    mean = float((np.arange(hist.size) * hist).sum() / total) if total else None
    return CodeStats(histogram=tuple(int(v) for v in hist), samples=total,
                     entropy_bits=float(-(p * np.log2(p)).sum()) if total else None, mean_code=mean)


def collect_garbage(dst: str, manifest: Manifest) -> None:
    """Delete shards, tracks and temporary files under ``dst`` that the manifest does not name.

    Only our own names are touched (``shard-*.tfrecord``, ``.tmp-*``,
    ``tracks/*.npy``), so other files a user keeps in DST survive.
    """
    def norm(p: str) -> str:
        return p if storage.is_gcs(p) else os.path.normpath(p)

    keep = {norm(storage.join(dst, s.path)) for s in manifest.shards}
    keep |= {norm(storage.join(dst, t.codes)) for t in manifest.files}
    for sub in (*SPLITS, TRACKS):
        for path in list(storage.list_files(storage.join(dst, sub))):
            name = path.rsplit("/", 1)[-1]
            ours = (name.startswith(".tmp-") or (name.startswith("shard-") and name.endswith(".tfrecord"))
                    or (sub == TRACKS and name.endswith(".npy")))
            if ours and norm(path) not in keep:
                storage.remove(path)


def _save_codes(dst: str, track: Track, codes: np.ndarray) -> None:
    buf = io.BytesIO()
    np.save(buf, codes, allow_pickle=False)
    storage.write_bytes_atomic(storage.join(dst, track.codes), buf.getvalue())


def _write_shards(dst: str, config: ExperimentConfig, tracks: list[Track],
                  codes: Callable[[Track], np.ndarray], new: Collection[str],
                  label_ids: dict[str, int]) -> tuple[list[Track], list[Shard], dict[str, CodeStats]]:
    """Every track's chunks into ``data.num_shards`` balanced shards per split (one pass)."""
    chunk = max(config.crop_length, int(round(config.data.chunk_seconds * config.audio.sample_rate)))
    hists = {s: np.zeros(config.audio.quantization_channels, dtype=np.int64) for s in SPLITS}
    tmp_dir = tempfile.mkdtemp(prefix="wavenet-shards-")
    sets = {s: ShardSet(dst, s, config.data.num_shards, tmp_dir) for s in SPLITS}
    placed: list[tuple[Track, tuple[Part, ...], set[tuple[str, int]]]] = []
    try:
        for t in tracks:
            c = codes(t)
            if c.size != t.samples:
                raise DataError(f"{storage.join(dst, t.codes)} holds {c.size} codes, the manifest "
                                f"says {t.samples}: remove {dst} and preprocess again")
            if t.sha256 in new:  # before any shard is in place: the old manifest stays valid
                _save_codes(dst, t, c)
            # A whole track is one part; a held-out tail's track is two (head: train, tail: validation).
            parts, where = [], set()
            for split, a, b in t.ranges():
                hists[split] += np.bincount(c[a:b], minlength=hists[split].size)
                bounds = chunk_bounds(b - a, chunk, config.crop_length)
                parts.append(Part(split=split, start=a, end=b, chunks=len(bounds)))
                where |= {(split, sets[split].add(c[a + x:a + y], label_ids[t.label], t.sha256))
                          for x, y in bounds}
            placed.append((t, tuple(parts), where))
        shards = [sh for s in SPLITS for sh in sets[s].finish()]
    except BaseException:
        for ss in sets.values():
            ss.abort()
        raise
    finally:
        shutil.rmtree(tmp_dir, ignore_errors=True)
    done = [replace(t, label_id=label_ids[t.label], chunks=sum(p.chunks for p in parts), parts=parts,
                    shards=tuple(sorted(sets[s].final_name(i) for s, i in where)))
            for t, parts, where in placed]
    return done, shards, {s: _code_stats(hists[s]) for s in SPLITS}


def _summary(tracks: list[Track], labels: int, skipped: int, processed: int, unchanged: int,
             sample_rate: int, started: float) -> Summary:
    in_split = {s: [(t, p) for t in tracks for p in t.parts if p.split == s] for s in SPLITS}
    samples = {s: int(sum(p.end - p.start for _, p in in_split[s])) for s in SPLITS}
    # Tracks with audio in the split: a held-out tail's track counts in both.
    count = {s: len({t.sha256 for t, _ in in_split[s]}) for s in SPLITS}
    uncovered = sorted({t.label for t in tracks} - {t.label for t, _ in in_split["validation"]})
    return Summary(processed=processed, unchanged=unchanged, skipped=skipped, tracks=len(tracks),
                   labels=labels, train_tracks=count["train"], validation_tracks=count["validation"],
                   train_samples=samples["train"], validation_samples=samples["validation"],
                   train_seconds=round(samples["train"] / sample_rate, 3),
                   validation_seconds=round(samples["validation"] / sample_rate, 3),
                   merge_seconds=round(time.time() - started, 3),
                   tail_tracks=sum(t.split == "tail" for t in tracks),
                   labels_without_validation=tuple(uncovered))


def write_dataset(dst: str, config: ExperimentConfig, tracks: Sequence[Track],
                  codes: Callable[[Track], np.ndarray], *, new: Collection[str] = (),
                  labels: Sequence[str] | None = None, src: str | None = None,
                  skipped: Sequence[Skipped] = (), processed: int | None = None,
                  unchanged: int = 0, started: float | None = None) -> Manifest:
    """Write a dataset: codes of new tracks, balanced shards per split, then the manifest.

    The one writer of shards and manifests: preprocessing, test fixtures and the
    benchmarks all write their data through it. Each track is cut into
    ``ceil(samples / chunk)`` near-equal examples of at most ``data.chunk_seconds``
    (never shorter than one crop), each going to the shard of its split with the
    fewest samples so far. The manifest is written last; files of earlier runs
    that it does not name are deleted after it.

    Args:
        dst: the data folder (local or gs://).
        config: audio settings (recorded), ``data`` (shards per split, chunk length), crop length.
        tracks: the tracks, ``split`` and ``label`` set (``label_id``, ``chunks`` and
            ``shards`` are filled in here).
        codes: a track's uint8 codes (from its source or from ``dst``).
        new: sha256s of tracks whose codes are written to ``dst/<track.codes>`` here.
        labels: the label vocabulary, in id order (default: the tracks' labels, sorted).
        src: where the audio came from (recorded).
        skipped: files left out, with reasons (recorded).
        processed: tracks decoded in this run (default: ``len(new)``).
        unchanged: tracks already in ``dst``.
        started: when the run started (``time.time()``), for ``merge_seconds``.

    Returns:
        The manifest written to ``dst/manifest.json``.
    """
    started = time.time() if started is None else started
    vocabulary = list(labels) if labels is not None else sorted({t.label for t in tracks})
    label_ids = {name: i for i, name in enumerate(vocabulary)}
    ordered = sorted(tracks, key=lambda t: t.sha256)
    done, shards, stats = _write_shards(dst, config, ordered, codes, frozenset(new), label_ids)
    manifest = Manifest(
        version=MANIFEST_VERSION, created=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        src=src, audio=config.audio, data=config.data, crop_length=config.crop_length,
        labels=tuple(vocabulary), files=tuple(sorted(done, key=lambda t: t.relpath)),
        skipped=tuple(skipped), shards=tuple(shards), code_stats=stats,
        summary=_summary(done, len(vocabulary), len(skipped),
                         len(new) if processed is None else processed, unchanged,
                         config.audio.sample_rate, started))
    write_manifest(dst, manifest)
    collect_garbage(dst, manifest)
    return manifest


def dataset_from_codes(dst: str, config: ExperimentConfig,
                       examples: Sequence[tuple[np.ndarray, str, str]], *,
                       labels: Sequence[str] | None = None, src: str = "synthetic") -> Manifest:
    """A dataset from code arrays, one track each: test fixtures and benchmarks write theirs with it.

    Args:
        dst: the data folder.
        config: as for :func:`write_dataset` (``data.num_shards`` shards per split).
        examples: ``(codes (T,) uint8, label, split)`` per track.
        labels: the label vocabulary in id order (default: sorted).
        src: recorded as the tracks' source.

    Returns:
        The manifest written (through :func:`write_dataset`).
    """
    sr = config.audio.sample_rate
    tracks, arrays = [], {}
    for i, (codes, label, split) in enumerate(examples):
        codes = np.ascontiguousarray(codes, dtype=np.uint8)
        # Unique per track even when two tracks hold the same codes.
        sha = hashlib.sha256(codes.tobytes() + str(i).encode()).hexdigest()
        relpath, seconds = f"{label}/{split}-{i:04d}", round(codes.size / sr, 6)
        tracks.append(Track(path=f"{src}/{relpath}", relpath=relpath, sha256=sha, label=label,
                            label_id=-1, split=split, sample_rate_in=sr, channels_in=1, format="codes",
                            subtype="uint8", duration_in_s=seconds, duration_out_s=seconds,
                            samples=int(codes.size), codes=track_codes_path(sha, config), chunks=0,
                            shards=()))
        arrays[sha] = codes
    return write_dataset(dst, config, tracks, lambda t: arrays[t.sha256], new=arrays.keys(),
                         labels=labels, src=src)
