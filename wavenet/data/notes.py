"""A track's score: its note events, in samples, and what sounds at each sample.

A :class:`Score` is what a MIDI file says about a recording, at the audio's sample
rate: for each note its first sample, the sample after its note-off, its MIDI key
and whether it is a percussion note (General MIDI channel 10, where the key names
a drum: 36 kick, 38 snare, 42 closed hi-hat). The synthesised demo corpus knows
its score (:func:`wavenet.data.demo.synthesize_with_score`).

A WaveNet conditioned on a score (local conditioning, van den Oord et al. 2016,
section 2.5; for music, Hawthorne et al. 2019, "Enabling Factorized Piano Music
Modeling and Generation with the MAESTRO Dataset", which conditions a WaveNet on
piano rolls) reads, at each sample, which notes sound and which have just begun
(:func:`wavenet.model.score_vectors`), from the rows :func:`pack_scores` makes.

Token ids: ``key`` for a pitched note, ``128 + key`` for a percussion note
(:data:`NUM_TOKENS` in all); the model embeds each token sounding, and each
token in its first :data:`ONSET_SECONDS`, with rows of their own.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np

from wavenet.config import SCORE_TOKENS
from wavenet.errors import DataError

__all__ = ["NUM_TOKENS", "ONSET_SECONDS", "NOTES_PER_SECOND", "MAX_MIDI_BYTES", "Score", "crop_notes", "key_hz",
           "midi_bytes", "onset_samples", "pack_scores", "read_midi"]

NUM_TOKENS = SCORE_TOKENS
# A note's "onset" entry is set for this long after it starts: the attack a model has to place.
ONSET_SECONDS = 0.02
# The largest MIDI file read as a score (preprocessing, `generate.score`, a served request's
# score). An hour of dense piano is about 300 kB (10 notes a second, about 8 bytes a note);
# mido holds every message as an object: a 2 MB file of 200,000 notes took 367 MB (tracemalloc
# peak) and 23 s to read on the AMD EPYC of docs/benchmarks.md, so a cap of 1 MiB keeps a
# mistaken or hostile file to about 190 MB and 12 s.
MAX_MIDI_BYTES = 1 << 20
# General MIDI's percussion channel (channel 10, 0-based 9).
PERCUSSION_CHANNEL = 9
# Written files: 120 beats a minute (the MIDI default tempo) at 9,600 ticks a beat, 19,200 ticks
# a second (52 microseconds, under a sample at 16 kHz).
_TEMPO_US, _TICKS_PER_BEAT = 500_000, 9_600
_TICKS_PER_SECOND = _TICKS_PER_BEAT * 1_000_000 // _TEMPO_US


@dataclass(frozen=True)
class Score:
    """Note events at one sample rate (arrays of equal length, one entry per note).

    Attributes:
        start: (N,) int64 first sample of each note.
        end: (N,) int64 sample after the note-off (``end > start``).
        key: (N,) int64 MIDI key, 0-127.
        percussion: (N,) bool, a General MIDI percussion note (channel 10).
    """

    start: np.ndarray
    end: np.ndarray
    key: np.ndarray
    percussion: np.ndarray

    def __post_init__(self):
        n = len(self.start)
        for name in ("end", "key", "percussion"):
            if len(getattr(self, name)) != n:
                raise ValueError(f"Score.{name} has {len(getattr(self, name))} entries, start has "
                                 f"{n}. Received: {name}={getattr(self, name)!r}")
        if n and not (np.all(self.end > self.start) and np.all((self.key >= 0) & (self.key < 128))):
            raise ValueError("every note needs end > start and a key in 0-127. Received: "
                             f"start={self.start!r}, end={self.end!r}, key={self.key!r}")

    @classmethod
    def from_notes(cls, notes: list[tuple[int, int, int, bool]]) -> Score:
        """From ``(start, end, key, percussion)`` tuples, in one order: by start, then
        pitched before percussion, then key, then end."""
        arr = sorted(notes, key=lambda n: (n[0], bool(n[3]), n[2], n[1]))
        return cls(np.array([n[0] for n in arr], np.int64), np.array([n[1] for n in arr], np.int64),
                   np.array([n[2] for n in arr], np.int64), np.array([n[3] for n in arr], bool))

    def __len__(self) -> int:
        return len(self.start)

    @property
    def token(self) -> np.ndarray:
        """(N,) token id of each note: ``key``, or ``128 + key`` for percussion."""
        return self.key + 128 * self.percussion.astype(np.int64)

    @property
    def rows(self) -> np.ndarray:
        """(N, 3) int64 ``(start, end, token)`` rows: how the data folder and the shards hold a score."""
        return np.stack([self.start, self.end, self.token], axis=1).astype(np.int64).reshape(-1, 3)

    @classmethod
    def from_rows(cls, rows: np.ndarray) -> Score:
        """The score of :attr:`rows` (the same order)."""
        rows = np.asarray(rows, np.int64).reshape(-1, 3)
        return cls(rows[:, 0], rows[:, 1], rows[:, 2] % 128, rows[:, 2] >= 128)

    def from_first_note(self, length: int) -> Score:
        """The notes moved so that the first begins at sample 0, cut to ``length``: a MIDI
        file played from its first note (``generate --score``, a served request's score)."""
        return self.shifted(-int(self.start.min()), length) if len(self) else self

    def shifted(self, offset: int, length: int) -> Score:
        """The notes moved by ``offset`` samples and cut to ``[0, length)``; notes outside dropped."""
        start, end = self.start + offset, np.minimum(self.end + offset, length)
        keep = (end > np.maximum(start, 0)) & (start < length)
        return Score(np.maximum(start[keep], 0), end[keep], self.key[keep], self.percussion[keep])


def key_hz(key):
    """The frequency (Hz) of MIDI ``key`` in equal temperament, A4 (key 69) = 440 Hz: for a
    number, a NumPy array or a Keras tensor alike."""
    return 440.0 * 2.0 ** ((key - 69.0) / 12.0)


def onset_samples(sample_rate: int) -> int:
    """:data:`ONSET_SECONDS` in samples at ``sample_rate`` (at least one)."""
    return max(1, int(round(ONSET_SECONDS * sample_rate)))


# The most notes a crop's score holds, per second of the crop (at least MIN_CROP_NOTES): far
# above what music plays (a drummer's sixteenths at 200 bpm and a chord of ten: about 25 a
# second); a crop of a denser score keeps its first notes and drops the rest.
NOTES_PER_SECOND, MIN_CROP_NOTES = 64, 32


def crop_notes(length: int, sample_rate: int) -> int:
    """E, the notes a crop of ``length`` samples carries (:data:`NOTES_PER_SECOND`)."""
    return max(MIN_CROP_NOTES, -(-NOTES_PER_SECOND * int(length) // int(sample_rate)))


def pack_scores(scores: list[Score], max_notes: int | None = None) -> np.ndarray:
    """Scores as one (B, E, 3) int32 array of ``(start, end, token)`` rows, padded with token -1:
    the form a score-conditioned :class:`wavenet.model.WaveNet` reads.

    Args:
        scores: one per stream, in the samples of that stream's codes.
        max_notes: E; default the most notes of any score (at least 1).

    Raises:
        ValueError: a score has more than ``max_notes`` notes.
    """
    e = max([1, *(len(s) for s in scores)]) if max_notes is None else max_notes
    out = np.zeros((len(scores), e, 3), np.int32)
    out[:, :, 2] = -1
    for b, s in enumerate(scores):
        if len(s) > e:
            raise ValueError(f"a score has {len(s)} notes, more than max_notes. Received: max_notes={e}")
        out[b, :len(s)] = s.rows
    return out


def midi_bytes(score: Score, sample_rate: int, velocity: int = 100) -> bytes:
    """A standard MIDI file (type 0) of ``score``, whose samples are at ``sample_rate``.

    Pitched notes on channel 1, percussion on channel 10; every note at ``velocity``
    (a :class:`Score` has none). :func:`read_midi` at the same rate gives ``score``
    back to within a sample (ticks are 52 microseconds).
    """
    import mido

    events = []  # (tick, 0 note-off first / 1 note-on, message)
    for s, e, k, p in zip(score.start, score.end, score.key, score.percussion):
        ch = PERCUSSION_CHANNEL if p else 0
        on, off = (round(int(x) * _TICKS_PER_SECOND / sample_rate) for x in (s, e))
        events.append((on, 1, mido.Message("note_on", channel=ch, note=int(k), velocity=velocity)))
        events.append((max(off, on + 1), 0, mido.Message("note_off", channel=ch, note=int(k), velocity=0)))
    track = mido.MidiTrack([mido.MetaMessage("set_tempo", tempo=_TEMPO_US, time=0)])
    now = 0
    for tick, _, msg in sorted(events, key=lambda x: (x[0], x[1])):
        track.append(msg.copy(time=tick - now))
        now = tick
    buf = io.BytesIO()
    mido.MidiFile(type=0, ticks_per_beat=_TICKS_PER_BEAT, tracks=[track]).save(file=buf)
    return buf.getvalue()


def read_midi(data: bytes, sample_rate: int, name: str = "MIDI file") -> Score:
    """The notes of a standard MIDI file (any type, any tempo map) in samples at ``sample_rate``.

    A note-off (or a note-on at velocity 0) ends the earliest sounding note of its channel
    and key; notes still sounding at the end of the file end there. Channel 10 is percussion.

    Raises:
        DataError: ``data`` is not a MIDI file mido can read (the message names ``name``),
            or a key is outside 0-127.
    """
    import mido

    try:
        mid = mido.MidiFile(file=io.BytesIO(data))
        messages = list(mid)  # merged tracks, each message's time the delta in seconds
    except (OSError, EOFError, ValueError, KeyError, IndexError, TypeError) as e:
        raise DataError(f"{name}: not a readable MIDI file ({e})") from None
    now = 0.0
    open_: dict[tuple[int, int], list[float]] = {}
    notes: list[tuple[int, int, int, bool]] = []

    def close(ch: int, key: int, start: float, end: float) -> None:
        a = int(round(start * sample_rate))
        notes.append((a, max(a + 1, int(round(end * sample_rate))), key, ch == PERCUSSION_CHANNEL))

    for msg in messages:
        now += msg.time
        if msg.type not in ("note_on", "note_off"):
            continue
        key = (msg.channel, msg.note)
        if msg.type == "note_on" and msg.velocity > 0:
            open_.setdefault(key, []).append(now)
        elif open_.get(key):
            close(*key, open_[key].pop(0), now)
    for (ch, k), starts in open_.items():
        for start in starts:
            close(ch, k, start, max(now, start))
    return Score.from_notes(notes)
