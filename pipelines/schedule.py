"""Schedule recurring retraining of ``wavenet-train`` (``make schedule-pipeline CRON=...``).

One run at a time (``max_concurrency=1``) and no catch-up: after downtime the
scheduler starts the next run only, not one per missed slot.

Usage::

    KFP_HOST=... python -m pipelines.schedule --cron "0 0 3 * * 1" --args run.yaml

Cron expressions follow KFP's format, 6 fields with seconds first (the kfp client's
``create_recurring_run`` documentation); a 5-field expression gets ``0`` seconds prepended.
"""

from __future__ import annotations

import argparse
import os
import sys

from pipelines import kfp_client
from pipelines.wavenet_train import PIPELINE_NAME
from wavenet.errors import ConfigError


def normalize_cron(expr: str) -> str:
    """A 6-field (seconds first) cron expression; 5 fields get ``0`` seconds."""
    fields = expr.split()
    if len(fields) == 5:
        fields = ["0", *fields]
    if len(fields) != 6:
        raise ConfigError(f"cron expression must have 5 or 6 fields (seconds first). Received: {expr!r}")
    return " ".join(fields)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m pipelines.schedule", description=__doc__.splitlines()[0])
    p.add_argument("--cron", required=True, help='e.g. "0 0 3 * * 1" (Mondays 03:00)')
    p.add_argument("--name", default=f"{PIPELINE_NAME}-retrain", help="recurring run name")
    kfp_client.add_target_args(p)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)

    def schedule() -> int:
        cron = normalize_cron(args.cron)
        target = kfp_client.prepare(args, os.environ, PIPELINE_NAME)
        job = target.client.create_recurring_run(
            target.experiment_id, args.name, cron_expression=cron, max_concurrency=1,
            no_catchup=True, pipeline_id=target.pipeline_id, version_id=target.version_id,
            params=target.arguments, service_account=args.service_account, enabled=True)
        print(f"scheduled {args.name!r} ({job.recurring_run_id}): cron '{cron}', "
              f"one run at a time, no catch-up")
        return 0

    return kfp_client.run_cli(schedule, args.host or os.environ.get("KFP_HOST", ""))


if __name__ == "__main__":
    sys.exit(main())
