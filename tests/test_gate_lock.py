"""The gate lock (issue 19, Found 3): a holder stalled past its lease never moves the alias, a live
holder keeps its lock past the lease, a malformed lease cannot block promotions for ever; and
registry searches by a model name that holds quotes (Found 9). Real processes against a real
`mlflow server` on 127.0.0.1; the stale lock of another MLflow user is in test_mlflow_server.py."""

import os
import signal
import subprocess
import sys
import textwrap
import time

import mlflow
import pytest
from mlflow import MlflowClient

from wavenet.edges import registry
from wavenet.errors import TrackingError

# One gate's lock, in a process of its own: it takes the lock, says so (<role>-holds, its owner
# id), waits for <role>-go, moves the alias to its version, says so (<role>-moved) and holds the
# lock until <role>-release. The test decides when each step happens: no sleeps.
LOCKER = textwrap.dedent("""
    import sys, time
    from pathlib import Path

    import mlflow
    from wavenet.edges import registry
    from wavenet.errors import WavenetError

    uri, name, version, lease, wait, folder, role = sys.argv[1:8]
    folder = Path(folder)
    mlflow.set_tracking_uri(uri)

    def wait_for(flag):
        while not (folder / flag).exists():
            time.sleep(0.01)

    try:
        with registry.champion_lock(name, lease_s=float(lease), wait_s=float(wait)) as lock:
            (folder / f"{role}-holds").write_text(lock.owner)
            wait_for(f"{role}-go")
            lock.set_champion(version)
            (folder / f"{role}-moved").touch()
            wait_for(f"{role}-release")
    except WavenetError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
""")
# Seconds; long against a round trip to the server (the machines that run this are loaded).
LEASE_S = 6.0


def model_with_versions(uri: str, name: str, n: int) -> MlflowClient:
    client = MlflowClient(uri)
    client.create_registered_model(name)
    for i in range(n):
        client.create_model_version(name, source=f"s3://wavenet-test/{name}/{i + 1}")
    return client


def start_locker(script, uri, name, version, folder, role, wait_s=120.0):
    return subprocess.Popen([sys.executable, str(script), uri, name, version, str(LEASE_S), str(wait_s),
                             str(folder), role], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_for_file(path, proc, timeout=180.0):
    """Wait until ``path`` exists; fail when ``proc`` ends first (or after a generous deadline)."""
    deadline = time.monotonic() + timeout
    while not path.exists():
        if proc.poll() is not None:
            pytest.fail(f"{path.name}: the process ended first ({proc.returncode}): {proc.communicate()}")
        assert time.monotonic() < deadline, f"{path.name} did not appear in {timeout:.0f} s"
        time.sleep(0.01)


def finish(proc, timeout=180.0):
    out, err = proc.communicate(timeout=timeout)
    return proc.returncode, out, err


@pytest.fixture
def locker(tmp_path):
    script = tmp_path / "locker.py"
    script.write_text(LOCKER)
    procs = []
    yield script, procs
    for p in procs:  # a failed test leaves none behind (stopped ones are continued first)
        if p.poll() is None:
            os.kill(p.pid, signal.SIGCONT)
            p.kill()
            p.wait()


def hold(locker, uri, name, versions, folder):
    """(client, holder): model ``name`` with ``versions`` versions; a locker holding its gate lock
    for version 1."""
    script, procs = locker
    client = model_with_versions(uri, name, versions)
    holder = start_locker(script, uri, name, "1", folder, "holder")
    procs.append(holder)
    wait_for_file(folder / "holder-holds", holder)
    return client, holder


def test_a_holder_stalled_past_its_lease_does_not_move_the_alias(mlflow_server, locker, tmp_path):
    script, procs = locker
    uri, name = mlflow_server.uri, f"stalled-{tmp_path.name}"
    client, holder = hold(locker, uri, name, 2, tmp_path)
    # The whole holder stops (heartbeat included): a VM pause, a long GC, an unscheduled pod.
    os.kill(holder.pid, signal.SIGSTOP)
    (tmp_path / "contender-go").touch()
    contender = start_locker(script, uri, name, "2", tmp_path, "contender")
    procs.append(contender)
    wait_for_file(tmp_path / "contender-moved", contender)  # took over after a lease of silence
    os.kill(holder.pid, signal.SIGCONT)
    (tmp_path / "holder-go").touch()
    deadline = time.monotonic() + 180
    while holder.poll() is None:  # it ends (lost), or it moves the alias (the bug)
        assert not (tmp_path / "holder-moved").exists(), "the stalled holder moved the alias"
        assert time.monotonic() < deadline, "the resumed holder neither ended nor moved the alias"
        time.sleep(0.01)
    code, _, err = finish(holder)
    # It finds the lock lost before its alias write, says so in one line, and moves nothing.
    errors = [ln for ln in err.splitlines() if ln.startswith("error:")]
    assert code == 2 and "Traceback" not in err and len(errors) == 1, err
    assert errors[0].startswith(f"error: lost the gate lock '{name}.gate-lock'"), err
    assert client.get_model_version_by_alias(name, "champion").version == "2"
    # ... and its release left the contender's lock alone.
    lock = client.get_registered_model(f"{name}.gate-lock")
    assert lock.tags["owner"] == (tmp_path / "contender-holds").read_text()
    (tmp_path / "contender-release").touch()
    code, _, err = finish(contender)
    assert code == 0, err
    assert f"{name}.gate-lock" not in [m.name for m in client.search_registered_models()]
    assert client.get_model_version_by_alias(name, "champion").version == "2"


def test_a_live_holder_keeps_its_lock_past_the_lease(mlflow_server, locker, tmp_path):
    """The heartbeat renews the lease: a holder that takes four leases (a slow registration)
    keeps the lock, and a contender gives up after its wait, in one line naming the holder."""
    uri, name = mlflow_server.uri, f"live-{tmp_path.name}"
    client, holder = hold(locker, uri, name, 1, tmp_path)
    mlflow.set_tracking_uri(uri)
    with pytest.raises(TrackingError) as e, registry.champion_lock(name, lease_s=LEASE_S,
                                                                   wait_s=4 * LEASE_S, tracking_uri=uri):
        pass
    owner = (tmp_path / "holder-holds").read_text()
    assert str(e.value) == (f"the gate lock '{name}.gate-lock' stayed held by {owner} for "
                            f"{4 * LEASE_S:.0f} s; if no gate is running, delete registered model "
                            f"'{name}.gate-lock'")
    (tmp_path / "holder-go").touch()
    wait_for_file(tmp_path / "holder-moved", holder)
    assert client.get_model_version_by_alias(name, "champion").version == "1"
    (tmp_path / "holder-release").touch()
    assert finish(holder)[0] == 0


@pytest.mark.parametrize("lease, expires_at", [("inf", "inf"), ("nan", "nan"), ("-1", "nan"),
                                               ("1e12", "1e300"), ("soon", "soon")])
def test_a_lock_with_a_malformed_lease_expires_after_the_contenders_own_lease(
        mlflow_server, lease, expires_at):
    """Tags are read from the lock, not trusted: an infinite or unreadable lease counts as the
    contender's own, so such a lock blocks promotions for one lease, not for ever."""
    uri, name = mlflow_server.uri, f"malformed-{lease}"
    client = MlflowClient(uri)
    client.create_registered_model(f"{name}.gate-lock", tags={"owner": "gone:1:dead", "lease_s": lease,
                                                              "expires_at": expires_at})
    mlflow.set_tracking_uri(uri)
    started = time.monotonic()
    with registry.champion_lock(name, lease_s=1.0, wait_s=60.0, tracking_uri=uri) as lock:
        assert client.get_registered_model(f"{name}.gate-lock").tags["owner"] == lock.owner
    assert time.monotonic() - started >= 1.0  # it waited one lease of silence first
    assert f"{name}.gate-lock" not in [m.name for m in client.search_registered_models()]


@pytest.mark.parametrize("name", ["it's", 'say "hi"', "both ' and \"", "50%_off's \"x\""])
def test_find_by_train_key_finds_a_model_whose_name_holds_quotes(mlflow_server, name):
    """MLflow's filter strings have no escape for quotes (a value is taken as written between its
    quotes); names that a LIKE fallback would also match are not returned."""
    client = MlflowClient(mlflow_server.uri)
    key = os.urandom(32).hex()
    for n in dict.fromkeys((name, name.replace("'", "x"), name.replace("'", "_"))):
        client.create_registered_model(n)
        client.create_model_version(n, source="s3://wavenet-test/x", tags={registry.TRAIN_KEY_TAG: key})
    mlflow.set_tracking_uri(mlflow_server.uri)
    found = registry.find_by_train_key(name, key, mlflow_server.uri)
    assert found is not None and (found.name, found.version) == (name, "1")
    assert registry.find_by_train_key(name, os.urandom(32).hex(), mlflow_server.uri) is None
