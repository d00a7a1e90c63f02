"""The gate: the new model against the registered champion, on the same windows.

The new model and the registered model's ``champion`` are scored in one pass
over the same validation windows (:func:`wavenet.evaluate.scoring.score_models`);
the new model is registered and becomes champion only when it is better by
``evaluate.promotion_margin_bits`` (the first model becomes champion). The
alias moves under the registry's gate lock (:func:`wavenet.edges.registry.champion_lock`),
compare-and-set: two gates at once never crown a model that was not compared
against the champion it replaces.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from typing import Any

from wavenet.config import ExperimentConfig
from wavenet.data.manifest import audio_differences, read_manifest
from wavenet.edges import registry, tracking
from wavenet.errors import DataError, TrackingError
from wavenet.evaluate.scoring import (
    CodeCounts,
    check_model_fits_data,
    score_models,
    training_code_counts,
)


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
    the lock is still held right before (:meth:`wavenet.edges.registry.GateLock.set_champion`).
    """
    name = lock.name
    version = _version_of(source, name)
    if version is None:
        key = registry.train_key_of(tracking.model_run_id(source))
        version = registry.register(
            source, name, tags={**tags, **({registry.TRAIN_KEY_TAG: key} if key else {})}).version
    lock.set_champion(version)
    return version


def _audio_differences(champion_model, manifest) -> list[str]:
    """The audio settings where the champion differs from the data, e.g. ``["sample_rate 16000
    (the data: 8000)"]``; empty when it was trained on audio like this data's."""
    return [f"{name} {value} (the data: {made})"
            for name, value, made in audio_differences(manifest, champion_model.audio_config)]


def _load_champion(uri: str, manifest, data_dir: str, maps: list, notes: list[str]):
    """``(champion model or None, audio differences)``: None when it was trained on other audio
    than the data's (scored on these codes it would claim what it never heard); else its label
    map is appended to ``maps`` (and a note to ``notes`` where it records no vocabulary)."""
    champion_model = registry.load_wavenet(uri)
    other_audio = _audio_differences(champion_model, manifest)
    if other_audio:
        return None, other_audio
    maps.append(check_model_fits_data(champion_model, manifest, f"champion {uri}", data_dir,
                                       allow_missing=True))
    if champion_model.config.conditioned and champion_model.labels is None:
        notes.append("the champion records no label vocabulary: its ids are taken to be the data's")
    return champion_model, []


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
    maps = [check_model_fits_data(model, manifest, f"candidate {model_uri or 'model'}", data_dir)]
    notes = [] if not model.config.conditioned or model.labels is not None else [
        "the candidate records no label vocabulary: its ids are taken to be the data's"]
    champion_model, other_audio = (None, []) if champion is None or already else _load_champion(
        champion.uri, manifest, data_dir, maps, notes)
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
    if other_audio:
        return scores, None, False, (
            f"not promoted: champion {champion.uri} was trained on other audio than this data "
            f"({', '.join(other_audio)}): bits/sample at other audio settings do not compare. "
            f"A new line of champions takes a name of its own (evaluate.registered_model_name)"), info
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
    counts = counts or training_code_counts(data_dir, model.config.quantization_channels)
    outcome = _compare_and_set(model, data_dir, config, counts, split, model_uri, data_label)
    decision = _decision(outcome, config, model_uri)
    if tracking.active_run_id():
        _log_decision(decision)
    decision["evaluation"] = outcome.scores
    return decision


@dataclass(frozen=True)
class _Outcome:
    """What one gate compared and did (the fields of :func:`gate`'s decision)."""

    champion: registry.ModelRef | None  # the champion compared against
    scores: dict[str, Any]  # score_models' result: the candidate, then the champion
    champion_bits: float | None
    new_bits: float  # the candidate's number that was compared
    promoted: bool
    reason: str
    labels: dict[str, Any]  # compared_labels, labels_champion_lacks, notes
    registered_uri: str | None  # the model URI registered (None when kept)
    new_version: str | None


def _compare_and_set(model, data_dir: str, config: ExperimentConfig, counts: CodeCounts,
                     split: str, model_uri: str | None, data_label: str | None) -> _Outcome:
    """Score ``model`` against the champion and promote it if better, compare-and-set.

    Compare-and-set under the registry's gate lock: scoring (slow) runs unlocked
    against the champion read first; the alias moves only if, under the lock, the
    champion is still the one compared against. Otherwise another gate promoted
    meanwhile, and this model is scored again against the new champion.
    """
    name = config.evaluate.registered_model_name
    margin = float(config.evaluate.promotion_margin_bits)
    source, new_version = None, None
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
                new_version = _promote(source, lock, _version_tags(scores, data_dir, data_label, source))
                break
    else:
        raise TrackingError(f"the champion of {name!r} changed {MAX_GATE_ROUNDS} times while "
                            "this gate scored; run the gate again")
    return _Outcome(champion=champion, scores=scores, champion_bits=champion_bits,
                    new_bits=new_bits, promoted=promoted, reason=reason, labels=label_info,
                    registered_uri=source if promoted else None, new_version=new_version)


def _version_tags(scores: dict[str, Any], data_dir: str, data_label: str | None,
                  source: str) -> dict[str, str]:
    """The tags of a newly registered champion version: its score, data and runs."""
    return {"eval/bits_per_sample": f"{scores['models'][0]:.6f}",
            "data.version": read_manifest(data_dir).data_version,
            "data.uri": data_label or data_dir,
            "train.run_id": tracking.model_run_id(source) or "",
            "eval.run_id": tracking.active_run_id() or ""}


def _decision(outcome: _Outcome, config: ExperimentConfig, model_uri: str | None) -> dict[str, Any]:
    """:func:`gate`'s decision dict (without ``evaluation``)."""
    name = config.evaluate.registered_model_name
    champion, champion_bits = outcome.champion, outcome.champion_bits
    return {
        "promoted": outcome.promoted,
        "already_champion": champion is not None and _is_champion_uri(model_uri, name,
                                                                      champion.version),
        "reason": outcome.reason,
        "registered_model": name,
        "new_bits": outcome.new_bits,
        "champion_bits": champion_bits,
        "improvement_bits": None if champion_bits is None else champion_bits - outcome.new_bits,
        "margin": float(config.evaluate.promotion_margin_bits),
        "champion_version": champion.version if champion else None,
        "new_version": outcome.new_version,
        "registered_uri": outcome.registered_uri,
        "champion_uri": f"models:/{name}@{registry.CHAMPION}",
        **outcome.labels,
    }


def _log_decision(decision: dict[str, Any]) -> None:
    """The decision on the active MLflow run: metrics, tags and ``gate.json``."""
    # The candidate's own score is eval/bits_per_sample (logged by evaluate): one name per number.
    tracking.log_metrics({"gate/champion_bits": decision["champion_bits"],
                          "gate/improvement_bits": decision["improvement_bits"],
                          "gate/promoted": float(decision["promoted"])})
    tracking.set_tags({"gate.decision": "promoted" if decision["promoted"] else "kept",
                       "gate.reason": decision["reason"],
                       "gate.registered_model": decision["registered_model"],
                       "gate.champion_version": decision["champion_version"] or "",
                       "gate.new_version": decision["new_version"] or ""})
    tracking.log_dict(decision, "gate.json")

