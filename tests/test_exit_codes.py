"""The worker's exit-code policy against the Training Operator's retry rule."""

import subprocess
import sys

import pytest
import tensorflow as tf

from wavenet.errors import ConfigError, DataError, StorageUnavailable, TrackingError, TrackingUnavailable
from wavenet.local_workers import WorkerError
from wavenet.train.exit_codes import PeerLost, exit_code, is_retryable


@pytest.mark.parametrize("error", [
    tf.errors.UnavailableError(None, None, "peer lost"),
    tf.errors.DeadlineExceededError(None, None, "collective timed out"),
    tf.errors.CancelledError(None, None, "collective cancelled"),
    tf.errors.AbortedError(None, None, "coordination service aborted"),
    PeerLost("peer worker 1 is gone"),
    TimeoutError("collective timeout"),
])
def test_lost_peers_exit_138(error):
    assert exit_code(error) == 138
    assert is_retryable(exit_code(error))


@pytest.mark.parametrize("error", [TrackingUnavailable("MLflow refused connections for 180 s"),
                                   StorageUnavailable("bucket answered 503 for 180 s"),
                                   WorkerError("worker 1 exited 138", worker=1, returncode=138),
                                   WorkerError("worker 1 was killed", worker=1, returncode=-9)])
def test_outages_exit_138(error):
    """A service away past the retry budget, or a launcher whose workers kept ending retryably."""
    assert exit_code(error) == 138


@pytest.mark.parametrize("error", [ConfigError("train.steps must be > 0"), DataError("no shards"),
                                   TrackingError("denied user 'bob' (HTTP 403)"),
                                   WorkerError("worker 1 exited 2", worker=1, returncode=2)])
def test_bad_input_exits_2_permanently(error):
    assert exit_code(error) == 2
    assert not is_retryable(2)


@pytest.mark.parametrize("error", [ValueError("bug"), tf.errors.InvalidArgumentError(None, None, "shape"),
                                   KeyError("x")])
def test_other_errors_exit_1_permanently(error):
    assert exit_code(error) == 1
    assert not is_retryable(1)


@pytest.mark.parametrize("code, retry", [(130, True), (137, True), (138, True), (143, True),
                                         (0, False), (1, False), (2, False), (126, False),
                                         (127, False), (128, False), (139, False), (255, False),
                                         (-9, True), (-15, True), (-2, True), (-11, False)])
def test_retryable_codes_are_the_operators(code, retry):
    # kubeflow/training-operator pkg/util/train/train_util.go IsRetryableExitCode;
    # negative codes are Popen's "killed by signal n", a container's 128 + n.
    assert is_retryable(code) is retry


@pytest.mark.subprocess
def test_worker_with_bad_config_exits_2_with_one_line(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "wavenet.cli", "train", str(tmp_path), "--out", str(tmp_path / "o"),
         "--worker", "--set", "train.steps=-1"],
        capture_output=True, text=True, timeout=300,
        env={"TF_CONFIG": '{"cluster": {"worker": ["127.0.0.1:1"]}, "task": {"type": "worker", "index": 0}}',
             "PATH": "/usr/bin:/bin"})
    assert result.returncode == 2, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.startswith("error")]
    assert len(lines) == 1 and "train.steps" in lines[0], result.stderr
    assert "Traceback" not in result.stderr
