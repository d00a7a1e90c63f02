"""Sanity metrics of generated audio: cheap numbers that catch a broken model.

Bits per sample say how well a model predicts real audio; they do not say
whether what it *generates* sounds like anything. These pure NumPy functions
measure a clip and flag the failure modes a sampled WaveNet is known for:

* silence: the model settles on the code of zero amplitude and stays there;
* white noise: an untrained or diverged model samples codes nearly
  independently, which sounds like hiss and has a flat power spectrum;
* a stuck value: one code repeated (a DC offset, or silence at a non-zero level);
* clipping: samples pinned at full scale;
* a spectrum far from the training audio (distance of average log-mel spectra).

Every ``analyze`` call returns the metrics and a list of warning strings, each
starting with the failure mode's name (``"silence: ..."``) so reports and logs
can be grepped.
"""

from __future__ import annotations

from typing import Any

import numpy as np

# The spectral maths lives in wavenet.audio; these names stay importable from here.
from wavenet.audio import (
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
    "analyze",
    # Re-exported from wavenet.audio, where the spectral maths lives:
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


def analyze(audio: np.ndarray, sample_rate: int, codes: np.ndarray | None = None,
            reference_log_mel: np.ndarray | None = None) -> dict[str, Any]:
    """All sanity metrics of one clip, and warnings for known failure modes.

    Args:
        audio: (T,) float audio in [-1, 1].
        sample_rate: Hz.
        codes: (T,) the mu-law codes the audio was decoded from; without them
            the stuck-value check counts distinct float values.
        reference_log_mel: :func:`average_log_mel` of validation audio (same
            sample rate); adds ``log_mel_distance_db``.

    Returns:
        ``{"metrics": {name: float}, "warnings": [str]}``; metric names:
        rms_dbfs, silent_fraction, spectral_flatness, distinct_codes,
        most_common_fraction, clipped_fraction and, with a reference,
        log_mel_distance_db.
    """
    audio = np.asarray(audio, dtype=np.float64).reshape(-1)
    values = audio if codes is None else np.asarray(codes).reshape(-1)
    top_value, top_fraction = most_common_fraction(values)
    m: dict[str, float] = {
        "rms_dbfs": rms_dbfs(audio),
        "silent_fraction": silent_fraction(audio, sample_rate),
        "spectral_flatness": spectral_flatness(audio),
        "distinct_codes": float(distinct_codes(values)),
        "most_common_fraction": top_fraction,
        "clipped_fraction": clipped_fraction(audio),
    }
    if reference_log_mel is not None:
        m["log_mel_distance_db"] = log_mel_distance_db(
            average_log_mel(audio, sample_rate, n_mels=len(reference_log_mel)), reference_log_mel)
    warnings: list[str] = []
    if m["rms_dbfs"] < SILENCE_DBFS or m["silent_fraction"] > SILENT_FRAMES_FRACTION:
        warnings.append(f"silence: level {m['rms_dbfs']:.1f} dBFS, {m['silent_fraction']:.0%} of "
                        f"frames below {SILENCE_DBFS:.0f} dBFS")
    if m["spectral_flatness"] > NOISE_FLATNESS:
        warnings.append(f"white noise: spectral flatness {m['spectral_flatness']:.2f} "
                        f"(> {NOISE_FLATNESS}; white noise ~0.56, music < 0.1)")
    if top_fraction > STUCK_FRACTION or m["distinct_codes"] <= 2:
        what = "code" if codes is not None else "value"
        warnings.append(f"stuck value: {what} {top_value} is {top_fraction:.0%} of samples, "
                        f"{int(m['distinct_codes'])} distinct {what}s")
    if m["clipped_fraction"] > CLIPPED_FRACTION:
        warnings.append(f"clipping: {m['clipped_fraction']:.1%} of samples at full scale")
    if "log_mel_distance_db" in m and m["log_mel_distance_db"] > MEL_DISTANCE_DB:
        warnings.append(f"spectral mismatch: average log-mel spectrum {m['log_mel_distance_db']:.1f} dB "
                        f"from the validation audio (> {MEL_DISTANCE_DB:.0f} dB)")
    return {"metrics": m, "warnings": warnings}
