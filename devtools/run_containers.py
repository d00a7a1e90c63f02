"""Run ``wavenet-train`` with every step in its own container of the CPU image (``make run-containers``).

The same pipeline and components as ``make run``, through ``kfp.local.DockerRunner`` (the
Docker API: a Docker engine or podman's socket). Each step is a container of
``components.images.WAVENET_IMAGE`` run as on a cluster (:mod:`devtools.containers`: uid
1000, read-only root, a fresh ``/scratch``, only the pipeline root mounted writable) on an
internal network made for the run, which has no route out of this machine
(:func:`devtools.containers.internal_network`). On it the steps reach only two services
started for the run:

* an MLflow server, itself a container of the MLflow image on the same network (its SQLite
  store and artifacts in ``ROOT/mlflow/``), which every step logs to over HTTP;
* a GCS emulator on this machine, listening only on the host's address on that network,
  holding the bucket the shards go to (``--shards-uri``, default
  ``gs://wavenet-containers/shards``), so the steps read and write a bucket as on a cluster;
  it keeps its objects in ``ROOT/gcs/``.

Both stop when the run ends; the summary is the one ``make run`` prints.
Usage: ``python -m devtools.run_containers [--data PATH_OR_GS] [--preset demo] [...]``.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from devtools import containers
from devtools.processes import stop_process
from pipelines import run_local
from wavenet.edges.tracking import wait_until_healthy

PIPELINE_ROOT = os.path.join("runs", "pipeline-containers")
BUCKET = "wavenet-containers"


def build_parser() -> argparse.ArgumentParser:
    p = run_local.build_parser()
    p.prog = "python -m devtools.run_containers"
    p.description = __doc__.splitlines()[0]
    p.set_defaults(root=PIPELINE_ROOT, shards_uri=f"gs://{BUCKET}/shards")
    return p


def _owned(path: Path, user: str) -> Path:
    """``path`` created and, when we are root, given to the containers' user."""
    path.mkdir(parents=True, exist_ok=True)
    if os.geteuid() == 0:
        uid, gid = (int(x) for x in user.split(":"))
        os.chown(path, uid, gid)
    return path


def _wait_port(host: str, port: int, alive, what: str, timeout: float = 180.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not alive():
            raise containers.ContainerError(f"{what} exited during start-up")
        try:
            socket.create_connection((host, port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.3)
    raise containers.ContainerError(f"{what} did not listen on {host}:{port} within {timeout:.0f} s")


MLFLOW_PORT = 5000


@contextlib.contextmanager
def mlflow_server(client, image: str, store: Path, user: str, network: str, name: str
                  ) -> Iterator[str]:
    """An MLflow server in a container of ``image`` on ``network``; yields its URI there."""
    import docker

    args = containers.step_run_args({"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}, user=user,
                                    network_mode=network)
    container = client.containers.run(
        image, ["server", "--host", "0.0.0.0", "--port", str(MLFLOW_PORT), "--workers", "1",
                "--backend-store-uri", f"sqlite:///{store}/mlflow.db",
                "--artifacts-destination", f"{store}/mlartifacts"],
        detach=True, volumes={str(store): {"bind": str(store), "mode": "rw"}},
        name=name, **args)
    try:
        def alive() -> bool:
            container.reload()
            return container.status in ("created", "running")

        address = containers.container_address(container, network)
        uri = f"http://{address}:{MLFLOW_PORT}"
        _wait_port(address, MLFLOW_PORT, alive, f"MLflow server ({image})")
        if not wait_until_healthy(uri, 120, alive):
            raise containers.ContainerError(f"MLflow server at {uri} is not healthy")
        yield uri
    finally:
        with contextlib.suppress(docker.errors.APIError):
            container.stop(timeout=10)
        with contextlib.suppress(docker.errors.APIError):
            container.remove(force=True)


@contextlib.contextmanager
def gcs_emulator(folder: Path, bucket: str, port: int, host: str = "127.0.0.1") -> Iterator[str]:
    """A GCS emulator on ``host``:``port`` storing its objects under ``folder``; yields its URL."""
    exe = shutil.which("gcp-storage-emulator", path=os.path.dirname(sys.executable))
    if not exe:
        raise containers.ContainerError("gcp-storage-emulator is not installed (a dev dependency: make install)")
    folder.mkdir(parents=True, exist_ok=True)
    log = open(folder / "emulator.log", "ab")  # noqa: SIM115 - closed below
    proc = subprocess.Popen([exe, "start", "--host", host, "--port", str(port),
                             "--default-bucket", bucket, "-q"], cwd=folder, stdout=log,
                            stderr=subprocess.STDOUT, start_new_session=True)
    try:
        _wait_port(host, port, lambda: proc.poll() is None, "GCS emulator", timeout=60)
        yield f"http://{host}:{port}"
    finally:
        stop_process(proc)
        log.close()


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Run the pipeline in containers; returns :func:`pipelines.run_local.summarize` plus wall time."""
    from kfp import local

    from components.images import MLFLOW_IMAGE, WAVENET_IMAGE
    from wavenet.local_workers import free_ports

    client = containers.client()
    # kfp.local's DockerRunner connects with docker.from_env(): point it at the same engine.
    os.environ["DOCKER_HOST"] = containers.docker_host()
    for image in (WAVENET_IMAGE, MLFLOW_IMAGE):
        containers.require_image(client, image)
    if args.tracking_uri:
        raise containers.ContainerError("--tracking-uri: the run starts its own MLflow server "
                                        "(its store is ROOT/mlflow)")
    user = containers.USER if os.geteuid() == 0 else f"{os.getuid()}:{os.getgid()}"
    root = _owned(Path(args.root).resolve(), user)
    store = _owned(root / "mlflow", user)
    (gcs_port,) = free_ports(1)
    network = f"wavenet-run-{os.getpid()}-{gcs_port}"
    with contextlib.ExitStack() as stack:
        gateway = stack.enter_context(containers.internal_network(client, network))
        # The server first: the host's bridge address exists once a container is on it.
        args.tracking_uri = stack.enter_context(
            mlflow_server(client, MLFLOW_IMAGE, store, user, network, f"{network}-mlflow"))
        env = {"TF_CPP_MIN_LOG_LEVEL": "2"}
        if args.shards_uri.startswith("gs://") or args.data.startswith("gs://"):
            env["STORAGE_EMULATOR_HOST"] = stack.enter_context(
                gcs_emulator(root / "gcs", args.shards_uri[5:].split("/")[0] or BUCKET, gcs_port,
                             host=gateway))
            env["GOOGLE_CLOUD_PROJECT"] = "wavenet-local"
            # This process reads the bucket too (the summary's manifest).
            os.environ.update({k: env[k] for k in ("STORAGE_EMULATOR_HOST", "GOOGLE_CLOUD_PROJECT")})
        runner = local.DockerRunner(**containers.step_run_args(env, user=user, network_mode=network))
        # Each step's container stays until its output and real exit status are read.
        stack.enter_context(containers.owned_step_containers())
        summary = run_local.run(args, runner=runner)
    summary.update({"tracking_uri": f"sqlite:///{store}/mlflow.db",
                    "ui_command": f"make ui MLFLOW_STORE={store}",
                    "image": WAVENET_IMAGE, "mlflow_image": MLFLOW_IMAGE,
                    "shards_uri": args.shards_uri})
    return summary


def main(argv: list[str] | None = None) -> int:
    return run_local.main(argv, parser=build_parser(), run_fn=run)


if __name__ == "__main__":
    sys.exit(main())
