"""Signal maths: every pure function on audio samples the project uses.

mu-law companding (NumPy and TensorFlow versions that agree), PCM
conversions, mono, resampling, silence trimming, peak normalisation, framing
and frame RMS, power spectra and the mel filterbank. Each is tested against a
plain NumPy reference (tests/test_audio.py); preprocessing chains them, the
sanity checks of :mod:`wavenet.generation.quality` measure with them.

mu-law follows the WaveNet paper (section 2.2, ITU-T G.711 companding):

    f(x) = sign(x) * ln(1 + mu |x|) / ln(1 + mu),   -1 < x < 1

then quantised to ``mu + 1`` integer codes. With mu = 255 the codes are uint8.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import numpy as np
import soxr
from numpy.lib.stride_tricks import sliding_window_view

__all__ = [
    "mu_law_compress",
    "mu_law_expand",
    "mu_law_encode",
    "mu_law_decode",
    "tf_mu_law_encode",
    "tf_mu_law_decode",
    "pcm16_to_float",
    "float_to_pcm16",
    "to_mono",
    "resample",
    "resample_stream",
    "SILENCE_FRAME_SECONDS",
    "frame_signal",
    "frame_power",
    "frame_rms",
    "silence_bounds",
    "trim_silence",
    "peak_gain",
    "peak_normalize",
    "power_spectrogram",
    "hz_to_mel",
    "mel_to_hz",
    "mel_filterbank",
]


def mu_law_compress(x: np.ndarray, mu: int = 255) -> np.ndarray:
    """Continuous companding: float in [-1, 1] -> float in [-1, 1]."""
    x = np.clip(np.asarray(x, dtype=np.float64), -1.0, 1.0)
    return np.sign(x) * np.log1p(mu * np.abs(x)) / np.log1p(mu)


def mu_law_expand(y: np.ndarray, mu: int = 255) -> np.ndarray:
    """Inverse of :func:`mu_law_compress`."""
    y = np.asarray(y, dtype=np.float64)
    return np.sign(y) * np.expm1(np.abs(y) * np.log1p(mu)) / mu


def mu_law_encode(x: np.ndarray, quantization_channels: int = 256) -> np.ndarray:
    """Float audio in [-1, 1] -> integer codes in [0, quantization_channels).

    Args:
        x: float audio, any shape; values outside [-1, 1] are clipped.
        quantization_channels: number of codes (mu + 1).

    Returns:
        uint8 codes (for <= 256 channels) with the shape of ``x``.
    """
    mu = quantization_channels - 1
    y = mu_law_compress(x, mu)
    # Map [-1, 1] to [0, mu] and round to the nearest code.
    codes = np.floor((y + 1.0) / 2.0 * mu + 0.5)
    return np.clip(codes, 0, mu).astype(np.uint8 if quantization_channels <= 256 else np.int32)


def mu_law_decode(codes: np.ndarray, quantization_channels: int = 256) -> np.ndarray:
    """Integer codes -> float32 audio in [-1, 1] (the centre of each code's bin)."""
    mu = quantization_channels - 1
    y = 2.0 * np.asarray(codes, dtype=np.float64) / mu - 1.0
    return mu_law_expand(y, mu).astype(np.float32)


def tf_mu_law_encode(x, quantization_channels: int = 256):
    """TensorFlow version of :func:`mu_law_encode` (returns int32 codes)."""
    import tensorflow as tf

    mu = tf.constant(quantization_channels - 1, tf.float64)
    x = tf.clip_by_value(tf.cast(x, tf.float64), -1.0, 1.0)
    y = tf.sign(x) * tf.math.log1p(mu * tf.abs(x)) / tf.math.log1p(mu)
    codes = tf.floor((y + 1.0) / 2.0 * mu + 0.5)
    return tf.cast(tf.clip_by_value(codes, tf.constant(0.0, tf.float64), mu), tf.int32)


def tf_mu_law_decode(codes, quantization_channels: int = 256):
    """TensorFlow version of :func:`mu_law_decode` (returns float32)."""
    import tensorflow as tf

    mu = tf.constant(quantization_channels - 1, tf.float64)
    y = 2.0 * tf.cast(codes, tf.float64) / mu - 1.0
    x = tf.sign(y) * tf.math.expm1(tf.abs(y) * tf.math.log1p(mu)) / mu
    return tf.cast(x, tf.float32)


def pcm16_to_float(x: np.ndarray) -> np.ndarray:
    """int16 PCM -> float32 in [-1, 1)."""
    return np.asarray(x, dtype=np.int16).astype(np.float32) / 32768.0


def float_to_pcm16(x: np.ndarray) -> np.ndarray:
    """float in [-1, 1] -> int16 PCM (clipped, rounded)."""
    y = np.clip(np.asarray(x, dtype=np.float64), -1.0, 1.0) * 32767.0
    return np.round(y).astype(np.int16)


def to_mono(x: np.ndarray) -> np.ndarray:
    """(frames,) or (frames, channels) -> (frames,) float32 by averaging channels."""
    x = np.asarray(x, dtype=np.float32)
    if x.ndim == 1:
        return x
    if x.shape[1] == 1:
        return x[:, 0]
    # Column by column: NumPy's mean over a short axis 1 is several times slower.
    mono = x[:, 0].copy()
    for c in range(1, x.shape[1]):
        mono += x[:, c]
    mono *= np.float32(1.0 / x.shape[1])
    return mono


def resample(x: np.ndarray, rate_in: int, rate_out: int) -> np.ndarray:
    """Resample mono audio with soxr's HQ filter (band-limited, no aliasing above 0.91 of Nyquist)."""
    if rate_in == rate_out:
        return x
    return soxr.resample(x, rate_in, rate_out, quality="HQ")


def resample_stream(blocks: Iterable[np.ndarray], rate_in: int, rate_out: int) -> Iterator[np.ndarray]:
    """:func:`resample` of the concatenated ``blocks``, one output block per input block.

    soxr's ``ResampleStream`` keeps the filter's state between chunks ("for
    real-time processing or very long signal", https://pypi.org/project/soxr/,
    "Streaming usage"); with ``last=True`` on the end it flushes the filter's
    tail. Memory is one block, not the signal. With the same quality the
    output equals :func:`resample` of the whole signal (tests/test_audio.py
    checks it to the last bit for down- and up-sampling).

    Args:
        blocks: float32 mono blocks (T_i,) of one signal, in order.
        rate_in, rate_out: sample rates.

    Yields:
        float32 (U_i,) blocks; their sizes vary (some may be empty).
    """
    if rate_in == rate_out:
        yield from blocks
        return
    stream = soxr.ResampleStream(rate_in, rate_out, 1, dtype="float32", quality="HQ")
    for block in blocks:
        yield stream.resample_chunk(np.asarray(block, dtype=np.float32), last=False)
    yield stream.resample_chunk(np.zeros(0, dtype=np.float32), last=True)


# Silence is judged on 10 ms frames: short enough to keep note onsets, long
# enough that one zero crossing does not count as silence.
SILENCE_FRAME_SECONDS = 0.01


def frame_signal(x: np.ndarray, frame_length: int, hop: int) -> np.ndarray:
    """Cut a 1-D signal into frames every ``hop`` samples (the last partial frame is zero-padded).

    Args:
        x: (T,) signal.
        frame_length: samples per frame.
        hop: samples between frame starts.

    Returns:
        (N, frame_length) float64 frames, N = max(1, ceil((T - frame_length) / hop) + 1);
        a view into one padded copy, not N copies.
    """
    x = np.asarray(x, dtype=np.float64).reshape(-1)
    if frame_length < 1 or hop < 1:
        raise ValueError(f"frame_length and hop must be >= 1. Received: {frame_length}, {hop}")
    n = max(1, int(np.ceil(max(len(x) - frame_length, 0) / hop)) + 1)
    padded = np.zeros((n - 1) * hop + frame_length)
    padded[:len(x)] = x
    if hop == frame_length:
        return padded.reshape(n, frame_length)
    return sliding_window_view(padded, frame_length)[::hop]


def frame_power(x: np.ndarray, frame_length: int, hop: int | None = None) -> np.ndarray:
    """Mean square of each frame (:func:`frame_signal`; ``hop`` defaults to ``frame_length``)."""
    frames = frame_signal(x, frame_length, hop or frame_length)
    return np.mean(frames * frames, axis=-1)


def frame_rms(x: np.ndarray, frame_length: int, hop: int | None = None) -> np.ndarray:
    """RMS of each frame (1.0 for a full-scale square wave)."""
    return np.sqrt(frame_power(x, frame_length, hop))


# Frames per block when silence_bounds measures a long signal: 8 s of 10 ms frames.
# frame_rms holds float64 copies of a block (the signal, its zero-padded copy, the
# squares): 2.0 MiB at 16 kHz (tracemalloc); 6400 frames (64 s), the block until
# 2026-12-07, took 15.7 MiB, more than the decoded block preprocessing budgets for.
_FRAMES_PER_BLOCK = 800


def silence_bounds(x: np.ndarray, sample_rate: int, threshold_db: float) -> tuple[int, int]:
    """``(start, stop)`` of :func:`trim_silence`: from the first loud 10 ms frame to the end of the last.

    Frames are measured a block of whole frames at a time, so the working
    memory is one block however long ``x`` is; each frame's RMS is the same
    number :func:`frame_rms` gives for the whole signal (frames never straddle
    blocks, and the last partial frame is zero-padded as there).

    Returns:
        Sample indices with ``0 <= start <= stop <= len(x)``; ``(0, 0)`` when no
        frame is louder than ``threshold_db`` dBFS RMS.
    """
    frame = max(1, int(round(sample_rate * SILENCE_FRAME_SECONDS)))
    threshold = 10.0 ** (threshold_db / 20.0)
    step = frame * _FRAMES_PER_BLOCK
    first = last = -1
    for offset in range(0, len(x), step):
        loud = np.flatnonzero(frame_rms(x[offset:offset + step], frame) > threshold)
        if loud.size:
            first = first if first >= 0 else offset + int(loud[0]) * frame
            last = offset + int(loud[-1]) * frame
    if first < 0:
        return 0, 0
    return first, min(len(x), last + frame)


def trim_silence(x: np.ndarray, sample_rate: int, threshold_db: float) -> np.ndarray:
    """Drop leading and trailing 10 ms frames whose RMS is below ``threshold_db`` dBFS.

    Args:
        x: float mono audio, shape (T,).
        sample_rate: samples per second of ``x``.
        threshold_db: frame RMS threshold in dBFS (negative).

    Returns:
        The slice of ``x`` from the first to the end of the last loud frame
        (shape (T',), possibly empty when every frame is quiet).
    """
    start, stop = silence_bounds(x, sample_rate, threshold_db)
    return x[start:stop]


def peak_gain(x: np.ndarray, peak_db: float) -> float:
    """The factor that brings the largest absolute sample of ``x`` to ``peak_db`` dBFS (1.0 for silence).

    A Python float, so that ``x * gain`` stays float32 for float32 ``x``
    (NumPy 2 treats Python scalars as weak: NEP 50) and scaling a block at a
    time gives the same samples as scaling the whole signal.
    """
    # max and -min, not max(abs(x)): the same number without a copy of the whole signal.
    peak = max(float(np.max(x)), -float(np.min(x))) if x.size else 0.0
    return 1.0 if peak == 0.0 else float(10.0 ** (peak_db / 20.0) / peak)


def peak_normalize(x: np.ndarray, peak_db: float) -> np.ndarray:
    """Scale ``x`` so that its largest absolute sample is ``peak_db`` dBFS (float32)."""
    return (x * peak_gain(x, peak_db)).astype(np.float32)


def power_spectrogram(x: np.ndarray, n_fft: int = 512, hop: int = 256) -> np.ndarray:
    """Hann-windowed power spectrogram.

    Returns:
        (N, n_fft // 2 + 1) power per frame and frequency bin.
    """
    frames = frame_signal(x, n_fft, hop) * np.hanning(n_fft)[None, :]
    return np.abs(np.fft.rfft(frames, axis=-1)) ** 2


def hz_to_mel(f: np.ndarray | float) -> np.ndarray:
    """The mel scale as used by HTK: ``2595 log10(1 + f / 700)`` (O'Shaughnessy 1987)."""
    return 2595.0 * np.log10(1.0 + np.asarray(f, dtype=np.float64) / 700.0)


def mel_to_hz(m: np.ndarray | float) -> np.ndarray:
    """Inverse of :func:`hz_to_mel`."""
    return 700.0 * (10.0 ** (np.asarray(m, dtype=np.float64) / 2595.0) - 1.0)


def mel_filterbank(sample_rate: int, n_fft: int, n_mels: int = 40, fmin: float = 0.0,
                   fmax: float | None = None) -> np.ndarray:
    """Triangular filters spaced evenly on the mel scale.

    Filter m rises linearly from mel centre m-1 to centre m and falls to
    centre m+1 (peak 1.0), evaluated at the rfft bin frequencies.

    Returns:
        (n_mels, n_fft // 2 + 1) weights.
    """
    fmax = sample_rate / 2.0 if fmax is None else fmax
    if not 0 <= fmin < fmax <= sample_rate / 2.0:
        raise ValueError(f"need 0 <= fmin < fmax <= sample_rate / 2. Received: {fmin}, {fmax}")
    bins = np.fft.rfftfreq(n_fft, 1.0 / sample_rate)  # (F,)
    edges = mel_to_hz(np.linspace(hz_to_mel(fmin), hz_to_mel(fmax), n_mels + 2))
    lower, centre, upper = edges[:-2, None], edges[1:-1, None], edges[2:, None]
    rising = (bins[None, :] - lower) / (centre - lower)
    falling = (upper - bins[None, :]) / (upper - centre)
    return np.maximum(0.0, np.minimum(rising, falling))
