"""Run the ``wavenet-train`` pipeline on this machine with ``kfp.local`` (``make run``).

Every step runs as a subprocess of the current Python (``SubprocessRunner(use_venv=False)``):
the same component code as on a cluster, with local worker processes for training and a
local SQLite MLflow store. Outputs land under ``runs/pipeline/<run>/``; the script ends by
printing where the model, samples and report are and how to open the MLflow UI.

Usage: ``python -m pipelines.run_local [--data PATH_OR_GS] [--preset demo] [--set KEY=VALUE ...]``
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

from pipelines.terminal import filtered_terminal

PIPELINE_ROOT = os.path.join("runs", "pipeline")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m pipelines.run_local", description=__doc__.splitlines()[0])
    p.add_argument("--data", default="", metavar="PATH_OR_GS",
                   help="folder or gs://bucket/prefix of audio (default: synthesise the demo corpus)")
    p.add_argument("--preset", default="demo", help="config preset (default demo)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config field, e.g. --set train.steps=100 (repeatable)")
    p.add_argument("--workers", type=int, default=2, help="local training worker processes (default 2)")
    p.add_argument("--steps", type=int, default=0,
                   help="training steps, shorthand for --set train.steps=N (default: the preset's)")
    p.add_argument("--partitions", type=int, default=2, help="parallel preprocessing tasks (default 2)")
    p.add_argument("--demo-seconds", type=float, default=0.0,
                   help="seconds per genre of the demo corpus (default: its own)")
    p.add_argument("--shards-uri", default="", help="persistent shards prefix: reuse preprocessing")
    p.add_argument("--warm-start", action="store_true", help="start from the registered champion")
    p.add_argument("--root", default=PIPELINE_ROOT, help=f"pipeline root (default {PIPELINE_ROOT})")
    p.add_argument("--tracking-uri", default=None,
                   help="MLflow URI (default $MLFLOW_TRACKING_URI, else sqlite:///./mlflow.db)")
    p.add_argument("--experiment", default="wavenet", help="MLflow experiment (default wavenet)")
    p.add_argument("--force-train", action="store_true",
                   help="train even when a registered model came from the same data, config and "
                   "seed (default: reuse it; `make run FORCE=1`)")
    p.add_argument("--no-report-if-rejected", dest="report_if_rejected", action="store_false",
                   help="generate samples only when the gate promotes the model")
    return p


def overrides_yaml(pairs: list[str]) -> str:
    """``--set k=v`` pairs -> the pipeline's YAML overrides string (dotted keys)."""
    import yaml

    from wavenet.config import parse_override

    return yaml.safe_dump(dict(parse_override(o) for o in pairs)) if pairs else ""


def _find(run_dir: Path, task: str) -> list[Path]:
    """Task folders named ``task`` anywhere under the run (conditions nest them)."""
    return sorted(p for p in run_dir.rglob(task) if p.is_dir())


def _executor_output(task_dir: Path) -> dict[str, Any]:
    f = task_dir / "executor_output.json"
    return json.loads(f.read_text()) if f.exists() else {}


def _read_json(f: Path) -> dict[str, Any] | None:
    return json.loads(f.read_text()) if f.exists() else None


def summarize(run_dir: Path) -> dict[str, Any]:
    """Where a finished local run's outputs are (paths are None when a step did not run)."""
    out: dict[str, Any] = {"run_dir": str(run_dir), "model": None, "shards": None, "samples": None,
                           "wavs": [], "report": None, "evaluation": None, "promoted": None,
                           "train_run_id": None, "train": None, "gate": None}
    for d in _find(run_dir, "merge-shards"):
        out["shards"] = str(d / "shards")
    for d in _find(run_dir, "train-model"):
        if (d / "model" / "model.keras").exists():
            out["model"] = str(d / "model" / "model.keras")
        out["train_run_id"] = _executor_output(d).get("parameterValues", {}).get("Output")
        out["train"] = _read_json(d / "model" / "train_summary.json")
    for d in _find(run_dir, "evaluate-model"):
        out["evaluation"] = str(d / "evaluation")
        out["promoted"] = _executor_output(d).get("parameterValues", {}).get("promoted")
        metrics = d / "evaluation" / "metrics.json"
        out["gate"] = (_read_json(metrics) or {}).get("gate")
        if metrics.exists():
            out["metrics_file"] = str(metrics)
    for d in _find(run_dir, "generate-samples") + _find(run_dir, "generate-samples-2"):
        samples = d / "samples"
        if samples.is_dir():
            out["samples"] = str(samples)
            out["wavs"] = sorted(str(p) for p in samples.rglob("*.wav"))
            report = samples / "report.html"
            out["report"] = str(report) if report.exists() else None
            out["clips"] = clip_lines((_read_json(samples / "samples.json") or {}).get("clips", []))
    return out


def clip_lines(clips: list[dict[str, Any]]) -> list[str]:
    """One line per generated clip: its file, the label it was asked for, its checks' verdict."""
    lines = []
    for c in clips:
        asked = f"asked for {c['label']}" if c.get("label") is not None else "unconditioned"
        checks = c.get("checks") or []
        passed = sum(bool(k["passed"]) for k in checks)
        verdict = f"{passed}/{len(checks)} calibrated checks passed" if checks else "no calibrated checks"
        lines.append(f"{c['name']}: {asked}, {verdict}")
    return lines


def _latest_run(root: Path, before: set[Path]) -> Path | None:
    runs = [p for p in root.glob("wavenet-train-*") if p.is_dir() and p not in before]
    return max(runs, key=lambda p: p.stat().st_mtime) if runs else None


def run(args: argparse.Namespace, runner: Any = None) -> dict[str, Any]:
    """Run the pipeline locally; returns :func:`summarize` of the run plus wall time.

    Args:
        args: the parsed command line.
        runner: a ``kfp.local`` runner; None: ``SubprocessRunner(use_venv=False)``
            (``devtools.run_containers`` passes a ``DockerRunner``).
    """
    from kfp import local

    from pipelines.wavenet_train import wavenet_train
    from wavenet.config import resolve_config
    from wavenet.edges.tracking import resolve_tracking_uri

    overrides = args.overrides + ([f"train.steps={args.steps}"] if args.steps else [])
    overrides_text = overrides_yaml(overrides)
    resolve_config(args.preset, None, overrides)  # bad presets/overrides fail here, in one line
    if args.data and not args.data.startswith("gs://") and not os.path.isdir(args.data):
        from wavenet.errors import DataError

        raise DataError(f"--data must be a folder or gs:// prefix. Received: {args.data!r}")
    data = args.data if args.data.startswith("gs://") or not args.data else os.path.abspath(args.data)
    tracking_uri = resolve_tracking_uri(args.tracking_uri)
    root = Path(args.root).resolve()
    root.mkdir(parents=True, exist_ok=True)
    before = set(root.glob("wavenet-train-*"))

    local.init(runner=runner or local.SubprocessRunner(use_venv=False), pipeline_root=str(root),
               raise_on_error=True)
    t0 = time.perf_counter()
    wavenet_train(source_uri=data, demo_seconds=args.demo_seconds, preset=args.preset,
                  overrides_yaml=overrides_text, partitions=args.partitions, shards_uri=args.shards_uri,
                  num_workers=args.workers, train_on_cluster=False,
                  warm_start=args.warm_start, mlflow_tracking_uri=tracking_uri,
                  mlflow_experiment=args.experiment, generate_if_rejected=args.report_if_rejected,
                  force_train=args.force_train)
    wall = time.perf_counter() - t0
    run_dir = _latest_run(root, before)
    summary = summarize(run_dir) if run_dir else {"run_dir": None}
    from wavenet.edges.tracking import experiment_id

    summary.update({"wall_s": round(wall, 1), "tracking_uri": tracking_uri,
                    "experiment": args.experiment,
                    "experiment_id": experiment_id(args.experiment, tracking_uri)})
    return summary


def _say(line: str = "") -> None:
    # Not print(): kfp.local 2.17 can leave builtins.print patched with an indent after
    # a ParallelFor, which would indent this summary.
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def _gate_text(s: dict[str, Any]) -> str:
    if s.get("gate"):
        from wavenet.decision import gate_line

        return gate_line(s["gate"])
    return {True: "promoted: this model is now the registered champion",
            False: "rejected: the champion stays"}.get(s.get("promoted"), "unknown")


def print_summary(s: dict[str, Any]) -> None:
    _say()
    _say(f"Pipeline finished in {s['wall_s']:.0f} s. Outputs under {s['run_dir']}:")
    _say(f"  shards    {s.get('shards')}")
    _say(f"  model     {s.get('model')}")
    _say(f"  metrics   {s.get('metrics_file') or s.get('evaluation')}")
    if (s.get("train") or {}).get("reused"):
        from wavenet.decision import reuse_line

        _say("  " + reuse_line(s["train"]))
    _say(f"  gate      {_gate_text(s)}")
    if s.get("samples"):
        _say(f"  samples   {len(s['wavs'])} WAV files in {s['samples']}")
        _say(f"  report    {s.get('report')}  (open it in a browser to listen)")
        for line in s.get("clips") or []:
            _say(f"    {line}")
    else:
        _say("  samples   none (the gate rejected the model)")
    if s.get("log"):
        _say(f"  full log  {s['log']}")
    from wavenet.edges.tracking import experiment_page

    _say(f"MLflow: experiment '{s['experiment']}' at {s['tracking_uri']}")
    if str(s["tracking_uri"]).startswith("sqlite:"):
        _say(f"  open the UI with `{s.get('ui_command') or 'make ui'}`, then "
             f"{experiment_page('http://127.0.0.1:5000', s.get('experiment_id'))}")
    else:
        _say(f"  open {experiment_page(s['tracking_uri'], s.get('experiment_id'))} in a browser")


def log_path(root: str) -> Path:
    """Where a run's full, unfiltered output goes: ``ROOT/logs/run-<UTC>.log``."""
    stamp = datetime.datetime.now(datetime.UTC).strftime("%Y%m%dT%H%M%SZ")
    path = Path(root).resolve() / "logs" / f"run-{stamp}.log"
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


def failure_line(e: BaseException, log_hint: str) -> int:
    """Write the one line for a run that did not finish; its exit status.

    A :class:`~wavenet.errors.WavenetError` (bad input, a refused service) is 2; a
    ``RuntimeError`` is kfp.local's after a failed task (the task's own log says why): 1.
    """
    from wavenet.errors import WavenetError

    if isinstance(e, WavenetError):
        sys.stderr.write(f"error: {e}\n")
        return 2
    sys.stderr.write(f"error: pipeline failed: {str(e).splitlines()[0] if str(e) else e} "
                     f"({log_hint})\n")
    return 1


def main(argv: list[str] | None = None, parser: argparse.ArgumentParser | None = None,
         run_fn=None) -> int:
    # The edge, before any step imports TensorFlow (the steps inherit it): C++ log messages
    # below ERROR (oneDNN notices, CPU feature notes) are dropped.
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    args = (parser or build_parser()).parse_args(argv)
    from wavenet.errors import WavenetError

    log = log_path(args.root)
    _say(f"Full log (kfp.local's executor dumps and known-harmless warnings included): {log}")
    try:
        with filtered_terminal(str(log)):
            summary = (run_fn or run)(args)
    except (WavenetError, RuntimeError) as e:
        return failure_line(e, f"full log: {log}")
    summary["log"] = str(log)
    print_summary(summary)
    return 0


if __name__ == "__main__":
    sys.exit(main())
