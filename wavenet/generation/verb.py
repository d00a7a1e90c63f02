"""The generate verb: sample clips, write WAVs and spectrograms, and a listening report.

``generate_samples`` draws ``generate.num_clips`` clips of ``generate.seconds``
with the cached :class:`wavenet.generation.fast.FastGenerator` (all clips in one
batch), optionally primed with validation audio, one label per clip for a
conditioned model. Each clip is measured with :mod:`wavenet.generation.quality`, with
data against the range training audio of its label spans; WAVs
(16-bit PCM), spectrogram PNGs, ``report.html`` and ``samples.json`` go to
the output folder and, as artifacts, to an MLflow run.

The result of :func:`generate_samples` (also ``samples.json``): ``{"model",
"data", "out_dir", "report" (path of report.html), "summary" (path of
samples.json), "sample_rate", "num_samples" (per clip), "prime_samples",
"temperature", "seed", "weights" (the generator's weight precision),
"samples_per_second" (all clips together, generation alone),
"generation_seconds", "wall_seconds" (set-up of the generator included),
"clips": [{"index", "name", "label", "label_id", "wav", "png", "metrics",
"checks" (calibrated: value, range, passed), "reference" (the label whose
audio calibrated them, or "all labels"), "warnings", "score" (for a model that plays
a score: {"source", "notes", "mid"}, the notes it played, also written as MIDI beside
the clip; else None)}], "warnings" (every
clip's, prefixed with the clip name), "reference" ({label: calibration}: the
ranges, percentiles, tolerances and how much audio), "thresholds" (of the
checks that need no data), "title" (the training run's name and the
registered version), "model_info" ({"run_id", "run_name", "registered_model",
"registered_version", "champion"}), "evaluation" (bits/sample, baselines and
the gate decision, or None), "reference_clips" ([{"label", "label_id",
"seconds", "source", "wav", "png"}]: validation audio, one clip per label),
"model_labels" (the model's vocabulary; None: saved without one),
"labels_not_generated" (data labels the model was never trained on: no
clips), "checks_passed" (:func:`checks_passed`: the fractions logged to
MLflow, also on the model's training run when it trained on this data),
"run_id"}``. Clip labels go to the model by name (:func:`clip_labels`);
``label_id`` is the data's id.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np
import tensorflow as tf
from tqdm.auto import tqdm

from wavenet.config import ExperimentConfig, GenerateConfig
from wavenet.context import RunContext
from wavenet.data import labels as vocab
from wavenet.data.audio import mu_law_decode
from wavenet.data.dataset import local_shard_paths, parse_example
from wavenet.data.manifest import read_manifest
from wavenet.data.notes import MAX_MIDI_BYTES, Score, midi_bytes, pack_scores, read_midi
from wavenet.edges import registry, storage, tracking
from wavenet.errors import ConfigError, DataError, one_line
from wavenet.generation.fast import FastGenerator
from wavenet.generation.quality import absolute_thresholds, analyze, calibrate
from wavenet.generation.report import render_html, spectrogram_png, wav_bytes
from wavenet.memory import check_fits
from wavenet.model import WaveNet

__all__ = ["REPORT_FILE", "SUMMARY_FILE", "ClipLabels", "clip_labels", "read_examples", "read_validation_codes",
           "prime_codes", "calibrate_labels", "clip_calibrations", "checks_passed", "generate_samples"]

REPORT_FILE = "report.html"
SUMMARY_FILE = "samples.json"


class ClipLabels(NamedTuple):
    """The label of each clip: the id the model is conditioned on, the data's id, the name."""

    model_ids: np.ndarray | None  # (num_clips,) int32; None for an unconditioned model
    data_ids: np.ndarray | None  # (num_clips,) the data's ids (the model's when there is no data)
    names: list[str | None]
    not_generated: list[str]  # data labels the model was never trained on


def clip_labels(num_clips: int, num_classes: int, vocabulary: list[str] | None = None,
                model_labels: list[str] | tuple[str, ...] | None = None,
                who: str = "the model") -> ClipLabels:
    """Label ids and names per clip, matched by name between the data and the model.

    Args:
        num_clips: clips to label.
        num_classes: the model's ``num_classes`` (0: unconditioned, no labels).
        vocabulary: the data's labels (id order), or None without data: the clips
            then cycle through the model's classes, named from ``model_labels``
            (else the id as text).
        model_labels: the model's vocabulary (``WaveNet.labels``; None: unknown,
            its ids are then taken to be the data's).
        who: the model, as errors name it.

    With data, the clips cycle through the data's labels that the model was
    trained on, each given the model's own id for that name; the others are
    listed in ``not_generated``.

    Raises:
        DataError: the model was trained on none of the data's labels.
    """
    if num_classes == 0:
        return ClipLabels(None, None, [None] * num_clips, [])
    if vocabulary is None:
        ids = np.arange(num_clips, dtype=np.int32) % (len(model_labels) if model_labels else num_classes)
        names = [model_labels[i] if model_labels else str(i) for i in ids.tolist()]
        return ClipLabels(ids, ids, names, [])
    to_model = vocab.model_ids(vocabulary, model_labels, num_classes, who, allow_missing=True)
    known = np.flatnonzero(to_model != vocab.MISSING)
    if not known.size:
        raise DataError(f"{who} was trained on none of the data's labels ({', '.join(vocabulary)}; "
                        f"its labels: {vocab.describe(model_labels)})")
    data_ids = known[np.arange(num_clips) % known.size].astype(np.int32)
    return ClipLabels(to_model[data_ids].astype(np.int32), data_ids,
                      [str(vocabulary[i]) for i in data_ids.tolist()],
                      vocab.missing_labels(vocabulary, to_model))


def read_examples(data_dir: str, split: str, max_samples_per_label: int | None = None
                  ) -> list[tuple[np.ndarray, int]]:
    """Examples ``(codes uint8, label)`` of ``split`` in shard order, up to a number of codes per label.

    Reading stops once every label of the manifest has ``max_samples_per_label``
    codes (an example that crosses the limit is kept whole).
    """
    files = local_shard_paths(data_dir, split)
    if not files:
        raise DataError(f"{data_dir} has no {split} shards with examples")
    wanted = max(1, len(read_manifest(data_dir).labels))
    out, totals = [], {}
    try:
        for codes, label, _ in tf.data.TFRecordDataset(files).map(parse_example).as_numpy_iterator():
            label = int(label)
            if max_samples_per_label is not None and totals.get(label, 0) >= max_samples_per_label:
                if len(totals) >= wanted and min(totals.values()) >= max_samples_per_label:
                    break
                continue
            out.append((codes.astype(np.uint8), label))
            totals[label] = totals.get(label, 0) + len(codes)
    except tf.errors.OpError as e:
        raise DataError(f"cannot read {split} shards of {data_dir}: "
                        f"{one_line(e, with_type=False)}") from None
    return out


def read_validation_codes(data_dir: str, max_samples_per_label: int | None = None
                          ) -> list[tuple[np.ndarray, int]]:
    """Validation examples ``(codes uint8, label)`` (see :func:`read_examples`)."""
    return read_examples(data_dir, "validation", max_samples_per_label)


class ClipScores(NamedTuple):
    """What each clip of a model that plays a score plays."""

    notes: np.ndarray  # (num_clips, E, 3) pack_scores rows, in samples from the first new one
    scores: list[Score]  # per clip, the notes of the generated samples alone (written as MIDI)
    prime: np.ndarray | None  # (num_clips, P) the codes that led to the score's first sample
    sources: list[str]  # per clip, where its score came from


def read_scored_examples(data_dir: str, split: str, length: int, wanted: list[int] | None, per_label: int
                         ) -> dict[int, list[tuple[np.ndarray, np.ndarray, str]]]:
    """Examples of ``split`` with a score and at least ``length`` codes, in shard order.

    Returns:
        ``{label: [(codes uint8, notes (N, 3), track id)]}``, up to ``per_label`` for each
        ``wanted`` label; ``wanted`` None: examples of any label, under the key -1.
    """
    files = local_shard_paths(data_dir, split)
    out: dict[int, list] = {-1: []} if wanted is None else {label: [] for label in wanted}

    def with_track(record):
        track = tf.io.parse_single_example(record, {"track": tf.io.FixedLenFeature([], tf.string)})
        return (*parse_example(record), track["track"])

    try:
        for codes, label, notes, track in tf.data.TFRecordDataset(files).map(with_track).as_numpy_iterator():
            pool = out.get(-1 if wanted is None else int(label))
            if pool is not None and len(pool) < per_label and len(notes) and len(codes) >= length:
                pool.append((codes.astype(np.uint8), notes, track.decode()))
            if all(len(v) >= per_label for v in out.values()):
                break
    except tf.errors.OpError as e:
        raise DataError(f"cannot read {split} shards of {data_dir}: "
                        f"{one_line(e, with_type=False)}") from None
    return out


def _score_of(rows: np.ndarray, offset: int, length: int) -> Score:
    """``(start, end, token)`` rows moved by ``-offset`` and cut to those heard in ``[-offset, length)``
    (a note may begin before 0, in the prime)."""
    moved = np.asarray(rows, np.int64) - np.array([offset, offset, 0])
    return Score.from_rows(moved[(moved[:, 1] > -offset) & (moved[:, 0] < length)])


def clip_scores(net: WaveNet, g: GenerateConfig, data_dir: str | None, num_samples: int, prime_len: int,
                label_ids: np.ndarray | None, vocabulary: list[str] | None) -> ClipScores:
    """The score of every clip: ``generate.score`` for all, else an example of the clip's label
    each (different examples while there are), primed with its own first codes.

    The examples are validation audio, or training audio for a label whose validation examples
    are all shorter than a clip (a held-out tail is often a few seconds).

    Raises:
        ConfigError: neither a score file nor a data folder.
        DataError: the score file is unreadable, too large or silent, or a label has no
            scored example of ``prime + clip`` codes.
    """
    sr, n = net.audio_config.sample_rate, g.num_clips
    if g.score:
        if not storage.exists(g.score):  # an outage raises StorageUnavailable (retryable) instead
            raise DataError(f"generate.score: no such file: {g.score}")
        try:
            data = storage.read_bytes(g.score, limit=MAX_MIDI_BYTES)
        except OSError as e:
            raise DataError(f"generate.score: cannot read {g.score}: {e.strerror or e}") from None
        if len(data) > MAX_MIDI_BYTES:
            raise DataError(f"generate.score: {g.score} is larger than {MAX_MIDI_BYTES >> 20} MiB: "
                            "not a score")
        score = read_midi(data, sr, g.score)
        if not len(score):
            raise DataError(f"{g.score}: the MIDI file has no notes to play")
        played = score.from_first_note(num_samples)
        return ClipScores(pack_scores([played] * n), [played] * n, None, [g.score] * n)
    if not data_dir:
        raise ConfigError("this model plays a score: pass the data folder (--data; each clip plays a "
                          "validation track's score) or a MIDI file (--score FILE.mid, generate.score)")
    length = prime_len + num_samples
    wanted = None if label_ids is None else sorted(set(label_ids.tolist()))
    manifest = read_manifest(data_dir)

    def name(key: int) -> str:
        return "any label" if key < 0 else (vocabulary[key] if vocabulary and key < len(vocabulary)
                                             else str(key))

    have = {t.label for t in manifest.files if t.score}
    for key in wanted or []:  # before reading any shard
        if name(key) not in have:
            raise DataError(f"{data_dir}: no track of {name(key)} has a score to play: pass --score FILE.mid")
    found = read_scored_examples(data_dir, "validation", length, wanted, n)
    short = [k for k, pool in found.items() if not pool]
    if short:
        found.update({k: v for k, v in read_scored_examples(
            data_dir, "train", length, None if label_ids is None else short, n).items()
                      if k in short})
    split_of = {k: "training" if k in short else "validation" for k in found}
    tracks = {t.sha256: t.relpath for t in manifest.files}
    rows, scores, prime, sources = [], [], [], []
    used: dict[int, int] = {}
    for i in range(n):
        key = -1 if label_ids is None else int(label_ids[i])
        pool = found[key]
        if not pool:
            raise DataError(f"{data_dir}: no example of {name(key)} has a score and the "
                            f"{length} codes a clip needs (generate.prime_seconds + generate.seconds): "
                            "generate shorter clips or pass --score FILE.mid")
        codes, notes, track = pool[used.get(key, 0) % len(pool)]
        used[key] = used.get(key, 0) + 1
        heard = _score_of(notes, prime_len, num_samples)
        rows.append(heard)
        scores.append(heard.shifted(0, num_samples))
        prime.append(codes[:prime_len])
        sources.append(f"{split_of[key]} example of {tracks.get(track, track[:12])}")
    return ClipScores(pack_scores(rows), scores, np.stack(prime).astype(np.int32) if prime_len else None,
                      sources)


def prime_codes(examples: list[tuple[np.ndarray, int]], length: int,
                labels: np.ndarray | None, num_clips: int) -> np.ndarray:
    """(num_clips, length) priming codes: the start of validation examples, same label when possible.

    Clip i takes the i-th long-enough example of its label (cycling), or of
    any label when none of its own is long enough.
    """
    long_enough = [(c, lab) for c, lab in examples if len(c) >= length]
    if not long_enough:
        raise DataError(f"no validation example has the {length} codes that generate.prime_seconds "
                        f"asks for")
    rows, used = [], {}
    for i in range(num_clips):
        key = None if labels is None else int(labels[i])
        pool = [e for e in long_enough if e[1] == key] if key is not None else long_enough
        pool = pool or long_enough
        k = used.get(key, 0)
        used[key] = k + 1
        rows.append(pool[k % len(pool)][0][:length])
    return np.stack(rows).astype(np.int32)


def calibrate_labels(examples: list[tuple[np.ndarray, int]], sample_rate: int, quantization_channels: int,
                     window: int, max_windows: int, names: list[str] | None = None,
                     wanted: list[int | None] | None = None) -> dict[int | None, dict[str, Any]]:
    """Sanity-check ranges per label (:func:`wavenet.generation.quality.calibrate`) from decoded examples.

    Args:
        examples: ``(codes, label)`` pairs (training examples).
        sample_rate, quantization_channels: of the codes.
        window: the length of the clips to be checked (samples).
        max_windows: windows per label, spread over its examples.
        names: label names by id (shown in warnings).
        wanted: the label ids to calibrate (None in the list: every label's
            examples together); default every label and None.

    Returns:
        ``{label_id: calibration}`` for the wanted labels that have examples,
        and ``None`` (every label together) when it is wanted or a wanted
        label has no examples.
    """
    names = names or []
    by_label: dict[int, list[np.ndarray]] = {}
    for codes, label in examples:
        by_label.setdefault(label, []).append(mu_law_decode(codes, quantization_channels))
    wanted = [*sorted(by_label), None] if wanted is None else wanted
    out: dict[int | None, dict[str, Any]] = {
        label: calibrate(by_label[label], sample_rate, window,
                         label=names[label] if label < len(names) else str(label), max_windows=max_windows)
        for label in sorted({w for w in wanted if w in by_label})}
    if by_label and any(w not in out for w in wanted):
        # Every label's examples together, spread the same way.
        out[None] = calibrate([s for _, signals in sorted(by_label.items()) for s in signals], sample_rate,
                              window, label=None, max_windows=max_windows)
    return out


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("_")[:40] or "x"


def _stage_dir(out_dir: str) -> tuple[str, bool]:
    if storage.is_gcs(out_dir):
        return tempfile.mkdtemp(prefix="wavenet-samples-"), True
    storage.require_folder(out_dir, "output folder")
    os.makedirs(out_dir, exist_ok=True)
    return out_dir, False


def _check_generation_memory(net: WaveNet, g: GenerateConfig, num_samples: int) -> None:
    """Refuse, before any allocation, clips whose codes, audio and queues exceed memory."""
    m = net.config
    codes = g.num_clips * num_samples  # uint8 codes (clips, samples)
    audio = num_samples * 4 * 3  # one clip at a time: float32 audio, int16 PCM, WAV bytes
    queues = g.num_clips * m.receptive_field * m.residual_channels * 4 * 2  # per-layer state
    check_fits(codes + audio + queues, f"{g.num_clips} clips of {num_samples} samples",
               "generate.num_clips or generate.seconds")


def _sample(net: WaveNet, g: GenerateConfig, num_samples: int, prime: np.ndarray | None,
            labels: np.ndarray | None, progress: bool,
            notes: np.ndarray | None = None) -> tuple[np.ndarray, float, float]:
    """All clips in one batch of the cached generator.

    Returns:
        ``(codes (clips, samples), generation seconds, wall seconds)``: generation alone,
        and with the generator's set-up (packing and converting the weights) before it.
    """
    wall_start = time.perf_counter()
    generator = FastGenerator(net, batch_size=g.num_clips, weights=g.weights)
    with tqdm(total=num_samples * g.num_clips, unit="sample", unit_scale=True, desc="generate",
              disable=not progress, dynamic_ncols=True) as bar:
        seen = [0]

        def on_progress(done: int) -> None:
            # The generator reports samples done per stream; the bar counts all streams.
            bar.update((done - seen[0]) * g.num_clips)
            seen[0] = done

        start = time.perf_counter()
        codes = generator.generate(num_samples, prime=prime, labels=labels, notes=notes,
                                   temperature=g.temperature, seed=g.seed, progress=on_progress,
                                   sustain=g.sustain)  # without a score, the generator has nothing to sustain
        end = time.perf_counter()
        return codes, end - start, end - wall_start


def _write_clips(codes: np.ndarray, local_dir: str, out_dir: str, sr: int, q: int,
                 label_ids: np.ndarray | None, label_names: list[str | None],
                 calibrations: dict[int | None, dict[str, Any]], scores: ClipScores | None = None
                 ) -> tuple[list[dict], list[dict], list[str], list[str]]:
    """Each clip's WAV and PNG (and the score it played, as MIDI), checked: ``(clips, report
    clips, warnings, file names)``."""
    clips, report_clips, all_warnings, written = [], [], [], []
    for i in range(len(codes)):
        name = f"clip-{i:02d}" + (f"-{_slug(label_names[i])}" if label_names[i] is not None else "")
        audio = mu_law_decode(codes[i], q)
        wav, png = wav_bytes(audio, sr), spectrogram_png(
            audio, sr, title=name if label_names[i] is None else f"{name} ({label_names[i]})")
        storage.write_bytes_atomic(os.path.join(local_dir, name + ".wav"), wav)
        storage.write_bytes_atomic(os.path.join(local_dir, name + ".png"), png)
        written += [name + ".wav", name + ".png"]
        played = None
        if scores is not None:
            storage.write_bytes_atomic(os.path.join(local_dir, name + ".mid"), midi_bytes(scores.scores[i], sr))
            written.append(name + ".mid")
            played = {"source": scores.sources[i], "notes": len(scores.scores[i]),
                      "mid": storage.join(out_dir, name + ".mid")}
        label_id = None if label_ids is None else int(label_ids[i])
        # The clip's label's range; all labels together for an unconditioned
        # model or a label without training audio.
        calibration = calibrations.get(label_id, calibrations.get(None))
        quality = analyze(audio, sr, codes=codes[i], calibration=calibration)
        reference_name = None if calibration is None else (calibration["label"] or "all labels")
        all_warnings += [f"{name}: {w}" for w in quality["warnings"]]
        clips.append({"index": i, "name": name, "label": label_names[i], "label_id": label_id,
                      "wav": storage.join(out_dir, name + ".wav"),
                      "png": storage.join(out_dir, name + ".png"),
                      "metrics": quality["metrics"], "checks": quality["checks"],
                      "reference": reference_name, "warnings": quality["warnings"], "score": played})
        report_clips.append({"name": name, "label": label_names[i], "wav": wav,
                             "wav_file": name + ".wav", "png": png, "png_file": name + ".png",
                             "metrics": quality["metrics"], "checks": quality["checks"],
                             "warnings": quality["warnings"]})
    return clips, report_clips, all_warnings, written


def _quality_metrics(result: dict[str, Any]) -> dict[str, float]:
    """Speed, warning count, and every clip's sanity metrics (and their means) for MLflow."""
    clips = result["clips"]
    # Speed of generation alone (set-up excluded), and the wall time with set-up.
    metrics: dict[str, float] = {"generate/samples_per_second": result["samples_per_second"],
                                 "generate/wall_seconds": result["wall_seconds"],
                                 "generate/warnings": float(len(result["warnings"]))}
    for clip in clips:
        for k, v in clip["metrics"].items():
            metrics[tracking.metric_key("quality", clip["name"], k)] = v
        if clip["checks"]:
            metrics[tracking.metric_key("quality", clip["name"], "checks_failed")] = float(
                sum(not c["passed"] for c in clip["checks"]))
    for k in clips[0]["metrics"]:
        metrics[tracking.metric_key("quality", "mean", k)] = float(
            np.mean([c["metrics"][k] for c in clips]))
    return {**metrics, **result["checks_passed"]}


def checks_passed(clips: list[dict[str, Any]]) -> dict[str, float]:
    """How the clips sound, in numbers a runs table can sort on (empty without calibrated checks).

    ``samples/checks_passed_fraction``: passed calibrated checks over all clips'
    checks (1.0: every clip within its label's real audio on every check);
    ``samples/checks_passed_fraction/<label>``: the same over that label's clips;
    ``samples/clips_passed_fraction``: clips that pass every check.
    """
    checked = [c for c in clips if c["checks"]]
    if not checked:
        return {}
    out = {"samples/checks_passed_fraction": _passed_fraction(checked),
           "samples/clips_passed_fraction": float(np.mean([all(k["passed"] for k in c["checks"])
                                                           for c in checked]))}
    for label in sorted({c["label"] for c in checked if c["label"] is not None}):
        out[tracking.metric_key("samples", "checks_passed_fraction", label)] = _passed_fraction(
            [c for c in checked if c["label"] == label])
    return out


def _passed_fraction(clips: list[dict[str, Any]]) -> float:
    verdicts = [k["passed"] for c in clips for k in c["checks"]]
    return float(np.mean(verdicts))


def _log_on_training_run(model_uri: str | None, data_dir: str | None, metrics: dict[str, float]) -> str | None:
    """Log the checks' fractions on the model's training run too, beside its eval/bits_per_sample.

    As :func:`wavenet.evaluate.evaluate` does with its score: only when the clips were
    calibrated on the data the run trained on (its ``data.version`` tag, or untagged), so
    the runs table and the comparison view show one row per model with how it sounds.

    Returns:
        The training run's id when logged there, else None.
    """
    src_run = tracking.model_run_id(model_uri) if model_uri else None
    if not (src_run and data_dir and metrics):
        return None
    trained_on = tracking.run_tag(src_run, "data.version")
    if trained_on not in (None, read_manifest(data_dir).data_version):
        return None
    tracking.log_metrics_to_run(src_run, metrics)
    return src_run


def _report_info(result: dict[str, Any], g: GenerateConfig, net: WaveNet) -> dict[str, Any]:
    sr = result["sample_rate"]
    mi = result["model_info"]
    version = (f"{mi['registered_model']} version {mi['registered_version']}"
               + (" (champion)" if mi["champion"] else "")) if mi["registered_version"] else "not registered"
    return {"model": result["model"], "registered": version,
            "training run": f"{mi['run_name']} ({mi['run_id']})" if mi["run_id"] else "(unknown)",
            "data": result["data"] or "(none)",
            "MLflow run (samples)": result["run_id"], "clips": g.num_clips,
            "seconds per clip": result["num_samples"] / sr, "sample rate": sr,
            "primed with (s)": result["prime_samples"] / sr, "temperature": g.temperature,
            **({"sustain (delay line)": g.sustain} if net.config.scored else {}),
            "seed": g.seed, "receptive field": net.receptive_field,
            "generator": f"FastGenerator, {g.weights} weights, "
                         f"{result['samples_per_second']:.0f} samples/s ({g.num_clips} streams)",
            **({"scores played": "; ".join(
                f"{c['name']}: {c['score']['source']} ({c['score']['notes']} notes; {c['name']}.mid)"
                for c in result["clips"] if c["score"])} if net.config.scored else {})}


def _write_outputs(local_dir: str, html: str, result: dict[str, Any]) -> None:
    storage.write_text_atomic(os.path.join(local_dir, REPORT_FILE), html)
    storage.write_text_atomic(os.path.join(local_dir, SUMMARY_FILE),
                              json.dumps(result, indent=2, sort_keys=True))


def _model_info(model_uri: str | None, config: ExperimentConfig, tracking_uri: str | None
                ) -> registry.ModelInfo:
    if model_uri is None:
        return registry.ModelInfo(uri="<in memory>", run_id=None, run_name=None, version=None,
                                  champion=False)
    return registry.describe_model(model_uri, config.evaluate.registered_model_name, tracking_uri)


def _publish(local_dir: str, out_dir: str, written: list[str], staged: bool) -> None:
    """Copy a staged folder's files to a gs:// ``out_dir`` (then drop the staging folder)."""
    if not staged:
        return
    try:
        for fname in written:
            with open(os.path.join(local_dir, fname), "rb") as f:
                storage.write_bytes_atomic(storage.join(out_dir, fname), f.read())
    finally:
        shutil.rmtree(local_dir, ignore_errors=True)


def clip_calibrations(data_dir: str, g: GenerateConfig, sr: int, q: int, num_samples: int,
                      vocabulary: list[str], label_ids: np.ndarray | None) -> dict[int | None, dict[str, Any]]:
    """The sanity-check ranges for the clips' labels, from the data's training audio."""
    # The checks are calibrated on training audio: it spans every track of a
    # label, where validation may hold one track, whose range rejects most
    # windows of the label's other tracks (docs/evaluation.md, "Sanity checks").
    reference = int(g.reference_seconds * sr)
    return calibrate_labels(
        read_examples(data_dir, "train", 8 * max(reference, num_samples)), sr, q, window=num_samples,
        max_windows=max(8, int(round(reference / num_samples))), names=vocabulary,
        wanted=[None] if label_ids is None else sorted(set(label_ids.tolist())))


# A reference clip is at most this long: enough to hear the label's sound, small in the report.
REFERENCE_CLIP_SECONDS = 5.0


def reference_clips(examples: list[tuple[np.ndarray, int]], length: int, wanted: list[int]
                    ) -> dict[int, tuple[np.ndarray, int]]:
    """One clip of up to ``length`` codes per wanted label: the middle of its longest example.

    Returns:
        ``{label_id: (codes (n,) uint8, start)}`` for the wanted labels that have examples.
    """
    out = {}
    for label in wanted:
        own = [c for c, lab in examples if lab == label]
        if own:
            codes = max(own, key=len)
            start = max(0, (len(codes) - length) // 2)
            out[label] = (codes[start:start + length], start)
    return out


def _write_references(data_dir: str, vocabulary: list[str], label_ids: np.ndarray | None,
                      seconds: float, sr: int, q: int, local_dir: str, out_dir: str
                      ) -> tuple[list[dict], dict[str, dict], list[str]]:
    """Validation clips, one per label of the clips (every label when unconditioned), written.

    Returns:
        ``(summaries, report references by label name, file names)``; empty when the
        data has no validation audio.
    """
    length = max(1, int(round(min(seconds, REFERENCE_CLIP_SECONDS) * sr)))
    try:
        examples = read_validation_codes(data_dir, 2 * length)
    except DataError:
        return [], {}, []
    wanted = (sorted(set(label_ids.tolist())) if label_ids is not None
              else sorted({lab for _, lab in examples}))
    summaries, refs, written = [], {}, []
    for label, (codes, start) in reference_clips(examples, length, wanted).items():
        name = vocabulary[label] if label < len(vocabulary) else str(label)
        fname = f"reference-{_slug(name)}"
        audio = mu_law_decode(codes, q)
        wav, png = wav_bytes(audio, sr), spectrogram_png(audio, sr, title=f"{name} (validation)")
        storage.write_bytes_atomic(os.path.join(local_dir, fname + ".wav"), wav)
        storage.write_bytes_atomic(os.path.join(local_dir, fname + ".png"), png)
        written += [fname + ".wav", fname + ".png"]
        source = f"validation example, from {start / sr:.1f} s"
        summaries.append({"label": name, "label_id": label, "seconds": len(codes) / sr, "source": source,
                          "wav": storage.join(out_dir, fname + ".wav"),
                          "png": storage.join(out_dir, fname + ".png")})
        refs[name] = {"wav": wav, "png": png, "wav_file": fname + ".wav", "seconds": round(len(codes) / sr, 2),
                      "source": source}
    return summaries, refs, written


def _clips_per_label(g: GenerateConfig, net: WaveNet, vocabulary: list[str] | None,
                     who: str) -> tuple[GenerateConfig, ClipLabels]:
    """The clips' labels, with ``num_clips`` raised to one clip per label the model knows.

    A conditioned model is judged by how each genre sounds: every label it can be
    asked for gets a clip, whatever ``generate.num_clips`` says (more clips than labels
    cycle through them).
    """
    clip = clip_labels(g.num_clips, net.config.num_classes, vocabulary, net.labels, who)
    if not net.config.conditioned:
        return g, clip
    if vocabulary is None:
        known = len(net.labels) if net.labels else net.config.num_classes
    else:
        known = len(vocabulary) - len(clip.not_generated)
    if known <= g.num_clips:
        return g, clip
    print(f"generate: {known} clips, one per label (generate.num_clips={g.num_clips})", file=sys.stderr)
    g = dataclasses.replace(g, num_clips=known)
    return g, clip_labels(g.num_clips, net.config.num_classes, vocabulary, net.labels, who)


def _gate_summary(evaluation: dict[str, Any] | None) -> dict[str, Any] | None:
    """The gate decision and scores that samples.json keeps (None without an evaluation)."""
    if not evaluation:
        return None
    keep = ("bits_per_sample", "baselines", "split", "samples", "gate", "promoted")
    return {k: evaluation[k] for k in keep if k in evaluation}


def generate_samples(model, out_dir: str, config: ExperimentConfig, ctx: RunContext | None = None, *,
                     data_dir: str | None = None, progress: bool = True,
                     evaluation: dict[str, Any] | None = None) -> dict[str, Any]:
    """Sample clips from a model; write WAVs, spectrograms, an HTML report; log to MLflow.

    Args:
        model: a ``.keras`` path, an MLflow model URI (``runs:/ID/model``,
            ``models:/NAME@champion``), or a loaded WaveNet.
        out_dir: output folder (local or gs://).
        config: ``config.generate`` sets clips, seconds, temperature, priming,
            seed; the model's own architecture and sample rate are used.
        data_dir: shards folder: label names, priming audio (validation) and
            the audio the sanity checks are calibrated on (training audio of
            each clip's label, ``generate.reference_seconds`` of it per label);
            optional unless priming.
        ctx: where the samples run is tracked (:class:`~wavenet.context.RunContext`: its
            MLflow URI; ``experiment``, default the training run's for a ``runs:/`` model,
            else ``config.name``; ``run_name``, default "generate"; the caller's
            environment). None: ``RunContext.create()`` (``MLFLOW_TRACKING_URI``, else
            ./mlflow.db).
        progress: show a tqdm bar with samples/s.
        evaluation: :func:`wavenet.evaluate.evaluate`'s result for this model
            (``metrics.json``; with ``gate`` when it was gated): the report
            shows its bits/sample against the baselines and the champion, and
            the gate's decision and reason.

    Returns:
        The result described in this module's docstring (also written as
        ``samples.json``): paths, settings, speed, each clip with its checks,
        the references, the model and the run.
    """
    ctx = ctx if ctx is not None else RunContext.create()
    model_uri = model if isinstance(model, str) else None
    net = registry.load_wavenet(model, ctx.tracking_uri) if isinstance(model, str) else model
    plan = _plan(net, config, data_dir, model_uri)
    drawn = _draw(net, plan, progress, out_dir)
    info = _model_info(model_uri, plan.config, ctx.tracking_uri)

    exp, tags = tracking.run_placement(model_uri, ctx.experiment, config.name, ctx.tracking_uri)
    tags.update({"wavenet.stage": "generate", "wavenet.model": model_uri or "<in memory>",
                 "wavenet.data": data_dir or ""})
    params = {**plan.ecfg.flat(), "generate.model": model_uri or "<in memory>",
              "generate.data": data_dir or ""}
    with tracking.start_run(exp, run_name=ctx.run_name or "generate", tracking_uri=ctx.tracking_uri,
                            tags=tags, params=params, environ=ctx.environ) as run:
        result = _result(net, plan, drawn, out_dir, info, evaluation, run.info.run_id)
        _write_report(result, net, plan, drawn, info, evaluation)
        _log_samples(result, plan, drawn, run.info.run_id)
    _publish(drawn.local_dir, out_dir, drawn.written, drawn.staged)
    return result


@dataclass(frozen=True)
class _Plan:
    """The clips to draw, once the model and the data are known."""

    config: ExperimentConfig  # generate.num_clips raised to one clip per label
    ecfg: ExperimentConfig  # ``config`` with the model's architecture and audio
    model_uri: str | None  # None: a model in memory
    data_dir: str | None
    vocabulary: list[str] | None  # the data's label names (None without data)
    num_samples: int  # per clip
    prime_len: int  # priming codes per clip
    clip: ClipLabels


def _plan(net: WaveNet, config: ExperimentConfig, data_dir: str | None,
          model_uri: str | None) -> _Plan:
    """How many clips of how many samples, with which labels; refused early if they cannot fit."""
    g = config.generate
    sr = net.audio_config.sample_rate
    ecfg = dataclasses.replace(config, model=net.config, audio=net.audio_config)
    num_samples = max(1, int(round(g.seconds * sr)))
    prime_len = int(round(g.prime_seconds * sr))
    if prime_len and not data_dir:
        raise ConfigError(f"generate.prime_seconds={g.prime_seconds} primes with validation audio: "
                          f"pass the data folder (--data)")
    vocabulary = [str(x) for x in read_manifest(data_dir).labels] if data_dir else None
    g, clip = _clips_per_label(g, net, vocabulary, model_uri or "the model")
    config, ecfg = (dataclasses.replace(c, generate=g) for c in (config, ecfg))
    _check_generation_memory(net, g, num_samples)
    if clip.not_generated:
        print(f"generate: no clips of {', '.join(clip.not_generated)}: {model_uri or 'the model'} "
              "was never trained on them", file=sys.stderr)
    return _Plan(config=config, ecfg=ecfg, model_uri=model_uri, data_dir=data_dir,
                 vocabulary=vocabulary, num_samples=num_samples, prime_len=prime_len, clip=clip)


class _Drawn(NamedTuple):
    """The clips drawn and written to the (staging) folder, with what was measured."""

    calibrations: dict[int | None, dict[str, Any]]
    elapsed: float  # generation alone, seconds
    wall: float  # with the generator's set-up
    local_dir: str  # where the files are written (a staging folder for gs://)
    staged: bool
    clips: list[dict]
    report_clips: list[dict]
    warnings: list[str]
    written: list[str]  # file names, the report and summary included
    ref_summaries: list[dict]
    references: dict[str, dict] | None


def _draw(net: WaveNet, plan: _Plan, progress: bool, out_dir: str) -> _Drawn:
    """Calibrate and prime from the data, sample every clip, write clips and references."""
    g, data_dir = plan.config.generate, plan.data_dir
    sr, q = net.audio_config.sample_rate, net.config.quantization_channels
    calibrations: dict[int | None, dict[str, Any]] = {}
    # Data ids index the data (calibration, priming, references); the model sees its own ids.
    label_ids = plan.clip.data_ids
    # A model that plays a score plays a validation example's (primed with the codes before it) or
    # generate.score's.
    scores = (clip_scores(net, g, data_dir, plan.num_samples, plan.prime_len, label_ids, plan.vocabulary)
              if net.config.scored else None)
    prime = None if scores is None else scores.prime
    if data_dir:
        if plan.prime_len and prime is None:
            examples = read_validation_codes(data_dir, plan.prime_len * g.num_clips)
            prime = prime_codes(examples, plan.prime_len, label_ids, g.num_clips)
        calibrations = clip_calibrations(data_dir, g, sr, q, plan.num_samples, plan.vocabulary, label_ids)
    codes, elapsed, wall = _sample(net, g, plan.num_samples, prime, plan.clip.model_ids, progress,
                                   None if scores is None else scores.notes)
    local_dir, staged = _stage_dir(out_dir)
    clips, report_clips, all_warnings, written = _write_clips(
        codes, local_dir, out_dir, sr, q, label_ids, plan.clip.names, calibrations, scores)
    ref_summaries, references, ref_files = (_write_references(
        data_dir, plan.vocabulary, label_ids, g.seconds, sr, q, local_dir, out_dir) if data_dir else ([], None, []))
    written += ref_files + [REPORT_FILE, SUMMARY_FILE]
    return _Drawn(calibrations=calibrations, elapsed=elapsed, wall=wall, local_dir=local_dir,
                  staged=staged, clips=clips, report_clips=report_clips, warnings=all_warnings,
                  written=written, ref_summaries=ref_summaries, references=references)


def _result(net: WaveNet, plan: _Plan, drawn: _Drawn, out_dir: str, info: registry.ModelInfo,
            evaluation: dict[str, Any] | None, run_id: str) -> dict[str, Any]:
    """:func:`generate_samples`'s result (the module docstring lists its keys)."""
    g, num_samples, elapsed = plan.config.generate, plan.num_samples, drawn.elapsed
    return {
        "model": plan.model_uri or "<in memory>", "data": plan.data_dir, "out_dir": out_dir,
        "model_labels": None if net.labels is None else list(net.labels),
        "labels_not_generated": plan.clip.not_generated,
        "report": storage.join(out_dir, REPORT_FILE),
        "summary": storage.join(out_dir, SUMMARY_FILE),
        "sample_rate": net.audio_config.sample_rate, "num_samples": num_samples,
        "prime_samples": plan.prime_len,
        "temperature": g.temperature, "sustain": g.sustain if net.config.scored else 0.0,
        "seed": g.seed, "weights": g.weights,
        "samples_per_second": num_samples * g.num_clips / elapsed if elapsed > 0 else float("inf"),
        "generation_seconds": elapsed, "wall_seconds": drawn.wall, "clips": drawn.clips,
        "warnings": drawn.warnings,
        "reference": {(c["label"] or "all labels"): c for c in drawn.calibrations.values()},
        "thresholds": absolute_thresholds(), "title": info.title,
        "model_info": info.to_dict(),
        "evaluation": _gate_summary(evaluation), "reference_clips": drawn.ref_summaries,
        "run_id": run_id, "checks_passed": checks_passed(drawn.clips),
    }


def _write_report(result: dict[str, Any], net: WaveNet, plan: _Plan, drawn: _Drawn,
                  info: registry.ModelInfo, evaluation: dict[str, Any] | None) -> None:
    """``report.html`` and ``samples.json`` into the (staging) folder."""
    html = render_html(f"WaveNet samples: {info.title}", drawn.report_clips,
                       _report_info(result, plan.config.generate, net), config_yaml=plan.ecfg.to_yaml(),
                       evaluation=evaluation, references=drawn.references,
                       thresholds=result["thresholds"])
    _write_outputs(drawn.local_dir, html, result)


def _log_samples(result: dict[str, Any], plan: _Plan, drawn: _Drawn, run_id: str) -> None:
    """The clips' metrics, tags and files on the active MLflow run (the checks' fractions
    also on the model's training run, :func:`_log_on_training_run`)."""
    tracking.log_metrics(_quality_metrics(result))
    on_training = _log_on_training_run(plan.model_uri, plan.data_dir, result["checks_passed"])
    tracking.set_tags({"samples.metrics_run_id": on_training or run_id})
    tracking.set_tags({"quality.warnings": "; ".join(drawn.warnings)[:5000] or "none"})
    tracking.log_artifacts([os.path.join(drawn.local_dir, f) for f in drawn.written], "samples")
