"""Audio files -> mu-law codes -> TFRecord shards + ``manifest.json``.

``preprocess(src, dst, config)`` is ``list_audio`` -> ``partition`` ->
``process_partition`` (in a process pool) -> ``merge_manifests``; a pipeline
can run the same four steps with one pod per partition.

Per track (``process_partition``, no TensorFlow import): sha256 the file
(with its score's, below: the track's id), check its header (a file longer than
``data.max_track_seconds`` is skipped with that reason before it is decoded),
decode it with soundfile (libsndfile) a block at a time, then the pure steps
of :mod:`wavenet.data.audio`: average each block's channels to mono, resample it to
``audio.sample_rate`` with soxr's stream (HQ), trim leading and trailing 10 ms
frames whose RMS is below ``audio.silence_threshold_db`` dBFS, peak-normalise
to ``audio.normalize_peak_db`` and mu-law encode to uint8. Memory per file is
one decoded block (:data:`BLOCK_BYTES`) plus the track at the target rate
(float32, twice while its blocks are joined, then uint8 codes), whatever the
file's channels and rate. This module handles
the files; the signal maths is all in :mod:`wavenet.data.audio`. The codes go to
``WORK/tracks/<sha256>-<audio>.npy`` (``<audio>``: 8 hex digits of a hash
of the audio config, so codes made with other settings never collide); the outcome of every file (or the one-line
reason it was skipped) goes to a partial manifest.

A track's score: when ``DIR/NAME.mid`` or ``DIR/NAME.midi`` (any case of the
extension) lies beside ``DIR/NAME.EXT``, it is read (at most
:data:`MAX_MIDI_BYTES`) with :func:`wavenet.data.notes.read_midi` at
``audio.sample_rate``, moved by the silence trimmed from the audio's start and
cut to the codes, and saved beside them as ``WORK/tracks/<sha256>-<audio>.score.npy``
((notes, 3) int64 rows ``start, end, token``). The track's id then covers both
files (:func:`wavenet.data.manifest.track_id`); the merge still counts one audio
file as one track (a new score replaces its entry, :func:`_classify`). A score
that cannot be read skips its track with a one-line reason naming the MIDI file.

``merge_manifests`` then, in one process and as the one writer of ``DST``
(:func:`wavenet.data.shards.update_dataset`: a lock, or a compare-and-swap on a
bucket), assigns each new track to train or validation and hands old and new
tracks to :func:`wavenet.data.shards.build_dataset`, which copies new codes to
``DST/tracks/`` (kept so later runs can rewrite shards with old and new
tracks), cuts tracks into chunks of at most ``data.chunk_seconds`` and writes
``data.num_shards`` shards per split; the manifest is committed last (a new
``manifests/<version>.json`` and ``manifest.json``), then files that no kept
manifest version names are deleted.

Crash safety: every file is written under a temporary name and renamed, and
shard names carry a prefix of their own sha256, so a new shard never replaces
one that the current manifest names. Until the new manifest is in place the
old one stays valid (its shards and tracks are all still there).
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import io
import json
import logging
import math
import multiprocessing as mp
import os
import posixpath
import shutil
import signal
import stat
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool
from typing import Any, NamedTuple

import numpy as np
import soundfile as sf
from tqdm import tqdm

from wavenet.config import ExperimentConfig
from wavenet.data.audio import (
    mu_law_encode,
    peak_gain,
    resample_stream,
    silence_bounds,
    to_mono,
)
from wavenet.data.manifest import (
    MANIFEST,
    TRACKS,
    Manifest,
    Skipped,
    Track,
    check_digest,
    check_relpath,
    read_manifest,
    track_codes_path,
    track_id,
    track_score_path,
)
from wavenet.data.notes import MAX_MIDI_BYTES, read_midi
from wavenet.data.shards import (
    LOCK_WAIT_S,
    Provenance,
    Writes,
    build_dataset,
    read_score_rows,
    save_npy,
    update_dataset,
)
from wavenet.edges import storage
from wavenet.errors import DataError, WavenetError, one_line
from wavenet.local_workers import pid_alive

__all__ = [
    "AUDIO_EXTENSIONS",
    "SCORE_EXTENSIONS",
    "find_scores",
    "list_audio",
    "partition",
    "process_partition",
    "known_tracks",
    "merge_manifests",
    "preprocess",
    "check_dataset",
    "assign_splits",
    "split_of",
]

log = logging.getLogger("wavenet.data.preprocess")

# Extensions of formats libsndfile decodes (WAV, FLAC, OGG Vorbis/Opus, MP3, AIFF).
# Other files under SRC (covers, notes) are ignored, not counted as skipped.
AUDIO_EXTENSIONS = (".wav", ".wave", ".flac", ".ogg", ".oga", ".opus", ".mp3", ".aif", ".aiff")
# A track's score: DIR/NAME.mid or DIR/NAME.midi beside DIR/NAME.EXT (any case of the extension).
SCORE_EXTENSIONS = (".mid", ".midi")


# -- splits ------------------------------------------------------------------------

def split_of(relpath: str, validation_fraction: float) -> str:
    """``"validation"`` when the hash of ``relpath`` falls below the fraction, else ``"train"``.

    The whole-track rule of :func:`assign_splits`, which also makes sure that
    every label has validation audio.
    """
    return "validation" if _unit_hash(relpath) < validation_fraction else "train"


def _unit_hash(relpath: str) -> float:
    # First 64 bits of sha256 as a number in [0, 1): stable across machines and Python runs.
    return int(hashlib.sha256(relpath.encode("utf-8")).hexdigest()[:16], 16) / 2.0**64


# -- listing and partitioning --------------------------------------------------------

def list_audio(src: str) -> list[str]:
    """Audio files under ``src`` (a folder or ``gs://bucket/prefix``), recursively, sorted.

    Files are chosen by extension (:data:`AUDIO_EXTENSIONS`, case-insensitive);
    whether they really hold audio is found out when they are processed.

    Raises:
        DataError: ``src`` is a local path that is not a folder.
    """
    return _audio_in(_listing(src))


def _listing(src: str) -> list[str]:
    """Every file under ``src``; a one-line DataError when a local ``src`` is not a folder."""
    if not storage.is_gcs(src) and not os.path.isdir(src):
        raise DataError(f"{src} is not a folder (preprocess reads a folder or gs://bucket/prefix)")
    return list(storage.list_files(src))


def _audio_in(listing: Iterable[str]) -> list[str]:
    return sorted(p for p in listing if p.lower().endswith(AUDIO_EXTENSIONS))


def _stem(path: str) -> str:
    """``DIR/NAME`` of ``DIR/NAME.EXT`` (local paths normalised, so listings of one folder agree)."""
    stem = posixpath.splitext(path)[0] if storage.is_gcs(path) else os.path.splitext(path)[0]
    return stem if storage.is_gcs(path) else os.path.normpath(stem)


def find_scores(audio: Iterable[str], listing: Iterable[str]) -> dict[str, tuple[str, ...]]:
    """The score files beside each audio file, from a listing of their folder(s).

    Args:
        audio: audio paths or ``gs://`` URIs.
        listing: paths of the same form (from :func:`wavenet.edges.storage.list_files`):
            ``DIR/NAME.mid`` or ``.midi`` (any case) is the score of ``DIR/NAME.EXT``.

    Returns:
        ``{audio path: its score paths, sorted}`` for the audio files that have any (more
        than one is ambiguous; :func:`process_partition` then skips the track).
    """
    by_stem: dict[str, list[str]] = {}
    for p in listing:
        if p.lower().endswith(SCORE_EXTENSIONS):
            by_stem.setdefault(_stem(p), []).append(p)
    return {a: tuple(sorted(by_stem[_stem(a)])) for a in audio if _stem(a) in by_stem}


def _folder(path: str) -> str:
    return posixpath.dirname(path) if storage.is_gcs(path) else (os.path.dirname(path) or ".")


def _scores_of_files(files: Sequence[str]) -> tuple[dict[str, tuple[str, ...]], dict[str, str]]:
    """:func:`find_scores` for files given without a listing: each of their folders listed once.

    Returns:
        The scores, and ``{audio path: reason}`` for files whose folder could not be listed
        (skipped: without the listing, a track with a score would be taken for one without).
    """
    listing: list[str] = []
    unlisted: dict[str, str] = {}
    for folder in sorted({_folder(p) for p in files}):
        try:
            # Recursive (storage has one listing call); only the folder's own files can match.
            listing.extend(storage.list_files(folder))
        except WavenetError:  # no credentials, endpoint down: no file can be read; stop the run
            raise
        except Exception as e:  # google-cloud-storage errors (Forbidden, ...)
            unlisted.update({p: f"cannot list its folder {folder} for a score: {one_line(e)}"
                             for p in files if _folder(p) == folder})
    return find_scores(files, listing), unlisted


def partition(files: Sequence[str], n: int) -> list[list[str]]:
    """Deal ``files`` (sorted first) round-robin into ``min(n, len(files))`` non-empty lists."""
    if n < 1:
        raise ValueError(f"partition count must be >= 1. Received: {n}")
    ordered = sorted(files)
    n = max(1, min(n, len(ordered)))
    return [ordered[i::n] for i in range(n)] if ordered else []


def _relpath(path: str, src: str | None) -> str:
    if src is None:
        return path
    if storage.is_gcs(src):
        base = src.rstrip("/") + "/"
        return path[len(base):] if path.startswith(base) else path
    return os.path.relpath(path, src).replace(os.sep, "/")


def _label(path: str) -> str:
    # The parent folder's name, e.g. SRC/jazz/take1.wav -> "jazz".
    if storage.is_gcs(path):
        parts = path[len("gs://"):].split("/")
        return parts[-2] if len(parts) >= 2 else ""
    return os.path.basename(os.path.dirname(os.path.abspath(path)))


# -- one file ------------------------------------------------------------------------

class _Skip(Exception):
    """A file is not usable; the message is the one-line reason."""


# Bytes of decoded float32 per block: memory for decoding is about this much
# whatever the file's channels, rate and length.
BLOCK_BYTES = 1 << 22
# Samples per block when _encode scales and mu-law encodes: mu_law_encode's float64
# temporaries take about 36 bytes a sample (tracemalloc: 36 MiB for 2**20 samples,
# what a block was until 2026-12-07: 65 s at 16 kHz, the long file's extra 39 MB),
# so 2**17 samples (8 s at 16 kHz) take about 4.5 MiB, near BLOCK_BYTES.
_ENCODE_SAMPLES = 1 << 17
# libsndfile reports SF_COUNT_MAX (2**63 - 1) frames when a header leaves the length
# unknown (a FLAC whose STREAMINFO total is 0); python-soundfile cannot read such a
# file block by block (its position update seeks past the end and fails).
_UNKNOWN_FRAMES = 1 << 62
# Bytes per read when hashing a file.
_HASH_CHUNK = 1 << 20


@contextlib.contextmanager
def _opened(path: str) -> Iterator[int]:
    """A read-only file descriptor of ``path`` (a ``gs://`` object downloaded to a temporary file first).

    Hashing and decoding then read the same open file, so the sha256 names
    the bytes that were decoded. A descriptor, not a Python file object:
    libsndfile then reads it in C. Given a file object, it reads through
    Python callbacks (cffi), and cffi prints and drops an exception raised in
    a callback (https://cffi.readthedocs.io/en/latest/using.html#extern-python-reference,
    "onerror"): SIGTERM's SystemExit, arriving mid-read, became a short read
    and the run finished with exit 0 on a silently truncated track.
    """
    if storage.is_gcs(path):
        with tempfile.TemporaryDirectory(prefix="wavenet-object-") as tmp:
            try:
                local = storage.local_copy(path, tmp)
            except WavenetError:  # no credentials, endpoint down: no file can be read; stop the run
                raise
            except Exception as e:  # google-cloud-storage errors (NotFound, Forbidden, ...)
                raise _Skip(f"cannot read: {one_line(e)}") from None
            with _opened(local) as fd:
                yield fd
        return
    try:
        st = os.stat(path)  # follows symlinks: dangling ones and loops raise here
        if not stat.S_ISREG(st.st_mode):
            # Opening a FIFO would block forever; devices and sockets are not audio files.
            raise _Skip("not a regular file (FIFO, device or socket)")
        fd = os.open(path, os.O_RDONLY)
    except OSError as e:
        raise _Skip(f"cannot read: {e.strerror or e}") from None
    try:
        yield fd
    finally:
        os.close(fd)


def _sha256(fd: int) -> str:
    """sha256 of the whole open file, read in chunks; leaves it at its start."""
    digest, size = hashlib.sha256(), 0
    try:
        for chunk in iter(lambda: os.read(fd, _HASH_CHUNK), b""):
            digest.update(chunk)
            size += len(chunk)
        os.lseek(fd, 0, os.SEEK_SET)
    except OSError as e:
        raise _Skip(f"cannot read: {e.strerror or e}") from None
    if size == 0:
        raise _Skip("empty file (0 bytes)")
    return digest.hexdigest()


def _check_header(f: sf.SoundFile, config: ExperimentConfig) -> None:
    """Refuse, before decoding, a file whose header claims more audio than ``data.max_track_seconds``."""
    if f.samplerate < 1 or f.channels < 1:
        raise _Skip(f"not decodable audio: header says {f.channels} channels at {f.samplerate} Hz")
    if f.frames >= _UNKNOWN_FRAMES:
        raise _Skip("not decodable audio: its header gives no length (an unfinished or streamed "
                    "recording?); re-encode it")
    seconds, limit = f.frames / f.samplerate, config.data.max_track_seconds
    if seconds > limit:
        raise _Skip(f"too long: {seconds:.1f} s ({f.frames} frames of {f.channels} channels at "
                    f"{f.samplerate} Hz) exceeds data.max_track_seconds={limit:g}")


def _mono_blocks(f: sf.SoundFile, limit_s: float, counted: list[int]) -> Iterator[np.ndarray]:
    """Decode ``f`` a block at a time, each averaged to mono (:func:`wavenet.data.audio.to_mono`).

    A block holds about :data:`BLOCK_BYTES` of float32 whatever the channel
    count. The frames read so far are counted against ``limit_s`` too: a header
    may understate what the data holds.
    """
    block = max(1, BLOCK_BYTES // (4 * f.channels))
    limit = int(limit_s * f.samplerate)
    while True:
        # python-soundfile: read(frames) returns at most `frames` frames, fewer at the end
        # (https://python-soundfile.readthedocs.io/en/latest/#soundfile.SoundFile.read).
        x = f.read(block, dtype="float32", always_2d=True)  # (frames, channels)
        if x.shape[0] == 0:
            return
        counted[0] += x.shape[0]
        if counted[0] > limit:
            raise _Skip(f"too long: decodes to more than data.max_track_seconds={limit_s:g} s "
                        f"at {f.samplerate} Hz (more than its header says)")
        if not np.isfinite(x).all():
            raise _Skip("contains NaN or infinite samples")
        yield to_mono(x)


def _decode(fd: int, config: ExperimentConfig) -> tuple[np.ndarray, dict[str, Any]]:
    """An open audio file (descriptor at its start) -> float32 mono at ``audio.sample_rate``, and its header.

    Memory: one decoded block plus the output at the target rate, never the
    whole file's channels at its own rate.
    """
    counted = [0]
    try:
        # python-soundfile opens a descriptor with sf_open_fd; closefd=False leaves it to
        # _opened (https://python-soundfile.readthedocs.io/en/latest/#soundfile.SoundFile).
        with sf.SoundFile(fd, closefd=False) as sound:
            info = {"sample_rate_in": int(sound.samplerate), "channels_in": int(sound.channels),
                    "format": sound.format, "subtype": sound.subtype}
            _check_header(sound, config)
            blocks = _mono_blocks(sound, config.data.max_track_seconds, counted)
            parts = list(resample_stream(blocks, info["sample_rate_in"], config.audio.sample_rate))
    except sf.LibsndfileError as e:
        raise _Skip(f"not decodable audio: {e.error_string}") from None
    except (RuntimeError, ValueError, TypeError, EOFError) as e:
        raise _Skip(f"not decodable audio: {one_line(e, with_type=False)}") from None
    if counted[0] == 0:
        raise _Skip("no audio frames")
    info["frames_in"] = counted[0]
    mono = np.concatenate(parts) if len(parts) != 1 else parts[0]
    return mono, info


def _encode(mono: np.ndarray, config: ExperimentConfig) -> tuple[np.ndarray, int]:
    """Mono at ``audio.sample_rate`` -> (codes, the sample of ``mono`` they start at): trim
    silence, peak-normalise, mu-law (:mod:`wavenet.data.audio`).

    The whole-signal statistics (loud frames, peak) are measured first; the
    scaling and mu-law then run a block at a time into the uint8 codes, which
    gives the same codes as ``mu_law_encode(peak_normalize(trim_silence(x)))``
    with float64 temporaries of one block (:data:`_ENCODE_SAMPLES`, about
    4.5 MiB) instead of the whole track.
    """
    audio = config.audio
    start, stop = silence_bounds(mono, audio.sample_rate, audio.silence_threshold_db)
    if stop == start:
        raise _Skip(f"silent: no 10 ms frame louder than {audio.silence_threshold_db:g} dBFS RMS")
    if stop - start < config.crop_length:
        raise _Skip(f"too short: {stop - start} samples at {audio.sample_rate} Hz after trimming, "
                    f"fewer than one training crop ({config.crop_length})")
    trimmed = mono[start:stop]
    gain = peak_gain(trimmed, audio.normalize_peak_db)
    codes = np.empty(trimmed.size, dtype=np.uint8)
    step = _ENCODE_SAMPLES
    for i in range(0, trimmed.size, step):
        codes[i:i + step] = mu_law_encode((trimmed[i:i + step] * gain).astype(np.float32),
                                          audio.quantization_channels)
    return codes, int(start)


def _score_path(path: str, scores: Mapping[str, tuple[str, ...]]) -> str | None:
    found = scores.get(path, ())
    if len(found) > 1:
        raise _Skip(f"more than one score beside it ({', '.join(found)}): keep one")
    return found[0] if found else None


def _read_score(path: str) -> tuple[bytes, str]:
    """A score file's bytes (at most :data:`MAX_MIDI_BYTES`) and their sha256."""
    try:
        with _opened(path) as fd:
            data = os.read(fd, MAX_MIDI_BYTES + 1)
    except _Skip as e:
        raise _Skip(f"its score {path}: {e}") from None
    except OSError as e:
        raise _Skip(f"its score {path}: cannot read: {e.strerror or e}") from None
    if len(data) > MAX_MIDI_BYTES:
        raise _Skip(f"its score {path} is larger than {MAX_MIDI_BYTES >> 20} MiB "
                    f"(MAX_MIDI_BYTES): not read")
    return data, hashlib.sha256(data).hexdigest()


def _parse_score(data: bytes, path: str, config: ExperimentConfig):
    try:
        return read_midi(data, config.audio.sample_rate, name=path)
    except DataError as e:
        raise _Skip(one_line(e, with_type=False)) from None
    except Exception as e:  # whatever else a malformed file raises in mido or Score
        raise _Skip(f"{path}: not a readable MIDI file ({one_line(e)})") from None


def _process_file(path: str, relpath: str, work_dir: str, config: ExperimentConfig,
                  known: frozenset[str], scores: Mapping[str, tuple[str, ...]]) -> dict[str, Any]:
    record: dict[str, Any] = {"path": path, "relpath": relpath}
    try:
        score_path = _score_path(path, scores)
        with _opened(path) as fd:
            digest = _sha256(fd)
            if score_path is not None:
                # Read before the "unchanged" check: the track's id covers the score.
                score_data, score_sha = _read_score(score_path)
                record["audio_sha256"], record["score_sha256"] = digest, score_sha
                digest = track_id(digest, score_sha)
            record["sha256"] = digest
            if digest in known:
                return {**record, "status": "unchanged"}
            score = _parse_score(score_data, score_path, config) if score_path is not None else None
            mono, info = _decode(fd, config)
        codes, trim_start = _encode(mono, config)
        del mono
        rel_codes = track_codes_path(digest, config)
        save_npy(storage.join(work_dir, rel_codes), codes)
        if score is not None:
            # In the codes' samples: the silence trimmed from the start moves every note back.
            score = score.shifted(-trim_start, int(codes.size))
            record.update(score=track_score_path(digest, config), notes=len(score))
            save_npy(storage.join(work_dir, record["score"]), score.rows)
        frames_in = info.pop("frames_in")
        record.update(info)
        record.update({
            "status": "processed",
            "label": _label(path),
            "duration_in_s": round(frames_in / info["sample_rate_in"], 6),
            "duration_out_s": round(codes.size / config.audio.sample_rate, 6),
            "samples": int(codes.size),
            "codes": rel_codes,
        })
        return record
    except _Skip as e:
        return {**record, "status": "skipped", "reason": str(e)}
    except MemoryError:
        return {**record, "status": "skipped", "reason": "out of memory while decoding"}
    except Exception as e:  # one bad file must never end the run
        return {**record, "status": "skipped", "reason": f"unexpected error: {one_line(e)}"}


def _known_tracks(dst: str, manifest: Manifest | None, config: ExperimentConfig) -> dict[str, Track]:
    if manifest is None:
        return {}
    present = {p.rsplit("/", 1)[-1] for p in storage.list_files(storage.join(dst, TRACKS))}
    return {t.sha256: t for t in manifest.files
            if t.codes.rsplit("/", 1)[-1] in present and t.codes == track_codes_path(t.sha256, config)
            and (t.score is None or (t.score.rsplit("/", 1)[-1] in present
                                     and t.score == track_score_path(t.sha256, config)))}


def known_tracks(dst: str, config: ExperimentConfig) -> dict[str, Track]:
    """Tracks of the manifest in ``dst`` whose codes are still under ``dst/tracks``, by sha256.

    Only tracks whose codes (and score, if any) were made with ``config.audio``
    and are still there count (others must be made again).
    """
    return _known_tracks(dst, read_manifest(dst, missing_ok=True), config)


def process_partition(files: Sequence[str], work_dir: str, config: ExperimentConfig,
                      src: str | None = None, dst: str | None = None,
                      known: Iterable[str] | None = None,
                      scores: Mapping[str, tuple[str, ...]] | None = None) -> str:
    """Process ``files`` into ``work_dir``; return the path of the partial manifest.

    Args:
        files: audio paths or ``gs://`` URIs (e.g. one list of :func:`partition`).
        work_dir: a folder or ``gs://`` prefix; codes go to ``work_dir/tracks/<sha256>-<audio>.npy``,
            the partial manifest to ``work_dir/partials/``.
        config: audio settings and ``crop_length`` (shorter tracks are skipped).
        src: the folder the files were listed from; train/validation is decided
            by the path relative to it, so pass the same ``src`` everywhere.
        dst: an earlier output folder: files whose content is already there are
            reported ``unchanged`` instead of being decoded again.
        known: sha256 ids to treat as already processed (instead of reading ``dst``).
        scores: each file's score files (:func:`find_scores`), found by the caller from
            the listing it already made (:func:`preprocess`); a file missing from it has
            none. Default None: each folder of ``files`` is listed once here, for
            callers that have only the audio paths (a pipeline's partition step).

    Returns:
        Path of a JSON file ``{"src": ..., "records": [...]}``, one record per
        file with ``status`` ``processed``, ``unchanged`` or ``skipped``.
    """
    if known is None:
        known = known_tracks(dst, config).keys() if dst is not None else ()
    known_set = frozenset(known)
    # One listing per folder rather than a request per file and extension case (.mid, .MID,
    # .Mid, ... on a case-sensitive store): a bucket answers a listing as fast as one lookup.
    unlisted: dict[str, str] = {}
    if scores is None:
        scores, unlisted = _scores_of_files(files)
    records = [{"path": p, "relpath": _relpath(p, src), "status": "skipped", "reason": unlisted[p]}
               if p in unlisted else _process_file(p, _relpath(p, src), work_dir, config, known_set, scores)
               for p in files]
    tag = hashlib.sha256("\n".join(files).encode("utf-8")).hexdigest()[:16]
    out = storage.join(work_dir, "partials", f"partial-{tag}.json")
    storage.write_text_atomic(out, json.dumps({"src": src, "records": records}))
    return out


# -- merging -------------------------------------------------------------------------

def assign_splits(tracks: list[dict[str, Any]], fraction: float, min_tail: int, min_head: int) -> None:
    """Give new tracks (``split`` None) a split, label by label; a track that has one keeps it.

    Evaluation needs held-out audio of every label, without leaking the
    training audio into it, with the same answer on every machine, and with
    every track staying where it is when new tracks arrive. So, per label:

    * **Two or more tracks: whole tracks.** A new track is in validation when
      the first 64 bits of sha256 of its path relative to SRC, read as a
      fraction of 2**64, is below ``fraction`` (:func:`split_of`). If the label
      then has no validation audio, its new track with the smallest hash moves
      there; if it has no training audio, its new track with the largest hash
      moves to train. A validation track is a recording the model never heard
      (no leakage), at the price that a label with few tracks gives up more
      than ``fraction`` of its audio (one of three tracks).
    * **One track: a held-out tail** (``split`` ``"tail"``). A label of one
      recording cannot lose it to validation without losing it from training,
      so its last ``max(ceil(fraction * samples), min_tail)`` samples are held
      out and the rest trains (the boundary is kept in
      ``validation_start``). The tail shares the recording, so its score is
      optimistic: evaluation reports which labels were scored on tails. When
      the head would be shorter than ``min_head`` the track stays in train and
      the label has no validation audio.

    Tracks that already have a split (from the manifest of an earlier run) are
    never moved: a track the champion trained on never becomes validation.
    ``fraction <= 0`` puts every new track in train.

    Args:
        tracks: manifest entries with ``relpath``, ``sha256``, ``label``,
            ``samples`` and ``split`` (None for new tracks); changed in place
            (``split``, and ``validation_start`` for tails).
        fraction: ``data.validation_fraction``.
        min_tail: the shortest tail worth holding out (one evaluation window
            with its context: ``receptive_field + evaluate.window``).
        min_head: the shortest head worth training on (``crop_length``).
    """
    new = [t for t in tracks if t.get("split") is None]
    if fraction <= 0:
        for t in new:
            t["split"] = "train"
        return
    by_label: dict[str, list[dict[str, Any]]] = {}
    for t in tracks:
        by_label.setdefault(t["label"], []).append(t)
    for group in by_label.values():
        fresh = sorted((t for t in group if t.get("split") is None),
                       key=lambda t: (_unit_hash(t["relpath"]), t["sha256"]))
        if not fresh:
            continue
        if len(group) == 1:
            _hold_out_tail(group[0], fraction, min_tail, min_head)
        else:
            _split_whole_tracks(group, fresh, fraction)


def _hold_out_tail(t: dict[str, Any], fraction: float, min_tail: int, min_head: int) -> None:
    """A label's only track: its tail held out for validation, unless the head would be too short."""
    tail = max(math.ceil(fraction * t["samples"]), min_tail)
    if t["samples"] - tail >= min_head:
        t["split"], t["validation_start"] = "tail", int(t["samples"] - tail)
    else:
        t["split"] = "train"


def _split_whole_tracks(group: list[dict[str, Any]], fresh: list[dict[str, Any]], fraction: float) -> None:
    """A label's new tracks (``fresh``, by hash) to train or validation, so that the label
    keeps audio in both: :func:`assign_splits`, two or more tracks."""
    for t in fresh:
        t["split"] = split_of(t["relpath"], fraction)
    if not any(t["split"] in ("validation", "tail") for t in group):
        fresh[0]["split"] = "validation"
    if not any(t["split"] in ("train", "tail") for t in group):
        fresh[-1]["split"] = "train"


def _read_partials(partial_paths: Sequence[str], src: str | None) -> tuple[list, str | None]:
    records: list[tuple[dict[str, Any], str]] = []
    for p in partial_paths:
        part = _read_partial(p)
        src = src if src is not None else part.get("src")
        work_dir = p.rsplit("/", 2)[0]  # partials sit in WORK/partials/
        records.extend((r, work_dir) for r in part["records"])
    records.sort(key=lambda rw: rw[0]["path"])
    return records, src


_STATUSES = ("processed", "unchanged", "skipped")


def _read_partial(path: str) -> dict[str, Any]:
    """A partial manifest, checked: its ``codes`` paths stay in its folder, digests are digests.

    A partial comes from another step (another pod): it is input, and a
    ``codes`` of ``../../etc/x`` or ``/abs`` must never be read or copied.
    """
    try:
        part = json.loads(storage.read_text(path))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DataError(f"{path} is not a partial manifest (not JSON: {e})") from None
    if not isinstance(part, dict) or not isinstance(part.get("records"), list):
        raise DataError(f"{path} is not a partial manifest (no 'records' list)")
    for i, r in enumerate(part["records"]):
        if not isinstance(r, dict) or r.get("status") not in _STATUSES or not isinstance(r.get("path"), str):
            raise DataError(f"{path}: records[{i}] needs 'path' and a 'status' of "
                            f"{', '.join(_STATUSES)}. Received: {str(r)[:80]!r}")
        if r["status"] == "skipped" and not isinstance(r.get("reason"), str):
            raise DataError(f"{path}: records[{i}].reason must be a string. Received: {r.get('reason')!r}")
        if r["status"] != "skipped":
            check_digest(r.get("sha256"), f"records[{i}].sha256", path)
        if r["status"] == "processed":
            check_relpath(r.get("codes"), f"records[{i}].codes", path)
            if r.get("score") is not None:
                check_relpath(r["score"], f"records[{i}].score", path)
                check_digest(r.get("score_sha256"), f"records[{i}].score_sha256", path)
                check_digest(r.get("audio_sha256"), f"records[{i}].audio_sha256", path)
                if not isinstance(r.get("notes"), int) or r["notes"] < 0:
                    raise DataError(f"{path}: records[{i}].notes must be a count of notes. "
                                    f"Received: {r.get('notes')!r}")
    return part


class _Classified(NamedTuple):
    """What the partial records hold, against the tracks ``DST`` already has."""

    new: dict[str, dict[str, Any]]  # new track entries by id
    codes: dict[str, str]  # their codes in the work dirs
    scores: dict[str, str]  # their scores in the work dirs
    skipped: list[Skipped]
    unchanged: int
    replaced: dict[str, str]  # old track id -> the new id of the same audio file with a new score


def _classify(records: list, old_tracks: dict[str, Track]) -> _Classified:
    """Partial records -> new tracks, skipped files, unchanged ones, and old tracks replaced.

    One audio file is one track: a copy of it (same audio bytes, any score) is skipped, and
    the same file with a new score replaces its old entry, keeping its split (its notes were
    corrected; its audio, hence the split's content, is the same).
    """
    new: dict[str, dict[str, Any]] = {}
    new_codes: dict[str, str] = {}
    new_scores: dict[str, str] = {}
    skipped: list[Skipped] = []
    unchanged = 0
    replaced: dict[str, str] = {}
    old_audio = {t.audio_id: t for t in old_tracks.values()}
    new_audio: dict[str, str] = {}
    for r, work_dir in records:
        status = r["status"]
        audio = r.get("audio_sha256") or r.get("sha256")
        if status == "skipped":
            skipped.append(Skipped(r["path"], r["reason"]))
        elif status == "unchanged" and r["sha256"] in old_tracks:
            first = old_tracks[r["sha256"]]
            if first.relpath == r["relpath"]:
                unchanged += 1
            else:  # a copy (or a moved file): the content is in DST already, under its first path
                skipped.append(Skipped(r["path"], f"same content as {first.path}"))
        elif status == "unchanged":
            skipped.append(Skipped(r["path"], "reported unchanged but its codes are not in "
                                   "DST/tracks: run again to process it"))
        elif r["sha256"] in old_tracks or r["sha256"] in new:
            first_path = (old_tracks[r["sha256"]].path if r["sha256"] in old_tracks
                          else new[r["sha256"]]["path"])
            skipped.append(Skipped(r["path"], f"same content as {first_path}"))
        elif audio in new_audio:
            skipped.append(Skipped(r["path"], f"same audio as {new_audio[audio]}"))
        elif audio in old_audio and (old_audio[audio].relpath != r["relpath"]
                                     or old_audio[audio].sha256 in replaced):
            skipped.append(Skipped(r["path"], f"same audio as {old_audio[audio].path}"))
        else:
            entry = {k: v for k, v in r.items() if k != "status"}
            entry.update(split=None, label_id=-1, chunks=0, shards=(), validation_start=None, parts=())
            if audio in old_audio:  # the same file, a new score: it takes the old entry's place
                old = old_audio[audio]
                replaced[old.sha256] = r["sha256"]
                entry.update(split=old.split, validation_start=old.validation_start)
            new[r["sha256"]] = entry
            new_audio[audio] = r["path"]
            new_codes[r["sha256"]] = storage.join(work_dir, r["codes"])
            if r.get("score") is not None:
                new_scores[r["sha256"]] = storage.join(work_dir, r["score"])
    return _Classified(new, new_codes, new_scores, skipped, unchanged, replaced)


def merge_manifests(partial_paths: Sequence[str], dst: str, config: ExperimentConfig,
                    src: str | None = None, wait_s: float = LOCK_WAIT_S) -> Manifest:
    """Combine partial manifests with what ``dst`` already holds; write shards and the manifest.

    One writer per ``dst`` at a time (:func:`wavenet.data.shards.update_dataset`): a
    second run waits for the first and merges on top of its manifest, so the
    tracks of both are kept.

    Args:
        partial_paths: files returned by :func:`process_partition` (codes are
            looked up beside them, in ``<work_dir>/tracks``).
        dst: output folder or ``gs://`` prefix.
        config: audio settings (recorded), ``data.num_shards``,
            ``data.validation_fraction`` and ``data.chunk_seconds``.
        src: recorded in the manifest (default: the ``src`` of the partials).
        wait_s: how long to wait for another writer of ``dst`` (then :class:`~wavenet.errors.Busy`).

    Returns:
        The manifest committed to ``dst`` (``uri``: its version file,
        ``dst/manifests/<version>.json``, the data reference of this run).

    Raises:
        DataError: a partial manifest is unreadable or names a path outside its
            folder, or neither the partials nor ``dst`` hold a usable track.
    """
    started = time.time()
    records, src = _read_partials(partial_paths, src)
    manifest = update_dataset(dst, lambda old, writes: _merge(old, records, src, dst, config, writes,
                                                              started), wait_s=wait_s)
    uncovered = manifest.summary.labels_without_validation
    if uncovered and config.data.validation_fraction > 0:
        log.warning("no validation audio for label(s) %s: evaluation cannot score them (tracks keep their "
                    "split from earlier runs, or a single track is too short for a held-out tail)",
                    ", ".join(uncovered))
    return manifest


def _merge(old: Manifest | None, records: list, src: str | None, dst: str, config: ExperimentConfig,
           writes: Writes, started: float) -> Manifest:
    """The new manifest of ``dst``: ``old``'s tracks and the partials' new ones (files written)."""
    old_tracks = _known_tracks(dst, old, config)
    if old is not None and len(old_tracks) < len(old.files):
        log.warning("%d track(s) of %s were made with another audio config or lost their codes: "
                    "they are dropped (and re-made if their files are in SRC)",
                    len(old.files) - len(old_tracks), dst)
    new, new_codes, new_scores, skipped, unchanged, replaced = _classify(records, old_tracks)
    for s in skipped:
        log.warning("skipped %s: %s", s.path, s.reason)
    for old_id, new_id in replaced.items():
        log.warning("%s has a new score: its track %s is replaced by %s", new[new_id]["path"],
                    old_id[:12], new_id[:12])
        del old_tracks[old_id]
    if not old_tracks and not new:
        where = src if src is not None else "the input"
        first = f" (e.g. {skipped[0].path}: {skipped[0].reason})" if skipped else ""
        raise DataError(f"no usable audio in {where}: {len(skipped)} file(s) skipped{first}")
    entries = [dataclasses.asdict(t) for t in old_tracks.values()] + list(new.values())
    entries.sort(key=lambda t: t["sha256"])
    assign_splits(entries, config.data.validation_fraction,
                  min_tail=config.model.receptive_field + config.evaluate.window,
                  min_head=config.crop_length)
    # Parts, chunks and shards are laid out again by build_dataset.
    tracks = [Track(**dict(t, shards=(), parts=())) for t in entries]

    def codes(t: Track) -> np.ndarray:
        path = new_codes.get(t.sha256) or storage.join(dst, t.codes)
        try:
            return np.load(io.BytesIO(storage.read_bytes(path)), allow_pickle=False)
        except (OSError, ValueError) as e:
            raise DataError(f"cannot read {path}: {e}: remove {dst} and preprocess again") from None

    def notes(t: Track) -> np.ndarray:
        return read_score_rows(new_scores.get(t.sha256) or storage.join(dst, t.score))

    # Labels keep their ids: the old vocabulary in its order, new labels appended (sorted).
    known = tuple(old.labels) if old is not None else ()
    labels = known + tuple(sorted({t.label for t in tracks} - set(known)))
    return build_dataset(dst, config, tracks, codes, writes, new=new_codes.keys(), labels=labels,
                         provenance=Provenance(src=src, skipped=skipped, processed=len(new),
                                               unchanged=unchanged, started=started), notes=notes)


# -- the whole run ---------------------------------------------------------------------

def _cores() -> int:
    # The CPUs this process may run on (a container's share), not the machine's.
    try:
        return len(os.sched_getaffinity(0)) or 1
    except AttributeError:
        return os.cpu_count() or 1


def _pool_context():
    """fork when it is safe, else spawn.

    fork starts workers in milliseconds. It is unsafe when native threads may
    hold locks at the moment of the fork (TensorFlow's thread pools) or when
    Python threads other than daemons (tqdm's monitor) are running; then
    spawn starts fresh interpreters (which import NumPy, soundfile and soxr,
    never TensorFlow). forkserver is not used: its server keeps the
    environment of its first start (e.g. a stale STORAGE_EMULATOR_HOST).
    """
    others = [t for t in threading.enumerate() if t is not threading.main_thread()]
    if ("tensorflow" not in sys.modules and all(t.daemon for t in others)
            and "fork" in mp.get_all_start_methods()):
        return mp.get_context("fork")
    return mp.get_context("spawn")


def _process_partition_star(args):
    return process_partition(*args)


def _run_pool(jobs: list[tuple], n: int, bar) -> list[str]:
    """Run ``process_partition`` jobs in ``n`` worker processes; survive workers that die.

    A file that crashes its decoder (a segfault in a native library) kills its
    worker and breaks the pool, which fails every job not finished yet. Those
    jobs are split into one-file jobs and run again in a fresh pool. A round
    that finishes nothing runs its first job alone in a pool of its own: if
    that worker dies too, the file is skipped (``decoder crashed``). Every
    round makes progress, and every other file's work is kept.
    """
    partials: list[str] = []
    pending = list(jobs)
    while pending:
        finished, broken = _pool_round(pending, n, partials, bar)
        if not broken:
            break
        pending = [(files, *job[1:]) for job in broken for files in ([p] for p in job[0])]
        if not finished:
            head = pending.pop(0)
            if _pool_round([head], 1, partials, bar)[1]:
                partials.append(_crash_partial(head))
                bar.update(1)
    return partials


def _pool_round(jobs: list[tuple], n: int, partials: list[str], bar) -> tuple[int, list[tuple]]:
    finished, broken = 0, []
    # Forked workers must not share the parent's bucket connections.
    with ProcessPoolExecutor(min(n, len(jobs)), mp_context=_pool_context(),
                             initializer=storage.reset_clients) as pool:
        futures = {pool.submit(_process_partition_star, job): job for job in jobs}
        for fut in as_completed(futures):
            try:
                partials.append(fut.result())
            except BrokenProcessPool:
                broken.append(futures[fut])
                continue
            finished += 1
            bar.update(len(futures[fut][0]))
    return finished, broken


def _crash_partial(job: tuple) -> str:
    (path,), work_dir, _config, src = job[0], job[1], job[2], job[3]
    record = {"path": path, "relpath": _relpath(path, src), "status": "skipped",
              "reason": "decoder crashed (its worker process died)"}
    tag = hashlib.sha256(("crash\n" + path).encode("utf-8")).hexdigest()[:16]
    out = storage.join(work_dir, "partials", f"partial-{tag}.json")
    storage.write_text_atomic(out, json.dumps({"src": src, "records": [record]}))
    log.warning("worker process died on %s", path)
    return out


# Work folders are named <prefix><pid>-<random> in the temp folder, so a later run
# can tell a dead run's leftovers (its pid is gone) from a live run's folder.
WORK_PREFIX = "wavenet-preprocess-"


def sweep_stale_work_dirs(root: str | None = None) -> list[str]:
    """Remove work folders of preprocess runs that died (SIGKILL, OOM) without cleaning up.

    Returns:
        The folders removed.
    """
    root = root or tempfile.gettempdir()
    removed = []
    for name in sorted(os.listdir(root)):
        pid = name[len(WORK_PREFIX):].split("-", 1)[0] if name.startswith(WORK_PREFIX) else ""
        if pid.isdigit() and int(pid) != os.getpid() and not pid_alive(int(pid)):
            shutil.rmtree(os.path.join(root, name), ignore_errors=True)
            removed.append(os.path.join(root, name))
    if removed:
        log.info("removed %d work folder(s) of dead preprocess runs", len(removed))
    return removed


@contextlib.contextmanager
def _sigterm_as_exit():
    """SIGTERM (a pod's deletion, `timeout`, `kill`) ends the run through ``finally`` blocks.

    Python's default SIGTERM kills the process at once and leaks the work folder;
    SystemExit(143) unwinds it (143 = 128 + SIGTERM, the code a shell reports).
    Only the main thread may set handlers; elsewhere the block runs unchanged.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    owner = os.getpid()

    def handler(signum, frame):
        if os.getpid() != owner:  # a forked pool worker: die as before
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)
        raise SystemExit(128 + signum)

    old = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, old)


def preprocess(src: str, dst: str, config: ExperimentConfig, processes: int | None = None,
               progress: bool = True, wait_s: float = LOCK_WAIT_S) -> Manifest:
    """Turn every audio file under ``src`` into shards and a manifest under ``dst``.

    Re-running into the same ``dst`` only decodes files whose content (sha256)
    is not there yet; shards are rewritten with old and new tracks. Files
    removed from ``src`` stay in ``dst`` (start a fresh ``dst`` to drop them).
    One writer per ``dst`` at a time: a second run decodes its files, then
    waits (up to ``wait_s``) for the first to commit and merges on top of it.

    Args:
        src: folder or ``gs://bucket/prefix``, searched recursively.
        dst: output folder or ``gs://`` prefix.
        config: the experiment config (``audio`` and ``data`` sections).
        processes: worker processes (default ``config.data.processes``; 0 or
            None: one per CPU core; 1: no pool, in this process).
        progress: show a tqdm progress bar.
        wait_s: how long to wait for another writer of ``dst``.

    Returns:
        The manifest (also written to ``dst/manifest.json``; ``uri``: its version file);
        see docs/data.md.

    Raises:
        DataError: ``src`` has no audio files, or none of them is usable.
        Busy: another run kept ``dst`` for ``wait_s`` seconds (exit 138: run again).
        StorageError: ``dst``'s file system is full (nothing changed there).
    """
    storage.require_folder(dst, "output folder")
    files, scores = _list_sources(src)
    if not files:
        raise DataError(f"no audio files ({', '.join(AUDIO_EXTENSIONS)}) under {src}")
    known = frozenset(known_tracks(dst, config))
    n = processes if processes is not None else config.data.processes
    n = n or _cores()
    n = max(1, min(n, len(files)))
    # Several small partitions per worker: balanced load and a live progress bar.
    # Each partition carries its own files' scores: an empty mapping says "no score", so the
    # workers never list SRC again.
    parts = [(part, {p: scores[p] for p in part if p in scores})
             for part in partition(files, n * 8 if n > 1 else len(files))]
    sweep_stale_work_dirs()
    with _sigterm_as_exit():
        return _run(files, parts, n, config, src, known, progress,
                    lambda partials: merge_manifests(partials, dst, config, src=src, wait_s=wait_s))


def _list_sources(src: str) -> tuple[list[str], dict[str, tuple[str, ...]]]:
    """:func:`list_audio` and :func:`find_scores` from one listing of ``src``."""
    listing = _listing(src)
    files = _audio_in(listing)
    return files, find_scores(files, listing)


def _run(files: list[str], parts: list[tuple[list[str], dict]], n: int, config: ExperimentConfig, src: str,
         known: frozenset, progress: bool, merge: Callable[[list[str]], Manifest]) -> Manifest:
    work_dir = tempfile.mkdtemp(prefix=f"{WORK_PREFIX}{os.getpid()}-")
    try:
        bar = tqdm(total=len(files), unit="file", desc="preprocess", disable=not progress)
        partials: list[str] = []
        jobs = [(part, work_dir, config, src, None, known, scores) for part, scores in parts]
        if n == 1:
            for job in jobs:
                partials.append(process_partition(*job))
                bar.update(len(job[0]))
        else:
            partials = _run_pool(jobs, n, bar)
        bar.close()
        return merge(sorted(partials))
    finally:
        shutil.rmtree(work_dir, ignore_errors=True)


def check_dataset(dst: str) -> list[str]:
    """Problems with a preprocessed folder: missing shards or tracks, checksum mismatches.

    Returns:
        One line per problem; empty when every shard the manifest names exists
        with its recorded sha256, and every track's codes exist.
    """
    manifest = read_manifest(dst, missing_ok=True)
    if manifest is None:
        return [f"no {MANIFEST} in {dst}"]
    problems = []
    for s in manifest.shards:
        path = storage.join(dst, s.path)
        if not storage.exists(path):
            problems.append(f"missing shard {path}")
        elif hashlib.sha256(storage.read_bytes(path)).hexdigest() != s.sha256:
            problems.append(f"checksum mismatch {path}")
    for t in manifest.files:
        if not storage.exists(storage.join(dst, t.codes)):
            problems.append(f"missing track codes {storage.join(dst, t.codes)}")
        if t.score is not None and not storage.exists(storage.join(dst, t.score)):
            problems.append(f"missing track score {storage.join(dst, t.score)}")
    return problems
