"""Bounds and one-line errors (issue 10, Found 7 and 10): bad input fails at the boundary,
in one line, with exit status 2, and leaves nothing half-written."""

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import free_port

from wavenet.config import UPPER_BOUNDS, ExperimentConfig, load_config, preset
from wavenet.edges import storage
from wavenet.errors import ConfigError, StorageUnavailable, WavenetError


def cli(*args, env=None, timeout=300):
    """Run ``wavenet ARGS`` in a fresh process: (status, stdout, stderr, seconds)."""
    start = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "wavenet.cli", *map(str, args)],
                          capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **(env or {})})
    return proc.returncode, proc.stdout, proc.stderr, time.monotonic() - start


# TensorFlow's C++ runtime logs through absl before Python runs any of our code (and
# before TF_CPP_MIN_LOG_LEVEL applies): "WARNING: All log messages before absl::..." and
# glog-style lines such as "I0000 00:00:... cudart_stub.cc:31] ...". They are not ours.
TF_NATIVE_LOG = re.compile(r"^(WARNING: All log messages before absl::InitializeLog\(\)|"
                           r"[IWEF]\d{4} \d\d:\d\d:[\d.]+ +\d+ [\w.]+:\d+\] )")


def assert_one_line_error(status, stderr, *needles, code=2):
    lines = [line for line in stderr.splitlines() if line.strip() and not TF_NATIVE_LOG.match(line)]
    assert status == code, stderr
    assert "Traceback" not in stderr
    assert len(lines) == 1 and lines[0].startswith("error: "), stderr
    for needle in needles:
        assert needle in lines[0], lines[0]


# -- config --------------------------------------------------------------------------

@pytest.mark.parametrize("field", ["generate.seconds", "data.chunk_seconds", "train.learning_rate",
                                   "audio.silence_threshold_db", "evaluate.promotion_margin_bits"])
@pytest.mark.parametrize("value", [float("inf"), float("-inf"), float("nan")])
def test_config_refuses_non_finite_numbers_naming_the_field(field, value):
    with pytest.raises(ConfigError, match=rf"{field} must be a finite number"):
        preset("tiny").with_overrides({field: value})


@pytest.mark.parametrize("field", sorted(UPPER_BOUNDS))
def test_config_refuses_values_above_the_fields_bound_with_the_bound_in_the_message(field):
    bound = UPPER_BOUNDS[field]
    over = int(bound) + 1 if isinstance(bound, int) else bound * 2
    with pytest.raises(ConfigError, match=re.escape(f"{field} must be at most {bound:g}.")):
        preset("tiny").with_overrides({field: over})


def test_every_preset_is_within_the_bounds():
    for name in ("tiny", "demo", "bench", "large"):
        preset(name)  # constructing validates


def test_yaml_preset_must_be_known(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("preset: tinyy\ntrain:\n  steps: 7\n")
    with pytest.raises(ConfigError) as e:
        load_config(p)
    msg = str(e.value)
    assert "\n" not in msg and str(p) in msg and "tinyy" in msg
    assert "tiny, demo, bench, large" in msg


def test_saved_config_with_preset_custom_still_loads(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text(ExperimentConfig().to_yaml())
    assert load_config(p) == ExperimentConfig()


def test_yaml_syntax_error_is_one_line_with_file_line_and_column(tmp_path):
    p = tmp_path / "bad.yaml"
    p.write_text("preset: tiny\ntrain:\n  steps: [1, 2\n  window: 3\n")
    with pytest.raises(ConfigError) as e:
        load_config(p)
    msg = str(e.value)
    assert "\n" not in msg
    assert msg.startswith(f"config file {p}:4:")  # PyYAML marks are 0-based; ours 1-based


def test_config_yaml_text_error_is_one_line():
    with pytest.raises(ConfigError) as e:
        ExperimentConfig.from_yaml("train: {steps: 1\n")
    assert "\n" not in str(e.value) and "<config>:" in str(e.value)


# -- memory estimated before allocation ----------------------------------------------

def test_model_build_estimates_memory_before_allocating():
    from wavenet.model import build_model

    cfg = preset("tiny").with_overrides({"model.stacks": 64, "model.layers_per_stack": 24,
                                          "model.residual_channels": 4096,
                                          "model.gate_channels": 4096})
    with pytest.raises(ConfigError) as e:
        build_model(cfg)
    msg = str(e.value)
    assert "\n" not in msg and "model.layers_per_stack" in msg and "would need about" in msg
    assert "TiB" in msg or "PiB" in msg


def test_corrupt_keras_file_is_reported_as_not_a_valid_keras_file(tmp_path, untrained_model_path):
    from wavenet.model import load_model

    bad = tmp_path / "bad.keras"
    bad.write_bytes(b"not a zip at all")
    with pytest.raises(WavenetError, match=rf"not a valid \.keras file: {bad}: "):
        load_model(str(bad))
    truncated = tmp_path / "truncated.keras"
    truncated.write_bytes(Path(untrained_model_path).read_bytes()[:-200])
    with pytest.raises(WavenetError, match=r"not a valid \.keras file"):
        load_model(str(truncated))


# -- the CLI end to end --------------------------------------------------------------

@pytest.mark.subprocess
@pytest.mark.parametrize("override, needle", [
    ("generate.seconds=.inf", "generate.seconds must be a finite number"),
    ("data.chunk_seconds=.nan", "data.chunk_seconds must be a finite number"),
    ("generate.seconds=1e9", "generate.seconds must be at most 3600"),
    ("model.layers_per_stack=1000", "model.layers_per_stack must be at most 24"),
])
def test_cli_config_errors_are_one_line_with_exit_2(override, needle):
    status, _, err, _ = cli("config", "--preset", "tiny", "--set", override)
    assert_one_line_error(status, err, needle)


@pytest.mark.subprocess
def test_cli_yaml_errors_are_one_line(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("train:\n  steps: [1\n")
    status, _, err, _ = cli("config", "--config", bad)
    assert_one_line_error(status, err, f"{bad}:")
    typo = tmp_path / "typo.yaml"
    typo.write_text("preset: tinyy\n")
    status, _, err, _ = cli("config", "--config", typo)
    assert_one_line_error(status, err, "tinyy", "tiny, demo, bench, large")


@pytest.fixture(scope="module")
def small_corpus(tmp_path_factory):
    from wavenet.data.demo import make_demo_corpus

    root = tmp_path_factory.mktemp("corpus")
    make_demo_corpus(str(root), seconds_per_genre=8.0)
    return root


@pytest.mark.subprocess
def test_preprocess_with_infinite_chunks_fails_in_one_line_and_writes_nothing(small_corpus, tmp_path):
    dst = tmp_path / "out"
    status, _, err, _ = cli("preprocess", small_corpus, dst, "--preset", "tiny", "--no-progress",
                            "--set", "data.chunk_seconds=.inf")
    assert_one_line_error(status, err, "data.chunk_seconds")
    assert not dst.exists() or not any(dst.iterdir())


@pytest.mark.subprocess
def test_preprocess_into_a_file_fails_in_one_line(small_corpus, tmp_path):
    dst = tmp_path / "a-file"
    dst.write_text("keep me")
    status, _, err, _ = cli("preprocess", small_corpus, dst, "--preset", "tiny", "--no-progress")
    assert_one_line_error(status, err, str(dst), "is a file")
    status, _, err, _ = cli("preprocess", small_corpus, dst / "sub", "--preset", "tiny",
                            "--no-progress")
    assert_one_line_error(status, err, "lies under", str(dst))
    assert dst.read_text() == "keep me"


@pytest.mark.subprocess
def test_unreachable_storage_endpoint_fails_fast_in_one_line(tmp_path):
    port = free_port()  # nothing listens there
    endpoint = f"http://127.0.0.1:{port}"
    # No retry budget (wavenet.retry): an outage ends the command at once, with exit 138 (the
    # operator's "retry"), not 2 (bad input); tests/test_outages.py waits one out.
    status, _, err, seconds = cli("preprocess", "gs://bucket/audio", tmp_path / "out", "--preset",
                                  "tiny", "--no-progress", env={"STORAGE_EMULATOR_HOST": endpoint,
                                                                "WAVENET_SERVICE_RETRY_S": "0"})
    assert_one_line_error(status, err, endpoint, "gs://bucket", code=138)
    assert seconds < 30, f"took {seconds:.1f} s"
    assert not (tmp_path / "out").exists()


@pytest.mark.subprocess
def test_storage_calls_retry_a_closed_port_for_the_budget_then_give_up(monkeypatch, capsys):
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", f"http://127.0.0.1:{free_port()}")
    monkeypatch.setenv("WAVENET_SERVICE_RETRY_S", "2")
    for call in (lambda: storage.read_bytes("gs://b/x"), lambda: list(storage.list_files("gs://b/p")),
                 lambda: storage.write_text_atomic("gs://b/x", "a"), lambda: storage.exists("gs://b/x")):
        start = time.monotonic()
        with pytest.raises(StorageUnavailable, match="the storage endpoint .* is unavailable"):
            call()
        assert time.monotonic() - start < 20
        # Retried with the library's backoff (it gives up early when the next wait would pass
        # the budget), saying so once.
        assert capsys.readouterr().err.count("retrying for up to 2 s (WAVENET_SERVICE_RETRY_S)") == 1


def no_credentials_env(tmp_path):
    # A credentials file that does not exist: google.auth fails at once (no metadata server wait).
    return {"STORAGE_EMULATOR_HOST": "", "GOOGLE_APPLICATION_CREDENTIALS": str(tmp_path / "none.json"),
            "GOOGLE_CLOUD_PROJECT": "p"}


@pytest.mark.slow  # generate imports TensorFlow: about 2 minutes on a busy 2-core machine
@pytest.mark.parametrize("verb", ["preprocess", "train", "generate"])
def test_missing_gcs_credentials_are_one_line_naming_the_bucket(verb, tmp_path, small_corpus):
    args = {"preprocess": ["preprocess", "gs://music/audio", tmp_path / "out"],
            "train": ["train", "gs://music/shards", "--out", tmp_path / "run"],
            "generate": ["generate", "gs://music/model.keras", "--out", tmp_path / "gen"]}[verb]
    status, _, err, _ = cli(*args, "--preset", "tiny", "--no-progress",
                            env=no_credentials_env(tmp_path))
    assert_one_line_error(status, err, "gs://music", "GOOGLE_APPLICATION_CREDENTIALS")


@pytest.mark.slow
def test_generate_estimates_memory_before_allocating(untrained_model_path, tmp_path):
    out = tmp_path / "gen"
    status, _, err, _ = cli("generate", untrained_model_path, "--out", out, "--preset", "tiny",
                            "--no-progress", "--set", "generate.num_clips=1024",
                            "--set", "generate.seconds=3600")
    assert_one_line_error(status, err, "generate.num_clips or generate.seconds", "would need about")
    assert not out.exists() or not any(out.iterdir())


# -- a killed preprocess leaves no temp folders ----------------------------------------

def work_dirs(tmp):
    return sorted(p for p in Path(tmp).iterdir() if p.name.startswith("wavenet-preprocess-"))


def start_preprocess(src, dst, tmp):
    tmp.mkdir(exist_ok=True)
    return subprocess.Popen([sys.executable, "-m", "wavenet.cli", "preprocess", str(src), str(dst),
                             "--preset", "tiny", "--no-progress", "--processes", "1"],
                            env={**os.environ, "TMPDIR": str(tmp)},
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def wait_for_work_dir(proc, tmp, timeout=120):
    deadline = time.monotonic() + timeout
    while not work_dirs(tmp):
        assert proc.poll() is None, f"preprocess ended before it was killed: {proc.stderr.read()}"
        assert time.monotonic() < deadline, "no work folder appeared"
        time.sleep(0.02)


@pytest.mark.slow
def test_sigterm_during_preprocess_removes_its_work_folder(tmp_path):
    from wavenet.data.demo import make_demo_corpus

    src = tmp_path / "corpus"
    make_demo_corpus(str(src), seconds_per_genre=120.0)  # long enough to be killed mid-run
    tmp = tmp_path / "tmp"
    proc = start_preprocess(src, tmp_path / "out", tmp)
    wait_for_work_dir(proc, tmp)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=120) == 128 + signal.SIGTERM
    assert work_dirs(tmp) == []

    # SIGKILL cannot be caught: the next run removes the dead run's folder.
    proc = start_preprocess(src, tmp_path / "out", tmp)
    wait_for_work_dir(proc, tmp)
    proc.kill()
    proc.wait(timeout=60)
    leftovers = work_dirs(tmp)
    assert len(leftovers) == 1
    from wavenet.data.preprocess import sweep_stale_work_dirs

    assert sweep_stale_work_dirs(str(tmp)) == [str(leftovers[0])]
    assert work_dirs(tmp) == []


# -- metrics re-sent after an outage reach MLflow once -------------------------------

def test_pending_metrics_and_a_repeat_at_the_same_step_are_logged_once(tmp_path, mlflow_db):
    from mlflow import MlflowClient

    from wavenet.edges import tracking

    uri = mlflow_db
    client = MlflowClient(uri)
    run_id = client.create_run(client.create_experiment("dedupe")).info.run_id
    saved = [{"key": "val_bits_per_sample", "value": 5.0, "step": 30, "timestamp": 1000}]
    buffer = tracking.MetricsBuffer(run_id, uri, pending=saved)
    assert buffer.log({"val_bits_per_sample": 5.0, "bits_per_sample": 4.0}, step=30)
    assert buffer.log({"val_bits_per_sample": 5.0}, step=30)  # once more after the send
    history = client.get_metric_history(run_id, "val_bits_per_sample")
    assert [(m.step, m.value) for m in history] == [(30, 5.0)]

