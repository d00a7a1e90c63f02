"""Sanity checks of generated audio: cheap numbers that catch a broken model.

Bits per sample say how well a model predicts real audio; they do not say
whether what it *generates* sounds like anything. These pure NumPy functions
measure a clip and flag the failure modes a sampled WaveNet is known for.

Two kinds of checks:

* **Absolute** (no data needed): silence, white noise (spectral flatness of
  Gaussian noise), a stuck value, clipping. They only catch gross failures.
* **Calibrated on the data** (:func:`calibrate`, :func:`check_ranges`): the
  clip's level, band energy (4-8 kHz vs 0-1 kHz), spectral flatness,
  harmonicity, onset rate, DC offset and log-mel distance are compared with
  the range that validation audio *of the clip's label*, cut into windows as
  long as the clip, spans (2.5th to 97.5th percentile over windows, widened by
  a stated tolerance per check, :data:`CHECKS`). Coloured noise, the hiss of a
  briefly trained model and an offset drone pass the absolute checks but
  land outside these ranges.

``analyze`` returns the metrics, the calibrated checks (value, range,
verdict) and warning strings, each starting with the failure mode's name
(``"silence: ..."``, ``"harmonicity: ..."``) so reports and logs can be grepped.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

# The spectral maths lives in wavenet.data.audio; these names stay importable from here.
from wavenet.data.audio import (
    frame_power,
    frame_signal,
    hz_to_mel,
    mel_filterbank,
    mel_to_hz,
    power_spectrogram,
)

__all__ = [
    "SILENCE_DBFS",
    "NOISE_FLATNESS",
    "STUCK_FRACTION",
    "CLIPPED_FRACTION",
    "MEL_DISTANCE_DB",
    "rms_dbfs",
    "silent_fraction",
    "spectral_flatness",
    "distinct_codes",
    "most_common_fraction",
    "clipped_fraction",
    "average_log_mel",
    "log_mel_distance_db",
    "band_energy_ratio_db",
    "yin_difference",
    "harmonicity",
    "onset_strength",
    "onset_times",
    "onset_rate",
    "dc_offset",
    "clip_features",
    "tonal_flatness",
    "level_variation_db",
    "JOINT_FEATURES",
    "joint_vector",
    "fit_joint",
    "joint_distance",
    "held_out_distances",
    "Check",
    "CHECKS",
    "REFERENCE_PERCENTILES",
    "reference_windows",
    "calibrate",
    "check_ranges",
    "absolute_thresholds",
    "analyze",
    # Re-exported from wavenet.data.audio, where the spectral maths lives:
    "frame_signal",
    "power_spectrogram",
    "hz_to_mel",
    "mel_to_hz",
    "mel_filterbank",
]

# Thresholds of the warnings. Levels are dBFS: 0 dB is a full-scale square wave.
# A clip quieter than this overall (or with >90% of frames quieter) is "silence";
# -50 dBFS matches audio.silence_threshold_db, below which preprocessing trims.
SILENCE_DBFS = -50.0
SILENT_FRAMES_FRACTION = 0.9
# Spectral flatness (geometric / arithmetic mean of a frame's power spectrum) is
# 1 for a perfectly flat spectrum; for Gaussian white noise measured with one
# windowed periodogram per frame its expected value is exp(-gamma) ~ 0.56 (the
# bins' powers are exponentially distributed). Pitched music stays far below 0.1.
NOISE_FLATNESS = 0.35
# One code making up more than this fraction of a clip is a stuck generator.
STUCK_FRACTION = 0.9
# More than this fraction of samples at (or within 1% of) full scale is clipping.
CLIPPED_FRACTION = 0.01
CLIP_LEVEL = 0.99
# Average log-mel spectra further apart than this (RMS over mel bands, dB)
# means the clip's timbre is nothing like the validation audio's.
MEL_DISTANCE_DB = 15.0

_EPS = 1e-12
_FLOOR_DB = -120.0


def _db(power: np.ndarray | float) -> np.ndarray:
    return np.maximum(10.0 * np.log10(np.maximum(power, _EPS)), _FLOOR_DB)


def rms_dbfs(x: np.ndarray) -> float:
    """RMS level in dBFS (floored at -120 dB; 0 dB is a full-scale square wave)."""
    x = np.asarray(x, dtype=np.float64)
    if x.size == 0:
        return _FLOOR_DB
    return float(_db(np.mean(x * x)))


def silent_fraction(x: np.ndarray, sample_rate: int, frame_seconds: float = 0.02,
                    threshold_db: float = SILENCE_DBFS) -> float:
    """Fraction of non-overlapping frames whose RMS level is below ``threshold_db``."""
    length = max(1, int(round(frame_seconds * sample_rate)))
    return float(np.mean(_db(frame_power(x, length)) < threshold_db))


def spectral_flatness(x: np.ndarray, n_fft: int = 512, hop: int = 256,
                      threshold_db: float = SILENCE_DBFS) -> float:
    """Mean spectral flatness over frames that are not silent.

    Flatness of one frame: geometric mean / arithmetic mean of its power
    spectrum (Wiener entropy): near 1 for white noise, near 0 for tones.
    Silent frames are left out (their spectrum is numerical noise); a clip
    with no audible frame has flatness 0.
    """
    audible = _db(frame_power(x, n_fft, hop)) >= threshold_db
    if not np.any(audible):
        return 0.0
    power = power_spectrogram(x, n_fft, hop)[audible][:, 1:]  # drop DC: an offset is not timbre
    geometric = np.exp(np.mean(np.log(power + _EPS), axis=-1))
    arithmetic = np.mean(power, axis=-1) + _EPS
    return float(np.mean(geometric / arithmetic))


def distinct_codes(codes: np.ndarray) -> int:
    """Number of different codes (or values) in a clip."""
    return int(np.unique(np.asarray(codes).reshape(-1)).size)


def most_common_fraction(codes: np.ndarray) -> tuple[int | float, float]:
    """The most frequent code (or value) and the fraction of samples it makes up."""
    values, counts = np.unique(np.asarray(codes).reshape(-1), return_counts=True)
    if counts.size == 0:
        return 0, 0.0
    i = int(np.argmax(counts))
    return values[i].item(), float(counts[i] / counts.sum())


def clipped_fraction(x: np.ndarray, level: float = CLIP_LEVEL) -> float:
    """Fraction of samples with ``|x| >= level`` (full scale is 1.0)."""
    x = np.asarray(x, dtype=np.float64)
    return float(np.mean(np.abs(x) >= level)) if x.size else 0.0


def average_log_mel(x: np.ndarray, sample_rate: int, n_fft: int = 512, hop: int = 256,
                    n_mels: int = 40, dynamic_range_db: float = 80.0) -> np.ndarray:
    """Long-term average mel spectrum in dB: ``10 log10(mean over frames of mel power)``.

    Averaging power before the log (rather than logs of frames) keeps the
    measure stable under silent frames, whose log power is arbitrary. Bands
    more than ``dynamic_range_db`` below the loudest band are raised to that
    floor, so empty bands (a pure tone's) do not dominate a distance.

    Returns:
        (n_mels,) dB (floored at -120 dB absolute).
    """
    mel = power_spectrogram(x, n_fft, hop) @ mel_filterbank(sample_rate, n_fft, n_mels).T
    db = _db(np.mean(mel, axis=0) / n_fft)
    return np.maximum(db, db.max() - dynamic_range_db)


def log_mel_distance_db(a: np.ndarray, b: np.ndarray) -> float:
    """RMS over mel bands of the difference of two average log-mel spectra (dB)."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.shape != b.shape:
        raise ValueError(f"log-mel spectra must have the same shape. Received: {a.shape}, {b.shape}")
    return float(np.sqrt(np.mean((a - b) ** 2)))


# -- features that are calibrated on the data (pure functions) ----------------------

def band_energy_ratio_db(x: np.ndarray, sample_rate: int, high: tuple[float, float] = (4000.0, 8000.0),
                         low: tuple[float, float] = (0.0, 1000.0), n_fft: int = 512,
                         hop: int = 256) -> float:
    """Energy of a high band relative to a low band over the whole clip, in dB.

    ``10 log10(P_high / P_low)``, P being the Hann-windowed power spectrum
    summed over frames and over the rfft bins with ``high[0] <= f <= high[1]``
    and ``low[0] < f <= low[1]`` (the DC bin is left out: an offset is not
    timbre). Music keeps most of its energy below 1 kHz; white noise sampled
    at 16 kHz has about +6 dB (4 kHz of bandwidth against 1 kHz).

    Args:
        x: (T,) audio.
        sample_rate: Hz.
        high, low: band edges in Hz (``high[1]`` is capped at Nyquist).
        n_fft, hop: STFT frame and hop in samples.

    Returns:
        dB; 0 for digital silence (both bands empty).

    Raises:
        ValueError: a band holds no rfft bin at this sample rate and FFT size.
    """
    f = np.fft.rfftfreq(n_fft, 1.0 / sample_rate)
    in_high = (f >= high[0]) & (f <= min(high[1], sample_rate / 2.0))
    in_low = (f > low[0]) & (f <= low[1])
    if not in_high.any() or not in_low.any():
        raise ValueError(f"band without FFT bins at {sample_rate} Hz, n_fft {n_fft}. "
                         f"Received: high={high}, low={low}")
    power = power_spectrogram(x, n_fft, hop).sum(axis=0)  # (F,)
    return float(10.0 * np.log10((power[in_high].sum() + _EPS) / (power[in_low].sum() + _EPS)))


def yin_difference(frames: np.ndarray, max_lag: int) -> np.ndarray:
    """YIN's cumulative-mean-normalised difference function of each frame.

    de Cheveigné and Kawahara 2002 ("YIN, a fundamental frequency estimator
    for speech and music", JASA 111(4), eqs. 6 and 8): with ``W = L - max_lag``,

        d(tau)  = sum_{j < W} (x_j - x_{j + tau})^2
        d'(tau) = d(tau) / ((1 / tau) sum_{1 <= k <= tau} d(k)),   d'(0) = 1

    A periodic frame has ``d'(period)`` near 0; noise stays near 1; the
    normalisation by the running mean keeps smooth (low-passed, "brown")
    signals, whose ``d`` merely grows with the lag, away from 0.

    Args:
        frames: (N, L) float frames, ``L > max_lag``.
        max_lag: the largest lag in samples.

    Returns:
        (N, max_lag + 1) ``d'`` for lags 0..max_lag.
    """
    frames = np.asarray(frames, dtype=np.float64)
    n, length = frames.shape
    w = length - max_lag
    if max_lag < 1 or w < 1:
        raise ValueError(f"frames must be longer than max_lag >= 1. Received: L={length}, max_lag={max_lag}")
    size = 1 << int(np.ceil(np.log2(length + w)))
    # sum_j a_j x_{j + tau} for every lag at once: cross-correlation by FFT.
    cross = np.fft.irfft(np.conj(np.fft.rfft(frames[:, :w], size)) * np.fft.rfft(frames, size),
                         size)[:, :max_lag + 1]
    squares = np.concatenate([np.zeros((n, 1)), np.cumsum(frames * frames, axis=1)], axis=1)
    lags = np.arange(max_lag + 1)
    energy_head = squares[:, w:w + 1]                     # sum_{j < W} x_j^2
    energy_lagged = squares[:, lags + w] - squares[:, lags]  # sum_{j < W} x_{j + tau}^2
    d = np.maximum(energy_head + energy_lagged - 2.0 * cross, 0.0)  # (N, max_lag + 1)
    running_mean = np.cumsum(d[:, 1:], axis=1) / np.arange(1, max_lag + 1)
    out = np.ones_like(d)
    out[:, 1:] = np.where(running_mean > _EPS, d[:, 1:] / np.maximum(running_mean, _EPS), 1.0)
    return out


def harmonicity(x: np.ndarray, sample_rate: int, fmin: float = 50.0, fmax: float = 1000.0,
                window_seconds: float = 0.04, threshold_db: float = SILENCE_DBFS) -> float:
    """Mean pitch salience of the audible frames: ``1 - min d'(tau)`` over pitch lags.

    Frames of ``window_seconds`` (+ the longest lag) hop by ``window_seconds``;
    each has its mean removed (a DC offset is not periodicity), and frames
    quieter than ``threshold_db`` after that are left out. Per frame the
    salience is ``1 - min(d'(tau))`` over lags ``sample_rate / fmax ..
    sample_rate / fmin`` (:func:`yin_difference`), clipped to [0, 1]: near 1 for
    a steady pitched tone, 0.5-0.9 for chords and pitched music, about 0.1 for
    white noise and less for coloured noise.

    Returns:
        The mean over audible frames; 0 when none is audible or the clip is
        shorter than one frame.
    """
    if not 0 < fmin < fmax <= sample_rate / 2.0:
        raise ValueError(f"need 0 < fmin < fmax <= sample_rate / 2. Received: fmin={fmin}, fmax={fmax}")
    x = np.asarray(x, dtype=np.float64).reshape(-1)
    min_lag = max(1, int(np.floor(sample_rate / fmax)))
    max_lag = int(np.ceil(sample_rate / fmin))
    w = max(1, int(round(window_seconds * sample_rate)))
    length = w + max_lag
    count = (len(x) - length) // w + 1 if len(x) >= length else 0
    if count < 1:
        return 0.0
    frames = x[np.arange(length)[None, :] + w * np.arange(count)[:, None]]  # (N, L)
    frames = frames - frames[:, :w].mean(axis=1, keepdims=True)
    audible = _db(np.mean(frames[:, :w] ** 2, axis=1)) >= threshold_db
    if not audible.any():
        return 0.0
    d = yin_difference(frames[audible], max_lag)
    return float(np.mean(np.clip(1.0 - d[:, min_lag:].min(axis=1), 0.0, 1.0)))


def _onset_frame(sample_rate: int) -> tuple[int, int]:
    # About 64 ms frames (1024 samples at 16 kHz) with a quarter hop (16 ms).
    n_fft = 1 << max(4, int(round(np.log2(0.064 * sample_rate))))
    return n_fft, n_fft // 4


def _log_magnitudes(x: np.ndarray, sample_rate: int, compression: float) -> np.ndarray:
    """(N, F) ``log(1 + compression |X|)`` over whole Hann frames of about 64 ms, 16 ms apart."""
    n_fft, hop = _onset_frame(sample_rate)
    x = np.asarray(x, dtype=np.float64).reshape(-1)
    # Whole frames only: a zero-padded last frame ends in a step, whose splatter looks like an onset.
    count = (len(x) - n_fft) // hop + 1 if len(x) >= n_fft else 0
    if count < 1:
        return np.zeros((1, n_fft // 2 + 1))
    frames = frame_signal(x[:(count - 1) * hop + n_fft], n_fft, hop) * np.hanning(n_fft)[None, :]
    return np.log1p(compression * np.abs(np.fft.rfft(frames, axis=-1)))


def onset_strength(x: np.ndarray, sample_rate: int, compression: float = 10.0) -> np.ndarray:
    """Spectral flux: per frame, the summed increase of log-compressed magnitudes.

    ``sum_k max(0, L(t, k) - L(t - 1, k))`` with ``L = log(1 + compression |X|)``
    (the logarithmic spectral flux of Klapuri 1999 and Böck et al. 2012), over
    whole Hann frames of about 64 ms with a 16 ms hop. Frame 0 is 0.

    Returns:
        (N,) onset strength per frame.
    """
    log_mag = _log_magnitudes(x, sample_rate, compression)
    return np.concatenate([[0.0], np.maximum(log_mag[1:] - log_mag[:-1], 0.0).sum(axis=1)])


def onset_times(x: np.ndarray, sample_rate: int, relative_threshold: float = 0.5,
                pre_max: float = 0.03, average: float = 0.1, wait: float = 0.03,
                floor: float = 0.01, min_new: float = 0.1) -> np.ndarray:
    """Onsets (seconds): peaks of :func:`onset_strength`.

    The peak-picking rules of Böck, Krebs and Schedl 2012 ("Evaluating the
    online capabilities of onset detection methods", ISMIR), with a
    threshold relative to the local mean instead of an additive one: frame t
    is an onset when its strength is the maximum of the ``pre_max`` seconds
    before it and the frame after, at least ``1 + relative_threshold`` times
    the mean over +-``average`` seconds, at least ``floor`` times the clip's
    largest strength and at least ``min_new`` of the frame's summed log
    magnitude (the leakage ripple of a steady tone is at most 0.05 of it; a
    note's attack 0.13 and more), and more than ``wait`` seconds after the
    previous onset. The relative threshold makes stationary sounds (noise, a
    drone) give no onsets whatever their level: their flux is steady, while a
    note's attack stands well above its surroundings.

    Returns:
        (K,) onset times in seconds (centres of the onset frames).
    """
    from numpy.lib.stride_tricks import sliding_window_view

    log_mag = _log_magnitudes(x, sample_rate, 10.0)
    env = np.concatenate([[0.0], np.maximum(log_mag[1:] - log_mag[:-1], 0.0).sum(axis=1)])
    top = float(env.max())
    if top <= 0.0:
        return np.zeros(0)
    n_fft, hop = _onset_frame(sample_rate)
    fps = sample_rate / hop
    before, half, gap = (max(1, int(round(s * fps))) for s in (pre_max, average, wait))
    padded = np.concatenate([np.full(before, -np.inf), env, [-np.inf]])
    local_max = sliding_window_view(padded, before + 2).max(axis=1)  # frames t - before .. t + 1
    csum = np.concatenate([[0.0], np.cumsum(env)])
    idx = np.arange(env.size)
    lo, hi = np.maximum(0, idx - half), np.minimum(env.size, idx + half + 1)
    local_mean = (csum[hi] - csum[lo]) / (hi - lo)
    candidates = np.flatnonzero((env >= local_max) & (env >= (1.0 + relative_threshold) * local_mean)
                                & (env >= floor * top) & (env > min_new * log_mag.sum(axis=1)))
    onsets, last = [], -np.inf
    for t in candidates.tolist():
        if t - last > gap:
            onsets.append(t)
            last = t
    # Frame t spans samples t * hop .. t * hop + n_fft: report its centre.
    return (np.asarray(onsets, dtype=np.float64) * hop + n_fft / 2.0) / sample_rate


def onset_rate(x: np.ndarray, sample_rate: int) -> float:
    """Onsets per second (:func:`onset_times` over the clip's duration); 0 for an empty clip."""
    seconds = len(x) / sample_rate
    return float(len(onset_times(x, sample_rate)) / seconds) if seconds > 0 else 0.0


def dc_offset(x: np.ndarray) -> float:
    """``|mean(x)|``: a constant offset (full scale is 1.0)."""
    x = np.asarray(x, dtype=np.float64)
    return float(abs(np.mean(x))) if x.size else 0.0


def tonal_flatness(x: np.ndarray, sample_rate: int, frame_seconds: float = 0.064,
                   envelope_hz: float = 500.0, range_db: float = 50.0,
                   threshold_db: float = SILENCE_DBFS) -> float:
    """Spectral flatness after dividing out the spectral envelope: near 0.56 for any noise.

    Per audible frame (Hann, about 64 ms, half overlap), the power spectrum is
    divided by its running median over ``envelope_hz`` (the envelope), and the
    flatness (geometric / arithmetic mean) of that ratio is taken over the bins
    within ``range_db`` of the frame's loudest envelope value. Noise of any
    colour, low-passed noise included, has exponentially distributed bin powers
    around its envelope, hence ``exp(-gamma) ~ 0.56`` whatever its spectrum's
    shape, where :func:`spectral_flatness` is low for coloured noise. Harmonic
    lines stand far above their envelope: pitched music scores 0.05-0.3.

    Returns:
        The mean over audible frames; 0.56 is noise-like, 0 when nothing is audible.
    """
    n_fft = 1 << max(6, int(round(np.log2(frame_seconds * sample_rate))))
    audible = _db(frame_power(x, n_fft, n_fft // 2)) >= threshold_db
    if not np.any(audible):
        return 0.0
    power = power_spectrogram(x, n_fft, n_fft // 2)[audible][:, 1:]  # (N, F); DC is not timbre
    half = max(1, int(round(envelope_hz * n_fft / sample_rate / 2.0)))
    # The envelope is the running median over bins k - half .. k + half (edges reflected):
    # harmonic peaks, sparse in the window, leave it alone, and it follows a filter's
    # edge within a bin or two, where a running mean would smear a pass band into the
    # stop band beside it.
    from numpy.lib.stride_tricks import sliding_window_view

    padded = np.pad(power, ((0, 0), (half, half)), mode="reflect")
    envelope = np.median(sliding_window_view(padded, 2 * half + 1, axis=1), axis=-1) + _EPS
    # Floored at -30 dB: an empty bin (a brick-wall filter's stop band) would otherwise
    # drag the geometric mean to 0; noise has a bin that far below its envelope once in 1000.
    ratio = np.maximum(power / envelope, 1e-3)
    keep = _db(envelope) >= _db(envelope.max(axis=1, keepdims=True)) - range_db  # (N, F)
    # Below envelope_hz / 2 the window spans more than an octave (and is reflected at 0 Hz):
    # on a steep spectrum (brown noise, 12 dB per octave) the median there misses the level.
    keep[:, :half] = False
    logs = np.where(keep, np.log(ratio + _EPS), 0.0)
    counts = np.maximum(keep.sum(axis=1), 1)
    geometric = np.exp(logs.sum(axis=1) / counts)
    arithmetic = np.where(keep, ratio, 0.0).sum(axis=1) / counts + _EPS
    return float(np.mean(geometric / arithmetic))


def level_variation_db(x: np.ndarray, sample_rate: int, frame_seconds: float = 0.02,
                       range_db: float = 60.0) -> float:
    """Standard deviation over 20 ms frames of the frame level (dB), floored ``range_db`` below the loudest.

    Steady noise varies by well under 1 dB from frame to frame; notes that start
    and decay, and drum hits, by several dB.
    """
    length = max(1, int(round(frame_seconds * sample_rate)))
    levels = _db(frame_power(x, length))
    if levels.size < 2:
        return 0.0
    return float(np.std(np.maximum(levels, levels.max() - range_db)))


def _bands(sample_rate: int) -> tuple[tuple[float, float], tuple[float, float]]:
    # 4-8 kHz vs 0-1 kHz at 16 kHz and above; the same fractions of Nyquist below.
    return ((min(4000.0, sample_rate / 4.0), min(8000.0, sample_rate / 2.0)),
            (0.0, min(1000.0, sample_rate / 16.0)))


def clip_features(audio: np.ndarray, sample_rate: int) -> dict[str, float]:
    """The calibrated features of one clip (or one window of real audio).

    Returns:
        ``{"rms_dbfs", "band_energy_ratio_db", "spectral_flatness",
        "harmonicity", "onset_rate", "dc_offset"}``.
    """
    audio = np.asarray(audio, dtype=np.float64).reshape(-1)
    high, low = _bands(sample_rate)
    return {
        "rms_dbfs": rms_dbfs(audio),
        "band_energy_ratio_db": band_energy_ratio_db(audio, sample_rate, high, low),
        "spectral_flatness": spectral_flatness(audio),
        # Pitches up to 1 kHz (a quarter of the sample rate below 4 kHz).
        "harmonicity": harmonicity(audio, sample_rate, fmax=min(1000.0, sample_rate / 4.0)),
        "onset_rate": onset_rate(audio, sample_rate),
        "dc_offset": dc_offset(audio),
        "tonal_flatness": tonal_flatness(audio, sample_rate),
        "level_variation_db": level_variation_db(audio, sample_rate),
    }


# -- the joint verdict: a clip's features against the distribution of real windows ------

# The features judged together, and how each is made roughly Gaussian over real
# windows first ("log": log10 of the value, floored; flatness and level
# variation span orders of magnitude). DC offset is left out: real audio has
# none to speak of, so its spread says nothing; its own check catches it.
JOINT_FEATURES: tuple[tuple[str, str], ...] = (
    ("rms_dbfs", "linear"), ("band_energy_ratio_db", "linear"), ("spectral_flatness", "log"),
    ("harmonicity", "linear"), ("onset_rate", "linear"), ("tonal_flatness", "linear"),
    ("level_variation_db", "log"), ("log_mel_distance_db", "linear"))
# The least spread each feature is given (in its transformed unit), so that a feature
# that real windows hold constant (an organ's zero onset rate) does not turn a tiny
# difference into a huge distance: 1 dB, a factor 10**0.1, 0.03 of salience, 0.5
# onsets per second, 0.02 of tonal flatness.
JOINT_MIN_SCALE = {"rms_dbfs": 1.0, "band_energy_ratio_db": 1.0, "spectral_flatness": 0.1,
                   "harmonicity": 0.03, "onset_rate": 0.5, "tonal_flatness": 0.02,
                   "level_variation_db": 0.05, "log_mel_distance_db": 0.5}
# Weight of the identity in the correlation estimate (Ledoit and Wolf 2004's
# shrinkage towards a diagonal target, with a fixed intensity): a few dozen
# windows estimate 8 x 8 correlations poorly, and an unshrunk inverse would
# reward any direction the reference happens not to vary in.
JOINT_SHRINKAGE = 0.3
# The accepted distance: the JOINT_PERCENTILE of the reference windows' own
# distances, each measured with its signal (track) held out of the fit, times
# JOINT_TOLERANCE (what a good model may add to a new track's spread).
JOINT_PERCENTILE = 97.5
JOINT_TOLERANCE = 1.25


def joint_vector(metrics: dict[str, float]) -> np.ndarray:
    """(D,) the :data:`JOINT_FEATURES` of a clip's metrics, transformed."""
    out = []
    for name, transform in JOINT_FEATURES:
        v = float(metrics[name])
        out.append(np.log10(max(v, 1e-6)) if transform == "log" else v)
    return np.asarray(out)


def fit_joint(vectors: np.ndarray, shrinkage: float = JOINT_SHRINKAGE) -> dict[str, list]:
    """A robust Gaussian model of real windows' :func:`joint_vector` s.

    Centre: the median; scale: 1.4826 x the median absolute deviation (the
    standard deviation for Gaussian data), at least :data:`JOINT_MIN_SCALE`;
    correlation of the standardised values (clipped to +-5, so one odd window
    cannot dominate), shrunk towards the identity.

    Args:
        vectors: (N, D) one row per real window.

    Returns:
        ``{"centre", "scale", "precision"}`` (lists: JSON-ready); precision is
        the inverse of the shrunk correlation, (D, D).
    """
    v = np.asarray(vectors, dtype=np.float64)
    centre = np.median(v, axis=0)
    floor = np.asarray([JOINT_MIN_SCALE[name] for name, _ in JOINT_FEATURES])
    scale = np.maximum(1.4826 * np.median(np.abs(v - centre), axis=0), floor)
    z = np.clip((v - centre) / scale, -5.0, 5.0)
    corr = np.eye(v.shape[1])
    if len(z) > 2:
        zc = z - z.mean(axis=0)
        norm = np.sqrt((zc * zc).sum(axis=0))
        norm = np.where(norm > _EPS, norm, np.inf)  # a constant feature correlates with nothing
        corr = (zc.T @ zc) / np.outer(norm, norm)
        np.fill_diagonal(corr, 1.0)
    shrunk = (1.0 - shrinkage) * corr + shrinkage * np.eye(v.shape[1])
    return {"centre": centre.tolist(), "scale": scale.tolist(),
            "precision": np.linalg.inv(shrunk).tolist()}


def joint_distance(vector: np.ndarray, model: dict[str, list]) -> float:
    """Mahalanobis distance of one :func:`joint_vector` from a :func:`fit_joint` model, per dimension.

    ``sqrt(z' P z / D)`` with ``z`` the robustly standardised vector: about 1
    for a typical real window, whatever the number of features.
    """
    z = (np.asarray(vector) - np.asarray(model["centre"])) / np.asarray(model["scale"])
    return float(np.sqrt(max(z @ np.asarray(model["precision"]) @ z, 0.0) / z.size))


def held_out_distances(vectors: np.ndarray, groups: Sequence[int]) -> np.ndarray:
    """Each window's :func:`joint_distance` from a model fitted without its group (track).

    With one group only, each window is left out alone (optimistic: windows of
    one track resemble each other).
    """
    v, g = np.asarray(vectors, dtype=np.float64), np.asarray(groups)
    if np.unique(g).size < 2:
        g = np.arange(len(v))
    out = np.empty(len(v))
    for k in np.unique(g):
        held = g == k
        model = fit_joint(v[~held] if (~held).sum() >= 2 else v)
        out[held] = [joint_distance(x, model) for x in v[held]]
    return out


# -- calibration on real audio ------------------------------------------------------

@dataclass(frozen=True)
class Check:
    """A metric compared with the range real audio of the same label spans.

    The reference range is the ``REFERENCE_PERCENTILES`` of the metric over
    windows of validation audio, then widened: by ``tolerance`` units on each
    side (``mode="add"``), or multiplied and divided by ``tolerance``
    (``mode="factor"``, for metrics that span orders of magnitude; values below
    ``floor`` count as ``floor``). ``upper_only`` checks flag only values above
    the range.
    """

    metric: str
    name: str  # the warning's prefix
    unit: str
    mode: str
    tolerance: float
    upper_only: bool = False
    floor: float = 0.0

    def widen(self, low: float, high: float) -> tuple[float | None, float]:
        """The accepted range around the reference percentiles ``[low, high]``."""
        if self.mode == "factor":
            lo, hi = max(low, self.floor) / self.tolerance, max(high, self.floor) * self.tolerance
        else:
            lo, hi = low - self.tolerance, high + self.tolerance
        return (None if self.upper_only else lo), hi

    def describe(self) -> str:
        """The tolerance in words, e.g. ``+-6 dB`` or ``x/ 2``."""
        if self.mode == "factor":
            return f"x{'' if self.upper_only else '/'} {self.tolerance:g}"
        return f"{'+' if self.upper_only else '+-'}{self.tolerance:g}{(' ' + self.unit) if self.unit else ''}"


# Why each tolerance: the reference percentiles already span how real windows
# vary; the tolerance adds what a good model may differ by without being broken.
CHECKS: tuple[Check, ...] = (
    # 10 dB: a model may play a little softer or louder than its data; a clip
    # 10 dB outside every real window is near silence or much too loud.
    Check("rms_dbfs", "level", "dBFS", "add", 10.0),
    # 6 dB (4x in power) more or less treble than any real window: hiss, or a muffled drone.
    Check("band_energy_ratio_db", "band energy", "dB", "add", 6.0),
    # Flatness spans 1e-4 (pure tones) to 0.56 (white noise): compare by factor.
    Check("spectral_flatness", "spectral flatness", "", "factor", 2.0, floor=1e-4),
    # Harmonicity is in [0, 1]; noise stays below 0.15, pitched music above 0.4;
    # a piece in another key or voicing moves it by up to about 0.1.
    Check("harmonicity", "harmonicity", "", "add", 0.15),
    # One onset per second more or fewer than any real window.
    Check("onset_rate", "onset rate", "/s", "add", 1.0),
    # Only too much offset is a fault; below 0.001 (-60 dBFS) it is inaudible.
    Check("dc_offset", "dc offset", "", "factor", 2.0, upper_only=True, floor=1e-3),
    # Only too far from the label's average timbre is a fault; another key moves
    # the peaks of the narrow low mel bands, hence a wide margin.
    Check("log_mel_distance_db", "spectral mismatch", "dB", "add", 6.0, upper_only=True),
    # Noise of any colour, low-passed too, sits at 0.51-0.58 (exp(-gamma) ~ 0.56 around
    # its envelope); real windows of a label reach 0.25 (organ, strings) to 0.46
    # (drums, an orchestral score): 0.04 above their range is noise.
    Check("tonal_flatness", "noise", "", "add", 0.04, upper_only=True),
    # All features at once (JOINT_FEATURES): a clip each of whose features lies inside
    # its own wide range can still be far from every real window (low-passed noise:
    # music's level and band energy, but no harmonic line, no level changes).
    Check("joint_distance", "atypical", "", "factor", JOINT_TOLERANCE, upper_only=True),
)
# Percentiles over windows rather than min/max: one odd window of a long
# reference (a fade-out, a silent bar) does not widen the range for everyone.
# With fewer than about 20 windows they are close to min and max.
REFERENCE_PERCENTILES = (2.5, 97.5)


def reference_windows(signals: Sequence[np.ndarray], length: int, count: int | None = None,
                      hop: int | None = None) -> list[np.ndarray]:
    """Windows of ``length`` samples cut from signals, optionally ``count`` of them spread evenly.

    Candidates start every ``hop`` samples (default ``length // 2``) within each
    signal; a window never spans two signals (examples of different tracks).
    With ``count``, that many candidates are taken at evenly spaced positions
    of the candidate list, so they come from every part of every signal in
    proportion to its length. When no signal is ``length`` long, each signal
    is one (shorter) window.

    Returns:
        The windows (views into ``signals``), in signal order.
    """
    return [w for _, w in _windows(signals, length, count, hop)]


def _windows(signals: Sequence[np.ndarray], length: int, count: int | None = None,
             hop: int | None = None) -> list[tuple[int, np.ndarray]]:
    """:func:`reference_windows` with the index of the signal each window comes from."""
    if length < 1:
        raise ValueError(f"window length must be >= 1. Received: {length}")
    hop = hop or max(1, length // 2)
    starts = [(k, i) for k, s in enumerate(signals) for i in range(0, len(s) - length + 1, hop)]
    if not starts:
        return [(k, np.asarray(s)) for k, s in enumerate(signals) if len(s)]
    if count is not None and count < len(starts):
        picks = np.unique(np.round(np.linspace(0, len(starts) - 1, max(1, count))).astype(int))
        starts = [starts[j] for j in picks]
    return [(k, np.asarray(signals[k])[i:i + length]) for k, i in starts]


def calibrate(signals: Sequence[np.ndarray], sample_rate: int, window: int,
              label: str | None = None, max_windows: int | None = None,
              percentiles: tuple[float, float] = REFERENCE_PERCENTILES,
              checks: Sequence[Check] = CHECKS) -> dict[str, Any]:
    """The range every :data:`CHECKS` metric spans on real audio of one label.

    Args:
        signals: (T_i,) float audio of the label's validation examples.
        sample_rate: Hz.
        window: samples per window: the length of the clips to be checked.
        label: the label's name (shown in warnings); None for all labels.
        max_windows: at most this many windows, spread evenly over the
            signals (:func:`reference_windows`); default all half-overlapping ones.
        percentiles: of the metric over windows; the range before tolerance.
        checks: which checks to calibrate.

    Returns:
        A JSON-ready dict: ``label``, ``windows`` (count), ``window_seconds``
        (the longest window), ``seconds`` (reference audio), ``percentiles``,
        ``log_mel`` (the label's :func:`average_log_mel`, dB per band) and
        ``ranges``: ``{metric: {"low", "high" (the accepted range; low None
        for upper-only checks), "reference_low", "reference_high" (the
        percentiles), "tolerance" (in words), "unit"}}``.

    Raises:
        ValueError: no audio.
    """
    signals = [np.asarray(s, dtype=np.float64).reshape(-1) for s in signals]
    tagged = _windows(signals, window, count=max_windows)
    if not tagged:
        raise ValueError(f"no reference audio to calibrate on. Received: {len(signals)} empty signals")
    windows = [w for _, w in tagged]
    log_mel = average_log_mel(np.concatenate(windows), sample_rate)
    rows = [clip_features(w, sample_rate) for w in windows]
    for row, w in zip(rows, windows):
        row["log_mel_distance_db"] = log_mel_distance_db(average_log_mel(w, sample_rate), log_mel)
    vectors = np.stack([joint_vector(r) for r in rows])
    # The accepted joint distance comes from windows of tracks the fit did not see, as a clip is.
    for row, d in zip(rows, held_out_distances(vectors, [k for k, _ in tagged])):
        row["joint_distance"] = float(d)
    ranges = {}
    for c in checks:
        pct = (percentiles[0], JOINT_PERCENTILE) if c.metric == "joint_distance" else percentiles
        lo, hi = (float(v) for v in np.percentile([r[c.metric] for r in rows], pct))
        accept_lo, accept_hi = c.widen(lo, hi)
        ranges[c.metric] = {"low": accept_lo, "high": accept_hi, "reference_low": lo,
                            "reference_high": hi, "tolerance": c.describe(), "unit": c.unit}
    return {"label": label, "windows": len(windows),
            "window_seconds": max(len(w) for w in windows) / sample_rate,
            "seconds": sum(len(w) for w in windows) / sample_rate,
            "percentiles": list(percentiles), "log_mel": [float(v) for v in log_mel],
            "joint": fit_joint(vectors), "ranges": ranges}


def _fmt(v: float) -> str:
    return f"{v:.3g}" if abs(v) < 0.01 and v != 0 else f"{v:.2f}"


def check_ranges(metrics: dict[str, float], calibration: dict[str, Any],
                 checks: Sequence[Check] = CHECKS) -> tuple[list[dict[str, Any]], list[str]]:
    """Compare a clip's metrics with a :func:`calibrate` result.

    Returns:
        ``(results, warnings)``: one result per calibrated metric present in
        ``metrics``: ``{"metric", "name", "value", "low", "high", "unit",
        "tolerance", "passed"}``; one warning per failed check, starting with
        the check's name.
    """
    who = f"{calibration['label']} validation audio" if calibration.get("label") is not None \
        else "validation audio"
    results, warnings = [], []
    for c in checks:
        r = calibration["ranges"].get(c.metric)
        if r is None or c.metric not in metrics:
            continue
        value = float(metrics[c.metric])
        if c.mode == "factor":
            value_cmp = max(value, c.floor)
        else:
            value_cmp = value
        passed = value_cmp <= r["high"] and (r["low"] is None or value_cmp >= r["low"])
        results.append({"metric": c.metric, "name": c.name, "value": value, "low": r["low"],
                        "high": r["high"], "unit": c.unit, "tolerance": r["tolerance"],
                        "passed": bool(passed)})
        if not passed:
            span = (f"at most {_fmt(r['high'])}" if r["low"] is None
                    else f"{_fmt(r['low'])} to {_fmt(r['high'])}")
            unit = f" {c.unit}" if c.unit else ""
            warnings.append(f"{c.name}: {c.metric} {_fmt(value)}{unit}, outside {span}{unit} "
                            f"({who}: {calibration['windows']} windows, percentiles "
                            f"{calibration['percentiles'][0]:g}-{calibration['percentiles'][1]:g}, "
                            f"tolerance {r['tolerance']})")
    return results, warnings


def absolute_thresholds() -> dict[str, Any]:
    """The thresholds of the checks that need no data, for reports and ``samples.json``."""
    return {"silence": {"rms_dbfs_below": SILENCE_DBFS, "silent_fraction_above": SILENT_FRAMES_FRACTION},
            "white noise": {"spectral_flatness_above": NOISE_FLATNESS},
            "stuck value": {"most_common_fraction_above": STUCK_FRACTION, "distinct_codes_at_most": 2},
            "clipping": {"clipped_fraction_above": CLIPPED_FRACTION, "clip_level": CLIP_LEVEL},
            "spectral mismatch (no calibration)": {"log_mel_distance_db_above": MEL_DISTANCE_DB}}


def _absolute_warnings(m: dict[str, float], top_value, top_fraction: float, what: str) -> list[str]:
    """The warnings of the checks that need no data (:func:`absolute_thresholds`): silence,
    white noise, a stuck ``what`` (code or value: ``top_value`` is ``top_fraction`` of
    them), clipping."""
    warnings: list[str] = []
    if m["rms_dbfs"] < SILENCE_DBFS or m["silent_fraction"] > SILENT_FRAMES_FRACTION:
        warnings.append(f"silence: level {m['rms_dbfs']:.1f} dBFS, {m['silent_fraction']:.0%} of "
                        f"frames below {SILENCE_DBFS:.0f} dBFS")
    if m["spectral_flatness"] > NOISE_FLATNESS:
        warnings.append(f"white noise: spectral flatness {m['spectral_flatness']:.2f} "
                        f"(> {NOISE_FLATNESS}; white noise ~0.56, music < 0.1)")
    if top_fraction > STUCK_FRACTION or m["distinct_codes"] <= 2:
        warnings.append(f"stuck value: {what} {top_value} is {top_fraction:.0%} of samples, "
                        f"{int(m['distinct_codes'])} distinct {what}s")
    if m["clipped_fraction"] > CLIPPED_FRACTION:
        warnings.append(f"clipping: {m['clipped_fraction']:.1%} of samples at full scale")
    return warnings


def analyze(audio: np.ndarray, sample_rate: int, codes: np.ndarray | None = None,
            reference_log_mel: np.ndarray | None = None,
            calibration: dict[str, Any] | None = None) -> dict[str, Any]:
    """All sanity metrics of one clip, the calibrated checks, and warnings.

    Args:
        audio: (T,) float audio in [-1, 1].
        sample_rate: Hz.
        codes: (T,) the mu-law codes the audio was decoded from; without them
            the stuck-value check counts distinct float values.
        reference_log_mel: :func:`average_log_mel` of validation audio (same
            sample rate); adds ``log_mel_distance_db``, flagged above
            :data:`MEL_DISTANCE_DB` when there is no ``calibration``.
        calibration: :func:`calibrate` on validation audio of the clip's
            label; adds ``log_mel_distance_db`` (to that label's spectrum, which
            takes the place of ``reference_log_mel``) and range checks.

    Returns:
        ``{"metrics": {name: float}, "checks": [...], "warnings": [str]}``.
        Metrics: rms_dbfs, silent_fraction, spectral_flatness, distinct_codes,
        most_common_fraction, clipped_fraction, band_energy_ratio_db,
        harmonicity, onset_rate, dc_offset and, with a reference,
        log_mel_distance_db. ``checks`` (see :func:`check_ranges`) is empty
        without a calibration.
    """
    audio = np.asarray(audio, dtype=np.float64).reshape(-1)
    values = audio if codes is None else np.asarray(codes).reshape(-1)
    top_value, top_fraction = most_common_fraction(values)
    features = clip_features(audio, sample_rate)
    m: dict[str, float] = {
        "rms_dbfs": features["rms_dbfs"],
        "silent_fraction": silent_fraction(audio, sample_rate),
        "spectral_flatness": features["spectral_flatness"],
        "distinct_codes": float(distinct_codes(values)),
        "most_common_fraction": top_fraction,
        "clipped_fraction": clipped_fraction(audio),
        **{k: v for k, v in features.items() if k not in ("rms_dbfs", "spectral_flatness")},
    }
    if calibration is not None:
        reference_log_mel = np.asarray(calibration["log_mel"])
    if reference_log_mel is not None:
        m["log_mel_distance_db"] = log_mel_distance_db(
            average_log_mel(audio, sample_rate, n_mels=len(reference_log_mel)), reference_log_mel)
    if calibration is not None and "joint" in calibration:  # calibrations from before have none
        m["joint_distance"] = joint_distance(joint_vector(m), calibration["joint"])
    warnings = _absolute_warnings(m, top_value, top_fraction, "code" if codes is not None else "value")
    checks: list[dict[str, Any]] = []
    if calibration is not None:
        checks, range_warnings = check_ranges(m, calibration)
        warnings += range_warnings
    elif "log_mel_distance_db" in m and m["log_mel_distance_db"] > MEL_DISTANCE_DB:
        warnings.append(f"spectral mismatch: average log-mel spectrum {m['log_mel_distance_db']:.1f} dB "
                        f"from the validation audio (> {MEL_DISTANCE_DB:.0f} dB)")
    return {"metrics": m, "checks": checks, "warnings": warnings}
