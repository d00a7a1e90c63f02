"""The production MLflow set-up of ``k8s/mlflow.yaml``, run on this machine (test helpers).

* :func:`run_postgres`: a real PostgreSQL (Debian's ``postgresql``: initdb + pg_ctl) in a
  temporary folder, listening on 127.0.0.1 only, on a free port.
* :func:`mlflow_deployment`: the Deployment's pod spec and ``mlflow`` container, as committed.
* :func:`run_manifest_mlflow`: ``mlflow server`` with that container's args and environment,
  secrets replaced by test values, in the MLflow image the way the pod runs it (uid and group of
  its securityContext, read-only root, capabilities dropped, the Secret volume's files, a fresh
  /scratch), or, where no container engine is available, from .venv's MLflow.

What is substituted, and nothing else: ``--host`` (127.0.0.1: tests talk to loopback only),
the port (a free one, in ``--port`` and in the ``--allowed-hosts`` entries that name the
container port), the Secret values, and what the cluster gives the pod without the manifest
naming it (``STORAGE_EMULATOR_HOST``: the GCS emulator instead of Workload Identity).
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml
from conftest import REQUIRE_CONTAINERS, free_port, run_gcs_emulator, stop_process_group, wait_healthy

ROOT = Path(__file__).resolve().parents[1]
MANIFEST = ROOT / "k8s" / "mlflow.yaml"


# -- PostgreSQL ---------------------------------------------------------------------------------

def postgres_bin() -> Path | None:
    """The folder of Debian's PostgreSQL server programs (initdb, pg_ctl), or None."""
    found = shutil.which("initdb")
    if found:
        return Path(os.path.realpath(found)).parent
    versions = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"),
                      key=lambda p: int(p.parent.parent.name) if p.parent.parent.name.isdigit() else 0)
    return versions[-1].parent if versions else None


@dataclass
class Postgres:
    port: int
    superuser_password: str
    folder: Path
    bin: Path
    user: str | None  # the OS user the server runs as (postgres refuses root)

    def uri(self, database: str, user: str, password: str) -> str:
        return f"postgresql://{user}:{password}@127.0.0.1:{self.port}/{database}"

    def sql(self, statement: str, database: str = "postgres") -> str:
        """Run one SQL statement as the superuser over TCP (psql); returns its tuples-only output."""
        out = subprocess.run(
            [str(self.bin / "psql") if (self.bin / "psql").exists() else "psql", "-X", "-q", "-t", "-A",
             "-v", "ON_ERROR_STOP=1", "-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres",
             "-d", database, "-c", statement],
            capture_output=True, text=True, timeout=60,
            env={**os.environ, "PGPASSWORD": self.superuser_password})
        if out.returncode != 0:
            raise RuntimeError(f"psql failed: {out.stderr.strip()}")
        return out.stdout.strip()


@contextlib.contextmanager
def run_postgres(port: int, timeout: float = 60.0) -> Iterator[Postgres]:
    """A fresh PostgreSQL cluster on 127.0.0.1:``port`` (password authentication over TCP)."""
    pg_bin = postgres_bin()
    if pg_bin is None:
        raise FileNotFoundError("PostgreSQL is not installed (Debian: apt-get install postgresql; "
                                "scripts/setup-services.sh)")
    run_as = None
    if os.geteuid() == 0:
        import pwd

        try:
            pwd.getpwnam("postgres")
        except KeyError:
            raise FileNotFoundError("no `postgres` user to run PostgreSQL as (it refuses root)") from None
        run_as = "postgres"
    # Not under pytest's root-only temporary folders: the postgres user must reach it.
    folder = Path(tempfile.mkdtemp(prefix="wavenet-pg-"))
    password = "test-only-superuser-" + os.urandom(6).hex()
    (folder / "pw").write_text(password + "\n")
    if run_as:
        shutil.chown(folder, run_as, run_as)
        shutil.chown(folder / "pw", run_as, run_as)
    data = folder / "data"

    def run(args, **kw):
        return subprocess.run(args, user=run_as, capture_output=True, text=True, timeout=120,
                              cwd=folder, **kw)

    r = run([str(pg_bin / "initdb"), "-D", str(data), "-U", "postgres", "--pwfile", str(folder / "pw"),
             "-A", "scram-sha-256", "-E", "UTF8", "--locale=C"])
    if r.returncode != 0:
        shutil.rmtree(folder, ignore_errors=True)
        raise RuntimeError(f"initdb failed: {r.stderr.strip()}")
    opts = f"-c listen_addresses=127.0.0.1 -p {port} -k {data} -c fsync=off"
    r = run([str(pg_bin / "pg_ctl"), "-D", str(data), "-l", str(folder / "server.log"), "-o", opts,
             "-w", "-t", str(int(timeout)), "start"])
    try:
        if r.returncode != 0:
            log = (folder / "server.log").read_text(errors="replace")[-2000:] if (folder / "server.log").exists() else ""
            raise RuntimeError(f"pg_ctl start failed: {r.stderr.strip()} {log}")
        yield Postgres(port=port, superuser_password=password, folder=folder, bin=pg_bin, user=run_as)
    finally:
        run([str(pg_bin / "pg_ctl"), "-D", str(data), "-m", "fast", "-w", "stop"])
        shutil.rmtree(folder, ignore_errors=True)


# -- the Deployment, as committed -----------------------------------------------------------------

def mlflow_deployment(path: Path = MANIFEST) -> tuple[dict[str, Any], dict[str, Any]]:
    """(pod spec, ``mlflow`` container) of the Deployment ``mlflow`` in ``path``."""
    docs = [d for d in yaml.safe_load_all(path.read_text()) if d]
    (dep,) = [d for d in docs if d["kind"] == "Deployment" and d["metadata"]["name"] == "mlflow"]
    pod = dep["spec"]["template"]["spec"]
    (c,) = [c for c in pod["containers"] if c["name"] == "mlflow"]
    return pod, c


def server_args(container: Mapping[str, Any], port: int) -> list[str]:
    """The container's args with the loopback host and ``port`` substituted (nothing else)."""
    (container_port,) = [p["containerPort"] for p in container["ports"] if p["name"] == "http"]
    out = []
    for a in container["args"]:
        if a.startswith("--host="):
            a = "--host=127.0.0.1"
        elif a.startswith("--port="):
            assert a == f"--port={container_port}", a
            a = f"--port={port}"
        elif a.startswith("--allowed-hosts="):
            a = a.replace(f":{container_port}", f":{port}")
        out.append(a)
    return out


def resolve_env(container: Mapping[str, Any], secrets: Mapping[str, Mapping[str, str]]) -> dict[str, str]:
    """The container's env, ``secretKeyRef`` values from ``secrets`` (a missing one is an error
    unless optional, as for the kubelet)."""
    env: dict[str, str] = {}
    for e in container.get("env", []):
        if "value" in e:
            env[e["name"]] = str(e["value"])
            continue
        ref = e["valueFrom"]["secretKeyRef"]
        value = secrets.get(ref["name"], {}).get(ref["key"])
        if value is None:
            if ref.get("optional"):
                continue
            raise KeyError(f"env {e['name']} needs key {ref['key']!r} of Secret {ref['name']!r}")
        env[e["name"]] = value
    return env


@dataclass
class ManifestServer:
    uri: str
    port: int
    args: list[str]
    env: dict[str, str]
    how: str  # "container <image>" or "venv"
    start_seconds: float
    logs: Any = field(repr=False, default=None)  # () -> str
    container: Any = field(repr=False, default=None)  # the docker Container, when run in the image


@contextlib.contextmanager
def run_manifest_mlflow(port: int, secrets: Mapping[str, Mapping[str, str]], folder: Path, *,
                        extra_env: Mapping[str, str], engine=None, image: str | None = None,
                        timeout: float = 240.0) -> Iterator[ManifestServer]:
    """``mlflow server`` as the Deployment runs it; in ``image`` when ``engine`` is given, else
    from .venv (the container's paths mapped into ``folder``)."""
    pod, c = mlflow_deployment()
    args = server_args(c, port)
    env = {**resolve_env(c, secrets), **extra_env}
    volumes = {v["name"]: v for v in pod.get("volumes", [])}
    mounts: dict[str, Path] = {}  # container path -> host folder (secret volumes)
    tmpfs: list[str] = []
    for m in c.get("volumeMounts", []):
        v = volumes[m["name"]]
        if "secret" in v:
            host = folder / "volumes" / m["name"]
            host.mkdir(parents=True)
            data = secrets[v["secret"]["secretName"]]
            for item in v["secret"].get("items") or [{"key": k, "path": k} for k in data]:
                (host / item["path"]).write_text(data[item["key"]])
                (host / item["path"]).chmod(0o444)
            host.chmod(0o555)
            mounts[m["mountPath"]] = host
        elif "emptyDir" in v:
            tmpfs.append(m["mountPath"])
        else:
            raise ValueError(f"volume {m['name']}: only secret and emptyDir volumes are emulated")
    uri = f"http://127.0.0.1:{port}"
    started = time.monotonic()
    if engine is not None:
        from devtools.containers import step_run_args

        ctx = {**pod.get("securityContext", {}), **c.get("securityContext", {})}
        run_args = step_run_args(env, user=f"{ctx['runAsUser']}:{ctx.get('runAsGroup', ctx['runAsUser'])}")
        assert ctx.get("readOnlyRootFilesystem") is True and run_args["read_only"] is True
        assert ctx["capabilities"]["drop"] == ["ALL"] and ctx["allowPrivilegeEscalation"] is False
        for path in tmpfs:
            run_args["tmpfs"][path] = "size=1g,mode=1777"
        container = engine.containers.run(
            image, args, detach=True, name=f"wavenet-test-mlflow-{port}",
            volumes={str(h): {"bind": p, "mode": "ro"} for p, h in mounts.items()}, **run_args)

        def alive():
            container.reload()
            return container.status in ("created", "running")

        def logs():
            try:
                return container.logs().decode("utf-8", "replace")
            except Exception as e:  # noqa: BLE001 - gone already
                return f"(no logs: {e})"

        try:
            wait_healthy(uri, alive, timeout, logs)
            yield ManifestServer(uri, port, args, env, f"container {image}", time.monotonic() - started,
                                 logs, container)
        finally:
            with contextlib.suppress(Exception):
                container.stop(timeout=10)
            with contextlib.suppress(Exception):
                container.remove(force=True)
        return

    # .venv: the container's paths (secret mounts, emptyDirs) become folders under `folder`.
    remap = dict(mounts)
    for path in tmpfs:
        remap[path] = folder / "volumes" / path.strip("/").replace("/", "-")
        remap[path].mkdir(parents=True, exist_ok=True)

    def local(value: str) -> str:
        for path, host in remap.items():
            if value == path or value.startswith(path + "/"):
                return str(host) + value[len(path):]
        return value

    env = {k: local(v) for k, v in env.items()}
    keep = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "GOOGLE_", "STORAGE_"))}
    log_path = folder / "server.log"
    log = open(log_path, "ab")  # noqa: SIM115 - closed below
    proc = subprocess.Popen([sys.executable, "-m", "mlflow", *args], env={**keep, **env},
                            stdout=log, stderr=subprocess.STDOUT, cwd=folder, start_new_session=True)
    try:
        wait_healthy(uri, lambda: proc.poll() is None, timeout, lambda: log_path.read_text(errors="replace"))
        yield ManifestServer(uri, port, args, env, "venv", time.monotonic() - started,
                             lambda: log_path.read_text(errors="replace"))
    finally:
        stop_process_group(proc, timeout=15)
        log.close()


# -- the whole set-up (the session's `production` fixture, tests/conftest.py) ---------------------

# Test values for the Secrets k8s/mlflow.yaml references (docs/mlflow.md: "The MLflow server on the
# cluster" shows the same keys).
DB_USER, DB_PASSWORD = "mlflow", "test-only-db-Pw-5521"
ADMIN, ADMIN_PASSWORD = "admin", "test-only-Admin-Pw-8842"
PIPELINE_USER, PIPELINE_PASSWORD = "pipeline", "test-only-Pipeline-Pw-3107"
# Seconds a worker trusts a password it has verified (docs/mlflow.md: each check is a scrypt).
AUTH_CACHE_TTL_S = 10


def basic_auth_ini(database_uri: str) -> str:
    """The `basic_auth.ini` key of Secret mlflow-auth (docs/mlflow.md shows the same)."""
    return ("[mlflow]\n"
            "default_permission = READ\n"
            f"database_uri = {database_uri}\n"
            f"admin_username = {ADMIN}\n"
            "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n"
            f"auth_cache_ttl_seconds = {AUTH_CACHE_TTL_S}\n")


def secrets_for(pg: Postgres, admin_password: str = ADMIN_PASSWORD) -> dict[str, dict[str, str]]:
    return {"mlflow-backend": {"uri": pg.uri("mlflow", DB_USER, DB_PASSWORD)},
            "mlflow-auth": {"basic_auth.ini": basic_auth_ini(pg.uri("mlflow_auth", DB_USER, DB_PASSWORD)),
                            "admin-password": admin_password,
                            "flask-secret-key": "test-only-flask-secret-key-0123456789"}}


def artifact_bucket() -> tuple[str, str]:
    """(bucket, prefix) of the manifest's --artifacts-destination."""
    _, c = mlflow_deployment()
    (dest,) = [a.split("=", 1)[1] for a in c["args"] if a.startswith("--artifacts-destination=")]
    assert dest.startswith("gs://"), dest
    bucket, _, prefix = dest[len("gs://"):].partition("/")
    return bucket, prefix


def _engine_and_image():
    """(docker client, MLflow image), or (None, None) where containers are not available here."""
    from components.images import image_name
    from devtools.containers import ContainerError, client, require_image

    try:
        c = client()
        require_image(c, image_name("mlflow"))
        return c, image_name("mlflow")
    except ContainerError as e:
        if REQUIRE_CONTAINERS:
            pytest.fail(f"{e} (WAVENET_REQUIRE_CONTAINERS=1)")
        print(f"no container engine or MLflow image ({e}): running the server from .venv")
        return None, None


@dataclass
class Production:
    server: ManifestServer
    pg: Postgres
    emulator: str
    bucket: str
    prefix: str
    engine: object
    image: str | None
    folder: Path


@contextlib.contextmanager
def run_production(folder: Path) -> Iterator[Production]:
    """The whole production set-up: PostgreSQL, the GCS emulator, the manifest's ``mlflow server``.

    Skips (fails under WAVENET_REQUIRE_CONTAINERS=1) where PostgreSQL is not installed. Yields
    a :class:`Production` whose admin and pipeline users exist; ``folder`` holds its files.
    """
    if postgres_bin() is None:
        msg = "PostgreSQL is not installed: run scripts/setup-services.sh (Debian's postgresql)"
        if REQUIRE_CONTAINERS:
            pytest.fail(msg)
        pytest.skip(msg)
    engine, image = _engine_and_image()
    bucket, prefix = artifact_bucket()
    with contextlib.ExitStack() as stack:
        started = time.monotonic()
        pg = stack.enter_context(run_postgres(free_port()))
        pg.sql(f"CREATE ROLE {DB_USER} LOGIN PASSWORD '{DB_PASSWORD}'")
        for db in ("mlflow", "mlflow_auth"):
            pg.sql(f"CREATE DATABASE {db} OWNER {DB_USER}")
        pg_seconds = time.monotonic() - started
        emulator = stack.enter_context(run_gcs_emulator(bucket))
        server = stack.enter_context(run_manifest_mlflow(
            free_port(), secrets_for(pg), folder / "server-1",
            # What Workload Identity gives the pod on a cluster: here, the emulator's address.
            extra_env={"STORAGE_EMULATOR_HOST": emulator}, engine=engine, image=image))
        print(f"PostgreSQL up in {pg_seconds:.1f} s; mlflow server ({server.how}) healthy in "
              f"{server.start_seconds:.1f} s")
        # The pipeline's own user (Secret mlflow-client), created by the admin as docs/mlflow.md says.
        status, body = request(server.uri + "/api/2.0/mlflow/users/create", auth=(ADMIN, ADMIN_PASSWORD),
                               data={"username": PIPELINE_USER, "password": PIPELINE_PASSWORD})
        assert status == 200, body
        yield Production(server, pg, emulator, bucket, prefix, engine, image, Path(folder))


def request(url, auth=None, data=None, method=None, host=None):
    """(HTTP status, body text) of one request; ``auth`` = (user, password) for Basic auth."""
    headers = {}
    if auth:
        headers["Authorization"] = "Basic " + base64.b64encode(f"{auth[0]}:{auth[1]}".encode()).decode()
    if host:
        headers["Host"] = host
    body = None
    if data is not None:
        body = json.dumps(data).encode()
        headers["Content-Type"] = "application/json"
    req = urllib.request.Request(url, data=body, headers=headers, method=method)
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, r.read().decode("utf-8", "replace")
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode("utf-8", "replace")
