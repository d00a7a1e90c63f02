"""A delay line that sustains a score's lone pitched notes while the network samples (``generate.sustain``).

A model that plays a score knows each note's pitch, yet at `make run`'s budget its closed
loop renders a sustained note as noise after the attack (docs/benchmarks.md, eleventh sitting:
primed with half a second of a real bass note, the demo model loses its harmonics within one
64 ms frame). Speech codecs keep such a waveform periodic with a long-term (pitch) predictor
beside the short-term one (Atal and Schroeder's CELP); Karplus and Strong's plucked string is a
delay line of one period fed by an excitation. :func:`sustained_logits` gives the sampler both:
at a sample where the delay line applies, the next code is drawn from the mixture

    (1 - lambda) * p_network + lambda * N(centre, WIDTH),

a discretised Gaussian in code steps around the delay line's prediction: the waveform one
period (``sample_rate / f0``) back, through Karplus and Strong's two-point loop filter, less
the mean over that period (so that an offset does not circulate), times :data:`DECAY`. The
network still plays every attack (the first period of each note is its own), every drum hit
and everything polyphonic; ``lambda = 0`` (the default) is plain sampling, code for code.

The delay line applies at sample ``s`` only when exactly one pitched note sounds there (a
monophonic line: a chord is not periodic at any one of its notes' periods), no percussion
note is in its first :data:`ATTACK_SECONDS` (a hit's attack is not periodic either), and the
pitched note began at least ``period + 1`` samples before ``s``. Everything here is pure NumPy
on arrays; :mod:`wavenet.generation.fast` calls it.
"""

from __future__ import annotations

import numpy as np

from wavenet.config import SCORE_TOKENS
from wavenet.data.notes import key_hz

__all__ = ["ATTACK_SECONDS", "DECAY", "WIDTH", "centre_codes", "code_levels", "sustain_periods", "sustained_logits"]

# Each period the delay line's prediction shrinks by this factor (a string's losses). On the demo
# model's drum clips (8 per setting, lambda 0.9): 0.95 and 0.98 passed every check in 8 of 8,
# 0.995 in 5 (too tonal: `atypical`); docs/benchmarks.md, eleventh sitting.
DECAY = 0.98
# The Gaussian's standard deviation, in code steps: the width of the network's own
# teacher-forced prediction on the demo's drums (1.7 code steps; fifth sitting).
WIDTH = 1.0
# A percussion note holds the delay line off for its first this many seconds: a hit's attack is
# not periodic, and the network plays it. Measured as DECAY: 20 ms left the drum clips too
# tonal (`atypical` in 5 of 8), 60 ms passed 8 of 8, 120 ms 7, the whole note (a kick lasts
# 0.35 s) 3 (the bass drowned in the hits' noise again).
ATTACK_SECONDS = 0.06


def sustain_periods(notes: np.ndarray, first: int, count: int, sample_rate: int) -> np.ndarray:
    """(B, count) float64: the period in samples (``sample_rate / f0``, fractional; A4 = 440 Hz,
    equal temperament) of the lone pitched note at each sample ``first .. first + count - 1``
    where the delay line applies, 0 elsewhere.

    Args:
        notes: (B, E, 3) ``(start, end, token)`` rows (:func:`wavenet.data.notes.pack_scores`);
            tokens below 128 are pitched (MIDI keys), 128 and up percussion, < 0 padding.
        first, count: the samples.
        sample_rate: Hz.
    """
    notes = np.asarray(notes, np.int64)
    s = np.arange(first, first + count)[None, :, None]  # (1, T, 1)
    start, end, token = notes[:, None, :, 0], notes[:, None, :, 1], notes[:, None, :, 2]
    sounding = (start <= s) & (s < end) & (token >= 0)  # (B, T, E)
    pitched = sounding & (token < SCORE_TOKENS // 2)
    hit = sounding & ~pitched & (s < start + int(round(ATTACK_SECONDS * sample_rate)))
    lone = (pitched.sum(axis=-1) == 1) & ~np.any(hit, axis=-1)  # (B, T)
    key = np.where(pitched, token, 0).sum(axis=-1)  # the lone note's key where lone
    began = np.where(pitched, start, 0).sum(axis=-1)
    period = sample_rate / key_hz(key)
    heard = lone & (began <= s[..., 0] - np.floor(period) - 1)  # a whole period (and one) of it
    return np.where(heard, period, 0.0)


def code_levels(quantization_channels: int) -> np.ndarray:
    """(Q,) float64: the amplitude each code decodes to (increasing), as the clips' WAVs hold it."""
    from wavenet.data.audio import mu_law_decode

    return np.asarray(mu_law_decode(np.arange(quantization_channels), quantization_channels), np.float64)


def centre_codes(history: np.ndarray, now: int, periods: np.ndarray, levels: np.ndarray) -> np.ndarray:
    """(B,) float: the delay line's prediction of sample ``now``, as a fractional code.

    Args:
        history: (B, N) float64 amplitudes; column ``now`` is the sample predicted, the columns
            before it the samples already there.
        now: the predicted sample's column.
        periods: (B,) float periods (> 1; rows with 0 get the centre of silence, unused).
        levels: :func:`code_levels`.
    """
    rows = np.arange(history.shape[0])

    def at(lag):  # the waveform ``lag`` (fractional, >= 1) samples back, linearly interpolated
        whole = np.floor(lag).astype(np.int64)
        frac = lag - whole
        return ((1.0 - frac) * history[rows, np.maximum(now - whole, 0)]
                + frac * history[rows, np.maximum(now - whole - 1, 0)])

    lag = np.where(periods > 0, periods, 2.0)
    p = np.floor(lag).astype(np.int64)
    mean = np.array([history[b, max(now - p[b], 0):now].mean() if now > 0 else 0.0 for b in rows])
    # Karplus and Strong's loop filter: the mean of the waveform half a sample either side of
    # a period back, which damps harmonic k by cos(pi k f0 / sample_rate) each period.
    predicted = DECAY * (0.5 * (at(lag - 0.5) + at(lag + 0.5)) - mean)
    return np.interp(predicted, levels, np.arange(len(levels), dtype=np.float64))


def sustained_logits(logits: np.ndarray, centres: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """(B, Q) float32 log-probabilities of ``(1 - w) * softmax(logits) + w * N(centre, WIDTH)``.

    Rows with weight 0 are returned as they are (the same sample as plain sampling).

    Args:
        logits: (B, Q) the network's logits.
        centres: (B,) fractional codes (:func:`centre_codes`).
        weights: (B,) lambda in [0, 1).
    """
    logits = np.asarray(logits, np.float64)
    out = logits.copy()
    mixed = weights > 0
    if mixed.any():
        k = np.arange(logits.shape[1], dtype=np.float64)[None, :]
        gauss = -0.5 * ((k - centres[mixed, None]) / WIDTH) ** 2
        gauss -= np.logaddexp.reduce(gauss, axis=1, keepdims=True)
        net = logits[mixed] - np.logaddexp.reduce(logits[mixed], axis=1, keepdims=True)
        w = weights[mixed, None]
        out[mixed] = np.logaddexp(np.log1p(-w) + net, np.log(w) + gauss)
    return out.astype(np.float32)
