"""Upload ``wavenet-train`` to Kubeflow Pipelines and start one run (``make submit-pipeline``).

Usage::

    KFP_HOST=https://kubeflow.example.com/pipeline KFP_TOKEN=... \\
        python -m pipelines.submit --args run.yaml [--experiment wavenet] [--namespace NS]

``run.yaml`` maps pipeline parameters to values (see docs/cluster.md for an example).
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import sys

from pipelines import kfp_client
from pipelines.wavenet_train import PIPELINE_NAME


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m pipelines.submit", description=__doc__.splitlines()[0])
    kfp_client.add_target_args(p)
    p.add_argument("--wait", type=int, default=0, metavar="SECONDS",
                   help="wait up to this long for the run to finish")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)

    def submit() -> int:
        target = kfp_client.prepare(args, os.environ, PIPELINE_NAME)
        name = f"{PIPELINE_NAME} {dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M:%SZ}"
        run = target.client.run_pipeline(
            target.experiment_id, name, pipeline_id=target.pipeline_id,
            version_id=target.version_id, params=target.arguments,
            service_account=args.service_account)
        print(f"started run {run.run_id} ({name}) in experiment {args.experiment!r}")
        if args.wait:
            done = target.client.wait_for_run_completion(run.run_id, timeout=args.wait)
            print(f"run {run.run_id} finished: {done.state}")
            return 0 if str(done.state).upper() == "SUCCEEDED" else 1
        return 0

    return kfp_client.run_cli(submit, args.host or os.environ.get("KFP_HOST", ""))


if __name__ == "__main__":
    sys.exit(main())
