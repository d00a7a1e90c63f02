"""Container images of this project, named from one setting.

``IMAGE_REGISTRY`` (default ``ghcr.io/wavenet-pipelines``) and ``IMAGE_TAG`` (default
``0.1.0``) name every image: ``make image``, ``make push``, ``make compile``,
``make submit-pipeline`` and ``make run-containers`` all read the same two variables, so a
user builds, pushes and submits to their own registry without editing code::

    IMAGE_REGISTRY=registry.example.com/ml IMAGE_TAG=2026-11 make image push submit-pipeline

The names are fixed when this module is imported (``@dsl.component`` takes its
``base_image`` at definition time), which makes this module the edge where the setting
is read. The committed ``pipelines/wavenet-train.yaml`` is compiled with the defaults.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping

DEFAULT_REGISTRY = "ghcr.io/wavenet-pipelines"
DEFAULT_TAG = "0.1.0"

# Image names (repository part) of the docker/Dockerfile targets.
REPOSITORIES = {"cpu": "wavenet", "gpu": "wavenet-gpu", "mlflow": "mlflow"}

# registry[:port]/path (lower case, as OCI references require); tag: [A-Za-z0-9_][A-Za-z0-9_.-]{0,127}
_REGISTRY_RE = re.compile(r"^[a-z0-9]([a-z0-9.-]*[a-z0-9])?(:[0-9]+)?(/[a-z0-9]+([._-]+[a-z0-9]+)*)*$")
_TAG_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$")


def image_name(target: str, environ: Mapping[str, str] | None = None) -> str:
    """The reference of a docker/Dockerfile target's image under the current setting.

    Args:
        target: ``cpu``, ``gpu`` or ``mlflow``.
        environ: where ``IMAGE_REGISTRY`` and ``IMAGE_TAG`` are read (default ``os.environ``).

    Returns:
        ``<IMAGE_REGISTRY>/<repository>:<IMAGE_TAG>``.

    Raises:
        ValueError: an unknown target, or a registry or tag that is not a valid reference.
    """
    env = os.environ if environ is None else environ
    registry = (env.get("IMAGE_REGISTRY") or DEFAULT_REGISTRY).rstrip("/")
    tag = env.get("IMAGE_TAG") or DEFAULT_TAG
    if target not in REPOSITORIES:
        raise ValueError(f"image target must be one of {', '.join(REPOSITORIES)}. Received: {target!r}")
    if not _REGISTRY_RE.match(registry):
        raise ValueError(f"IMAGE_REGISTRY must be a registry host[:port] with an optional lower-case "
                         f"path, e.g. ghcr.io/me. Received: IMAGE_REGISTRY={registry!r}")
    if not _TAG_RE.match(tag):
        raise ValueError(f"IMAGE_TAG must be a valid image tag (letters, digits, _ . -). "
                         f"Received: IMAGE_TAG={tag!r}")
    return f"{registry}/{REPOSITORIES[target]}:{tag}"


# CPU image: every pipeline step (and the TFJob launcher) runs in it.
WAVENET_IMAGE = image_name("cpu")
# GPU image (TensorFlow with its CUDA wheels): the TFJob's training pods.
WAVENET_GPU_IMAGE = image_name("gpu")
# MLflow tracking server (k8s/mlflow.yaml).
MLFLOW_IMAGE = image_name("mlflow")
