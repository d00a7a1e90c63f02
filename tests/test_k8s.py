"""The kustomize base and TFJob template validate offline (the function `make k8s-validate` runs)."""

import shutil
from pathlib import Path

import pytest
import yaml

from pipelines.validate_k8s import K8sValidationError, kubectl_kustomize, render_kustomization, validate_all

K8S = Path(__file__).resolve().parents[1] / "k8s"


@pytest.fixture(scope="module")
def objects():
    return {(o["kind"], o["metadata"]["name"]): o for o in render_kustomization(K8S)}


def test_every_manifest_validates_offline():
    lines = validate_all(K8S)
    kinds = {line.split("/")[0] for line in lines}
    assert kinds == {"Namespace", "ServiceAccount", "Role", "RoleBinding", "Deployment", "Service",
                     "NetworkPolicy", "TFJob"}
    assert any("tfjob-template.yaml" in line for line in lines)


def test_python_rendering_matches_kubectl_kustomize_when_available():
    theirs = kubectl_kustomize(K8S)
    if theirs is None:
        pytest.skip("kubectl not installed: only the Python rendering is checked")
    ours = render_kustomization(K8S)
    key = lambda o: (o["kind"], o["metadata"]["name"])  # noqa: E731
    assert sorted(ours, key=key) == sorted(theirs, key=key)


def test_launcher_role_allows_only_what_the_launcher_needs(objects):
    rules = objects[("Role", "wavenet-launcher")]["rules"]
    granted = {(g, r, v) for rule in rules for g in rule["apiGroups"] for r in rule["resources"]
               for v in rule["verbs"]}
    assert granted == ({("kubeflow.org", "tfjobs", v) for v in ("create", "get", "list", "watch", "delete")}
                       | {("", "pods", v) for v in ("get", "list", "watch")} | {("", "pods/log", "get")})
    binding = objects[("RoleBinding", "wavenet-launcher")]
    assert binding["roleRef"]["name"] == "wavenet-launcher"
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "wavenet-launcher",
                                    "namespace": "wavenet"}]
    assert objects[("ServiceAccount", "wavenet-trainer")]["automountServiceAccountToken"] is False


def test_mlflow_server_is_authenticated_host_checked_and_uses_secrets_by_name(objects):
    dep = objects[("Deployment", "mlflow")]
    (c,) = dep["spec"]["template"]["spec"]["containers"]
    args = c["args"]
    assert args[0] == "server" and "--app-name=basic-auth" in args
    assert any(a.startswith("--allowed-hosts=") for a in args)
    assert any(a.startswith("--artifacts-destination=gs://") for a in args)
    env = {e["name"]: e for e in c["env"]}
    for name in ("MLFLOW_BACKEND_STORE_URI", "MLFLOW_AUTH_ADMIN_PASSWORD", "MLFLOW_FLASK_SERVER_SECRET_KEY"):
        assert "value" not in env[name] and env[name]["valueFrom"]["secretKeyRef"]["name"]
    svc = objects[("Service", "mlflow")]
    assert svc["spec"]["type"] == "ClusterIP"
    assert svc["spec"]["selector"] == dep["spec"]["template"]["metadata"]["labels"]


def test_network_policy_admits_only_the_pipeline_namespace(objects):
    pol = objects[("NetworkPolicy", "mlflow-ingress")]
    assert pol["spec"]["podSelector"]["matchLabels"] == {"app.kubernetes.io/name": "mlflow"}
    (rule,) = pol["spec"]["ingress"]
    # A bare podSelector (no namespaceSelector) admits pods of the policy's namespace only.
    assert rule["from"] == [{"podSelector": {}}]
    assert rule["ports"] == [{"protocol": "TCP", "port": 5000}]
    assert pol["spec"]["policyTypes"] == ["Ingress"]


@pytest.fixture
def k8s_copy(tmp_path):
    dst = tmp_path / "k8s"
    shutil.copytree(K8S, dst)
    return dst


def _edit(path: Path, fn):
    docs = list(yaml.safe_load_all(path.read_text()))
    fn(docs)
    path.write_text(yaml.safe_dump_all(docs))


def test_a_typo_in_a_core_manifest_is_reported_with_the_object(k8s_copy):
    def typo(docs):
        dep = next(d for d in docs if d["kind"] == "Deployment")
        dep["spec"]["replica"] = 1
    _edit(k8s_copy / "mlflow.yaml", typo)
    with pytest.raises(K8sValidationError, match="Deployment/wavenet/mlflow.*replica"):
        validate_all(k8s_copy)


def test_a_committed_secret_or_credential_is_refused(k8s_copy):
    (k8s_copy / "secret.yaml").write_text(yaml.safe_dump(
        {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "db"},
         "stringData": {"uri": "postgresql://mlflow:hunter22@db:5432/mlflow"}}))
    kust = yaml.safe_load((k8s_copy / "kustomization.yaml").read_text())
    kust["resources"].append("secret.yaml")
    (k8s_copy / "kustomization.yaml").write_text(yaml.safe_dump(kust))
    with pytest.raises(K8sValidationError) as e:
        validate_all(k8s_copy)
    assert "Secrets must not be committed" in str(e.value)
    assert "looks like a credential" in str(e.value)


def test_a_bad_tfjob_template_is_reported(k8s_copy):
    def bad(docs):
        docs[0]["spec"]["tfReplicaSpecs"]["Worker"]["restartPolicy"] = "Sometimes"
    _edit(k8s_copy / "tfjob-template.yaml", bad)
    with pytest.raises(K8sValidationError, match="tfjob-template.yaml"):
        validate_all(k8s_copy)


def test_a_manifest_left_out_of_the_kustomization_is_reported(k8s_copy):
    (k8s_copy / "extra.yaml").write_text("apiVersion: v1\nkind: ConfigMap\nmetadata: {name: x}\n")
    with pytest.raises(K8sValidationError, match="extra.yaml: not listed"):
        validate_all(k8s_copy)
