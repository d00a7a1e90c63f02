"""The MLflow UI as a person sees it, in headless Chromium: screenshots and what the pages show.

``make ui-screenshots`` (``python -m devtools.mlflow_ui --store . --experiment wavenet``)
starts ``mlflow ui`` on a free port of 127.0.0.1 over STORE (``mlflow.db`` and its
artifacts, as ``make run`` leaves them) and saves, for the experiment EXPERIMENT:

* ``experiment.png``: the link ``make run`` prints (the comparison view's runs table),
* ``charts.png``: the same view's charts,
* ``run.png``: the newest training run's page,
* ``compare.png``: MLflow's compare page for the last five training runs,

with each page's DOM after its scripts ran (``<page>.html``), and prints a JSON summary:
the files, the addresses, and the runs table's columns in the order shown.

Needs Debian's ``chromium`` (``apt-get install chromium``; or ``--chromium PATH``). Playwright's
own Chromium downloads from a CDN this project's machines cannot reach. Chromium is kept to
127.0.0.1: every other host name fails to resolve, and its background services are off.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path

from devtools.processes import stop_process
from wavenet.edges.tracking import wait_until_healthy
from wavenet.local_workers import free_ports

# No name but 127.0.0.1 resolves, and nothing runs in the background (updates, sync, field
# trials): the browser talks to the MLflow server on loopback and nowhere else.
LOOPBACK_ONLY = ["--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--disable-default-apps", "--disable-extensions", "--no-first-run",
                 "--disable-field-trial-config"]


def find_chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


def chromium(binary: str, url: str, *, screenshot: Path | None = None, budget_ms: int = 20000,
             width: int = 1600, timeout: float = 600) -> str:
    """Load ``url`` headless; save a screenshot, or return the DOM after the page's scripts ran.

    ``budget_ms`` is Chromium's virtual time: the page's timers run that long however slow the
    machine, so a busy machine takes longer, not a different page. The grid only renders the
    columns that fit the window's ``width``.
    """
    args = [binary, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
            f"--window-size={width},1000", f"--virtual-time-budget={budget_ms}", *LOOPBACK_ONLY]
    args += [f"--screenshot={screenshot}"] if screenshot else ["--dump-dom"]
    try:
        done = subprocess.run(args + [url], capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise RuntimeError(f"chromium did not finish {url} within {timeout:.0f} s") from None
    if done.returncode != 0:
        raise RuntimeError(f"chromium exited with {done.returncode} on {url}: "
                           f"{done.stderr.strip().splitlines()[-1:] or ''}")
    return done.stdout


@dataclass
class RunsTable:
    """The runs table's header, as MLflow's grid (ag-grid) lays it out."""

    pinned: list[str] = field(default_factory=list)   # column ids pinned at the left, in order
    columns: list[str] = field(default_factory=list)  # the other columns, left to right
    widths: dict[str, int] = field(default_factory=dict)  # column id -> width in pixels


class _GridHeader(HTMLParser):
    # Header cells are <div class="ag-header-cell ..." col-id=ID aria-colindex=N style="...width: Wpx">;
    # the pinned ones sit inside <div class="ag-pinned-left-header">. Group cells are left out.
    def __init__(self) -> None:
        super().__init__()
        self.stack: list[bool] = []  # per open div: inside the pinned-left header?
        self.cells: list[tuple[bool, int, str, int]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag != "div":
            return
        a = {k: v or "" for k, v in attrs}
        classes = a.get("class", "").split()
        pinned = (self.stack[-1] if self.stack else False) or "ag-pinned-left-header" in classes
        self.stack.append(pinned)
        if "ag-header-cell" in classes and "col-id" in a:
            width = 0
            for part in a.get("style", "").split(";"):
                key, _, value = part.partition(":")
                if key.strip() == "width" and value.strip().endswith("px"):
                    width = int(float(value.strip()[:-2]))
            self.cells.append((pinned, int(a.get("aria-colindex") or 0), a["col-id"], width))

    def handle_endtag(self, tag: str) -> None:
        if tag == "div" and self.stack:
            self.stack.pop()


def runs_table(dom: str) -> RunsTable:
    """The runs table's columns in the order a person sees them, from a page's DOM."""
    parser = _GridHeader()
    parser.feed(dom)
    table = RunsTable()
    seen: set[str] = set()
    for pinned, _, col, width in sorted(parser.cells, key=lambda c: (not c[0], c[1])):
        if col in seen:
            continue
        seen.add(col)
        (table.pinned if pinned else table.columns).append(col)
        table.widths[col] = width
    return table


def start_ui(store: Path, port: int, log: Path) -> subprocess.Popen:
    """``mlflow ui`` over ``store`` on 127.0.0.1:``port``; waits for /health (5 minutes at most: a busy machine)."""
    mlflow_bin = Path(sys.executable).with_name("mlflow")
    cmd = [str(mlflow_bin), "ui", "--backend-store-uri", f"sqlite:///{store / 'mlflow.db'}",
           "--artifacts-destination", str(store / "mlartifacts"), "--host", "127.0.0.1",
           "--port", str(port), "--workers", "1"]
    proc = subprocess.Popen(cmd, stdout=log.open("w"), stderr=subprocess.STDOUT,
                            env={**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"})
    if wait_until_healthy(f"http://127.0.0.1:{port}", 300, lambda: proc.poll() is None):
        return proc
    if proc.poll() is not None:
        raise RuntimeError(f"mlflow ui exited with {proc.returncode}; see {log}")
    stop_process(proc)
    raise RuntimeError(f"mlflow ui did not answer on port {port} within 300 s; see {log}")


# Chromium's virtual time per page: the charts fetch each run's metric history and draw it, so
# they get more than a table needs (with the table's 20 s, the charts' sections were missing
# from the DOM in 1 of 3 runs on a busy 2-core machine).
PAGE_BUDGET_MS = {"charts": 40000}


def budget_ms(page: str) -> int:
    """Chromium's virtual-time budget for one of :func:`pages`' pages."""
    return PAGE_BUDGET_MS.get(page, 20000)


def pages(ui_url: str, experiment_id: str, training_runs: list[str]) -> dict[str, str]:
    """The pages a person opens: the printed link (table and charts), a run, the compare page."""
    from wavenet.edges.tracking import TRAINING_VIEW, experiment_page

    link = experiment_page(ui_url, experiment_id)
    found = {"experiment": link, "charts": f"{link}&compareRunsMode=CHART"}
    base = ui_url.rstrip("/")
    if training_runs:
        found["run"] = f"{base}/#/experiments/{experiment_id}/runs/{training_runs[0]}?{TRAINING_VIEW}"
        ids = json.dumps(training_runs[:5]).replace(" ", "")
        found["compare"] = (f"{base}/#/compare-runs?runs={ids}&experiments=[\"{experiment_id}\"]"
                            f"&{TRAINING_VIEW}")
    return found


def training_runs(tracking_uri: str, experiment: str) -> tuple[str, list[str]]:
    """The experiment's id and its training runs, newest first."""
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri)
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        raise SystemExit(f"error: no experiment {experiment!r} in {tracking_uri}")
    runs = client.search_runs([exp.experiment_id], "tags.`wavenet.stage` = 'train'",
                              order_by=["attributes.start_time DESC"])
    return exp.experiment_id, [r.info.run_id for r in runs]


def take(store: Path, experiment: str, out: Path, binary: str) -> dict:
    """Start the UI, save every page's screenshot and DOM, stop the UI; the JSON summary."""
    out.mkdir(parents=True, exist_ok=True)
    exp_id, runs = training_runs(f"sqlite:///{store / 'mlflow.db'}", experiment)
    (port,) = free_ports(1)
    ui = start_ui(store, port, out / "mlflow-ui.log")
    try:
        found = pages(f"http://127.0.0.1:{port}", exp_id, runs)
        for name, url in found.items():
            chromium(binary, url, screenshot=out / f"{name}.png", budget_ms=budget_ms(name))
            (out / f"{name}.html").write_text(chromium(binary, url, budget_ms=budget_ms(name)))
    finally:
        stop_process(ui, timeout=30)
    table = runs_table((out / "experiment.html").read_text())
    return {"experiment_id": exp_id, "training_runs": len(runs), "pages": found,
            "screenshots": sorted(str(p) for p in out.glob("*.png")),
            "runs_table": {"pinned": table.pinned, "columns": table.columns}}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--store", default=".", help="folder with mlflow.db (default: .)")
    p.add_argument("--experiment", default="wavenet")
    p.add_argument("--out", default="mlflow-screenshots")
    p.add_argument("--chromium", default=find_chromium())
    args = p.parse_args(argv)
    if not args.chromium:
        print("error: no chromium found (apt-get install chromium, or --chromium PATH)", file=sys.stderr)
        return 2
    store = Path(args.store).resolve()
    if not (store / "mlflow.db").exists():
        print(f"error: no mlflow.db in {store}", file=sys.stderr)
        return 2
    try:
        summary = take(store, args.experiment, Path(args.out), args.chromium)
    except RuntimeError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
