"""Plain helpers the component bodies call (no kfp import; tested directly).

They turn pipeline parameters (strings, ints) into the typed config and names the
library expects, and keep the bookkeeping that makes local and cluster runs
identical: relative file lists, known tracks of a persistent shards folder, data
versions, run names, the TFJob of the train step and the MLflow environment handed
to training pods.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
from collections.abc import Mapping
from typing import Any

import yaml

from wavenet.config import PRESETS, ExperimentConfig, resolve_config
from wavenet.errors import ConfigError

# What KFP's MLflow integration and the user's tracking settings put in a step's
# environment; passed on to TFJob pods so their runs nest under the pipeline's run.
MLFLOW_ENV = ("MLFLOW_TRACKING_URI", "MLFLOW_RUN_ID", "MLFLOW_EXPERIMENT_ID",
              "MLFLOW_EXPERIMENT_NAME", "MLFLOW_TRACKING_INSECURE_TLS")


def _flatten(d: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, Mapping):
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def build_config(preset: str, overrides_yaml: str = "") -> ExperimentConfig:
    """The run's config: a named preset, then YAML overrides.

    Args:
        preset: preset name (tiny, demo, bench, large).
        overrides_yaml: YAML mapping, nested (``train: {steps: 50}``) or dotted
            (``train.steps: 50``); empty for none.

    Returns:
        The typed config.
    """
    try:
        over = yaml.safe_load(overrides_yaml) if overrides_yaml and overrides_yaml.strip() else {}
    except yaml.YAMLError as e:
        raise ConfigError(f"config overrides are not valid YAML: {e}") from None
    if over is None:
        over = {}
    if not isinstance(over, Mapping):
        raise ConfigError(f"config overrides must be a YAML mapping. Received: {overrides_yaml!r}")
    if "preset" in over:
        raise ConfigError("config overrides must not set preset (use the preset parameter)")
    return resolve_config(preset, None, _flatten(over))


def cli_config_args(cfg: ExperimentConfig) -> list[str]:
    """``--preset P --set k=v ...`` that rebuild ``cfg`` in a ``wavenet`` CLI process.

    Used for TFJob pods: the command line carries the whole config, so no file
    has to reach the pod before it starts.
    """
    if cfg.preset not in PRESETS:
        raise ConfigError(f"config preset must be a named preset to pass to pods. "
                          f"Received: preset={cfg.preset!r}")
    base = PRESETS[cfg.preset]().flat()
    args = ["--preset", cfg.preset]
    for key, value in sorted(cfg.flat().items()):
        if base.get(key) != value:
            text = yaml.safe_dump(value, default_flow_style=True).strip()
            if text.endswith("\n..."):
                text = text[: -len("\n...")]
            args += ["--set", f"{key}={text}"]
    return args


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


def _digest(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


def data_version(manifest: Mapping[str, Any]) -> str:
    """Short content version of a shard set: a digest of its shards' sha256s (and sizes).

    Identical shards give the same version whichever run or machine wrote them.
    """
    return _digest(sorted((s["path"], s["sha256"], s.get("examples")) for s in manifest["shards"]))[:10]


def known_track_ids(shards_uri: str, cfg: ExperimentConfig) -> frozenset[str]:
    """Tracks (sha256) already preprocessed into ``shards_uri`` with the same audio settings.

    Files with these contents are not decoded again; a shards folder made with other
    audio settings counts as empty (its tracks are rebuilt).
    """
    from wavenet import storage
    from wavenet.data import MANIFEST
    from wavenet.preprocess import known_tracks

    path = storage.join(shards_uri, MANIFEST)
    if not storage.exists(path):
        return frozenset()
    try:
        manifest = json.loads(storage.read_text(path))
    except ValueError:
        return frozenset()
    if manifest.get("audio") != cfg.to_dict()["audio"]:
        return frozenset()
    return frozenset(known_tracks(shards_uri))


def run_name(preset: str, version: str, when: _dt.datetime | None = None) -> str:
    """``<preset>-d<data version>-<UTC start>``: tells runs apart in the MLflow UI."""
    when = when or _dt.datetime.now(_dt.UTC)
    return f"{preset}-d{version[:8]}-{when.strftime('%Y%m%dT%H%M%SZ')}"


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
# and wavenet.tfjob.render_tfjob keeps those references and never writes a password in clear.
MLFLOW_CREDENTIALS_ENV = ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD")


def mlflow_env(environ: Mapping[str, str], tracking_uri: str = "") -> dict[str, str]:
    """The MLflow variables a training pod needs (KFP's run and experiment ids, credentials)."""
    env = {k: environ[k] for k in (*MLFLOW_ENV, *MLFLOW_CREDENTIALS_ENV) if environ.get(k)}
    if tracking_uri:
        env["MLFLOW_TRACKING_URI"] = tracking_uri
    return env


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


def champion_uri(cfg: ExperimentConfig, tracking_uri: str = "") -> str | None:
    """Warm start: the champion's model URI when it has this config's architecture, else None.

    The first run of a schedule has no champion, and a changed architecture
    cannot reuse its weights: both train from scratch (and say so).
    """
    from wavenet import registry

    registry.use_tracking_uri(tracking_uri or None)
    champion = registry.get_champion(cfg.evaluate.registered_model_name)
    if champion is None:
        print(f"warm start: no champion of {cfg.evaluate.registered_model_name!r} yet; "
              "training from scratch")
        return None
    model = registry.load_wavenet(champion.uri)
    if model.config != cfg.model:
        print(f"warm start: champion {champion.uri} has another architecture; training from scratch")
        return None
    return champion.uri


def training_tfjob(cfg: ExperimentConfig, name: str, data_uri: str, out_uri: str, *, namespace: str,
                   image: str, workers: int, gpus_per_worker: int, accelerator: str, run_name: str,
                   steps: int = 0, experiment: str = "", init_model: str = "",
                   env: Mapping[str, str] | None = None, labels: Mapping[str, str] | None = None,
                   template: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The TFJob the train component creates: ``wavenet train`` in worker mode on every pod.

    The command line carries the whole config (:func:`cli_config_args`) and the
    Training Operator's ``TF_CONFIG`` tells each pod its place in the cluster.
    """
    from wavenet import tfjob

    args = [data_uri, "--out", out_uri, "--worker", "--run-name", run_name, "--no-progress",
            *cli_config_args(cfg)]
    if steps:
        args += ["--steps", str(steps)]
    if experiment:
        args += ["--experiment", experiment]
    if init_model:
        args += ["--init-model", init_model]
    return tfjob.render_tfjob(name, namespace, image, ["wavenet", "train"], args, workers=workers,
                              gpus_per_worker=gpus_per_worker, accelerator=accelerator,
                              env=env, labels=labels, template=template)
