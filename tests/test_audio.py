import numpy as np
import pytest

from wavenet import audio


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
