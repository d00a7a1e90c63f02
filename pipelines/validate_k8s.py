"""Offline validation of every manifest in ``k8s/`` (``make k8s-validate``).

- The kustomize base is rendered (``kubectl kustomize`` when kubectl is on PATH, and always
  by reading ``kustomization.yaml``'s resources in Python) and every object is checked
  against the Kubernetes OpenAPI schema of ``K8S_VERSION`` with kubernetes-validate (strict:
  unknown fields are errors).
- The TFJob template is checked against ``k8s/schemas/tfjob.schema.json`` (written for the
  fields we use) with jsonschema, and its Worker pod template against the Pod schema.
- Policy: no Secret objects and no credential-looking literal values in any file.

Usage: ``python -m pipelines.validate_k8s [K8S_DIR]``; exits 1 listing every problem.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import yaml

K8S_VERSION = "1.30"
TFJOB_TEMPLATE = "tfjob-template.yaml"
TFJOB_SCHEMA = "schemas/tfjob.schema.json"
# Kinds that live in a namespace (the kustomization's `namespace:` applies to them).
_CLUSTER_SCOPED = {"Namespace", "ClusterRole", "ClusterRoleBinding", "CustomResourceDefinition",
                   "PersistentVolume", "StorageClass", "PriorityClass"}
# user:password@host in a URI, or a key=value that names a password/token/secret.
_CREDENTIAL = re.compile(r"://[^/\s:@]+:[^/\s@]+@|(password|passwd|token|secret)\s*[:=]\s*\S{4,}",
                         re.IGNORECASE)


class K8sValidationError(Exception):
    """One or more manifests are invalid; the message lists every problem."""


def _load_docs(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def render_kustomization(k8s_dir: str | Path) -> list[dict[str, Any]]:
    """Render a kustomization in Python: its resources, namespace and labels.

    Covers the features our base uses (``resources`` files, ``namespace``, ``labels``
    pairs); anything else in the kustomization is an error, so the Python rendering can
    never silently differ from ``kustomize build``.
    """
    k8s_dir = Path(k8s_dir)
    kust = yaml.safe_load((k8s_dir / "kustomization.yaml").read_text())
    unsupported = set(kust) - {"apiVersion", "kind", "namespace", "labels", "resources"}
    if unsupported:
        raise K8sValidationError(f"kustomization.yaml uses fields the offline renderer does not "
                                 f"support: {', '.join(sorted(unsupported))}")
    namespace = kust.get("namespace")
    labels: dict[str, str] = {}
    for entry in kust.get("labels", []):
        labels.update(entry.get("pairs", {}))
    objs = []
    for res in kust.get("resources", []):
        for obj in _load_docs(k8s_dir / res):
            meta = obj.setdefault("metadata", {})
            if namespace and obj.get("kind") not in _CLUSTER_SCOPED:
                meta["namespace"] = namespace
            if namespace and obj.get("kind") == "Namespace":
                meta["name"] = namespace
            if labels:
                meta.setdefault("labels", {}).update(labels)
            objs.append(obj)
    return objs


def kubectl_kustomize(k8s_dir: str | Path) -> list[dict[str, Any]] | None:
    """``kubectl kustomize`` output, or None when kubectl is not installed."""
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        return None
    out = subprocess.run([kubectl, "kustomize", str(k8s_dir)], capture_output=True, text=True,
                         timeout=60)
    if out.returncode != 0:
        raise K8sValidationError(f"kubectl kustomize {k8s_dir} failed: {out.stderr.strip()}")
    return [d for d in yaml.safe_load_all(out.stdout) if d]


def _ident(obj: dict[str, Any]) -> str:
    meta = obj.get("metadata", {})
    ns = meta.get("namespace")
    return f"{obj.get('kind')}/{(ns + '/') if ns else ''}{meta.get('name')}"


def validate_core(obj: dict[str, Any], version: str = K8S_VERSION) -> None:
    """Validate a core-kind object against the Kubernetes schema (strict)."""
    import kubernetes_validate

    kubernetes_validate.validate(obj, version, strict=True)


def validate_tfjob(job: dict[str, Any], schema_path: str | Path,
                   version: str = K8S_VERSION) -> None:
    """Validate a TFJob: our JSON schema, then its Worker pod template as a Pod.

    Raises:
        jsonschema.ValidationError: the job does not match.
    """
    import jsonschema

    schema = json.loads(Path(schema_path).read_text())
    jsonschema.validate(job, schema, cls=jsonschema.Draft202012Validator)
    for role, spec in job["spec"]["tfReplicaSpecs"].items():
        tmpl = spec["template"]
        pod = {"apiVersion": "v1", "kind": "Pod",
               "metadata": {**tmpl.get("metadata", {}), "name": f"{job['metadata']['name']}-{role.lower()}-0"},
               "spec": tmpl["spec"]}
        validate_core(pod, version)


def _strings(node: Any) -> Iterable[str]:
    if isinstance(node, dict):
        for k, v in node.items():
            yield str(k)
            yield from _strings(v)
    elif isinstance(node, list):
        for v in node:
            yield from _strings(v)
    elif isinstance(node, str):
        yield node


def check_policy(objs: list[dict[str, Any]]) -> list[str]:
    """Problems with secrets handling: Secret objects or credential-looking literals."""
    problems = []
    for obj in objs:
        if obj.get("kind") == "Secret":
            problems.append(f"{_ident(obj)}: Secrets must not be committed; reference them by name")
        for s in _strings(obj):
            if _CREDENTIAL.search(s):
                problems.append(f"{_ident(obj)}: value looks like a credential: {s[:40]!r}")
    return problems


def validate_all(k8s_dir: str | Path = "k8s", version: str = K8S_VERSION) -> list[str]:
    """Validate every manifest in ``k8s_dir``.

    Returns:
        One line per object validated (``kind/namespace/name: how``).

    Raises:
        K8sValidationError: listing every problem found.
    """
    k8s_dir = Path(k8s_dir)
    report: list[str] = []
    problems: list[str] = []

    rendered = render_kustomization(k8s_dir)
    by_kubectl = kubectl_kustomize(k8s_dir)
    if by_kubectl is not None:
        ours, theirs = sorted(map(_ident, rendered)), sorted(map(_ident, by_kubectl))
        if ours != theirs:
            problems.append(f"offline rendering differs from kubectl kustomize: {ours} != {theirs}")
    for obj in by_kubectl if by_kubectl is not None else rendered:
        try:
            validate_core(obj, version)
            report.append(f"{_ident(obj)}: Kubernetes {version} schema (strict)")
        except Exception as e:  # noqa: BLE001 - collect every problem, report them together
            problems.append(f"{_ident(obj)}: {str(e).splitlines()[0]}")
    problems += check_policy(rendered)

    template = k8s_dir / TFJOB_TEMPLATE
    docs = _load_docs(template)
    problems += check_policy(docs)
    for job in docs:
        try:
            validate_tfjob(job, k8s_dir / TFJOB_SCHEMA, version)
            report.append(f"{_ident(job)} ({TFJOB_TEMPLATE}): {TFJOB_SCHEMA} + Pod schema (strict)")
        except Exception as e:  # noqa: BLE001
            problems.append(f"{TFJOB_TEMPLATE}: {str(e).splitlines()[0]}")

    # Every other YAML file in k8s/ must be part of the base or the template.
    known = {"kustomization.yaml", TFJOB_TEMPLATE,
             *yaml.safe_load((k8s_dir / "kustomization.yaml").read_text()).get("resources", [])}
    for extra in sorted(p.name for p in k8s_dir.glob("*.yaml") if p.name not in known):
        problems.append(f"{extra}: not listed in kustomization.yaml resources (unvalidated)")

    if problems:
        raise K8sValidationError("\n".join(problems))
    return report


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    k8s_dir = argv[0] if argv else "k8s"
    try:
        lines = validate_all(k8s_dir)
    except K8sValidationError as e:
        print(f"error: invalid manifests in {k8s_dir}:\n{e}", file=sys.stderr)
        return 1
    for line in lines:
        print(f"ok  {line}")
    print(f"{len(lines)} objects valid (offline)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
