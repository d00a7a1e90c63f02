"""Signal maths: mu-law companding and PCM conversions.

Pure functions, NumPy and TensorFlow versions that agree. mu-law follows the
WaveNet paper (section 2.2, ITU-T G.711 companding):

    f(x) = sign(x) * ln(1 + mu |x|) / ln(1 + mu),   -1 < x < 1

then quantised to ``mu + 1`` integer codes. With mu = 255 the codes are uint8.
"""

from __future__ import annotations

import numpy as np

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
    x = np.asarray(x)
    if x.ndim == 1:
        return x.astype(np.float32, copy=False)
    return x.mean(axis=1, dtype=np.float64).astype(np.float32)
