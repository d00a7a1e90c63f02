"""Argument plumbing for the component bodies (no kfp import; tested directly).

KFP hands components strings, paths and artifact metadata; these helpers turn
them into what the library takes: file names relative to an audio root, where a
shards artifact's data really is, the MLflow variables a TFJob pod needs, and
the numbers a KFP Metrics artifact can show. Everything else is a library call.
"""

from __future__ import annotations

import functools
import json
import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any

# The one reader of a config file (a ``preset:`` key names its base). A step's ``config``
# artifact holds the whole config the first step resolved (``cfg.to_yaml()``, which names its
# preset), so the components read it as the CLI reads ``--config FILE``.
from wavenet.config import ExperimentConfig, load_config  # noqa: F401 - runtime.load_config
from wavenet.context import RunContext
from wavenet.errors import ConfigError

# What KFP's MLflow integration and the user's tracking settings put in a step's
# environment; passed on to TFJob pods so their runs nest under the pipeline's run.
MLFLOW_ENV = ("MLFLOW_TRACKING_URI", "MLFLOW_RUN_ID", "MLFLOW_EXPERIMENT_ID",
              "MLFLOW_EXPERIMENT_NAME", "MLFLOW_TRACKING_INSECURE_TLS")


# Set by each step that loads TensorFlow, before it does (a pod has no `make run` to set them):
# TF_CPP_MIN_LOG_LEVEL=2 drops TensorFlow's C++ log messages below ERROR (0 keeps all, 1 drops
# INFO such as the oneDNN notice, 2 also WARNING, 3 also ERROR; tensorflow/core/platform/
# default/logging.cc reads it). Kept at 2, not 3: a real C++ error (a collective that fails)
# must still show. What it cannot reach (absl's pre-init notice, the cuInit probe on a machine
# without a GPU) `make run` filters from the terminal (pipelines/terminal.py).
# MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR=false: MLflow draws a tqdm bar for every model download
# (8 lines per step in a log, where a bar cannot redraw; mlflow/environment_variables.py).
# MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT=true: MLflow prints "View run ... at: <server URL>" and
# "View experiment at:" when a run on an HTTP server ends (mlflow/tracking/_tracking_service/
# client.py); from a step that is the server's address inside the cluster or the run's network,
# not one a browser opens, and the summary links the experiment.
QUIET_ENV = {"TF_CPP_MIN_LOG_LEVEL": "2", "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",
             "MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT": "true"}


def quiet_logs(environ: dict[str, str] | None = None) -> None:
    """Set :data:`QUIET_ENV` (as defaults) in ``environ`` (default: this process's)."""
    env = os.environ if environ is None else environ
    for key, value in QUIET_ENV.items():
        env.setdefault(key, value)


def relative_names(root: str, files: list[str]) -> list[str]:
    """File paths relative to ``root`` (local folder or gs:// prefix), sorted."""
    root_n = root.rstrip("/") + "/"
    out = []
    for f in files:
        if f.startswith(root_n):
            out.append(f[len(root_n):])
        elif not root.startswith("gs://") and os.path.isabs(f):
            out.append(os.path.relpath(f, root))
        else:
            out.append(f)
    return sorted(out)


def join_root(root: str, name: str) -> str:
    """Inverse of :func:`relative_names` for one name."""
    if name.startswith("gs://") or os.path.isabs(name):
        return name
    if root.startswith("gs://"):
        return root.rstrip("/") + "/" + name
    return os.path.join(root, name)


def data_location(path: str, uri: str, metadata: Mapping[str, Any], for_pods: bool = False) -> str:
    """Where a shards artifact's data is.

    Args:
        path: the artifact's local path in this step.
        uri: the artifact's URI (gs://... on a cluster).
        metadata: the artifact's metadata; ``data_dir`` points at a persistent
            shards location when one was used.
        for_pods: the location is for other pods (TFJob workers): a bucket URI,
            never this step's local path.
    """
    if metadata.get("data_dir"):
        return str(metadata["data_dir"])
    if for_pods:
        if not uri.startswith("gs://"):
            raise ConfigError(f"training on the cluster needs shards in a bucket (gs://); "
                              f"this pipeline's root stores them at {uri!r}: set pipeline_root "
                              f"or shards_uri to a gs:// prefix")
        return uri
    return path


# The step's MLflow basic-auth credentials (issue 10, Found 2): passed on with the rest. A TFJob
# gets them by reference only: k8s/tfjob-template.yaml takes both from the Secret the step read,
# and wavenet.edges.tfjob.render_tfjob keeps those references and never writes a password in clear.
MLFLOW_CREDENTIALS_ENV = ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD")


def mlflow_env(environ: Mapping[str, str], tracking_uri: str = "") -> dict[str, str]:
    """The MLflow variables a training pod needs (KFP's run and experiment ids, credentials)."""
    env = {k: environ[k] for k in (*MLFLOW_ENV, *MLFLOW_CREDENTIALS_ENV) if environ.get(k)}
    if tracking_uri:
        env["MLFLOW_TRACKING_URI"] = tracking_uri
    return env


def training(cfg: ExperimentConfig, ctx: RunContext, shards: Any, out: str, *, workers: int,
             cluster: Any, labels: Mapping[str, str],
             job_key: Sequence[str]) -> tuple[str, Callable[[], Any]]:
    """Where the train step's data is, and the call that trains on it: ``workers`` local
    processes (:func:`wavenet.train.train`), or a TFJob on ``cluster``
    (:func:`wavenet.train.train_on_cluster`, a :class:`~wavenet.train.ClusterSettings`).

    Args:
        shards: the shards artifact (``path``, ``uri``, ``metadata``).
        out: the model artifact's local path.
        labels, job_key: the TFJob's extra labels and identity (see ``train_on_cluster``).
    """
    from wavenet.train import train, train_on_cluster

    if cluster is None:
        data = data_location(shards.path, shards.uri, shards.metadata)
        return data, functools.partial(train, data, out, cfg, ctx, workers=workers)
    data = data_location(shards.path, shards.uri, shards.metadata, for_pods=True)
    return data, functools.partial(train_on_cluster, data, cfg, cluster, ctx, local_dir=out,
                                   labels=labels, job_key=job_key)


def train_context(cfg: ExperimentConfig, shards: Any, data_version: str, tracking_uri: str,
                  experiment: str, kfp_run_id: str, *, warm_start: bool) -> tuple[RunContext, str]:
    """The train step's run settings, made once (the step is an entry point, as the command line
    is), and the line saying whether and how it warm-starts from the registered champion
    (``init_model`` set when it does; "" when ``warm_start`` is off)."""
    from wavenet.edges.tracking import run_name  # mlflow: after quiet_logs, when the step runs

    ctx = RunContext.create(tracking_uri, environ=os.environ, experiment=experiment,
                            run_name=run_name(cfg.preset, f"d{data_version[:8]}"),
                            kfp_run_id=kfp_run_id, progress="lines")
    if not warm_start:
        return ctx, ""
    from wavenet.train.warm_start import champion_init_model

    init_model, warm_line = champion_init_model(
        cfg, ctx.tracking_uri, data_location(shards.path, shards.uri, shards.metadata))
    return ctx.replace(init_model=init_model), warm_line


def cluster_settings(namespace: str, image: str, workers: int, gpus_per_worker: int,
                     accelerator: str, cluster_run_root: str) -> Any:
    """The train step's TFJob settings (:class:`~wavenet.train.ClusterSettings`), with the pod
    template a cluster admin may give in ``$WAVENET_TFJOB_TEMPLATE``."""
    from wavenet.edges import tfjob
    from wavenet.train import ClusterSettings

    return ClusterSettings(namespace, image, workers, gpus_per_worker, accelerator,
                           cluster_run_root, tfjob.load_template(os.environ.get("WAVENET_TFJOB_TEMPLATE")))


def model_metadata(result: Any, ctx: RunContext, cfg: ExperimentConfig, data_version: str,
                   warm_line: str, *, on_cluster: bool) -> dict[str, Any]:
    """The train step's model artifact metadata, from its :class:`~wavenet.train.TrainResult`."""
    summary = result.summary
    meta = {"run_name": summary.get("run_name") or ctx.run_name, "run_id": result.run_id or "",
            "data_version": data_version, "preset": cfg.preset, "reused": summary["reused"],
            "registered_version": summary.get("registered_version") or "",
            "model_uri": summary.get("model_uri") or "",
            # The champion it started from ("" when none), and the line saying
            # why or why not and how labels were mapped.
            "warm_start_from": ctx.init_model or "", "warm_start": warm_line}
    if on_cluster and not summary["reused"]:
        meta["cluster_run_dir"] = result.out_dir
    return meta


def stage_context(stage: str, tracking_uri: str, experiment: str,
                  model_meta: Mapping[str, Any]) -> RunContext:
    """The run settings of an evaluate or generate step (an entry point, as the command line
    is): the tracking URI resolved once (empty: ``MLFLOW_TRACKING_URI``, else ./mlflow.db), the
    experiment (empty: the model's), the run named after the model's training run."""
    from wavenet.edges.tracking import child_run_name  # mlflow: after quiet_logs, when the step runs

    return RunContext.create(tracking_uri, environ=os.environ, experiment=experiment,
                             run_name=child_run_name(stage, model_meta.get("run_name")))


def numeric_metrics(result: Mapping[str, Any], prefix: str = "") -> dict[str, float]:
    """Flatten a result dict to the numbers a KFP Metrics artifact can show."""
    out: dict[str, float] = {}
    for k, v in result.items():
        if isinstance(v, Mapping):
            out.update(numeric_metrics(v, f"{prefix}{k}."))
        elif isinstance(v, bool):
            out[f"{prefix}{k}"] = float(v)
        elif isinstance(v, (int, float)) and v == v:  # NaN is not a metric
            out[f"{prefix}{k}"] = float(v)
    return out


def read_json(path: str) -> dict[str, Any] | None:
    """A JSON file an earlier step wrote (e.g. ``metrics.json``), or None when it is not there."""
    if not os.path.exists(path):
        return None
    with open(path) as f:
        return json.load(f)
