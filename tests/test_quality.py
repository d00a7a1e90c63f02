import numpy as np
import pytest

from wavenet.data.audio import mu_law_decode, mu_law_encode
from wavenet.generation import quality

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


# -- calibrated features against plain references ------------------------------------

def test_band_energy_ratio_of_two_tones_and_of_white_noise():
    t = np.arange(SR) / SR
    x = 0.1 * np.sin(2 * np.pi * 6000 * t) + 0.5 * np.sin(2 * np.pi * 500 * t)
    assert quality.band_energy_ratio_db(x, SR) == pytest.approx(20 * np.log10(0.1 / 0.5), abs=0.2)
    noise = np.random.default_rng(0).normal(size=4 * SR)
    # 4 kHz of band against 1 kHz (less the DC bin): 10 log10(4) = 6 dB.
    assert quality.band_energy_ratio_db(noise, SR) == pytest.approx(6.0, abs=0.5)
    with pytest.raises(ValueError, match="band without FFT bins"):
        quality.band_energy_ratio_db(noise, 8000, high=(5000.0, 8000.0))


def yin_reference(frame, max_lag):
    """YIN eqs. 6 and 8, one lag at a time."""
    w = len(frame) - max_lag
    d = np.array([np.sum((frame[:w] - frame[tau:tau + w]) ** 2) for tau in range(max_lag + 1)])
    out = np.ones(max_lag + 1)
    for tau in range(1, max_lag + 1):
        out[tau] = d[tau] * tau / np.sum(d[1:tau + 1])
    return out


def test_yin_difference_matches_the_definition():
    frames = np.random.default_rng(1).normal(size=(3, 200))
    np.testing.assert_allclose(quality.yin_difference(frames, 60),
                               np.stack([yin_reference(f, 60) for f in frames]), rtol=1e-9, atol=1e-9)
    t = np.arange(400)
    d = quality.yin_difference(np.sin(2 * np.pi * t / 50.0)[None, :], 120)[0]
    assert d[50] < 1e-6 and d[100] < 1e-6 and d[25] > 1.0  # zero at the period, high at half of it


def test_harmonicity_separates_tones_from_noise_and_ignores_offsets():
    rng = np.random.default_rng(2)
    t = np.arange(2 * SR) / SR
    assert quality.harmonicity(0.3 * np.sin(2 * np.pi * 220 * t), SR) > 0.95
    white = rng.normal(size=2 * SR)
    brown = np.cumsum(rng.normal(size=2 * SR))
    assert quality.harmonicity(0.3 * white / white.std(), SR) < 0.2
    # Smooth noise has a small difference at short lags; the running-mean normalisation discounts it.
    assert quality.harmonicity(0.3 * brown / brown.std(), SR) < 0.2
    assert quality.harmonicity(np.full(2 * SR, 0.2), SR) == 0.0  # a constant is not a pitch
    assert quality.harmonicity(np.zeros(2 * SR), SR) == 0.0
    assert quality.harmonicity(np.zeros(100), SR) == 0.0  # shorter than one frame


def test_onsets_are_found_at_note_attacks_and_not_in_steady_sounds():
    rng = np.random.default_rng(3)
    x = np.zeros(3 * SR)
    times = [0.25, 0.8, 1.3, 1.9, 2.4]
    for t0 in times:  # plucked notes, each ringing on under the next
        i = int(t0 * SR)
        t = np.arange(x.size - i) / SR
        x[i:] += 0.3 * np.exp(-8 * t) * np.sin(2 * np.pi * 330 * t)
    found = quality.onset_times(x, SR)
    assert len(found) == len(times)
    np.testing.assert_allclose(found, times, atol=0.035)  # within about two 16 ms frames
    assert quality.onset_rate(x, SR) == pytest.approx(len(times) / 3.0)
    assert quality.onset_rate(0.3 * rng.normal(size=3 * SR), SR) == 0.0  # stationary noise
    for sr in (8000, 16000, 22050, 44100):  # a steady tone's leakage ripple is not an onset
        for f in (110.0, 440.0):
            assert quality.onset_rate(0.9 * np.sin(2 * np.pi * f * np.arange(2 * sr) / sr), sr) == 0.0
    assert quality.onset_rate(np.zeros(3 * SR), SR) == 0.0


def test_reference_windows_are_spread_over_signals_and_never_span_two():
    signals = [np.arange(0, 1000), np.arange(10_000, 10_400), np.arange(20_000, 20_050)]
    every = quality.reference_windows(signals, 100)  # hop 50
    assert len(every) == 19 + 7
    assert all(w.size == 100 and w[-1] - w[0] == 99 for w in every)  # contiguous: one signal each
    spread = quality.reference_windows(signals, 100, count=5)
    assert len(spread) == 5 and spread[0][0] == 0 and spread[-1][0] == 10_300
    assert {w[0] // 10_000 for w in spread} == {0, 1}
    short = quality.reference_windows(signals, 2000)
    assert [w.size for w in short] == [1000, 400, 50]  # nothing long enough: whole signals


def test_a_check_widens_its_range_by_its_tolerance():
    add = quality.Check("x", "x", "dB", "add", 6.0)
    assert add.widen(-30.0, -10.0) == (-36.0, -4.0) and add.describe() == "+-6 dB"
    factor = quality.Check("y", "y", "", "factor", 2.0, floor=1e-3)
    assert factor.widen(1e-5, 0.01) == (5e-4, 0.02) and factor.describe() == "x/ 2"
    upper = quality.Check("z", "z", "", "factor", 2.0, upper_only=True, floor=1e-3)
    assert upper.widen(0.0, 0.004) == (None, 0.008)


def test_calibration_ranges_are_percentiles_over_windows_widened():
    x = music(6.0) + 0.01 * np.random.default_rng(4).normal(size=6 * SR)
    cal = quality.calibrate([x], SR, SR, label="chords")
    windows = quality.reference_windows([x], SR)
    assert cal["windows"] == len(windows) == 11 and cal["window_seconds"] == 1.0
    for check in quality.CHECKS:
        if check.metric in ("log_mel_distance_db", "joint_distance"):  # not per-window features
            continue
        values = [quality.clip_features(w, SR)[check.metric] for w in windows]
        lo, hi = np.percentile(values, quality.REFERENCE_PERCENTILES)
        r = cal["ranges"][check.metric]
        assert (r["reference_low"], r["reference_high"]) == pytest.approx((lo, hi))
        assert (r["low"], r["high"]) == pytest.approx(check.widen(lo, hi))
    results, warnings = quality.check_ranges(quality.analyze(x[:SR], SR)["metrics"], cal)
    assert warnings == [] and all(r["passed"] for r in results)
    assert quality.calibrate([x], SR, SR, max_windows=4)["windows"] == 4
    # The joint distance's range: the 97.5th percentile of windows' held-out distances, widened.
    joint = cal["ranges"]["joint_distance"]
    assert joint["low"] is None and joint["high"] == pytest.approx(
        joint["reference_high"] * quality.JOINT_TOLERANCE)


def test_tonal_flatness_is_noise_like_for_any_colour_and_low_for_harmonic_sounds():
    rng = np.random.default_rng(1)
    for exponent in (0, 1, 2):
        assert 0.45 < quality.tonal_flatness(coloured_noise(exponent), SR) < 0.62, exponent
    assert 0.5 < quality.tonal_flatness(low_passed_noise(500.0), SR) < 0.62
    # A chord's harmonic lines stand far above their envelope, even with a little noise.
    assert quality.tonal_flatness(music(2.0) + 0.001 * rng.normal(size=2 * SR), SR) < 0.2
    assert quality.tonal_flatness(np.zeros(SR), SR) == 0.0


def test_level_variation_is_small_for_steady_noise_and_large_for_notes():
    assert quality.level_variation_db(coloured_noise(0), SR) < 1.0
    assert quality.level_variation_db(music(2.0), SR) > 4.0


def test_joint_distance_is_about_one_for_the_reference_and_large_far_from_it():
    rng = np.random.default_rng(2)
    names = [n for n, _ in quality.JOINT_FEATURES]
    centre = np.array([-15.0, -30.0, -2.5, 0.7, 2.0, 0.2, 0.6, 3.0])
    spread = np.array([2.0, 3.0, 0.3, 0.1, 1.0, 0.05, 0.2, 1.0])
    vectors = centre + spread * rng.normal(size=(400, len(names)))
    model = quality.fit_joint(vectors)
    assert np.median([quality.joint_distance(v, model) for v in vectors]) == pytest.approx(0.92, abs=0.1)
    assert np.asarray(model["scale"]) == pytest.approx(spread, rel=0.15)
    far = centre.copy()
    far[3] -= 6 * spread[3]  # six spreads off in one feature
    assert quality.joint_distance(far, model) > 2.0
    # Held out by group: every window gets a distance from a fit without its own group.
    held = quality.held_out_distances(vectors[:40], [i // 10 for i in range(40)])
    assert held.shape == (40,) and np.all(held > 0)


# -- the checks on real (demo) music and on failure cases -------------------------------

CLIP = 2 * SR  # the demo preset's clips: 2 s


def demo_track(genre, track, seconds=14.0):
    """A demo-corpus track at 16 kHz as preprocessing leaves it (trimmed, normalised, mu-law)."""
    from wavenet.data.audio import peak_normalize, trim_silence
    from wavenet.data.demo import synthesize

    x = trim_silence(synthesize(genre, seconds, track=track, sample_rate=SR), SR, -50.0)
    return mu_law_decode(mu_law_encode(peak_normalize(x, -1.0)))


@pytest.fixture(scope="module")
def demo_calibrations():
    """Per genre: ranges from two tracks, and a third track they never saw."""
    from wavenet.data.demo import GENRES

    out = {}
    for genre in GENRES:
        cal = quality.calibrate([demo_track(genre, 1), demo_track(genre, 2)], SR, CLIP, label=genre,
                                max_windows=30)
        out[genre] = (cal, demo_track(genre, 0))
    return out


def coloured_noise(exponent, seed=5):
    """Gaussian noise with power spectrum ~ 1 / f**exponent (0 white, 1 pink, 2 brown), 0.3 RMS."""
    rng = np.random.default_rng(seed)
    f = np.fft.rfftfreq(CLIP, 1.0 / SR)
    f[0] = f[1]
    x = np.fft.irfft(np.fft.rfft(rng.normal(size=CLIP)) / f ** (exponent / 2.0), CLIP)
    return np.clip(0.3 * x / x.std(), -1, 1)


def low_passed_noise(cutoff_hz, seed=6):
    """White noise through a brick-wall low-pass at ``cutoff_hz``, 0.3 RMS: no harmonic line."""
    rng = np.random.default_rng(seed)
    spectrum = np.fft.rfft(rng.normal(size=CLIP))
    spectrum[np.fft.rfftfreq(CLIP, 1.0 / SR) > cutoff_hz] = 0.0
    x = np.fft.irfft(spectrum, CLIP)
    return np.clip(0.3 * x / x.std(), -1, 1)


def test_real_demo_music_of_a_track_the_ranges_never_saw_passes(demo_calibrations):
    for genre, (cal, unseen) in demo_calibrations.items():
        for i in range(0, unseen.size - CLIP + 1, CLIP // 2):
            r = quality.analyze(unseen[i:i + CLIP], SR, codes=mu_law_encode(unseen[i:i + CLIP]),
                                calibration=cal)
            assert r["warnings"] == [], (genre, i / SR, r["warnings"])
            assert len(r["checks"]) == len(quality.CHECKS) and all(c["passed"] for c in r["checks"])


FAILURES = {
    # name: (audio, warnings every label's checks must raise)
    "white noise": (lambda: coloured_noise(0), {"white noise", "band energy", "harmonicity", "atypical"}),
    "pink noise": (lambda: coloured_noise(1), {"harmonicity", "spectral flatness", "atypical"}),
    "brown noise": (lambda: coloured_noise(2), {"harmonicity", "spectral flatness", "dc offset", "atypical"}),
    # Low-passed noise has a pitched label's band energy and flatness: its distance from
    # every real window gives it away (and, against pitched labels, its noise-like fine structure).
    "low-passed noise 500 Hz": (lambda: low_passed_noise(500.0), {"atypical"}),
    "low-passed noise 1 kHz": (lambda: low_passed_noise(1000.0), {"atypical"}),
    "silence": (lambda: np.zeros(CLIP), {"silence", "level", "harmonicity"}),
    "stuck value": (lambda: np.full(CLIP, 0.05), {"stuck value", "dc offset", "harmonicity"}),
}
# Labels whose real windows have harmonic lines: any noise is also flagged as "noise" there
# (drums are noise-like themselves; the joint distance separates those).
PITCHED = {"organ", "strings"}


@pytest.mark.parametrize("case", FAILURES)
def test_each_failure_case_is_flagged_against_every_label(demo_calibrations, case):
    make, expected = FAILURES[case]
    audio = mu_law_decode(mu_law_encode(make()))
    for genre, (cal, _) in demo_calibrations.items():
        r = quality.analyze(audio, SR, codes=mu_law_encode(audio), calibration=cal)
        assert expected <= set(kinds(r)), (genre, r["warnings"])
        if "noise" in case and genre in PITCHED:
            assert "noise" in kinds(r), (genre, r["warnings"])
        failed = [c for c in r["checks"] if not c["passed"]]
        assert failed and all(genre in w for w in r["warnings"] if w.split(":")[0] in
                              {c["name"] for c in failed})
