"""Screenshots of the MLflow UI over a local store, taken with headless Chromium.

Starts ``mlflow ui`` on a free port of 127.0.0.1 over STORE (``mlflow.db`` and its
``mlruns/``, as ``make run`` leaves them), then saves, for the experiment EXPERIMENT:

* ``experiment.png``: the experiment page (the runs table, as it opens),
* ``run.png``: the newest training run's page,
* ``compare.png``: the compare view of its training runs (at most 5),
* ``experiment.html``: the experiment page's DOM after its scripts ran (``--dump-dom``),

and prints a JSON summary: the files, and which of the key metric names the page's DOM
shows (``eval/bits_per_sample``, ``val_bits_per_sample``, ...).

Needs Debian's ``chromium`` (``apt-get install chromium``; or ``--chromium PATH``).
Playwright's own Chromium downloads from a CDN this project's machines cannot reach.

Usage::

    python scripts/mlflow_screenshots.py --store . --experiment wavenet --out shots/
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from mlflow import MlflowClient

KEY_METRICS = ("eval/bits_per_sample", "eval/baseline_bigram_bits", "val_bits_per_sample",
               "train_bits_per_sample")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_ui(store: Path, port: int, log: Path) -> subprocess.Popen:
    """``mlflow ui`` over ``store`` on 127.0.0.1:``port``; waits for /health (5 minutes at most: a busy machine)."""
    mlflow_bin = Path(sys.executable).with_name("mlflow")
    cmd = [str(mlflow_bin), "ui", "--backend-store-uri", f"sqlite:///{store / 'mlflow.db'}",
           "--artifacts-destination", str(store / "mlartifacts"), "--host", "127.0.0.1",
           "--port", str(port), "--workers", "1"]
    proc = subprocess.Popen(cmd, stdout=log.open("w"), stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"mlflow ui exited with {proc.returncode}; see {log}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as r:
                if r.status == 200:
                    return proc
        except OSError:
            time.sleep(1)
    proc.terminate()
    raise RuntimeError(f"mlflow ui did not answer on port {port} within 300 s; see {log}")


def chromium(binary: str, url: str, *, screenshot: Path | None = None, budget_ms: int = 20000) -> str:
    """Load ``url`` headless; save a screenshot, or return the DOM after scripts ran."""
    args = [binary, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
            "--window-size=1600,1000", f"--virtual-time-budget={budget_ms}"]
    args += [f"--screenshot={screenshot}"] if screenshot else ["--dump-dom"]
    try:
        done = subprocess.run(args + [url], capture_output=True, text=True, timeout=600)
    except subprocess.TimeoutExpired:
        raise SystemExit(f"error: chromium did not finish {url} within 600 s (a busy machine?)") \
            from None
    return done.stdout


def training_runs(store: Path, experiment: str) -> tuple[str, list[str]]:
    """The experiment's id and its training runs, newest first."""
    client = MlflowClient(f"sqlite:///{store / 'mlflow.db'}")
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        raise SystemExit(f"error: no experiment {experiment!r} in {store / 'mlflow.db'}")
    runs = client.search_runs([exp.experiment_id], "tags.`wavenet.stage` = 'train'",
                              order_by=["attributes.start_time DESC"])
    return exp.experiment_id, [r.info.run_id for r in runs]


def take(store: Path, experiment: str, out: Path, binary: str) -> dict:
    """Start the UI, take the screenshots and the DOM, stop the UI; the JSON summary."""
    out.mkdir(parents=True, exist_ok=True)
    exp_id, runs = training_runs(store, experiment)
    port = free_port()
    ui = start_ui(store, port, out / "mlflow-ui.log")
    base = f"http://127.0.0.1:{port}/#"
    try:
        ml = "workflowType=machine_learning"
        pages = {"experiment": f"{base}/experiments/{exp_id}?{ml}"}
        if runs:
            pages["run"] = f"{base}/experiments/{exp_id}/runs/{runs[0]}?{ml}"
            ids = json.dumps(runs[:5]).replace(" ", "")
            pages["compare"] = f"{base}/compare-runs?runs={ids}&experiments=[\"{exp_id}\"]&{ml}"
        for name, url in pages.items():
            chromium(binary, url, screenshot=out / f"{name}.png")
        dom = chromium(binary, pages["experiment"])
        (out / "experiment.html").write_text(dom)
    finally:
        ui.terminate()
        ui.wait(timeout=30)
    return {"experiment_id": exp_id, "training_runs": len(runs), "pages": pages,
            "screenshots": sorted(str(p) for p in out.glob("*.png")),
            "metrics_in_experiment_page": [m for m in KEY_METRICS if m in dom]}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--store", default=".", help="folder with mlflow.db (default: .)")
    p.add_argument("--experiment", default="wavenet")
    p.add_argument("--out", default="mlflow-screenshots")
    p.add_argument("--chromium", default=shutil.which("chromium") or shutil.which("chromium-browser"))
    args = p.parse_args(argv)
    if not args.chromium:
        print("error: no chromium found (apt-get install chromium, or --chromium PATH)", file=sys.stderr)
        return 2
    store = Path(args.store).resolve()
    if not (store / "mlflow.db").exists():
        print(f"error: no mlflow.db in {store}", file=sys.stderr)
        return 2
    os.environ.setdefault("MLFLOW_TRACKING_URI", f"sqlite:///{store / 'mlflow.db'}")
    print(json.dumps(take(store, args.experiment, Path(args.out), args.chromium), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
