"""The champion, served: an MLflow ``python_function`` model that answers requests with music.

Every model the project logs (:func:`wavenet.edges.tracking.log_model`) is one MLflow model with two
flavors: ``keras`` (the trained network, ``mlflow.keras.load_model``) and ``python_function``,
whose loader is this module (``loader_module="wavenet.serving"``). The model carries this
package as its ``code`` (MLflow puts it first on ``sys.path`` before importing the loader,
mlflow/utils/model_utils.py ``_add_code_from_conf_to_system_path``), so
``mlflow.pyfunc.load_model`` and ``mlflow models serve`` need MLflow and the libraries, not an
installed ``wavenet``.

A request is a table, one row per clip:

========== ======== ==========================================================================
column      type     meaning
========== ======== ==========================================================================
label       string   the model's label name (its vocabulary); absent for an unconditioned model
seconds     double   clip length, in (0, ``max_seconds``]
temperature double   softmax temperature in [``min_temperature``, ``max_temperature``]; 1.0
seed        long     the clip's random seed, an integer in [0, 2**53); the same seed, the same clip
sustain     double   for a model that plays a score: lambda in [0, 1) of the delay line that
                     sustains its lone pitched notes (``generate.sustain``,
                     :mod:`wavenet.generation.sustain`); default ``ServeSettings.sustain``
prime       string   optional base64 audio file (WAV, FLAC, OGG) to continue from
score       string   base64 standard MIDI file the clip plays from its first note: required by
                     (and only for) a model that plays a score (``model.score_channels > 0``)
========== ======== ==========================================================================

The answer has one row per request row: ``audio`` (a base64 16-bit PCM mono WAV file: JSON
carries text only, and MLflow's scoring server turns a DataFrame into JSON records),
``sample_rate`` and ``seconds``.

Concurrent requests are generated together: :class:`StreamBatcher` collects the rows that
arrive within ``max_wait_ms`` of each other (up to ``max_batch``) and runs them as one batch
of streams of the fast generator; each stream uses its own seed, so a clip does not depend on
what it was batched with.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import io
import json
import math
import os
import queue
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from wavenet.errors import DataError, WavenetError

__all__ = ["ServeSettings", "SETTINGS_FILE", "BadRequest", "ServerBusy", "Clip", "StreamBatcher",
           "GenerationModel", "INPUT_COLUMNS", "OUTPUT_COLUMNS", "input_example", "write_settings"]

SETTINGS_FILE = "serving.json"
INPUT_COLUMNS = ("label", "seconds", "temperature", "seed", "prime", "score", "sustain")

OUTPUT_COLUMNS = ("audio", "sample_rate", "seconds")


class BadRequest(WavenetError, ValueError):
    """A request row the model cannot answer (the scoring server's 400)."""


class ServerBusy(WavenetError):
    """Too many clips waiting: come back later (the scoring server's 503)."""


@dataclass(frozen=True)
class ServeSettings:
    """Bounds and batching of the served model; saved with it, overridable where it is served.

    Defaults: a clip of 30 s is what a listener asks for in an app. On a CPU the int8 kernel
    makes about as many samples per second per core at 1 to 4 streams as at one, and fewer
    beyond (demo preset, one core: 47.6k, 47.5k, 44.2k, 38.6k, 23.8k, 15.0k samples/s at 1, 2,
    4, 8, 16, 32 streams; docs/serving.md): batches of 4, and one batch per core
    at a time (the kernel releases the GIL), so more listeners use more cores. A 50 ms window
    to gather concurrent requests costs a first listener little against seconds of generation.
    """

    weights: str = "int8"
    max_seconds: float = 30.0
    min_temperature: float = 0.05
    max_temperature: float = 5.0
    max_prime_seconds: float = 30.0
    # A row's sustain when it gives none (0: plain sampling; the demo preset generates with 0.9).
    sustain: float = 0.0
    max_rows: int = 64          # rows in one request
    max_batch: int = 4          # streams generated together
    max_wait_ms: float = 50.0   # how long a batch waits for more requests after its first
    max_queue: int = 256        # rows waiting; beyond it requests are refused (busy)
    threads: int = 0            # batches generated at once; 0: one per CPU this process may use

    # WAVENET_SERVE_<FIELD> in the serving process overrides a field (k8s/serving.yaml).
    ENV_PREFIX = "WAVENET_SERVE_"

    def __post_init__(self) -> None:
        from wavenet.generation.fast import WEIGHT_PRECISIONS

        if self.weights not in WEIGHT_PRECISIONS:
            raise WavenetError(f"serving weights must be one of {', '.join(WEIGHT_PRECISIONS)}. "
                               f"Received: weights={self.weights!r}")
        for f in ("max_seconds", "min_temperature", "max_temperature", "max_prime_seconds",
                  "max_rows", "max_batch", "max_queue"):
            value = getattr(self, f)
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
                raise WavenetError(f"serving {f} must be a positive number. Received: {f}={value!r}")
        if not (isinstance(self.sustain, (int, float)) and 0 <= self.sustain < 1):
            raise WavenetError(f"serving sustain must be a number in [0, 1). Received: sustain={self.sustain!r}")
        if self.max_wait_ms < 0 or self.threads < 0:
            raise WavenetError(f"serving max_wait_ms and threads must be >= 0. Received: "
                               f"max_wait_ms={self.max_wait_ms!r}, threads={self.threads!r}")

    @property
    def workers(self) -> int:
        """Batches generated at once: ``threads``, or one per CPU this process may run on."""
        return self.threads or len(os.sched_getaffinity(0))

    @classmethod
    def load(cls, values: Mapping[str, Any], environ: Mapping[str, str]) -> ServeSettings:
        """Settings from the saved ``values``, each overridden by ``WAVENET_SERVE_<FIELD>``."""
        out: dict[str, Any] = {}
        for f in dataclasses.fields(cls):
            raw = environ.get(cls.ENV_PREFIX + f.name.upper())
            value = values.get(f.name, f.default)
            if raw is not None:
                try:
                    value = raw if f.type == "str" else type(f.default)(float(raw))
                except ValueError:
                    raise WavenetError(f"{cls.ENV_PREFIX}{f.name.upper()} must be a number. "
                                       f"Received: {raw!r}") from None
            out[f.name] = value
        return cls(**out)


def write_settings(folder: str, settings: ServeSettings | None = None) -> str:
    """Write ``serving.json`` (the model's serving settings) into ``folder``; returns its path."""
    path = os.path.join(folder, SETTINGS_FILE)
    with open(path, "w") as f:
        json.dump(dataclasses.asdict(settings or ServeSettings()), f, indent=1)
    return path


def input_example(model) -> dict[str, list[Any]]:
    """A one-row request (the logged model's input example): one second of the first label
    (label id 0 by number for a conditioned model saved without a vocabulary)."""
    row: dict[str, list[Any]] = {"seconds": [1.0], "temperature": [1.0], "seed": [0]}
    if model.config.conditioned:
        row = {"label": [model.labels[0] if model.labels else "0"], **row}
    if model.config.scored:  # middle C for half a second
        from wavenet.data.notes import Score, midi_bytes

        sr = model.audio_config.sample_rate
        tune = midi_bytes(Score.from_notes([(0, sr // 2, 60, False)]), sr)
        row["score"] = [base64.b64encode(tune).decode("ascii")]
    return row


# -- one request row ------------------------------------------------------------------------

@dataclass
class Clip:
    """One row to generate: a stream of the batch, and where its answer goes."""

    label: int | None
    samples: int
    temperature: float
    seed: int
    prime: np.ndarray | None  # (P,) int32 codes, the last receptive_field of the prime
    score: Any = None  # the wavenet.data.notes.Score it plays (a model that plays one)
    sustain: float = 0.0
    done: threading.Event = dataclasses.field(default_factory=threading.Event)
    codes: np.ndarray | None = None
    error: BaseException | None = None

    @property
    def key(self) -> tuple[float, int, float]:
        """Clips with one key run in one batch (the kernel takes one temperature, prime length
        and sustain)."""
        return self.temperature, 0 if self.prime is None else len(self.prime), self.sustain


def _missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def _number(row: Mapping[str, Any], field: str, default: Any, low: float, high: float, i: int) -> float:
    value = row.get(field)
    if _missing(value):
        if default is None:
            raise BadRequest(f"row {i}: {field} is required")
        return default
    if isinstance(value, (bool, str)) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise BadRequest(f"row {i}: {field} must be a number. Received: {field}={value!r}")
    if not (math.isfinite(value) and low <= value <= high):
        raise BadRequest(f"row {i}: {field} must lie in [{low:g}, {high:g}]. Received: {field}={value!r}")
    return float(value)


class _Rows:
    """Turns request rows into :class:`Clip` s for one model, or says in one line what is wrong."""

    def __init__(self, model, settings: ServeSettings):
        self.settings = settings
        self.sample_rate = model.audio_config.sample_rate
        self.quantization_channels = model.config.quantization_channels
        self.receptive_field = model.config.receptive_field
        self.conditioned = model.config.conditioned
        self.scored = model.config.scored
        names = model.labels if model.labels is not None else \
            tuple(str(i) for i in range(model.config.num_classes))
        self.label_ids = {name: i for i, name in enumerate(names)}

    def clip(self, row: Mapping[str, Any], i: int) -> Clip:
        s = self.settings
        unknown = sorted(set(row) - set(INPUT_COLUMNS))
        if unknown:
            raise BadRequest(f"row {i}: unknown field {unknown[0]!r} (fields: {', '.join(INPUT_COLUMNS)})")
        seconds = _number(row, "seconds", None, 1.0 / self.sample_rate, s.max_seconds, i)
        temperature = _number(row, "temperature", 1.0, s.min_temperature, s.max_temperature, i)
        seed = row.get("seed")
        seed = 0 if _missing(seed) else seed
        if isinstance(seed, float) and seed.is_integer():
            seed = int(seed)
        # Below 2**53: JSON numbers may arrive as doubles.
        if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or not 0 <= seed < 2**53:
            raise BadRequest(f"row {i}: seed must be an integer in [0, 2**53). Received: seed={seed!r}")
        samples = round(seconds * self.sample_rate)
        sustain = _number(row, "sustain", s.sustain, 0.0, 1.0, i)
        if sustain >= 1.0:
            raise BadRequest(f"row {i}: sustain must lie in [0, 1). Received: sustain={sustain!r}")
        return Clip(label=self._label(row.get("label"), i), samples=samples,
                    temperature=temperature, seed=int(seed), prime=self._prime(row.get("prime"), i),
                    score=self._score(row.get("score"), i, samples),
                    sustain=sustain if self.scored else 0.0)

    def _score(self, score: Any, i: int, samples: int):
        """The row's score as a :class:`wavenet.data.notes.Score` from its first note, cut to the clip."""
        given = not (_missing(score) or score == "")
        if given != self.scored:
            raise BadRequest(f"row {i}: this model plays a score: give score, a base64 MIDI file"
                             if self.scored else f"row {i}: this model plays no score: give no score")
        if not given:
            return None
        from wavenet.data.notes import MAX_MIDI_BYTES, read_midi

        try:
            data = base64.b64decode(str(score), validate=True)
        except (binascii.Error, ValueError):
            raise BadRequest(f"row {i}: score must be a MIDI file in base64. "
                             f"Received: {str(score)[:16]!r}...") from None
        if len(data) > MAX_MIDI_BYTES:
            raise BadRequest(f"row {i}: score must be at most {MAX_MIDI_BYTES >> 20} MiB. "
                             f"Received: {len(data)} bytes")
        try:
            notes = read_midi(data, self.sample_rate, f"row {i}: score")
        except DataError as e:
            raise BadRequest(str(e)) from None
        if not len(notes):
            raise BadRequest(f"row {i}: score has no notes to play")
        return notes.from_first_note(samples)

    def _label(self, label: Any, i: int) -> int | None:
        if not self.conditioned:
            if not _missing(label) and label != "":
                raise BadRequest(f"row {i}: this model is not conditioned: give no label. "
                                 f"Received: label={label!r}")
            return None
        if _missing(label) or str(label) not in self.label_ids:
            raise BadRequest(f"row {i}: unknown label {label!r} (labels: {', '.join(self.label_ids)})")
        return self.label_ids[str(label)]

    def _prime(self, prime: Any, i: int) -> np.ndarray | None:
        if _missing(prime) or prime == "":
            return None
        import soundfile as sf

        from wavenet.data.audio import mu_law_encode, resample, to_mono

        try:
            data, rate = sf.read(io.BytesIO(base64.b64decode(str(prime), validate=True)),
                                 dtype="float32", always_2d=True)
        except (binascii.Error, ValueError, RuntimeError, sf.LibsndfileError):
            raise BadRequest(f"row {i}: prime must be an audio file (WAV, FLAC, OGG) in base64. "
                             f"Received: {str(prime)[:16]!r}...") from None
        if len(data) == 0 or len(data) > self.settings.max_prime_seconds * rate:
            raise BadRequest(f"row {i}: prime must hold (0, {self.settings.max_prime_seconds:g}] s "
                             f"of audio. Received: {len(data) / rate:g} s")
        audio = resample(to_mono(data), rate, self.sample_rate)
        # Only the last receptive field of the prime reaches the first new sample: primes cut
        # to it batch together whatever their length.
        return mu_law_encode(audio, self.quantization_channels)[-self.receptive_field:].astype(np.int32)


# -- batching across listeners ---------------------------------------------------------------

class StreamBatcher:
    """Generates the clips of concurrent requests together, as one batch of streams.

    Each of ``settings.workers`` threads takes the first waiting clip, then whatever else
    arrives within ``max_wait_ms`` (up to ``max_batch`` clips), and runs them as one batch of
    the fast generator (clips of another temperature or prime length run in a batch of their
    own, right after); the kernel releases the GIL, so the threads use as many cores. The
    queue holds at most ``max_queue`` clips: a request that would overflow it is refused at
    once (:class:`ServerBusy`) rather than waiting without bound.

    Args:
        model: the :class:`wavenet.model.WaveNet` to sample.
        settings: bounds and batching.
    """

    def __init__(self, model, settings: ServeSettings):
        self.model = model
        self.settings = settings
        self._queue: queue.Queue[Clip] = queue.Queue()
        self._waiting = threading.BoundedSemaphore(settings.max_queue)
        self._generators: dict[int, Any] = {}
        self._lock = threading.Lock()  # the generators and the counts below
        self._collecting = threading.Lock()  # one thread gathers a batch at a time
        self.batches = 0
        self.streams = 0
        for i in range(settings.workers):
            threading.Thread(target=self._loop, name=f"wavenet-batcher-{i}", daemon=True).start()

    def generate(self, clips: Sequence[Clip], timeout: float | None = None) -> list[np.ndarray]:
        """Queue ``clips`` and wait for their codes ((samples,) uint8 each)."""
        taken = 0
        try:
            for _ in clips:
                if not self._waiting.acquire(blocking=False):
                    raise ServerBusy(f"server busy: {self.settings.max_queue} clips are waiting; "
                                     "retry later")
                taken += 1
        except ServerBusy:
            for _ in range(taken):
                self._waiting.release()
            raise
        for clip in clips:
            self._queue.put(clip)
        for clip in clips:
            if not clip.done.wait(timeout):
                raise ServerBusy(f"generation took longer than {timeout:g} s")
        for clip in clips:
            if clip.error is not None:
                raise clip.error
        return [clip.codes for clip in clips]

    def _collect(self) -> list[Clip]:
        # Whole batches: two threads gathering at once would split a burst into halves.
        with self._collecting:
            batch = [self._queue.get()]
            deadline = time.monotonic() + self.settings.max_wait_ms / 1000.0
            while len(batch) < self.settings.max_batch:
                try:
                    batch.append(self._queue.get(timeout=max(0.0, deadline - time.monotonic())))
                except queue.Empty:
                    break
        return batch

    def _loop(self) -> None:
        while True:
            batch = self._collect()
            groups: dict[tuple[float, int], list[Clip]] = {}
            for clip in batch:
                groups.setdefault(clip.key, []).append(clip)
            for group in groups.values():
                try:
                    self._run(group)
                except Exception as e:  # noqa: BLE001 - the requests fail, the server stays up
                    for clip in group:
                        clip.error = e
                finally:
                    for clip in group:
                        self._waiting.release()
                        clip.done.set()

    def _generator(self, streams: int):
        """The fast generator for ``streams`` streams, rounded up to a power of two (at most
        log2(max_batch) + 1 generators, each built once)."""
        from wavenet.generation.fast import FastGenerator

        size = 1 << (streams - 1).bit_length()
        with self._lock:  # a generator's weights are read-only; each call has its own state
            if size not in self._generators:
                self._generators[size] = FastGenerator(self.model, batch_size=size,
                                                       weights=self.settings.weights)
            return self._generators[size]

    def _run(self, group: list[Clip]) -> None:
        gen = self._generator(len(group))
        pad = gen.batch_size - len(group)  # idle streams: seed 0, label 0, thrown away
        labels = None
        if self.model.config.conditioned:
            labels = np.array([c.label for c in group] + [0] * pad, np.int64)
        prime = None
        if group[0].prime is not None:
            prime = np.stack([c.prime for c in group] + [group[0].prime] * pad)
        notes = None
        if self.model.config.scored:
            from wavenet.data.notes import Score, pack_scores

            notes = pack_scores([c.score for c in group] + [Score.from_notes([])] * pad)
        codes = gen.generate(max(c.samples for c in group), prime=prime, labels=labels, notes=notes,
                             temperature=group[0].temperature, sustain=group[0].sustain,
                             seed=[c.seed for c in group] + [0] * pad)
        for b, clip in enumerate(group):
            clip.codes = codes[b, :clip.samples]
        with self._lock:
            self.batches += 1
            self.streams += len(group)


# -- the python_function model ---------------------------------------------------------------

def _records(model_input: Any) -> list[dict[str, Any]]:
    """Request rows as dicts, from what ``PyFuncModel.predict`` hands over (a DataFrame after
    MLflow's schema enforcement; a dict of columns or list of rows when called directly)."""
    if hasattr(model_input, "to_dict"):
        return [{k: v for k, v in r.items()} for r in model_input.to_dict(orient="records")]
    if isinstance(model_input, Mapping):
        columns = {k: (v if isinstance(v, (list, tuple, np.ndarray)) else [v]) for k, v in model_input.items()}
        n = max((len(v) for v in columns.values()), default=0)
        return [{k: v[i] for k, v in columns.items() if i < len(v)} for i in range(n)]
    if isinstance(model_input, (list, tuple)) and all(isinstance(r, Mapping) for r in model_input):
        return [dict(r) for r in model_input]
    raise BadRequest(f"a request is a table of rows with fields {', '.join(INPUT_COLUMNS)}. "
                     f"Received: {type(model_input).__name__}")


class GenerationModel:
    """What ``mlflow.pyfunc.load_model`` returns the model as: ``predict(rows) -> WAVs``.

    Args:
        model: the trained :class:`wavenet.model.WaveNet`.
        settings: bounds and batching.
    """

    def __init__(self, model, settings: ServeSettings):
        self.model = model
        self.settings = settings
        self._rows = _Rows(model, settings)
        self.batcher = StreamBatcher(model, settings)

    def predict(self, model_input: Any, params: Mapping[str, Any] | None = None):
        """Generate one clip per request row.

        Args:
            model_input: rows with ``label``, ``seconds``, ``temperature``, ``seed`` and
                optionally ``prime`` (module docstring): a pandas DataFrame, a dict of
                columns or a list of dicts.
            params: unused (MLflow passes the request's params).

        Returns:
            A pandas DataFrame: ``audio`` (base64 16-bit PCM WAV), ``sample_rate``, ``seconds``.

        Raises:
            BadRequest: a row out of bounds, or the server busy (one line naming the row and field).
        """
        import pandas as pd

        from wavenet.data.audio import mu_law_decode
        from wavenet.generation.report import wav_bytes

        rows = _records(model_input)
        if not rows:
            raise BadRequest("the request has no rows")
        if len(rows) > self.settings.max_rows:
            raise BadRequest(f"a request holds at most {self.settings.max_rows} rows. "
                             f"Received: {len(rows)} rows")
        clips = [self._rows.clip(row, i) for i, row in enumerate(rows)]
        rate, q = self._rows.sample_rate, self._rows.quantization_channels
        audio = [base64.b64encode(wav_bytes(mu_law_decode(c, q), rate)).decode("ascii")
                 for c in self.batcher.generate(clips)]
        return pd.DataFrame({"audio": audio, "sample_rate": [rate] * len(clips),
                             "seconds": [c.samples / rate for c in clips]})


def load(data_path: str, environ: Mapping[str, str] | None = None) -> GenerationModel:
    """The served model from its MLflow ``data`` folder: the ``.keras`` file and ``serving.json``."""
    from wavenet.model import load_model

    files = sorted(os.path.join(d, f) for d, _, fs in os.walk(data_path) for f in fs if f.endswith(".keras"))
    if not files:
        raise WavenetError(f"no .keras file under {data_path}: not a WaveNet MLflow model")
    saved: dict[str, Any] = {}
    settings_path = os.path.join(data_path, SETTINGS_FILE)
    if os.path.exists(settings_path):
        with open(settings_path) as f:
            saved = json.load(f)
    settings = ServeSettings.load(saved, os.environ if environ is None else environ)
    return GenerationModel(load_model(files[0]), settings)


def _load_pyfunc(data_path: str) -> Any:
    """MLflow's loader-module entry point (``mlflow.pyfunc.load_model`` calls it with the
    flavor's ``data`` folder, mlflow/pyfunc/__init__.py ``load_model``); wraps bad requests in
    the exception MLflow's scoring server answers 400 to."""
    from wavenet.edges.tracking import served_model

    return served_model(load(data_path), BadRequest, ServerBusy)
