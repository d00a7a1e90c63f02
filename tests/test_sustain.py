"""The delay line that sustains a score's lone pitched notes while the network samples
(wavenet.generation.sustain, ``generate.sustain``)."""

from __future__ import annotations

import numpy as np
import pytest

from tests.test_generate import make_model
from wavenet.data.notes import Score, pack_scores
from wavenet.generation import sustain
from wavenet.generation.fast import FastGenerator, GenerateArgumentError


def test_the_delay_line_holds_a_lone_pitched_note_after_its_first_period():
    """Where one pitched note sounds, a period (and one sample) after it began, and no drum hit
    is in its attack; never under a chord, nor before the note has sounded a period."""
    sr = 1000  # ATTACK_SECONDS: 60 samples
    attack = int(round(sustain.ATTACK_SECONDS * sr))
    assert attack == 60
    notes = pack_scores([Score.from_notes([
        (0, 300, 57, False),     # A3: 220 Hz, a period of 4.545 samples
        (100, 120, 64, False),   # a second pitched note: a chord from 100 to 119
        (200, 210, 38, True),    # a hit shorter than its attack: off from 200 to 209
        (250, 400, 36, True),    # a long one: off for its attack only, 250 to 309 (the A ends at 300)
        (350, 380, 69, False),   # A4 alone after 300 (the kick past its attack), from 355 on
    ])])
    got = sustain.sustain_periods(notes, 0, 420, sr)[0]
    a3, a4 = sr / 220.0, sr / 440.0
    want = np.zeros(420)
    for lo, hi in ((5, 100), (120, 200), (210, 250)):
        want[lo:hi] = a3
    want[350 + int(a4) + 1:380] = a4
    np.testing.assert_allclose(got, want)
    # A note begun before the first sample counts from where it began.
    late = sustain.sustain_periods(notes, 3, 5, sr)[0]
    np.testing.assert_allclose(late, [0, 0, a3, a3, a3])


def test_the_delay_line_predicts_the_waveform_a_period_back_without_its_offset():
    """The centre decodes to DECAY x (the sample a period back minus the period's mean)."""
    levels = sustain.code_levels(256)
    period, offset = 200.0, 0.1  # slow enough for linear interpolation to be exact to 1e-4
    t = np.arange(1000)
    history = np.stack([offset + 0.5 * np.sin(2 * np.pi * t / period),
                        offset + 0.3 * np.cos(2 * np.pi * t / period)])
    for now in (600, 777):
        centre = sustain.centre_codes(history, now, np.array([period, period]), levels)
        decoded = np.interp(centre, np.arange(256), levels)
        np.testing.assert_allclose(decoded, sustain.DECAY * (history[:, now - 200] - offset), atol=2e-3)


def test_the_sampler_mixes_the_network_with_the_delay_line():
    """A row of weight 0 is the network's logits as they were; a mixed row is the mixture's
    log-probabilities: (1 - w) p_net + w N(centre, WIDTH)."""
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(2, 256)).astype(np.float32) * 3
    out = sustain.sustained_logits(logits, np.array([40.0, 100.3]), np.array([0.0, 0.9]))
    np.testing.assert_array_equal(out[0], logits[0])
    p = np.exp(out[1].astype(np.float64))
    assert p.sum() == pytest.approx(1.0, abs=1e-5)
    net = np.exp(logits[1] - np.logaddexp.reduce(logits[1].astype(np.float64)))
    k = np.arange(256)
    gauss = np.exp(-0.5 * ((k - 100.3) / sustain.WIDTH) ** 2)
    np.testing.assert_allclose(p, 0.1 * net + 0.9 * gauss / gauss.sum(), rtol=1e-4, atol=1e-9)


def test_generation_with_sustain_continues_a_lone_note_periodically():
    """The random network alone makes noise; with sustain its codes repeat a period back over a
    lone note, and are the plain sampler's code for code until the delay line first applies."""
    model = make_model(score_channels=5)
    sr = model.audio_config.sample_rate
    key = 72  # C5: 523 Hz
    period = sr / (440.0 * 2 ** ((key - 69) / 12))
    notes = pack_scores([Score.from_notes([(0, 3000, key, False)])])
    gen = FastGenerator(model, 1)
    plain = gen.generate(3000, notes=notes, seed=4)
    np.testing.assert_array_equal(gen.generate(3000, notes=notes, seed=4, sustain=0.0), plain)
    held = gen.generate(3000, notes=notes, seed=4, sustain=0.99)
    first = int(period) + 1
    np.testing.assert_array_equal(held[:, :first], plain[:, :first])
    assert not np.array_equal(held, plain)

    def repeat(codes):  # correlation of the waveform with itself a period back, over the second half
        x = codes[0].astype(np.float64)[1500:]
        p = int(round(period))
        return np.corrcoef(x[p:], x[:-p])[0, 1]

    assert repeat(held) > 0.8
    assert repeat(held) > repeat(plain) + 0.3


@pytest.mark.parametrize("bad", [1.0, -0.1, True, "0.5", float("nan")])
def test_generate_refuses_a_sustain_outside_0_to_1(bad):
    model = make_model(score_channels=5)
    notes = pack_scores([Score.from_notes([(0, 100, 60, False)])])
    with pytest.raises(GenerateArgumentError, match=r"sustain must be a number in \[0, 1\)"):
        FastGenerator(model, 1).generate(10, notes=notes, sustain=bad)
