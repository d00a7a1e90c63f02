import dataclasses
import hashlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
import warnings

import numpy as np
import pytest

# Quiet TensorFlow's C++ logging in test output; set before TensorFlow loads.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


# -- a real MLflow tracking server on 127.0.0.1 --------------------------------

def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory):
    """A real `mlflow server` (SQLite store, proxied artifacts) on a free loopback port.

    Yields the http:// tracking URI; the server's process group is ended at teardown.
    """
    root = tmp_path_factory.mktemp("mlflow-server")
    port = _free_port()
    log = open(root / "server.log", "wb")  # noqa: SIM115 - closed at teardown
    proc = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port),
         "--workers", "1", "--backend-store-uri", f"sqlite:///{root / 'mlflow.db'}",
         "--artifacts-destination", str(root / "artifacts")],
        stdout=log, stderr=subprocess.STDOUT, cwd=root, start_new_session=True,
        # The server's job runner (seven huey consumer processes, for GenAI jobs) is not
        # needed by these tests and would cost seconds of CPU at start-up.
        env={**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"})
    uri = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    try:
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"mlflow server exited with {proc.returncode}: "
                                   f"{(root / 'server.log').read_text()[-2000:]}")
            try:
                with urllib.request.urlopen(uri + "/health", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("mlflow server did not answer /health within 120 s")
            time.sleep(0.5)
        yield uri
    finally:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=20)
        except ProcessLookupError:
            pass
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        log.close()


# -- a small dataset in the real shard format (evaluation and generation tests) --

EVAL_LABELS = ["low", "high"]


def _tone(seconds: float, f0: float, sr: int, phase: float) -> np.ndarray:
    """A decaying harmonic tone repeated every 0.125 s: pitched, with structure in time."""
    t = np.arange(int(seconds * sr)) / sr
    env = np.exp(-8.0 * np.mod(t, 0.125))
    x = sum(np.sin(2 * np.pi * k * f0 * t + phase) / k for k in (1, 2, 3))
    return 0.6 * env * x / 1.84


def write_shard_dataset(root, config, labels=EVAL_LABELS, train_seconds=0.5, val_seconds=0.2,
                        train_examples=3, val_examples=1):
    """Write manifest.json + train/validation TFRecord shards like `wavenet preprocess`."""
    import tensorflow as tf

    from wavenet.audio import mu_law_encode
    from wavenet.data import MANIFEST, serialize_example

    sr, q = config.audio.sample_rate, config.audio.quantization_channels
    shards = []
    for split, seconds, count in (("train", train_seconds, train_examples),
                                  ("validation", val_seconds, val_examples)):
        rel = f"{split}/shard-00000-of-00001.tfrecord"
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        samples = 0
        with tf.io.TFRecordWriter(str(path)) as w:
            for label, _ in enumerate(labels):
                for i in range(count):
                    f0 = 220.0 * (1.5 ** label) * (1 + 0.02 * i)
                    codes = mu_law_encode(_tone(seconds, f0, sr, phase=0.3 * i + (split == "validation")), q)
                    w.write(serialize_example(codes, label, f"{split}-{label}-{i}"))
                    samples += len(codes)
        shards.append({"path": rel, "split": split, "examples": count * len(labels),
                       "samples": samples,
                       "sha256": hashlib.sha256(path.read_bytes()).hexdigest()})
    manifest = {"shards": shards, "labels": list(labels),
                "summary": {"processed": len(labels) * (train_examples + val_examples), "skipped": 0},
                "sample_rate": sr, "quantization_channels": q}
    (root / MANIFEST).write_text(json.dumps(manifest, indent=2))
    return str(root)


def tiny_config(num_classes: int = len(EVAL_LABELS)):
    from wavenet.config import preset

    cfg = preset("tiny")
    return dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, num_classes=num_classes))


@pytest.fixture(scope="session")
def eval_data(tmp_path_factory):
    """A labelled dataset dir (tiny preset): 2 labels, 3 x 0.5 s train and 1 x 0.2 s validation each."""
    return write_shard_dataset(tmp_path_factory.mktemp("eval-data"), tiny_config())


def train_briefly(data_dir, config, steps: int = 60, seed: int = 0):
    """A few dozen Adam steps of teacher forcing on random crops (a minimal custom loop)."""
    import keras
    import tensorflow as tf

    from wavenet.data import train_dataset
    from wavenet.model import build_model, per_example_bits

    keras.utils.set_random_seed(seed)
    model = build_model(config)
    opt = keras.optimizers.Adam(config.train.learning_rate)

    @tf.function
    def step(crops, labels):
        with tf.GradientTape() as tape:
            loss = tf.reduce_mean(per_example_bits(model, crops, labels, training=True))
        grads = tape.gradient(loss, model.trainable_variables)
        opt.apply_gradients(zip(grads, model.trainable_variables))
        return loss

    ds = train_dataset(data_dir, config, config.train.global_batch_size, seed=seed)
    with warnings.catch_warnings():
        # The last block's residual output feeds nothing (only its skip is used),
        # so Keras warns that those two variables get no gradient.
        warnings.filterwarnings("ignore", message="Gradients do not exist")
        for crops, labels in ds.take(steps):
            step(crops, labels)
    return model


@pytest.fixture(scope="session")
def trained_model_path(eval_data, tmp_path_factory):
    """A tiny conditioned WaveNet trained briefly on `eval_data`, saved as .keras."""
    from wavenet.model import save_model

    path = str(tmp_path_factory.mktemp("models") / "trained.keras")
    save_model(train_briefly(eval_data, tiny_config()), path)
    return path


@pytest.fixture(scope="session")
def untrained_model_path(tmp_path_factory):
    """The same architecture with its initial (random) weights: a worse model."""
    import keras

    from wavenet.model import build_model, save_model

    keras.utils.set_random_seed(1)
    path = str(tmp_path_factory.mktemp("models") / "untrained.keras")
    save_model(build_model(tiny_config()), path)
    return path
