"""Quality per compute (`wavenet bench quality`): what a preset reaches for fixed training budgets.

For each budget, counted in predicted training samples (``steps x
global_batch_size x window``: a count, unlike wall time, does not depend on how
busy a shared machine is), a fresh run of the preset trains for
``budget / (global_batch_size x window)`` steps with its own learning-rate
schedule (warm-up and cosine decay sized to those steps, as a run meant to
stop there would be), through the real commands' library calls:
:func:`wavenet.train.train`, :func:`wavenet.evaluate.evaluate` and
:func:`wavenet.generation.verb.generate_samples` (one clip per label, checked
against the label's training audio). Per budget it reports validation
bits/sample (with the bigram baseline), the wall time, and the fraction of the
calibrated checks the clips pass, overall and per label.

The data: ``--data`` (a shards folder, e.g. ``make run``'s), else the demo corpus
synthesised and preprocessed with the preset in a temporary folder. MLflow
goes to a SQLite store in that folder.
"""

from __future__ import annotations

import os
import tempfile
import time
from typing import Any

from wavenet.bench import machine
from wavenet.config import ExperimentConfig

__all__ = ["BUDGET_FRACTIONS", "default_budgets", "run", "table"]

# The default budgets: a quarter, half, one and two times the preset's own training
# (`make run`'s, for demo), so the curve brackets what the preset ships.
BUDGET_FRACTIONS = (0.25, 0.5, 1.0, 2.0)


def default_budgets(cfg: ExperimentConfig) -> tuple[int, ...]:
    """:data:`BUDGET_FRACTIONS` of ``cfg``'s training, in predicted samples (whole steps)."""
    per_step = cfg.train.samples_per_step
    return tuple(max(1, round(f * cfg.train.steps)) * per_step for f in BUDGET_FRACTIONS)


def _demo_shards(work: str, cfg: ExperimentConfig, seconds_per_genre: float) -> str:
    from wavenet.data.demo import make_demo_corpus
    from wavenet.data.preprocess import preprocess

    make_demo_corpus(os.path.join(work, "demo-src"), seconds_per_genre=seconds_per_genre,
                     seed=cfg.train.seed)
    preprocess(os.path.join(work, "demo-src"), os.path.join(work, "shards"), cfg, progress=False)
    return os.path.join(work, "shards")


def _one_budget(data: str, cfg: ExperimentConfig, budget: int, work: str, uri: str,
                workers: int) -> dict[str, Any]:
    """Train a fresh run for ``budget`` predicted samples, evaluate it, listen to it."""
    from wavenet.context import RunContext
    from wavenet.evaluate import evaluate
    from wavenet.generation.verb import generate_samples
    from wavenet.train import train

    per_step = cfg.train.samples_per_step
    steps = max(1, round(budget / per_step))
    run_cfg = cfg.with_overrides({
        "train.steps": steps, "train.warmup_steps": min(cfg.train.warmup_steps, steps // 10),
        "train.checkpoint_every": steps, "train.validate_every": 0,
        "train.log_every": max(1, min(cfg.train.log_every, steps))})
    out = os.path.join(work, f"run-{budget}")
    start = time.perf_counter()
    ctx = RunContext.create(uri, progress="off")  # the three runs of this budget
    train(data, out, run_cfg, ctx, workers=workers)
    train_seconds = time.perf_counter() - start
    model = os.path.join(out, "model.keras")
    scores = evaluate(model, data, run_cfg, ctx)
    clips = generate_samples(model, os.path.join(out, "samples"), run_cfg, ctx, data_dir=data,
                             progress=False)
    passed = clips["checks_passed"]
    per_label = {k.rsplit("/", 1)[1]: v for k, v in passed.items()
                 if k.startswith("samples/checks_passed_fraction/")}
    return {"budget_samples": steps * per_step, "steps": steps, "train_seconds": round(train_seconds, 1),
            "samples_per_second": round(steps * per_step / train_seconds),
            "bits_per_sample": scores["bits_per_sample"], "bigram_bits": scores["baselines"]["bigram"],
            "checks_passed_fraction": passed.get("samples/checks_passed_fraction"),
            "clips_passed_fraction": passed.get("samples/clips_passed_fraction"),
            "checks_passed_per_label": per_label,
            "failed": {c["label"] or "all labels": [k["name"] for k in c["checks"] if not k["passed"]]
                       for c in clips["clips"]}}


def table(result: dict[str, Any]) -> str:
    """The result as a Markdown table (docs/benchmarks.md's "Quality per compute")."""
    labels = sorted({lab for r in result["rows"] for lab in r["checks_passed_per_label"]})

    def row(cells: list[str]) -> str:
        return "| " + " | ".join(cells) + " |"

    # One column per label of a conditioned model; an unconditioned one has none.
    lines = [row(["budget (samples)", "steps", "train s", "val bits/sample (bigram)", "checks passed",
                  *labels]),
             "|---" * (5 + len(labels)) + "|"]
    for r in result["rows"]:
        frac = r["checks_passed_fraction"]
        lines.append(row([f"{r['budget_samples']:,}", str(r["steps"]), f"{r['train_seconds']:.0f}",
                          f"{r['bits_per_sample']:.2f} ({r['bigram_bits']:.2f})",
                          "-" if frac is None else f"{frac:.0%}",
                          *(f"{r['checks_passed_per_label'].get(lab, 0.0):.0%}" for lab in labels)]))
    return "\n".join(lines)


def run(cfg: ExperimentConfig, quick: bool = False, data: str | None = None,
        budgets: tuple[int, ...] | None = None, workers: int = 1) -> dict[str, Any]:
    """Train ``cfg`` for each budget; validation bits/sample and checks passed per budget.

    Args:
        cfg: the preset (with overrides) to measure.
        quick: a seconds-long smoke version: the demo corpus at 4 s per genre and two tiny budgets.
        data: a shards folder; default the demo corpus, preprocessed with ``cfg``.
        budgets: predicted training samples per run (default :func:`default_budgets`).
        workers: local training workers per run.

    Returns:
        ``{"preset", "machine", "load_average", "budgets", "rows": [per budget: "budget_samples",
        "steps", "train_seconds", "samples_per_second", "bits_per_sample", "bigram_bits",
        "checks_passed_fraction", "clips_passed_fraction", "checks_passed_per_label",
        "failed" (per clip's label: the checks it failed)], "table"}``.
    """
    per_step = cfg.train.samples_per_step
    budgets = budgets or ((per_step, 2 * per_step) if quick else default_budgets(cfg))
    with tempfile.TemporaryDirectory(prefix="wavenet-bench-quality-") as work:
        shards = data or _demo_shards(work, cfg, 4.0 if quick else 60.0)
        uri = f"sqlite:///{os.path.join(work, 'mlflow.db')}"
        rows = [_one_budget(shards, cfg, b, work, uri, workers) for b in budgets]
    result = {"preset": cfg.preset, "machine": machine(), "load_average": list(os.getloadavg()),
              "budgets": list(budgets), "rows": rows}
    result["table"] = table(result)
    return result
