"""Held-out evaluation: bits per sample against baselines, and gating against the champion.

The model's score is the negative log-likelihood of the validation split in
bits per predicted sample (``-log2 p(x_t | x_<t)``, averaged), over every
window that :func:`wavenet.data.validation_dataset` cuts, so it is
deterministic. On exactly the same predicted samples three baselines are
scored, so a number means something on its own:

* uniform: ``log2(Q)`` bits (8 for 256 codes), a model that learnt nothing;
* unigram: the code histogram of the training split, additively smoothed;
* bigram: the code given the previous code, from the training split,
  additively smoothed (``evaluate.bigram_smoothing``).

A WaveNet should beat the bigram baseline clearly; one that only matches the
unigram has learnt the amplitude distribution and nothing about time.

Gating (``evaluate(..., gate=True)``): the new model and the registered
model's ``champion`` are scored in one pass over the same validation windows;
the new model is registered and becomes champion only when it is better by
``evaluate.promotion_margin_bits`` (the first model becomes champion).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import tempfile
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import tensorflow as tf

from wavenet import labels as vocab
from wavenet import registry, storage, tracking
from wavenet.config import ExperimentConfig
from wavenet.data import eval_shards, local_shard_paths, parse_example, validation_dataset
from wavenet.errors import DataError, TrackingError, one_line
from wavenet.manifest import Manifest, check_audio, check_shards, read_manifest
from wavenet.memory import check_evaluation
from wavenet.model import bits_per_sample

__all__ = [
    "CodeCounts",
    "count_codes",
    "smoothed_log2_probs",
    "baseline_log2_probs",
    "baseline_bits",
    "training_code_counts",
    "score_models",
    "decide",
    "gate",
    "evaluate",
]

METRICS_FILE = "metrics.json"
BASELINES = ("uniform", "unigram", "bigram")


# -- baselines: pure functions ---------------------------------------------------

@dataclass(frozen=True)
class CodeCounts:
    """Code statistics of a split.

    Attributes:
        unigram: (Q,) how often each code occurs.
        bigram: (Q, Q) ``bigram[a, b]`` = how often code b directly follows code a
            (within one example; examples are not joined).
    """

    unigram: np.ndarray
    bigram: np.ndarray

    @property
    def quantization_channels(self) -> int:
        return int(self.unigram.shape[0])


def count_codes(sequences: Iterable[np.ndarray], quantization_channels: int) -> CodeCounts:
    """Unigram and bigram counts of code sequences.

    Args:
        sequences: 1-D integer code arrays (one per example).
        quantization_channels: Q; every code must be in [0, Q).

    Returns:
        :class:`CodeCounts` with int64 counts.
    """
    q = quantization_channels
    unigram = np.zeros(q, np.int64)
    bigram = np.zeros(q * q, np.int64)
    for seq in sequences:
        codes = np.asarray(seq).reshape(-1).astype(np.int64)
        if codes.size == 0:
            continue
        if codes.min() < 0 or codes.max() >= q:
            raise DataError(f"code {int(codes.max())} outside [0, {q}): the data was quantised "
                            f"with more channels than the model")
        unigram += np.bincount(codes, minlength=q)
        if codes.size > 1:
            bigram += np.bincount(codes[:-1] * q + codes[1:], minlength=q * q)
    return CodeCounts(unigram=unigram, bigram=bigram.reshape(q, q))


def smoothed_log2_probs(counts: np.ndarray, smoothing: float) -> np.ndarray:
    """Additively smoothed log2 probabilities along the last axis.

    ``p(c) = (n_c + a) / (sum_c' n_c' + Q a)``: every code keeps a finite cost.

    Args:
        counts: (..., Q) non-negative counts.
        smoothing: a > 0.

    Returns:
        (..., Q) float64 log2 probabilities.
    """
    if smoothing <= 0:
        raise ValueError(f"smoothing must be > 0. Received: {smoothing}")
    c = np.asarray(counts, dtype=np.float64) + smoothing
    return np.log2(c) - np.log2(c.sum(axis=-1, keepdims=True))


def baseline_log2_probs(counts: CodeCounts, unigram_smoothing: float,
                        bigram_smoothing: float) -> tuple[np.ndarray, np.ndarray]:
    """The unigram (Q,) and bigram (Q, Q) ``log2 p`` tables of the baselines."""
    return (smoothed_log2_probs(counts.unigram, unigram_smoothing),
            smoothed_log2_probs(counts.bigram, bigram_smoothing))


def baseline_bits(counts: CodeCounts, prev: np.ndarray, targets: np.ndarray, *,
                  unigram_smoothing: float, bigram_smoothing: float) -> dict[str, float]:
    """Mean bits per sample of the three baselines on given predictions.

    Args:
        counts: training-split statistics.
        prev: (N,) the code before each predicted sample.
        targets: (N,) the predicted codes.
        unigram_smoothing: additive smoothing of the unigram counts.
        bigram_smoothing: additive smoothing of each bigram row.

    Returns:
        ``{"uniform": log2 Q, "unigram": ..., "bigram": ...}`` in bits per sample.
    """
    prev = np.asarray(prev).reshape(-1).astype(np.int64)
    targets = np.asarray(targets).reshape(-1).astype(np.int64)
    if prev.shape != targets.shape or targets.size == 0:
        raise ValueError(f"prev and targets must be equal-length and non-empty. Received: "
                         f"{prev.shape}, {targets.shape}")
    uni, bi = baseline_log2_probs(counts, unigram_smoothing, bigram_smoothing)
    return {
        "uniform": math.log2(counts.quantization_channels),
        "unigram": float(-uni[targets].mean()),
        "bigram": float(-bi[prev, targets].mean()),
    }


def training_code_counts(data_dir: str, quantization_channels: int,
                         splits: Sequence[str] = ("train",)) -> CodeCounts:
    """Code statistics of every shard of ``splits`` (default the training split) of ``data_dir``."""
    # Bucket shards are fetched (and checked against their sha256) into the local cache.
    files = [f for split in splits for f in local_shard_paths(data_dir, split)]
    if not files:
        raise DataError(f"{data_dir} has no {' or '.join(splits)} shards with examples (baselines need them)")
    ds = tf.data.TFRecordDataset(files).map(parse_example, num_parallel_calls=tf.data.AUTOTUNE)
    try:
        return count_codes((codes for codes, _ in ds.as_numpy_iterator()), quantization_channels)
    except tf.errors.OpError as e:
        raise DataError(f"cannot read training shards of {data_dir}: "
                        f"{one_line(e, with_type=False)}") from None


# -- model scores -----------------------------------------------------------------

def _bits_fn(model, context: int):
    """A compiled ``(crops, labels) -> (B,)`` bits per sample of the last ``window`` codes.

    Crops carry ``context >= receptive_field`` codes in front of the scored
    window, so models with different receptive fields score the same samples.
    """
    return tf.function(lambda crops, labels: bits_per_sample(model, crops, labels, context=context),
                       reduce_retracing=True)


def _check_model_fits_data(model, manifest: Manifest, what: str, data_dir: str = "DATA", *,
                           allow_missing: bool = False) -> np.ndarray | None:
    """The model's id of each data label (by name), checking the audio settings too.

    Returns None for an unconditioned model. A data label the model never saw
    is a one-line DataError naming the label and ``what``, unless
    ``allow_missing`` (then its entry is :data:`wavenet.labels.MISSING`).
    """
    check_audio(data_dir, manifest, model.audio_config, prefix=f"{what}: audio")
    if not model.config.conditioned:
        return None
    return vocab.model_ids(manifest.labels, model.labels, model.config.num_classes, what,
                           allow_missing=allow_missing)


def score_models(models: Sequence, data_dir: str, config: ExperimentConfig,
                 counts: CodeCounts, batch_size: int | None = None,
                 split: str = "validation",
                 label_maps: Sequence[np.ndarray | None] | None = None) -> dict[str, Any]:
    """Score models and the baselines on the same validation windows, in one pass.

    The crops carry the largest receptive field of ``models`` as context, so
    every model (and baseline) predicts exactly the same samples.

    Args:
        models: WaveNets with the data's quantisation.
        data_dir: folder with manifest.json and validation shards.
        config: supplies ``evaluate.window``, smoothing and batch size.
        counts: training-split code statistics (:func:`training_code_counts`).
        batch_size: crops per step (default ``evaluate.batch_size``).
        split: ``"validation"``, or ``"all"`` to score every example of the
            folder (:func:`wavenet.data.validation_dataset`).
        label_maps: per model, the model's id of each data label id
            (:func:`wavenet.labels.model_ids`; None for an unconditioned model);
            default: mapped by name, a data label a model never saw being a
            DataError. A window whose label a model never saw
            (:data:`wavenet.labels.MISSING`) is not scored for that model.

    Returns:
        ``{"context", "window", "samples", "windows", "models": [bits per sample
        over the windows each model scored], "baselines": {name: bits},
        "per_label": {label_id: {"samples", "windows", "models": [bits, or None
        for a model that never saw the label], "baselines": {...}}}, "shared":
        {"labels": [label ids every model scored], "samples", "models": [bits
        on those labels' windows]}}``.
    """
    if not models:
        raise ValueError("score_models needs at least one model")
    q = counts.quantization_channels
    for m in models:
        if m.config.quantization_channels != q:
            raise DataError(f"model has {m.config.quantization_channels} quantisation channels but "
                            f"the baselines were counted with {q}")
    check_evaluation([m.config for m in models], config, batch_size)  # before any batch exists
    widest = max(models, key=lambda m: m.receptive_field)
    ecfg = dataclasses.replace(config, model=widest.config, audio=widest.audio_config)
    context, window = widest.receptive_field, config.evaluate.window
    uni, bi = baseline_log2_probs(counts, config.evaluate.unigram_smoothing,
                                  config.evaluate.bigram_smoothing)
    if label_maps is None:
        manifest = read_manifest(data_dir)
        label_maps = [_check_model_fits_data(m, manifest, "the model", data_dir) for m in models]
    fns = [_bits_fn(m, context) for m in models]
    ds = validation_dataset(data_dir, ecfg, batch_size or config.evaluate.batch_size, split=split)
    per_label: dict[int, dict[str, Any]] = {}
    for crops, labels in ds:
        c = crops.numpy().astype(np.int64)
        lab = labels.numpy()
        targets, prev = c[:, context:], c[:, context - 1:-1]
        base = {"uniform": np.full(len(c), math.log2(q) * window),
                "unigram": -uni[targets].sum(axis=1),
                "bigram": -bi[prev, targets].sum(axis=1)}
        # Summed bits per window, in float64 so that thousands of windows add up exactly;
        # each model sees its own ids of the data's labels (NaN: a label it never saw).
        model_bits = []
        for fn, ids in zip(fns, label_maps, strict=True):
            seen = lab if ids is None else ids[lab]
            bits = fn(crops, np.maximum(seen, 0).astype(np.int32)).numpy().astype(np.float64) * window
            model_bits.append(np.where(seen >= 0, bits, np.nan))
        for i, label in enumerate(lab.tolist()):
            t = per_label.setdefault(int(label), {
                "samples": 0, "windows": 0, "models": [0.0] * len(models),
                "baselines": dict.fromkeys(BASELINES, 0.0)})
            t["samples"] += window
            t["windows"] += 1
            for j, b in enumerate(model_bits):
                t["models"][j] += float(b[i])  # NaN stays NaN: the label is not scored
            for name in BASELINES:
                t["baselines"][name] += float(base[name][i])
    if not per_label:
        raise DataError(f"no {split} example in {data_dir} is long enough to score: each needs "
                        f"receptive_field + evaluate.window = {context} + {window} codes")
    samples = sum(t["samples"] for t in per_label.values())

    def mean(j: int, labels: Iterable[int]) -> float | None:
        scored = [per_label[k] for k in labels if not math.isnan(per_label[k]["models"][j])]
        n = sum(t["samples"] for t in scored)
        return sum(t["models"][j] for t in scored) / n if n else None

    shared = sorted(k for k, t in per_label.items() if not any(math.isnan(b) for b in t["models"]))
    result: dict[str, Any] = {
        "context": context, "window": window, "samples": samples,
        "windows": sum(t["windows"] for t in per_label.values()),
        "models": [mean(j, per_label) for j in range(len(models))],
        "baselines": {n: sum(t["baselines"][n] for t in per_label.values()) / samples
                      for n in BASELINES},
        "per_label": {},
        "shared": {"labels": shared, "samples": sum(per_label[k]["samples"] for k in shared),
                   "models": [mean(j, shared) for j in range(len(models))]},
    }
    for label, t in sorted(per_label.items()):
        result["per_label"][label] = {
            "samples": t["samples"], "windows": t["windows"],
            "models": [None if math.isnan(b) else b / t["samples"] for b in t["models"]],
            "baselines": {n: v / t["samples"] for n, v in t["baselines"].items()},
        }
    return result


# -- gating -------------------------------------------------------------------------

def decide(new_bits: float, champion_bits: float | None, margin: float) -> tuple[bool, str]:
    """Promote or keep: lower bits are better, by at least ``margin``.

    Returns:
        ``(promoted, reason)``.
    """
    if champion_bits is None:
        return True, "no champion yet: the first evaluated model becomes champion"
    improvement = champion_bits - new_bits
    if improvement > 0 and improvement >= margin:
        return True, (f"better than the champion by {improvement:.4f} bits/sample "
                      f"({new_bits:.4f} vs {champion_bits:.4f}; margin {margin})")
    return False, (f"not better than the champion by the margin: {new_bits:.4f} vs "
                   f"{champion_bits:.4f} bits/sample (improvement {improvement:.4f}, margin {margin})")


def _is_champion_uri(uri: str | None, name: str, champion_version: str) -> bool:
    return uri in (f"models:/{name}@champion", f"models:/{name}/{champion_version}")


# Rounds of "score, then find the champion changed" before a gate gives up.
MAX_GATE_ROUNDS = 5
# Test hook: seconds a gate waits between its decision and taking the lock, so a
# test can make a race's interleaving deterministic. The real code path runs.
TEST_PAUSE_ENV = "WAVENET_TEST_GATE_PAUSE_S"


def _test_pause_before_promotion() -> None:
    pause = float(os.environ.get(TEST_PAUSE_ENV) or 0)
    if pause > 0:
        time.sleep(pause)


def _version(ref: registry.ModelRef | None) -> str | None:
    return None if ref is None else ref.version


def _version_of(uri: str | None, name: str) -> str | None:
    """The version ``models:/NAME/V`` names (a reused model), else None."""
    prefix = f"models:/{name}/"
    if uri and uri.startswith(prefix) and uri[len(prefix):].isdigit():
        return uri[len(prefix):]
    return None


def _registrable_source(model, model_uri: str | None, name: str) -> str:
    """An MLflow model URI for ``model``: a version of ``name``, its own, or the model
    logged to the active run (done before the gate lock: logging uploads)."""
    if _version_of(model_uri, name) or (model_uri and (model_uri.startswith("runs:/")
                                                       or model_uri.startswith("models:/m-"))):
        return model_uri
    return tracking.log_model(model, name="model")


def _promote(source: str, lock: registry.GateLock, tags: dict[str, str]) -> str:
    """Make ``source`` the champion of ``lock.name`` under the held gate ``lock``: its version.

    A version of the model already (a reused model, ``models:/NAME/V``) only gets the
    alias; anything else is registered as a new version, tagged with its training
    run's train key (:mod:`wavenet.reuse`) when it has one. The alias moves only if
    the lock is still held right before (:meth:`wavenet.registry.GateLock.set_champion`).
    """
    name = lock.name
    version = _version_of(source, name)
    if version is None:
        key = registry.train_key_of(tracking.model_run_id(source))
        version = registry.register(
            source, name, tags={**tags, **({registry.TRAIN_KEY_TAG: key} if key else {})}).version
    lock.set_champion(version)
    return version


def _compare(model, data_dir: str, config: ExperimentConfig, champion, counts: CodeCounts,
             split: str, model_uri: str | None, margin: float
             ) -> tuple[dict[str, Any], float | None, bool, str, dict[str, Any]]:
    """Score ``model`` (and ``champion``) on the same windows.

    Returns ``(scores, champion_bits, promote, why, labels)``; ``labels`` says
    which data labels the comparison covers (see :func:`gate`). A model that is
    the champion itself is scored once; its champion_bits are its own.

    Labels go to each model by name. The candidate must know every label of the
    data (else a one-line DataError naming the label). A champion that never saw
    a label of the data (a genre added since it was trained) is compared on the
    windows of the labels both know, and the decision says so; the candidate's
    own score (``scores["models"][0]``) still covers every label.
    """
    name = config.evaluate.registered_model_name
    manifest = read_manifest(data_dir)
    already = champion is not None and _is_champion_uri(model_uri, name, champion.version)
    maps = [_check_model_fits_data(model, manifest, f"candidate {model_uri or 'model'}", data_dir)]
    notes = [] if not model.config.conditioned or model.labels is not None else [
        "the candidate records no label vocabulary: its ids are taken to be the data's"]
    champion_model = None
    if champion is not None and not already:
        champion_model = registry.load_wavenet(champion.uri)
        maps.append(_check_model_fits_data(champion_model, manifest, f"champion {champion.uri}",
                                           data_dir, allow_missing=True))
        if champion_model.config.conditioned and champion_model.labels is None:
            notes.append("the champion records no label vocabulary: its ids are taken to be the data's")
    models = [model] if champion_model is None else [model, champion_model]
    scores = score_models(models, data_dir, config, counts, split=split, label_maps=maps)
    names = [str(x) for x in manifest.labels]
    scored = sorted(scores["per_label"])
    lacking = [names[k] for k in scored if k not in scores["shared"]["labels"]]
    info = {"compared_labels": [names[k] for k in scores["shared"]["labels"]],
            "labels_champion_lacks": lacking, "notes": notes}
    if already:
        return scores, scores["models"][0], False, (f"the evaluated model is the champion "
                                                    f"(version {champion.version})"), info
    if champion_model is None:
        promoted, reason = decide(scores["models"][0], None, margin)
        return scores, None, promoted, reason, info
    if not scores["shared"]["labels"]:
        raise DataError(f"champion {champion.uri} was trained on none of the labels scored in "
                        f"{data_dir} ({', '.join(names[k] for k in scored)}): nothing to compare")
    new_bits, champion_bits = scores["shared"]["models"]
    promoted, reason = decide(new_bits, champion_bits, margin)
    if lacking:
        reason += (f"; compared on {', '.join(info['compared_labels'])} only: the champion was "
                   f"never trained on {', '.join(lacking)}")
    if notes:
        reason += "; " + "; ".join(notes)
    return scores, champion_bits, promoted, reason, info


def gate(model, data_dir: str, config: ExperimentConfig, *, model_uri: str | None = None,
         counts: CodeCounts | None = None, data_label: str | None = None,
         split: str = "validation") -> dict[str, Any]:
    """Score ``model`` against the registered champion; promote it when it is better.

    Runs inside an active MLflow run (:func:`evaluate` opens one): the decision
    and both scores are logged there. A model that is not yet an MLflow model
    (a local ``.keras``) is logged to that run first, then registered.

    Args:
        model: the new WaveNet.
        data_dir: folder with manifest.json and shards.
        config: ``evaluate.registered_model_name`` and ``promotion_margin_bits``.
        model_uri: where ``model`` came from (``runs:/``, ``models:/`` or a path).
        counts: training code counts (computed when omitted).
        data_label: how the data is named in reports (default ``data_dir``).
        split: which examples both models are scored on (see :func:`score_models`).

    Returns:
        ``{"promoted": bool, "reason": str, "registered_model": name,
        "new_bits": float, "champion_bits": float | None, "improvement_bits":
        float | None, "margin": float, "champion_version": str | None (the
        champion compared against), "new_version": str | None (registered when
        promoted), "already_champion": the evaluated model is the champion
        itself (a reused model), "registered_uri": the MLflow model URI registered (None when
        kept), "champion_uri": "models:/NAME@champion", "compared_labels": the
        data labels whose windows both models were scored on, "labels_champion_lacks":
        data labels the champion was never trained on (the comparison leaves
        them out; new_bits is then the candidate's score on compared_labels),
        "notes": models without a recorded vocabulary, "evaluation": the
        scores of the new model on the shared windows (see :func:`score_models`)}``.
    """
    name = config.evaluate.registered_model_name
    margin = float(config.evaluate.promotion_margin_bits)
    counts = counts or training_code_counts(data_dir, model.config.quantization_channels)
    source, new_version = None, None
    # Compare-and-set under the registry's gate lock: scoring (slow) runs unlocked
    # against the champion read first; the alias moves only if, under the lock, the
    # champion is still the one compared against. Otherwise another gate promoted
    # meanwhile, and this model is scored again against the new champion.
    for _ in range(MAX_GATE_ROUNDS):
        champion = registry.get_champion(name)
        scores, champion_bits, promoted, reason, label_info = _compare(
            model, data_dir, config, champion, counts, split, model_uri, margin)
        # The candidate's number that was compared: on the labels both models know.
        new_bits = scores["shared"]["models"][0] if champion_bits is not None else scores["models"][0]
        if not promoted:
            break
        _test_pause_before_promotion()
        source = source or _registrable_source(model, model_uri, name)
        with registry.champion_lock(name) as lock:
            current = registry.get_champion(name)
            if _version(current) == _version(champion):
                new_version = _promote(source, lock, {
                    "eval/bits_per_sample": f"{scores['models'][0]:.6f}",
                    "data.version": read_manifest(data_dir).data_version,
                    "data.uri": data_label or data_dir,
                    "train.run_id": tracking.model_run_id(source) or "",
                    "eval.run_id": tracking.active_run_id() or ""})
                break
    else:
        raise TrackingError(f"the champion of {name!r} changed {MAX_GATE_ROUNDS} times while "
                            "this gate scored; run the gate again")
    if not promoted:
        source = None
    already = champion is not None and _is_champion_uri(model_uri, name, champion.version)
    decision = {
        "promoted": promoted,
        "already_champion": already,
        "reason": reason,
        "registered_model": name,
        "new_bits": new_bits,
        "champion_bits": champion_bits,
        "improvement_bits": None if champion_bits is None else champion_bits - new_bits,
        "margin": margin,
        "champion_version": champion.version if champion else None,
        "new_version": new_version,
        "registered_uri": source,
        "champion_uri": f"models:/{name}@{registry.CHAMPION}",
        **label_info,
    }
    if tracking.active_run_id():
        # The candidate's own score is eval/bits_per_sample (logged by evaluate): one name per number.
        tracking.log_metrics({"gate/champion_bits": champion_bits,
                              "gate/improvement_bits": decision["improvement_bits"],
                              "gate/promoted": float(promoted)})
        tracking.set_tags({"gate.decision": "promoted" if promoted else "kept",
                           "gate.reason": reason, "gate.registered_model": name,
                           "gate.champion_version": decision["champion_version"] or "",
                           "gate.new_version": new_version or ""})
        tracking.log_dict(decision, "gate.json")
    decision["evaluation"] = scores
    return decision


# evaluate() takes a `gate` flag, which shadows the function inside it.
_gate = gate


# -- the verb -------------------------------------------------------------------

def _label_names(manifest: Manifest) -> list[str]:
    return [str(x) for x in manifest.labels]


def holdout_kinds(manifest: Manifest) -> dict[str, str]:
    """How each label's validation audio was held out: ``"tracks"``, ``"tail"`` or ``"tracks+tail"``.

    Whole validation tracks were never heard in training; a held-out tail
    (a label with one track) shares its recording with training audio, so its
    score is optimistic. Labels without validation audio are absent.
    """
    kinds: dict[str, set[str]] = {}
    for f in manifest.files:
        if f.split in ("validation", "tail"):
            kinds.setdefault(f.label, set()).add("tracks" if f.split == "validation" else "tail")
    return {label: "+".join(sorted(k, reverse=True)) for label, k in kinds.items()}


def _report(scores: dict[str, Any], index: int, names: list[str]) -> dict[str, Any]:
    """The result dict of one model from :func:`score_models` output."""
    bits = scores["models"][index]
    base = scores["baselines"]
    per_label = {}
    for label, t in scores["per_label"].items():
        key = names[label] if label < len(names) else str(label)
        per_label[key] = {"label_id": label, "bits_per_sample": t["models"][index],
                          "samples": t["samples"], "windows": t["windows"],
                          "baselines": t["baselines"]}
    return {
        "bits_per_sample": bits,
        "baselines": base,
        "improvement_over_bigram_bits": base["bigram"] - bits,
        "improvement_over_unigram_bits": base["unigram"] - bits,
        "samples": scores["samples"],
        "windows": scores["windows"],
        "context": scores["context"],
        "window": scores["window"],
        "per_label": per_label,
    }


def evaluate(model, data_dir: str, config: ExperimentConfig, *, out_dir: str | None = None,
             gate: bool = False, tracking_uri: str | None = None, experiment: str | None = None,
             run_name: str | None = None, split: str = "validation") -> dict[str, Any]:
    """Validation bits per sample next to baselines; optionally gate against the champion.

    Args:
        model: a ``.keras`` path, an MLflow model URI (``runs:/ID/model``,
            ``models:/NAME@champion``), or a loaded WaveNet.
        data_dir: folder (local or gs://) with manifest.json and shards.
        config: the experiment config (the model's own architecture is used,
            whatever ``config.model`` says).
        out_dir: where ``metrics.json`` is written (atomic); optional.
        gate: also compare with the champion and promote (see :func:`gate`).
        tracking_uri: MLflow URI (default $MLFLOW_TRACKING_URI, else ./mlflow.db).
        experiment: MLflow experiment (default: the training run's for a
            ``runs:/`` model, else ``config.name``).
        run_name: MLflow run name (default "evaluate").
        split: ``"validation"`` (the held-out split; baselines counted on the
            training split), or ``"all"``: every example of ``data_dir``, e.g. a
            test folder preprocessed on its own; the baselines are then counted
            on the same examples they score (in-sample, so harder to beat).

    Returns:
        ``{"model", "data", "split", "baselines_counted_on", "holdout" (per
        label: "tracks", "tail", "tracks+tail"; "all" for split all),
        "labels_not_scored" (vocabulary labels without a scored window),
        "bits_per_sample", "baselines": {"uniform",
        "unigram", "bigram"}, "improvement_over_bigram_bits",
        "improvement_over_unigram_bits", "samples", "windows", "context",
        "window", "per_label": {name: {"label_id", "bits_per_sample", "samples",
        "windows", "baselines"}}, "conditioned", "receptive_field", "run_id",
        "metrics_path"}`` plus ``"gate"`` (see :func:`gate`, without
        ``evaluation``) and ``"promoted"`` when ``gate`` is true. Bits are per
        predicted sample.
    """
    model_uri = model if isinstance(model, str) else None
    manifest = read_manifest(data_dir)
    eval_shards(manifest, data_dir, split)  # a bad split or nothing to score: one line, before any run
    net = registry.load_wavenet(model, tracking_uri) if isinstance(model, str) else model
    _check_model_fits_data(net, manifest, model_uri or "the model", data_dir)
    check_evaluation([net.config], config)  # an absurd batch: one line, before the MLflow run
    check_shards(data_dir, eval_shards(manifest, data_dir, split))  # before the MLflow run
    ecfg = dataclasses.replace(config, model=net.config, audio=net.audio_config)
    count_splits = ("train", "validation") if split == "all" else ("train",)
    counts = training_code_counts(data_dir, net.config.quantization_channels, count_splits)
    names = _label_names(manifest)

    exp, tags = tracking.run_placement(model_uri, experiment, config.name)
    tags.update({"wavenet.stage": "evaluate", "wavenet.model": model_uri or "<in memory>",
                 "wavenet.data": data_dir})
    params = {**ecfg.flat(), "eval.model": model_uri or "<in memory>", "eval.data": data_dir,
              "eval.gate": gate, "eval.split": split}
    with tracking.start_run(exp, run_name=run_name or "evaluate", tracking_uri=tracking_uri, tags=tags,
                   params=params) as run:
        if gate:
            decision = _gate(net, data_dir, ecfg, model_uri=model_uri, counts=counts, split=split)
            scores = decision.pop("evaluation")
        else:
            decision = None
            scores = score_models([net], data_dir, ecfg, counts, split=split)
        report = _report(scores, 0, names)
        holdout = holdout_kinds(manifest) if split == "validation" else {}
        for label, t in report["per_label"].items():
            # "unknown": a manifest without per-track entries.
            t["holdout"] = holdout.get(label, "unknown") if split == "validation" else split
        result: dict[str, Any] = {"model": model_uri or "<in memory>", "data": data_dir,
                                  "split": split, "baselines_counted_on": "+".join(count_splits),
                                  "labels_not_scored": [n for n in names if n not in report["per_label"]],
                                  **report,
                                  "conditioned": net.config.conditioned,
                                  # The model's vocabulary (None: saved without one; its ids
                                  # were then taken to be the data's).
                                  "model_labels": None if net.labels is None else list(net.labels),
                                  "receptive_field": net.receptive_field,
                                  "run_id": run.info.run_id}
        if decision is not None:
            result["gate"] = decision
            result["promoted"] = decision["promoted"]
        metrics = {"eval/bits_per_sample": result["bits_per_sample"],
                   "eval/samples": result["samples"], "eval/windows": result["windows"],
                   "eval/improvement_over_bigram_bits": result["improvement_over_bigram_bits"]}
        for n, v in result["baselines"].items():
            metrics[f"eval/baseline_{n}_bits"] = v
        for label, t in result["per_label"].items():
            metrics[tracking.metric_key("eval", "label", label, "bits_per_sample")] = \
                t["bits_per_sample"]
            metrics[tracking.metric_key("eval", "label", label, "samples")] = t["samples"]
        # Each metric on one run. The model's training run (reached from a runs:/, models:/m-
        # or registry URI) holds its score on its own validation split: the data version its
        # run was tagged with, or any when untagged. In the runs table and the compare view that
        # gives a row per model, next to val_bits_per_sample. Another data version, or
        # --split all, is not that score: it stays on this evaluation run, as does a .keras
        # file's. The gate's decision and metrics.json stay on this run too.
        src_run = tracking.model_run_id(model_uri) if model_uri else None
        trained_on = tracking.run_tag(src_run, "data.version") if src_run else None
        if split != "validation" or trained_on not in (None, manifest.data_version):
            src_run = None
        if src_run:
            tracking.log_metrics_to_run(src_run, metrics)
        else:
            tracking.log_metrics(metrics)
        result["metrics"] = metrics
        tracking.set_tags({"eval.split": split, "eval.metrics_run_id": src_run or run.info.run_id,
                           "eval.labels_not_scored": ", ".join(result["labels_not_scored"]) or "none"})
        result["metrics_path"] = storage.join(out_dir, METRICS_FILE) if out_dir else None
        text = json.dumps(result, indent=2, sort_keys=True)
        if out_dir:
            storage.write_text_atomic(result["metrics_path"], text)
        with tempfile.TemporaryDirectory() as tmp:
            with open(os.path.join(tmp, METRICS_FILE), "w") as f:
                f.write(text)
            tracking.log_artifacts([os.path.join(tmp, METRICS_FILE)], "evaluation")
    return result
