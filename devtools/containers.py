"""Run this project's images on one machine the way a cluster runs them.

The container engine is reached through the Docker API (the ``docker`` Python client): a
Docker engine, or podman's Docker API socket (``podman system service``, started by
``scripts/setup-containers.sh``). Every container runs like a pod of ours on a cluster:

* as uid 1000 (the image's user; ``runAsUser: 1000`` in the manifests),
* with a read-only root filesystem (``readOnlyRootFilesystem``),
* with a fresh writable ``/scratch`` (the ``emptyDir`` every manifest mounts there; the image
  points HOME, TMPDIR and the caches at it),
* with all capabilities dropped and no privilege escalation,
* on the host's network, where the only services it is given addresses of listen on
  127.0.0.1 (the tests' MLflow server and GCS emulator).

:func:`step_run_args` are these settings as ``docker`` ``containers.run`` arguments (what
``kfp.local.DockerRunner`` takes); :mod:`devtools.tfjob_containers` derives the same from a
rendered TFJob's pod spec. :func:`run_step` runs one step's container to its end and returns
its real exit status; :func:`owned_step_containers` makes ``kfp.local`` run its steps with it.
Every container started with these arguments carries its starter's pid (:data:`OWNER_LABEL`):
a process killed with SIGKILL cannot stop its detached containers, and
:func:`remove_orphans` removes them on the next run.
"""

from __future__ import annotations

import codecs
import contextlib
import os
import threading
import urllib.parse
from collections.abc import Iterator, Mapping
from typing import Any

from wavenet.errors import WavenetError
from wavenet.local_workers import pid_alive

__all__ = ["ContainerError", "SCRATCH", "USER", "docker_host", "client", "require_image",
           "step_run_args", "run_step", "owned_step_containers", "OWNER_LABEL", "owner_label",
           "remove_orphans"]

# The writable mount of every manifest (an emptyDir on a cluster, a tmpfs here).
SCRATCH = "/scratch"
# The image's user (docker/Dockerfile) and the manifests' runAsUser/runAsGroup.
USER = "1000:1000"
# Where podman's Docker API listens (root, then rootless).
PODMAN_SOCKETS = ("/run/podman/podman.sock",)


# The pid of the process that started a container (on this machine: the same pid namespace).
OWNER_LABEL = "org.wavenet-pipelines.owner-pid"


class ContainerError(WavenetError):
    """No container engine, a missing image, or a container that failed."""


# How long a socket that exists may take to answer. podman 4.3's API answers nothing while a
# build or a commit holds its store (seconds on a busy machine); a missing engine fails at once.
PROBE_TIMEOUT_S = 60


def _answers(url: str) -> bool:
    import docker

    try:
        c = docker.DockerClient(base_url=url, timeout=PROBE_TIMEOUT_S)
        try:
            return bool(c.ping())
        finally:
            c.close()
    except Exception:  # noqa: BLE001 - any failure means: not this one
        return False


def docker_host(environ: Mapping[str, str] | None = None) -> str | None:
    """The Docker API to use: ``DOCKER_HOST``, else Docker's socket, else podman's; None if none answers."""
    env = os.environ if environ is None else environ
    if env.get("DOCKER_HOST"):
        return env["DOCKER_HOST"]
    candidates = ["/var/run/docker.sock", *PODMAN_SOCKETS]
    if env.get("XDG_RUNTIME_DIR"):
        candidates.append(os.path.join(env["XDG_RUNTIME_DIR"], "podman", "podman.sock"))
    for path in candidates:
        if os.path.exists(path) and _answers(f"unix://{path}"):
            return f"unix://{path}"
    return None


def client(environ: Mapping[str, str] | None = None):
    """A ``docker.DockerClient`` for :func:`docker_host`; a one-line error when none answers."""
    import docker

    url = docker_host(environ)
    if not url:
        raise ContainerError("no container engine answers (no DOCKER_HOST, no Docker or podman "
                             "socket): install Docker, or run scripts/setup-containers.sh as root")
    try:
        c = docker.DockerClient(base_url=url, timeout=600)
        c.ping()
    except Exception as e:  # noqa: BLE001 - the edge: one line naming the engine
        raise ContainerError(f"container engine at {url} does not answer: {e}") from None
    return c


def require_image(docker_client, image: str) -> None:
    """Fail in one line when ``image`` is not in the engine's local store (nothing is pulled)."""
    import docker

    try:
        docker_client.images.get(image)
    except docker.errors.ImageNotFound:
        raise ContainerError(f"image {image} is not built here: run `make image` "
                             "(same IMAGE_REGISTRY and IMAGE_TAG)") from None


def owner_label() -> dict[str, str]:
    """The label that makes a container this process's (:func:`remove_orphans`)."""
    return {OWNER_LABEL: str(os.getpid())}


def remove_orphans(docker_client) -> list[str]:
    """Remove the containers whose starting process (:data:`OWNER_LABEL`) is gone.

    A test run stopped with SIGKILL (a timeout's kill, the OOM killer) cannot run its
    fixtures' clean-up: its detached containers (an MLflow server, a step) keep running,
    holding memory and ports, and a later container of the same name could not be created.
    Containers of live processes (another run at the same time) are left alone
    (:func:`wavenet.local_workers.pid_alive`).

    Returns:
        The names of the containers removed.
    """
    import docker

    removed = []
    for c in docker_client.containers.list(all=True, filters={"label": OWNER_LABEL}):
        pid = (c.labels or {}).get(OWNER_LABEL, "")
        if not pid.isdigit() or pid_alive(int(pid)):
            continue
        try:
            c.remove(force=True)
            removed.append(c.name)
        except docker.errors.APIError as e:
            if not _vanished(e):  # another run removed it first
                raise
    return removed


def step_run_args(environment: Mapping[str, str] | None = None, *, user: str = USER,
                  scratch_size: str = "4g", network_mode: str = "host",
                  labels: Mapping[str, str] | None = None) -> dict[str, Any]:
    """``containers.run`` arguments that run a container as our pods run on a cluster.

    Args:
        environment: extra environment (service addresses such as ``MLFLOW_TRACKING_URI``).
        user: ``uid:gid`` to run as.
        scratch_size: size of the writable ``/scratch`` tmpfs.
        network_mode: ``host`` (this machine's network: loopback services, and everything
            else the machine reaches), or the name of a network such as
            :func:`internal_network`'s (only that network and the host's address on it).
        labels: labels to add to :func:`owner_label`'s.

    Returns:
        Keyword arguments for ``docker``'s ``containers.run`` / ``kfp.local.DockerRunner``.
    """
    args: dict[str, Any] = {
        "user": user,
        "read_only": True,
        # podman mounts writable tmpfs on /tmp and /var/tmp of a read-only container; a
        # Kubernetes readOnlyRootFilesystem has none: read-only ones keep that difference out.
        "tmpfs": {SCRATCH: f"size={scratch_size},mode=1777", "/tmp": "ro,size=64k",
                  "/var/tmp": "ro,size=64k"},
        "cap_drop": ["ALL"],
        "security_opt": ["no-new-privileges"],
        "network_mode": network_mode,
        "labels": {**owner_label(), **(labels or {})},
    }
    if environment:
        args["environment"] = dict(environment)
    return args


def loopback_url(url: str) -> bool:
    """Whether ``url`` points at this machine's loopback (what containers here may reach)."""
    host = urllib.parse.urlsplit(url if "://" in url else f"http://{url}").hostname or ""
    return host in ("localhost", "::1") or host.startswith("127.")


@contextlib.contextmanager
def internal_network(docker_client, name: str) -> Iterator[str]:
    """A bridge network with no route out of this machine; yields the host's address on it.

    Containers on it reach each other and the host's bridge address (where a service
    on the host can listen), and get "network unreachable" for anything else: a step
    cannot fetch from the internet or talk to another machine, as the cluster's
    egress NetworkPolicy intends. ``internal`` is the Docker API's flag (podman:
    ``podman network create --internal``); the network is removed afterwards.
    """
    import docker

    try:
        net = docker_client.networks.create(name, driver="bridge", internal=True)
    except docker.errors.APIError as e:
        raise ContainerError(f"cannot create the internal network {name!r}: {e.explanation or e}") \
            from None
    try:
        net.reload()
        configs = (net.attrs.get("IPAM") or {}).get("Config") or []
        gateway = next((c.get("Gateway") for c in configs if c.get("Gateway")), None)
        if not gateway:
            raise ContainerError(f"the internal network {name!r} has no gateway address "
                                 f"(IPAM: {configs})")
        yield gateway
    finally:
        with contextlib.suppress(docker.errors.APIError):
            net.remove()


def container_address(container, network: str) -> str:
    """``container``'s IP address on ``network``."""
    container.reload()
    address = (container.attrs["NetworkSettings"]["Networks"].get(network) or {}).get("IPAddress")
    if not address:
        raise ContainerError(f"container {container.name} has no address on network {network!r}")
    return address


# -- one step's container, from creation to removal ---------------------------------------------

# kfp.local 2.17's DockerRunner runs a step with ``containers.run(..., auto_remove=True)``, then
# streams its logs and waits (kfp/local/docker_task_handler.py, ``run_docker_container``). A
# step that ends before those calls is removed first: podman then answers 500, which kfp lets
# through (it catches only docker's NotFound, a 404), and when the 404 does come kfp returns
# exit status 0 "since we couldn't get the actual status code", so a step that fails fast
# counts as a success. Here the container is ours until its status is read.
_ENGINE_OWNED = ("auto_remove", "remove", "detach", "stdout", "stderr", "stream")


def _vanished(e: Exception) -> bool:
    """Whether a Docker API error says the container does not exist (any more).

    Docker answers 404 (``docker.errors.NotFound``); podman's Docker API answers some calls
    on a removed container with 500 "... does not exist in database: no such container"
    (e.g. containers/podman#17341; the same text as in this project's failed runs).
    """
    import docker

    return isinstance(e, docker.errors.NotFound) or (
        isinstance(e, docker.errors.APIError) and "no such container" in str(e).lower())


class _Output:
    """A container's output, followed on a thread of its own and printed line by line as it
    comes (kfp.local indents each ``print`` of a step); counts the bytes it printed."""

    def __init__(self, container):
        self.container, self.printed, self.stream = container, 0, None
        self.done, self._lock, self._abandoned = threading.Event(), threading.Lock(), False
        self._decoder = codecs.getincrementaldecoder("utf-8")("replace")  # chunks split characters
        self._held = ""
        threading.Thread(target=self._follow, daemon=True, name="step-output").start()

    def _follow(self) -> None:
        try:
            self.stream = self.container.logs(stream=True, follow=True, stdout=True, stderr=True)
            for chunk in self.stream:
                with self._lock:
                    if self._abandoned:  # finish() took the rest from the whole log
                        return
                    self.write(chunk)
        except Exception:  # noqa: BLE001 - closed under it by finish(); what is missing is fetched there
            pass
        finally:
            self.done.set()

    def write(self, chunk: bytes) -> None:
        self.printed += len(chunk)
        self._held += self._decoder.decode(chunk)
        *lines, self._held = self._held.split("\n")
        for line in lines:
            print(line, flush=True)

    def finish(self) -> None:
        """After the container's exit: the rest of its output, then the last partial line.

        podman 4.3's API may never end a followed stream of a container that exited as the
        stream began (seen here: a step's ``logs(follow=True)`` blocked 15 minutes after its
        ``echo`` exited). After :data:`OUTPUT_GRACE_S` the stream is closed and the bytes it
        did not deliver are taken from the container's whole log: nothing lost, nothing twice.
        """
        if not self.done.wait(OUTPUT_GRACE_S):
            if self.stream is not None:
                with contextlib.suppress(Exception):
                    self.stream.close()
            self.done.wait(OUTPUT_GRACE_S)
            with self._lock:
                self._abandoned = True
                rest = self.container.logs(stdout=True, stderr=True)[self.printed:]
                if rest:
                    self.write(rest)
        self._held += self._decoder.decode(b"", final=True)
        if self._held:
            print(self._held, flush=True)


# How long a followed output stream may take to end after its container exited.
OUTPUT_GRACE_S = 10.0


def run_step(docker_client, image: str, command: list[str], volumes: Mapping[str, Any],
             **run_args: Any) -> int:
    """Run one step's container to its end: print its output, return its real exit status.

    Create, start, stream the output, ``wait`` for the status, and only then remove the
    container (also on Ctrl-C or an error, which kills it). Nothing is pulled.

    Args:
        docker_client: a ``docker.DockerClient``.
        image: the step's image, already in the engine's store.
        command: the step's command line.
        volumes: ``containers.create`` volumes.
        **run_args: ``containers.run`` arguments (:func:`step_run_args`); those that would
            let the engine remove the container or change what ``run`` returns are dropped.

    Returns:
        The container's exit status.

    Raises:
        ContainerError: the image is missing, the engine refused the container (e.g. a
            command that does not exist), or the container vanished before its exit status
            was read (never taken for a success).
    """
    import docker

    require_image(docker_client, image)
    args = {k: v for k, v in run_args.items() if k not in _ENGINE_OWNED}
    container = docker_client.containers.create(image, command, volumes=dict(volumes), **args)
    try:
        container.start()
        output = _Output(container)
        status = int(container.wait()["StatusCode"])
        # podman answers wait() of a container removed under it with status 0: the status
        # counts only if the container is still there, exited with that code.
        container.reload()
        if container.attrs["State"].get("ExitCode") != status:
            raise ContainerError(f"the container {container.short_id} of {image} reported status "
                                 f"{status} but its state says {container.attrs['State']}")
        output.finish()
        return status
    except docker.errors.APIError as e:
        if _vanished(e):
            raise ContainerError(f"the container {container.short_id} of {image} vanished before "
                                 f"its exit status was read: {e.explanation or e}") from None
        raise ContainerError(f"the container {container.short_id} of {image}: "
                             f"{e.explanation or e}") from None
    finally:
        try:
            container.remove(force=True)
        except docker.errors.APIError as e:
            if not _vanished(e):
                print(f"warning: could not remove container {container.short_id}: "
                      f"{e.explanation or e}", flush=True)


@contextlib.contextmanager
def owned_step_containers() -> Iterator[None]:
    """``kfp.local.DockerRunner`` runs each step with :func:`run_step` while this is open.

    kfp.local 2.17's ``DockerTaskHandler.run`` (kfp/local/docker_task_handler.py) builds the
    volumes, environment and pip-install serialisation, then calls that module's
    ``run_docker_container(client, image, command, volumes, **container_run_args)``, which
    returns the exit status; only that function is replaced (and put back on exit), so the
    rest of kfp's task handling stays kfp's.
    """
    from kfp.local import docker_task_handler

    def run_docker_container(client, image: str, command: list[str], volumes: dict[str, Any],
                             **container_run_args: Any) -> int:
        return run_step(client, docker_task_handler.add_latest_tag_if_not_present(image),
                        command, volumes, **container_run_args)

    original = docker_task_handler.run_docker_container
    docker_task_handler.run_docker_container = run_docker_container
    try:
        yield
    finally:
        docker_task_handler.run_docker_container = original
