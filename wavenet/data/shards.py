"""The shard format, written without TensorFlow, and the one writer of a dataset.

A shard is a TFRecord file of examples, one per track chunk:

    codes  bytes   uint8 mu-law codes of the chunk
    label  int64   index of the track's label in the manifest's vocabulary
    track  bytes   the track's id (content hash)
    notes  int64s  only for a track with a score: its notes that sound in the chunk
                   ``[a, b)`` (``start < b and end > a``), flattened ``(start - a, end - a,
                   token)`` rows in the Score's order (by start); ``start`` is negative for a
                   note that began before the chunk, ``end`` may lie past its end. Read it
                   with ``tf.io.VarLenFeature(tf.int64)`` and reshape to ``(-1, 3)``.

Examples of tracks without a score have no ``notes`` feature at all, so their
shards are byte for byte what they were before scores existed.

Shards live in ``DATA/train/*.tfrecord`` and ``DATA/validation/*.tfrecord``
next to ``DATA/manifest.json`` and the tracks' codes in ``DATA/tracks/``.
:func:`write_dataset` writes all of it, for preprocessing, test fixtures and
benchmarks alike; :mod:`wavenet.data.dataset` reads it with tf.data.
"""

from __future__ import annotations

import errno
import hashlib
import heapq
import io
import logging
import math
import os
import shutil
import struct
import tempfile
import time
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field, replace
from typing import BinaryIO

import google_crc32c
import numpy as np

from wavenet.config import ExperimentConfig
from wavenet.data.manifest import (
    KEEP_VERSIONS,
    MANIFEST_VERSION,
    MANIFESTS,
    SPLITS,
    TRACKS,
    CodeStats,
    Manifest,
    Part,
    Shard,
    Skipped,
    Summary,
    Track,
    commit_manifest,
    read_live,
    read_manifest,
    track_codes_path,
    version_files,
)
from wavenet.edges import storage
from wavenet.errors import Busy, DataError, StorageError

log = logging.getLogger("wavenet.data.shards")

__all__ = [
    "Writes",
    "update_dataset",
    "build_dataset",
    "Provenance",
    "serialize_example",
    "TFRecordWriter",
    "ShardSet",
    "chunk_bounds",
    "write_dataset",
    "dataset_from_codes",
    "collect_garbage",
    "read_score_rows",
    "save_npy",
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


def _int64_list_feature(values: np.ndarray) -> bytes:
    # As _int64_feature, with any number of values in one packed field (none: an empty
    # Int64List, which TensorFlow parses as a list of length 0).
    packed = b"".join(_varint(int(v) & 0xFFFFFFFFFFFFFFFF) for v in np.asarray(values).ravel())
    return _field(3, _field(1, packed) if packed else b"")


def serialize_example(codes: np.ndarray, label: int, track: str, notes: np.ndarray | None = None) -> bytes:
    """One chunk of a track as a serialized ``tf.train.Example`` (no TensorFlow needed).

    Args:
        codes: uint8 mu-law codes, shape (T,).
        label: index of the track's label in the manifest's vocabulary.
        track: the track's id (content hash).
        notes: for a track with a score, (n, 3) int64 ``(start, end, token)`` rows relative
            to the chunk's first sample (see the module's docstring); None: no ``notes`` feature.

    Returns:
        The protobuf wire bytes of an Example with features ``codes`` (bytes),
        ``label`` (int64), ``track`` (bytes) and, given ``notes``, ``notes`` (int64 list).
    """
    features = {
        "codes": _bytes_feature(np.ascontiguousarray(codes, dtype=np.uint8).tobytes()),
        "label": _int64_feature(int(label)),
        "track": _bytes_feature(track.encode("utf-8")),
    }
    if notes is not None:
        features["notes"] = _int64_list_feature(notes)
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

    def add(self, codes: np.ndarray, label: int, track: str, notes: np.ndarray | None = None) -> int:
        samples, i = heapq.heappop(self._heap)
        self.writers[i].write(serialize_example(codes, label, track, notes))
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


def _named(manifest: Manifest, dst: str) -> set[str]:
    """Every file a manifest names, as paths under ``dst``."""
    return {_norm(storage.join(dst, p)) for p in
            [*(s.path for s in manifest.shards), *(t.codes for t in manifest.files),
             *(t.score for t in manifest.files if t.score is not None)]}


def _norm(p: str) -> str:
    return p if storage.is_gcs(p) else os.path.normpath(p)


def _ours(sub: str, name: str) -> bool:
    # Only our own names are touched, so other files a user keeps in DST survive.
    return (name.startswith(".tmp-") or (name.startswith("shard-") and name.endswith(".tfrecord"))
            or (sub == TRACKS and name.endswith(".npy")))


def _retained(dst: str) -> tuple[set[str], list[str], list[str]] | None:
    """(files named by a kept version or the live manifest, kept versions, dropped versions).

    None when a kept version cannot be read: then nothing can be known unnamed.
    """
    versions = version_files(dst)
    kept, dropped = versions[-KEEP_VERSIONS:], versions[:-KEEP_VERSIONS]
    try:
        live, _ = read_live(dst)
        named = _named(live, dst) if live is not None else set()
        for v in kept:
            named |= _named(read_manifest(v), dst)
    except DataError as e:
        log.warning("garbage collection of %s skipped: %s", dst, e)
        return None
    return named, kept, dropped


def collect_garbage(dst: str) -> None:
    """Delete files that no kept manifest version (nor the live manifest) names.

    Versions beyond the newest :data:`~wavenet.data.manifest.KEEP_VERSIONS` are
    dropped first. A local folder is collected under its lock
    (:func:`update_dataset`), so every unnamed file of ours (``shard-*.tfrecord``,
    ``.tmp-*``, ``tracks/*.npy``) is a leftover and goes. A bucket has no such
    lock: another run may be uploading shards that no version names yet, so
    only files that a dropped version named are deleted there.
    """
    found = _retained(dst)
    if found is None:
        return
    named, _, dropped = found
    candidates: set[str] = set()
    for v in dropped:
        if storage.is_gcs(dst):
            try:
                candidates |= _named(read_manifest(v), dst)
            except DataError:
                pass  # an unreadable old version names nothing we can find
        storage.remove(v)
    if not storage.is_gcs(dst):
        for sub in (*SPLITS, TRACKS, MANIFESTS):
            candidates |= {_norm(p) for p in storage.list_files(storage.join(dst, sub))
                           if _ours(sub, p.rsplit("/", 1)[-1])}
    for path in sorted(candidates - named):
        storage.remove(path)


def save_npy(path: str, array: np.ndarray) -> None:
    """``array`` as a .npy file at ``path`` (atomically: the old file or the new, never half)."""
    buf = io.BytesIO()
    np.save(buf, array, allow_pickle=False)
    storage.write_bytes_atomic(path, buf.getvalue())


def read_score_rows(path: str) -> np.ndarray:
    """A track's score file (``Track.score``): (notes, 3) int64 ``(start, end, token)`` rows.

    Raises:
        DataError: the file is unreadable or not such an array (one line naming it).
    """
    try:
        rows = np.load(io.BytesIO(storage.read_bytes(path)), allow_pickle=False)
    except (OSError, ValueError, EOFError) as e:
        raise DataError(f"cannot read {path}: {e}") from None
    if rows.dtype != np.int64 or rows.ndim != 2 or rows.shape[1] != 3:
        raise DataError(f"{path} is not a score (an (N, 3) int64 array of start, end, token). "
                        f"Received: {rows.dtype} {rows.shape}")
    return rows


def _chunk_notes(rows: np.ndarray | None, a: int, b: int) -> np.ndarray | None:
    """The rows sounding in ``[a, b)`` (``start < b and end > a``), relative to ``a``."""
    if rows is None:
        return None
    inside = rows[(rows[:, 0] < b) & (rows[:, 1] > a)]
    return inside - np.array([a, a, 0], dtype=np.int64)


def _write_shards(dst: str, config: ExperimentConfig, tracks: list[Track],
                  codes: Callable[[Track], np.ndarray], new: Collection[str],
                  label_ids: dict[str, int], writes: Writes,
                  notes: Callable[[Track], np.ndarray] | None = None,
                  ) -> tuple[list[Track], list[Shard], dict[str, CodeStats]]:
    """Every track's chunks into ``data.num_shards`` balanced shards per split (one pass)."""
    chunk = max(config.crop_length, int(round(config.data.chunk_seconds * config.audio.sample_rate)))
    hists = {s: np.zeros(config.audio.quantization_channels, dtype=np.int64) for s in SPLITS}
    tmp_dir = tempfile.mkdtemp(prefix="wavenet-shards-")
    sets = {s: ShardSet(dst, s, config.data.num_shards, tmp_dir) for s in SPLITS}
    for ss in sets.values():
        writes.paths.extend(ss.tmp_paths)
    placed: list[tuple[Track, tuple[Part, ...], set[tuple[str, int]]]] = []
    try:
        for t in tracks:
            c = codes(t)
            if c.size != t.samples:
                raise DataError(f"{storage.join(dst, t.codes)} holds {c.size} codes, the manifest "
                                f"says {t.samples}: remove {dst} and preprocess again")
            rows = _track_notes(dst, t, notes)
            if t.sha256 in new:  # before any shard is in place: the old manifest stays valid
                writes.paths.append(storage.join(dst, t.codes))
                save_npy(storage.join(dst, t.codes), c)
                if rows is not None:
                    writes.paths.append(storage.join(dst, t.score))
                    save_npy(storage.join(dst, t.score), rows)
            # A whole track is one part; a held-out tail's track is two (head: train, tail: validation).
            parts, where = [], set()
            for split, a, b in t.ranges():
                hists[split] += np.bincount(c[a:b], minlength=hists[split].size)
                bounds = chunk_bounds(b - a, chunk, config.crop_length)
                parts.append(Part(split=split, start=a, end=b, chunks=len(bounds)))
                where |= {(split, sets[split].add(c[a + x:a + y], label_ids[t.label], t.sha256,
                                                  _chunk_notes(rows, a + x, a + y)))
                          for x, y in bounds}
            placed.append((t, tuple(parts), where))
        shards = [sh for s in SPLITS for sh in sets[s].finish()]
        writes.paths.extend(storage.join(dst, sh.path) for sh in shards)
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


def _track_notes(dst: str, t: Track, notes: Callable[[Track], np.ndarray] | None) -> np.ndarray | None:
    """A scored track's note rows (from ``notes``, else from ``dst/<t.score>``), checked; None without a score."""
    if t.score is None:
        return None
    rows = notes(t) if notes is not None else read_score_rows(storage.join(dst, t.score))
    if len(rows) != t.notes:
        raise DataError(f"{storage.join(dst, t.score)} holds {len(rows)} notes, the manifest says "
                        f"{t.notes}: remove {dst} and preprocess again")
    return rows


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
                   labels_without_validation=tuple(uncovered),
                   scored_tracks=sum(t.score is not None for t in tracks))


@dataclass
class Writes:
    """What one attempt at a new manifest wrote into the data folder."""

    paths: list[str] = field(default_factory=list)
    need: int = 0  # bytes it expected to write


# How long a second writer of a data folder waits for the first (a merge of a
# large corpus rewrites every shard: minutes), before it gives up (Busy, exit 138).
LOCK_WAIT_S = 3600.0


def update_dataset(dst: str, build: Callable[[Manifest | None, Writes], Manifest], *,
                   wait_s: float = LOCK_WAIT_S) -> Manifest:
    """Replace ``dst``'s manifest with ``build(live manifest, writes)``, one writer at a time.

    A local folder is locked for the whole read-build-commit-collect
    (:func:`wavenet.edges.storage.folder_lock`): a second writer waits for the first,
    then builds on top of its manifest, so both runs' tracks end up in it. A
    bucket is not locked: the commit is a compare-and-swap on ``manifest.json``'s
    generation; the loser removes what it wrote and builds again on the winner's
    manifest. On any failure the attempt's files are removed and the old
    manifest stays live and intact.

    Raises:
        Busy: another writer held the folder (or kept winning) for ``wait_s`` seconds.
        StorageError: the file system is full (one line: the path and the space needed).
    """
    deadline = time.monotonic() + wait_s
    with storage.folder_lock(dst, wait_s):
        while True:
            old, generation = read_live(dst)
            writes = Writes()
            try:
                committed = commit_manifest(dst, build(old, writes), generation)
            except BaseException as e:
                _discard(dst, writes)
                if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT):
                    raise _no_space(dst, e, writes.need) from None
                raise
            if committed is not None:
                collect_garbage(dst)
                return committed
            _discard(dst, writes)
            if time.monotonic() >= deadline:
                raise Busy(f"{dst}: other runs kept committing manifests for {wait_s:g} s: "
                           "run again when they have finished")
            log.warning("another run committed %s first: building again on its manifest", dst)


def _discard(dst: str, writes: Writes) -> None:
    """Remove an uncommitted attempt's files; whatever a kept manifest names stays."""
    if not storage.is_gcs(dst):
        collect_garbage(dst)  # under the folder's lock: every unnamed file is ours to remove
        return
    found = _retained(dst)
    named = found[0] if found is not None else None
    for path in writes.paths:
        if named is not None and _norm(path) not in named and storage.is_gcs(path):
            storage.remove(path)


def _bytes_needed(tracks: Sequence[Track], new: Collection[str]) -> int:
    """About what :func:`build_dataset` writes: every code once in a shard, new codes once more."""
    # Per example ~40 bytes of TFRecord framing and Example fields; per track ~2 kB of
    # manifest in the version file and again in manifest.json.
    # A note takes up to 3 varints of 10 bytes in each example it sounds in, 24 bytes in its score file.
    shards = sum(t.samples + 40 * max(1, t.samples // 16000) + 60 * t.notes for t in tracks)
    return (shards + sum(t.samples + 128 + 24 * t.notes for t in tracks if t.sha256 in new)
            + 4096 * len(tracks))


def _check_space(dst: str, need: int) -> None:
    if storage.is_gcs(dst):
        return
    free = shutil.disk_usage(dst).free
    if free < need:
        raise _no_space(dst, None, need, free)


def _no_space(dst: str, e: OSError | None, need: int, free: int | None = None) -> StorageError:
    # A full disk is the operator's to fix: the same run on the same disk fails the same way,
    # so this is a permanent error (exit 2), not a retryable one.
    free = shutil.disk_usage(dst).free if free is None else free
    where = (e.filename if e is not None and e.filename else dst)
    return StorageError(f"no space left on the file system of {where}: the dataset needs about "
                        f"{_mb(need)} there, {_mb(free)} is free; nothing was changed (free space, or "
                        f"preprocess into another folder)")


def _mb(n: int) -> str:
    return f"{n / 1e6:.1f} MB"


@dataclass(frozen=True)
class Provenance:
    """How a dataset was made, as its manifest records it (nothing here changes the shards).

    Attributes:
        src: where the audio came from.
        skipped: files left out, with reasons.
        processed: tracks decoded in this run (default: the number of new tracks).
        unchanged: tracks already in the data folder.
        started: when the run started (``time.time()``; default: now), for ``merge_seconds``.
    """

    src: str | None = None
    skipped: Sequence[Skipped] = ()
    processed: int | None = None
    unchanged: int = 0
    started: float | None = None


# Five for what the dataset holds (dst, config, tracks, their codes) and how it is written, then
# params: keywords for which tracks are new, the label order, the provenance and the scores.
def build_dataset(dst: str, config: ExperimentConfig, tracks: Sequence[Track],
                  codes: Callable[[Track], np.ndarray], writes: Writes, *, new: Collection[str] = (),
                  labels: Sequence[str] | None = None,
                  provenance: Provenance = Provenance(),
                  notes: Callable[[Track], np.ndarray] | None = None) -> Manifest:
    """Write a dataset's files (codes and scores of new tracks, balanced shards per split); return its manifest.

    The one writer of shards: preprocessing, test fixtures and the benchmarks all
    write their data through it, inside :func:`update_dataset` (which commits the
    manifest it returns). Each track is cut into ``ceil(samples / chunk)``
    near-equal examples of at most ``data.chunk_seconds`` (never shorter than
    one crop), each going to the shard of its split with the fewest samples so far.

    Args:
        dst: the data folder (local or gs://).
        config: audio settings (recorded), ``data`` (shards per split, chunk length), crop length.
        tracks: the tracks, ``split`` and ``label`` set (``label_id``, ``chunks`` and
            ``shards`` are filled in here).
        codes: a track's uint8 codes (from its source or from ``dst``).
        writes: collects the files written (removed again if the manifest is not committed).
        new: sha256s of tracks whose codes (and score) are written to ``dst/<track.codes>``
            (``dst/<track.score>``) here.
        labels: the label vocabulary, in id order (default: the tracks' labels, sorted).
        provenance: where the audio came from, what was skipped, processed and
            unchanged, and when the run started (recorded).
        notes: a scored track's (notes, 3) int64 rows (default: read from ``dst/<track.score>``);
            each example of such a track gets the rows that sound in it (``notes`` feature).

    Returns:
        The manifest to commit (not written yet).

    Raises:
        StorageError: a local ``dst`` has less free space than the files need.
    """
    src, skipped, processed = provenance.src, provenance.skipped, provenance.processed
    started = time.time() if provenance.started is None else provenance.started
    vocabulary = list(labels) if labels is not None else sorted({t.label for t in tracks})
    label_ids = {name: i for i, name in enumerate(vocabulary)}
    ordered = sorted(tracks, key=lambda t: t.sha256)
    new = frozenset(new)
    writes.need = _bytes_needed(ordered, new)
    _check_space(dst, writes.need)
    done, shards, stats = _write_shards(dst, config, ordered, codes, new, label_ids, writes, notes)
    return Manifest(
        version=MANIFEST_VERSION, created=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        src=src, audio=config.audio, data=config.data, crop_length=config.crop_length,
        labels=tuple(vocabulary), files=tuple(sorted(done, key=lambda t: t.relpath)),
        skipped=tuple(skipped), shards=tuple(shards), code_stats=stats,
        summary=_summary(done, len(vocabulary), len(skipped),
                         len(new) if processed is None else processed, provenance.unchanged,
                         config.audio.sample_rate, started))


def write_dataset(dst: str, config: ExperimentConfig, tracks: Sequence[Track],
                  codes: Callable[[Track], np.ndarray], **kwargs) -> Manifest:
    """:func:`build_dataset` and commit it as ``dst``'s manifest, whatever ``dst`` held before.

    For data made from scratch (fixtures, benchmarks); preprocessing merges with
    the old manifest instead (:func:`wavenet.data.preprocess.merge_manifests`).

    Returns:
        The manifest committed (``uri``: its version file).
    """
    return update_dataset(dst, lambda _old, writes: build_dataset(dst, config, tracks, codes, writes,
                                                                  **kwargs))


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
                         labels=labels, provenance=Provenance(src=src))
