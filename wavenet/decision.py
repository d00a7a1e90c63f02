"""How a run's decisions read: the gate's and a reused model's, one line each.

Pure text from :func:`wavenet.evaluate.gate`'s decision dict (also ``metrics.json``'s
``"gate"``) and :func:`wavenet.reuse.train_or_reuse`'s summary; no TensorFlow or
MLflow, so the pipeline's launcher can print them. The report shows the same words.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

__all__ = ["verdict", "gate_line", "reuse_line"]


def verdict(gate: Mapping[str, Any]) -> str:
    """``"promoted"``, ``"rejected"``, or ``"kept"`` (the evaluated model already is the champion)."""
    if gate.get("promoted"):
        return "promoted"
    if gate.get("already_champion"):
        return "kept"
    return "rejected"


def gate_line(gate: Mapping[str, Any]) -> str:
    """One line with the numbers, e.g. ``rejected: 4.1200 bits/sample vs champion 3.8000 (...)``."""
    new, champ = gate.get("new_bits"), gate.get("champion_bits")
    margin, name = float(gate.get("margin") or 0.0), gate.get("registered_model", "the model")
    word = verdict(gate)
    if word == "kept":
        return (f"kept: this model is already {name} version {gate.get('champion_version')}, "
                f"the champion ({new:.4f} bits/sample)")
    if champ is None:
        return (f"promoted: {new:.4f} bits/sample, no champion yet; now {name} version "
                f"{gate.get('new_version')}, the champion")
    needs = f"needs <= {champ - margin:.4f} = champion - margin {margin:g}"
    if word == "promoted":
        return (f"promoted: {new:.4f} bits/sample vs champion {champ:.4f} ({needs}); now {name} "
                f"version {gate.get('new_version')}, the champion")
    return (f"rejected: {new:.4f} bits/sample vs champion {champ:.4f} ({needs}); "
            f"{name} version {gate.get('champion_version')} stays the champion")


def reuse_line(summary: Mapping[str, Any]) -> str:
    """The one line that says training was skipped, and how to force it (from a reuse summary)."""
    run_id, run_name = summary.get("run_id"), summary.get("run_name")
    run = f"run {run_name} ({run_id})" if run_name else f"run {run_id}"
    return (f"train: skipped, {summary.get('registered_model')} version "
            f"{summary.get('registered_version')} ({run}) was trained on the same data "
            f"d{str(summary.get('data_version'))[:8]}, config and seed; force_train "
            f"(make run FORCE=1, --force-train) trains again")
