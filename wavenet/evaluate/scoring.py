"""Held-out scores: bits per sample of models and of three baselines on the same windows.

The model's score is the negative log-likelihood of the validation split in
bits per predicted sample (``-log2 p(x_t | x_<t)``, averaged), over every
window that :func:`wavenet.data.dataset.validation_dataset` cuts, so it is
deterministic. On exactly the same predicted samples three baselines are
scored, so a number means something on its own:

* uniform: ``log2(Q)`` bits (8 for 256 codes), a model that learnt nothing;
* unigram: the code histogram of the training split, additively smoothed;
* bigram: the code given the previous code, from the training split,
  additively smoothed (``evaluate.bigram_smoothing``).

A WaveNet should beat the bigram baseline clearly; one that only matches the
unigram has learnt the amplitude distribution and nothing about time.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import tensorflow as tf

from wavenet.config import ExperimentConfig
from wavenet.data import labels as vocab
from wavenet.data.dataset import local_shard_paths, parse_example, validation_dataset
from wavenet.data.manifest import Manifest, check_audio, check_scores, read_manifest
from wavenet.errors import DataError, one_line
from wavenet.memory import check_evaluation
from wavenet.model import bits_per_sample

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
        return count_codes((codes for codes, _, _ in ds.as_numpy_iterator()), quantization_channels)
    except tf.errors.OpError as e:
        raise DataError(f"cannot read training shards of {data_dir}: "
                        f"{one_line(e, with_type=False)}") from None


# -- model scores -----------------------------------------------------------------

def _bits_fn(model, context: int):
    """A compiled ``(crops, labels, notes) -> (B,)`` bits per sample of the last ``window`` codes.

    Crops carry ``context >= receptive_field`` codes in front of the scored
    window, so models with different receptive fields score the same samples.
    """
    return tf.function(lambda crops, labels, notes: bits_per_sample(model, crops, labels, context=context,
                                                                    notes=notes),
                       reduce_retracing=True)


def check_model_fits_data(model, manifest: Manifest, what: str, data_dir: str = "DATA", *,
                           allow_missing: bool = False) -> np.ndarray | None:
    """The model's id of each data label (by name), checking the audio settings too.

    Returns None for an unconditioned model. A data label the model never saw
    is a one-line DataError naming the label and ``what``, unless
    ``allow_missing`` (then its entry is :data:`wavenet.data.labels.MISSING`).
    """
    check_audio(data_dir, manifest, model.audio_config, prefix=f"{what}: audio")
    check_scores(model.config, manifest, what, data_dir)
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
            folder (:func:`wavenet.data.dataset.validation_dataset`).
        label_maps: per model, the model's id of each data label id
            (:func:`wavenet.data.labels.model_ids`; None for an unconditioned model);
            default: mapped by name, a data label a model never saw being a
            DataError. A window whose label a model never saw
            (:data:`wavenet.data.labels.MISSING`) is not scored for that model.

    Returns:
        ``{"context", "window", "samples", "windows", "models": [bits per sample
        over the windows each model scored], "baselines": {name: bits},
        "per_label": {label_id: {"samples", "windows", "models": [bits, or None
        for a model that never saw the label], "baselines": {...}}}, "shared":
        {"labels": [label ids every model scored], "samples", "models": [bits
        on those labels' windows]}}``.
    """
    _check_quantization(models, counts)
    check_evaluation([m.config for m in models], config, batch_size)  # before any batch exists
    widest = max(models, key=lambda m: m.receptive_field)
    ecfg = dataclasses.replace(config, model=widest.config, audio=widest.audio_config)
    context, window = widest.receptive_field, config.evaluate.window
    log2_probs = baseline_log2_probs(counts, config.evaluate.unigram_smoothing,
                                     config.evaluate.bigram_smoothing)
    if label_maps is None:
        manifest = read_manifest(data_dir)
        label_maps = [check_model_fits_data(m, manifest, "the model", data_dir) for m in models]
    fns = [_bits_fn(m, context) for m in models]
    ds = validation_dataset(data_dir, ecfg, batch_size or config.evaluate.batch_size, split=split,
                            scores=any(m.config.scored for m in models))
    per_label: dict[int, dict[str, Any]] = {}
    for crops, labels, notes in ds:
        lab = labels.numpy()
        base = _baseline_window_bits(crops.numpy(), context, window, log2_probs,
                                     counts.quantization_channels)
        _tally(per_label, lab, _model_window_bits(fns, label_maps, crops, lab, notes, window), base, window)
    if not per_label:
        raise DataError(f"no {split} example in {data_dir} is long enough to score: each needs "
                        f"receptive_field + evaluate.window = {context} + {window} codes")
    return _summarise(per_label, len(models), context, window)


def _check_quantization(models: Sequence, counts: CodeCounts) -> None:
    """At least one model, each with the quantisation the baselines were counted with."""
    if not models:
        raise ValueError("score_models needs at least one model")
    q = counts.quantization_channels
    for m in models:
        if m.config.quantization_channels != q:
            raise DataError(f"model has {m.config.quantization_channels} quantisation channels but "
                            f"the baselines were counted with {q}")


def _baseline_window_bits(crops: np.ndarray, context: int, window: int,
                          log2_probs: tuple[np.ndarray, np.ndarray], q: int) -> dict[str, np.ndarray]:
    """Summed bits of each baseline over the last ``window`` codes of each crop: {name: (B,)}."""
    uni, bi = log2_probs
    c = crops.astype(np.int64)
    targets, prev = c[:, context:], c[:, context - 1:-1]
    return {"uniform": np.full(len(c), math.log2(q) * window),
            "unigram": -uni[targets].sum(axis=1),
            "bigram": -bi[prev, targets].sum(axis=1)}


def _model_window_bits(fns: Sequence, label_maps: Sequence[np.ndarray | None], crops,
                       lab: np.ndarray, notes, window: int) -> list[np.ndarray]:
    """Summed bits per window of each model: a (B,) float64 array per model.

    In float64 so that thousands of windows add up exactly; each model sees its
    own ids of the data's labels (NaN: a label it never saw).
    """
    model_bits = []
    for fn, ids in zip(fns, label_maps, strict=True):
        seen = lab if ids is None else ids[lab]
        bits = fn(crops, np.maximum(seen, 0).astype(np.int32), notes).numpy().astype(np.float64) * window
        model_bits.append(np.where(seen >= 0, bits, np.nan))
    return model_bits


def _tally(per_label: dict[int, dict[str, Any]], lab: np.ndarray, model_bits: list[np.ndarray],
           base: dict[str, np.ndarray], window: int) -> None:
    """Add one batch's windows to the running sums of their labels."""
    for i, label in enumerate(lab.tolist()):
        t = per_label.setdefault(int(label), {
            "samples": 0, "windows": 0, "models": [0.0] * len(model_bits),
            "baselines": dict.fromkeys(BASELINES, 0.0)})
        t["samples"] += window
        t["windows"] += 1
        for j, b in enumerate(model_bits):
            t["models"][j] += float(b[i])  # NaN stays NaN: the label is not scored
        for name in BASELINES:
            t["baselines"][name] += float(base[name][i])


def _mean_bits(per_label: dict[int, dict[str, Any]], j: int, labels: Iterable[int]) -> float | None:
    """Model ``j``'s bits per sample over the windows of ``labels`` it scored (None: none)."""
    scored = [per_label[k] for k in labels if not math.isnan(per_label[k]["models"][j])]
    n = sum(t["samples"] for t in scored)
    return sum(t["models"][j] for t in scored) / n if n else None


def _summarise(per_label: dict[int, dict[str, Any]], n_models: int, context: int,
               window: int) -> dict[str, Any]:
    """:func:`score_models`'s result from the summed bits of each label."""
    samples = sum(t["samples"] for t in per_label.values())
    shared = sorted(k for k, t in per_label.items() if not any(math.isnan(b) for b in t["models"]))
    result: dict[str, Any] = {
        "context": context, "window": window, "samples": samples,
        "windows": sum(t["windows"] for t in per_label.values()),
        "models": [_mean_bits(per_label, j, per_label) for j in range(n_models)],
        "baselines": {n: sum(t["baselines"][n] for t in per_label.values()) / samples
                      for n in BASELINES},
        "per_label": {},
        "shared": {"labels": shared, "samples": sum(per_label[k]["samples"] for k in shared),
                   "models": [_mean_bits(per_label, j, shared) for j in range(n_models)]},
    }
    for label, t in sorted(per_label.items()):
        result["per_label"][label] = {
            "samples": t["samples"], "windows": t["windows"],
            "models": [None if math.isnan(b) else b / t["samples"] for b in t["models"]],
            "baselines": {n: v / t["samples"] for n, v in t["baselines"].items()},
        }
    return result

