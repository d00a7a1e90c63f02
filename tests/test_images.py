"""The images: the lock they install from, how `make image` picks an engine, and the built
images run as a cluster runs them (uid 1000, read-only root, a writable /scratch only)."""

import base64
import os
import re
import shutil
import socket
import stat
import subprocess
import time
import tomllib
import urllib.request
from pathlib import Path

import pytest
import yaml
from conftest import free_port, give_to_containers, run_container

from components.images import DEFAULT_REGISTRY, DEFAULT_TAG, image_name
from devtools.processes import stop_process

ROOT = Path(__file__).resolve().parents[1]
DOCKERFILE = (ROOT / "docker" / "Dockerfile").read_text()


# -- the lock ---------------------------------------------------------------------------------

def _lock_check(folder):
    """`uv lock --check`: exit 0 only when uv.lock is what pyproject.toml resolves to."""
    return subprocess.run([str(ROOT / ".tools" / "bin" / "uv"), "lock", "--check", "--offline"],
                          cwd=folder, capture_output=True, text=True,
                          env={**os.environ, "UV_PYTHON_DOWNLOADS": "never"})


def test_lock_agrees_with_pyproject():
    r = _lock_check(ROOT)
    assert r.returncode == 0, f"run `make lock` and commit uv.lock: {r.stderr}"


def test_lock_check_fails_on_a_dependency_changed_without_relocking(tmp_path):
    for name in ("pyproject.toml", "uv.lock", "README.md"):
        shutil.copy(ROOT / name, tmp_path / name)
    assert _lock_check(tmp_path).returncode == 0
    text = (tmp_path / "pyproject.toml").read_text()
    (tmp_path / "pyproject.toml").write_text(text.replace('"tqdm>=4.66,<5",', '"tqdm>=4.66,<5",\n    "six>=1.16",'))
    assert _lock_check(tmp_path).returncode != 0


def test_lock_resolves_from_pypi_only_with_hashes_and_pins_the_build_backend():
    lock = tomllib.loads((ROOT / "uv.lock").read_text())
    sources = {tuple(sorted(p["source"].items())) for p in lock["package"]}
    assert sources == {(("registry", "https://pypi.org/simple"),), (("editable", "."),)}, sources
    for p in lock["package"]:
        for f in p.get("wheels", []) + ([p["sdist"]] if "sdist" in p else []):
            assert f["url"].startswith("https://files.pythonhosted.org/"), f["url"]
            assert re.fullmatch(r"sha256:[0-9a-f]{64}", f["hash"]), (p["name"], f)
    names = {p["name"] for p in lock["package"]}
    # The GPU image's CUDA wheels and the MLflow server's packages come from the same lock.
    assert {"nvidia-cudnn-cu12", "flask-wtf", "psycopg", "psycopg-binary", "google-cloud-storage"} <= names
    pins = {c["name"]: c["specifier"] for c in lock["manifest"]["build-constraints"]}
    assert set(pins) == {"setuptools", "wheel"} and all(v.startswith("==") for v in pins.values())


def test_everything_installs_from_the_lock():
    make = (ROOT / "Makefile").read_text()
    assert re.search(r"\$\(UV\) sync -q --locked --extra dev", make)
    assert "pip install -e" not in make and "uv pip install" not in make
    # Every image installs with `uv sync` under UV_FROZEN=1, never a bare pip install of packages.
    assert "UV_FROZEN=1" in DOCKERFILE
    assert len(re.findall(r"/opt/uv/bin/uv sync", DOCKERFILE)) == 5
    assert not re.search(r"pip install (?!-q --no-cache-dir \"uv==)", DOCKERFILE)
    uv_version = re.search(r"^UV_VERSION := (\S+)$", make, re.MULTILINE).group(1)
    assert f"ARG UV_VERSION={uv_version}" in DOCKERFILE


# -- the Dockerfile ---------------------------------------------------------------------------------

def test_one_dockerfile_with_a_target_per_image():
    targets = re.findall(r"^FROM \S+ AS (\S+)$", DOCKERFILE, re.MULTILINE)
    assert {"cpu", "gpu", "mlflow"} <= set(targets)
    assert not list((ROOT / "docker").glob("Dockerfile.*"))


def test_base_image_is_a_build_argument_pinned_by_tag_and_digest():
    (default,) = re.findall(r"^ARG BASE_IMAGE=(\S+)$", DOCKERFILE, re.MULTILINE)
    assert re.fullmatch(r"python:3\.11\.\d+-slim-bookworm@sha256:[0-9a-f]{64}", default), default
    assert re.search(r"^FROM \$\{BASE_IMAGE\} AS base$", DOCKERFILE, re.MULTILINE)


def test_images_run_as_uid_1000_with_writable_state_under_scratch():
    for target in ("cpu", "gpu", "mlflow"):
        stage = DOCKERFILE.split(f" AS {target}\n", 1)[1].split("\nFROM ", 1)[0]
        assert "USER 1000:1000" in stage, target
    for var in ("HOME", "TMPDIR", "MPLCONFIGDIR", "KERAS_HOME", "MLFLOW_DFS_TMP"):
        assert re.search(rf"\b{var}=/scratch\b", DOCKERFILE), var


def test_ca_bundle_is_a_build_secret_never_a_layer():
    assert "--mount=type=secret,id=ca" in DOCKERFILE
    assert not re.search(r"^(COPY|ADD)\b.*(\.crt|\.pem|ca-certificates)", DOCKERFILE, re.MULTILINE)
    assert not re.search(r"^(ARG|ENV)\s+\S*(TOKEN|PASSWORD|SECRET)", DOCKERFILE, re.MULTILINE | re.I)


def test_compilers_only_in_the_builder_stages():
    for target in ("base", "cpu", "gpu", "mlflow"):
        stage = DOCKERFILE.split(f" AS {target}\n", 1)[1].split("\nFROM ", 1)[0]
        assert "gcc" not in stage and "apt-get install" not in stage, target
    builder = DOCKERFILE.split(" AS builder\n", 1)[1].split("\nFROM ", 1)[0]
    assert "gcc" in builder and "python3-dev" in builder


# -- image names from one setting ---------------------------------------------------------------

def test_image_names_come_from_image_registry_and_tag():
    assert image_name("cpu", {}) == f"{DEFAULT_REGISTRY}/wavenet:{DEFAULT_TAG}"
    env = {"IMAGE_REGISTRY": "127.0.0.1:5000/team", "IMAGE_TAG": "t1"}
    assert [image_name(t, env) for t in ("cpu", "gpu", "mlflow")] == [
        "127.0.0.1:5000/team/wavenet:t1", "127.0.0.1:5000/team/wavenet-gpu:t1",
        "127.0.0.1:5000/team/mlflow:t1"]
    with pytest.raises(ValueError, match="IMAGE_REGISTRY must be"):
        image_name("cpu", {"IMAGE_REGISTRY": "Bad Registry"})
    with pytest.raises(ValueError, match="IMAGE_TAG must be"):
        image_name("cpu", {"IMAGE_TAG": "no/slash"})


def _make(*args, env=None):
    r = subprocess.run(["make", "--no-print-directory", *args], cwd=ROOT, capture_output=True,
                       text=True, env=env or os.environ)
    assert r.returncode == 0, r.stderr
    return r.stdout


def test_one_setting_flows_into_image_push_and_the_compiled_pipeline(tmp_path):
    env = {**os.environ, "IMAGE_REGISTRY": "127.0.0.1:5999/team", "IMAGE_TAG": "t1", "ENGINE": "podman",
           "IMAGE_DIGESTS": str(tmp_path / "none.json")}  # nothing pushed: tags
    built = _make("-n", "image", env=env)
    for name in ("wavenet", "wavenet-gpu", "mlflow"):
        assert f"-t 127.0.0.1:5999/team/{name}:t1" in built
    pushed = _make("-n", "push", env=env)
    assert "podman push --digestfile $d --tls-verify=false 127.0.0.1:5999/team/mlflow:t1" in pushed
    out = tmp_path / "p.yaml"
    _make("compile", f"COMPILED={out}", env=env)
    spec = next(yaml.safe_load_all(out.read_text()))
    images = {e["container"]["image"] for e in spec["deploymentSpec"]["executors"].values()}
    assert images == {"127.0.0.1:5999/team/wavenet:t1"}
    assert spec["root"]["inputDefinitions"]["parameters"]["train_image"]["defaultValue"] == \
        "127.0.0.1:5999/team/wavenet-gpu:t1"


def _fake_docker(folder: Path, info_status: int) -> Path:
    folder.mkdir()
    exe = folder / "docker"
    exe.write_text(f"#!/bin/sh\n[ \"$1\" = info ] && exit {info_status}\nexit 0\n")
    exe.chmod(exe.stat().st_mode | stat.S_IEXEC)
    return folder


def test_make_image_uses_docker_only_where_an_engine_answers(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "ENGINE"}
    no_engine = _fake_docker(tmp_path / "a", 1)  # the docker CLI without an engine, as here
    out = _make("-n", "image-cpu", env={**env, "PATH": f"{no_engine}:{env['PATH']}"})
    assert ("podman build" in out or "buildah build" in out) and "docker build" not in out
    engine = _fake_docker(tmp_path / "b", 0)
    out = _make("-n", "image-cpu", env={**env, "PATH": f"{engine}:{env['PATH']}"})
    assert "DOCKER_BUILDKIT=1 docker build" in out and "--target cpu" in out


def _scripted_podman(folder: Path, build_status: int) -> Path:
    """A ``podman`` whose ``build`` writes a 40-line build log and exits ``build_status``, and
    whose ``image inspect`` answers a size: `make image`'s own output, without a real build."""
    folder.mkdir()
    exe = folder / "podman"
    exe.write_text("#!/bin/sh\n"
                   'if [ "$1" = build ]; then\n'
                   '  i=1; while [ $i -le 40 ]; do echo "STEP $i/40: RUN layer $i"; i=$((i+1)); done\n'
                   f'  echo "error building at STEP 40: exit status 1" >&2; exit {build_status}\n'
                   "fi\n"
                   'echo 123456789\n')
    exe.chmod(exe.stat().st_mode | stat.S_IEXEC)
    return folder


@pytest.mark.parametrize("build_status", [0, 1])
def test_make_image_prints_one_line_and_the_build_log_only_when_the_build_fails(tmp_path, build_status):
    podman = _scripted_podman(tmp_path / "bin", build_status)
    env = {**os.environ, "ENGINE": "podman", "PATH": f"{podman}:{os.environ['PATH']}",
           "IMAGE_REGISTRY": "ghcr.io/wavenet-pipelines", "IMAGE_TAG": "quiet-test"}
    r = subprocess.run(["make", "--no-print-directory", "image-mlflow", f"IMAGE_LOGS={tmp_path / 'logs'}"],
                       cwd=ROOT, capture_output=True, text=True, env=env)
    log = tmp_path / "logs" / "image-mlflow.log"
    assert "STEP 40/40: RUN layer 40" in log.read_text()  # the whole log, kept in a file either way
    if build_status == 0:
        assert r.returncode == 0, r.stdout + r.stderr
        assert r.stdout.splitlines() == [r.stdout.strip()] and "built in " in r.stdout, r.stdout
        assert "123 MB" in r.stdout and "STEP" not in r.stdout + r.stderr
    else:
        assert r.returncode != 0
        assert "STEP 1/40: RUN layer 1" in r.stderr and "error building at STEP 40" in r.stderr
        assert f"error: building ghcr.io/wavenet-pipelines/mlflow:quiet-test failed (exit 1); " \
               f"its log above and in {log}" in r.stderr


# -- the engine ----------------------------------------------------------------------------------

def test_the_docker_api_service_the_setup_started_runs_in_the_root_folder(engine):
    """conmon inherits the service's working directory: a service started in a clone that is later
    deleted fails every container start (500 "write child: broken pipe"), so the set-up script
    starts it in /."""
    pidfile = Path(os.environ.get("PODMAN_SOCKET", "/run/podman/podman.sock")).parent / "service.pid"
    if not pidfile.exists():
        pytest.skip(f"the Docker API was not started by scripts/setup-containers.sh (no {pidfile})")
    cwd = Path(f"/proc/{pidfile.read_text().strip()}/cwd")
    if not cwd.exists():
        pytest.skip(f"the service of {pidfile} has exited")
    assert os.readlink(cwd) == "/"


# -- the built images, run as a cluster runs them ------------------------------------------------

def test_cpu_image_runs_non_root_on_a_read_only_root(engine, cpu_image):
    status, out = run_container(engine, cpu_image, ["sh", "-c",
        "id -u; touch /opt/venv/x 2>/dev/null || echo ro-root; touch /tmp/x 2>/dev/null || echo ro-tmp; "
        "touch /scratch/x && echo scratch-ok; python -c 'import wavenet.train, kfp, mlflow; print(\"imports-ok\")'"])
    assert status == 0, out
    assert out.split() == ["1000", "ro-root", "ro-tmp", "scratch-ok", "imports-ok"], out


def test_steps_on_the_run_network_reach_the_host_service_and_nothing_beyond(engine, cpu_image):
    """make run-containers' network: a service listening on the host's address on it answers;
    an address beyond this machine (TEST-NET-1, never routed) is unreachable at once, where the
    host network would try to route it and time out."""
    import http.server
    import threading

    from devtools.containers import internal_network, step_run_args

    network = f"wavenet-test-{os.getpid()}"
    with internal_network(engine, network) as gateway:
        # The host's address on the bridge exists while a container is on it (the MLflow
        # server's container, in make run-containers).
        holder = engine.containers.run(cpu_image, ["sleep", "600"], detach=True,
                                       **step_run_args(network_mode=network))
        try:
            server = http.server.HTTPServer((gateway, 0), http.server.SimpleHTTPRequestHandler)
            threading.Thread(target=server.serve_forever, daemon=True).start()
            probe = (
                "import errno, socket, urllib.request\n"
                f"print(urllib.request.urlopen('http://{gateway}:{server.server_port}/', timeout=20).status)\n"
                "s = socket.socket(); s.settimeout(20)\n"
                "try:\n    s.connect(('192.0.2.1', 443)); print('connected')\n"
                "except OSError as e:\n    print(errno.errorcode.get(e.errno, e))\n")
            status, out = run_container(engine, cpu_image, ["python", "-c", probe], network_mode=network)
            server.shutdown()
            server.server_close()
        finally:
            holder.remove(force=True)
    assert status == 0, out
    assert out.split()[-2:] == ["200", "ENETUNREACH"], out


@pytest.mark.slow
def test_generate_runs_as_uid_1000_on_a_read_only_root(engine, cpu_image, trained_model_path, tmp_path):
    """The old image crashed here (Numba could not cache its kernel on a read-only root); the
    kernel is now compiled C, and everything that still writes goes under /scratch."""
    # pytest's folders are private to root: the model goes where uid 1000 may read it.
    model = give_to_containers(tmp_path / "model") / "trained.keras"
    shutil.copyfile(trained_model_path, model)
    model.chmod(0o644)
    out = give_to_containers(tmp_path / "out")
    volumes = {str(model.parent): {"bind": "/model", "mode": "ro"}, str(out): {"bind": "/out", "mode": "rw"}}
    cmd = ["wavenet", "generate", f"/model/{model.name}", "--out", "/out/samples", "--preset", "tiny",
           "--set", "model.num_classes=2", "--set", "generate.seconds=0.1", "--set", "generate.num_clips=2",
           "--tracking-uri", "sqlite:////out/m.db", "--no-progress"]
    status, log = run_container(engine, cpu_image, cmd, volumes=volumes)
    assert status == 0, log[-3000:]
    wavs = sorted((out / "samples").rglob("*.wav"))
    assert len(wavs) == 2 and all(w.stat().st_size > 44 for w in wavs)
    assert all(w.stat().st_uid == 1000 for w in wavs)
    # Control: the same container with /scratch read-only (no emptyDir) cannot run, so this test
    # would catch an image or runner that writes outside /scratch by accident of a writable mount.
    from devtools.containers import SCRATCH, step_run_args

    args = step_run_args()
    args["tmpfs"][SCRATCH] = "ro,size=64k"
    c = engine.containers.run(cpu_image, cmd, detach=True, volumes=volumes, **args)
    try:
        status = c.wait(timeout=600)["StatusCode"]
        log = c.logs(stdout=True, stderr=True).decode("utf-8", "replace")
    finally:
        c.remove(force=True)
    assert status != 0 and "No usable temporary directory" in log, log[-3000:]


def test_mlflow_image_has_the_auth_app_postgres_and_gcs(engine, mlflow_image):
    status, out = run_container(engine, mlflow_image, ["-c", "import flask_wtf, psycopg, google.cloud.storage, "
                                "mlflow; print('ok', mlflow.__version__)"], entrypoint=["python"])
    assert status == 0 and out.startswith("ok 3."), out


ADMIN_PASSWORD = "test-only-Passw0rd-4217"


def test_mlflow_image_serves_with_basic_auth_on_a_read_only_root(engine, mlflow_image):
    from devtools.containers import step_run_args

    port = free_port()
    c = engine.containers.run(mlflow_image, ["server", "--app-name", "basic-auth", "--host", "127.0.0.1",
                                             "--port", str(port), "--workers", "1",
                                             "--backend-store-uri", "sqlite:////scratch/mlflow.db"],
                              detach=True, **step_run_args({"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
                                                            "MLFLOW_FLASK_SERVER_SECRET_KEY": "test-only",
                                                            "MLFLOW_AUTH_ADMIN_USERNAME": "admin",
                                                            "MLFLOW_AUTH_ADMIN_PASSWORD": ADMIN_PASSWORD}))
    url = f"http://127.0.0.1:{port}/api/2.0/mlflow/experiments/search?max_results=1"
    try:
        deadline = time.monotonic() + 180
        while True:
            c.reload()
            assert c.status in ("created", "running"), c.logs().decode()[-3000:]
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                urllib.request.urlopen(url, timeout=5)
                raise AssertionError("anonymous request was not refused")
            except urllib.error.HTTPError as e:
                if e.code == 401:
                    break
                raise
            except OSError:
                assert time.monotonic() < deadline, c.logs().decode()[-3000:]
                time.sleep(1)
        # The basic-auth app creates the admin user from MLFLOW_AUTH_ADMIN_* at first start
        # (k8s/mlflow.yaml takes the password from the mlflow-auth Secret).
        token = base64.b64encode(f"admin:{ADMIN_PASSWORD}".encode()).decode()
        req = urllib.request.Request(url, headers={"Authorization": f"Basic {token}"})
        with urllib.request.urlopen(req, timeout=10) as r:
            assert r.status == 200
    finally:
        c.remove(force=True)


# -- push and pull through a real registry on 127.0.0.1 -----------------------------------------

@pytest.fixture
def registry(tmp_path):
    exe = shutil.which("docker-registry")
    if not exe:
        from conftest import _unavailable

        _unavailable("docker-registry is not installed (scripts/setup-containers.sh)")
    port = free_port()
    conf = tmp_path / "registry.yml"
    conf.write_text(yaml.safe_dump({
        "version": 0.1, "log": {"level": "warn"},
        "storage": {"filesystem": {"rootdirectory": str(tmp_path / "store")}, "delete": {"enabled": True}},
        "http": {"addr": f"127.0.0.1:{port}"}}))
    proc = subprocess.Popen([exe, "serve", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/v2/", timeout=2) as r:
                    assert r.status == 200
                    break
            except OSError:
                assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read()
                time.sleep(0.2)
        yield f"127.0.0.1:{port}"
    finally:
        stop_process(proc)


@pytest.mark.slow
def test_make_image_and_push_to_your_registry_then_pull_it_back(engine, mlflow_image, registry, tmp_path):
    import json

    env = {**os.environ, "IMAGE_REGISTRY": f"{registry}/wavenet-pipelines", "IMAGE_TAG": "push-test",
           # make push records the digest: here, not in the checkout
           "IMAGE_DIGESTS": str(tmp_path / "images.lock.json"), "K8S_PINNED": str(tmp_path / "k8s")}
    name = f"{registry}/wavenet-pipelines/mlflow:push-test"
    # The same build under the user's names (layers come from the cache), then make push.
    _make("image", "push", "TARGETS=mlflow", env=env)
    built = engine.images.get(name).id
    with urllib.request.urlopen(f"http://{registry}/v2/wavenet-pipelines/mlflow/tags/list") as r:
        assert json.load(r)["tags"] == ["push-test"]
    engine.images.remove(name, force=True)
    with pytest.raises(Exception):  # noqa: B017 - docker.errors.ImageNotFound
        engine.images.get(name)
    subprocess.run(["podman", "pull", "-q", "--tls-verify=false", name] if shutil.which("podman")
                   else ["docker", "pull", "-q", name], check=True, capture_output=True)
    assert engine.images.get(name).id == built
    status, out = run_container(engine, name, ["--version"])
    assert status == 0 and "mlflow" in out.lower(), out
    engine.images.remove(name, force=True)


def test_cpu_image_holds_this_checkouts_package(engine, cpu_image):
    """The image's package is this checkout's source (else `make image` is due): a stale build
    cache once shipped old code under a fresh image."""
    import hashlib

    status, out = run_container(engine, cpu_image, ["python", "-c",
        "import hashlib, pathlib, wavenet; root = pathlib.Path(wavenet.__file__).parent; "
        "print('\\n'.join(f'{p.relative_to(root)} {hashlib.sha256(p.read_bytes()).hexdigest()}' "
        "for p in sorted(root.rglob('*.py'))))"])
    assert status == 0, out
    image = dict(line.split() for line in out.strip().splitlines())
    here = {str(p.relative_to(ROOT / "wavenet")): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted((ROOT / "wavenet").rglob("*.py"))}
    assert image == here, sorted(k for k in here if image.get(k) != here[k])


def test_cpu_image_holds_the_locked_versions(engine, cpu_image):
    """The image was built from this checkout's lock (else `make image` is due)."""
    status, out = run_container(engine, cpu_image, ["python", "-c",
        "import importlib.metadata as m; print(m.version('tensorflow'), m.version('mlflow'), m.version('keras'))"])
    assert status == 0, out
    lock = tomllib.loads((ROOT / "uv.lock").read_text())
    versions = {p["name"]: p["version"] for p in lock["package"] if p["name"] in ("tensorflow", "mlflow", "keras")}
    assert out.split() == [versions["tensorflow"], versions["mlflow"], versions["keras"]]


# -- images by digest: make push records, compile and the cluster's manifests use it ------------

def test_a_recorded_digest_names_the_image_and_a_missing_one_keeps_the_tag(tmp_path, capsys):
    from components.images import image_ref
    from pipelines.image_digests import record

    lock = tmp_path / "images.lock.json"
    env = {"IMAGE_REGISTRY": "127.0.0.1:5999/team", "IMAGE_TAG": "t1", "IMAGE_DIGESTS": str(lock)}
    digest = "sha256:" + "ab" * 32
    record("127.0.0.1:5999/team/wavenet:t1", digest, lock)
    assert image_ref("cpu", env) == f"127.0.0.1:5999/team/wavenet@{digest}"
    assert capsys.readouterr().err == ""
    assert image_ref("gpu", env) == "127.0.0.1:5999/team/wavenet-gpu:t1"  # not pushed: the tag
    assert "warning: no digest recorded for 127.0.0.1:5999/team/wavenet-gpu:t1" in capsys.readouterr().err
    assert image_ref("cpu", {k: v for k, v in env.items() if k != "IMAGE_DIGESTS"}) == \
        "127.0.0.1:5999/team/wavenet:t1"  # local runs: tags
    lock.write_text('{"127.0.0.1:5999/team/wavenet:t1": "latest"}')
    with pytest.raises(ValueError, match=f"{lock}: every value must be a sha256"):
        image_ref("cpu", env)
    with pytest.raises(ValueError, match="must be sha256:<64 hex>"):
        record("x:1", "sha256:short", tmp_path / "other.json")


@pytest.mark.slow
def test_make_push_records_digests_that_compile_the_tfjob_and_k8s_use(registry, tmp_path):
    """Three small images under the targets' names -> make push to a real registry on 127.0.0.1
    -> the registry's own digests recorded -> the compiled pipeline, the rendered TFJob and the
    kustomize overlay reference them, and a pull by digest gets the image."""
    import json

    engine_cli = shutil.which("podman") or shutil.which("docker")
    if engine_cli is None:
        from conftest import _unavailable

        _unavailable("no podman or docker CLI")
    engine_name = Path(engine_cli).name
    env = {**os.environ, "IMAGE_REGISTRY": f"{registry}/wavenet-pipelines", "IMAGE_TAG": "digest-test",
           "IMAGE_DIGESTS": str(tmp_path / "images.lock.json"), "K8S_PINNED": str(tmp_path / "k8s"),
           "ENGINE": engine_name}
    names = {t: f"{registry}/wavenet-pipelines/{r}:digest-test"
             for t, r in (("cpu", "wavenet"), ("gpu", "wavenet-gpu"), ("mlflow", "mlflow"))}
    for target, name in names.items():  # distinct content: distinct digests
        ctx = tmp_path / f"ctx-{target}"
        ctx.mkdir()
        (ctx / "what").write_text(target)
        (ctx / "Containerfile").write_text("FROM scratch\nCOPY what /what\n")
        subprocess.run([engine_cli, "build", "-q", "-t", name, "-f", str(ctx / "Containerfile"), str(ctx)],
                       check=True, capture_output=True)
    try:
        _make("push", "TARGETS=cpu gpu mlflow", env=env)
        lock = json.loads((tmp_path / "images.lock.json").read_text())
        for target, name in names.items():  # what the registry itself says it holds
            repo, tag = name.split("/", 1)[1].rsplit(":", 1)
            req = urllib.request.Request(f"http://{registry}/v2/{repo}/manifests/{tag}", method="HEAD", headers={
                "Accept": "application/vnd.oci.image.manifest.v1+json, "
                          "application/vnd.docker.distribution.manifest.v2+json"})
            with urllib.request.urlopen(req) as r:
                assert lock[name] == r.headers["Docker-Content-Digest"], target
        assert len(set(lock.values())) == 3
        pinned = {t: f"{n.rsplit(':', 1)[0]}@{lock[n]}" for t, n in names.items()}

        out = tmp_path / "p.yaml"
        _make("compile", f"COMPILED={out}", env=env)
        spec = next(yaml.safe_load_all(out.read_text()))
        assert {e["container"]["image"] for e in spec["deploymentSpec"]["executors"].values()} == {pinned["cpu"]}
        train_image = spec["root"]["inputDefinitions"]["parameters"]["train_image"]["defaultValue"]
        assert train_image == pinned["gpu"]

        from wavenet.config import preset
        from wavenet.context import RunContext
        from wavenet.train import ClusterSettings, training_tfjob

        job = training_tfjob(preset("tiny"), "wavenet-x", "gs://b/d", "gs://b/r",
                             ClusterSettings("wavenet", train_image, gpus_per_worker=1),
                             RunContext("http://mlflow:5000", run_name="r", environ={}))
        pod = job["spec"]["tfReplicaSpecs"]["Worker"]["template"]["spec"]
        assert [c["image"] for c in pod["containers"]] == [pinned["gpu"]]

        from devtools.validate_k8s import kubectl_kustomize

        objs = kubectl_kustomize(tmp_path / "k8s")
        if objs is not None:
            deployments = {o["metadata"]["name"]: o for o in objs if o["kind"] == "Deployment"}
            for name, target in (("mlflow", "mlflow"), ("wavenet-serve", "cpu")):  # server, serving
                pod = deployments[name]["spec"]["template"]["spec"]
                assert [c["image"] for c in pod["containers"]] == [pinned[target]], name

        subprocess.run([engine_cli, "rmi", "-f", names["gpu"]], check=True, capture_output=True)
        pull = [engine_cli, "pull", "-q"] + (["--tls-verify=false"] if engine_name == "podman" else [])
        subprocess.run(pull + [pinned["gpu"]], check=True, capture_output=True)
    finally:
        for ref in [*names.values(), *(locals().get("pinned") or {}).values()]:
            subprocess.run([engine_cli, "rmi", "-f", ref], capture_output=True)
