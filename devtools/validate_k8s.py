"""Offline validation of every manifest in ``k8s/`` (``make k8s-validate``).

- The kustomize base is rendered (``kubectl kustomize`` when kubectl is on PATH, and always
  by reading ``kustomization.yaml``'s resources in Python) and every object is checked
  against the Kubernetes OpenAPI schema of ``K8S_VERSION`` with kubernetes-validate (strict:
  unknown fields are errors).
- The TFJob template is checked against ``k8s/schemas/tfjob.schema.json`` (written for the
  fields we use) with jsonschema, and its Worker pod template against the Pod schema.
- Policy: no Secret objects and no credential-looking literal values in any file.
- Hardening (issue 10, Found 9), written here in Python: every pod spec (the Deployment, the
  TFJob template) runs non-root as uid 1000 with seccomp RuntimeDefault, no service-account
  token, no host namespaces or hostPath, and containers with no privilege escalation, a
  read-only root with the image's writable /scratch on an emptyDir, all capabilities dropped,
  and resource requests and a memory limit; the namespace enforces a Pod Security Admission
  level; ``--allowed-hosts`` wildcards end in a cluster-internal suffix.
- Quota: a ResourceQuota caps GPUs, TFJobs, CPU and memory requests and memory limits.
- The TFJob admission policy (``tfjob-policy.yaml``): its CEL is evaluated offline with
  cel-python and must admit the TFJobs ``wavenet.edges.tfjob.render_tfjob`` makes from the template.
- Compiled pipelines given on the command line: every step's pod is non-root (uid 1000) with
  the /scratch emptyDir.

Usage: ``python -m devtools.validate_k8s [K8S_DIR [PIPELINE.yaml ...]]``; exits 1 listing every
problem.
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
                   "PersistentVolume", "StorageClass", "PriorityClass", "ValidatingAdmissionPolicy",
                   "ValidatingAdmissionPolicyBinding"}
# The images' user (docker/Dockerfile `USER 1000:1000`) and their writable folder.
RUN_AS = 1000
SCRATCH = "/scratch"
# Pod Security Admission levels a namespace of ours may enforce.
PSA_LEVELS = ("restricted", "baseline")
# A wildcard in --allowed-hosts must end in one of these (no public DNS name does).
_INTERNAL_SUFFIXES = (".svc", ".svc.cluster.local", ".cluster.local")
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
    objs = [d for d in yaml.safe_load_all(out.stdout) if d]
    # kustomize's namespace transformer knows only the kinds of its built-in schema and puts the
    # namespace on newer cluster-scoped ones (ValidatingAdmissionPolicy); the API server clears
    # metadata.namespace of a cluster-scoped object, so it is dropped here as there.
    for obj in objs:
        if obj.get("kind") in _CLUSTER_SCOPED and obj.get("kind") != "Namespace":
            (obj.get("metadata") or {}).pop("namespace", None)
    return objs


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


# -- hardening, in Python ------------------------------------------------------------------------

def _pod_specs(obj: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """(where, pod spec) of every pod an object makes."""
    kind = obj.get("kind")
    if kind == "Pod":
        return [(_ident(obj), obj.get("spec") or {})]
    if kind in ("Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "Job"):
        return [(_ident(obj), ((obj.get("spec") or {}).get("template") or {}).get("spec") or {})]
    if kind == "CronJob":
        job = ((obj.get("spec") or {}).get("jobTemplate") or {}).get("spec") or {}
        return [(_ident(obj), (job.get("template") or {}).get("spec") or {})]
    if kind == "TFJob":
        return [(f"{_ident(obj)} {role}", ((spec or {}).get("template") or {}).get("spec") or {})
                for role, spec in ((obj.get("spec") or {}).get("tfReplicaSpecs") or {}).items()]
    return []


def check_pod_hardening(pod: dict[str, Any], where: str) -> list[str]:
    """Problems with one pod spec's hardening (empty: hardened). See the module docstring."""
    problems = []
    ctx = pod.get("securityContext") or {}
    if pod.get("automountServiceAccountToken") is not False:
        problems.append(f"{where}: automountServiceAccountToken must be false")
    for key in ("hostNetwork", "hostPID", "hostIPC"):
        if pod.get(key):
            problems.append(f"{where}: {key} must not be set")
    volumes = {v.get("name"): v for v in pod.get("volumes") or []}
    for name, v in volumes.items():
        if "hostPath" in v:
            problems.append(f"{where}: volume {name!r} is a hostPath")
    containers = list(pod.get("containers") or []) + list(pod.get("initContainers") or [])
    if not containers:
        problems.append(f"{where}: no containers")
    for c in containers:
        cw = f"{where} container {c.get('name')!r}"
        cctx = c.get("securityContext") or {}
        eff = {**ctx, **cctx}  # container settings override the pod's
        if eff.get("runAsNonRoot") is not True:
            problems.append(f"{cw}: runAsNonRoot must be true")
        if eff.get("runAsUser") != RUN_AS:
            problems.append(f"{cw}: runAsUser must be {RUN_AS} (the image's user). "
                            f"Received: {eff.get('runAsUser')!r}")
        if (eff.get("seccompProfile") or {}).get("type") != "RuntimeDefault":
            problems.append(f"{cw}: seccompProfile must be RuntimeDefault")
        if cctx.get("allowPrivilegeEscalation") is not False:
            problems.append(f"{cw}: allowPrivilegeEscalation must be false")
        if cctx.get("privileged"):
            problems.append(f"{cw}: must not be privileged")
        caps = cctx.get("capabilities") or {}
        if "ALL" not in (caps.get("drop") or []) or caps.get("add"):
            problems.append(f"{cw}: capabilities must drop ALL and add none")
        if cctx.get("readOnlyRootFilesystem") is not True:
            problems.append(f"{cw}: readOnlyRootFilesystem must be true")
        scratch = [m for m in c.get("volumeMounts") or [] if m.get("mountPath") == SCRATCH]
        if not scratch or "emptyDir" not in volumes.get(scratch[0].get("name"), {}) \
                or scratch[0].get("readOnly"):
            problems.append(f"{cw}: needs a writable emptyDir at {SCRATCH} (the image's HOME and "
                            "TMPDIR; the root filesystem is read-only)")
        res = c.get("resources") or {}
        if not (res.get("requests") or {}).get("cpu") or not (res.get("requests") or {}).get("memory") \
                or not (res.get("limits") or {}).get("memory"):
            problems.append(f"{cw}: needs cpu and memory requests and a memory limit")
    return problems


def check_allowed_hosts(objs: list[dict[str, Any]]) -> list[str]:
    """``mlflow server --allowed-hosts`` wildcards that could match a public DNS name.

    MLflow matches an entry containing ``*`` with ``fnmatch`` (mlflow/server/security_utils.py,
    ``is_allowed_host_header``), where ``*`` matches dots too: ``mlflow.*:5000`` admits
    ``mlflow.attacker.com:5000``. A wildcard entry must end in a cluster-internal suffix.
    """
    problems = []
    for obj in objs:
        for where, pod in _pod_specs(obj):
            for c in pod.get("containers") or []:
                for a in c.get("args") or []:
                    if not a.startswith("--allowed-hosts="):
                        continue
                    for pattern in a.split("=", 1)[1].split(","):
                        host = pattern.strip().rsplit(":", 1)[0] if ":" in pattern else pattern.strip()
                        if "*" in pattern and (pattern.strip() == "*" or not host.endswith(_INTERNAL_SUFFIXES)):
                            problems.append(f"{where}: --allowed-hosts entry {pattern.strip()!r} can match "
                                            f"a public name (e.g. mlflow.attacker.com); a wildcard must "
                                            f"end in {' or '.join(_INTERNAL_SUFFIXES)}")
    return problems


# What the namespace's ResourceQuota must cap (issue 19): GPUs and TFJobs, the scarce things a
# run of jobs could take, and the compute every pod requests.
QUOTA_KEYS = ("requests.nvidia.com/gpu", "count/tfjobs.kubeflow.org", "requests.cpu", "requests.memory",
              "limits.memory")


def check_quota(objs: list[dict[str, Any]]) -> list[str]:
    """Problems with the base's quota: a ResourceQuota must cap every key of :data:`QUOTA_KEYS`."""
    hard: dict[str, Any] = {}
    for obj in objs:
        if obj.get("kind") == "ResourceQuota":
            hard.update((obj.get("spec") or {}).get("hard") or {})
    missing = [k for k in QUOTA_KEYS if k not in hard]
    return [f"the base needs a ResourceQuota capping {', '.join(missing)}"] if missing else []


def check_hardening(objs: list[dict[str, Any]]) -> list[str]:
    """Pod hardening of every object, PSA labels of every Namespace, the allowed hosts."""
    problems = []
    for obj in objs:
        for where, pod in _pod_specs(obj):
            problems += check_pod_hardening(pod, where)
        if obj.get("kind") == "Namespace":
            labels = (obj.get("metadata") or {}).get("labels") or {}
            level = labels.get("pod-security.kubernetes.io/enforce")
            if level not in PSA_LEVELS:
                problems.append(f"{_ident(obj)}: label pod-security.kubernetes.io/enforce must be one of "
                                f"{', '.join(PSA_LEVELS)}. Received: {level!r}")
    return problems + check_allowed_hosts(objs)


# -- the admission policy's CEL, executed offline ---------------------------------------------------

def evaluate_admission_policy(policy: dict[str, Any], obj: dict[str, Any]) -> list[str]:
    """The messages of the policy's validations that deny ``obj`` (empty: admitted).

    Evaluates ``spec.variables`` and ``spec.validations`` with cel-python, a CEL implementation
    other than the API server's cel-go; the policy uses standard CEL only. An expression that
    fails to evaluate denies, as on the API server.
    """
    import celpy

    env = celpy.Environment()
    spec = policy["spec"]
    activation: dict[str, Any] = {"object": celpy.json_to_cel(obj)}
    variables: dict[str, Any] = {}

    def run(expr: str):
        activation["variables"] = celpy.celtypes.MapType(
            {celpy.celtypes.StringType(k): v for k, v in variables.items()})
        return env.program(env.compile(expr)).evaluate(activation)

    denied = []
    for var in spec.get("variables") or []:
        try:
            variables[var["name"]] = run(var["expression"])
        except celpy.CELEvalError as e:
            return [f"variable {var['name']}: {e.args[0] if e.args else e}"]
    for v in spec.get("validations") or []:
        try:
            ok = run(v["expression"])
        except celpy.CELEvalError as e:
            ok = f"evaluation error: {e.args[0] if e.args else e}"
        if ok is not True and not (isinstance(ok, celpy.celtypes.BoolType) and bool(ok)):
            denied.append(v.get("message") or v["expression"])
    return denied


def rendered_tfjobs(template: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The TFJobs the train component creates from ``template``: a GPU and a CPU one.

    Rendered by :func:`wavenet.train.training_tfjob`, the launcher's own function, so the
    program (``wavenet train`` and its arguments) is the one a real run has.
    """
    from wavenet.config import preset
    from wavenet.context import RunContext
    from wavenet.train import ClusterSettings, training_tfjob

    cfg = preset("demo")
    gpu = ClusterSettings("wavenet", "ghcr.io/wavenet-pipelines/wavenet-gpu:0.1.0", workers=2,
                          gpus_per_worker=1, accelerator="nvidia-l4", template=template)
    cpu = ClusterSettings("wavenet", "ghcr.io/wavenet-pipelines/wavenet:0.1.0", workers=1, template=template)
    return {what: training_tfjob(cfg, f"wavenet-policy-{what.lower()}", "gs://b/shards",
                                 f"gs://b/runs/wavenet-policy-{what.lower()}", cluster,
                                 RunContext("http://mlflow:5000", run_name="demo-d01234567-1206T140000",
                                            experiment="wavenet", environ={}))
            for what, cluster in (("GPU", gpu), ("CPU", cpu))}


def check_admission_policies(objs: list[dict[str, Any]], template: dict[str, Any]) -> tuple[list[str], list[str]]:
    """(report lines, problems): every TFJob admission policy must admit our rendered TFJobs."""
    report, problems = [], []
    jobs = rendered_tfjobs(template)
    for policy in [o for o in objs if o.get("kind") == "ValidatingAdmissionPolicy"]:
        for what, job in jobs.items():
            denied = evaluate_admission_policy(policy, job)
            if denied:
                problems.append(f"{_ident(policy)} denies the {what} TFJob rendered from the template: "
                                + "; ".join(denied))
            else:
                report.append(f"{_ident(policy)}: CEL (cel-python) admits the {what} TFJob rendered "
                              "from the template")
    return report, problems


def check_compiled_pipeline(path: str | Path) -> list[str]:
    """Problems with the step pods of a compiled pipeline (KFP IR YAML with its platform spec)."""
    path = Path(path)
    docs = _load_docs(path)
    spec = docs[0]
    platform = docs[1] if len(docs) > 1 else {}
    executors = (((platform.get("platforms") or {}).get("kubernetes") or {}).get("deploymentSpec")
                 or {}).get("executors") or {}
    problems = []
    for name in (spec.get("deploymentSpec") or {}).get("executors") or {}:
        e = executors.get(name) or {}
        ctx = e.get("securityContext") or {}
        if ctx.get("runAsNonRoot") is not True or str(ctx.get("runAsUser")) != str(RUN_AS):
            problems.append(f"{path.name}: step {name} must run non-root as uid {RUN_AS} "
                            "(kfp.kubernetes.set_security_context). Received: "
                            f"securityContext={ctx or None}")
        if not any(m.get("mountPath") == SCRATCH for m in e.get("emptyDirMounts") or []):
            problems.append(f"{path.name}: step {name} needs the {SCRATCH} emptyDir (read-only images)")
    return problems


def _validate_base(k8s_dir: Path, version: str) -> tuple[list[dict[str, Any]], list[str], list[str]]:
    """(rendered objects, report lines, problems) of the kustomize base: its schema (as
    ``kubectl kustomize`` renders it, where kubectl exists), policy, hardening and quota."""
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
    problems += check_hardening(rendered)
    problems += check_quota(rendered)
    return rendered, report, problems


def _validate_template(k8s_dir: Path, version: str, rendered: list[dict[str, Any]]
                       ) -> tuple[list[str], list[str]]:
    """(report lines, problems) of the TFJob template, and of the admission policies of the
    base against the TFJobs rendered from it."""
    report: list[str] = []
    docs = _load_docs(k8s_dir / TFJOB_TEMPLATE)
    problems = check_policy(docs)
    problems += [f"{TFJOB_TEMPLATE}: {p}" for p in check_hardening(docs)]
    for job in docs:
        try:
            validate_tfjob(job, k8s_dir / TFJOB_SCHEMA, version)
            report.append(f"{_ident(job)} ({TFJOB_TEMPLATE}): {TFJOB_SCHEMA} + Pod schema (strict)")
        except Exception as e:  # noqa: BLE001
            problems.append(f"{TFJOB_TEMPLATE}: {str(e).splitlines()[0]}")
    if docs:
        try:
            lines, found = check_admission_policies(rendered, docs[0])
            report += lines
            problems += found
        except Exception as e:  # noqa: BLE001 - e.g. a template render_tfjob refuses
            problems.append(f"admission policy check: {str(e).splitlines()[0]}")
    return report, problems


def _unlisted(k8s_dir: Path) -> list[str]:
    """Every other YAML file in ``k8s_dir`` must be part of the base or the template."""
    known = {"kustomization.yaml", TFJOB_TEMPLATE,
             *yaml.safe_load((k8s_dir / "kustomization.yaml").read_text()).get("resources", [])}
    return [f"{extra}: not listed in kustomization.yaml resources (unvalidated)"
            for extra in sorted(p.name for p in k8s_dir.glob("*.yaml") if p.name not in known)]


def validate_all(k8s_dir: str | Path = "k8s", version: str = K8S_VERSION,
                 pipelines: list[str | Path] = ()) -> list[str]:
    """Validate every manifest in ``k8s_dir``.

    Returns:
        One line per object validated (``kind/namespace/name: how``).

    Raises:
        K8sValidationError: listing every problem found.
    """
    k8s_dir = Path(k8s_dir)
    rendered, report, problems = _validate_base(k8s_dir, version)
    lines, found = _validate_template(k8s_dir, version, rendered)
    report += lines
    problems += found
    if not problems:
        report.append(f"hardening (Python policy checks): every pod spec in {k8s_dir}")

    for pipeline in pipelines:
        found = check_compiled_pipeline(pipeline)
        problems += found
        if not found:
            report.append(f"{Path(pipeline).name}: every step non-root (uid {RUN_AS}) with {SCRATCH}")

    problems += _unlisted(k8s_dir)
    if problems:
        raise K8sValidationError("\n".join(problems))
    return report


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    k8s_dir = argv[0] if argv else "k8s"
    try:
        lines = validate_all(k8s_dir, pipelines=argv[1:])
    except K8sValidationError as e:
        print(f"error: invalid manifests in {k8s_dir}:\n{e}", file=sys.stderr)
        return 1
    for line in lines:
        print(f"ok  {line}")
    print(f"{len(lines)} checks passed (offline)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
