"""The TFJob the launcher creates: rendering, schema validation, outcome detection.

No cluster here: these tests stop at the Kubernetes API boundary (see README for what
was and was not exercised against a real cluster).
"""

import copy
from pathlib import Path

import jsonschema
import pytest

from components import runtime
from pipelines.validate_k8s import TFJOB_SCHEMA, validate_tfjob
from wavenet import cli, tfjob
from wavenet.config import preset
from wavenet.errors import ConfigError
from wavenet.tracking import run_name
from wavenet.train import ClusterSettings, training_tfjob

K8S = Path(__file__).resolve().parents[1] / "k8s"
SCHEMA = K8S / TFJOB_SCHEMA


def _render(**kw):
    args = dict(name="wavenet-demo-x", namespace="ml", image="reg/wavenet-gpu:1",
                command=["wavenet", "train"], args=["gs://b/shards", "--out", "gs://b/run"],
                workers=3, gpus_per_worker=2, accelerator="nvidia-a100-80gb")
    args.update(kw)
    return tfjob.render_tfjob(**args)


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
        run_name="demo-d01234567-20260101T000000Z", experiment="wavenet",
        init_model=f"gs://bucket/runs/{name}/init_model.keras",
        env={"MLFLOW_TRACKING_URI": "http://mlflow.wavenet:5000"}, labels={"wavenet/data-version": "0123"})
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
                         ClusterSettings("wavenet", "reg/gpu:1", workers=2), run_name="r",
                         env=runtime.mlflow_env(step_env))
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
    tfjob.render_tfjob(name, "ns", "img", ["wavenet"])  # raises if the name is invalid


# -- run_tfjob against a loopback stand-in for the API endpoints it calls --------------------
# Not a cluster: a small HTTP server answering the five requests the launcher makes (create,
# read the job, read the pod, follow its log, delete), so the real kubernetes client's
# requests, the wait loop, log streaming and clean-up are exercised up to the HTTP boundary.

import http.server  # noqa: E402
import json  # noqa: E402
import threading  # noqa: E402


class _FakeApi(http.server.ThreadingHTTPServer):
    def __init__(self, outcome, polls_before_outcome=2, fail_create=False):
        super().__init__(("127.0.0.1", 0), _Handler)
        self.outcome, self.polls, self.fail_create = outcome, polls_before_outcome, fail_create
        self.requests, self.job = [], None


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

    def do_POST(self):  # noqa: N802
        srv = self.server
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        srv.requests.append(("POST", self.path))
        if srv.fail_create:
            return self._send(403, {"kind": "Status", "reason": "Forbidden", "code": 403})
        srv.job = body
        self._send(201, body)

    def do_GET(self):  # noqa: N802
        srv = self.server
        srv.requests.append(("GET", self.path))
        if "/pods/" in self.path and self.path.split("?")[0].endswith("/log"):
            return self._send(200, text="step 10 bits 7.9\nstep 20 bits 7.1\n")
        if "/pods/" in self.path:
            return self._send(200, {"kind": "Pod", "apiVersion": "v1", "metadata": {"name": "p"},
                                    "status": {"phase": "Running"}})
        gets = sum(1 for m, p in srv.requests if m == "GET" and "/tfjobs/" in p)
        job = dict(srv.job)
        conds = [{"type": "Created", "status": "True"}, {"type": "Running", "status": "True"}]
        if srv.outcome and gets > srv.polls:
            conds.append({"type": srv.outcome, "status": "True",
                          "message": "worker 0 exited with code 2" if srv.outcome == "Failed" else ""})
        job["status"] = {"conditions": conds}
        self._send(200, job)

    def do_DELETE(self):  # noqa: N802
        self.server.requests.append(("DELETE", self.path))
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
    assert srv.requests[0] == ("POST", base)
    assert srv.job == job
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
