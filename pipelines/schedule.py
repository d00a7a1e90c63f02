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
    p.add_argument("--host", default=None, help="KFP API endpoint (default $KFP_HOST)")
    p.add_argument("--namespace", default=None, help="profile namespace (default $KFP_NAMESPACE)")
    p.add_argument("--experiment", default="wavenet")
    p.add_argument("--name", default=f"{PIPELINE_NAME}-retrain", help="recurring run name")
    p.add_argument("--args", dest="args_file", default=None, metavar="FILE.yaml")
    p.add_argument("--service-account", default=kfp_client.DEFAULT_SERVICE_ACCOUNT)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from wavenet.errors import WavenetError

    env = os.environ
    namespace = args.namespace or env.get("KFP_NAMESPACE", "kubeflow")
    try:
        cron = normalize_cron(args.cron)
        arguments = kfp_client.load_arguments(args.args_file)
        client = kfp_client.make_client(args.host or env.get("KFP_HOST", ""), namespace, env)
        package = kfp_client.compile_to_temp()
        pipeline_id, version_id = kfp_client.upload(client, package, PIPELINE_NAME)
        exp_id = kfp_client.experiment_id(client, args.experiment, namespace)
        job = client.create_recurring_run(
            exp_id, args.name, cron_expression=cron, max_concurrency=1, no_catchup=True,
            pipeline_id=pipeline_id, version_id=version_id, params=arguments,
            service_account=args.service_account, enabled=True)
    except WavenetError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except Exception as e:  # noqa: BLE001 - the CLI edge: the server's answer in one line
        host = args.host or env.get("KFP_HOST", "")
        print(f"error: Kubeflow Pipelines at {host}: {kfp_client.one_line(e)}", file=sys.stderr)
        return 1
    print(f"scheduled {args.name!r} ({job.recurring_run_id}): cron '{cron}', "
          f"one run at a time, no catch-up")
    return 0


if __name__ == "__main__":
    sys.exit(main())
