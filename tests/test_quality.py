import numpy as np
import pytest

from wavenet import quality
from wavenet.audio import mu_law_decode, mu_law_encode

SR = 16000


def codes_and_audio(x):
    codes = mu_law_encode(x)
    return codes, mu_law_decode(codes)


def music(seconds=1.0):
    """A decaying chord, repeated: pitched, like the demo corpus."""
    t = np.arange(int(seconds * SR)) / SR
    env = np.exp(-4.0 * np.mod(t, 0.5))
    return 0.2 * env * sum(np.sin(2 * np.pi * f * t) for f in (220.0, 277.2, 329.6, 440.0))


def kinds(result):
    return [w.split(":")[0] for w in result["warnings"]]


def test_music_raises_no_warning_and_matches_its_own_reference():
    codes, audio = codes_and_audio(music())
    ref = quality.average_log_mel(audio, SR)
    r = quality.analyze(audio, SR, codes=codes, reference_log_mel=ref)
    assert r["warnings"] == []
    assert r["metrics"]["log_mel_distance_db"] == pytest.approx(0.0, abs=1e-9)
    assert r["metrics"]["spectral_flatness"] < 0.05
    assert r["metrics"]["distinct_codes"] > 100


def test_silence_is_flagged():
    codes, audio = codes_and_audio(np.zeros(SR))
    ref = quality.average_log_mel(music(), SR)
    r = quality.analyze(audio, SR, codes=codes, reference_log_mel=ref)
    assert "silence" in kinds(r) and "spectral mismatch" in kinds(r)
    assert r["metrics"]["silent_fraction"] == 1.0 and r["metrics"]["rms_dbfs"] < -60
    # Near-silence with a little noise is still silence, without being "stuck".
    quiet = 1e-4 * np.random.default_rng(0).normal(size=SR)
    r = quality.analyze(quiet, SR)
    assert kinds(r) == ["silence"]


def test_white_noise_is_flagged():
    rng = np.random.default_rng(0)
    for audio in (np.clip(0.3 * rng.normal(size=SR), -1, 1),      # Gaussian
                  mu_law_decode(rng.integers(0, 256, SR))):       # i.i.d. codes: an untrained model
        r = quality.analyze(audio, SR, reference_log_mel=quality.average_log_mel(music(), SR))
        assert "white noise" in kinds(r) and "spectral mismatch" in kinds(r)
        assert r["metrics"]["spectral_flatness"] == pytest.approx(0.56, abs=0.03)


def test_a_stuck_value_is_flagged():
    codes = np.full(SR, 200, np.uint8)
    codes[::1000] = 201
    r = quality.analyze(mu_law_decode(codes), SR, codes=codes)
    assert kinds(r) == ["stuck value"]
    assert "code 200" in r["warnings"][0] and r["metrics"]["distinct_codes"] == 2


def test_clipping_is_flagged():
    x = np.clip(3.0 * np.sin(2 * np.pi * 100 * np.arange(SR) / SR), -1, 1)
    r = quality.analyze(x, SR)
    assert "clipping" in kinds(r) and r["metrics"]["clipped_fraction"] > 0.5


def test_levels_and_fractions_of_known_signals():
    t = np.arange(SR) / SR
    assert quality.rms_dbfs(np.sin(2 * np.pi * 100 * t)) == pytest.approx(-3.0103, abs=1e-3)
    assert quality.rms_dbfs(np.ones(10)) == pytest.approx(0.0)
    half = np.concatenate([np.zeros(SR // 2), 0.5 * np.sin(2 * np.pi * 100 * t[:SR // 2])])
    assert quality.silent_fraction(half, SR) == pytest.approx(0.5, abs=0.03)
    assert quality.most_common_fraction(np.array([1, 1, 1, 2])) == (1, 0.75)
    assert quality.clipped_fraction(np.array([1.0, -1.0, 0.5, 0.0])) == 0.5


def test_mel_filterbank_shape_peaks_and_coverage():
    fb = quality.mel_filterbank(SR, 512, n_mels=40)
    assert fb.shape == (40, 257) and fb.min() >= 0 and fb.max() <= 1
    assert np.all(fb.sum(axis=1) > 0)  # no empty filter
    centres = np.argmax(fb, axis=1)
    assert np.all(np.diff(centres) >= 0)  # filters ascend in frequency
    # Centres are evenly spaced in mel: spacing in Hz grows with frequency.
    np.testing.assert_allclose(quality.mel_to_hz(quality.hz_to_mel([0.0, 700.0, 4000.0])),
                               [0.0, 700.0, 4000.0])
    assert quality.hz_to_mel(700.0) == pytest.approx(2595 * np.log10(2))


def test_log_mel_distance_grows_with_spectral_difference():
    low = 0.3 * np.sin(2 * np.pi * 200 * np.arange(SR) / SR)
    high = 0.3 * np.sin(2 * np.pi * 3000 * np.arange(SR) / SR)
    a, b = quality.average_log_mel(low, SR), quality.average_log_mel(high, SR)
    assert quality.log_mel_distance_db(a, a) == 0.0
    assert quality.log_mel_distance_db(a, b) > quality.MEL_DISTANCE_DB
    with pytest.raises(ValueError, match="same shape"):
        quality.log_mel_distance_db(a, b[:10])
