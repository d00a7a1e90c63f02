"""Shared by ``submit`` and ``schedule``: the KFP client, arguments, and the uploaded pipeline.

Authentication: ``KFP_TOKEN`` (a bearer token, e.g. ``gcloud auth print-identity-token``
or a Dex/OIDC token), else the in-cluster service-account token when running in a pod
(a Kubeflow notebook), else none (a port-forwarded, unauthenticated KFP).
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from wavenet.errors import ConfigError

SA_TOKEN = "/var/run/secrets/kubernetes.io/serviceaccount/token"
# Runs use the launcher's service account (k8s/rbac.yaml): it may create TFJobs.
DEFAULT_SERVICE_ACCOUNT = "wavenet-launcher"


def one_line(e: BaseException) -> str:
    """The last line of an exception's message (urllib3 and kfp_server_api nest theirs)."""
    text = str(e).strip() or type(e).__name__
    reason = getattr(e, "reason", None)
    if reason is not None and not isinstance(reason, str):
        text = str(reason)
    return text.splitlines()[-1][:300]


def resolve_token(environ: Mapping[str, str], sa_token_path: str = SA_TOKEN) -> str | None:
    """The bearer token for KFP: ``KFP_TOKEN``, else the pod's service-account token."""
    if environ.get("KFP_TOKEN"):
        return environ["KFP_TOKEN"]
    p = Path(sa_token_path)
    if p.is_file():
        return p.read_text().strip() or None
    return None


def make_client(host: str, namespace: str, environ: Mapping[str, str]):
    """A ``kfp.Client`` for ``host`` (e.g. https://kubeflow.example.com/pipeline)."""
    import kfp

    if not host:
        raise ConfigError("KFP host is not set: pass --host or set KFP_HOST "
                          "(e.g. http://localhost:8080 after kubectl port-forward)")
    with warnings.catch_warnings():
        # kfp warns on every construction that it needs a v2 backend; that is our requirement.
        warnings.simplefilter("ignore", FutureWarning)
        return kfp.Client(host=host, namespace=namespace, existing_token=resolve_token(environ))


def pipeline_parameters() -> dict[str, Any]:
    """Names and defaults of the ``wavenet-train`` pipeline's parameters."""
    from pipelines.wavenet_train import wavenet_train

    return {name: spec.default for name, spec in wavenet_train.component_spec.inputs.items()}


def load_arguments(path: str | None) -> dict[str, Any]:
    """Pipeline arguments from a YAML mapping; unknown names are an error naming the file."""
    if not path:
        return {}
    try:
        d = yaml.safe_load(Path(path).read_text()) or {}
    except OSError as e:
        raise ConfigError(f"cannot read arguments file {path}: {e.strerror}") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"arguments file {path} is not valid YAML: {e}") from None
    if not isinstance(d, Mapping):
        raise ConfigError(f"arguments file {path} must hold a mapping of pipeline parameters")
    if "config_yaml" in d:
        # The pipeline's parameter was called config_yaml until it was renamed: config_yaml
        # now means a whole config everywhere (`wavenet --config-yaml`), overrides_yaml a part.
        raise ConfigError(f"{path}: config_yaml is now called overrides_yaml (YAML overrides of "
                          "the preset): rename the key")
    known = pipeline_parameters()
    unknown = sorted(set(d) - set(known))
    if unknown:
        raise ConfigError(f"{path}: unknown pipeline parameter {unknown[0]!r}. "
                          f"Known: {', '.join(sorted(known))}")
    # overrides_yaml may be written as a nested mapping in the file: the pipeline takes a string.
    if isinstance(d.get("overrides_yaml"), Mapping):
        d = {**d, "overrides_yaml": yaml.safe_dump(dict(d["overrides_yaml"]), sort_keys=True)}
    return dict(d)


def compile_to_temp() -> str:
    """Compile the pipeline into a temporary YAML file; returns its path."""
    from pipelines.wavenet_train import compile_pipeline

    fd, path = tempfile.mkstemp(prefix="wavenet-train-", suffix=".yaml")
    os.close(fd)
    return compile_pipeline(path)


def upload(client, package: str, name: str) -> tuple[str, str]:
    """Upload ``package`` as a version of pipeline ``name`` (created if new).

    The version is named after the package's digest, so uploading an unchanged
    pipeline twice reuses the existing version.

    Returns:
        (pipeline_id, version_id)
    """
    digest = hashlib.sha256(Path(package).read_bytes()).hexdigest()[:12]
    version_name = f"{name}-{digest}"
    pipeline_id = client.get_pipeline_id(name)
    if pipeline_id is None:
        pipeline = client.upload_pipeline(package, pipeline_name=name)
        pipeline_id = pipeline.pipeline_id
    versions = client.list_pipeline_versions(pipeline_id, page_size=100).pipeline_versions or []
    for v in versions:
        if v.display_name == version_name:
            return pipeline_id, v.pipeline_version_id
    version = client.upload_pipeline_version(package, version_name, pipeline_id=pipeline_id)
    return pipeline_id, version.pipeline_version_id


def experiment_id(client, name: str, namespace: str) -> str:
    """The KFP experiment ``name`` (created if missing)."""
    return client.create_experiment(name, namespace=namespace).experiment_id


# -- the command-line edge shared by submit and schedule ----------------------------------------

def add_target_args(p) -> None:
    """Arguments naming where and what to submit: host, namespace, experiment, arguments, account."""
    p.add_argument("--host", default=None, help="KFP API endpoint (default $KFP_HOST)")
    p.add_argument("--namespace", default=None,
                   help="Kubeflow profile namespace (default $KFP_NAMESPACE, else kubeflow)")
    p.add_argument("--experiment", default="wavenet", help="KFP experiment (default wavenet)")
    p.add_argument("--args", dest="args_file", default=None, metavar="FILE.yaml",
                   help="pipeline arguments (YAML mapping)")
    p.add_argument("--service-account", default=DEFAULT_SERVICE_ACCOUNT,
                   help=f"service account of the run's pods (default {DEFAULT_SERVICE_ACCOUNT})")


@dataclass(frozen=True)
class Target:
    """A connected client with the pipeline uploaded and the experiment in place."""

    client: Any
    arguments: dict[str, Any]
    pipeline_id: str
    version_id: str
    experiment_id: str


def prepare(args, environ: Mapping[str, str], pipeline_name: str) -> Target:
    """Read the arguments file, connect, upload the compiled pipeline, find the experiment."""
    namespace = args.namespace or environ.get("KFP_NAMESPACE", "kubeflow")
    arguments = load_arguments(args.args_file)
    client = make_client(args.host or environ.get("KFP_HOST", ""), namespace, environ)
    pipeline_id, version_id = upload(client, compile_to_temp(), pipeline_name)
    return Target(client, arguments, pipeline_id, version_id,
                  experiment_id(client, args.experiment, namespace))


def run_cli(action: Callable[[], int], host: str) -> int:
    """Run ``action``; our errors exit 2 and the server's exit 1, each as one line."""
    import sys

    from wavenet.errors import WavenetError

    try:
        return action()
    except WavenetError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except Exception as e:  # noqa: BLE001 - the CLI edge: the server's answer in one line
        print(f"error: Kubeflow Pipelines at {host}: {one_line(e)}", file=sys.stderr)
        return 1
