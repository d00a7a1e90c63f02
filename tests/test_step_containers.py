"""`make run-containers`' steps: each container is ours until its output and real exit status
are read (devtools.containers.run_step), whatever the speed of the step or the engine."""

import subprocess
import sys
import threading
import time
import uuid

import pytest

from devtools import containers


def _component(image: str, script: str):
    """A kfp container component that runs ``sh -c script`` in ``image`` (a step of milliseconds)."""
    from kfp import dsl

    @dsl.container_component
    def quick_step():
        return dsl.ContainerSpec(image=image, command=["sh", "-c", script])

    return quick_step


@pytest.fixture
def docker_runner(engine, tmp_path, monkeypatch):
    """kfp.local with a DockerRunner, steps as our pods run, through :func:`owned_step_containers`."""
    from kfp import local

    # kfp.local's DockerRunner connects with docker.from_env() (as devtools.run_containers sets).
    monkeypatch.setenv("DOCKER_HOST", containers.docker_host())
    local.init(runner=local.DockerRunner(**containers.step_run_args()), pipeline_root=str(tmp_path),
               raise_on_error=True)
    with containers.owned_step_containers():
        yield


def test_a_step_that_fails_fast_fails_the_run(docker_runner, cpu_image, capsys):
    # kfp 2.17 alone: the container is auto-removed before kfp reads it, and kfp then answers
    # exit status 0 (Docker's 404) or fails on podman's 500; never this step's own status.
    step = _component(cpu_image, "echo about to fail; exit 3")
    with pytest.raises(RuntimeError, match=r"finished with status .*FAILURE"):
        step()
    assert "about to fail" in capsys.readouterr().out


def test_a_fast_step_succeeds_every_time_with_its_output(docker_runner, cpu_image, capsys):
    # A step of milliseconds ends before its output is read, most times: 20 in a row.
    for i in range(20):
        task = _component(cpu_image, f"echo quick step {i}")()
        assert task is not None
        assert f"quick step {i}" in capsys.readouterr().out, i


def test_a_container_removed_under_a_step_is_never_a_success(engine, cpu_image):
    label = {"org.wavenet-pipelines.test": uuid.uuid4().hex}
    result: dict = {}

    def run():
        own = containers.client()  # a client of its own: the test's goes on in this thread
        try:
            result["status"] = containers.run_step(own, cpu_image, ["sleep", "600"], {},
                                                   **containers.step_run_args(labels=label))
        except containers.ContainerError as e:
            result["error"] = str(e)
        finally:
            own.close()

    t = threading.Thread(target=run, daemon=True)
    t.start()
    filters = {"label": [f"{k}={v}" for k, v in label.items()], "status": "running"}
    deadline = time.monotonic() + 300
    while not engine.containers.list(filters=filters):  # the event: it runs
        assert t.is_alive() and time.monotonic() < deadline, result
        time.sleep(0.2)
    engine.containers.list(filters=filters)[0].remove(force=True)  # someone else removes it
    t.join(120)
    assert not t.is_alive()
    # Whether the engine still had its status (killed: 137) or not (vanished): not a success.
    assert "vanished before its exit status was read" in result.get("error", "") \
        or result.get("status", 0) != 0, result


def test_containers_of_a_killed_run_are_removed_and_a_live_runs_kept(engine, cpu_image):
    """A run killed with SIGKILL leaves its detached containers; the next one removes them."""
    tag = {"org.wavenet-pipelines.test": uuid.uuid4().hex}
    gone = subprocess.Popen([sys.executable, "-c", "pass"])  # a process that has ended
    gone.wait()
    orphan_args = containers.step_run_args(labels=tag)
    orphan_args["labels"][containers.OWNER_LABEL] = str(gone.pid)
    started = []
    try:
        started.append(engine.containers.run(cpu_image, ["sleep", "600"], detach=True, **orphan_args))
        started.append(engine.containers.run(cpu_image, ["sleep", "600"], detach=True,
                                             **containers.step_run_args(labels=tag)))  # ours: alive
        orphan, ours = started
        removed = containers.remove_orphans(engine)
        assert orphan.name in removed and ours.name not in removed
        left = engine.containers.list(all=True, filters={"label": [f"{k}={v}" for k, v in tag.items()]})
        assert [c.name for c in left] == [ours.name]
    finally:
        for c in started:
            try:
                c.remove(force=True)
            except Exception:  # noqa: BLE001 - removed by the test already
                pass
