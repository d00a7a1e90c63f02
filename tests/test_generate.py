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
from wavenet.generation.fast import (
    WEIGHT_PRECISIONS,
    FastGenerator,
    GenerateArgumentError,
    effective_weights,
    kernel_isa,
    naive_generate,
    pack_matrix,
    quantize_int8,
    sample_rows,
    silence_code,
    to_bfloat16,
)
from wavenet.model import build_model

# The kernel builds this CPU can run: the portable one always, AVX2 where the CPU has it.
ISAS = ["generic"] + (["avx2"] if kernel_isa() == "avx2" else [])


@pytest.fixture(params=ISAS)
def isa(request):
    """Run a test once per kernel build (the module-wide choice is restored after)."""
    from wavenet.generation import _fastgen

    previous = _fastgen.set_isa(request.param)
    yield request.param
    _fastgen.set_isa(previous)


def make_model(kernel_size=2, num_classes=0, q=256, stacks=1, layers=4, seed=0, score_channels=0,
               score_lag=False):
    """A small WaveNet with random (not zero) biases, so every weight matters."""
    base = preset("tiny")
    cfg = ExperimentConfig(
        preset="test", audio=AudioConfig(quantization_channels=q),
        model=ModelConfig(stacks=stacks, layers_per_stack=layers, kernel_size=kernel_size,
                          residual_channels=8, gate_channels=6, skip_channels=12,
                          quantization_channels=q, num_classes=num_classes,
                          score_channels=score_channels, score_lag=score_lag),
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
    (2, 0, 1, 1), (2, 3, 3, 2), (3, 0, 2, 1), (3, 4, 2, 2), (2, 0, 6, 1)])
def test_cached_steps_equal_full_forward_pass(kernel_size, num_classes, batch, stacks, isa):
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


def test_streams_stepped_one_code_at_a_time_give_the_teacher_forced_logits():
    model = make_model(2, 3, stacks=2)
    codes = np.random.default_rng(4).integers(0, 256, (2, model.receptive_field + 9))
    labels = np.array([2, 0])
    gen = FastGenerator(model, 2)
    streams = gen.open_streams(labels)
    stepped = np.stack([streams.step(codes[:, t]) for t in range(codes.shape[1])], axis=1)
    assert streams.position == codes.shape[1]
    np.testing.assert_array_equal(stepped, gen.teacher_forced_logits(codes, labels))
    # Each call's logits are the caller's to keep: the next step does not overwrite them.
    again = gen.open_streams(labels)
    first = again.step(codes[:, 0])
    again.step(codes[:, 1])
    np.testing.assert_array_equal(first, stepped[:, 0])
    with pytest.raises(GenerateArgumentError, match=r"shape \(2,\). Received: shape \(2, 1\)"):
        again.step(codes[:, :1])
    with pytest.raises(GenerateArgumentError, match=r"\[0, 3\). Received: min 0, max 3"):
        gen.open_streams(np.array([0, 3]))


def test_streams_sampled_with_sample_rows_reproduce_generate():
    """A caller that steps the streams and samples with sample_rows draws what generate draws."""
    model = make_model(2, 3, stacks=2)
    labels, n, temperature = np.array([1, 2]), model.receptive_field + 40, 0.8
    gen = FastGenerator(model, 2)
    expected = gen.generate(n, labels=labels, temperature=temperature, seed=5)
    streams, rng = gen.open_streams(labels), np.random.default_rng(5)
    cur, got = np.full(2, silence_code(256), np.int32), []
    for _ in range(n):
        cur = sample_rows(streams.step(cur), 1.0 / temperature, rng.random(2))
        got.append(cur)
    np.testing.assert_array_equal(np.stack(got, axis=1), expected)
    assert len(np.unique(expected)) > 5  # sampled audio, not a constant the two could share


def test_closed_loop_decoding_is_sampling_at_k_0_and_deterministic_at_k_q():
    """devtools/closed_loop.py: K=0 draws what generate draws; K=Q feeds back the rounded mean
    whatever the seed (the predictor run deterministically)."""
    from devtools.closed_loop import decode

    model = make_model(2, 3, stacks=2)
    labels, n = np.array([0, 2]), model.receptive_field + 30
    gen = FastGenerator(model, 2)
    plain = decode(gen.open_streams(labels), 2, n, 256, 0, "mean", "hard", seed=3)
    np.testing.assert_array_equal(plain, gen.generate(n, labels=labels, seed=3))
    fixed = [decode(gen.open_streams(labels), 2, n, 256, 256, "mean", "hard", seed=s) for s in (3, 4)]
    np.testing.assert_array_equal(fixed[0], fixed[1])
    assert not np.array_equal(fixed[0], plain)


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


@pytest.mark.subprocess
def test_bench_generate_cli_quick_json():
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    proc = subprocess.run(
        [sys.executable, "-m", "wavenet.cli", "bench", "generate", "--quick", "--json",
         "--preset", "tiny"], capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    for key in ("fast_b1_samples_per_s", "fast_b32_samples_per_s", "naive_b1_samples_per_s",
                "flops_per_sample", "matmul_gflops", "peak_rss_mb", "fast_vs_naive_b1", "machine", "kernels"):
        assert key in result, key
    assert result["preset"] == "tiny" and result["threads"] == 1 and result["kernels"] == kernel_isa()
    assert result["flops_per_sample"] == preset("tiny").model.flops_per_sample
    for p in WEIGHT_PRECISIONS:
        for b in (1, 32):
            assert result[f"{p}_b{b}_samples_per_s"] > 0
            assert result[f"{p}_b{b}_gflops"] == pytest.approx(
                result[f"{p}_b{b}_samples_per_s"] * result["flops_per_sample"] / 1e9)
        assert result[f"{p}_b1_vs_float32"] == pytest.approx(
            result[f"{p}_b1_samples_per_s"] / result["float32_b1_samples_per_s"])
    # tiny, as packed (outputs padded to 16): per layer filter-gate 16 x 16, skip 8 x 16 and, but
    # for the last layer, residual 8 x (8 -> 16); head 16 x 16 and 16 x 256
    packed = 4 * (256 + 128) + 3 * 128 + 256 + 4096
    assert result["float32_weight_bytes_per_sample"] == 4 * packed
    assert result["bfloat16_weight_bytes_per_sample"] == 2 * packed
    scales = 4 * (16 + 16) + 3 * 16 + 16 + 256  # one float per (padded) output column
    assert result["int8_weight_bytes_per_sample"] == packed + 4 * scales
    assert result["default_weights"] == preset("tiny").generate.weights == "int8"
    assert result["fast_b1_samples_per_s"] == result["int8_b1_samples_per_s"]  # the configured precision
    assert result["fast_b1_samples_per_s"] > result["naive_b1_samples_per_s"] > 0
    assert set(result["meets_targets"]) == set(result["targets"]) and "agreement" not in result


def test_bench_generate_measures_agreement_of_a_trained_model(trained_model_path, eval_data, capsys):
    from wavenet.cli import main

    rc = main(["bench", "generate", "--quick", "--json", "--preset", "tiny", "--model", trained_model_path,
               "--data", eval_data, "--set", "evaluate.window=256", "--set", "generate.weights=bfloat16"])
    assert rc == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    agreement = result["agreement"]
    assert result["model"] == trained_model_path and result["default_weights"] == "bfloat16"
    assert result["fast_b1_samples_per_s"] == result["bfloat16_b1_samples_per_s"]
    assert agreement["windows"] == 2 and agreement["window"] == 256
    assert 0 < agreement["keras_float32_bits"] < 8
    assert abs(agreement["float32"]["difference"]) < 1e-4
    assert agreement["max_abs_difference_bits"] < 0.02 and agreement["agrees"]
    rc = main(["bench", "generate", "--quick", "--preset", "tiny", "--data", eval_data])
    assert rc == 2 and "--data needs --model" in capsys.readouterr().err


# -- reduced-precision weights ------------------------------------------------------

def test_bfloat16_rounds_to_nearest_even_like_ml_dtypes():
    import ml_dtypes

    rng = np.random.default_rng(0)
    w = np.concatenate([rng.normal(size=2000).astype(np.float32) * 10.0 ** rng.integers(-6, 3, 2000),
                        # exact ties between two bfloat16 values: round to the even one
                        np.array([1 + 2**-8, 1 + 3 * 2**-8, -(1 + 2**-8), 0.0, -0.0, 3e38], np.float32)])
    ours = to_bfloat16(w)
    ref = w.astype(ml_dtypes.bfloat16).view(np.uint16)
    np.testing.assert_array_equal(ours, ref)
    widened = effective_weights(w.reshape(-1, 2), "bfloat16").ravel()
    np.testing.assert_array_equal(widened, w.astype(ml_dtypes.bfloat16).astype(np.float32))
    assert np.abs(widened - w).max() <= np.abs(w).max() * 2.0**-8


def test_int8_scales_each_output_channel():
    rng = np.random.default_rng(1)
    w = rng.normal(size=(40, 5)).astype(np.float32) * np.array([1e-3, 0.1, 1.0, 10.0, 0.0], np.float32)
    q, scale = quantize_int8(w)
    assert q.dtype == np.int8 and scale.dtype == np.float32 and scale.shape == (5,)
    np.testing.assert_allclose(scale[:4], np.abs(w[:, :4]).max(axis=0) / 127, rtol=1e-6)
    assert scale[4] == 0 and not q[:, 4].any()  # an all-zero channel stays zero
    assert np.abs(q).max() == 127 and q.min() >= -127
    # each weight is within half a step of its channel's grid
    assert np.all(np.abs(q * scale - w) <= scale / 2 * (1 + 1e-5))
    np.testing.assert_array_equal(effective_weights(w, "int8"), q.astype(np.float32) * scale)


def _unpack(data, scales, precision, kp, np_):
    """Decode pack_matrix's documented layout back to a (Kp, Np) float matrix."""
    blocks, pairs = np_ // 16, kp // 2
    if precision == "float32":
        return data.view(np.float32).reshape(blocks, pairs, 2, 16).transpose(1, 2, 0, 3).reshape(kp, np_)
    if precision == "bfloat16":
        u = data.view(np.uint32).reshape(blocks, pairs, 16)
        lo = (u << np.uint32(16)).view(np.float32)
        hi = (u & np.uint32(0xFFFF0000)).view(np.float32)
        return np.stack([lo, hi], axis=2).transpose(1, 2, 0, 3).reshape(kp, np_)
    q = data.view(np.int8).reshape(blocks, pairs, 16, 2).transpose(1, 3, 0, 2).reshape(kp, np_)
    return q.astype(np.float32) * scales


@pytest.mark.parametrize("precision", WEIGHT_PRECISIONS)
@pytest.mark.parametrize("shape", [(7, 5), (64, 48), (33, 17)])
def test_packed_layout_holds_the_effective_weights(precision, shape):
    w = np.random.default_rng(2).normal(size=shape).astype(np.float32)
    data, scales, kp, np_ = pack_matrix(w, precision)
    assert kp == shape[0] + shape[0] % 2 and np_ % 16 == 0 and np_ >= shape[1]
    assert data.dtype == np.uint8 and data.size == kp * np_ * {"float32": 4, "bfloat16": 2, "int8": 1}[precision]
    full = _unpack(data, scales, precision, kp, np_)
    np.testing.assert_array_equal(full[:shape[0], :shape[1]], effective_weights(w, precision))
    assert not full[shape[0]:].any() and not full[:, shape[1]:].any()  # zero padding


def with_effective_weights(model, precision):
    """A copy of ``model`` whose matrix weights hold the values a precision computes with."""
    copy = build_model(ExperimentConfig(preset="test", audio=model.audio_config, model=model.config,
                                        train=preset("tiny").train))
    for src, dst in zip(model.weights, copy.weights):
        v = src.numpy()
        if "kernel" in dst.path:  # filter_gate (k, R, 2G): each tap's rows, all 2G columns
            v = effective_weights(v.reshape(-1, v.shape[-1]), precision).reshape(v.shape)
        dst.assign(v)
    return copy


@pytest.mark.parametrize("kernel_size, num_classes, batch", [(2, 0, 1), (3, 3, 5)])
def test_reduced_precision_computes_with_its_documented_weights(kernel_size, num_classes, batch, isa):
    model = make_model(kernel_size, num_classes, stacks=2)
    rng = np.random.default_rng(4)
    codes = rng.integers(0, 256, (batch, 2 * model.receptive_field + 3))
    labels = rng.integers(0, num_classes, batch) if num_classes else None
    ref32 = keras_logits(model, codes, labels)
    # bfloat16: exactly the Keras model on bfloat16-rounded weights (float32 arithmetic)
    bf = FastGenerator(model, batch, weights="bfloat16").teacher_forced_logits(codes, labels)
    np.testing.assert_allclose(bf, keras_logits(with_effective_weights(model, "bfloat16"), codes, labels),
                               atol=1e-4, rtol=0)
    assert np.abs(bf - ref32).max() > 1e-4  # and the rounding is really there
    # int8: the Keras model on int8 weights, up to the int16 rounding of each matmul input,
    # which is a small fraction of what the int8 weights change
    i8 = FastGenerator(model, batch, weights="int8").teacher_forced_logits(codes, labels)
    ref8 = keras_logits(with_effective_weights(model, "int8"), codes, labels)
    weight_error, input_error = np.abs(ref8 - ref32).max(), np.abs(i8 - ref8).max()
    assert weight_error > 1e-3 and input_error < 0.05 * weight_error, (weight_error, input_error)


def test_int8_is_exact_integer_arithmetic_whatever_the_kernel_and_batch():
    from wavenet.generation import _fastgen

    model = make_model(2, 0, stacks=2)
    codes = np.random.default_rng(5).integers(0, 256, (5, 60))
    results = []
    for name in ISAS:
        previous = _fastgen.set_isa(name)
        try:
            together = FastGenerator(model, 5, weights="int8").teacher_forced_logits(codes)
            alone = np.concatenate([FastGenerator(model, 1, weights="int8").teacher_forced_logits(codes[i:i + 1])
                                    for i in range(5)])
        finally:
            _fastgen.set_isa(previous)
        np.testing.assert_array_equal(together, alone)  # batch tiling does not change a bit
        results.append(together)
    for other in results[1:]:
        np.testing.assert_array_equal(results[0], other)


@pytest.mark.parametrize("precision", WEIGHT_PRECISIONS)
def test_generation_at_each_precision_matches_naive_on_its_weights(precision):
    model = make_model(2, 3)
    labels = np.array([2, 0])
    fast = FastGenerator(model, 2, weights=precision).generate(40, labels=labels, seed=7)
    naive = naive_generate(with_effective_weights(model, precision), 40, batch_size=2, labels=labels, seed=7)
    assert (fast == naive).mean() > 0.9  # equal but for rounding at a CDF boundary (and int16 inputs)
    np.testing.assert_array_equal(fast[:, :10], naive[:, :10])


def test_weight_bytes_per_sample_shrink_with_precision():
    model = build_model(preset("demo").with_overrides({"model.num_classes": 0, "model.score_channels": 0}))
    sizes = {p: FastGenerator(model, 1, weights=p).weight_bytes for p in WEIGHT_PRECISIONS}
    params = preset("demo").model.flops_per_sample // 2  # one multiply-add per weight read
    assert sizes["float32"] == 4 * params  # demo's widths are multiples of 16: no padding
    assert sizes["bfloat16"] == 2 * params
    assert params < sizes["int8"] < 1.1 * params  # one byte per weight plus a scale per column


def test_unknown_precision_is_a_one_line_error():
    with pytest.raises(GenerateArgumentError, match=r"weights must be one of float32, bfloat16, int8\. "
                                                     r"Received: weights='int4'"):
        FastGenerator(make_model(2, 0), 1, weights="int4")


def test_cached_bits_agree_with_keras_on_a_trained_model(trained_model_path, eval_data):
    """Teacher-forced bits/sample on validation data, each precision against the float32 Keras model."""
    from conftest import tiny_config

    from wavenet.data.dataset import validation_dataset
    from wavenet.model import bits_per_sample, load_model

    model = load_model(trained_model_path)
    crops, labels, _ = next(iter(validation_dataset(eval_data, tiny_config(), 8, window=512)))
    crops, labels = crops.numpy(), labels.numpy()
    keras_bits = float(np.mean(bits_per_sample(model, crops, labels)))
    assert keras_bits < 7.0  # a trained model (uniform is 8 bits)
    diffs = {}
    for precision in WEIGHT_PRECISIONS:
        gen = FastGenerator(model, crops.shape[0], weights=precision)
        diffs[precision] = abs(float(np.mean(gen.bits_per_sample(crops, labels))) - keras_bits)
    assert diffs["float32"] < 1e-4, diffs
    assert diffs["bfloat16"] < 0.02 and diffs["int8"] < 0.02, diffs
