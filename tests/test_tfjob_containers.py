"""The TFJob the train step renders, run as containers of the image: the operator's part minus Kubernetes."""

import json
import os
from pathlib import Path

import pytest
from conftest import run_gcs_emulator

from devtools.containers import ContainerError
from devtools.tfjob_containers import cluster_addresses, operator_tf_config, pod_run_args
from wavenet.config import preset
from wavenet.context import RunContext
from wavenet.edges import tfjob
from wavenet.train.cluster import ClusterSettings, training_tfjob
from wavenet.train.outputs import RUN_OUTPUTS, collect_run

CFG = preset("tiny").with_overrides({"train.steps": 20})


def _render(image="example/wavenet:1", workers=2, gpus=0):
    cluster = ClusterSettings("wavenet", image, workers=workers, gpus_per_worker=gpus,
                              template=tfjob.load_template())
    return training_tfjob(CFG, "wavenet-tiny-test", "gs://b/shards", "gs://b/runs/wavenet-tiny-test",
                          cluster, RunContext("http://127.0.0.1:9", run_name="tiny-test",
                                              experiment="tfjob-containers", kfp_run_id="run-1",
                                              environ={}))


def test_tf_config_is_written_as_the_training_operator_writes_it():
    job = _render()
    assert cluster_addresses(job) == ["wavenet-tiny-test-worker-0.wavenet.svc:2222",
                                      "wavenet-tiny-test-worker-1.wavenet.svc:2222"]
    text = operator_tf_config(["127.0.0.1:4001", "127.0.0.1:4002"], 1)
    # Go's json.Marshal of TFConfig{Cluster, Task, Environment}: that order, no spaces.
    assert text == ('{"cluster":{"worker":["127.0.0.1:4001","127.0.0.1:4002"]},'
                    '"task":{"type":"worker","index":1},"environment":"cloud"}')
    from wavenet.train import worker_role

    assert worker_role(json.loads(text)) == (1, 2, False)


def test_worker_containers_follow_the_rendered_pod_spec(tmp_path):
    job = _render()
    pod = job["spec"]["tfReplicaSpecs"]["Worker"]["template"]["spec"]
    (c,) = pod["containers"]
    args = pod_run_args(job, 1, ["127.0.0.1:1", "127.0.0.1:2"], tmp_path / "w1",
                        extra_env={"STORAGE_EMULATOR_HOST": "http://127.0.0.1:9"})
    assert args["image"] == c["image"] == "example/wavenet:1"
    assert args["entrypoint"] == c["command"] and args["command"] == c["args"]
    rendered_env = {e["name"]: e["value"] for e in c["env"] if "value" in e}
    assert rendered_env.items() <= args["environment"].items()
    assert args["environment"]["KFP_RUN_ID"] == "run-1"
    assert json.loads(args["environment"]["TF_CONFIG"])["task"] == {"type": "worker", "index": 1}
    assert args["user"] == "1000:1000" and args["read_only"] is True
    assert args["cap_drop"] == ["ALL"] and args["security_opt"] == ["no-new-privileges"]
    assert args["labels"] == {"org.wavenet-pipelines.owner-pid": str(os.getpid())}  # remove_orphans
    # Every volumeMount of the spec: the Memory emptyDir is a tmpfs, the scratch one a fresh folder.
    mounts = {m["mountPath"] for m in c["volumeMounts"]}
    assert mounts == {"/dev/shm", "/scratch"}
    assert args["tmpfs"]["/dev/shm"].startswith("size=8g")
    (scratch,) = [h for h, v in args["volumes"].items() if v["bind"] == "/scratch"]
    assert Path(scratch).is_dir() and Path(scratch).is_relative_to(tmp_path / "w1")


def test_secret_env_comes_from_the_secrets_given_as_the_kubelet_resolves_it(tmp_path):
    job = _render()
    addresses = ["127.0.0.1:1"]
    # The template's MLflow credentials are optional Secret references: absent, they stay unset.
    env = pod_run_args(job, 0, addresses, tmp_path / "a")["environment"]
    assert "MLFLOW_TRACKING_USERNAME" not in env and "MLFLOW_TRACKING_PASSWORD" not in env
    env = pod_run_args(job, 0, addresses, tmp_path / "b",
                       secrets={"mlflow-client": {"username": "alice", "password": "pw-1"}})["environment"]
    assert env["MLFLOW_TRACKING_USERNAME"] == "alice" and env["MLFLOW_TRACKING_PASSWORD"] == "pw-1"
    (c,) = job["spec"]["tfReplicaSpecs"]["Worker"]["template"]["spec"]["containers"]
    c["env"].append({"name": "REQUIRED", "valueFrom": {"secretKeyRef": {"name": "other", "key": "k"}}})
    with pytest.raises(ContainerError, match="takes key 'k' of secret 'other'"):
        pod_run_args(job, 0, addresses, tmp_path / "c")


def test_what_cannot_run_here_is_refused_in_one_line(tmp_path):
    with pytest.raises(ContainerError, match="nvidia.com/gpu"):
        pod_run_args(_render(gpus=1), 0, ["127.0.0.1:1"], tmp_path / "a")
    job = _render()
    pod = job["spec"]["tfReplicaSpecs"]["Worker"]["template"]["spec"]
    pod["volumes"].append({"name": "data", "persistentVolumeClaim": {"claimName": "x"}})
    pod["containers"][0]["volumeMounts"].append({"name": "data", "mountPath": "/data"})
    with pytest.raises(ContainerError, match="only emptyDir, hostPath, configMap and secret"):
        pod_run_args(job, 0, ["127.0.0.1:1"], tmp_path / "b")


@pytest.mark.slow
def test_two_worker_containers_train_and_the_launcher_collects_the_model(
        engine, cpu_image, mlflow_server, tmp_path, monkeypatch):
    from mlflow import MlflowClient

    from devtools.tfjob_containers import run_tfjob_in_containers
    from wavenet.data.demo import make_demo_corpus
    from wavenet.data.preprocess import preprocess
    from wavenet.model import load_model

    bucket = "wavenet-tfjob"
    with run_gcs_emulator(bucket) as emulator:
        monkeypatch.setenv("STORAGE_EMULATOR_HOST", emulator)
        monkeypatch.setenv("GOOGLE_CLOUD_PROJECT", "test")
        make_demo_corpus(str(tmp_path / "audio"), seconds_per_genre=4.0)
        preprocess(str(tmp_path / "audio"), f"gs://{bucket}/shards", CFG, processes=1, progress=False)

        # The job exactly as the train step renders it (train.cluster.training_tfjob), CPU pods.
        name = tfjob.job_name("wavenet", "tiny-containers")
        out = f"gs://{bucket}/runs/{name}"
        ctx = RunContext(mlflow_server.uri, run_name="tiny-containers", experiment="tfjob-containers",
                         kfp_run_id="kfp-run-42", environ={})
        cluster = ClusterSettings("wavenet", cpu_image, workers=2, template=tfjob.load_template())
        job = training_tfjob(CFG, name, f"gs://{bucket}/shards", out, cluster, ctx)
        lines: list[str] = []
        try:
            result = run_tfjob_in_containers(
                job, engine, log=lines.append, timeout_s=900,
                extra_env={"STORAGE_EMULATOR_HOST": emulator, "GOOGLE_CLOUD_PROJECT": "test"})
        except ContainerError as e:
            pytest.fail(f"{e}\n" + "\n".join(lines[-60:]))
        assert result["exit_codes"] == [0, 0], "\n".join(lines[-40:])
        assert [json.loads(t)["task"]["index"] for t in result["tf_configs"]] == [0, 1]
        assert all(a.startswith("127.0.0.1:") for a in result["addresses"])

        # Collected the way the launcher does it after a TFJob succeeds.
        dest = tmp_path / "model-artifact"
        summary = collect_run(out, str(dest)).summary
    assert sorted(os.listdir(dest)) == sorted(RUN_OUTPUTS)
    assert (summary["workers"], summary["replicas"], summary["steps"]) == (2, 2, 20)
    model = load_model(str(dest / "model.keras"))
    assert model.config == CFG.model
    run = MlflowClient(mlflow_server.uri).get_run(summary["run_id"])
    assert run.data.tags["workers"] == "2" and run.data.tags["kfp.run_id"] == "kfp-run-42"
    assert run.info.status == "FINISHED" and "val_bits_per_sample" in run.data.metrics
