"""A small deterministic corpus of synthesised music in three "genres".

``make_demo_corpus`` writes one folder per genre (the folder name is the
label preprocessing gives its tracks):

- ``strings``: plucked-string arpeggios over a I-V-vi-IV progression in a
  major key (decaying harmonics, brighter at the attack), WAV 16-bit.
- ``organ``: sustained organ chords (drawbar-like harmonics 1, 2, 3, 4, 6, 8)
  with a slow vibrato melody on top, FLAC 16-bit.
- ``drums``: kick, snare and hi-hat patterns over a plucked bass line in a
  minor pentatonic scale, WAV 16-bit.

Everything is vectorised NumPy (one array operation per note), seeded from
``(seed, genre, track)``, so the same arguments give byte-identical files.
:func:`synthesize_with_score` also returns what was played, as a
:class:`wavenet.data.notes.Score` (drums as General MIDI percussion keys).
OGG is not used: libsndfile gives every Ogg stream a random serial number,
so its bytes differ from run to run.
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass

import numpy as np
import soundfile as sf

from wavenet.data.notes import Score, key_hz, midi_bytes
from wavenet.edges import storage

__all__ = ["GENRES", "make_demo_corpus", "synthesize", "synthesize_with_score"]

GENRES = ("strings", "organ", "drums")
_FORMATS = {"strings": ("wav", "WAV", "PCM_16"), "organ": ("flac", "FLAC", "PCM_16"),
            "drums": ("wav", "WAV", "PCM_16")}
# Tracks are about this long; a genre's seconds are split into equal tracks.
TRACK_SECONDS = 20.0
MAJOR = (0, 2, 4, 5, 7, 9, 11)
MINOR_PENTATONIC = (0, 3, 5, 7, 10)
# General MIDI percussion keys (channel 10) of the drum kit's three sounds.
KICK, SNARE, CLOSED_HAT = 36, 38, 42


@dataclass(frozen=True)
class _Timbre:
    """How a note sounds: harmonic amplitudes under an attack/decay/release envelope.

    Attributes:
        harmonics: amplitude of the fundamental and each overtone.
        decay: exponential decay rate of the envelope (1/s).
        attack: seconds to full level.
        release: seconds to silence after the note's duration.
        vibrato: phase modulation depth (radians) at 5 Hz.
        bright_decay: extra decay rate per harmonic above the fundamental (1/s).
    """

    harmonics: tuple[float, ...]
    decay: float
    attack: float = 0.005
    release: float = 0.05
    vibrato: float = 0.0
    bright_decay: float = 0.0


# A played note: (first sample, sample after the note-off, MIDI key, percussion).
_Note = tuple[int, int, int, bool]


def _add_note(out: np.ndarray, sr: int, onset: float, dur: float, key: int, amp: float,
              timbre: _Timbre, notes: list[_Note]) -> None:
    """Add one note of MIDI ``key`` (sum of harmonics under an attack/decay/release envelope)
    into ``out``, and append it to ``notes``."""
    harmonics, decay, attack = timbre.harmonics, timbre.decay, timbre.attack
    release, vibrato, bright_decay = timbre.release, timbre.vibrato, timbre.bright_decay
    freq = key_hz(key)
    start = int(onset * sr)
    n = min(int((dur + release) * sr), out.size - start)
    if n <= 0:
        return
    notes.append((start, start + max(1, int(dur * sr)), key, False))
    t = np.arange(n) / sr
    env = np.minimum(1.0, t / attack) * np.exp(-decay * t)
    env *= np.clip((dur + release - t) / release, 0.0, 1.0)
    phase = 2 * np.pi * freq * t
    if vibrato:
        phase = phase + vibrato * np.sin(2 * np.pi * 5.0 * t)
    tone = np.zeros(n)
    for k, a in enumerate(harmonics, start=1):
        if a and k * freq < sr / 2:
            # Higher harmonics die away faster: a plucked string dulls as it rings.
            tone += a * np.sin(k * phase) * (np.exp(-bright_decay * (k - 1) * t) if bright_decay else 1.0)
    out[start:start + n] += amp * env * tone


def _strings(rng: np.random.Generator, seconds: float, sr: int, notes: list[_Note]) -> np.ndarray:
    out = np.zeros(int(seconds * sr))
    tonic = 48 + int(rng.integers(0, 12))
    beat = 60.0 / rng.uniform(96, 132)
    progression = (0, 4, 5, 3)  # scale degrees of I, V, vi, IV
    pattern = (0, 1, 2, 1, 0, 2, 1, 2)  # chord-tone order of the arpeggio
    step, i = beat / 2, 0
    while i * step < seconds:
        bar = int(i // 8)
        degree = progression[bar % 4]
        chord = [degree, degree + 2, degree + 4]
        d = chord[pattern[i % 8]]
        midi = tonic + 12 * (d // 7) + MAJOR[d % 7] + (12 if rng.random() < 0.2 else 0)
        _add_note(out, sr, i * step, step * 1.8, midi, rng.uniform(0.5, 0.8),
                  _Timbre((1.0, 0.6, 0.35, 0.25, 0.15, 0.1), decay=3.0, attack=0.002, bright_decay=2.0),
                  notes)
        if i % 8 == 0:  # the chord's root an octave down, held for the bar
            root = tonic - 12 + MAJOR[degree % 7]
            _add_note(out, sr, i * step, 8 * step, root, 0.5, _Timbre((1.0, 0.4, 0.2), decay=0.8), notes)
        i += 1
    return out


def _organ(rng: np.random.Generator, seconds: float, sr: int, notes: list[_Note]) -> np.ndarray:
    out = np.zeros(int(seconds * sr))
    tonic = 53 + int(rng.integers(0, 7))
    bar = 4 * 60.0 / rng.uniform(60, 80)
    drawbars = (1.0, 0.8, 0.5, 0.6, 0.0, 0.3, 0.0, 0.25)
    progression = (0, 3, 4, 0, 5, 3, 4, 4)
    for b in range(math.ceil(seconds / bar)):
        degree = progression[b % len(progression)]
        for d in (degree, degree + 2, degree + 4):
            midi = tonic - 12 + 12 * (d // 7) + MAJOR[d % 7]
            _add_note(out, sr, b * bar, bar, midi, 0.25,
                      _Timbre(drawbars, decay=0.1, attack=0.08, release=0.15), notes)
        for half in range(2):  # a slow melody: two notes per bar, chord tones or steps
            d = degree + int(rng.choice((0, 2, 4, 1, 3)))
            midi = tonic + 12 + 12 * (d // 7) + MAJOR[d % 7]
            _add_note(out, sr, b * bar + half * bar / 2, bar / 2, midi, 0.35,
                      _Timbre((1.0, 0.3, 0.1), decay=0.3, attack=0.04, release=0.1,
                              vibrato=0.004 * key_hz(midi) / 5), notes)
    return out


def _drums(rng: np.random.Generator, seconds: float, sr: int, notes: list[_Note]) -> np.ndarray:
    n = int(seconds * sr)
    out = np.zeros(n)
    step = 60.0 / rng.uniform(90, 120) / 4  # sixteenth notes
    tonic = 36 + int(rng.integers(0, 8))
    kick_pattern = (1, 0, 0, 0, 0, 0, 1, 0, 1, 0, 0, 0, 0, 0, 0, 0)
    snare_pattern = (0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 1)
    for i in range(math.ceil(seconds / step)):
        start = int(i * step * sr)
        k = i % 16
        if kick_pattern[k]:  # a sine sweeping 120 -> 45 Hz, fast decay
            m = min(int(0.35 * sr), n - start)
            t = np.arange(m) / sr
            freq = 45 + 75 * np.exp(-t * 25)
            out[start:start + m] += 0.9 * np.sin(2 * np.pi * np.cumsum(freq) / sr) * np.exp(-t * 9)
            if m > 0:
                notes.append((start, start + m, KICK, True))
        if snare_pattern[k]:  # a noise burst plus a 185 Hz body
            m = min(int(0.2 * sr), n - start)
            t = np.arange(m) / sr
            noise = rng.standard_normal(m)
            out[start:start + m] += (0.35 * noise * np.exp(-t * 22)
                                     + 0.3 * np.sin(2 * np.pi * 185 * t) * np.exp(-t * 30))
            if m > 0:
                notes.append((start, start + m, SNARE, True))
        # Hi-hat on every eighth: differenced noise (high-passed), very short.
        if k % 2 == 0:
            m = min(int(0.05 * sr), n - start)
            t = np.arange(m + 1) / sr
            hat = np.diff(rng.standard_normal(m + 1) * np.exp(-t * 80))
            out[start:start + m] += 0.12 * (1.3 if k % 4 == 2 else 1.0) * hat
            if m > 0:
                notes.append((start, start + m, CLOSED_HAT, True))
        if k in (0, 3, 6, 10, 12) and rng.random() < 0.9:
            midi = tonic + MINOR_PENTATONIC[int(rng.integers(0, 5))]
            _add_note(out, sr, i * step, step * 2.5, midi, 0.45,
                      _Timbre((1.0, 0.5, 0.33, 0.25, 0.2), decay=4.0, attack=0.003, bright_decay=3.0),
                      notes)
    return out


_SYNTHS = {"strings": _strings, "organ": _organ, "drums": _drums}


def synthesize(genre: str, seconds: float, seed: int = 0, track: int = 0,
               sample_rate: int = 22050) -> np.ndarray:
    """One deterministic track of ``genre``.

    Args:
        genre: one of :data:`GENRES`.
        seconds: length.
        seed: corpus seed; with ``genre`` and ``track`` it seeds the generator.
        track: index of the track within the genre.
        sample_rate: samples per second.

    Returns:
        float32 mono audio in [-0.9, 0.9], shape (round(seconds * sample_rate),),
        with 0.2 s of near silence at each end (so trimming has work to do).
    """
    return synthesize_with_score(genre, seconds, seed, track, sample_rate)[0]


def synthesize_with_score(genre: str, seconds: float, seed: int = 0, track: int = 0,
                          sample_rate: int = 22050) -> tuple[np.ndarray, Score]:
    """:func:`synthesize`'s track and the notes it plays, in samples of the track.

    Returns:
        ``(audio, score)``: the audio :func:`synthesize` returns for the same
        arguments, and its :class:`~wavenet.data.notes.Score` (the drums' kick, snare
        and hi-hat as percussion keys 36, 38 and 42).
    """
    if genre not in _SYNTHS:
        raise ValueError(f"unknown genre {genre!r}; known: {', '.join(GENRES)}")
    rng = np.random.default_rng([seed, GENRES.index(genre), track])
    pad = min(0.2, seconds / 10)
    notes: list[_Note] = []
    body = _SYNTHS[genre](rng, seconds - 2 * pad, sample_rate, notes)
    fade = min(body.size // 4, int(0.02 * sample_rate))
    if fade:
        ramp = np.linspace(0.0, 1.0, fade)
        body[:fade] *= ramp
        body[-fade:] *= ramp[::-1]
    peak = np.max(np.abs(body)) or 1.0
    x = np.zeros(int(round(seconds * sample_rate)))
    start = int(pad * sample_rate)
    m = min(body.size, x.size - start)
    x[start:start + m] = 0.9 * body[:m] / peak
    score = Score.from_notes(notes).shifted(0, m).shifted(start, x.size)
    return x.astype(np.float32), score


def make_demo_corpus(dst: str, seconds_per_genre: float = 60.0, seed: int = 0,
                     sample_rate: int = 22050, genres: tuple[str, ...] = GENRES,
                     first_track: int = 0) -> list[str]:
    """Write the demo corpus under ``dst`` (a folder or ``gs://`` prefix).

    Args:
        dst: output folder; ``dst/<genre>/<genre>-NN.<ext>`` per track.
        seconds_per_genre: audio per genre, split into tracks of about
            :data:`TRACK_SECONDS` (at least one track).
        seed: the same seed gives byte-identical files.
        sample_rate: of the written files (preprocessing resamples).
        genres: which of :data:`GENRES` to write.
        first_track: index of the first track per genre: a later call with a
            higher index adds new tracks beside earlier ones (new tracks arriving).

    Each track's score goes beside it as a standard MIDI file, ``<genre>-NN.mid``
    (:func:`wavenet.data.notes.midi_bytes`), which preprocessing reads as the track's score.

    Returns:
        The paths of the audio written, sorted.
    """
    if not seconds_per_genre > 0:
        raise ValueError(f"seconds_per_genre must be positive. Received: {seconds_per_genre}")
    n_tracks = max(1, round(seconds_per_genre / TRACK_SECONDS))
    seconds = seconds_per_genre / n_tracks
    unknown = sorted(set(genres) - set(GENRES))
    if unknown:
        raise ValueError(f"unknown genre {unknown[0]!r}; known: {', '.join(GENRES)}")
    paths = []
    for genre in genres:
        ext, fmt, subtype = _FORMATS[genre]
        for i in range(first_track, first_track + n_tracks):
            x, score = synthesize_with_score(genre, seconds, seed=seed, track=i, sample_rate=sample_rate)
            buf = io.BytesIO()
            sf.write(buf, x, sample_rate, format=fmt, subtype=subtype)
            path = storage.join(dst, genre, f"{genre}-{i:02d}.{ext}")
            # The score first: a folder that has a track's audio has its score.
            storage.write_bytes_atomic(storage.join(dst, genre, f"{genre}-{i:02d}.mid"),
                                       midi_bytes(score, sample_rate))
            storage.write_bytes_atomic(path, buf.getvalue())
            paths.append(path)
    return sorted(paths)
