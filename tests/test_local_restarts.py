"""The local launcher's restart budget, with real (TensorFlow-free) worker processes."""

import sys

import pytest

from wavenet.local_workers import WorkerError
from wavenet.train.launch import _run_with_restarts

# Worker 1 fails with CODE on its first start (marker file), every start is counted.
_WORKER = """
import json, os, sys, time
index = json.loads(os.environ["TF_CONFIG"])["task"]["index"]
with open(sys.argv[1] + f"/starts-{index}", "a") as f:
    f.write("x")
marker = sys.argv[1] + "/failed"
if index == 1 and (not os.path.exists(marker) or sys.argv[3] == "always"):
    open(marker, "w").close()
    print("error: worker broke", file=sys.stderr)
    sys.exit(int(sys.argv[2]))
time.sleep(0.5)
"""


def _commands(tmp_path, code, when="once"):
    return [[sys.executable, "-c", _WORKER, str(tmp_path), str(code), when] for _ in range(2)]


def _starts(tmp_path, index):
    return len((tmp_path / f"starts-{index}").read_text())


@pytest.mark.parametrize("code", [137, 138, 143, 130])
def test_retryable_exit_restarts_all_workers(tmp_path, code, capsys):
    _run_with_restarts(_commands(tmp_path, code), {"PATH": "/usr/bin:/bin"}, 3, str(tmp_path))
    assert _starts(tmp_path, 0) == 2 and _starts(tmp_path, 1) == 2
    assert f"worker 1 exited {code} (retryable): restarting all 2 workers from step 0, " \
           "restart 1 of 3" in capsys.readouterr().err


@pytest.mark.parametrize("code", [1, 2, 139])
def test_permanent_exit_fails_at_once(tmp_path, code):
    with pytest.raises(WorkerError, match="worker broke") as e:
        _run_with_restarts(_commands(tmp_path, code), {"PATH": "/usr/bin:/bin"}, 3, str(tmp_path))
    assert e.value.returncode == code
    assert _starts(tmp_path, 1) == 1


def test_budget_is_kept(tmp_path):
    with pytest.raises(WorkerError):
        _run_with_restarts(_commands(tmp_path, 138, "always"), {"PATH": "/usr/bin:/bin"}, 2,
                           str(tmp_path))
    assert _starts(tmp_path, 1) == 3  # first run + 2 restarts


# Worker 1 stops as after SIGTERM (exit 143); worker 0 is still saving the agreed checkpoint,
# which takes longer than the launcher waits after other failures (FAILURE_GRACE_S).
_SAVING = """
import json, os, signal, sys, time
index = json.loads(os.environ["TF_CONFIG"])["task"]["index"]
first = not os.path.exists(sys.argv[1] + f"/started-{index}")
open(sys.argv[1] + f"/started-{index}", "a").close()
if not first:
    sys.exit(0)
if index == 1:
    time.sleep(0.5)
    sys.exit(143)
signal.signal(signal.SIGTERM, signal.SIG_IGN)  # stopping already: the launcher's SIGTERM changes nothing
time.sleep(float(sys.argv[2]))
open(sys.argv[1] + "/saved", "w").close()
sys.exit(143)
"""


@pytest.mark.subprocess
def test_workers_stopping_after_sigterm_get_time_to_save(tmp_path):
    from wavenet.local_workers import FAILURE_GRACE_S, SAVE_GRACE_S

    save_s = FAILURE_GRACE_S + 2
    assert save_s < SAVE_GRACE_S
    commands = [[sys.executable, "-c", _SAVING, str(tmp_path), str(save_s)] for _ in range(2)]
    _run_with_restarts(commands, {"PATH": "/usr/bin:/bin"}, 1, str(tmp_path))
    assert (tmp_path / "saved").exists()  # worker 0 was not killed mid-save
