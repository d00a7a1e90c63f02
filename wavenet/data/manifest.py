"""The manifest of a preprocessed data folder: typed, versioned, one reader and one writer.

A data folder (local or ``gs://``) holds ``manifest.json``, the shards it names
(``train/`` and ``validation/``) and every track's codes (``tracks/``).
Every manifest ever committed is also kept, immutable, as
``manifests/<version>.json`` (the newest :data:`KEEP_VERSIONS`); ``manifest.json``
is a copy of the newest. A *data reference* is the folder (read its live
``manifest.json``) or one version file in it (``DATA/manifests/<version>.json``:
exactly the data one run wrote, whatever later runs commit).
:func:`read_manifest` is the only reader and checks the ``version`` field;
:func:`commit_manifest` is the only writer, called by
:func:`wavenet.data.shards.update_dataset`. Everything else works on :class:`Manifest`.

The JSON keys are documented in docs/data.md ("The manifest"); a reader of another
``version`` refuses the file with one line instead of misreading it.
"""

from __future__ import annotations

import calendar
import dataclasses
import hashlib
import json
import os
import posixpath
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any

from wavenet.config import AudioConfig, DataConfig, ExperimentConfig, ModelConfig
from wavenet.edges import storage
from wavenet.errors import ConfigError, DataError

__all__ = [
    "MANIFEST",
    "MANIFEST_VERSION",
    "SPLITS",
    "TRACKS",
    "Shard",
    "Part",
    "Track",
    "Skipped",
    "CodeStats",
    "Summary",
    "Manifest",
    "split_ranges",
    "check_digest",
    "check_relpath",
    "file_sha256",
    "check_shard_file",
    "check_shards",
    "check_scores",
    "track_codes_path",
    "track_score_path",
    "track_id",
    "shards_version",
    "read_manifest",
    "data_root",
    "manifest_file",
    "commit_manifest",
    "read_live",
    "version_files",
    "KEEP_VERSIONS",
]

MANIFEST = "manifest.json"
MANIFESTS = "manifests"
# Manifest versions kept (and every file they name): a run pinned to its version keeps
# its data while up to this many later runs commit theirs.
KEEP_VERSIONS = 10
# What preprocess writes. 2: tracks may have a score (score, score_sha256, notes,
# audio_sha256; Summary.scored_tracks); a version 1 manifest is a version 2 one without scores,
# so both are read. An older wavenet refuses a version 2 manifest by its version, in one line.
MANIFEST_VERSION = 2
READABLE_VERSIONS = (1, 2)
SPLITS = ("train", "validation")
TRACKS = "tracks"


@dataclass(frozen=True)
class Shard:
    """One TFRecord file of examples (track chunks) of one split."""

    path: str  # relative to the data folder, e.g. train/shard-00000-of-00004-<sha[:12]>.tfrecord
    split: str
    examples: int
    samples: int  # codes in all its examples
    sha256: str


@dataclass(frozen=True)
class Part:
    """A sample range ``[start, end)`` of a track in one split, cut into ``chunks`` examples."""

    split: str
    start: int
    end: int
    chunks: int


@dataclass(frozen=True)
class Track:
    """One source file that became codes, and where its chunks went.

    ``sha256`` is the track's id, the key of everything about it (its files, the
    "unchanged" check of a later run): the sha256 of the audio file's bytes for a
    track without a score, and for a track with a score (a MIDI file beside it)
    the sha256 of ``"<audio sha256>:<score_sha256>"`` (:func:`track_id`), so that
    a later run sees a changed score. ``audio_sha256`` keeps the audio's own sha256
    for a scored track: the same audio is one track whatever its score (a copy is
    skipped, a new score of the same file replaces its entry).
    """

    path: str  # the source file
    relpath: str  # relative to SRC (decides the split)
    sha256: str  # the track's id: its audio's sha256, or track_id(audio, score) with a score
    label: str  # the parent folder's name
    label_id: int  # index in Manifest.labels
    split: str  # train, validation, or tail (head in train, tail from validation_start in validation)
    sample_rate_in: int
    channels_in: int
    format: str
    subtype: str
    duration_in_s: float  # decoded
    duration_out_s: float  # after resampling and trimming
    samples: int  # codes
    codes: str  # tracks/<sha256>-<audio>.npy, relative to the data folder
    chunks: int  # examples the track was cut into
    shards: tuple[str, ...]  # paths of the shards holding its chunks
    validation_start: int | None = None  # where a held-out tail starts (split "tail")
    parts: tuple[Part, ...] = ()  # its ranges per split, as written to the shards
    # Its notes, when a MIDI file lay beside the audio: (notes, 3) int64 rows (start, end, token)
    # in the samples of its codes, at tracks/<sha256>-<audio>.score.npy (relative to the data folder).
    score: str | None = None
    score_sha256: str | None = None  # of the MIDI file's bytes
    notes: int = 0  # rows in the score file
    audio_sha256: str | None = None  # of the audio file's bytes, for a scored track (else sha256 is)

    @property
    def audio_id(self) -> str:
        """The sha256 of the track's audio file."""
        return self.audio_sha256 or self.sha256

    def ranges(self) -> list[tuple[str, int, int]]:
        """``(split, start, end)`` sample ranges of the track (:func:`split_ranges`)."""
        return split_ranges(self.split, self.samples, self.validation_start, self.relpath)


@dataclass(frozen=True)
class Skipped:
    """A file that was not used, and the one-line reason."""

    path: str
    reason: str


@dataclass(frozen=True)
class CodeStats:
    """Code statistics of a split."""

    histogram: tuple[int, ...]  # count of each code
    samples: int
    entropy_bits: float | None  # of the unigram distribution
    mean_code: float | None


@dataclass(frozen=True)
class Summary:
    """What a preprocessing run did, in numbers."""

    processed: int  # decoded in this run
    unchanged: int  # already in the folder
    skipped: int
    tracks: int
    labels: int
    train_tracks: int
    validation_tracks: int
    train_samples: int
    validation_samples: int
    train_seconds: float
    validation_seconds: float
    merge_seconds: float
    tail_tracks: int = 0  # tracks with a held-out tail (counted in both splits' tracks)
    labels_without_validation: tuple[str, ...] = ()
    scored_tracks: int = 0  # tracks with a score (notes in their examples)


@dataclass(frozen=True)
class Manifest:
    """Everything a data folder holds, as :func:`read_manifest` found it.

    ``sha256`` is the hash of the manifest file's bytes as read (empty for a
    manifest not read from a file); it is not part of the JSON.
    """

    version: int
    created: str  # UTC, ISO 8601
    src: str | None
    audio: AudioConfig
    data: DataConfig
    crop_length: int
    labels: tuple[str, ...]  # the label vocabulary (index = label id)
    files: tuple[Track, ...]
    skipped: tuple[Skipped, ...]
    shards: tuple[Shard, ...]
    code_stats: dict[str, CodeStats]  # per split
    summary: Summary
    sha256: str = field(default="", compare=False)
    uri: str = field(default="", compare=False)  # the version file it was read from or committed as

    @property
    def scored(self) -> bool:
        """Whether a track has a score (a MIDI file lay beside it)."""
        return any(t.score for t in self.files)

    def shards_of(self, split: str) -> list[Shard]:
        """The shards of ``split`` that hold examples, in manifest order."""
        return [s for s in self.shards if s.split == split and s.examples > 0]

    def longest_example(self, split: str) -> int:
        """Codes in the longest example of ``split`` (each part is cut into near-equal chunks)."""
        lengths = [-(-(p.end - p.start) // p.chunks) for t in self.files for p in t.parts
                   if p.split == split and p.chunks]
        return max(lengths, default=0)

    @property
    def data_version(self) -> str:
        """Short content version: identical shards give the same version on any machine."""
        return shards_version(self.shards)

    def to_dict(self) -> dict[str, Any]:
        """The JSON form (docs/data.md, "The manifest")."""
        d = {f.name: getattr(self, f.name) for f in fields(self) if f.name not in ("sha256", "uri")}
        d["audio"], d["data"] = dataclasses.asdict(self.audio), dataclasses.asdict(self.data)
        d["labels"] = list(self.labels)
        d["files"] = [dict(dataclasses.asdict(t), shards=list(t.shards),
                           parts=[dataclasses.asdict(p) for p in t.parts]) for t in self.files]
        d["skipped"] = [dataclasses.asdict(s) for s in self.skipped]
        d["shards"] = [dataclasses.asdict(s) for s in self.shards]
        d["code_stats"] = {k: dict(dataclasses.asdict(v), histogram=list(v.histogram))
                           for k, v in self.code_stats.items()}
        d["summary"] = dict(dataclasses.asdict(self.summary),
                            labels_without_validation=list(self.summary.labels_without_validation))
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], where: str = "manifest", sha256: str = "",
                  uri: str = "") -> Manifest:
        """Check and type a manifest's JSON form; a DataError names ``where`` and the field."""
        if not isinstance(d, Mapping) or not isinstance(d.get("shards"), list):
            raise DataError(f"{where} has no 'shards' list: not a manifest written by "
                            "`wavenet preprocess`")
        version = d.get("version")
        if version not in READABLE_VERSIONS:
            newer = isinstance(version, int) and not isinstance(version, bool) and version > MANIFEST_VERSION
            raise DataError(f"{where} is a version {version!r} manifest; this wavenet reads versions "
                            f"{READABLE_VERSIONS[0]} to {MANIFEST_VERSION}: "
                            + ("upgrade wavenet-pipelines to read it" if newer
                               else "preprocess into a fresh folder"))
        try:
            m = cls(
                version=d["version"], created=d["created"], src=d["src"],
                audio=AudioConfig(**d["audio"]), data=DataConfig(**d["data"]),
                crop_length=int(d["crop_length"]), labels=tuple(d["labels"]),
                files=tuple(Track(**dict(t, shards=tuple(t["shards"]),
                                         parts=tuple(Part(**p) for p in t.get("parts", ()))))
                            for t in d["files"]),
                skipped=tuple(Skipped(**s) for s in d["skipped"]),
                shards=tuple(Shard(**s) for s in d["shards"]),
                code_stats={k: CodeStats(**dict(v, histogram=tuple(v["histogram"])))
                            for k, v in d["code_stats"].items()},
                summary=Summary(**dict(d["summary"], labels_without_validation=tuple(
                    d["summary"].get("labels_without_validation", ())))), sha256=sha256, uri=uri)
        except (KeyError, TypeError, ValueError, ConfigError) as e:
            raise DataError(f"{where} is not a complete version {version} manifest "
                            f"({type(e).__name__}: {e}): preprocess into a fresh folder") from None
        return _check_paths(m, where)


_HEX_DIGEST = re.compile("[0-9a-f]{64}")


def check_digest(value: Any, field_name: str, where: str = "manifest") -> str:
    """``value`` when it is a sha256 hex digest (64 lower-case hex digits), else a one-line DataError.

    Digests name files (the ``gs://`` shard cache, track codes), so anything
    else (``../x``, ``/etc``) must never reach a path.
    """
    if not isinstance(value, str) or not _HEX_DIGEST.fullmatch(value):
        raise DataError(f"{where}: {field_name} must be a sha256 hex digest (64 characters 0-9a-f). "
                        f"Received: {str(value)[:80]!r}")
    return value


def check_relpath(value: Any, field_name: str, where: str = "manifest") -> str:
    """``value`` when it is a relative path that stays inside the data folder, else a one-line DataError."""
    ok = (isinstance(value, str) and value and "://" not in value and "\\" not in value
          and not value.startswith("/") and ".." not in value.split("/")
          and posixpath.normpath(value) == value)
    if not ok:
        raise DataError(f"{where}: {field_name} must be a relative path inside the data folder "
                        f"(no '/', '..' or URI). Received: {str(value)[:80]!r}")
    return value


def _check_paths(m: Manifest, where: str) -> Manifest:
    """Every path and digest a manifest names, checked before anything opens or names a file."""
    for i, s in enumerate(m.shards):
        check_relpath(s.path, f"shards[{i}].path", where)
        check_digest(s.sha256, f"shards[{i}].sha256", where)
    for i, t in enumerate(m.files):
        check_relpath(t.codes, f"files[{i}].codes", where)
        check_digest(t.sha256, f"files[{i}].sha256", where)
        if t.score is not None:
            check_relpath(t.score, f"files[{i}].score", where)
        if t.score_sha256 is not None:
            check_digest(t.score_sha256, f"files[{i}].score_sha256", where)
        if t.audio_sha256 is not None:
            check_digest(t.audio_sha256, f"files[{i}].audio_sha256", where)
        for j, path in enumerate(t.shards):
            check_relpath(path, f"files[{i}].shards[{j}]", where)
    return m


def file_sha256(path: str) -> str:
    """The sha256 hex digest of a local file, read in 1 MiB blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


# (path, size, mtime_ns) -> sha256: a local shard is hashed once per process
# unless it changes (a rewrite changes its mtime or size).
_HASHED: dict[tuple[str, int, int], str] = {}


def _cached_sha256(path: str) -> str:
    st = os.stat(path)
    key = (os.path.abspath(path), st.st_size, st.st_mtime_ns)
    if key not in _HASHED:
        _HASHED[key] = file_sha256(path)
    return _HASHED[key]


def check_shard_file(path: str, shard: Shard) -> None:
    """One-line DataError naming local ``path`` when it is missing or its sha256 is not the manifest's."""
    if not os.path.isfile(path):
        raise DataError(f"{path}: shard missing (the manifest lists it): re-run `wavenet preprocess`")
    got = _cached_sha256(path)
    if got != shard.sha256:
        raise DataError(f"{path}: sha256 mismatch (manifest says {shard.sha256}, file has {got}): "
                        f"re-run `wavenet preprocess`")


def check_audio(data_dir: str, manifest: Manifest, audio: AudioConfig, prefix: str = "audio") -> None:
    """One-line DataError when ``audio`` is not the audio the data's codes were made with.

    Codes made at one sample rate or quantisation and trained (or scored) under
    another give a model that claims what it never saw.
    """
    for name, value, made in audio_differences(manifest, audio):
        raise DataError(f"{prefix}.{name}={value} but {manifest_file(data_dir)} was made with "
                        f"audio.{name}={made}: use --set audio.{name}={made} or "
                        f"preprocess again with {value}")


def check_scores(model: ModelConfig, manifest: Manifest, what: str = "model", data_dir: str = "DATA") -> None:
    """One-line DataError when ``model`` plays a score and no track of the data has one.

    Such a model would learn (or be scored) hearing silence where its notes should
    be. A data folder with some scored tracks is fine: the others are heard without.
    """
    if model.scored and not manifest.scored:
        raise DataError(f"{what}: model.score_channels={model.score_channels} plays a score, but no "
                        f"track of {data_dir} has one: put each track's MIDI file beside it "
                        "(TRACK.mid) and preprocess again, or use model.score_channels=0")


def audio_differences(manifest: Manifest, audio: AudioConfig) -> list[tuple[str, Any, Any]]:
    """``(field, audio's value, the data's value)`` for each audio setting where ``audio``
    differs from the one the data's codes were made with; empty when they match."""
    made = dataclasses.asdict(manifest.audio)
    return [(name, value, made.get(name)) for name, value in dataclasses.asdict(audio).items()
            if made.get(name) != value]


def check_shards(data_dir: str, shards: list[Shard] | tuple[Shard, ...]) -> None:
    """Check shards before a run starts: local ones by sha256, bucket ones by existence.

    Bucket shards are hashed where they are fetched (:mod:`wavenet.data.dataset`'s cache).

    Raises:
        DataError: a missing shard or a sha256 mismatch, naming the file.
    """
    root = data_root(data_dir)
    for s in shards:
        path = storage.join(root, s.path)
        if storage.is_gcs(root):
            if not storage.exists(path):
                raise DataError(f"{path}: shard missing (the manifest lists it): "
                                f"re-run `wavenet preprocess`")
        else:
            check_shard_file(path, s)


def split_ranges(split: str, samples: int, validation_start: int | None = None,
                 where: str = "track") -> list[tuple[str, int, int]]:
    """``(split, start, end)`` sample ranges of a track: one for a whole track, head and tail for a ``tail``.

    A track with a held-out tail (see :func:`wavenet.data.preprocess.assign_splits`)
    trains on ``[0, validation_start)`` and validates on the rest.
    """
    if split != "tail":
        return [(split, 0, samples)]
    if validation_start is None or not 0 < validation_start < samples:
        raise DataError(f"{where}: split 'tail' needs 0 < validation_start < samples. "
                        f"Received: validation_start={validation_start!r}, samples={samples}")
    return [("train", 0, validation_start), ("validation", validation_start, samples)]


def track_codes_path(digest: str, config: ExperimentConfig) -> str:
    """``tracks/<sha256>-<audio>.npy``: where a track's codes live, relative to a data folder.

    ``<audio>`` is 8 hex digits of a hash of the audio settings, so codes made
    with other settings never collide.
    """
    audio = json.dumps(config.to_dict()["audio"], sort_keys=True)
    return f"{TRACKS}/{digest}-{hashlib.sha256(audio.encode()).hexdigest()[:8]}.npy"


def track_score_path(digest: str, config: ExperimentConfig) -> str:
    """``tracks/<sha256>-<audio>.score.npy``: a scored track's notes, beside its codes."""
    return track_codes_path(digest, config)[:-len(".npy")] + ".score.npy"


def track_id(audio_sha256: str, score_sha256: str | None = None) -> str:
    """A track's id (:attr:`Track.sha256`): the audio's sha256 alone, or with a score
    the sha256 of the ASCII text ``"<audio sha256>:<score sha256>"``."""
    if score_sha256 is None:
        return audio_sha256
    return hashlib.sha256(f"{audio_sha256}:{score_sha256}".encode("ascii")).hexdigest()


def shards_version(shards: tuple[Shard, ...] | list[Shard]) -> str:
    """A digest of the shards' paths, sha256s and example counts (10 hex digits)."""
    key = sorted((s.path, s.sha256, s.examples) for s in shards)
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:10]


def data_root(data: str) -> str:
    """The data folder of a data reference: ``data`` itself, or the folder a version file is in.

    ``DATA/manifests/<version>.json`` -> ``DATA``; anything else is a folder.
    """
    head, name = data.rstrip("/").rsplit("/", 1) if "/" in data.rstrip("/") else ("", data)
    if name.endswith(".json") and head.rsplit("/", 1)[-1] == MANIFESTS:
        return head.rsplit("/", 1)[0] if "/" in head else "."
    return data


def manifest_file(data: str) -> str:
    """The manifest a data reference names: the version file itself, or ``DATA/manifest.json``."""
    return data if data_root(data) != data else storage.join(data, MANIFEST)


def read_manifest(data_dir: str, *, missing_ok: bool = False) -> Manifest | None:
    """The manifest of a data reference (local or ``gs://``), checked and typed.

    Args:
        data_dir: the folder (its live ``manifest.json``), or one of its version
            files ``DATA/manifests/<version>.json`` (that version, pinned).
        missing_ok: return None when there is no manifest (an empty output folder).

    Raises:
        DataError: no manifest (unless ``missing_ok``), not JSON, another version,
            or a field missing; the message names the file.
    """
    path = manifest_file(data_dir)
    raw, _ = storage.read_bytes_generation(path)
    if raw is None:
        if missing_ok:
            return None
        if path != storage.join(data_dir, MANIFEST):
            raise DataError(f"{path} does not exist (the manifest version was removed: more than "
                            f"{KEEP_VERSIONS} later runs committed): pass the folder instead")
        raise DataError(f"no {MANIFEST} in {data_dir}: run `wavenet preprocess` first")
    return _parse(raw, path)


def _parse(raw: bytes, path: str) -> Manifest:
    try:
        d = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DataError(f"{path} is not valid JSON: {e}") from None
    return Manifest.from_dict(d, where=path, sha256=hashlib.sha256(raw).hexdigest(), uri=path)


def read_live(data_dir: str) -> tuple[Manifest | None, int]:
    """The live manifest of a folder and its GCS generation (0: absent, or a local file)."""
    path = storage.join(data_dir, MANIFEST)
    raw, generation = storage.read_bytes_generation(path)
    return (_parse(raw, path) if raw is not None else None), generation


def version_files(data_dir: str) -> list[str]:
    """The folder's manifest version files, oldest first (names start with a UTC time)."""
    return [p for p in storage.list_files(storage.join(data_dir, MANIFESTS))
            if p.endswith(".json") and not p.rsplit("/", 1)[-1].startswith(".")]


def _stamp(ns: int) -> str:
    return time.strftime("%Y%m%dT%H%M%S", time.gmtime(ns // 10**9)) + f"{ns % 10**9:09d}Z"


def _version_stamp(data_dir: str) -> str:
    """A UTC time that sorts after every version already in the folder.

    One clock reading for seconds and nanoseconds (two readings straddle a second
    boundary: ``12:00:00`` + ``.000001`` would sort before ``12:00:00.999``), and
    never at or before the newest existing name, whose clock may run ahead of ours
    (another machine's): the order of the names is the order of the commits.
    """
    ns = time.time_ns()
    newest = version_files(data_dir)[-1:]
    if newest:
        last = newest[0].rsplit("/", 1)[-1].split("-", 1)[0]
        try:
            secs = calendar.timegm(time.strptime(last[:15], "%Y%m%dT%H%M%S"))
            ns = max(ns, secs * 10**9 + int(last[15:24]) + 1)
        except ValueError:
            pass  # a name of another form: it sorts where it sorts
    return _stamp(ns)


def commit_manifest(data_dir: str, manifest: Manifest, generation: int) -> Manifest | None:
    """Write ``manifest`` as a new version and make it the folder's live ``manifest.json``.

    The version file ``manifests/<UTC time>-<sha256[:12]>.json`` is written
    first, then ``manifest.json`` atomically: locally under the folder's lock
    (:func:`wavenet.edges.storage.folder_lock`); on ``gs://`` only if its generation is
    still ``generation`` (compare-and-swap), so of two writers that read the same
    manifest, one commits and the other learns it lost.

    Returns:
        The manifest with ``uri`` (its version file) and ``sha256`` set, or None when
        another writer committed first (the version file is removed again).
    """
    raw = json.dumps(manifest.to_dict(), indent=1).encode("utf-8")
    sha = hashlib.sha256(raw).hexdigest()
    version = storage.join(data_dir, MANIFESTS, f"{_version_stamp(data_dir)}-{sha[:12]}.json")
    storage.write_bytes_atomic(version, raw)
    live = storage.join(data_dir, MANIFEST)
    try:
        if storage.is_gcs(data_dir):
            if not storage.write_bytes_if_generation(live, raw, generation):
                storage.remove(version)
                return None
        else:
            storage.write_bytes_atomic(live, raw)
    except BaseException:
        storage.remove(version)
        raise
    return dataclasses.replace(manifest, sha256=sha, uri=version)
