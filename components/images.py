"""Container images of this project, named from one setting.

``IMAGE_REGISTRY`` (default ``ghcr.io/wavenet-pipelines``) and ``IMAGE_TAG`` (default
``0.1.0``) name every image: ``make image``, ``make push``, ``make compile``,
``make submit-pipeline`` and ``make run-containers`` all read the same two variables, so a
user builds, pushes and submits to their own registry without editing code::

    IMAGE_REGISTRY=registry.example.com/ml IMAGE_TAG=2026-11 make image push submit-pipeline

Images by digest: ``make push`` records the manifest digest the registry answered for each
pushed reference in ``images.lock.json`` (:mod:`pipelines.image_digests`); ``make compile`` and
``make submit-pipeline`` name that file in ``IMAGE_DIGESTS``, and every name below then reads
``<registry>/<repository>@sha256:...``, so a cluster pulls exactly what was pushed, whatever
the tag points to later. A name with no recorded digest keeps its tag, with a warning. Without
``IMAGE_DIGESTS`` (local runs, the containers of ``make run-containers``): tags.

The names are fixed when this module is imported (``@dsl.component`` takes its
``base_image`` at definition time), which makes this module the edge where the setting
is read. The committed ``pipelines/wavenet-train.yaml`` is compiled with the defaults.
"""

from __future__ import annotations

import json
import os
import re
import sys
from collections.abc import Mapping

DEFAULT_REGISTRY = "ghcr.io/wavenet-pipelines"
DEFAULT_TAG = "0.1.0"

# Image names (repository part) of the docker/Dockerfile targets.
REPOSITORIES = {"cpu": "wavenet", "gpu": "wavenet-gpu", "mlflow": "mlflow"}

# registry[:port]/path (lower case, as OCI references require); tag: [A-Za-z0-9_][A-Za-z0-9_.-]{0,127}
_REGISTRY_RE = re.compile(r"^[a-z0-9]([a-z0-9.-]*[a-z0-9])?(:[0-9]+)?(/[a-z0-9]+([._-]+[a-z0-9]+)*)*$")
_TAG_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$")
DIGEST_RE = re.compile(r"^sha256:[0-9a-f]{64}$")


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


def read_digests(path: str) -> dict[str, str]:
    """The digests ``make push`` recorded: ``{"<registry>/<repo>:<tag>": "sha256:..."}``.

    A missing file is an empty record; a malformed one is a ``ValueError`` naming the file.
    """
    try:
        with open(path) as f:
            data = json.load(f)
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as e:
        raise ValueError(f"{path}: not a digest record written by make push ({e})") from None
    if not isinstance(data, dict) or not all(isinstance(v, str) and DIGEST_RE.match(v) for v in data.values()):
        raise ValueError(f"{path}: every value must be a sha256:<64 hex> digest")
    return data


def by_digest(reference: str, digests: Mapping[str, str]) -> str | None:
    """``<name>@sha256:...`` for a ``<name>:<tag>`` whose digest is recorded, else None."""
    digest = digests.get(reference)
    return f"{reference.rsplit(':', 1)[0]}@{digest}" if digest else None


def image_ref(target: str, environ: Mapping[str, str] | None = None) -> str:
    """The reference a cluster pulls: :func:`image_name`, by digest when ``IMAGE_DIGESTS`` has it.

    Args:
        target: ``cpu``, ``gpu`` or ``mlflow``.
        environ: where ``IMAGE_REGISTRY``, ``IMAGE_TAG`` and ``IMAGE_DIGESTS`` are read.

    Returns:
        ``<registry>/<repository>@sha256:...`` when ``IMAGE_DIGESTS`` names a record holding the
        tagged name; the tagged name otherwise (with a warning on stderr when ``IMAGE_DIGESTS``
        is set: a tag can be moved to other bytes after the pipeline is compiled).
    """
    env = os.environ if environ is None else environ
    name = image_name(target, env)
    lock = env.get("IMAGE_DIGESTS")
    if not lock:
        return name
    pinned = by_digest(name, read_digests(lock))
    if pinned is None:
        print(f"warning: no digest recorded for {name} in {lock} (make push records it): "
              "the cluster pulls it by tag", file=sys.stderr)
    return pinned or name


# CPU image: every pipeline step (and the TFJob launcher) runs in it.
WAVENET_IMAGE = image_ref("cpu")
# GPU image (TensorFlow with its CUDA wheels): the TFJob's training pods.
WAVENET_GPU_IMAGE = image_ref("gpu")
# MLflow tracking server (k8s/mlflow.yaml).
MLFLOW_IMAGE = image_ref("mlflow")
