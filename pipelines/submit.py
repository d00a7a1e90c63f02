"""Upload ``wavenet-train`` to Kubeflow Pipelines and start one run (``make submit-pipeline``).

Usage::

    KFP_HOST=https://kubeflow.example.com/pipeline KFP_TOKEN=... \\
        python -m pipelines.submit --args run.yaml [--experiment wavenet] [--namespace NS]

``run.yaml`` maps pipeline parameters to values (see README for an example).
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
    p.add_argument("--host", default=None, help="KFP API endpoint (default $KFP_HOST)")
    p.add_argument("--namespace", default=None,
                   help="Kubeflow profile namespace (default $KFP_NAMESPACE, else kubeflow)")
    p.add_argument("--experiment", default="wavenet", help="KFP experiment (default wavenet)")
    p.add_argument("--args", dest="args_file", default=None, metavar="FILE.yaml",
                   help="pipeline arguments (YAML mapping)")
    p.add_argument("--service-account", default=kfp_client.DEFAULT_SERVICE_ACCOUNT,
                   help="service account of the run's pods (default wavenet-launcher)")
    p.add_argument("--wait", type=int, default=0, metavar="SECONDS",
                   help="wait up to this long for the run to finish")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from wavenet.errors import WavenetError

    env = os.environ
    namespace = args.namespace or env.get("KFP_NAMESPACE", "kubeflow")
    try:
        arguments = kfp_client.load_arguments(args.args_file)
        client = kfp_client.make_client(args.host or env.get("KFP_HOST", ""), namespace, env)
        package = kfp_client.compile_to_temp()
        pipeline_id, version_id = kfp_client.upload(client, package, PIPELINE_NAME)
        exp_id = kfp_client.experiment_id(client, args.experiment, namespace)
        name = f"{PIPELINE_NAME} {dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M:%SZ}"
        run = client.run_pipeline(exp_id, name, pipeline_id=pipeline_id, version_id=version_id,
                                  params=arguments, service_account=args.service_account)
    except WavenetError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except Exception as e:  # noqa: BLE001 - the CLI edge: the server's answer in one line
        host = args.host or env.get("KFP_HOST", "")
        print(f"error: Kubeflow Pipelines at {host}: {kfp_client.one_line(e)}", file=sys.stderr)
        return 1
    print(f"started run {run.run_id} ({name}) in experiment {args.experiment!r}")
    if args.wait:
        done = client.wait_for_run_completion(run.run_id, timeout=args.wait)
        print(f"run {run.run_id} finished: {done.state}")
        return 0 if str(done.state).upper() == "SUCCEEDED" else 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
