"""The ``evaluate`` verb: score a model (optionally gate it), log it, write ``metrics.json``."""

from __future__ import annotations

import dataclasses
import json
import os
import tempfile
from typing import Any

from wavenet.config import ExperimentConfig
from wavenet.context import RunContext
from wavenet.data.dataset import eval_shards
from wavenet.data.manifest import Manifest, check_shards, read_manifest
from wavenet.edges import registry, storage, tracking
from wavenet.evaluate import gating
from wavenet.evaluate.scoring import (
    CodeCounts,
    check_model_fits_data,
    score_models,
    training_code_counts,
)
from wavenet.memory import check_evaluation

METRICS_FILE = "metrics.json"


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


def evaluate(model, data_dir: str, config: ExperimentConfig, ctx: RunContext | None = None, *,
             out_dir: str | None = None, gate: bool = False,
             split: str = "validation") -> dict[str, Any]:
    """Validation bits per sample next to baselines; optionally gate against the champion.

    Args:
        model: a ``.keras`` path, an MLflow model URI (``runs:/ID/model``,
            ``models:/NAME@champion``), or a loaded WaveNet.
        data_dir: folder (local or gs://) with manifest.json and shards.
        config: the experiment config (the model's own architecture is used,
            whatever ``config.model`` says).
        ctx: where the evaluation run is tracked (:class:`~wavenet.context.RunContext`: its
            MLflow URI; ``experiment``, default the training run's for a ``runs:/`` model,
            else ``config.name``; ``run_name``, default "evaluate"; the caller's
            environment). None: ``RunContext.create()`` (``MLFLOW_TRACKING_URI``, else
            ./mlflow.db).
        out_dir: where ``metrics.json`` is written (atomic); optional.
        gate: also compare with the champion and promote (see :func:`gate`).
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
    ctx = ctx if ctx is not None else RunContext.create()
    model_uri = model if isinstance(model, str) else None
    manifest = read_manifest(data_dir)
    eval_shards(manifest, data_dir, split)  # a bad split or nothing to score: one line, before any run
    net = registry.load_wavenet(model, ctx.tracking_uri) if isinstance(model, str) else model
    _check_before_the_run(net, manifest, data_dir, config, split, model_uri)
    ecfg = dataclasses.replace(config, model=net.config, audio=net.audio_config)
    count_splits = ("train", "validation") if split == "all" else ("train",)
    counts = training_code_counts(data_dir, net.config.quantization_channels, count_splits)
    exp, placement = tracking.run_placement(model_uri, ctx.experiment, config.name, ctx.tracking_uri)
    tags, params = _run_tags_and_params(ecfg, model_uri, data_dir, gate, split)
    with tracking.start_run(exp, run_name=ctx.run_name or "evaluate", tracking_uri=ctx.tracking_uri,
                            tags={**placement, **tags}, params=params, environ=ctx.environ) as run:
        scores, decision = _score_or_gate(net, data_dir, ecfg, counts, split, model_uri, gate)
        result: dict[str, Any] = {"model": model_uri or "<in memory>", "data": data_dir,
                                  "split": split, "baselines_counted_on": "+".join(count_splits),
                                  **_model_report(scores, net, manifest, split),
                                  "run_id": run.info.run_id}
        if decision is not None:
            result["gate"] = decision
            result["promoted"] = decision["promoted"]
        result["metrics"] = _log_scores(result, model_uri, manifest, run.info.run_id)
        _write_metrics(result, out_dir)
    return result


def _check_before_the_run(net, manifest: Manifest, data_dir: str, config: ExperimentConfig,
                          split: str, model_uri: str | None) -> None:
    """The checks that fail in one line before an MLflow run exists."""
    check_model_fits_data(net, manifest, model_uri or "the model", data_dir)
    check_evaluation([net.config], config)  # an absurd batch: one line, before the MLflow run
    check_shards(data_dir, eval_shards(manifest, data_dir, split))  # before the MLflow run


def _run_tags_and_params(ecfg: ExperimentConfig, model_uri: str | None, data_dir: str, gate: bool,
                         split: str) -> tuple[dict[str, str], dict[str, Any]]:
    """The evaluation run's own tags (beside its placement's) and its params."""
    tags = {"wavenet.stage": "evaluate", "wavenet.model": model_uri or "<in memory>",
            "wavenet.data": data_dir}
    params = {**ecfg.flat(), "eval.model": model_uri or "<in memory>", "eval.data": data_dir,
              "eval.gate": gate, "eval.split": split}
    return tags, params


def _score_or_gate(net, data_dir: str, ecfg: ExperimentConfig, counts: CodeCounts, split: str,
                   model_uri: str | None, gate: bool) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """``(scores, decision)``: the gate's (:func:`wavenet.evaluate.gating.gate`), or the
    model's scores alone with no decision."""
    if gate:
        decision = gating.gate(net, data_dir, ecfg, model_uri=model_uri, counts=counts, split=split)
        return decision.pop("evaluation"), decision
    return score_models([net], data_dir, ecfg, counts, split=split), None


def _model_report(scores: dict[str, Any], net, manifest: Manifest, split: str) -> dict[str, Any]:
    """The model's part of the result: its scores, how each label was held out, the model."""
    names = _label_names(manifest)
    report = _report(scores, 0, names)
    holdout = holdout_kinds(manifest) if split == "validation" else {}
    for label, t in report["per_label"].items():
        # "unknown": a manifest without per-track entries.
        t["holdout"] = holdout.get(label, "unknown") if split == "validation" else split
    return {"labels_not_scored": [n for n in names if n not in report["per_label"]],
            **report,
            "conditioned": net.config.conditioned,
            # The model's vocabulary (None: saved without one; its ids
            # were then taken to be the data's).
            "model_labels": None if net.labels is None else list(net.labels),
            "receptive_field": net.receptive_field}


def _eval_metrics(result: dict[str, Any]) -> dict[str, float]:
    """The MLflow metrics of an evaluation result: the score, baselines and each label's."""
    metrics = {"eval/bits_per_sample": result["bits_per_sample"],
               "eval/samples": result["samples"], "eval/windows": result["windows"],
               "eval/improvement_over_bigram_bits": result["improvement_over_bigram_bits"]}
    for n, v in result["baselines"].items():
        metrics[f"eval/baseline_{n}_bits"] = v
    for label, t in result["per_label"].items():
        metrics[tracking.metric_key("eval", "label", label, "bits_per_sample")] = \
            t["bits_per_sample"]
        metrics[tracking.metric_key("eval", "label", label, "samples")] = t["samples"]
    return metrics


def _log_scores(result: dict[str, Any], model_uri: str | None, manifest: Manifest,
                run_id: str) -> dict[str, float]:
    """Log the result's metrics (to the model's training run where they are its score): them."""
    metrics = _eval_metrics(result)
    # Each metric on one run. The model's training run (reached from a runs:/, models:/m-
    # or registry URI) holds its score on its own validation split: the data version its
    # run was tagged with, or any when untagged. In the runs table and the compare view that
    # gives a row per model, next to val_bits_per_sample. Another data version, or
    # --split all, is not that score: it stays on this evaluation run, as does a .keras
    # file's. The gate's decision and metrics.json stay on this run too.
    split = result["split"]
    src_run = tracking.model_run_id(model_uri) if model_uri else None
    trained_on = tracking.run_tag(src_run, "data.version") if src_run else None
    if split != "validation" or trained_on not in (None, manifest.data_version):
        src_run = None
    if src_run:
        tracking.log_metrics_to_run(src_run, metrics)
    else:
        tracking.log_metrics(metrics)
    tracking.set_tags({"eval.split": split, "eval.metrics_run_id": src_run or run_id,
                       "eval.labels_not_scored": ", ".join(result["labels_not_scored"]) or "none"})
    return metrics


def _write_metrics(result: dict[str, Any], out_dir: str | None) -> None:
    """``metrics.json``: to ``out_dir`` (atomic) when given, and to the run's artifacts."""
    result["metrics_path"] = storage.join(out_dir, METRICS_FILE) if out_dir else None
    text = json.dumps(result, indent=2, sort_keys=True)
    if out_dir:
        storage.write_text_atomic(result["metrics_path"], text)
    with tempfile.TemporaryDirectory() as tmp:
        with open(os.path.join(tmp, METRICS_FILE), "w") as f:
            f.write(text)
        tracking.log_artifacts([os.path.join(tmp, METRICS_FILE)], "evaluation")

