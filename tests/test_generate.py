import dataclasses
import json
import os
import subprocess
import sys

import keras
import numpy as np
import pytest

from wavenet.config import AudioConfig, ExperimentConfig, ModelConfig, preset
from wavenet.errors import WavenetError
from wavenet.generate import FastGenerator, GenerateArgumentError, naive_generate, silence_code
from wavenet.model import build_model


def make_model(kernel_size=2, num_classes=0, q=256, stacks=1, layers=4, seed=0):
    """A small WaveNet with random (not zero) biases, so every weight matters."""
    base = preset("tiny")
    cfg = ExperimentConfig(
        preset="test", audio=AudioConfig(quantization_channels=q),
        model=ModelConfig(stacks=stacks, layers_per_stack=layers, kernel_size=kernel_size,
                          residual_channels=8, gate_channels=6, skip_channels=12,
                          quantization_channels=q, num_classes=num_classes),
        train=base.train)
    keras.utils.set_random_seed(seed)  # the kernels' initialisers
    model = build_model(cfg)
    rng = np.random.default_rng(seed)
    for v in model.weights:  # Keras initialises biases to zero
        if "bias" in v.path or "condition" in v.path:
            v.assign((rng.normal(size=v.shape) * 0.3).astype("float32"))
    return model


def keras_logits(model, codes, labels=None):
    x = {"codes": codes, "labels": labels} if model.config.conditioned else codes
    return model(x, training=False).numpy()


@pytest.mark.parametrize("kernel_size, num_classes, batch, stacks", [
    (2, 0, 1, 1), (2, 3, 3, 2), (3, 0, 2, 1), (3, 4, 2, 2)])
def test_cached_steps_equal_full_forward_pass(kernel_size, num_classes, batch, stacks):
    model = make_model(kernel_size, num_classes, stacks=stacks)
    rng = np.random.default_rng(1)
    # Longer than the receptive field, so the ring buffers wrap around several times.
    codes = rng.integers(0, 256, (batch, 3 * model.receptive_field + 5))
    labels = rng.integers(0, num_classes, batch) if num_classes else None
    fast = FastGenerator(model, batch).teacher_forced_logits(codes, labels)
    ref = keras_logits(model, codes, labels)
    assert fast.shape == ref.shape and fast.dtype == np.float32
    assert np.abs(ref).max() > 0.1  # the comparison is not between near-zero numbers
    np.testing.assert_allclose(fast, ref, atol=1e-4, rtol=0)


def test_tiny_preset_matches_and_labels_change_logits():
    cfg = preset("tiny")
    cfg = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, num_classes=2))
    model = build_model(cfg)
    codes = np.random.default_rng(2).integers(0, 256, (2, 50))
    gen = FastGenerator(model, 2)
    a = gen.teacher_forced_logits(codes, np.array([0, 1]))
    np.testing.assert_allclose(a, keras_logits(model, codes, np.array([0, 1])), atol=1e-4, rtol=0)
    b = gen.teacher_forced_logits(codes, np.array([1, 1]))
    np.testing.assert_allclose(a[1], b[1], atol=1e-6)
    assert np.abs(a[0] - b[0]).max() > 1e-3


@pytest.mark.parametrize("num_classes, use_prime", [(0, False), (0, True), (3, True), (3, False)])
def test_fast_generate_equals_naive_generate(num_classes, use_prime):
    model = make_model(2, num_classes)
    batch = 2
    rng = np.random.default_rng(3)
    prime = rng.integers(0, 256, (batch, 21)) if use_prime else None
    labels = np.array([2, 0]) if num_classes else None
    fast = FastGenerator(model, batch).generate(40, prime=prime, labels=labels, seed=7)
    naive = naive_generate(model, 40, batch_size=batch, prime=prime, labels=labels, seed=7)
    assert fast.shape == (batch, 40) and fast.dtype == np.uint8
    # Same uniforms and sampler: equal unless float rounding straddles a CDF boundary.
    np.testing.assert_array_equal(fast[:, :20], naive[:, :20])
    assert (fast == naive).mean() > 0.95


def test_generation_is_reproducible_and_seed_dependent():
    model = make_model(2, 0)
    gen = FastGenerator(model, 3)
    a = gen.generate(300, seed=11)
    b = gen.generate(300, seed=11)
    c = gen.generate(300, seed=12)
    np.testing.assert_array_equal(a, b)
    assert (a != c).mean() > 0.5
    assert (a[0] != a[1]).mean() > 0.5  # streams draw their own numbers


def test_chunked_generation_equals_one_call_and_reports_progress():
    model = make_model(2, 0)
    gen = FastGenerator(model, 1)
    seen = []
    long = gen.generate(5000, seed=4, progress=seen.append)  # several kernel chunks
    assert seen == sorted(seen) and seen[-1] == 5000 and len(seen) >= 2
    np.testing.assert_array_equal(long[:, :300], gen.generate(300, seed=4))


def test_low_temperature_gives_argmax_of_logits():
    model = make_model(2, 3)
    gen = FastGenerator(model, 2)
    prime = np.random.default_rng(5).integers(0, 256, (2, 10))
    labels = np.array([1, 2])
    out = gen.generate(30, prime=prime, labels=labels, temperature=1e-6, seed=0)
    full = np.concatenate([prime, out], axis=1)
    logits = gen.teacher_forced_logits(full, labels)
    # Position t's logits choose code t + 1: every sampled code is the argmax.
    np.testing.assert_array_equal(out, logits[:, prime.shape[1] - 1:-1].argmax(-1))
    # and the result does not depend on the seed any more
    np.testing.assert_array_equal(out, gen.generate(30, prime=prime, labels=labels,
                                                    temperature=1e-6, seed=99))


@pytest.mark.parametrize("temperature", [1.0, 2.0])
def test_samples_follow_the_tempered_softmax(temperature):
    model = make_model(2, 0, q=16)
    batch = 4000
    prime = np.full((batch, 3), 5)
    gen = FastGenerator(model, batch)
    first = gen.generate(1, prime=prime, temperature=temperature, seed=1)[:, 0]
    logits = FastGenerator(model, 1).teacher_forced_logits(prime[:1])[0, -1] / temperature
    p = np.exp(logits - logits.max())
    p /= p.sum()
    freq = np.bincount(first, minlength=16) / batch
    assert 0.5 * np.abs(freq - p).sum() < 0.05  # total variation distance


def test_silence_is_the_default_prime():
    model = make_model(2, 0)
    gen = FastGenerator(model, 1)
    silence = np.full((1, 1), silence_code(256))
    np.testing.assert_array_equal(gen.generate(50, seed=3), gen.generate(50, prime=silence, seed=3))
    assert silence_code(256) == 128 and silence_code(16) == 8


def test_generator_copies_weights():
    model = make_model(2, 0)
    gen = FastGenerator(model, 1)
    codes = np.arange(40)[None] % 256
    before = gen.teacher_forced_logits(codes)
    for v in model.weights:
        v.assign(v.numpy() * 0.0)
    np.testing.assert_array_equal(before, gen.teacher_forced_logits(codes))


def test_errors_name_the_argument_and_what_was_received():
    plain = FastGenerator(make_model(2, 0), 2)
    cond = FastGenerator(make_model(2, 3), 2)
    cases = [
        (lambda: plain.generate(5, labels=np.array([0, 1])), "not conditioned"),
        (lambda: cond.generate(5), r"labels of shape \(2,\) are required. Received: labels=None"),
        (lambda: cond.generate(5, labels=np.array([0, 1, 2])), r"Received: shape \(3,\)"),
        (lambda: cond.generate(5, labels=np.array([0, 3])), r"\[0, 3\). Received: min 0, max 3"),
        (lambda: cond.generate(5, labels=np.array([0.0, 1.0])), "dtype float64"),
        (lambda: plain.generate(5, prime=np.zeros((3, 4), int)), r"prime must be .* \(2, T\).* Received: shape \(3, 4\)"),
        (lambda: plain.generate(5, prime=np.zeros(4, int)), r"Received: shape \(4,\)"),
        (lambda: plain.generate(5, prime=np.full((2, 4), 256)), r"\[0, 256\). Received: min 256"),
        (lambda: plain.generate(5, prime=np.zeros((2, 4))), "Received: dtype float64"),
        (lambda: plain.generate(5, temperature=0.0), "temperature must be .* Received: 0.0"),
        (lambda: plain.generate(-1), "num_samples .* Received: -1"),
        (lambda: plain.teacher_forced_logits(np.zeros((1, 4), int)), r"Received: shape \(1, 4\)"),
        (lambda: FastGenerator(plain, 1), "Received: FastGenerator"),
        (lambda: FastGenerator(make_model(2, 0), 0), "batch_size .* Received: 0"),
        (lambda: naive_generate(make_model(2, 3), 3, batch_size=1), "Received: labels=None"),
    ]
    broken = make_model(2, 0)
    broken.blocks[1].skip_bias.assign(np.full(12, np.nan, "float32"))
    cases.append((lambda: FastGenerator(broken, 1), "block_1/skip_bias has NaN"))
    for fn, pattern in cases:
        with pytest.raises(GenerateArgumentError, match=pattern):
            fn()
    # The CLI prints WavenetErrors as one line; Python callers may catch ValueError.
    assert issubclass(GenerateArgumentError, WavenetError)
    assert issubclass(GenerateArgumentError, ValueError)
    assert plain.generate(0, seed=0).shape == (2, 0)


def test_bench_generate_cli_quick_json():
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    proc = subprocess.run(
        [sys.executable, "-m", "wavenet.cli", "bench", "generate", "--quick", "--json",
         "--preset", "tiny"], capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    for key in ("fast_b1_samples_per_s", "fast_b32_samples_per_s", "naive_b1_samples_per_s",
                "flops_per_sample", "matmul_gflops", "peak_rss_mb", "fast_vs_naive_b1", "machine"):
        assert key in result, key
    assert result["preset"] == "tiny" and result["threads"] == 1
    assert result["flops_per_sample"] == preset("tiny").model.flops_per_sample
    assert result["fast_b1_samples_per_s"] > result["naive_b1_samples_per_s"] > 0
    assert set(result["meets_targets"]) == set(result["targets"])
