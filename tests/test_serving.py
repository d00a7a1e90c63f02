"""The champion, served: wavenet.serving in-process, in a fresh process, and behind
`mlflow models serve` on 127.0.0.1 (real subprocesses, real WAVs read back with soundfile)."""

import base64
import io
import json
import os
import subprocess
import sys
import textwrap
import threading
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import mlflow
import numpy as np
import pytest
import soundfile as sf
from conftest import free_port, stop_process_group

from wavenet.edges import registry, tracking
from wavenet.generation.fast import FastGenerator
from wavenet.model import load_model
from wavenet.serving import BadRequest, GenerationModel, ServeSettings

NAME = "wavenet"


def wav(b64: str) -> tuple[np.ndarray, int]:
    return sf.read(io.BytesIO(base64.b64decode(b64)), dtype="int16")


@pytest.fixture(scope="module")
def model(trained_model_path, eval_data):
    """The trained tiny model, with the names of the labels it was trained on (eval_data's)."""
    net = load_model(trained_model_path)
    net.labels = ("low", "high")  # train_briefly records no vocabulary
    return net


@pytest.fixture(scope="module")
def champion_store(model, tmp_path_factory):
    """A SQLite store where the trained tiny model is version 1 of `wavenet`, the champion."""
    folder = tmp_path_factory.mktemp("served-store")
    uri = f"sqlite:///{folder / 'mlflow.db'}"
    tracking.use_tracking_uri(uri)
    exp = mlflow.create_experiment("serve-test", artifact_location=(folder / "mlruns").as_uri())
    with mlflow.start_run(experiment_id=exp):
        logged = tracking.log_model(model)
    ref = registry.register(logged, NAME, tracking_uri=uri)
    registry.set_champion(NAME, ref.version, uri)
    return uri


def test_logging_a_model_gives_mlflow_its_environment_and_prints_nothing(model, tmp_path, caplog,
                                                                       monkeypatch):
    """log_model from a uv checkout (as `make run` does): no "Detected uv project" and no
    "Failed to resolve installed pip version" line; the environment MLflow writes is ours."""
    import logging

    import yaml

    root = tmp_path / "checkout"
    root.mkdir()
    (root / "uv.lock").write_text("version = 1\n")
    (root / "pyproject.toml").write_text("[project]\nname = 'x'\n")
    monkeypatch.chdir(root)
    tracking.use_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    exp = mlflow.create_experiment("log-model", artifact_location=(tmp_path / "mlruns").as_uri())
    caplog.set_level(logging.INFO, logger="mlflow")
    with mlflow.start_run(experiment_id=exp):
        caplog.clear()  # the store's creation
        logged = tracking.log_model(model)
    noise = [r.getMessage() for r in caplog.records if r.name.startswith("mlflow")
             and r.levelno >= logging.INFO]
    assert not noise, noise
    local = mlflow.artifacts.download_artifacts(logged, dst_path=str(tmp_path / "model"))
    env = yaml.safe_load(open(os.path.join(local, "conda.yaml")))
    assert "pip" in env["dependencies"]
    requirements = open(os.path.join(local, "requirements.txt")).read().split()
    assert f"mlflow=={mlflow.__version__}" in requirements
    assert any(r.startswith("tensorflow==") for r in requirements), requirements


# -- in-process ---------------------------------------------------------------------------------

def test_a_stream_batched_with_others_is_the_stream_generated_alone(model):
    seeds, labels = [5, 6, 7, 8], np.array([0, 1, 0, 1])
    together = FastGenerator(model, batch_size=4, weights="int8").generate(
        300, labels=labels, seed=seeds)
    alone = FastGenerator(model, batch_size=1, weights="int8")
    for b in range(4):
        np.testing.assert_array_equal(together[b], alone.generate(300, labels=labels[b:b + 1],
                                                                   seed=seeds[b])[0])


def test_concurrent_requests_are_generated_as_one_batch(model):
    # The batch closes when max_batch clips are in (an event), not after a time: the window
    # is longer than any test run.
    served = GenerationModel(model, ServeSettings(max_batch=8, max_wait_ms=600_000))
    rows = [{"label": ["low", "high"][i % 2], "seconds": 0.05 * (1 + i % 3), "seed": i} for i in range(8)]
    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(lambda r: served.predict([r]), rows))
    assert served.batcher.batches == 1 and served.batcher.streams == 8
    for row, answer in zip(rows, answers):
        audio, rate = wav(answer["audio"][0])
        assert rate == 16000 and len(audio) == round(row["seconds"] * 16000)
    # Each clip is its seed's, whatever it was batched with: alone (a batch of one), the same.
    alone = GenerationModel(model, ServeSettings(max_batch=1, max_wait_ms=0))
    for row, answer in zip(rows, answers):
        assert alone.predict([row])["audio"][0] == answer["audio"][0]


@pytest.mark.parametrize("rows, message", [
    ([{"label": "nope", "seconds": 1}], "row 0: unknown label 'nope' (labels: low, high)"),
    ([{"label": "low"}], "row 0: seconds is required"),
    ([{"label": "low", "seconds": 31}], "row 0: seconds must lie in [6.25e-05, 30]. Received: seconds=31"),
    ([{"label": "low", "seconds": 1, "temperature": 0}], "row 0: temperature must lie in [0.05, 5]"),
    ([{"label": "low", "seconds": float("nan")}], "row 0: seconds is required"),
    ([{"label": "low", "seconds": 1, "seed": -1}], "row 0: seed must be an integer in [0, 2**53)"),
    ([{"label": "low", "seconds": 1, "prime": "AAAA"}], "row 0: prime must be an audio file"),
    ([{"label": "low", "seconds": 1, "volume": 11}], "row 0: unknown field 'volume'"),
    ([{"label": "low", "seconds": 0.01}] * 65, "a request holds at most 64 rows. Received: 65 rows"),
    ([], "the request has no rows"),
])
def test_a_bad_row_is_refused_in_one_line(model, rows, message):
    served = GenerationModel(model, ServeSettings())
    with pytest.raises(BadRequest) as e:
        served.predict(rows)
    assert str(e.value).startswith(message) and "\n" not in str(e.value)


def test_a_model_that_plays_a_score_plays_each_rows_score(model):
    """A row's score (a base64 MIDI file) is what its clip plays, from its first note: the clip
    is the fast generator's with that score; a row without one, or one for a model that plays
    none, is refused in one line."""
    from test_generate import make_model

    from wavenet.data.audio import mu_law_decode
    from wavenet.data.notes import Score, midi_bytes, pack_scores

    scored = make_model(score_channels=4)
    sr = scored.audio_config.sample_rate
    tune = Score.from_notes([(4000, 6000, 60, False), (5000, 5200, 36, True)])
    row = {"seconds": 0.1, "seed": 3, "score": base64.b64encode(midi_bytes(tune, sr)).decode()}
    served = GenerationModel(scored, ServeSettings())
    got = served.predict([row, {**row, "seed": 4}])
    want = FastGenerator(scored, 1, weights=ServeSettings().weights).generate(
        round(0.1 * sr), seed=[3], notes=pack_scores([tune.shifted(-4000, round(0.1 * sr))]))
    audio, _ = sf.read(io.BytesIO(base64.b64decode(got["audio"][0])), dtype="float32")
    np.testing.assert_allclose(audio, mu_law_decode(want[0], 256), atol=2 / 32767)  # 16-bit PCM
    silent = FastGenerator(scored, 1, weights=ServeSettings().weights).generate(
        round(0.1 * sr), seed=[3], notes=pack_scores([Score.from_notes([])]))
    assert not np.array_equal(want, silent)  # the score is heard
    for bad, message in [({"seconds": 0.1}, "row 0: this model plays a score: give score"),
                         ({**row, "score": "bm90IG1pZGk="}, "row 0: score: not a readable MIDI file")]:
        with pytest.raises(BadRequest) as e:
            served.predict([bad])
        assert str(e.value).startswith(message) and "\n" not in str(e.value)
    with pytest.raises(BadRequest, match="row 0: this model plays no score: give no score"):
        GenerationModel(model, ServeSettings()).predict([{**row, "label": model.labels[0]}])


def test_a_row_may_ask_for_the_delay_line_that_sustains_its_lone_notes(model):
    """sustain (ServeSettings.sustain when the row gives none) is the generator's: the clip
    equals FastGenerator.generate(..., sustain=...) and differs from plain sampling; a sustain
    outside [0, 1) is refused in one line."""
    from test_generate import make_model

    from wavenet.data.audio import mu_law_decode
    from wavenet.data.notes import Score, midi_bytes, pack_scores
    from wavenet.errors import WavenetError

    scored = make_model(score_channels=4)
    sr, n = scored.audio_config.sample_rate, 1600
    tune = Score.from_notes([(0, 4000, 72, False)])
    row = {"seconds": n / sr, "seed": 3, "score": base64.b64encode(midi_bytes(tune, sr)).decode()}
    gen = FastGenerator(scored, 1, weights=ServeSettings().weights)
    notes = pack_scores([tune.shifted(0, n)])
    held, plain = (gen.generate(n, seed=[3], notes=notes, sustain=v)[0] for v in (0.9, 0.0))
    assert not np.array_equal(held, plain)

    def served(settings, extra):
        got = GenerationModel(scored, settings).predict([{**row, **extra}])["audio"][0]
        return sf.read(io.BytesIO(base64.b64decode(got)), dtype="float32")[0]

    for settings, extra in [(ServeSettings(), {"sustain": 0.9}), (ServeSettings(sustain=0.9), {})]:
        np.testing.assert_allclose(served(settings, extra), mu_law_decode(held, 256), atol=2 / 32767)
    np.testing.assert_allclose(served(ServeSettings(), {}), mu_law_decode(plain, 256), atol=2 / 32767)
    for bad in (1.0, -0.1, "x"):
        with pytest.raises(BadRequest) as e:
            GenerationModel(scored, ServeSettings()).predict([{**row, "sustain": bad}])
        assert str(e.value).startswith("row 0: sustain must") and "\n" not in str(e.value)
    with pytest.raises(WavenetError, match=r"serving sustain must be a number in \[0, 1\)"):
        ServeSettings(sustain=1.0)



def test_serving_settings_travel_with_the_model_and_yield_to_the_environment(model, tmp_path):
    from wavenet.errors import WavenetError
    from wavenet.serving import load, write_settings

    saved = {"max_batch": 8, "max_seconds": 10.0}
    s = ServeSettings.load(saved, {"WAVENET_SERVE_MAX_BATCH": "1", "WAVENET_SERVE_WEIGHTS": "float32"})
    assert (s.max_batch, s.max_seconds, s.weights) == (1, 10.0, "float32")
    with pytest.raises(WavenetError, match=r"^WAVENET_SERVE_THREADS must be a number. Received: 'two'$"):
        ServeSettings.load({}, {"WAVENET_SERVE_THREADS": "two"})
    with pytest.raises(WavenetError, match="serving weights must be one of"):
        ServeSettings.load({}, {"WAVENET_SERVE_WEIGHTS": "int4"})
    # The served model reads them from its data folder, as MLflow hands it over.
    model.save(str(tmp_path / "model.keras"))
    write_settings(str(tmp_path), ServeSettings(max_seconds=0.5))
    served = load(str(tmp_path), environ={"WAVENET_SERVE_THREADS": "1"})
    assert served.settings.max_seconds == 0.5 and served.settings.workers == 1
    with pytest.raises(BadRequest, match="seconds must lie in"):
        served.predict([{"label": "low", "seconds": 1}])


def test_a_prime_is_continued(model):
    served = GenerationModel(model, ServeSettings())
    tone = (0.5 * np.sin(np.arange(8000) * 2 * np.pi * 440 / 8000)).astype(np.float32)
    buf = io.BytesIO()
    sf.write(buf, tone, 8000, format="WAV", subtype="PCM_16")  # another rate: resampled
    prime = base64.b64encode(buf.getvalue()).decode()
    out = served.predict([{"label": "low", "seconds": 0.1, "seed": 1, "prime": prime},
                          {"label": "low", "seconds": 0.1, "seed": 1}])
    assert out["audio"][0] != out["audio"][1]
    assert len(wav(out["audio"][0])[0]) == 1600


# -- MLflow alone ------------------------------------------------------------------------------

FRESH = textwrap.dedent("""
    import base64, importlib.util, io, sys
    # Hide the installed (editable) wavenet: only the model's own code can serve it.
    sys.meta_path[:] = [f for f in sys.meta_path if "editable" not in repr(f) + repr(type(f))]
    assert importlib.util.find_spec("wavenet") is None, "wavenet is still importable"
    import mlflow, mlflow.keras, mlflow.pyfunc, soundfile as sf
    mlflow.set_tracking_uri(sys.argv[1])
    generator = mlflow.pyfunc.load_model("models:/wavenet@champion")
    out = generator.predict({"label": ["high"], "seconds": [0.25], "seed": [3]})  # ints and floats
    audio, rate = sf.read(io.BytesIO(base64.b64decode(out["audio"][0])), dtype="int16")
    net = mlflow.keras.load_model("models:/wavenet@champion")
    print(len(audio), rate, type(net).__name__, ",".join(net.labels), sys.modules["wavenet"].__file__)
""")


def test_the_champion_loads_with_mlflow_alone_in_a_fresh_process(champion_store, tmp_path):
    proc = subprocess.run([sys.executable, "-c", FRESH, champion_store], cwd=tmp_path,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    samples, rate, cls, labels, module = proc.stdout.split(maxsplit=4)
    assert (samples, rate, cls) == ("4000", "16000", "WaveNet")
    assert labels == "low,high"
    assert "/code/wavenet/__init__.py" in module  # imported from the model's artifact


# -- mlflow models serve ------------------------------------------------------------------------

@pytest.fixture(scope="module")
def server(champion_store, tmp_path_factory):
    """`mlflow models serve -m models:/wavenet@champion --env-manager local` on a free port."""
    folder = tmp_path_factory.mktemp("serve")
    port = free_port()
    log = open(folder / "serve.log", "wb")  # noqa: SIM115 - closed at teardown
    bin_dir = os.path.dirname(sys.executable)
    proc = subprocess.Popen(
        [os.path.join(bin_dir, "mlflow"), "models", "serve", "-m", f"models:/{NAME}@champion",
         "--env-manager", "local", "--host", "127.0.0.1", "--port", str(port)],
        cwd=folder, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        env={**os.environ, "MLFLOW_TRACKING_URI": champion_store,
             "PATH": bin_dir + os.pathsep + os.environ.get("PATH", "")})
    url = f"http://127.0.0.1:{port}"
    try:
        tracking_ready = tracking.wait_until_healthy(url, 600, lambda: proc.poll() is None)
        assert tracking_ready, (folder / "serve.log").read_text(errors="replace")[-4000:]
        yield url, proc
    finally:
        stop_process_group(proc, timeout=10)
        log.close()


def post(url: str, body: bytes | str) -> tuple[int, dict]:
    data = body.encode() if isinstance(body, str) else body
    req = urllib.request.Request(url + "/invocations", data=data,
                                 headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=300) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def test_mlflow_models_serve_answers_with_playable_audio(server, tmp_path):
    url, proc = server
    status, answer = post(url, json.dumps({"dataframe_records": [
        {"label": "low", "seconds": 0.5, "temperature": 0.9, "seed": 7},
        {"label": "high", "seconds": 0.25}]}))
    assert status == 200, answer
    rows = answer["predictions"]
    for row, seconds in zip(rows, (0.5, 0.25)):
        path = tmp_path / f"{seconds}.wav"
        path.write_bytes(base64.b64decode(row["audio"]))
        info = sf.info(str(path))
        assert (info.samplerate, info.channels, info.subtype) == (16000, 1, "PCM_16")
        assert info.frames == round(seconds * 16000) and row["sample_rate"] == 16000
        assert np.abs(sf.read(str(path))[0]).max() > 0  # sound, not silence
    # The same request again: the same audio (the seed decides).
    assert post(url, json.dumps({"inputs": {"label": ["low"], "seconds": [0.5], "temperature": [0.9],
                                            "seed": [7]}}))[1]["predictions"][0]["audio"] == rows[0]["audio"]


@pytest.mark.parametrize("body, message", [
    ('{"dataframe_records": [{"label": "jazz", "seconds": 1}]}', "row 0: unknown label 'jazz'"),
    ('{"dataframe_records": [{"label": "low", "seconds": 1e9}]}', "row 0: seconds must lie in"),
    ('{"dataframe_records": [{"label": "low", "seconds": 1, "temperature": -1}]}',
     "row 0: temperature must lie in"),
    ('{"dataframe_records": [{"label": "low"}]}', "row 0: seconds is required"),
    (json.dumps({"dataframe_records": [{"label": "low", "seconds": 0.01}] * 65}),
     "a request holds at most 64 rows"),
    ('{"dataframe_records": [{"label": "low", "seconds": "long"}]}',
     "row 0: seconds must be a number. Received: seconds='long'"),
    ("{not json", "Ensure that input is a valid JSON"),
])
def test_a_bad_request_gets_a_400_and_the_server_stays_up(server, body, message):
    url, proc = server
    status, answer = post(url, body)
    assert status == 400 and message in answer["message"], answer
    if message.startswith("row") or message.startswith("a request"):
        assert "\n" not in answer["message"]  # ours: one line
    assert proc.poll() is None
    assert post(url, '{"dataframe_records": [{"label": "low", "seconds": 0.01}]}')[0] == 200


def test_concurrent_listeners_are_served_together(server):
    url, proc = server
    barrier = threading.Barrier(6)

    def listen(i):
        barrier.wait()
        return post(url, json.dumps({"dataframe_records": [{"label": "low", "seconds": 0.2, "seed": i}]}))

    with ThreadPoolExecutor(6) as pool:
        answers = list(pool.map(listen, range(6)))
    assert [s for s, _ in answers] == [200] * 6
    audio = {a["predictions"][0]["audio"] for _, a in answers}
    assert len(audio) == 6  # six seeds, six clips


# -- the CPU image, as the cluster runs it (k8s/serving.yaml) ------------------------------------

@pytest.mark.slow
def test_the_cpu_image_serves_the_champion_non_root_on_a_read_only_root(engine, cpu_image, model,
                                                                      mlflow_server):
    from devtools.containers import step_run_args

    name = "wavenet-in-a-container"
    tracking.use_tracking_uri(mlflow_server.uri)
    with mlflow.start_run(experiment_id=mlflow.create_experiment(name)):
        logged = tracking.log_model(model)
    registry.set_champion(name, registry.register(logged, name, tracking_uri=mlflow_server.uri).version,
                          mlflow_server.uri)
    port = free_port()
    c = engine.containers.run(cpu_image, ["mlflow", "models", "serve", "-m", f"models:/{name}@champion",
                                          "--env-manager", "local", "--host", "127.0.0.1", "--port", str(port)],
                              detach=True, **step_run_args({"MLFLOW_TRACKING_URI": mlflow_server.uri}))
    try:
        def alive():
            c.reload()
            return c.status in ("created", "running")

        assert tracking.wait_until_healthy(f"http://127.0.0.1:{port}", 600, alive), c.logs().decode()[-3000:]
        status, answer = post(f"http://127.0.0.1:{port}", json.dumps(
            {"dataframe_records": [{"label": "high", "seconds": 0.5, "seed": 1}]}))
        assert status == 200, answer
        audio, rate = wav(answer["predictions"][0]["audio"])
        assert rate == 16000 and len(audio) == 8000 and np.abs(audio).max() > 0
    finally:
        c.remove(force=True)
