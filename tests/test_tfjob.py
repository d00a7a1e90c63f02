"""The TFJob the launcher creates: rendering, schema validation, outcome detection.

No cluster here: these tests stop at the Kubernetes API boundary (see docs/cluster.md for what
was and was not exercised against a real cluster).
"""

import contextlib
import copy
import re
from pathlib import Path

import jsonschema
import pytest

from devtools.validate_k8s import TFJOB_SCHEMA, validate_tfjob
from wavenet import cli
from wavenet.config import preset
from wavenet.context import RunContext
from wavenet.edges import tfjob
from wavenet.edges.tracking import run_name
from wavenet.errors import ConfigError
from wavenet.train import ClusterSettings, training_tfjob

K8S = Path(__file__).resolve().parents[1] / "k8s"
SCHEMA = K8S / TFJOB_SCHEMA


def _render(**kw):
    args = dict(name="wavenet-demo-x", namespace="ml", image="reg/wavenet-gpu:1",
                command=["wavenet", "train"], args=["gs://b/shards", "--out", "gs://b/run"],
                workers=3, gpus_per_worker=2, accelerator="nvidia-a100-80gb")
    args.update(kw)
    return render(**args)


def render(name, namespace, image, command, args=(), labels=None, template=None, **kw):
    """render_tfjob from flat keywords: each goes to the Pods or the JobPolicy field of its name."""
    pods = {k: kw.pop(k) for k in list(kw) if k in tfjob.Pods.__dataclass_fields__}
    return tfjob.render_tfjob(name, namespace, tfjob.Pods(image, command, args, **pods),
                              policy=tfjob.JobPolicy(**kw), labels=labels, template=template)


def _worker(job):
    return job["spec"]["tfReplicaSpecs"]["Worker"]


def _container(job):
    (c,) = [c for c in _worker(job)["template"]["spec"]["containers"] if c["name"] == "tensorflow"]
    return c


def test_gpu_job_has_replicas_gpus_node_selection_and_shm():
    job = _render(env={"MLFLOW_RUN_ID": "abc"}, backoff_limit=5, ttl_seconds_after_finished=60,
                  clean_pod_policy="All", restart_policy="OnFailure")
    validate_tfjob(job, SCHEMA)
    assert job["apiVersion"] == "kubeflow.org/v1" and job["kind"] == "TFJob"
    assert job["metadata"] == {**job["metadata"], "name": "wavenet-demo-x", "namespace": "ml"}
    w = _worker(job)
    assert w["replicas"] == 3 and w["restartPolicy"] == "OnFailure"
    assert job["spec"]["runPolicy"] == {"backoffLimit": 5, "ttlSecondsAfterFinished": 60,
                                        "cleanPodPolicy": "All"}
    pod = w["template"]["spec"]
    c = _container(job)
    assert c["image"] == "reg/wavenet-gpu:1"
    assert c["command"] == ["wavenet", "train"] and c["args"][0] == "gs://b/shards"
    assert c["resources"]["limits"]["nvidia.com/gpu"] == 2
    assert "nvidia.com/gpu" not in c["resources"].get("requests", {})
    assert pod["nodeSelector"] == {"cloud.google.com/gke-accelerator": "nvidia-a100-80gb"}
    assert any(t["key"] == "nvidia.com/gpu" for t in pod["tolerations"])
    assert {"name": "MLFLOW_RUN_ID", "value": "abc"} in c["env"]
    shm = [v for v in pod["volumes"] if v["name"] == "dshm"]
    assert shm and shm[0]["emptyDir"]["medium"] == "Memory"
    assert {"name": "dshm", "mountPath": "/dev/shm"} in c["volumeMounts"]


def test_template_defaults_are_kept_when_not_overridden():
    tmpl = tfjob.load_template()
    job = _render(template=tmpl)
    assert job["spec"]["runPolicy"] == tmpl["spec"]["runPolicy"]
    assert _worker(job)["restartPolicy"] == "ExitCode"
    # Rendering never mutates the template it was given.
    assert _worker(tmpl)["replicas"] == 1 and _container(tmpl)["args"] == []


def test_cpu_job_drops_gpu_limits_selector_and_tolerations():
    job = _render(gpus_per_worker=0, workers=1)
    validate_tfjob(job, SCHEMA)
    pod = _worker(job)["template"]["spec"]
    assert "nvidia.com/gpu" not in _container(job)["resources"]["limits"]
    assert "nodeSelector" not in pod and "tolerations" not in pod


def test_any_gpu_node_when_no_accelerator_is_named():
    job = _render(accelerator="")
    validate_tfjob(job, SCHEMA)
    assert "nodeSelector" not in _worker(job)["template"]["spec"]
    assert _container(job)["resources"]["limits"]["nvidia.com/gpu"] == 2


@pytest.mark.parametrize("kw, field", [
    ({"name": "Bad_Name"}, "name"),
    ({"name": "x" * 46}, "name"),
    ({"workers": 0}, "workers"),
    ({"gpus_per_worker": -1}, "gpus_per_worker"),
    ({"restart_policy": "Sometimes"}, "restart_policy"),
    ({"clean_pod_policy": "Some"}, "clean_pod_policy"),
    ({"command": []}, "command"),
])
def test_bad_settings_are_one_line_config_errors(kw, field):
    with pytest.raises(ConfigError, match=field):
        _render(**kw)


def test_template_without_tensorflow_container_is_refused():
    tmpl = tfjob.load_template()
    _container(tmpl)["name"] = "main"
    with pytest.raises(ConfigError, match="tensorflow"):
        _render(template=tmpl)


def test_unreadable_template_names_the_file(tmp_path):
    with pytest.raises(ConfigError, match="missing.yaml"):
        tfjob.load_template(tmp_path / "missing.yaml")


@pytest.mark.parametrize("breakage", [
    lambda j: j["spec"].pop("runPolicy"),
    lambda j: j["spec"]["tfReplicaSpecs"]["Worker"].update(restartPolicy="Sometimes"),
    lambda j: _container(j)["resources"]["requests"].update({"nvidia.com/gpu": 1}),
    lambda j: j["spec"]["tfReplicaSpecs"].update(PS=j["spec"]["tfReplicaSpecs"]["Worker"]),
    lambda j: j["metadata"].update(name="x" * 50),
])
def test_schema_rejects_jobs_the_launcher_must_never_create(breakage):
    job = _render()
    validate_tfjob(job, SCHEMA)
    broken = copy.deepcopy(job)
    breakage(broken)
    with pytest.raises(jsonschema.ValidationError):
        validate_tfjob(broken, SCHEMA)


def test_pod_template_is_checked_against_the_kubernetes_pod_schema():
    job = _render()
    _worker(job)["template"]["spec"]["restartPolicyy"] = "Never"  # a typo Kubernetes would reject
    with pytest.raises(jsonschema.ValidationError, match="restartPolicyy"):
        validate_tfjob(job, SCHEMA)


def test_the_train_components_tfjob_is_valid_and_carries_the_whole_config():
    cfg = preset("demo").with_overrides({"train.steps": 1234, "model.stacks": 3})
    name = tfjob.job_name("wavenet", run_name("demo", "d01234567"))
    job = training_tfjob(
        cfg, name, "gs://bucket/shards", f"gs://bucket/runs/{name}",
        ClusterSettings(namespace="wavenet", image="reg/gpu:1", workers=4, gpus_per_worker=1,
                        accelerator="nvidia-l4"),
        RunContext("http://mlflow.wavenet:5000", run_name="demo-d01234567-20260101T000000Z",
                   experiment="wavenet", init_model=f"gs://bucket/runs/{name}/init_model.keras",
                   environ={}),
        labels={"wavenet/data-version": "0123"})
    validate_tfjob(job, SCHEMA)
    assert len(name) <= 45 and name.startswith("wavenet-demo-d01234567-")
    c = _container(job)
    args = c["args"]
    assert args[:3] == ["gs://bucket/shards", "--out", f"gs://bucket/runs/{name}"]
    assert "--worker" in args and args[args.index("--experiment") + 1] == "wavenet"
    # The whole config, as cfg.to_yaml(): what the pod's `wavenet train` rebuilds.
    argv = cli.build_parser().parse_args(["train", *args])
    assert cli._config(argv) == cfg
    # Warm start: every pod opens the champion's weights resolved into the run folder.
    assert args[args.index("--init-model") + 1] == f"gs://bucket/runs/{name}/init_model.keras"
    assert _worker(job)["replicas"] == 4
    assert job["metadata"]["labels"]["wavenet/data-version"] == "0123"
    assert {"name": "MLFLOW_TRACKING_URI", "value": "http://mlflow.wavenet:5000"} in c["env"]


def test_tfjob_pods_take_the_mlflow_credentials_from_the_steps_secret_by_reference():
    """Issue 10, Found 2: the train step passes its MLflow credentials on (runtime.mlflow_env) and
    the pods get them through secretKeyRef of the Secret the steps read; never in clear."""
    from pipelines.wavenet_train import MLFLOW_CLIENT_SECRET

    step_env = {"MLFLOW_TRACKING_URI": "http://mlflow:5000", "MLFLOW_TRACKING_USERNAME": "alice",
                "MLFLOW_TRACKING_PASSWORD": "s3cret-Pw-77", "HOME": "/scratch"}
    job = training_tfjob(preset("tiny"), "wavenet-tiny-creds", "gs://b/shards", "gs://b/runs/x",
                         ClusterSettings("wavenet", "reg/gpu:1", workers=2),
                         RunContext.create(run_name="r", environ=step_env))
    validate_tfjob(job, SCHEMA)
    env = {e["name"]: e for e in _container(job)["env"]}
    for name, key in (("MLFLOW_TRACKING_USERNAME", "username"), ("MLFLOW_TRACKING_PASSWORD", "password")):
        assert env[name] == {"name": name, "valueFrom": {"secretKeyRef": {
            "name": MLFLOW_CLIENT_SECRET, "key": key, "optional": True}}}, env[name]
    assert env["MLFLOW_TRACKING_URI"]["value"] == "http://mlflow:5000"
    assert "s3cret-Pw-77" not in repr(job) and "alice" not in repr(job)


def test_a_template_without_a_secret_reference_never_gets_a_password_in_clear():
    template = tfjob.load_template()
    (c,) = template["spec"]["tfReplicaSpecs"]["Worker"]["template"]["spec"]["containers"]
    c["env"] = [e for e in c["env"] if "valueFrom" not in e]
    with pytest.raises(ConfigError, match="MLFLOW_TRACKING_PASSWORD would be written into TFJob "
                                          "wavenet-demo-x in clear"):
        _render(template=template, env={"MLFLOW_TRACKING_PASSWORD": "pw", "MLFLOW_RUN_ID": "r"})
    # Without credentials the same template renders.
    assert _container(_render(template=template, env={"MLFLOW_RUN_ID": "r"}))


@pytest.mark.parametrize("conditions, outcome", [
    ([], None),
    ([{"type": "Created", "status": "True"}, {"type": "Running", "status": "True"}], None),
    ([{"type": "Running", "status": "False"}, {"type": "Succeeded", "status": "True"}], "Succeeded"),
    ([{"type": "Restarting", "status": "True"}, {"type": "Failed", "status": "True"}], "Failed"),
    ([{"type": "Failed", "status": "False"}, {"type": "Running", "status": "True"}], None),
])
def test_outcome_is_read_from_terminal_conditions(conditions, outcome):
    assert tfjob.tfjob_outcome({"status": {"conditions": conditions}}) == outcome


@pytest.mark.parametrize("prefix, suffix", [
    ("wavenet", "demo-d0123-20260101T000000Z"),
    ("wavenet", "X" * 80),
    ("9lives", "run"),
])
def test_job_names_are_valid_dns_labels(prefix, suffix):
    name = tfjob.job_name(prefix, suffix)
    assert len(name) <= 45
    render(name, "ns", "img", ["wavenet"])  # raises if the name is invalid


# -- run_tfjob against a loopback stand-in for the API endpoints it calls --------------------
# Not a cluster: a small HTTP server answering the five requests the launcher makes (create,
# read the job, read the pod, follow its log, delete), so the real kubernetes client's
# requests, the wait loop, log streaming and clean-up are exercised up to the HTTP boundary.

import http.server  # noqa: E402
import json  # noqa: E402
import threading  # noqa: E402


class _FakeApi(http.server.ThreadingHTTPServer):
    """``job``: the TFJob the API holds (None: 404). A job given up front (``existing``) keeps
    the status it was given; one created here runs, then gets ``outcome`` after ``polls`` reads.
    ``conflict``: creation answers 409 AlreadyExists (and the job appears, as a twin made it)."""

    def __init__(self, outcome, polls_before_outcome=2, fail_create=False, existing=None,
                 conflict=False):
        super().__init__(("127.0.0.1", 0), _Handler)
        self.outcome, self.polls, self.fail_create = outcome, polls_before_outcome, fail_create
        self.requests, self.job, self.conflict = [], existing, conflict
        self.bodies = []  # (method, path, body) of POST and DELETE
        self.created = threading.Event()


class _Handler(http.server.BaseHTTPRequestHandler):
    def log_message(self, *args):
        pass

    def _send(self, code, obj=None, text=None):
        body = text.encode() if text is not None else json.dumps(obj or {}).encode()
        self.send_response(code)
        self.send_header("Content-Type", "text/plain" if text is not None else "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _status(self, code, reason):
        return self._send(code, {"kind": "Status", "apiVersion": "v1", "status": "Failure",
                                 "reason": reason, "code": code})

    def _body(self):
        n = int(self.headers.get("Content-Length") or 0)
        return json.loads(self.rfile.read(n)) if n else None

    def do_POST(self):  # noqa: N802
        srv = self.server
        body = self._body()
        srv.requests.append(("POST", self.path))
        srv.bodies.append(("POST", self.path, body))
        if srv.fail_create:
            return self._status(403, "Forbidden")
        if srv.conflict or srv.job is not None:
            srv.job = srv.job or {**body, "status": {"conditions": [{"type": "Running", "status": "True"}]}}
            return self._status(409, "AlreadyExists")
        srv.job = body
        srv.created.set()
        self._send(201, body)

    def do_GET(self):  # noqa: N802
        srv = self.server
        srv.requests.append(("GET", self.path))
        if "/pods/" in self.path and self.path.split("?")[0].endswith("/log"):
            return self._send(200, text="step 10 bits 7.9\nstep 20 bits 7.1\n")
        if "/pods/" in self.path:
            return self._send(200, {"kind": "Pod", "apiVersion": "v1", "metadata": {"name": "p"},
                                    "status": {"phase": "Running"}})
        if srv.job is None:
            return self._status(404, "NotFound")
        job = dict(srv.job)
        if "status" not in job:
            gets = sum(1 for m, p in srv.requests if m == "GET" and "/tfjobs/" in p)
            conds = [{"type": "Created", "status": "True"}, {"type": "Running", "status": "True"}]
            if srv.outcome and gets > srv.polls:
                conds.append({"type": srv.outcome, "status": "True",
                              "message": "worker 0 exited with code 2" if srv.outcome == "Failed" else ""})
            job["status"] = {"conditions": conds}
        self._send(200, job)

    def do_DELETE(self):  # noqa: N802
        srv = self.server
        srv.requests.append(("DELETE", self.path))
        srv.bodies.append(("DELETE", self.path, self._body()))
        if srv.job is None:
            return self._status(404, "NotFound")
        srv.job = None
        self._send(200, {"kind": "Status", "status": "Success"})


@pytest.fixture
def fake_api(request):
    servers = []

    def start(**kw):
        srv = _FakeApi(**kw)
        threading.Thread(target=srv.serve_forever, daemon=True).start()
        servers.append(srv)
        from kubernetes import client

        conf = client.Configuration()
        conf.host = f"http://127.0.0.1:{srv.server_address[1]}"
        return srv, client.ApiClient(conf)

    yield start
    for srv in servers:
        srv.shutdown()
        srv.server_close()


def test_run_tfjob_creates_waits_streams_worker0_and_deletes(fake_api):
    srv, api = fake_api(outcome="Succeeded")
    job = _render(namespace="ml")
    lines = []
    final = tfjob.run_tfjob(job, poll_seconds=0.05, log=lines.append, api_client=api)
    assert tfjob.tfjob_outcome(final) == "Succeeded"
    base = "/apis/kubeflow.org/v1/namespaces/ml/tfjobs"
    # First: is there a job of this name already (a retried step's)? No (404): create it.
    assert srv.requests[:2] == [("GET", f"{base}/wavenet-demo-x"), ("POST", base)]
    assert srv.bodies[0][2] == job
    assert ("DELETE", f"{base}/wavenet-demo-x") in srv.requests
    assert any(p.startswith("/api/v1/namespaces/ml/pods/wavenet-demo-x-worker-0/log") and
               "container=tensorflow" in p for _, p in srv.requests)
    assert "step 20 bits 7.1" in lines


def test_run_tfjob_failure_raises_with_the_operators_message_and_still_deletes(fake_api):
    srv, api = fake_api(outcome="Failed")
    with pytest.raises(tfjob.TFJobError, match="failed: worker 0 exited with code 2"):
        tfjob.run_tfjob(_render(), poll_seconds=0.05, log=lambda _: None, api_client=api)
    assert srv.requests[-1][0] == "DELETE"


def test_run_tfjob_times_out_and_deletes(fake_api):
    srv, api = fake_api(outcome=None)
    with pytest.raises(tfjob.TFJobError, match="did not finish within"):
        tfjob.run_tfjob(_render(), poll_seconds=0.05, timeout_s=0.3, log=lambda _: None, api_client=api)
    assert srv.requests[-1][0] == "DELETE"


def test_run_tfjob_refused_creation_is_one_line(fake_api):
    srv, api = fake_api(outcome="Succeeded", fail_create=True)
    with pytest.raises(tfjob.TFJobError, match="cannot create TFJob ml/wavenet-demo-x: 403"):
        tfjob.run_tfjob(_render(), poll_seconds=0.05, log=lambda _: None, api_client=api)
    assert not any(m == "DELETE" for m, _ in srv.requests)


def test_worker_pods_get_time_for_the_final_checkpoint_on_sigterm():
    # wavenet/train/stopping.py: SIGTERM -> two steps, a checkpoint, MLflow, exit 143.
    assert _worker(_render())["template"]["spec"]["terminationGracePeriodSeconds"] == 120
    job = _render(termination_grace_s=600)
    validate_tfjob(job, SCHEMA)
    assert _worker(job)["template"]["spec"]["terminationGracePeriodSeconds"] == 600
    with pytest.raises(ConfigError, match="termination_grace_s"):
        _render(termination_grace_s=-1)


# -- a retried step adopts or resumes its job (issue 19, point 8) -----------------------------

KFP_RUN = "0f3c9a52-7d1e-4b8a-9c61-2e5f4a7b8c90"  # the shape of a KFP run UUID


def test_the_job_name_is_the_same_for_every_attempt_of_a_task_and_differs_between_runs():
    name = tfjob.stable_job_name("wavenet", KFP_RUN, "train-model")
    assert name == tfjob.stable_job_name("wavenet", KFP_RUN, "train-model")
    assert name != tfjob.stable_job_name("wavenet", KFP_RUN.replace("0f3c", "0f3d"), "train-model")
    assert name != tfjob.stable_job_name("wavenet", KFP_RUN, "train-model-2")
    render(name, "ns", "img", ["wavenet"])  # a valid DNS-1035 name of <= 45 characters
    # Too long for a pod name's room: a readable head and a hash of the whole identity.
    assert len(name) <= 45 and name.startswith("wavenet-0f3c9a52-") and re.fullmatch(r".*-[0-9a-f]{12}", name)
    # A short identity keeps its plain name.
    assert tfjob.stable_job_name("wavenet", "run1", "train") == "wavenet-run1-train"
    # Identities that slug alike but differ get different names when hashed.
    a = tfjob.stable_job_name("wavenet", "A" * 60, "t")
    assert a != tfjob.stable_job_name("wavenet", "a" * 60, "t") and len(a) <= 45


def test_the_train_components_job_and_run_folder_derive_from_run_and_task():
    """Two attempts of one task: one job name, one run folder (so the second resumes)."""
    cfg = preset("tiny")
    cluster = ClusterSettings("ml", "reg/wavenet-gpu:1", run_root="gs://b/runs")
    jobs = [training_tfjob(cfg, tfjob.stable_job_name("wavenet", KFP_RUN, "train-model"),
                           "gs://b/shards", "gs://b/runs/x", cluster,
                           RunContext("http://mlflow:5000", run_name=run_name("tiny", "d0"), environ={}))
            for _ in range(2)]
    assert jobs[0]["metadata"]["name"] == jobs[1]["metadata"]["name"]


def _job(conditions=(), deleting=False):
    meta = {"name": "j", **({"deletionTimestamp": "2026-12-06T14:00:00Z"} if deleting else {})}
    return {"metadata": meta, "status": {"conditions": [{"type": t, "status": "True"} for t in conditions]}}


@pytest.mark.parametrize("observed, action", [
    (None, "create"),                                            # first attempt, or deleted
    (_job(), "adopt"),                                           # just created, no status yet
    (_job(["Created", "Running"]), "adopt"),                     # a killed launcher's job runs on
    (_job(["Created", "Running", "Restarting"]), "adopt"),       # the operator mends its pods
    (_job(["Created", "Running", "Succeeded"]), "adopt"),        # done: collect the result
    (_job(["Created", "Running", "Failed"]), "replace"),         # given up: again, from checkpoint
    (_job(["Created", "Running"], deleting=True), "replace"),    # going away: wait, then create
])
def test_resume_action_is_decided_by_the_observed_job(observed, action):
    assert tfjob.resume_action(observed) == action


def test_a_retried_step_adopts_the_running_job_instead_of_creating_a_second(fake_api):
    job = _render(namespace="ml")
    srv, api = fake_api(outcome=None, existing={**job, "status": {"conditions": [
        {"type": "Running", "status": "True"}]}})
    srv.job["status"]["conditions"].append({"type": "Succeeded", "status": "True"})
    lines = []
    final = tfjob.run_tfjob(job, poll_seconds=0.05, log=lines.append, api_client=api)
    assert tfjob.tfjob_outcome(final) == "Succeeded"
    assert not any(m == "POST" for m, _ in srv.requests), srv.requests
    assert any(line.startswith("adopted TFJob ml/wavenet-demo-x") for line in lines), lines


def test_a_retried_step_replaces_a_failed_job_under_the_same_name(fake_api):
    job = _render(namespace="ml")
    srv, api = fake_api(outcome="Succeeded", existing={**job, "status": {"conditions": [
        {"type": "Failed", "status": "True"}]}})
    final = tfjob.run_tfjob(job, poll_seconds=0.05, log=lambda _: None, api_client=api)
    assert tfjob.tfjob_outcome(final) == "Succeeded"
    methods = [m for m, _ in srv.requests if m != "GET"]
    assert methods[:2] == ["DELETE", "POST"], srv.requests  # the failed job goes, then the same job again
    assert srv.bodies[1][2]["metadata"]["name"] == "wavenet-demo-x"
    assert srv.bodies[0][2]["propagationPolicy"] == "Foreground"


def test_creation_answered_already_exists_adopts(fake_api):
    srv, api = fake_api(outcome=None, conflict=True)
    lines = []
    # The twin's job runs on; this attempt watches it until the timeout, then deletes it.
    with pytest.raises(tfjob.TFJobError, match="did not finish"):
        tfjob.run_tfjob(_render(), poll_seconds=0.05, timeout_s=0.3, log=lines.append, api_client=api)
    assert any("created meanwhile by another attempt" in line for line in lines), lines


# -- SIGTERM to the train step deletes its TFJob ------------------------------------------------

_STEP = """
import sys
from kfp.dsl import Artifact, Dataset, Metrics, Model
from components.stages import train_model

config, shards, out = sys.argv[1:4]
train_model.python_func(
    shards=Dataset(uri=shards, metadata={"data_dir": shards}), data_version="d" * 64,
    config=Artifact(uri=config), workers=2, on_cluster=True, namespace="ml",
    image="ghcr.io/wavenet-pipelines/wavenet-gpu:0.1.0", gpus_per_worker=1, accelerator="",
    cluster_run_root="gs://bucket/runs", warm_start=False, tracking_uri="", experiment="",
    kfp_run_id=sys.argv[4], model=Model(uri=out + "/model"), metrics=Metrics(uri=out + "/m.json"),
    force_train=True, kfp_task="train-model")
"""


# How a KFP v2 pod on Argo runs the step: argoexec emissary (PID 1) starts the KFP launcher in
# a process group of its own and forwards each signal to that whole group (argo-workflows,
# workflow/executor/osspecific/command_unix.go StartCommand: Setpgid; signal_darwin.go, which
# signal_linux.go links to: Kill(-pgid, sig)); the launcher runs the component's `sh -ec` script
# with exec.Command and no group of its own (kubeflow/pipelines, backend/src/v2/component/
# launcher_v2.go execute). So SIGTERM reaches the Python step itself, not only `sh`, which dies
# of it at once: "kfp-wrapper" runs the step under that script and signals the group.
_KFP_WRAPPER = 'program_path=$(mktemp -d)\nrmdir "$program_path"\n"$@"\n'


@pytest.mark.slow
@pytest.mark.parametrize("how", ["direct", "kfp-wrapper"])
def test_sigterm_to_the_train_step_deletes_its_tfjob_with_its_pods(fake_api, tiny_shards, tmp_path, how):
    """The real component body in a real process, its kubernetes client on a loopback API:
    SIGTERM -> DELETE (foreground: pods first) -> exit 143 with one line; also when the step
    runs under KFP's `sh -ec` script and the signal goes to the process group, as Argo sends it."""
    import os
    import signal
    import subprocess
    import sys

    srv, _ = fake_api(outcome=None)
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(json.dumps({
        "apiVersion": "v1", "kind": "Config", "current-context": "t",
        "clusters": [{"name": "t", "cluster": {"server": f"http://127.0.0.1:{srv.server_address[1]}"}}],
        "users": [{"name": "t", "user": {"token": "t"}}],
        "contexts": [{"name": "t", "context": {"cluster": "t", "user": "t"}}]}))
    config = tmp_path / "config.yaml"
    config.write_text(preset("tiny").to_yaml())
    env = {k: v for k, v in os.environ.items() if not k.startswith("KUBERNETES_")}
    env.update(KUBECONFIG=str(kubeconfig), PYTHONPATH=str(Path(__file__).resolve().parents[1]))
    step = [sys.executable, "-c", _STEP, str(config), str(tiny_shards), str(tmp_path), KFP_RUN]
    wrapped = how == "kfp-wrapper"
    proc = subprocess.Popen(["sh", "-ec", _KFP_WRAPPER, "sh", *step] if wrapped else step, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=wrapped)
    try:
        # Wait for the event (the job was created), not for a time.
        while not srv.created.wait(1):
            assert proc.poll() is None, proc.communicate()
        if wrapped:
            os.killpg(proc.pid, signal.SIGTERM)
        else:
            proc.send_signal(signal.SIGTERM)
        # Returns once the step has exited too: it holds the pipes after `sh` is gone.
        out, err = proc.communicate(timeout=120)
    finally:
        if wrapped:  # the step too, should it outlive its shell
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
        elif proc.poll() is None:
            proc.kill()
    name = tfjob.stable_job_name("wavenet", KFP_RUN, "train-model")
    assert srv.bodies[0][2]["metadata"]["name"] == name
    # The run folder is the job's name under the run root: the same on a retry.
    assert f"gs://bucket/runs/{name}" in srv.bodies[0][2]["spec"]["tfReplicaSpecs"]["Worker"][
        "template"]["spec"]["containers"][0]["args"]
    deletes = [b for m, p, b in srv.bodies if m == "DELETE"]
    assert deletes and deletes[0]["propagationPolicy"] == "Foreground", srv.requests
    # Wrapped, the exit status is the shell's (killed by the signal; the step's own is 143).
    assert proc.returncode == (-signal.SIGTERM if wrapped else 143), err
    assert f"error: SIGTERM: stopped waiting for TFJob ml/{name}" in err and "Traceback" not in err, err
