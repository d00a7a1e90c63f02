import numpy as np
import pytest

from wavenet.data import audio


def reference_mu_law(x, mu=255):
    # The paper's formula, written out independently.
    y = np.sign(x) * np.log(1 + mu * np.abs(x)) / np.log(1 + mu)
    return np.rint((y + 1) / 2 * mu).astype(int)


def test_encode_matches_formula():
    x = np.linspace(-1, 1, 10001)
    codes = audio.mu_law_encode(x)
    assert codes.dtype == np.uint8
    # Half-way points may round either way; everywhere else exactly the formula.
    assert np.mean(codes == reference_mu_law(x)) > 0.999
    assert np.max(np.abs(codes.astype(int) - reference_mu_law(x))) <= 1
    assert codes.min() == 0 and codes.max() == 255


def test_round_trip_error_is_within_one_bin():
    x = np.linspace(-1, 1, 4001)
    back = audio.mu_law_decode(audio.mu_law_encode(x))
    # Decoding returns the centre of the code's bin: the error is at most half
    # a bin of the companded signal (1/255), mapped back through the expansion.
    y = np.abs(audio.mu_law_compress(x))
    half_bin = audio.mu_law_expand(np.minimum(y + 1 / 255, 1)) - audio.mu_law_expand(y)
    assert np.all(np.abs(back - x) <= half_bin + 1e-6)
    codes = np.arange(256)
    np.testing.assert_array_equal(audio.mu_law_encode(audio.mu_law_decode(codes)), codes)


def test_silence_is_the_middle_code_and_monotone():
    assert int(audio.mu_law_encode(np.array([0.0]))[0]) in (127, 128)
    codes = audio.mu_law_encode(np.linspace(-1, 1, 1000))
    assert np.all(np.diff(codes.astype(int)) >= 0)


def test_clips_out_of_range():
    assert audio.mu_law_encode(np.array([-3.0, 3.0])).tolist() == [0, 255]


@pytest.mark.parametrize("q", [256, 16])
def test_tf_and_numpy_agree(q):
    rng = np.random.default_rng(0)
    x = np.concatenate([rng.uniform(-1, 1, 5000), np.linspace(-1, 1, 999)])
    np.testing.assert_array_equal(audio.tf_mu_law_encode(x, q).numpy(), audio.mu_law_encode(x, q))
    codes = np.arange(q)
    np.testing.assert_allclose(audio.tf_mu_law_decode(codes, q).numpy(), audio.mu_law_decode(codes, q),
                               atol=1e-6)


def test_pcm16_conversions():
    x = np.array([-32768, -1, 0, 1, 32767], dtype=np.int16)
    f = audio.pcm16_to_float(x)
    assert f.dtype == np.float32 and f[0] == -1.0 and f[2] == 0.0
    np.testing.assert_array_equal(audio.float_to_pcm16(np.array([-1.5, 0.0, 1.0, 0.5])),
                                  [-32767, 0, 32767, 16384])


def test_to_mono_averages_channels():
    x = np.stack([np.ones(4), -np.ones(4), np.zeros(4)], axis=1)
    np.testing.assert_allclose(audio.to_mono(x), np.full(4, 0.0))
    np.testing.assert_allclose(audio.to_mono(np.ones((3, 2))), np.ones(3))


# -- the rest of the signal maths, each against a plain NumPy (or textbook) reference --------

def test_to_mono_is_the_mean_of_the_channels_in_float32():
    x = np.random.default_rng(0).uniform(-1, 1, (1000, 3)).astype(np.float32)
    mono = audio.to_mono(x)
    assert mono.dtype == np.float32 and mono.shape == (1000,)
    np.testing.assert_allclose(mono, x.mean(axis=1), atol=1e-6)
    np.testing.assert_array_equal(audio.to_mono(x[:, :1]), x[:, 0])


def test_resample_keeps_a_tones_frequency_and_level():
    sr_in, sr_out, f = 44100, 16000, 1000.0
    x = 0.5 * np.sin(2 * np.pi * f * np.arange(sr_in) / sr_in).astype(np.float32)
    y = audio.resample(x, sr_in, sr_out)
    assert y.size == pytest.approx(sr_out, abs=2)
    ref = 0.5 * np.sin(2 * np.pi * f * np.arange(y.size) / sr_out)
    core = slice(500, -500)  # away from the filter's edge transients
    np.testing.assert_allclose(y[core], ref[core], atol=2e-3)
    assert audio.resample(x, sr_in, sr_in) is x


def reference_frames(x, length, hop):
    n = max(1, int(np.ceil(max(len(x) - length, 0) / hop)) + 1)
    return np.array([np.pad(x[i * hop:i * hop + length], (0, length - len(x[i * hop:i * hop + length])))
                     for i in range(n)])


@pytest.mark.parametrize("n, length, hop", [(1000, 160, 160), (1001, 160, 160), (50, 160, 160),
                                            (1000, 512, 256), (5, 4, 3)])
def test_frames_power_and_rms_match_a_loop(n, length, hop):
    x = np.random.default_rng(n).normal(0, 0.3, n)
    frames = reference_frames(x, length, hop)
    np.testing.assert_array_equal(audio.frame_signal(x, length, hop), frames)
    np.testing.assert_allclose(audio.frame_power(x, length, hop), (frames ** 2).mean(axis=1), rtol=1e-12)
    np.testing.assert_allclose(audio.frame_rms(x, length, hop), np.sqrt((frames ** 2).mean(axis=1)),
                               rtol=1e-12)
    with pytest.raises(ValueError, match="frame_length and hop"):
        audio.frame_signal(x, 0, 1)


def test_trim_silence_keeps_the_loud_frames_and_normalize_reaches_the_peak():
    sr = 1000  # 10 ms frames of 10 samples
    rng = np.random.default_rng(1)
    x = np.concatenate([1e-4 * rng.normal(size=95), 0.3 * rng.normal(size=200), np.zeros(105)])
    y = audio.trim_silence(x, sr, -50.0)
    rms = np.sqrt([np.mean(np.pad(x[i:i + 10], (0, 10 - len(x[i:i + 10]))) ** 2) for i in range(0, 400, 10)])
    loud = np.flatnonzero(rms > 10 ** (-50 / 20))
    np.testing.assert_array_equal(y, x[loud[0] * 10:(loud[-1] + 1) * 10])
    assert audio.trim_silence(np.zeros(0), sr, -50.0).size == 0
    z = audio.peak_normalize(x, -3.0)
    assert z.dtype == np.float32 and np.max(np.abs(z)) == pytest.approx(10 ** (-3 / 20), rel=1e-6)
    np.testing.assert_allclose(z, x * (10 ** (-3 / 20) / np.max(np.abs(x))), rtol=1e-6)
    assert np.all(audio.peak_normalize(np.zeros(4), -3.0) == 0)


@pytest.mark.parametrize("rate_in,rate_out", [(192000, 16000), (44100, 16000), (8000, 16000),
                                               (16000, 16000)])
def test_resample_stream_of_blocks_equals_resampling_the_whole_signal(rate_in, rate_out):
    x = np.random.default_rng(3).normal(0, 0.3, rate_in * 2 + 123).astype(np.float32)
    sizes = [1, 999, 65536, 4096, len(x)]  # uneven blocks, the last one runs past the end
    blocks, start = [], 0
    for n in sizes:
        blocks.append(x[start:start + n])
        start += n
    streamed = np.concatenate(list(audio.resample_stream(iter(blocks), rate_in, rate_out)))
    np.testing.assert_array_equal(streamed, audio.resample(x, rate_in, rate_out))


def test_silence_bounds_over_many_blocks_match_the_whole_signal_frame_rms(monkeypatch):
    monkeypatch.setattr(audio, "_FRAMES_PER_BLOCK", 7)  # 70-sample blocks at 1 kHz: many of them
    sr, rng = 1000, np.random.default_rng(4)
    x = np.concatenate([1e-4 * rng.normal(size=333), 0.3 * rng.normal(size=1207), 1e-5 * rng.normal(size=55),
                        0.2 * rng.normal(size=91), np.zeros(404), np.full(3, 0.9)])  # a loud partial frame at the end
    loud = np.flatnonzero(np.sqrt(np.mean(reference_frames(x, 10, 10) ** 2, axis=1)) > 10 ** (-50 / 20))
    assert audio.silence_bounds(x, sr, -50.0) == (loud[0] * 10, len(x))
    np.testing.assert_array_equal(audio.trim_silence(x, sr, -50.0), x[loud[0] * 10:])
    assert audio.silence_bounds(np.zeros(500), sr, -50.0) == (0, 0)


def test_power_spectrogram_and_mel_filterbank_match_direct_formulas():
    sr, n_fft = 8000, 64
    x = np.random.default_rng(2).normal(0, 0.2, 300)
    frames = reference_frames(x, n_fft, 32) * np.hanning(n_fft)
    dft = np.exp(-2j * np.pi * np.outer(np.arange(n_fft // 2 + 1), np.arange(n_fft)) / n_fft)
    np.testing.assert_allclose(audio.power_spectrogram(x, n_fft, 32), np.abs(frames @ dft.T) ** 2,
                               rtol=1e-9, atol=1e-12)
    fb = audio.mel_filterbank(sr, n_fft, n_mels=6)
    mel = 2595 * np.log10(1 + np.linspace(0, sr / 2, n_fft // 2 + 1) / 700)  # HTK mel of each bin
    centres = np.linspace(0, 2595 * np.log10(1 + (sr / 2) / 700), 8)
    for m in range(6):  # triangle m: 0 at centre m, 1 at centre m+1, 0 at centre m+2 (in Hz, linear)
        lo, mid, hi = (700 * (10 ** (centres[m + k] / 2595) - 1) for k in range(3))
        hz = 700 * (10 ** (mel / 2595) - 1)
        want = np.clip(np.minimum((hz - lo) / (mid - lo), (hi - hz) / (hi - mid)), 0, None)
        np.testing.assert_allclose(fb[m], want, atol=1e-9)
