"""Scheduled retraining, end to end on this machine (``make retrain-demo``).

The story a recurring run tells, as two runs of the ``wavenet-train`` pipeline
(``kfp.local``, :mod:`pipelines.run_local`) on one MLflow store, one audio
folder and one persistent ``shards_uri``, both with ``warm_start``:

1. run 1 on a demo corpus of two genres (``organ``, ``strings``): every file is
   decoded, there is no champion yet, the model trains from scratch and becomes
   the champion;
2. new tracks arrive: another ``strings`` track and a new genre, ``drums``;
3. run 2: only the new files are decoded (the others' codes are reused from
   ``shards_uri``), the labels keep their ids (``drums`` is appended), training
   warm-starts from the champion (every weight; the label rows by name, the new
   genre's rows initialised) or says in one line why not, the gate scores
   windows of every label (the champion on the labels it knows) and the
   champion moves only when the new model is better.

A new genre needs one more label row: run 2 sets ``model.num_classes`` to the
number of genres (training refuses data with more labels than
``model.num_classes``, in one line). Everything both runs print goes to
``ROOT/logs/retrain-<UTC>.log``; the terminal gets a few lines per run, read
back from the manifest, MLflow and the registry (:func:`facts`).

Usage: ``python -m devtools.retrain_demo [--root runs/retrain-demo] [--preset tiny]``
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import shutil
import sys
from pathlib import Path
from typing import Any

ROOT = os.path.join("runs", "retrain-demo")
FIRST_GENRES = ("organ", "strings")
NEW_GENRE = "drums"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m devtools.retrain_demo",
                                description=__doc__.splitlines()[0])
    p.add_argument("--root", default=ROOT,
                   help=f"folder for the audio, shards, MLflow store and runs; emptied first (default {ROOT})")
    p.add_argument("--preset", default="tiny", help="config preset (default tiny)")
    p.add_argument("--seconds", type=float, default=6.0,
                   help="seconds of demo audio per genre and per batch of new tracks (default 6)")
    p.add_argument("--steps", type=int, default=0, help="training steps per run (default: the preset's)")
    p.add_argument("--workers", type=int, default=1, help="local training workers (default 1)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config field of both runs (repeatable)")
    p.add_argument("--tracking-uri", default=None,
                   help="MLflow server both runs log to, e.g. the cluster's through kubectl "
                        "port-forward (MLFLOW_TRACKING_USERNAME/PASSWORD from the environment); "
                        "default: a SQLite store under --root")
    return p


def _tracking_uri(args: argparse.Namespace, root: Path) -> str:
    return args.tracking_uri or f"sqlite:///{root / 'mlflow.db'}"


def _run_args(args: argparse.Namespace, root: Path, num_classes: int) -> argparse.Namespace:
    from pipelines.run_local import build_parser as run_parser

    argv = ["--data", str(root / "audio"), "--shards-uri", str(root / "shards"), "--warm-start",
            "--preset", args.preset, "--workers", str(args.workers), "--partitions", "1",
            "--root", str(root / "pipeline"), "--tracking-uri", _tracking_uri(args, root),
            "--experiment", "retrain-demo", "--no-report-if-rejected",
            "--set", f"model.num_classes={num_classes}"]
    for o in args.overrides:
        argv += ["--set", o]
    if args.steps:
        argv += ["--steps", str(args.steps)]
    return run_parser().parse_args(argv)


def _task_metadata(run_dir: str, task: str, artifact: str) -> dict[str, Any]:
    """The metadata a task wrote on one of its output artifacts (kfp.local's executor output)."""
    for d in sorted(Path(run_dir).rglob(task)):
        out = d / "executor_output.json"
        if out.exists():
            arts = json.loads(out.read_text()).get("artifacts", {}).get(artifact, {}).get("artifacts", [])
            if arts:
                return arts[0].get("metadata", {})
    return {}


def facts(summary: dict[str, Any], shards_uri: str, tracking_uri: str, model_name: str,
          champion_before: str | None) -> dict[str, Any]:
    """What one run did, read from the manifest, MLflow and the registry (not from its output).

    Returns:
        ``{"labels", "decoded", "reused", "data_version", "train_run_id", "warm_start"
        (the champion URI started from, or None), "warm_start_weights" (the training
        run's tag: which label rows were copied, which are new), "warm_start_line",
        "gate" (metrics.json's decision), "scored_labels", "labels_not_scored",
        "champion_before", "champion_after"}``.
    """
    from mlflow import MlflowClient

    from wavenet.data.manifest import read_manifest
    from wavenet.edges import registry, tracking

    manifest = read_manifest(shards_uri)
    tracking.use_tracking_uri(tracking_uri)
    meta = _task_metadata(summary["run_dir"], "train-model", "model")
    run_id = summary.get("train_run_id") or meta.get("run_id")
    tags = MlflowClient(tracking_uri).get_run(run_id).data.tags if run_id else {}
    metrics = json.loads(Path(summary["metrics_file"]).read_text()) if summary.get("metrics_file") else {}
    champion = registry.get_champion(model_name, tracking_uri)
    return {
        "labels": list(manifest.labels), "decoded": manifest.summary.processed,
        "reused": manifest.summary.unchanged, "data_version": manifest.data_version,
        "train_run_id": run_id, "warm_start": meta.get("warm_start_from") or None,
        "warm_start_tag": tags.get("warm_start"), "warm_start_weights": tags.get("warm_start.weights"),
        "warm_start_line": meta.get("warm_start", ""), "gate": metrics.get("gate"),
        "scored_labels": sorted(metrics.get("per_label", {})),
        "labels_not_scored": metrics.get("labels_not_scored"),
        "champion_before": champion_before, "champion_after": champion.version if champion else None,
    }


def describe(n: int, f: dict[str, Any], new_labels: list[str]) -> list[str]:
    """The few lines that tell what run ``n`` did."""
    from wavenet.decision import gate_line

    new = f"; new: {', '.join(new_labels)}" if new_labels else ""
    lines = [f"run {n}: data d{f['data_version']}: {f['decoded']} files decoded, {f['reused']} reused "
             f"from shards_uri; labels {', '.join(f['labels'])}{new}",
             f"  train  {f['warm_start_line'] or 'warm start: not asked for'}"]
    gate = f["gate"] or {}
    scored = f"scored on windows of {', '.join(f['scored_labels'])}"
    if gate.get("labels_champion_lacks"):
        scored += (f"; compared with the champion on {', '.join(gate['compared_labels'])} (it never "
                   f"saw {', '.join(gate['labels_champion_lacks'])})")
    lines.append(f"  gate   {gate_line(gate) if gate else 'did not run'}")
    lines.append(f"         {scored}")
    before, after = f["champion_before"], f["champion_after"]
    moved = (f"moved to version {after}" if before is None or after != before
             else f"stays version {after}")
    lines.append(f"  champion {moved}")
    return lines


def story(args: argparse.Namespace, say=print) -> list[dict[str, Any]]:
    """Run the two pipeline runs; returns :func:`facts` of each."""
    from pipelines.run_local import run
    from wavenet.config import resolve_config
    from wavenet.data.demo import make_demo_corpus
    from wavenet.edges import registry, tracking

    root = Path(args.root).resolve()
    if root.exists():
        shutil.rmtree(root)
    (root / "logs").mkdir(parents=True)
    cfg = resolve_config(args.preset, None, args.overrides)  # bad overrides: one line, before anything
    name, tracking_uri = cfg.evaluate.registered_model_name, _tracking_uri(args, root)
    log = root / "logs" / f"retrain-{datetime.datetime.now(datetime.UTC):%Y%m%dT%H%M%SZ}.log"
    say(f"Scheduled retraining demo under {root} (full log: {log})")
    audio = str(root / "audio")
    make_demo_corpus(audio, seconds_per_genre=args.seconds, seed=cfg.train.seed, genres=FIRST_GENRES)
    results, labels_before = [], []
    for n in (1, 2):
        if n == 2:
            # New tracks arrive: one more of a known genre, and a genre never seen before.
            more = make_demo_corpus(audio, seconds_per_genre=args.seconds, seed=cfg.train.seed,
                                    genres=("strings",), first_track=100)
            more += make_demo_corpus(audio, seconds_per_genre=args.seconds, seed=cfg.train.seed,
                                     genres=(NEW_GENRE,))
            say(f"new tracks: {', '.join(os.path.relpath(p, audio) for p in more)}")
        tracking.use_tracking_uri(tracking_uri)
        before = registry.get_champion(name, tracking_uri)
        genres = len(FIRST_GENRES) + (n == 2)
        say(f"run {n}: pipeline running (model.num_classes={genres}, warm_start, shards_uri "
            f"{root / 'shards'}) ...")
        with open(log, "a", encoding="utf-8") as f, contextlib.redirect_stdout(f), \
                contextlib.redirect_stderr(f):
            summary = run(_run_args(args, root, genres))
        f_n = facts(summary, str(root / "shards"), tracking_uri, name, before.version if before else None)
        f_n["wall_s"] = summary["wall_s"]
        for line in describe(n, f_n, [x for x in f_n["labels"] if x not in labels_before]
                             if labels_before else []):
            say(line)
        labels_before = f_n["labels"]
        results.append(f_n)
    say(f"MLflow: experiment 'retrain-demo' at {tracking_uri}; "
        + (f"open it with `make ui MLFLOW_STORE={root}`" if not args.tracking_uri
           else "open that address in a browser"))
    return results


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    args = build_parser().parse_args(argv)
    from pipelines.run_local import failure_line
    from wavenet.errors import WavenetError

    def say(line: str) -> None:
        sys.stdout.write(line + "\n")
        sys.stdout.flush()

    try:
        story(args, say)
    except (WavenetError, RuntimeError) as e:
        return failure_line(e, f"full log under {os.path.join(args.root, 'logs')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
