"""The GPU check (`make gpu-check`): its pieces on the CPU, and its --quick form end to end."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from test_generate import keras_logits, make_model

from wavenet.bench.gpu import TFCachedGenerator, _nvidia_gpus, spec_bf16_tflops


@pytest.mark.parametrize("kernel_size, num_classes", [(2, 0), (3, 3)])
def test_tf_cached_generator_equals_full_forward_pass(kernel_size, num_classes):
    model = make_model(kernel_size, num_classes)
    rng = np.random.default_rng(0)
    codes = rng.integers(0, 256, (3, model.receptive_field + 9))  # the ring buffers wrap around
    labels = rng.integers(0, num_classes, 3) if num_classes else None
    ours = TFCachedGenerator(model, "float32").teacher_forced_logits(codes, labels)
    np.testing.assert_allclose(ours, keras_logits(model, codes, labels), atol=1e-4, rtol=0)
    # bfloat16 activations and weights: close, not equal
    bf16 = TFCachedGenerator(model, "bfloat16").teacher_forced_logits(codes, labels)
    assert 1e-4 < np.abs(bf16 - ours).max() < 0.5


def test_tf_sampler_returns_codes_of_every_stream():
    import tensorflow as tf

    gen = TFCachedGenerator(make_model(2, 0), "bfloat16")
    codes = gen.sampler(4, 50)(tf.constant(3)).numpy()
    assert codes.shape == (4, 50) and codes.dtype == np.int32
    assert codes.min() >= 0 and codes.max() < 256 and len(np.unique(codes)) > 5
    assert (codes[0] != codes[1]).mean() > 0.5


def test_spec_sheet_peaks_match_by_name():
    assert spec_bf16_tflops("NVIDIA H100 80GB HBM3") == 989.5
    assert spec_bf16_tflops("NVIDIA H100 PCIe") == 756.5
    assert spec_bf16_tflops("NVIDIA L4") == 121.0 and spec_bf16_tflops("NVIDIA L40S") == 366.5
    assert spec_bf16_tflops("Tesla T4") is None


@pytest.mark.skipif(bool(_nvidia_gpus()), reason="this machine has a GPU")
def test_without_a_gpu_it_says_so():
    proc = subprocess.run([sys.executable, "-m", "wavenet.bench.gpu", "--out", os.devnull],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "no NVIDIA GPU here" in proc.stderr and "--quick" in proc.stderr
    assert proc.stderr.count("\n") == 1


@pytest.mark.slow
def test_quick_gpu_check_runs_on_the_cpu(tmp_path):
    out = tmp_path / "gpu-check.json"
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    proc = subprocess.run([sys.executable, "-m", "wavenet.bench.gpu", "--quick", "--out", str(out)],
                          capture_output=True, text=True, timeout=600, env=env, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(out.read_text())
    assert result["quick"] and result["preset"] == "tiny" and result["bf16_matmul_tflops"] > 0
    train = result["train"]
    assert "error" not in train, train.get("error")
    assert train["samples_per_s"] > 0 and train["precision"] == "mixed_bfloat16" and train["xla"]
    assert train["fraction_of_measured_bf16_matmul"] == pytest.approx(
        train["useful_tflops"] / result["bf16_matmul_tflops"])
    (streams,) = result["generate"]["streams"].values()
    assert streams["samples_per_s"] > 0 and streams["distinct_codes"] > 1
    assert result["seconds"] < 8 * 60
